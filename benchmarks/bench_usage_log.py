"""The usage log and reports, two workloads in one run:

1. flush: rows per second into the usage log, PostgreSQL's one statement a
   batch (the default: the batch as arrays, unnest() into one upsert with
   the batch's claim), COPY (staging table + one upsert) and executemany
   (the same upsert row by row), and SQLite executemany, batches of 300 rows
   (the default) and 5,000; new cells, then the same cells again (every row
   an update), one batch after another; then the usage log's own flush of a
   backlog (UsageLog.write_all: the default store with its two lanes, two
   batches in flight on two connections);
2. the stress plan's 2d on one host: `beastnet serve` (SQLite key store),
   HTTP price req/s alone (closed loop), then the same price load with a
   concurrent open-loop report load of 1,000 /v1/reports/usage/summary a
   second, then the price load alone again; the ratio (with reports over
   the mean of the two runs alone, so a machine's drift between runs
   weighs less), and the reports' p99.

    PYTHONPATH=src python benchmarks/bench_usage_log.py [--duration 5] [--skip-2d] [--probe]
        [--layouts] [--skip-flush] [--database] [--rounds N] [--against OTHER/src] [--threads]

Needs initdb/pg_ctl (a PostgreSQL is started by the tests' fixture,
tests/pg_support.py).  Every figure is from this run on this machine; the
machine state is printed first (load average) because other jobs may share it.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_support import PostgresServer, fetchval  # noqa: E402

from beastnet import api_key_id  # noqa: E402
from beastnet.serve.stores.postgres import migrate  # noqa: E402
from beastnet.serve.stores.usage_log import UsageRow  # noqa: E402
from beastnet.serve.stores.usage_postgres import PostgresUsageLog  # noqa: E402
from beastnet.serve.stores.usage_sqlite import SQLiteUsageLog  # noqa: E402

MINUTE0 = 1_767_225_600         # 2026-01-01 00:00 UTC


class _NoKeys:
    """The usage log's key table, for a flush of rows queued by hand."""

    def usage_counts(self, key=None):
        return {}, (0,) * 16


def usage_log_rate(store, batches, writer: str) -> float:
    """The usage log's flush of a backlog: every row queued, then
    write_all (its lanes: two batches in flight when the store has
    write_many)."""
    from beastnet.serve.usage_log import UsageLog
    total = sum(len(b) for b in batches)
    usage = UsageLog(store, _NoKeys(), batch_rows=len(batches[0]), writer=writer,
                     queue_rows=max(total, 100_000))   # the default cap would drop rows
    usage._enqueue([((r.minute, r.key, r.protocol, r.route),
                     [r.admitted, r.refused, r.rate_limited, r.over_quota])
                    for b in batches for r in b])
    t = time.perf_counter()
    if not usage.write_all():
        raise SystemExit(f"flush failed: {usage.last_error}")
    return sum(len(b) for b in batches) / (time.perf_counter() - t)


