"""asyncpg against psycopg 3 (async), the two PostgreSQL drivers the key store
could use, on its two hot queries: sequential point lookups by key (5,000), and
usage upserts with executemany in batches of 300 rows (100 batches); one
connection each to the same PostgreSQL, rounds alternating, median of three.

    PYTHONPATH=src python benchmarks/bench_postgres_drivers.py

Needs initdb and pg_ctl (Debian's postgresql): a server is started here by the
tests' fixture (tests/pg_support.py) in a temp dir on a free port, and stopped.
The peer, psycopg 3, is not a beastnet dependency: pip install "psycopg[binary]".
"""
import asyncio
import statistics
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import asyncpg  # noqa: E402
import psycopg  # noqa: E402
from pg_support import PostgresServer  # noqa: E402

from beastnet.serve.stores.postgres import PostgresKeyStore, migrate  # noqa: E402

N_LOOKUPS, BATCHES, ROWS = 5000, 100, 300
UPSERT = ("INSERT INTO usage (key, month, count) VALUES ({}, {}, {}) "
          "ON CONFLICT (key, month) DO UPDATE SET count = usage.count + excluded.count")

async def with_asyncpg(dsn, keys):
    conn = await asyncpg.connect(dsn)
    t = time.perf_counter()
    for i in range(N_LOOKUPS):
        await conn.fetchval("SELECT tier FROM api_keys WHERE key = $1", keys[i % len(keys)])
    look = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(BATCHES):
        await conn.executemany(UPSERT.format("$1", "'a'", "$2"),
                               [(keys[i], 1) for i in range(ROWS)])
    flush = time.perf_counter() - t
    await conn.close()
    return look, flush

async def with_psycopg(dsn, keys):
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    t = time.perf_counter()
    async with conn.cursor() as cur:
        for i in range(N_LOOKUPS):
            await cur.execute("SELECT tier FROM api_keys WHERE key = %s", (keys[i % len(keys)],))
            await cur.fetchone()
    look = time.perf_counter() - t
    t = time.perf_counter()
    async with conn.cursor() as cur:
        for _ in range(BATCHES):
            await cur.executemany(UPSERT.format("%s", "'b'", "%s"),
                                  [(keys[i], 1) for i in range(ROWS)])
    flush = time.perf_counter() - t
    await conn.close()
    return look, flush

s = PostgresServer()
try:
    migrate(s.dsn)
    with PostgresKeyStore(s.dsn) as ks:
        keys = [ks.add("public") for _ in range(ROWS)]
    res = {"asyncpg": [], "psycopg": []}
    for _ in range(3):
        for name, fn in (("asyncpg", with_asyncpg), ("psycopg", with_psycopg)):
            res[name].append(asyncio.run(fn(s.dsn, keys)))
    med = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
           for name, runs in res.items()}
    for name, (look, flush) in med.items():
        print(f"{name:8s} lookups {N_LOOKUPS / look:8.0f}/s ({look / N_LOOKUPS * 1e6:.0f} us "
              f"each)  usage upsert rows {BATCHES * ROWS / flush:8.0f}/s  (median of 3)")
    print("asyncpg / psycopg: lookups "
          f"{med['psycopg'][0] / med['asyncpg'][0]:.2f}x, upserts "
          f"{med['psycopg'][1] / med['asyncpg'][1]:.2f}x")
finally:
    s.close()
