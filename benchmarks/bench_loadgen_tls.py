"""The generator's HTTPS throughput against wrk's, on one nginx with TLS.

    PYTHONPATH=src python benchmarks/bench_loadgen_tls.py [--duration 3]

One nginx (one worker, TLS 1.2/1.3, session tickets on, `return 200`) with
one certificate from a private CA; each client runs as its own process
against it, one after the other, with the same connections, threads and
duration.  Per client: answered req/s, client CPU per request (user+sys of
the whole process from wait4; beastnet also reports its native threads'
CPU inside the measured window), nginx's CPU per request (from /proc), and
handshakes/s.  Workloads:
  keepalive   wrk -t2 -c64 https://...  vs  beastnet load https:// -t 2 -c 64
  close       the same with a new connection (and a full TLS handshake) per
              request: wrk -H 'Connection: close', beastnet --conn-mode close;
              beastnet once more with --tls-resume (resumed handshakes).
Each client runs `--rounds` times (default 3), the clients taking turns, and
the table shows each one's best round by req/s: on a busy machine that is
the figure least disturbed by the neighbours (every round is in --json).
wrk verifies no certificate; beastnet verifies against the CA (--cacert),
which costs once per handshake.  The Python start-up of `beastnet load`
(~0.2 s of CPU) is in its process figure, not in its window figure.
Limits: a shared 2-core box; nginx and the client compete for the cores, so
compare rows of one run, not runs of different days.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import proc_cpu_s  # noqa: E402
from bench_loadgen import _wrk_ms, commands_and_json, print_table, run_child  # noqa: E402
from tls_support import NginxTLS, make_certs  # noqa: E402

CONNECTIONS, THREADS = 64, 2


def _wrk(url: str, duration: float, close: bool) -> list[str]:
    cmd = [shutil.which("wrk") or "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration:g}s",
           "--latency"]
    return cmd + (["-H", "Connection: close"] if close else []) + [url + "BTC"]


def _beastnet(url: str, duration: float, ca: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "beastnet", "load", url, "-k", "BTC", "-c", str(CONNECTIONS),
            "-t", str(THREADS), "-d", str(duration), "--warmup", "0.5", "--timeout-ms", "2000",
            "--cacert", str(ca), "-q", "--json", "/dev/stdout", *extra]


def _row(name: str, cmd: list[str], nginx_pid: int, port: int) -> dict:
    cpu0 = proc_cpu_s(nginx_pid)
    out, cpu, wall = run_child(cmd)
    server_cpu = proc_cpu_s(nginx_pid) - cpu0
    if cmd[0].endswith("wrk"):
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        p50 = _wrk_ms(re.search(r"50%\s+(\S+)", out).group(1))
        p99 = _wrk_ms(re.search(r"99%\s+(\S+)", out).group(1))
        # Connection: close: every request is one connection, one handshake.
        hs = rps if "Connection: close" in cmd else None
        window_cpu_us = resumed = None
    else:
        res = json.loads(out)["result"]
        rps, p50, p99 = res["rps"], res["latency_ns"]["p50"] / 1e6, res["latency_ns"]["p99"] / 1e6
        # Requests over the whole process life, warm-up included, for the
        # process CPU: the bytes written over the size of one request.
        request = f"GET /v1/BTC HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        request += "Connection: close\r\n\r\n" if "--conn-mode" in cmd else "\r\n"
        total = res["extra"]["bytes_out"] // len(request)
        tls = res["extra"]["tls"]
        hs = tls["handshakes_per_s"] if "--conn-mode" in cmd else None
        resumed = tls["resumed"]
        window_cpu_us = res["cpu_per_request_us"]
    return {"workload": name, "rps": rps, "p50_ms": p50, "p99_ms": p99,
            "handshakes_per_s": hs, "resumed": resumed,
            "client_cpu_us_per_req": cpu / total * 1e6 if total else None,
            "client_window_cpu_us_per_req": window_cpu_us,
            "server_cpu_us_per_req": server_cpu / total * 1e6 if total else None,
            "answered": total, "wall_s": wall,
            "command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--duration", type=float, default=3.0,
                   help="measured seconds per client (<= 5)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each client (default 3)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    duration = min(args.duration, 5.0)
    plan: list = []
    runs: list = []
    if not shutil.which("wrk"):
        sys.exit("needs wrk and nginx (apt-get install -y wrk nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="bn-tls-bench-"))
    try:
        certs = make_certs(tmp / "certs")
        with NginxTLS(tmp / "nginx", certs.server, body='{"price":1}') as nginx:
            url = f"https://127.0.0.1:{nginx.port}/v1/"
            pid = nginx.proc.pid
            plan = [
                ("keepalive-wrk", _wrk(url, duration, close=False)),
                ("keepalive-beastnet", _beastnet(url, duration, certs.ca, [])),
                ("close-wrk", _wrk(url, duration, close=True)),
                ("close-beastnet", _beastnet(url, duration, certs.ca, ["--conn-mode", "close"])),
                ("close-beastnet-resume", _beastnet(url, duration, certs.ca,
                                                    ["--conn-mode", "close", "--tls-resume"])),
            ]
            runs = [_row(name, cmd, pid, nginx.port)
                    for _ in range(max(1, args.rounds)) for name, cmd in plan]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [max((r for r in runs if r["workload"] == name), key=lambda r: r["rps"])
            for name, _ in plan]
    print_table(rows, {"req/s": "rps", "p50 ms": "p50_ms", "p99 ms": "p99_ms",
                       "handshakes/s": "handshakes_per_s",
                       "client µs/req (process)": "client_cpu_us_per_req",
                       "client µs/req (window)": "client_window_cpu_us_per_req",
                       "nginx µs/req": "server_cpu_us_per_req"})
    by = {r["workload"]: r for r in rows}
    for mode in ("keepalive", "close"):
        b, w = by[f"{mode}-beastnet"], by[f"{mode}-wrk"]
        print(f"\n{mode}: beastnet / wrk rate = {b['rps'] / w['rps']:.2f}x, client CPU per "
              f"request (process) = {b['client_cpu_us_per_req'] / w['client_cpu_us_per_req']:.2f}x",
              end="")
    print(f"\nclose with --tls-resume: {by['close-beastnet-resume']['resumed']:,} resumed handshakes")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (busy when above ~1)")
    commands_and_json(runs, args.json)


if __name__ == "__main__":
    main()
