"""Run a quick ramp (levels 1-6 of the 13-level ramp in docs/loadgen.md) against a
beastnet UDP server.

    python examples/load_generator.py 127.0.0.1:9000 [KEY ...]

Uses only the public API: `beastnet.loadgen` for one load run per level and
`beastnet.loadgen.ramp` for the levels and their pass / warn / fail criteria.
"""
import sys

from beastnet.loadgen import UDPLoadConfig, level_config, run_udp_load
from beastnet.loadgen.ramp import Criteria, default_levels, run_ramp


def main() -> int:
    if len(sys.argv) < 2 or ":" not in sys.argv[1]:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    host, _, port = sys.argv[1].rpartition(":")
    keys = sys.argv[2:] or ["BTC"]
    base = UDPLoadConfig(host=host.strip("[]"), port=int(port), keys=keys, sockets=32, threads=2)

    def run_level(level):
        return run_udp_load(level_config(base, level.requests, level.concurrency, max_seconds=20))

    def show(lr):
        r = lr.result
        print(f"level {lr.level.number}: {lr.level.requests:>6} requests at concurrency "
              f"{lr.level.concurrency:>5}: {r.rps:9.0f} req/s  p50 {r.percentile(50) / 1e6:7.3f} ms  "
              f"p99 {r.percentile(99) / 1e6:7.3f} ms  success {r.success_rate:.2%}  "
              f"{lr.verdict.upper()} {'; '.join(lr.reasons)}")

    report = run_ramp(default_levels(quick=True), run_level, Criteria(), on_level=show)
    print(f"verdict: {report.verdict.upper()}; breaking point: {report.breaking_point or 'none'}")
    return 1 if report.verdict == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