def rows(n: int, batch: int) -> list[list[UsageRow]]:
    """n rows in batches: distinct (key, minute) cells."""
    keys = [api_key_id(f"key-{i}") for i in range(1000)]
    out = [UsageRow(keys[i % 1000], MINUTE0 + 60 * (i // 1000), "http", "price", 5, 1, 0, 0)
           for i in range(n)]
    return [out[i:i + batch] for i in range(0, n, batch)]


def flush_rate(store, batches, writer: Optional[str]) -> float:
    """Numbered batches, as the usage log writes them (each claims its number
    in usage_writers in the same transaction); `writer` None: unnumbered,
    what the claim costs is the difference."""
    t = time.perf_counter()
    for seq, batch in enumerate(batches, 1):
        store.write(batch, (writer, seq) if writer else None)
    return sum(len(b) for b in batches) / (time.perf_counter() - t)


#: The layout the usage log's table might take (measured, not applied by a
#: migration unless it wins): C collation on the text columns of the primary
#: key (byte comparisons in the index, no locale), and fillfactor 70 on the
#: partitions so an upsert's update finds room on its page (a HOT update: no
#: index entry written).
C_FF70 = """
ALTER TABLE usage_log ALTER COLUMN key TYPE text COLLATE "C",
                      ALTER COLUMN protocol TYPE text COLLATE "C",
                      ALTER COLUMN route TYPE text COLLATE "C";
"""


def apply_layout(server, layout: str) -> None:
    if layout == "default":
        return
    server.psql(C_FF70)
    _make_partitions(server.dsn)
    for name in ("usage_log_default", "usage_log_202601", "usage_log_202602",
                 "usage_log_202603"):
        server.psql(f"ALTER TABLE {name} SET (fillfactor = 70)")


def _make_partitions(dsn: str) -> None:
    """The months the rows fall in (the store creates them with its first write)."""
    store = PostgresUsageLog(dsn)
    try:
        store.write(rows(1, 1)[0])
    finally:
        store.close()


def bench_flush(total: int, layouts: tuple[str, ...] = ("default",)) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-usage-")
    print(f"## flush: {total:,} rows per run, rows/s (higher is better)")
    print("| batch | store | layout | new cells | same cells again (updates) |")
    print("| --- | --- | --- | --- | --- |")
    for layout in layouts:
        server = PostgresServer()
        try:
            migrate(server.dsn)
            apply_layout(server, layout)
            _flush_rows(server, tmp, total, layout, sqlite=layout == layouts[0])
        finally:
            server.close()


def _flush_rows(server, tmp: str, total: int, layout: str, sqlite: bool) -> None:
    for batch in (300, 5000):
        names = ["postgresql append", "postgresql unnest", "postgresql COPY",
                 "postgresql executemany"]
        names += ["sqlite executemany", "postgresql unnest unnumbered"] if sqlite else []
        names += ["usage log flush, postgresql append, 2 lanes",
                  "usage log flush, postgresql unnest, 2 lanes"]
        for name in names:
            server.psql("TRUNCATE usage_log, usage_log_fresh")
            if "postgresql" in name:
                method = next(m for m in ("append", "unnest", "COPY", "executemany")
                              if m in name)
                store = PostgresUsageLog(server.dsn, method=method.lower())
            else:
                path = os.path.join(tmp, f"u{batch}.db")
                if os.path.exists(path):
                    os.unlink(path)
                store = SQLiteUsageLog(path)
            try:
                batches = rows(total, batch)
                # Warm up (pool, partitions, prepared statements): the first
                # store measured was otherwise penalised for its order.
                rate = usage_log_rate if "lanes" in name else flush_rate
                rate(store, batches[:2], f"warm-{batch}-{name}")
                if getattr(store, "method", None) == "append":
                    store.compact()             # the warm-up's background fold ended
                server.psql("TRUNCATE usage_log, usage_log_fresh")
                numbered = "unnumbered" not in name
                first = rate(store, batches, numbered and f"bench-{batch}-{name}-1")
                folded = fold(store, total, total / first)
                again = rate(store, batches, numbered and f"bench-{batch}-{name}-2")
                folded_again = fold(store, total, total / again)
            finally:
                store.close()
            shown = "-" if name.startswith("sqlite") else layout
            print(f"| {batch} | {name} | {shown} | {first:,.0f} | {again:,.0f} |")
            if folded is not None:
                print(f"| {batch} | ... writes and the fold of what was left in usage_log_fresh "
                      f"| {shown} | {folded} | {folded_again} |")


def fold(store, rows_written: int, wrote_s: float) -> "str | None":
    """The append store's fold of usage_log_fresh into usage_log, run to
    the end (the writes above fold in the background once a second; what
    is left is folded here, after the background fold under way): the rows
    written a second counting the writes and this fold (every row in
    usage_log at the end); None for other stores."""
    if getattr(store, "method", None) != "append":
        return None
    left = int(fetchval(store.dsn, "SELECT count(*) FROM usage_log_fresh"))
    t = time.perf_counter()
    store.compact()
    took = time.perf_counter() - t
    return (f"{rows_written / (wrote_s + took):,.0f} (fold {took * 1000:,.0f} ms, "
            f"{left:,} rows left)")


def bench_repeated(cells: int, repeats: int) -> None:
    """The usage log's own pattern: the same cells in every batch interval
    (an active key's route has a row in each 100 ms round), `repeats`
    rounds of `cells` rows in batches of 300, one batch after another; the
    append store's rows/s to the end of its fold (every count in usage_log)
    against the one-statement upsert's."""
    keys = [api_key_id(f"key-{i}") for i in range(cells // 3 + 1)]
    cell_rows = [UsageRow(keys[i // 3], MINUTE0, "http", ("price", "snapshot", "report")[i % 3],
                          1, 0, 0, 0) for i in range(cells)]
    rounds = [cell_rows[i:i + 300] for i in range(0, cells, 300)] * repeats
    total = cells * repeats
    print(f"## the same {cells:,} cells in each of {repeats} rounds ({total:,} rows, "
          "batches of 300), rows/s")
    print("| store | writes | writes and the fold to the end | fold |")
    print("| --- | --- | --- | --- |")
    server = PostgresServer()
    try:
        migrate(server.dsn)
        _make_partitions(server.dsn)
        for method in ("append", "unnest", "append", "unnest"):
            server.psql("TRUNCATE usage_log, usage_log_fresh")
            store = PostgresUsageLog(server.dsn, method=method)
            try:
                wrote = total / flush_rate(store, rounds, f"repeated-{method}-{time.time()}")
                t = time.perf_counter()
                if method == "append":
                    store.compact()
                took = time.perf_counter() - t
            finally:
                store.close()
            counted = int(fetchval(server.dsn, "SELECT sum(admitted) FROM usage_log"))
            assert counted == total, (counted, total)
            print(f"| {method} | {total / wrote:,.0f} | {total / (wrote + took):,.0f} | "
                  f"{took * 1000:,.0f} ms |" if method == "append" else
                  f"| {method} | {total / wrote:,.0f} | {total / wrote:,.0f} | - |", flush=True)
    finally:
        server.close()


def bench_probe(total: int) -> None:
    """Where the PostgreSQL time goes: one asyncpg connection, the same rows,
    COPY into the staging table alone, COPY + the upsert (what the store
    does), COPY straight into usage_log, and one unnest upsert a batch."""
    import asyncio

    import asyncpg

    from beastnet.serve.stores.usage_postgres import _ADD, _STAGE, _stamp
    server = PostgresServer()
    unnest = ("INSERT INTO usage_log AS u SELECT * FROM unnest($1::text[], $2::timestamptz[], "
              "$3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) "
              "ON CONFLICT (minute, key, protocol, route) DO UPDATE SET "
              "admitted = u.admitted + excluded.admitted")

    async def run() -> None:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute(_STAGE)
        records = [(r.key, _stamp(r.minute), r.protocol, r.route, r.admitted, r.refused,
                    r.rate_limited, r.over_quota) for b in rows(total, total) for r in b]
        print("## probe: rows/s, one connection")
        print("| batch | COPY to staging | COPY + upsert | COPY into usage_log | unnest upsert |")
        print("| --- | --- | --- | --- | --- |")
        for batch in (300, 5000):
            chunks = [records[i:i + batch] for i in range(0, total, batch)]
            rates = []
            for variant in ("stage", "stage+upsert", "direct", "unnest"):
                await conn.execute("TRUNCATE usage_log")
                t = time.perf_counter()
                for chunk in chunks:
                    async with conn.transaction():
                        if variant == "unnest":
                            await conn.execute(unnest, *[list(c) for c in zip(*chunk)])
                            continue
                        await conn.copy_records_to_table(
                            "usage_log" if variant == "direct" else "usage_stage",
                            records=chunk)
                        if variant == "stage+upsert":
                            await conn.execute(_ADD.format(source="usage_stage"))
                rates.append(total / (time.perf_counter() - t))
            print(f"| {batch} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
        await conn.close()
    try:
        migrate(server.dsn)
        _make_partitions(server.dsn)
        asyncio.run(run())
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_2d(duration: float, database: bool = False,
             variants: tuple[tuple[str, Optional[str]], ...] = (("this tree", None),),
             rounds: int = 1, probe_threads: bool = False) -> None:
    """`database`: keys and the usage log in a PostgreSQL of the fixture's
    (`serve --database`), not the SQLite key store.  `variants`: (label,
    PYTHONPATH for `serve`, None: this process's), run in turn each round
    (a before/after in one run: the other tree's `serve` on the same keys
    and database)."""
    from beastnet.loadgen import HTTPLoadConfig, run_http_load
    from beastnet.serve.stores.postgres import PostgresKeyStore
    from beastnet.serve.stores.sqlite import KeyStore
    tmp = Path(tempfile.mkdtemp(prefix="bench-2d-"))
    pg = None
    if database:
        pg = PostgresServer()
        migrate(pg.dsn)
        where = ["--database", pg.dsn, "--key-cache", str(tmp / "cache.json")]
        keys: object = PostgresKeyStore(pg.dsn)
    else:
        db = tmp / "keys.db"
        where = ["--keystore", str(db)]
        keys = KeyStore(str(db))
    with keys as store:     # type: ignore[attr-defined]
        store.add("partner", key="price-load-key-0001")
        store.add("partner", key="report-load-key-001")
    print("## 2d: price req/s with and without 1,000 reports/s (HTTP, keep-alive), "
          f"keys and usage log in {'PostgreSQL' if database else 'SQLite'}")
    print("| round | serve | price req/s alone, before / after | price p99 ms | "
          "price req/s with reports | "
          "price p99 ms | ratio | reports/s | report p99 ms | report errors | "
          "reports alone: p50 / p99 ms | serve CPU a report alone, us | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for round_ in range(1, rounds + 1):
            for label, pythonpath in variants:
                _one_2d(round_, label, pythonpath, where, tmp, duration, HTTPLoadConfig,
                        run_http_load, probe_threads, pg.pid if pg is not None else None)
    finally:
        if pg is not None:
            pg.close()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tasks(pids: dict[str, int]) -> dict[tuple[str, int], tuple[str, int, int, int, int]]:
    """Every thread of the named processes (PostgreSQL's: the postmaster
    and its children): (process, tid) -> (comm, ns on a CPU, ns waiting
    on a run queue, voluntary and involuntary context switches); a thread
    gone while read is left out."""
    out = {}
    for name, pid in pids.items():
        for tid in os.listdir(f"/proc/{pid}/task"):
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/comm") as f:
                    comm = f.read().strip()
                with open(f"{base}/schedstat") as f:
                    run_ns, wait_ns = (int(v) for v in f.read().split()[:2])
                with open(f"{base}/status") as f:
                    status = dict(line.split(":", 1) for line in f if "ctxt" in line)
            except (OSError, ValueError):
                continue
            out[(name, int(tid))] = (comm, run_ns, wait_ns,
                                     int(status["voluntary_ctxt_switches"]),
                                     int(status["nonvoluntary_ctxt_switches"]))
    return out


def _pg_pids(postmaster: Optional[int]) -> dict[str, int]:
    """The PostgreSQL cluster's processes by name (postmaster and children)."""
    if postmaster is None:
        return {}
    try:
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            kids = [int(v) for v in f.read().split()]
    except OSError:
        return {}
    return {f"postgres/{i}": pid for i, pid in enumerate([postmaster, *kids])}


class ThreadProbe:
    """Per-thread CPU, run-queue wait and context switches of `serve`, this
    process (the load generators) and PostgreSQL over one phase, by
    (process, thread name): what a phase costs and who waited for a CPU."""

    def __init__(self, serve_pid: int, postmaster: Optional[int]) -> None:
        self.pids = {"serve": serve_pid, "bench": os.getpid(), **_pg_pids(postmaster)}
        self.t0 = time.monotonic()
        self.before = _tasks(self.pids)

    def report(self, phase: str) -> str:
        wall = time.monotonic() - self.t0
        after = _tasks(self.pids)
        rows: dict[tuple[str, str], list[float]] = {}
        for key, (comm, run_ns, wait_ns, vol, nonvol) in after.items():
            _, run0, wait0, vol0, nonvol0 = self.before.get(key, (comm, 0, 0, 0, 0))
            proc = "postgres" if key[0].startswith("postgres") else key[0]
            # serve's threads all carry the interpreter's name: one row each
            name = f"{comm} {key[1]}" if proc == "serve" else comm
            row = rows.setdefault((proc, name), [0, 0.0, 0.0, 0.0, 0.0])
            row[0] += 1
            for i, d in enumerate((run_ns - run0, wait_ns - wait0, vol - vol0, nonvol - nonvol0)):
                row[i + 1] += d
        lines = [f"\n#### {phase}: per thread over {wall:.1f} s (CPU and run-queue wait in "
                 "ms a second; context switches a second)\n",
                 "| process | thread | threads | CPU | waiting for a CPU | voluntary | involuntary |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for (proc, comm), (n, run, wait, vol, nonvol) in sorted(rows.items()):
            if run / wall < 1e6 and vol / wall < 10:
                continue                        # idle threads
            lines.append(f"| {proc} | {comm} | {n} | {run / wall / 1e6:.0f} | "
                         f"{wait / wall / 1e6:.0f} | {vol / wall:,.0f} | {nonvol / wall:,.0f} |")
        return "\n".join(lines)


def _one_2d(round_: int, label: str, pythonpath: Optional[str], where: list[str], tmp: Path,
            duration: float, HTTPLoadConfig, run_http_load,
            probe_threads: bool = False, postmaster: Optional[int] = None) -> None:
    import threading
    port, admin = free_port(), free_port()
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    logged = tmp / f"serve-{round_}-{label.replace(' ', '_')}.log"
    log = open(logged, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                             *where, "--udp-port", "0", "--http-port",
                             str(port), "--admin-port", str(admin)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    try:
        deadline = time.monotonic() + 30
        while b'"ready"' not in logged.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("serve did not start: " + logged.read_text())
            time.sleep(0.1)
        price = HTTPLoadConfig(port=port, keys=("BTC", "ETH", "SOL"), connections=32,
                               threads=1, duration_s=duration, warmup_s=1.0,
                               headers=("X-API-Key: price-load-key-0001",))
        reports = HTTPLoadConfig(port=port, keys=("reports/usage/summary",), connections=16,
                                 threads=1, rate=1000.0, duration_s=duration, warmup_s=1.0,
                                 headers=("X-API-Key: report-load-key-001",))
        notes: list[str] = []
        probe = ThreadProbe(proc.pid, postmaster) if probe_threads else None
        cpu = _cpu_s(proc.pid)
        only = run_http_load(reports)           # reports alone: the server's CPU a report
        cpu = _cpu_s(proc.pid) - cpu
        if probe:
            notes.append(probe.report(f"round {round_}, {label}: 1,000 reports/s alone"))
        idle = _cpu_s(proc.pid)
        time.sleep(1.0)                         # the server's CPU with no requests, a second
        idle = _cpu_s(proc.pid) - idle
        # Over the warm-up too (the CPU is): the rate times the whole run.
        per_report = (cpu - idle * (duration + 1.0)) / max(1.0, only.rps * (duration + 1.0)) * 1e6
        probe = ThreadProbe(proc.pid, postmaster) if probe_threads else None
        alone = run_http_load(price)
        if probe:
            notes.append(probe.report(f"round {round_}, {label}: price alone"))
            probe = ThreadProbe(proc.pid, postmaster)
        result = {}
        side = threading.Thread(target=lambda: result.update(r=run_http_load(reports)))
        side.start()
        mixed = run_http_load(price)
        side.join()
        if probe:
            notes.append(probe.report(f"round {round_}, {label}: price with 1,000 reports/s"))
        again = run_http_load(price)
        rep = result["r"]
        print(f"| {round_} | {label} | {alone.rps:,.0f} / {again.rps:,.0f} | "
              f"{alone.percentile(99) / 1e6:.2f} | "
              f"{mixed.rps:,.0f} | {mixed.percentile(99) / 1e6:.2f} | "
              f"{mixed.rps * 2 / (alone.rps + again.rps):.2f} | {rep.rps:,.0f} | "
              f"{rep.percentile(99) / 1e6:.2f} | {rep.errors + rep.error_replies} | "
              f"{only.percentile(50) / 1e6:.2f} / {only.percentile(99) / 1e6:.2f} | "
              f"{per_report:.0f} | {os.getloadavg()[0]:.1f} |", flush=True)
        if notes:
            # The load generators' threads end with their runs: their CPU
            # is the runs' own (cpu_s), per second of the run.
            notes.append(f"\nload generator threads, ms of CPU a second: reports alone "
                         f"{only.cpu_s / (duration + 1) * 1e3:.0f}; price alone "
                         f"{alone.cpu_s / (duration + 1) * 1e3:.0f}; price with reports "
                         f"{mixed.cpu_s / (duration + 1) * 1e3:.0f} + reports "
                         f"{rep.cpu_s / (duration + 1) * 1e3:.0f}")
            print("\n".join(notes) + "\n", flush=True)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--skip-2d", action="store_true")
    ap.add_argument("--skip-flush", action="store_true")
    ap.add_argument("--database", action="store_true",
                    help="2d with keys and the usage log in PostgreSQL (serve --database)")
    ap.add_argument("--probe", action="store_true",
                    help="also where the PostgreSQL time goes (COPY, upsert, unnest)")
    ap.add_argument("--layouts", action="store_true",
                    help="also the flush on usage_log with C collation and fillfactor 70")
    ap.add_argument("--repeated", action="store_true",
                    help="also the same cells written round after round (append vs unnest, "
                         "to the end of the fold)")
    ap.add_argument("--threads", action="store_true",
                    help="2d: also CPU, run-queue wait and context switches per thread of "
                         "serve, the load generators and PostgreSQL, phase by phase")
    ap.add_argument("--rounds", type=int, default=1, help="2d: rounds (each variant each)")
    ap.add_argument("--against", metavar="PYTHONPATH",
                    help="2d: also `serve` from this source tree (before/after, interleaved)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if not args.skip_flush:
        bench_flush(args.rows, ("default", "C+ff70") if args.layouts else ("default",))
    if args.repeated:
        bench_repeated(30_000, 10)
    if args.probe:
        bench_probe(args.rows)
    if not args.skip_2d:
        variants: tuple[tuple[str, Optional[str]], ...] = (("this tree", None),)
        if args.against:
            variants = (("other tree", args.against),) + variants
        bench_2d(args.duration, args.database, variants, args.rounds, args.threads)


if __name__ == "__main__":
    main()
