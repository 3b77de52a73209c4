"""HTTP I/O backends, epoll vs io_uring: how much could io_uring save here?

    python benchmarks/bench_http_io.py [--duration 3] [--rounds 5]
        [--cases ka50,ka1000,pipe16,ka1] [--servers beastnet,nginx,floor-epoll,...]
        [--floor uring+coop+direct ...]
        [--json reports/bench_http_io.json]

beastnet's engine on both backends (HTTPServer(io="epoll") as "beastnet",
io="uring" as "beastnet-uring", threads=1) and nginx run side by side; the
ceiling comes from servers/http_io_floor.c (built here with cc and liburing) is the same
one-thread keep-alive loop on epoll and on io_uring, answering a canned
response of the same body, with no parsing, table or timers.  Its io_uring
variants (see the C file's MODE options) are:

    floor-uring-defer      multishot accept, multishot recv into a provided
                           buffer ring, sends submitted with the next wait,
                           SINGLE_ISSUER|DEFER_TASKRUN (the first experiment)
    floor-uring-coop       the same with COOP_TASKRUN|TASKRUN_FLAG
    floor-uring-defer-all  defer + registered ring fd + accepted sockets as
                           direct (registered) files + one send per connection
                           per wake-up + sends without success completions
    floor-uring-coop-all   the same with COOP_TASKRUN|TASKRUN_FLAG

Their ratio to floor-epoll in requests per server CPU-second, paired round
by round, bounds what an io_uring backend could save beastnet's engine on
this kernel.  beastnet (HTTPServer, threads=1, epoll and io_uring) and nginx
(1 worker) run in the same rounds.  Every round runs each case (keep-alive with 50 and
1,000 connections, pipelined x16 with 50) on every server, in an order
rotated each round, each server pinned to CPU 0 and wrk -t1 to CPU 1, so a
noisy neighbour hits all alike.  Reports per case and server the medians of
req/s, requests per server CPU-second (on-CPU ns of the server's threads from
/proc/<pid>/task/*/schedstat, kernel time in its context included) and the server's CPU use (1.0 = it never
waited), and the medians of the paired ratios.

Limits: loopback only; on a shared machine req/s measures the client as much
as the server, compare req per CPU-second.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_http  # noqa: E402
from _common import REPO_DIR, build_uring_c, paired_ratios, proc_sched_ns, spread  # noqa: E402
from bench_http import server_pids, serving, stop, wrk  # noqa: E402

# name -> (port, the C floor's MODE)
FLOORS = {
    "floor-epoll": (28483, "epoll"),
    "floor-uring-defer": (28484, "uring+defer"),
    "floor-uring-coop": (28485, "uring+coop"),
    "floor-uring-defer-all": (28486, "uring+defer+regring+direct+coalesce+skipcqe"),
    "floor-uring-coop-all": (28487, "uring+coop+regring+direct+coalesce+skipcqe"),
}
SERVERS = ["beastnet", "beastnet-uring", "nginx", *FLOORS]
CASES = {"ka50": (50, 0), "ka1000": (1000, 0), "pipe16": (50, 16), "ka1": (1, 0)}
DEFAULT_CASES = "ka50,ka1000,pipe16"
CASE_TITLES = {"ka50": "keep-alive, 50 connections", "ka1000": "keep-alive, 1,000 connections",
               "pipe16": "pipelined x16, 50 connections",
               # One request in flight: req/s is the round-trip time, so a loop
               # that answers later (completions run late) shows here first.
               "ka1": "keep-alive, 1 connection (round-trip latency)"}


def start(name: str, pin: str | None, tmp: Path, body: bytes, exe: Path) -> subprocess.Popen:
    if name not in FLOORS:
        return bench_http.start(name, 1, pin, tmp, body)
    port, mode = FLOORS[name]
    prefix = ["taskset", "-c", pin] if pin else []
    proc = subprocess.Popen(prefix + [str(exe), mode, str(port), body.decode()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return serving(proc, name, port, body)


def cpu_seconds(pids: list[int]) -> float:
    """On-CPU time of the processes' threads from schedstat, in ns: a short
    pipelined run costs a server a few hundredths of a second, too few of
    /proc/<pid>/stat's 10 ms ticks.  Kernel time spent for the server in its
    own context (syscalls, io_uring task work) is in it."""
    return sum(proc_sched_ns(pid) for pid in pids) / 1e9


def port_of(name: str) -> int:
    return FLOORS[name][0] if name in FLOORS else bench_http.PORTS[name]


def report(results: dict, servers: list[str], cases: list[str]) -> dict:
    """Median tables and the paired (same round, same case) ratios."""
    summary: dict = {}
    for case in cases:
        print(f"\n#### {CASE_TITLES[case]}\n")
        print("| server | req/s | req per server CPU-second | server CPU µs/req | server CPU use |")
        print("| --- | ---: | ---: | ---: | ---: |")
        rows = {}
        for n in servers:
            runs = [r for r in results[case][n] if r is not None]
            if not runs:
                print(f"| {n} | failed | | | |")
                continue
            rate = statistics.median(r["rps"] for r in runs)
            eff = statistics.median(r["per_cpu_s"] for r in runs)
            util = statistics.median(r["util"] for r in runs)
            rows[n] = {"rps": rate, "per_cpu_s": eff, "util": util, "runs": len(runs)}
            print(f"| {n} | {rate:,.0f} | {eff:,.0f} | {1e6 / eff:.2f} | {util:.2f} |")
        pairs = {}
        bases = [(v, "floor-epoll") for v in servers if v.startswith("floor-uring")]
        if "beastnet" in servers and "beastnet-uring" in servers:
            bases.append(("beastnet-uring", "beastnet"))
        for engine in ("beastnet", "beastnet-uring"):
            if engine in servers and "nginx" in servers:
                bases.append((engine, "nginx"))
        print("\nPaired ratios, median (min-max) over rounds:\n")
        for a, b in bases:
            if b not in servers:
                continue
            pairs[f"{a}/{b}"] = r = paired_ratios(results[case][a], results[case][b])
            print(f"- {a}/{b}: req per CPU-second {spread(r['per_cpu_s'])}, rounds with "
                  f"req/s within 2x {spread(r['per_cpu_s_comparable'])}; req/s {spread(r['rps'])}")
        summary[case] = {"medians": rows, "pairs": pairs}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"from {','.join(CASES)}")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"from {','.join(SERVERS)} and the --floor ones")
    parser.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_http_io.json"))
    parser.add_argument("--summarize", metavar="JSON", nargs="+",
                        help="print the tables of earlier runs' JSON (their rounds pooled) "
                             "again, run nothing")
    parser.add_argument("--floor", action="append", default=[], metavar="MODE",
                        help="also run the floor in this MODE (e.g. uring+coop+direct), "
                             "as server floor-MODE; repeatable")
    args = parser.parse_args()
    for i, mode in enumerate(args.floor):
        FLOORS[f"floor-{mode}"] = (28490 + i, mode)
        SERVERS.append(f"floor-{mode}")
    if args.summarize:
        # Several runs' rounds pooled: each file's rounds stay paired.
        docs = [json.loads(Path(f).read_text())["results"] for f in args.summarize]
        cases = [c for c in CASES if any(c in d for d in docs)]
        servers = [n for n in SERVERS if all(n in d[c] for d in docs for c in cases if c in d)]
        pooled = {c: {n: [r for d in docs if c in d for r in d[c][n]] for n in servers}
                  for c in cases}
        report(pooled, servers, cases)
        return
    cases = args.cases.split(",")
    servers = args.servers.split(",") + [f"floor-{m}" for m in args.floor]
    for bad in [c for c in cases if c not in CASES] + [s for s in servers if s not in SERVERS]:
        sys.exit(f"unknown case or server: {bad}")
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (scripts/system-deps installs it)")
    body = bench_http.ResponseTable(
        {a: bench_http.price_body(a, 12345.6 + i, 1700000000000, source="exchange")
         for i, a in enumerate(bench_http.ASSETS)}).get("BTC")
    assert body is not None
    ncpu = len(os.sched_getaffinity(0))
    pin_server, pin_wrk = "0", "1" if ncpu > 1 else None
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"{started}; machine: {platform.node()} {ncpu} CPUs, {platform.platform()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"wrk -t1 -d{args.duration}s, {args.rounds} rounds, cases {','.join(cases)}")
    results: dict = {c: {n: [] for n in servers} for c in cases}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_http_io_") as tmpdir:
        tmp = Path(tmpdir)
        exe = build_uring_c(HERE / "servers" / "http_io_floor.c", tmp / "http_io_floor")
        procs: dict[str, subprocess.Popen] = {}
        try:
            for n in servers:
                procs[n] = start(n, pin_server, tmp, body, exe)
            for rnd in range(args.rounds):
                loads.append(os.getloadavg()[0])
                order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                for case in cases:
                    conns, bench_http.PIPELINE = CASES[case]
                    for n in order:
                        pids = server_pids(procs[n])
                        try:
                            wrk(port_of(n), 1, conns, 1, pin_wrk)          # warm-up
                            cpu0, t0 = cpu_seconds(pids), time.monotonic()
                            rate = wrk(port_of(n), 1, conns, args.duration, pin_wrk)
                            cpu_s, wall = cpu_seconds(pids) - cpu0, time.monotonic() - t0
                        except RuntimeError as exc:      # wrk saw socket errors: no figure
                            why = [ln.strip() for ln in str(exc).splitlines()
                                   if "errors" in ln and "wrk" not in ln]
                            print(f"round {rnd + 1} {case} {n}: no figure, "
                                  f"{why[0] if why else str(exc).splitlines()[0]}", flush=True)
                            results[case][n].append(None)
                            continue
                        if rate <= 0:                    # wrk got nothing through
                            print(f"round {rnd + 1} {case} {n}: no figure, 0 req/s", flush=True)
                            results[case][n].append(None)
                            continue
                        run = {"rps": rate, "per_cpu_s": rate * args.duration / max(cpu_s, 1e-9),
                               "util": cpu_s / wall}
                        results[case][n].append(run)
                        print(f"round {rnd + 1} {case:6} {n:22} {rate:10,.0f} req/s "
                              f"{run['per_cpu_s']:10,.0f} req/CPU-s  CPU {run['util']:.2f}",
                              flush=True)
                        time.sleep(0.3)
        finally:
            for n, p in procs.items():
                if p.poll() is not None:
                    print(f"{n} had exited (code {p.returncode}): "
                          f"{(p.stderr.read() if p.stderr else '').strip()[:200]}")
                stop(p)
    loads.append(os.getloadavg()[0])
    finished = time.strftime("%H:%M:%S UTC", time.gmtime())
    print(f"\n{started} - {finished}; 1-minute load average at each round's start and the end: "
          + ", ".join(f"{x:.1f}" for x in loads))
    summary = report(results, servers, cases)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started, "finished": finished, "loads": loads,
                               "duration_s": args.duration, "rounds": args.rounds,
                               "modes": {n: FLOORS[n][1] for n in servers if n in FLOORS},
                               "results": results, "summary": summary}, indent=1))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
