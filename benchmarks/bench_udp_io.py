"""UDP readers, recvmmsg/sendmmsg vs io_uring: how much could io_uring save here?

    python benchmarks/bench_udp_io.py [--duration 3] [--warmup 1] [--rounds 5]
        [--servers beastnet,floor-mmsg,...] [--floor uring+coop+fixed ...] [--json reports/bench_udp_io.json]

servers/udp_io_floor.c (built here with cc and liburing) is one reader thread
answering every request with the same body behind the request's tag, in two
kinds of loop: today's (block in recvmmsg(MSG_WAITFORONE) for up to 32
datagrams, answer them with one sendmmsg: what beastnet's reader does) and
io_uring (one multishot recvmsg into a provided buffer ring, each answer a
send SQE submitted with the next wait):

    floor-mmsg          recvmmsg/sendmmsg, batches of 32
    floor-uring-defer   SINGLE_ISSUER|DEFER_TASKRUN
    floor-uring-coop    SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG
    floor-uring-all     DEFER_TASKRUN + registered ring fd + the socket as a
                        registered file

beastnet's UDPServer (1 reader, no steering, batch 32) runs in the same
rounds.  The client is beastnet.loadgen in this process (1 thread, 64
sockets x window 8, sendmmsg batches of 32, closed loop), the same for every
server, pinned to CPU 1; each server is pinned to CPU 0.  Rounds run every
server once in an order rotated each round.  Reports per server the medians
of req/s and requests per server CPU-second (on-CPU ns of the server's
threads, /proc/<pid>/task/*/schedstat), and the medians of the paired
(same-round) ratios to floor-mmsg.

Limits: loopback, so the server's CPU includes delivering its answers into
the client's sockets (softirq in the sender's context); on a shared machine
req/s measures the client as much as the server: compare CPU per request.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (REPO_DIR, asset_table, build_uring_c, machine_info,  # noqa: E402
                     paired_ratios, spread)
from udp_compare import BEASTNET, PY, LoadgenClient, Row, measure  # noqa: E402

FLOORS = {
    "floor-mmsg": "mmsg",
    "floor-uring-defer": "uring+defer",
    "floor-uring-coop": "uring+coop",
    "floor-uring-all": "uring+defer+regring+fixed",
}
SERVERS = ["beastnet", *FLOORS]
KEY = "BTC"


def rows(exe: Path, body: bytes, pin: list[str]) -> dict[str, Row]:
    out = {"beastnet": Row("beastnet", "beastnet UDPServer, 1 reader",
                           (*pin, PY, BEASTNET, "--sockets", "1", "--no-steering",
                            "--batch", "32"))}
    for name, mode in FLOORS.items():
        out[name] = Row(name, f"udp_io_floor {mode}", (*pin, str(exe), mode, "0", body.decode()))
    return out


def report(results: dict, servers: list[str]) -> tuple[dict, dict]:
    """Median table and the paired ratios to floor-mmsg."""
    print("\n| server | req/s | req per server CPU-second | server CPU µs/req | server CPU use |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {}
    for n in servers:
        runs = [r for r in results[n] if r is not None]
        if not runs:
            print(f"| {n} | failed | | | |")
            continue
        m = {k: statistics.median(r[k] for r in runs) for k in ("rps", "per_cpu_s", "util")}
        medians[n] = m
        print(f"| {n} | {m['rps']:,.0f} | {m['per_cpu_s']:,.0f} | {1e6 / m['per_cpu_s']:.2f} "
              f"| {m['util']:.2f} |")
    pairs = {}
    if "floor-mmsg" in servers:
        print("\nPaired ratios to floor-mmsg, median (min-max) over rounds:\n")
        for n in servers:
            if n == "floor-mmsg":
                continue
            pairs[n] = r = paired_ratios(results[n], results["floor-mmsg"])
            print(f"- {n}/floor-mmsg: req per CPU-second {spread(r['per_cpu_s'])}, rounds with "
                  f"req/s within 2x {spread(r['per_cpu_s_comparable'])}; req/s {spread(r['rps'])}")
    return medians, pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"from {','.join(SERVERS)}")
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_udp_io.json"))
    p.add_argument("--summarize", metavar="JSON", nargs="+",
                   help="print the tables of earlier runs' JSON (their rounds pooled) again, "
                        "run nothing")
    p.add_argument("--floor", action="append", default=[], metavar="MODE",
                   help="also run the floor in this MODE (e.g. uring+coop+fixed), as server "
                        "floor-MODE; repeatable")
    args = p.parse_args()
    for mode in args.floor:
        FLOORS[f"floor-{mode}"] = mode
        SERVERS.append(f"floor-{mode}")
    if args.summarize:
        # Several runs' rounds pooled: each file's rounds stay paired.
        docs = [json.loads(Path(f).read_text())["results"] for f in args.summarize]
        servers = [n for n in docs[0] if all(n in d for d in docs)]
        report({n: [r for d in docs for r in d[n]] for n in servers}, servers)
        return
    servers = args.servers.split(",") + [f"floor-{m}" for m in args.floor]
    for bad in [s for s in servers if s not in SERVERS]:
        sys.exit(f"unknown server: {bad}")
    try:
        client = LoadgenClient(sockets=64, threads=1, window=8, batch=32, timeout_ms=200)
    except ImportError as exc:
        sys.exit(f"beastnet.loadgen is needed (pip install -e . in the checkout): {exc}")
    body = asset_table()[KEY]
    ncpu = len(os.sched_getaffinity(0))
    pin: list[str] = []
    if ncpu > 1:                        # the client (this process's threads) on CPU 1
        os.sched_setaffinity(0, {1})
        pin = ["taskset", "-c", "0"]
    machine = machine_info()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"{started}; {ncpu} CPUs, kernel {machine.get('kernel')}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"loadgen 1 thread, 64 sockets x window 8, batch 32, closed loop; "
          f"{args.duration:g} s + {args.warmup:g} s warm-up; {args.rounds} rounds", flush=True)
    results: dict[str, list] = {n: [] for n in servers}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_udp_io_") as tmpdir:
        exe = build_uring_c(HERE / "servers" / "udp_io_floor.c", Path(tmpdir) / "udp_io_floor")
        table = rows(exe, body, pin)
        for rnd in range(args.rounds):
            loads.append(os.getloadavg()[0])
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for n in order:
                try:
                    r = measure(table[n], client, [KEY], args.duration, args.warmup)
                except RuntimeError as exc:
                    print(f"round {rnd + 1} {n}: {exc}", flush=True)
                    results[n].append(None)
                    continue
                run = {"rps": r["rps"], "per_cpu_s": 1e6 / max(r["server_sched_us_per_req"], 1e-9),
                       "util": r["server_sched_cpu_s"] / max(r["window_s"], 1e-9),
                       "loss_pct": r["loss_pct"], "us_per_req_ticks": r["server_cpu_us_per_req"]}
                results[n].append(run)
                print(f"round {rnd + 1} {n:18} {run['rps']:10,.0f} req/s {run['per_cpu_s']:10,.0f} "
                      f"req/CPU-s  CPU {run['util']:.2f}  loss {run['loss_pct']:.2f} %", flush=True)
                time.sleep(0.3)
    loads.append(os.getloadavg()[0])
    finished = time.strftime("%H:%M:%S UTC", time.gmtime())
    print(f"\n{started} - {finished}; 1-minute load average at each round's start and the end: "
          + ", ".join(f"{x:.1f}" for x in loads))
    medians, pairs = report(results, servers)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": started, "finished": finished, "loads": loads,
                               "modes": FLOORS, "results": results, "medians": medians,
                               "pairs": pairs}, indent=1))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
