"""HTTP I/O backends, epoll vs io_uring: how much could io_uring save here?

    python benchmarks/bench_http_io.py [--duration 4] [--rounds 3] [--connections 50]
        [--pipeline 16]

beastnet has no io_uring HTTP worker yet, so this measures the ceiling first:
servers/http_io_floor.c (built here with cc and liburing) is the same
one-thread keep-alive loop on epoll and on io_uring (multishot accept,
multishot receive into a provided buffer ring, sends submitted with the next
wait), answering a canned response of the same body, with no parsing, table
or timers.  Its uring/epoll ratio of requests per server CPU-second bounds
what an io_uring backend could save beastnet's engine on this kernel.
beastnet (HTTPServer, epoll, threads=1) and nginx (1 worker) run in the same
rounds, interleaved, each server pinned to CPU 0 and wrk -t1 to CPU 1, so a
noisy neighbour hits all alike.  Reports, per server, the median of the
rounds' req/s and requests per server CPU-second (utime+stime from /proc,
kernel time charged to the server included).

Limits: loopback only; on a shared machine req/s measures the client as much
as the server, compare req per CPU-second; medians of few rounds.
"""
from __future__ import annotations

import argparse
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
from bench_http import cpu_seconds, server_pids, serving, stop, wrk  # noqa: E402

FLOOR_PORTS = {"floor-epoll": 28483, "floor-uring": 28484}
SERVERS = ["beastnet", "nginx", "floor-epoll", "floor-uring"]


def build_floor(tmp: Path) -> Path:
    exe = tmp / "http_io_floor"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(HERE / "servers" / "http_io_floor.c"),
                    "-luring"], check=True)
    return exe


def start(name: str, pin: str | None, tmp: Path, body: bytes, exe: Path) -> subprocess.Popen:
    if name not in FLOOR_PORTS:
        return bench_http.start(name, 1, pin, tmp, body)
    port = FLOOR_PORTS[name]
    prefix = ["taskset", "-c", pin] if pin else []
    proc = subprocess.Popen(prefix + [str(exe), name.split("-")[1], str(port), body.decode()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return serving(proc, name, port, body)


def port_of(name: str) -> int:
    return FLOOR_PORTS.get(name) or bench_http.PORTS[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=0,
                        help="requests per round trip (wrk -s pipeline.lua); 0 = none")
    args = parser.parse_args()
    bench_http.PIPELINE = args.pipeline
    for tool in ("wrk", "nginx", "taskset", "cc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (scripts/system-deps installs it)")
    body = bench_http.ResponseTable(
        {a: bench_http.price_body(a, 12345.6 + i, 1700000000000, source="exchange")
         for i, a in enumerate(bench_http.ASSETS)}).get("BTC")
    assert body is not None
    ncpu = len(os.sched_getaffinity(0))
    pin_server, pin_wrk = "0", "1" if ncpu > 1 else None
    print(f"machine: {platform.node()} {ncpu} CPUs, {platform.platform()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} rounds"
          + (f", pipelined x{args.pipeline}" if args.pipeline else ", keep-alive, no pipelining"))
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in SERVERS}
    with tempfile.TemporaryDirectory(prefix="bench_http_io_") as tmpdir:
        tmp = Path(tmpdir)
        exe = build_floor(tmp)
        procs: dict[str, subprocess.Popen] = {}
        try:
            for n in SERVERS:
                procs[n] = start(n, pin_server, tmp, body, exe)
            for rnd in range(args.rounds):
                for n in SERVERS:
                    wrk(port_of(n), 1, args.connections, 1, pin_wrk)          # warm-up
                    pids = server_pids(procs[n])
                    cpu0 = cpu_seconds(pids)
                    rate = wrk(port_of(n), 1, args.connections, args.duration, pin_wrk)
                    per_cpu_s = rate * args.duration / max(cpu_seconds(pids) - cpu0, 1e-9)
                    results[n].append((rate, per_cpu_s))
                    print(f"round {rnd + 1} {n:12} {rate:10,.0f} req/s "
                          f"{per_cpu_s:10,.0f} req/CPU-s", flush=True)
                    time.sleep(0.5)
        finally:
            for p in procs.values():
                stop(p)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("\n| server | req/s (median) | req per server CPU-second (median) | server CPU us/req |")
    print("| --- | ---: | ---: | ---: |")
    med = {}
    for n, values in results.items():
        rate = statistics.median(v[0] for v in values)
        eff = statistics.median(v[1] for v in values)
        med[n] = (rate, eff)
        print(f"| {n} | {rate:,.0f} | {eff:,.0f} | {1e6 / eff:.2f} |")
    for i, what in ((0, "req/s"), (1, "req per server CPU-second")):
        print(f"{what}: floor uring/epoll {med['floor-uring'][i] / med['floor-epoll'][i]:.3f}x; "
              f"beastnet/nginx {med['beastnet'][i] / med['nginx'][i]:.3f}x")


if __name__ == "__main__":
    main()
