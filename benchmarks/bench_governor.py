"""The governor past the knee: goodput and p99 of partner and public traffic
against an HTTP server whose misses hold the control loop 2 ms each (about
450 misses/s), with the governor off and on, in the same run.

Three open-loop loads at once per row: partner misses at --partner-rate,
public misses at each of --public-rates (below, at and past the knee), and
partner hits at 100/s (hits never queue: their p99 is what the machine adds
to any request in those seconds).  Off and on alternate per rate, so other
load on the machine spreads over both.

    PYTHONPATH=src python benchmarks/bench_governor.py --duration 5 --repeat 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson  # noqa: E402
from _common import BENCH_DIR, machine_info, start_server  # noqa: E402

from beastnet.loadgen import HTTPLoadConfig, run_http_load  # noqa: E402

PARTNER_KEY = "partner-key-0001"
PUBLIC_KEY = "public-key-00001"


def run_row(governor: bool, public_rate: float, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH_DIR / "servers" / "beastnet_governed_http.py"),
            "--handler-ms", str(args.handler_ms), "--target-ms", str(args.target_ms)]
    server = start_server("governed" if governor else "plain",
                          argv + (["--governor"] if governor else []))
    results: dict[str, Any] = {}

    def load(name: str, key: str, api_key: str, rate: float, connections: int) -> None:
        cfg = HTTPLoadConfig(port=server.port, keys=[key], api_key=api_key, rate=rate,
                             duration_s=args.duration, warmup_s=args.warmup,
                             timeout_ms=10_000, connections=connections, threads=1)
        results[name] = run_http_load(cfg)

    loads = [threading.Thread(target=load, args=("partner", "MISS", PARTNER_KEY,
                                                 args.partner_rate, 64)),
             threading.Thread(target=load, args=("public", "MISS", PUBLIC_KEY, public_rate,
                                                 args.public_connections)),
             threading.Thread(target=load, args=("floor", "HIT", PARTNER_KEY, 100, 8))]
    try:
        for t in loads:
            t.start()
        for t in loads:
            t.join()
    finally:
        stats = server.stop() or {}
    row: dict[str, Any] = {"governor": governor, "public_rate": public_rate}
    for name, r in results.items():
        ok = sum(n for status, n in r.status_codes.items() if 200 <= int(status) < 300)
        row[name] = {"sent": r.sent, "unsent": r.unsent, "lost": r.lost,
                     "status_codes": {str(k): v for k, v in r.status_codes.items()},
                     "goodput_per_s": ok / r.duration_s if r.duration_s else 0.0,
                     "p50_ms": r.percentile(50) / 1e6, "p99_ms": r.percentile(99) / 1e6}
    totals = stats.get("totals", {})
    row["server"] = {"shed_public": totals.get("shed_public"),
                     "shed_partner": totals.get("shed_partner"),
                     "handler_calls": totals.get("handler_calls"),
                     "governor": stats.get("governor")}
    return row


def show(row: dict[str, Any]) -> str:
    p, q, f = row["partner"], row["public"], row["floor"]
    return (f"{'on ' if row['governor'] else 'off'} public {row['public_rate']:>5.0f}/s | "
            f"partner goodput {p['goodput_per_s']:6.1f}/s p99 {p['p99_ms']:8.1f} ms "
            f"unsent {p['unsent']:>4} | public goodput {q['goodput_per_s']:6.1f}/s "
            f"p99 {q['p99_ms']:8.1f} ms 503 {q['status_codes'].get('503', 0):>5} "
            f"unsent {q['unsent']:>5} | hits p99 {f['p99_ms']:6.1f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--handler-ms", type=float, default=2.0)
    p.add_argument("--target-ms", type=float, default=20.0)
    p.add_argument("--partner-rate", type=float, default=120.0)
    p.add_argument("--public-rates", default="200,600,1200",
                   help="comma-separated public rates (req/s): below, past and far past the knee")
    p.add_argument("--public-connections", type=int, default=256,
                   help="one request in flight per connection: the most public requests waiting")
    p.add_argument("--json", default=str(BENCH_DIR.parent / "reports" / "bench_governor.json"))
    args = p.parse_args()
    rates = [float(r) for r in args.public_rates.split(",")]
    rows: list[dict[str, Any]] = []
    for n in range(args.repeat):
        for rate in rates:
            for governor in (False, True):
                row = run_row(governor, rate, args)
                row["pass"] = n + 1
                rows.append(row)
                print(f"pass {n + 1} " + show(row), flush=True)
    print("\nmedians over passes:")
    summary = []
    for rate in rates:
        for governor in (False, True):
            same = [r for r in rows if r["public_rate"] == rate and r["governor"] == governor]
            med = {f"{cls}_{m}": statistics.median(r[cls][m] for r in same)
                   for cls in ("partner", "public", "floor") for m in ("goodput_per_s", "p99_ms")}
            med.update(public_rate=rate, governor=governor)
            summary.append(med)
            print(f"{'on ' if governor else 'off'} public {rate:>5.0f}/s: partner goodput "
                  f"{med['partner_goodput_per_s']:.1f}/s p99 {med['partner_p99_ms']:.1f} ms; "
                  f"public goodput {med['public_goodput_per_s']:.1f}/s p99 "
                  f"{med['public_p99_ms']:.1f} ms; hits p99 {med['floor_p99_ms']:.1f} ms")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"machine": machine_info(), "args": vars(args), "rows": rows,
                                  "summary": summary}, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
