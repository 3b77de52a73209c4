"""A rolling restart under load: what clients lose when a second `beastnet
serve --share-ports` takes over the ports and the first one drains.

    python benchmarks/rolling_restart.py udp|http [serve flags...] [--rate 5000] [--seconds 12]

Starts `beastnet serve --profile dev` (extra serve flags after the protocol,
e.g. `--profile stress-udp-direct` for steered UDP sockets), drives it with
`beastnet load` open loop at `--rate`, starts a second server with
`--share-ports` and its own admin port after 3 s, sends the first SIGTERM once
the second has logged its ready line, and prints the generator's report
(answered, lost, transport errors).  The figures in docs/deploy.md come from
it.  Limits: one host, loopback, client and servers sharing the CPUs.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port


def start(log: Path, ports: dict[str, int], admin_port: int, extra: list[str]) -> subprocess.Popen:
    """A server, returned once its ready line is in `log`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
         "--udp-port", str(ports["udp"]), "--http-port", str(ports["http"]),
         "--admin-port", str(admin_port), *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 30
    while b'"event":"ready"' not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"rolling_restart: server did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=("udp", "http"))
    parser.add_argument("--rate", type=int, default=5000, help="requests/s (default 5000)")
    parser.add_argument("--seconds", type=float, default=12.0, help="load duration (default 12)")
    args, serve_flags = parser.parse_known_args()
    ports = {"udp": free_port(), "http": free_port()}
    target = (f"udp://127.0.0.1:{ports['udp']}" if args.protocol == "udp"
              else f"http://127.0.0.1:{ports['http']}/v1/")
    with tempfile.TemporaryDirectory() as tmp:
        old = start(Path(tmp, "old.log"), ports, free_port(), serve_flags)
        load = subprocess.Popen(["beastnet", "load", target, "-k", "BTC,ETH", "--rate",
                                 str(args.rate), "-d", str(args.seconds), "--warmup", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        new = None
        try:
            time.sleep(3)                   # the load runs against the old server alone first
            new = start(Path(tmp, "new.log"), ports, free_port(),
                        [*serve_flags, "--share-ports"])
            began = time.monotonic()
            old.send_signal(signal.SIGTERM)
            status = old.wait(30)
            print(f"old server drained and exited {status} in {time.monotonic() - began:.3f} s")
            report, _ = load.communicate(timeout=args.seconds + 60)
            print(report)
        finally:
            for proc in (old, load, new):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        new.send_signal(signal.SIGTERM)
        return new.wait(30) | load.returncode


if __name__ == "__main__":
    sys.exit(main())
