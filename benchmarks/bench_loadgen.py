"""Is the load generator ever the bottleneck?  Rate and CPU per request of
beastnet's generator against a well-written asyncio client (UDP) and wrk
(HTTP), each driving the same server from the same machine.

    PYTHONPATH=src python benchmarks/bench_loadgen.py [--duration 3] [--skip-http]

Every client runs as its own process; its CPU (user+sys, whole process, from
wait4) and the server's CPU over the same span are divided by the requests
the client got answered.  beastnet's generator also reports the CPU of its
native threads inside the measured window.  Workloads:
  udp-beastnet   beastnet UDPServer (2 reader threads) <- beastnet load, 64 sockets x window 32, 2 threads
  udp-asyncio    same server <- asyncio+uvloop client, 64 sockets x window 32 (one thread: asyncio has one)
  udp-asyncio-stdlib   the same client on asyncio's own event loop
  http-wrk       nginx (1 worker, `return 200`) <- wrk -t2 -c64
  http-beastnet  same nginx <- beastnet load http://, 64 keep-alive connections, 2 threads
Limits: a shared 2-core box; server and client compete for the same cores,
so absolute figures move with whatever else runs; compare rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from _common import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
ENV = dict(os.environ, PYTHONPATH=SRC)
TICK = os.sysconf("SC_CLK_TCK")

SERVER_SCRIPT = r"""
import json, resource, sys
from beastnet import ResponseTable, UDPServer
t = ResponseTable()
t["BTC"] = b'{"price":1}'
with UDPServer(t, "127.0.0.1", 0, sockets=int(sys.argv[1])) as s:
    print(s.address[1], flush=True)
    for line in sys.stdin:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"tx": s.stats()["totals"]["tx_packets"],
                          "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
