"""A/B: UDP and HTTP hit throughput of two source trees, interleaved in one run.

    python benchmarks/ab_engines.py --a /path/to/base/src --b src [--rounds 3] [--duration 4]
        [--kinds http,udp] [--pipeline 16] [--api-key]

Each round starts, for tree A then tree B, a one-thread server on the same
150-entry table (`_common.asset_table`) and drives it with the same client:
HTTP with `wrk -t1 -c50` (keep-alive `GET /v1/BTC`; `--pipeline N` sends N
per round trip with pipeline.lua, which puts the server's own code, not the
kernel's TCP path, in front), UDP with this tree's
`beastnet.loadgen` (64 sockets x window 8, 2 threads).  Prints req/s and
the server's CPU per request for every run, then the median of each side.
`--api-key` makes both servers enforce API keys (one unlimited key, sent
with every request: `X-API-Key` / the datagram's APIKEY), so the key lookup
is on the measured path.

Limits: client and server share the machine's cores; on a noisy machine
compare the medians and the CPU per request, not single runs.  Loopback only.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

SERVER = """
import sys
sys.path.insert(0, %(bench)r)
from _common import asset_table
from beastnet import APIKeyTable, HTTPServer, ResponseTable, UDPServer
table = ResponseTable(asset_table())
kind, api_key = sys.argv[1], sys.argv[2]
keys = None
if api_key:
    keys = APIKeyTable()
    keys.set(api_key)                   # no limits: the lookup and the count only
srv = (HTTPServer(table, threads=1, api_keys=keys) if kind == "http"
       else UDPServer(table, sockets=1, api_keys=keys)).start()
print(srv.address[1], flush=True)
sys.stdin.read()
srv.stop()
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BENCH_KEY = "bk_benchmark_key_0123456789abcdef"     # 32 bytes, as long as a generated key


def run_one(src: str, kind: str, duration: float, pipeline: int,
            api_key: str = "") -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.Popen([sys.executable, "-c", SERVER % {"bench": str(HERE)}, kind, api_key],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        time.sleep(0.3)
        cpu0 = cpu_s(proc.pid)
        if kind == "http":
            script = ["-s", str(HERE / "pipeline.lua")] if pipeline > 1 else []
            extra = ["--", str(pipeline)] if pipeline > 1 else []
            header = ["-H", f"X-API-Key: {api_key}"] if api_key else []
            out = subprocess.run(["wrk", "-t1", "-c50", f"-d{duration:g}s", *header, *script,
                                  f"http://127.0.0.1:{port}/v1/BTC", *extra],
                                 capture_output=True, text=True, check=True).stdout
            m = re.search(r"Requests/sec:\s+([\d.]+)", out)
            assert m, out
            # A refused key would measure 401s: every answer must be a hit.
            assert "Non-2xx" not in out, out
            rps = float(m.group(1))
            n = rps * duration
        else:
            from beastnet.loadgen import UDPLoadConfig, run_udp_load
            from _common import asset_names
            cfg = UDPLoadConfig(host="127.0.0.1", port=port, keys=asset_names(), weights=None,
                                sockets=64, threads=2, window=8, rate=None, poisson=False,
                                duration_s=duration, warmup_s=0.5, timeout_ms=200, batch=32,
                                pin_threads=False, api_key=api_key or None,
                                max_requests=None)
            res = run_udp_load(cfg)
            assert not res.error_replies, res.error_bodies     # hits only, as for HTTP
            rps = res.rps
            n = float(res.received)
        cpu = cpu_s(proc.pid) - cpu0
        return rps, cpu / n * 1e6 if n else float("nan")
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="src directory of tree A (the baseline)")
    ap.add_argument("--b", required=True, help="src directory of tree B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--kinds", default="http,udp", help="comma-separated: http, udp")
    ap.add_argument("--pipeline", type=int, default=1, help="HTTP requests per round trip")
    ap.add_argument("--api-key", action="store_true",
                    help="both servers enforce API keys; every request carries one")
    args = ap.parse_args()
    api_key = BENCH_KEY if args.api_key else ""
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    print(f"load average {os.getloadavg()[0]:.2f}")
    for rnd in range(args.rounds):
        for kind in kinds:
            for side, src in (("A", args.a), ("B", args.b)):
                rps, us = run_one(src, kind, args.duration, args.pipeline, api_key)
                results.setdefault((kind, side), []).append((rps, us))
                print(f"round {rnd + 1} {kind:4} {side}: {rps:10,.0f} req/s  {us:6.2f} us CPU/req",
                      flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for kind in kinds:
        a = results[(kind, "A")]
        b = results[(kind, "B")]
        ma = statistics.median(r for r, _ in a)
        mb = statistics.median(r for r, _ in b)
        ca = statistics.median(u for _, u in a)
        cb = statistics.median(u for _, u in b)
        print(f"{kind}: median A {ma:,.0f} req/s ({ca:.2f} us/req), B {mb:,.0f} req/s "
              f"({cb:.2f} us/req), B/A {mb / ma:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
