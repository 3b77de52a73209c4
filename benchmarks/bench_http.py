"""HTTP keep-alive throughput: beastnet vs nginx vs uvloop+httptools, side by side, with wrk.

    python benchmarks/bench_http.py [--duration 5] [--rounds 2] [--connections 50] [--pipeline 16]

Workload: `GET /v1/BTC`, keep-alive, one ~110-byte JSON body, `wrk -c50`.
Pairs, interleaved round by round so a noisy neighbour hits all alike:
  1v1: beastnet threads=1 | nginx worker_processes 1 | uvloop peer (1 process),
       each server pinned to CPU 0 and wrk (-t1) to CPU 1 (taskset);
  2v2: beastnet threads=2 | nginx worker_processes 2, unpinned, wrk -t2.
Reports per server the best round's req/s and requests per CPU-second the
server consumed (utime+stime of its processes, from /proc), and the ratios.
Limits: wrk shares the machine with the servers; when neighbours starve the
client, req/s measures the client and only req/CPU-s still compares the
servers (it includes kernel time charged to the server: recv/send, loopback
TCP); loopback only; best-of-N, not a distribution.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

from beastnet import ResponseTable  # noqa: E402
from beastnet.serve.assets import ASSETS, price_body  # noqa: E402

PORTS = {"beastnet": 28480, "nginx": 28481, "uvloop+httptools": 28482, "beastnet-uring": 28479}

NGINX_CONF = """worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location /v1/BTC {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
"""


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(name: str, threads: int, pin: str | None, tmp: Path, body: bytes) -> subprocess.Popen:
    prefix = ["taskset", "-c", pin] if pin else []
    env = dict(os.environ, PYTHONPATH=str(SRC))
    port = PORTS[name]
    if name in ("beastnet", "beastnet-uring"):
        cmd = [sys.executable, str(HERE / "serve_http.py"), "--port", str(port), "--threads", str(threads),
               "--io", "uring" if name == "beastnet-uring" else "epoll"]
    elif name == "nginx":
        conf = tmp / f"nginx-{threads}.conf"
        conf.write_text(NGINX_CONF.format(workers=threads, dir=tmp, port=port, body=body.decode()))
        cmd = ["nginx", "-c", str(conf), "-p", str(tmp)]
    else:
        cmd = [sys.executable, str(HERE / "peers" / "http_uvloop.py"), "--port", str(port)]
    proc = subprocess.Popen(prefix + cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return serving(proc, name, port, body)


def serving(proc: subprocess.Popen, name: str, port: int, body: bytes) -> subprocess.Popen:
    """`proc` once it answers GET /v1/BTC with `body` on `port`; stopped if it does not."""
    try:
        wait_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/BTC", timeout=5) as r:
            assert r.read() == body, f"{name} serves a different body"
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def server_pids(proc: subprocess.Popen) -> list[int]:
    """The server process and its children (nginx workers)."""
    pids = [proc.pid]
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])          # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


PIPELINE = 0        # requests per round trip; 0 = plain keep-alive (set by --pipeline)


def wrk(port: int, threads: int, connections: int, duration: int, pin: str | None) -> float:
    script = ["-s", str(HERE / "pipeline.lua")] if PIPELINE else []
    cmd = (["taskset", "-c", pin] if pin else []) + [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", *script,
        f"http://127.0.0.1:{port}/v1/BTC"] + (["--", str(PIPELINE)] if PIPELINE else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk reported errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def run_pair(names: list[str], threads: int, wrk_threads: int, pin_server: str | None,
             pin_wrk: str | None, args, tmp: Path, body: bytes) -> dict[str, list[float]]:
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    try:
        for n in names:
            procs[n] = start(n, threads, pin_server, tmp, body)
        for _ in range(args.rounds):
            for n in names:
                wrk(PORTS[n], wrk_threads, args.connections, 1, pin_wrk)       # warm-up
                pids = server_pids(procs[n])
                cpu0 = cpu_seconds(pids)
                rate = wrk(PORTS[n], wrk_threads, args.connections, args.duration, pin_wrk)
                # Server CPU spent per request: robust to a client starved by neighbours.
                per_cpu_s = rate * args.duration / max(cpu_seconds(pids) - cpu0, 1e-9)
                results[n].append((rate, per_cpu_s))
                time.sleep(0.5)
    finally:
        for p in procs.values():
            stop(p)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (<= 5 on shared machines)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pipeline", type=int, default=0,
                        help="requests per round trip (wrk -s pipeline.lua); 0 = none")
    args = parser.parse_args()
    global PIPELINE
    PIPELINE = args.pipeline
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk nginx-light util-linux)")
    body = ResponseTable({a: price_body(a, 12345.6 + i, 1700000000000, source="exchange") for i, a in enumerate(ASSETS)}).get("BTC")
    ncpu = len(os.sched_getaffinity(0))
    print(f"machine: {platform.node()} {platform.machine()} {ncpu} CPUs, {platform.platform()}")
    print(f"body: {len(body)} bytes; wrk -c{args.connections} -d{args.duration}s, best of {args.rounds}"
          + (f", pipelined x{args.pipeline}" if args.pipeline else ", no pipelining"))
    with tempfile.TemporaryDirectory(prefix="bench_http_") as tmpdir:
        tmp = Path(tmpdir)
        one = run_pair(["beastnet", "nginx", "uvloop+httptools"], 1, 1, "0", "1" if ncpu > 1 else None,
                       args, tmp, body)
        two = run_pair(["beastnet", "nginx"], 2, 2, None, None, args, tmp, body)
    rows = [("1v1 (-t1, pinned)", one), ("2v2 (-t2)", two)]
    print("\n| pair | server | req/s (best) | req per server CPU-second (best) | rounds (req/s; req/CPU-s) |")
    print("| --- | --- | ---: | ---: | --- |")
    best = {}
    for label, res in rows:
        for name, values in res.items():
            rate, eff = max(v[0] for v in values), max(v[1] for v in values)
            best[(label[:3], name)] = (rate, eff)
            rounds = ", ".join(f"{r:,.0f}; {e:,.0f}" for r, e in values)
            print(f"| {label} | {name} | {rate:,.0f} | {eff:,.0f} | {rounds} |")
    for i, what in ((0, "req/s"), (1, "req per server CPU-second")):
        b1, n1 = best[("1v1", "beastnet")][i], best[("1v1", "nginx")][i]
        p1 = best[("1v1", "uvloop+httptools")][i]
        b2, n2 = best[("2v2", "beastnet")][i], best[("2v2", "nginx")][i]
        print(f"\n{what}: beastnet/nginx 1v1 {b1 / n1:.2f}x, 2v2 {b2 / n2:.2f}x;"
              f" beastnet/uvloop+httptools (1 thread vs 1 process) {b1 / p1:.2f}x")

if __name__ == "__main__":
    main()