"""


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_child(cmd: list[str]) -> tuple[str, float, float]:
    """Run to completion: (stdout, CPU seconds of the child, wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {err[-500:]}")
    return out, ru.ru_utime + ru.ru_stime, time.monotonic() - t0


class UDPServerProc:
    def __init__(self, sockets: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(sockets)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV,
                                     text=True)
        self.port = int(self.proc.stdout.readline())

    def sample(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def bench_udp(args) -> list[dict]:
    rows = []
    server = UDPServerProc(2)
    try:
        clients = {
            "udp-beastnet": [sys.executable, "-m", "beastnet", "load", f"127.0.0.1:{server.port}",
                             "-s", "64", "-w", "32", "-t", "2", "-d", str(args.duration),
                             "--warmup", "0.5", "-q", "--json", "/dev/stdout"],
            "udp-asyncio": [sys.executable, os.path.join(HERE, "asyncio_udp_client.py"),
                            "127.0.0.1", str(server.port), "--sockets", "64", "--window", "32",
                            "-d", str(args.duration), "--warmup", "0.5"],
            "udp-asyncio-stdlib": [sys.executable, os.path.join(HERE, "asyncio_udp_client.py"),
                                   "127.0.0.1", str(server.port), "--sockets", "64",
                                   "--window", "32", "-d", str(args.duration), "--warmup", "0.5",
                                   "--stdlib-loop"],
        }
        for name, cmd in clients.items():
            before = server.sample()
            out, cpu, wall = run_child(cmd)
            after = server.sample()
            answered = after["tx"] - before["tx"]
            d = json.loads(out)
            if name == "udp-beastnet":
                res = d["result"]
                rps, p50, p99 = res["rps"], res["latency_ns"]["p50"], res["latency_ns"]["p99"]
                window_cpu_us = res["cpu_per_request_us"]
            else:
                rps, p50, p99 = d["rps"], d["p50_ns"], d["p99_ns"]
                window_cpu_us = d["cpu_s"] / d["received"] * 1e6 if d["received"] else None
            rows.append({"workload": name, "rps": rps, "p50_ms": p50 / 1e6, "p99_ms": p99 / 1e6,
                         "client_cpu_us_per_req": cpu / answered * 1e6 if answered else None,
                         "client_window_cpu_us_per_req": window_cpu_us,
                         "server_cpu_us_per_req": (after["cpu_s"] - before["cpu_s"]) / answered * 1e6
                         if answered else None,
                         "answered": answered, "wall_s": wall, "command": " ".join(cmd[1:])})
    finally:
        server.close()
    return rows


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /v1/ {{ default_type application/json; return 200 '{{"price":1}}'; }}
    }}
}}
"""


def nginx_workers_cpu(master: int) -> float:
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == master:
                    total += (int(fields[11]) + int(fields[12])) / TICK
            except OSError:
                pass
    return total


def bench_http(args) -> list[dict]:
    nginx, wrk = shutil.which("nginx"), shutil.which("wrk")
    if not nginx or not wrk:
        print("HTTP comparison skipped: needs nginx and wrk (apt-get install -y nginx-light wrk)",
              file=sys.stderr)
        return []
    rows = []
    tmp = tempfile.mkdtemp(prefix="bn-nginx-")
    port = free_port()
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=tmp, port=port))
    proc = subprocess.Popen([nginx, "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/"
        clients = {
            "http-wrk": [wrk, "-t2", "-c64", f"-d{args.duration:g}s", "--latency", url + "BTC"],
            "http-beastnet": [sys.executable, "-m", "beastnet", "load", url, "-k", "BTC",
                              "-c", "64", "-t", "2", "-d", str(args.duration), "--warmup", "0.5",
                              "--timeout-ms", "1000", "-q", "--json", "/dev/stdout"],
        }
        for name, cmd in clients.items():
            cpu0 = nginx_workers_cpu(proc.pid)
            out, cpu, wall = run_child(cmd)
            server_cpu = nginx_workers_cpu(proc.pid) - cpu0
            if name == "http-wrk":
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                total = int(re.search(r"(\d+) requests in", out).group(1))
                p50 = _wrk_ms(re.search(r"50%\s+(\S+)", out).group(1))
                p99 = _wrk_ms(re.search(r"99%\s+(\S+)", out).group(1))
                window_cpu_us = None
            else:
                res = json.loads(out)["result"]
                rps, p50, p99 = res["rps"], res["latency_ns"]["p50"] / 1e6, res["latency_ns"]["p99"] / 1e6
                total = res["extra"]["bytes_out"] // max(1, len(f"GET /v1/BTC HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"))
                window_cpu_us = res["cpu_per_request_us"]
            rows.append({"workload": name, "rps": rps, "p50_ms": p50, "p99_ms": p99,
                         "client_cpu_us_per_req": cpu / total * 1e6 if total else None,
                         "client_window_cpu_us_per_req": window_cpu_us,
                         "server_cpu_us_per_req": server_cpu / total * 1e6 if total else None,
                         "answered": total, "wall_s": wall,
                         "command": " ".join(os.path.basename(c) if i == 0 else c
                                             for i, c in enumerate(cmd))})
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _wrk_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds per client (<= 5)")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    args.duration = min(args.duration, 5.0)
    rows = bench_udp(args)
    if not args.skip_http:
        rows += bench_http(args)
    print_table(rows, {"req/s": "rps", "p50 ms": "p50_ms", "p99 ms": "p99_ms",
                       "client µs/req (process)": "client_cpu_us_per_req",
                       "client µs/req (window)": "client_window_cpu_us_per_req",
                       "server µs/req": "server_cpu_us_per_req"})
    by = {r["workload"]: r for r in rows}
    if "udp-beastnet" in by and "udp-asyncio" in by:
        print(f"\nUDP: beastnet generator / asyncio+uvloop client rate = "
              f"{by['udp-beastnet']['rps'] / by['udp-asyncio']['rps']:.1f}x")
    if "udp-beastnet" in by and "udp-asyncio-stdlib" in by:
        print(f"UDP: beastnet generator / asyncio (stdlib loop) client rate = "
              f"{by['udp-beastnet']['rps'] / by['udp-asyncio-stdlib']['rps']:.1f}x")
    if "http-beastnet" in by and "http-wrk" in by:
        print(f"HTTP: beastnet generator / wrk rate = "
              f"{by['http-beastnet']['rps'] / by['http-wrk']['rps']:.2f}x")
    commands_and_json(rows, args.json)


def print_table(rows: list[dict], columns: dict[str, str]) -> None:
    """A markdown table: the workload, then each column header's row field."""
    print("| workload | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for r in rows:
        print(f"| {r['workload']} | " + " | ".join(_fmt(r[k]) for k in columns.values()) + " |")


def commands_and_json(rows: list[dict], path) -> None:
    """Print each row's command line; write the rows to `path` if given."""
    for r in rows:
        print(f"  {r['workload']}: {r['command']}")
    if path:
        with open(path, "w") as f:
            json.dump({"rows": rows, "loadavg": os.getloadavg()}, f, indent=2)


if __name__ == "__main__":
    main()
