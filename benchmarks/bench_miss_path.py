"""Miss path: do slow misses slow the hits down?

    PYTHONPATH=src python benchmarks/bench_miss_path.py [--duration 5] [--warmup 1]
        [--miss-rate 2000] [--sleep-ms 10] [--repeat 3]

Three configurations of the same beastnet server (benchmarks/servers/beastnet_udp.py),
run round-robin `--repeat` times:

    hits only         no handler, no miss traffic (reference)
    no handler        misses answered not_found natively by the readers
    slow handler      an async handler that sleeps --sleep-ms per call answers misses

In the last two a second client *process* sends requests for absent keys
open-loop at --miss-rate req/s while the shared load client (same as
udp_compare.py) drives hits closed-loop; the figure is the hit client's req/s.
Target (issue): hit req/s with the slow handler >= 80 % of the no-handler
figure under the same miss traffic.

Limits: on 2 shared cores the handler's control-plane thread (uvloop, GIL)
takes CPU the readers and the hit client would otherwise use, so this
measures that CPU competition too -- which is the point, a sleeping handler
itself costs nothing.  The miss client is the Python asyncio client in open-
loop mode; its 1 ms scheduling tick makes the miss stream bursty at that scale.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (BENCH_DIR, REPO_DIR, asset_names, child_env,  # noqa: E402
                     machine_info, start_server, udp_probe)
from udp_compare import CpuSampler, add_client_args, make_client  # noqa: E402

import orjson  # noqa: E402

PY = sys.executable
SERVER = str(BENCH_DIR / "servers" / "beastnet_udp.py")
MISS_CLIENT = str(BENCH_DIR / "clients" / "udp_asyncio_client.py")
TARGET_RATIO = 0.8
START_DELAY_S = 1.5                     # lets the miss client's interpreter start first


def miss_client(port: int, rate: float, warmup_s: float, duration_s: float,
                start_at_ns: int) -> subprocess.Popen:
    keys = ",".join(f"MISS{i}" for i in range(1000))
    argv = [PY, MISS_CLIENT, "--port", str(port), "--keys", keys, "--rate", str(rate),
            "--sockets", "8", "--warmup", str(warmup_s), "--duration", str(duration_s),
            "--timeout-ms", "1000", "--start-at-ns", str(start_at_ns), "--loop", "uvloop"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env(),
                            start_new_session=True)


def measure(config: str, args: argparse.Namespace, client, keys: list[str]) -> dict:
    argv = [PY, SERVER, "--sockets", str(args.server_sockets)]
    if not args.steering:
        argv.append("--no-steering")
    if config == "slow handler":
        argv += ["--handler-sleep-ms", str(args.sleep_ms)]
    server = start_server(config, argv)
    misses: Optional[subprocess.Popen] = None
    miss_doc: Optional[dict] = None
    try:
        assert udp_probe(server.port, b"@p " + keys[0].encode()).startswith(b"@p {")
        start_at = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        if config != "hits only":
            misses = miss_client(server.port, args.miss_rate, args.warmup, args.duration,
                                 start_at)
        time.sleep(max(0.0, (start_at - time.monotonic_ns()) / 1e9))
        with CpuSampler(server.pid) as sampler:
            run = client.run(server.port, keys, args.duration, args.warmup, False)
        if misses is not None:
            out, _ = misses.communicate(timeout=args.duration + args.warmup + 30)
            miss_doc = orjson.loads(out.strip().splitlines()[-1])
    finally:
        if misses is not None and misses.poll() is None:
            misses.kill()               # by PID: the process we started
            misses.wait(timeout=5)
        stats = server.stop() or {}
    cpu_s, _ = sampler.between(*run.window_ns)
    totals = stats.get("totals", {})
    return {
        "config": config,
        "server_cmd": shlex.join(argv),
        "hit_rps": run.rps,
        "hit_p50_ms": run.p50_ns / 1e6,
        "hit_p99_ms": run.p99_ns / 1e6,
        "hit_lost": run.lost,
        "miss_rps": miss_doc["rps"] if miss_doc else 0.0,
        "miss_p50_ms": miss_doc["latency_ns"]["p50"] / 1e6 if miss_doc else None,
        "miss_p99_ms": miss_doc["latency_ns"]["p99"] / 1e6 if miss_doc else None,
        "miss_lost": miss_doc["lost"] if miss_doc else 0,
        "server_cpu_s": cpu_s,
        "handler_calls": totals.get("handler_calls"),
        "queue_drops": totals.get("queue_drops"),
        "server_totals": totals,
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--miss-rate", type=float, default=2000.0, help="misses/s, open loop")
    p.add_argument("--sleep-ms", type=float, default=10.0, help="handler sleep per call")
    p.add_argument("--server-sockets", type=int, default=2, help="beastnet readers")
    p.add_argument("--steering", action="store_true", help="CPU steering on (default off)")
    p.add_argument("--json", default=str(REPO_DIR / "reports" / "bench_miss_path.json"))
    add_client_args(p)
    args = p.parse_args(argv)

    client = make_client(args)
    keys = asset_names()
    configs = ["hits only", "no handler", "slow handler"]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for n in range(args.repeat):
        for config in configs:
            r = measure(config, args, client, keys)
            runs[config].append(r)
            print(f"  pass {n + 1} {config:13s} hits {r['hit_rps']:>10,.0f} req/s  "
                  f"misses {r['miss_rps']:>7,.0f} req/s (p50 {r['miss_p50_ms'] or 0:.1f} ms)  "
                  f"handler calls {r['handler_calls']}", file=sys.stderr)
            time.sleep(1.0)

    med = {c: statistics.median(r["hit_rps"] for r in runs[c]) for c in configs}
    ratio = med["slow handler"] / med["no handler"] if med["no handler"] else float("nan")
    print(f"| configuration | hit req/s (median of {args.repeat}) | hit p99 ms | miss req/s "
          f"| miss p50 ms | server CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in configs:
        r = sorted(runs[c], key=lambda r: r["hit_rps"])[(len(runs[c]) - 1) // 2]
        mp50 = f"{r['miss_p50_ms']:.2f}" if r["miss_p50_ms"] is not None else "-"
        print(f"| {c} | {med[c]:,.0f} | {r['hit_p99_ms']:.3f} | {r['miss_rps']:,.0f} | {mp50} "
              f"| {r['server_cpu_s']:.2f} |")
    verdict = "pass" if ratio >= TARGET_RATIO else "FAIL"
    print(f"\nhit req/s with a {args.sleep_ms:g} ms async handler / without: {ratio:.2f} "
          f"({verdict}, target >= {TARGET_RATIO}); vs hits only: "
          f"{med['slow handler'] / med['hits only']:.2f}")

    doc = {"benchmark": "bench_miss_path", "command": shlex.join([Path(PY).name] + sys.argv),
           "machine": machine_info(), "client": client.describe(),
           "miss_rate": args.miss_rate, "sleep_ms": args.sleep_ms,
           "median_hit_rps": med, "ratio": ratio, "target": TARGET_RATIO, "verdict": verdict,
           "runs": runs}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
