"""HTTPS: beastnet's native TLS vs nginx with TLS, same certificate, side by side.

    python benchmarks/bench_tls.py [--duration 5] [--rounds 2] [--connections 50]

Workload: `GET /v1/BTC` (the same ~110-byte JSON body from both), one P-256
ECDSA certificate from a private CA, each server on one thread (beastnet
threads=1, nginx worker_processes 1, no master) pinned to CPU 0, the client
pinned to CPU 1.  Rows, interleaved round by round so a noisy neighbour hits
both alike:
  keep-alive      wrk -t1 -c50 over https:// (one handshake per connection,
                  then requests on it): req/s and server CPU per request;
  full handshake  `openssl s_time -new`: a new connection, a full TLS 1.3
                  handshake (ECDHE + certificate signature), one GET, close;
  resumed 1.3     `openssl s_time -reuse`: the same, resuming with the
                  session ticket of the previous connection (PSK + ECDHE);
  resumed 1.2     `openssl s_time -reuse -tls1_2`: abbreviated TLS 1.2
                  handshake (ticket, no key exchange).
Why s_time for connections: it makes each kind of handshake on purpose (wrk
with `Connection: close` silently resumes its sessions, so it measures a mix),
and it is OpenSSL on both ends, so the difference left is the server's own
cost.  One s_time client is sequential: connections/s is a latency figure
(client and server take turns); the server CPU per connection (utime+stime
from /proc over the window) compares the servers whatever the client does.
Limits: loopback; a shared machine (the client's CPU may be stolen; CPU per
request/connection is the robust column); best of N rounds, no distribution;
/proc CPU has 10 ms ticks (about 1 % over a 5 s window at full load).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import child_env, machine_info, proc_cpu_s  # noqa: E402
from beastnet import ResponseTable  # noqa: E402
from beastnet.serve.assets import ASSETS, price_body  # noqa: E402
from tls_support import NginxTLS, free_port, make_certs  # noqa: E402

SERVER_CPU, CLIENT_CPU = "0", "1"


def pin_all_threads(pid: int, cpu: str) -> None:
    """Pin every thread of `pid` (worker threads started before this too)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {int(cpu)})


def check_body(port: int, cafile: Path, body: bytes) -> None:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with urllib.request.urlopen(f"https://localhost:{port}/v1/BTC", context=ctx, timeout=5) as r:
        assert r.read() == body, f"port {port} serves a different body"


def client(argv: list[str], timeout: float) -> str:
    cmd = ["taskset", "-c", CLIENT_CPU, *argv] if len(os.sched_getaffinity(0)) > 1 else argv
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def keep_alive(port: int, args) -> int:
    """Requests wrk completed in args.duration seconds."""
    out = client(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                  f"https://127.0.0.1:{port}/v1/BTC"], args.duration + 30)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk reported errors:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))


def handshakes(port: int, args, mode: str) -> int:
    """Connections `openssl s_time` completed (each with one GET).  In the
    resumed modes it prints `r` per resumed connection and `*` per full one:
    a run that did not resume (nearly) every time is refused, not reported."""
    extra = {"full": ["-new"], "resumed 1.3": ["-reuse", "-tls1_3"],
             "resumed 1.2": ["-reuse", "-tls1_2"]}[mode]
    out = client(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", *extra,
                  "-time", str(args.duration), "-www", "/v1/BTC"], args.duration + 30)
    counts = [int(n) for n in re.findall(r"(\d+) connections in [\d.]+ real seconds", out)]
    if not counts:
        raise RuntimeError(f"s_time printed no count:\n{out}")
    if mode != "full":
        marks = "".join(line for line in out.splitlines() if set(line) <= {"r", "*"})
        if marks.count("*") > 1 + len(marks) // 100:
            raise RuntimeError(f"{mode}: only {marks.count('r')} of {len(marks)} resumed")
    return counts[-1]


def measure(pid: int, run) -> tuple[float, float] | None:
    """(operations per second of wall time, server CPU microseconds per
    operation), or None when the client completed nothing (starved by a
    neighbour, or s_time failing to connect): such a run is left out."""
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    n = run()
    wall, cpu = time.monotonic() - t0, proc_cpu_s(pid) - cpu0
    if n < 10:
        return None
    return n / wall, cpu / n * 1e6


ROWS = ("keep-alive", "full", "resumed 1.3", "resumed 1.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (keep-alive)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "openssl", "taskset"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light openssl util-linux)")
    body = ResponseTable({a: price_body(a, 12345.6 + i, 1700000000000, source="exchange")
                          for i, a in enumerate(ASSETS)}).get("BTC")
    info = machine_info()
    print(f"machine: {info}")
    print(f"body {len(body)} bytes; {args.duration} s per run, best of {args.rounds}; "
          f"servers on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_tls_") as tmpdir:
        tmp = Path(tmpdir)
        certs = make_certs(tmp / "certs")
        beastnet: subprocess.Popen | None = None
        with NginxTLS(tmp / "nginx", certs.server, body=body.decode()) as nginx:
            try:
                bport = free_port()
                beastnet = subprocess.Popen(
                    [sys.executable, str(HERE / "serve_http.py"), "--port", str(bport),
                     "--threads", "1", "--tls-cert", str(certs.server.cert),
                     "--tls-key", str(certs.server.key)],
                    stdout=subprocess.PIPE, text=True, env=child_env(), start_new_session=True)
                assert beastnet.stdout is not None
                if beastnet.stdout.readline().strip() != "ready":
                    raise RuntimeError("beastnet did not start")
                servers = {"beastnet": (beastnet.pid, bport), "nginx": (nginx.proc.pid, nginx.port)}
                for name, (pid, port) in servers.items():
                    pin_all_threads(pid, SERVER_CPU)
                    check_body(port, certs.ca, body)
                for _ in range(args.rounds):
                    for row in ROWS:
                        for name, (pid, port) in servers.items():
                            if row == "keep-alive":
                                run = (lambda p=port: keep_alive(p, args))
                            else:
                                run = (lambda p=port, r=row: handshakes(p, args, r))
                            got = measure(pid, run)
                            results.setdefault((row, name), [])
                            if got is not None:
                                results[(row, name)].append(got)
                            time.sleep(0.3)
            finally:
                if beastnet is not None:        # stopped by its PID
                    beastnet.send_signal(signal.SIGTERM)
                    beastnet.communicate(timeout=15)
    print("\n| workload | server | ops/s (best) | server CPU µs/op (best) | rounds (ops/s; µs/op) |")
    print("| --- | --- | ---: | ---: | --- |")
    for row in ROWS:
        for name in ("beastnet", "nginx"):
            values = results[(row, name)] or [(float("nan"), float("nan"))]
            rate, cost = max(v[0] for v in values), min(v[1] for v in values)
            rounds = ", ".join(f"{r:,.0f}; {c:.1f}" for r, c in values)
            unit = "req" if row == "keep-alive" else "conn"
            print(f"| {row} ({unit}) | {name} | {rate:,.0f} | {cost:.1f} | {rounds} |")
    print("\nbeastnet/nginx (>1 = beastnet better):")
    for row in ROWS:
        b, n = results[(row, "beastnet")], results[(row, "nginx")]
        if not b or not n:
            print(f"  {row:<12} no complete run")
            continue
        rate = max(v[0] for v in b) / max(v[0] for v in n)
        cost = min(v[1] for v in n) / max(min(v[1] for v in b), 1e-9)
        print(f"  {row:<12} ops/s {rate:.2f}x   server CPU per op {cost:.2f}x")


if __name__ == "__main__":
    main()
