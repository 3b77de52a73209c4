"""Memory per slow reader: server RSS while N clients read a 16 MiB entry slowly.

    PYTHONPATH=src python benchmarks/bench_slow_readers.py [--clients 200]
        [--body-mib 16] [--rate-kib 16] [--seconds 8] [--src DIR]

Starts `HTTPServer` (1 worker, write_timeout_s 10) in a subprocess with one
entry of `--body-mib` MiB (from `--src`, default this tree's src/, so the
same script measures another checkout), reads its VmRSS, then opens
`--clients` connections that each ask for the entry once and read it at
`--rate-kib` KiB/s (SO_RCVBUF 16 KiB).  After `--seconds` it prints VmRSS,
VmHWM, the server's write_timeouts (clients it cut off) and the bytes the
clients got.

Limits: RSS is the whole process (interpreter included, about 40 MB);
kernel socket buffers are not process memory and do not show up.  The
clients run in this process, one thread, so the rate is approximate.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER = """
import sys, time
from beastnet import HTTPServer, ResponseTable
table = ResponseTable({"BIG": b"x" * (%d << 20)})
with HTTPServer(table, threads=1, max_connections=4096, write_timeout_s=10.0) as srv:
    print(srv.address[1], flush=True)
    sys.stdin.read()
    print(srv.stats()["totals"]["write_timeouts"], flush=True)
"""


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--body-mib", type=int, default=16)
    ap.add_argument("--rate-kib", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=args.src)
    proc = subprocess.Popen([sys.executable, "-c", SERVER % args.body_mib], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        time.sleep(0.5)
        idle_kb = vm_kb(proc.pid, "VmRSS")
        got = {}
        for _ in range(args.clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /v1/BIG HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            got[s] = 0
        per_tick = args.rate_kib * 1024 // 10
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            tick = time.monotonic()
            for s in list(got):
                try:
                    data = s.recv(per_tick)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    s.close()
                    del got[s]
                    continue
                got[s] += len(data)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        rss_kb = vm_kb(proc.pid, "VmRSS")
        hwm_kb = vm_kb(proc.pid, "VmHWM")
        received = sum(got.values())
        proc.stdin.close()
        write_timeouts = int(proc.stdout.readline())
        for s in got:
            s.close()
        print(f"src={args.src} clients={args.clients} body={args.body_mib} MiB "
              f"rate={args.rate_kib} KiB/s seconds={args.seconds:g}")
        print(f"rss_idle_mb={idle_kb / 1024:.1f} rss_mb={rss_kb / 1024:.1f} "
              f"hwm_mb={hwm_kb / 1024:.1f} write_timeouts={write_timeouts} "
              f"received_mib={received / 2**20:.1f}")
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
