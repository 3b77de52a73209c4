"""Rate-limit overhead: the same closed-loop UDP load with a partner key (no
limit: lookup + count) vs a public key whose GCRA limit is checked on every
request but never reached (lookup + CAS + count).  Target: public >= 90 % of
partner req/s.  Rows alternate round-robin so other load spreads over both.

    PYTHONPATH=src python benchmarks/bench_limits.py --duration 5 --repeat 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson  # noqa: E402
from _common import BENCH_DIR, asset_names, machine_info, proc_cpu_s, start_server  # noqa: E402

from beastnet.loadgen import UDPLoadConfig, run_udp_load  # noqa: E402


def run_once(port: int, pid: int, api_key: str, args: argparse.Namespace) -> dict:
    cfg = UDPLoadConfig(host="127.0.0.1", port=port, keys=asset_names(), sockets=args.sockets,
                        threads=2, window=args.window, duration_s=args.duration,
                        warmup_s=args.warmup, api_key=api_key)
    cpu0 = proc_cpu_s(pid)
    result = run_udp_load(cfg)
    cpu1 = proc_cpu_s(pid)
    total_s = args.duration + args.warmup
    # Server CPU over the whole run (warm-up included) per answered request of the whole run.
    answered = result.received * total_s / args.duration
    return {"key": api_key, "rps": result.rps, "received": result.received, "lost": result.lost,
            "error_replies": result.error_replies, "p50_ms": result.percentile(50) / 1e6,
            "p99_ms": result.percentile(99) / 1e6,
            "server_us_per_req": (cpu1 - cpu0) * 1e6 / answered if answered else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sockets", type=int, default=64)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--json", default=str(BENCH_DIR.parent / "reports" / "bench_limits.json"))
    args = p.parse_args()
    server = start_server("beastnet", [sys.executable, str(BENCH_DIR / "servers" / "beastnet_udp.py"),
                                       "--api-keys"])
    runs: dict[str, list[dict]] = {"partner-key": [], "public-key": []}
    try:
        for n in range(args.repeat):
            for key in runs:
                row = run_once(server.port, server.pid, key, args)
                runs[key].append(row)
                print(f"pass {n + 1} {key:<12} {row['rps']:>10,.0f} req/s  p50 {row['p50_ms']:.3f} ms  "
                      f"p99 {row['p99_ms']:.3f} ms  server {row['server_us_per_req']:.2f} µs/req  "
                      f"errors {row['error_replies']}", flush=True)
    finally:
        stats = server.stop()
    partner = statistics.median(r["rps"] for r in runs["partner-key"])
    public = statistics.median(r["rps"] for r in runs["public-key"])
    cpu_partner = statistics.median(r["server_us_per_req"] for r in runs["partner-key"])
    cpu_public = statistics.median(r["server_us_per_req"] for r in runs["public-key"])
    print(f"median: partner {partner:,.0f} req/s, public {public:,.0f} req/s -> "
          f"{public / partner:.3f} of partner (target >= 0.90); server CPU "
          f"{cpu_public:.2f} vs {cpu_partner:.2f} µs/req")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_bytes(orjson.dumps({"machine": machine_info(), "runs": runs,
                                              "ratio": public / partner, "server_stats": stats},
                                             default=str, option=orjson.OPT_INDENT_2))
    return 0 if public / partner >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
