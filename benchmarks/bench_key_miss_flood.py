"""The key miss path under an unknown-key flood: UDP requests whose API keys
no store has, sent as fast as one Python sender can (`sendto` in a loop;
`beastnet load` sends one API key a run) to `beastnet serve --database` (one
node, no Redis), against the queries that reach PostgreSQL.  Two floods in
the same run: the same 1,000 unknown keys over and over (the negative cache
answers after the first sweep) and 200,000 distinct ones (each sweep is one
batched query, whatever the request rate).
A lookup per request would send PostgreSQL as many queries as requests.

    PYTHONPATH=src python benchmarks/bench_key_miss_flood.py [SECONDS]

Needs initdb and pg_ctl (Debian's postgresql; the tests' fixture,
tests/pg_support.py, starts one in a temp dir on a free port).  Figures:
from the server's own counters (`unauthorized`, `api_keys.database`), so
they count what the server received, not what was sent.  UDP refusals are
silent (the default with keys): nothing comes back.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_support import PostgresServer  # noqa: E402

from beastnet.serve.stores.postgres import PostgresKeyStore, migrate  # noqa: E402

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0


def stats(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/stats", timeout=5) as r:
        return json.loads(r.read())


def ready(log: Path, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                return json.loads(line)
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()}")
        time.sleep(0.1)
    raise SystemExit("serve not ready")


def flood(udp: int, admin: int, datagrams: list[bytes], label: str) -> None:
    before = stats(admin)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", udp))
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            start = sent % len(datagrams)
            for d in datagrams[start:start + 1000]:
                try:
                    sock.send(d)
                except OSError:             # ENOBUFS/ECONNREFUSED: the flood goes on
                    pass
            sent += 1000
        elapsed = time.monotonic() - t0
    time.sleep(0.2)                                 # the last sweep
    after = stats(admin)
    refused = after["udp"]["totals"]["unauthorized"] - before["udp"]["totals"]["unauthorized"]
    db0, db1 = before["api_keys"]["database"], after["api_keys"]["database"]
    queries = db1["db_queries"] - db0["db_queries"]
    lookups = db1["key_lookups"] - db0["key_lookups"]
    print(f"{label}: {refused / elapsed:,.0f} unknown-key req/s reached the server, "
          f"{queries / elapsed:.1f} queries/s reached PostgreSQL ({lookups} lookups, "
          f"{db1['key_negative_hits'] - db0['key_negative_hits']:,} negative-cache hits, "
          f"{db1['key_misses_dropped'] - db0['key_misses_dropped']:,} notes dropped); "
          f"requests per query {refused / max(queries, 1):,.0f} ({sent / elapsed:,.0f}/s sent)")


def main() -> None:
    pg = PostgresServer()
    tmp = Path(tempfile.mkdtemp(prefix="beastnet-flood-"))
    proc = None
    try:
        migrate(pg.dsn)
        with PostgresKeyStore(pg.dsn) as store:
            store.add("public", key="the-one-real-key-0123")
        same = [b"BTC unknown-%06d-abcdefgh" % i for i in range(1000)]
        distinct = [b"BTC new-%08d-abcdefgh" % i for i in range(200_000)]
        log = tmp / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "beastnet", "serve", "--profile", "dev", "--udp-port",
                 "0", "--http-port", "0", "--admin-port", "0", "--database", pg.dsn,
                 "--key-cache", str(tmp / "cache.json")], stdout=out, stderr=subprocess.STDOUT)
        line = ready(log, proc)
        print(f"UDP flood for {SECONDS:g} s a case, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        flood(line["udp_port"], line["admin_port"], same, "1,000 unknown keys, repeated")
        flood(line["udp_port"], line["admin_port"], distinct, "200,000 distinct unknown keys")
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        pg.close()


if __name__ == "__main__":
    main()
