"""Leak check: open and close a million HTTP connections; compare the server's RSS and fds.

    python benchmarks/leak_http.py [--connections 1000000] [--threads 2]

Workload: wrk with `Connection: close`, so every request is a new TCP
connection (accept, one GET, answer, close by the server), in bursts of at
most 5 s with pauses between them (the machine is shared).  The server runs in
its own process; RSS (VmRSS) and the number of open descriptors are read from
/proc/<pid> after a warm-up of 20k connections and again at the end, and the
connection counters come from its /admin/stats route.
Limits: RSS includes the allocator's retained pages, so it is compared with a
tolerance (the unit test tests/test_http_server.py does 20k in-process).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = 28490


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def totals() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/admin/stats", timeout=5) as r:
        return json.loads(r.read())["totals"]


def churn(target: int, burst_s: int) -> None:
    """Run wrk bursts until the server has accepted `target` more connections."""
    start = totals()["accepted"]
    while totals()["accepted"] - start < target:
        subprocess.run(["wrk", "-t1", "-c16", f"-d{burst_s}s", "-H", "Connection: close",
                        f"http://127.0.0.1:{PORT}/v1/BTC"], capture_output=True, timeout=burst_s + 30)
        done = totals()["accepted"] - start
        print(f"  {done:,} connections", flush=True)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--burst", type=int, default=5, help="seconds per wrk burst")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    proc = subprocess.Popen([sys.executable, str(HERE / "serve_http.py"), "--port", str(PORT),
                             "--threads", str(args.threads)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        print("warm-up: 20,000 connections")
        churn(20_000, 2)
        time.sleep(1)
        rss0, fds0, t0 = rss_kib(proc.pid), fd_count(proc.pid), totals()
        print(f"before: RSS {rss0:,} KiB, {fds0} fds, accepted {t0['accepted']:,}")
        began = time.monotonic()
        churn(args.connections, args.burst)
        elapsed = time.monotonic() - began
        time.sleep(1)
        rss1, fds1, t1 = rss_kib(proc.pid), fd_count(proc.pid), totals()
        print(f"after:  RSS {rss1:,} KiB, {fds1} fds, accepted {t1['accepted']:,}, "
              f"closed {t1['closed']:,}, active {t1['active']}")
        opened = t1["accepted"] - t0["accepted"]
        print(f"\n{opened:,} connections in {elapsed:.0f} s ({opened / elapsed:,.0f}/s); "
              f"RSS {rss1 - rss0:+,} KiB, fds {fds1 - fds0:+d}")
        ok = fds1 == fds0 and rss1 - rss0 < 8 * 1024 and t1["active"] <= 1
        print("PASS" if ok else "FAIL")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
