"""A well-written asyncio (uvloop when installed) UDP load client: the
baseline bench_loadgen.py compares beastnet's generator with.

Same protocol and semantics as beastnet.loadgen's closed loop: connected
sockets, `window` requests outstanding on each, `@TAG KEY` with a hex
sequence number as TAG, replies matched by tag, a timeout that counts loss.
Prints one JSON line: sent, received, lost, rps, p50/p99 (ns).

    python benchmarks/asyncio_udp_client.py 127.0.0.1 9000 --sockets 64 --window 32 -d 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from array import array

import numpy as np

try:
    import uvloop
except ImportError:                     # plain asyncio then
    uvloop = None


class Client(asyncio.DatagramProtocol):
    """One connected socket with `window` requests in flight."""

    def __init__(self, run: "Run") -> None:
        self.run = run
        self.seq = 0
        self.pending: dict[int, int] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        for _ in range(self.run.window):
            self.send()

    def send(self) -> None:
        if not self.run.sending:
            return
        self.seq += 1
        self.pending[self.seq] = time.perf_counter_ns()
        self.transport.sendto(b"@%x %s" % (self.seq, self.run.key))
        self.run.sent += self.run.measuring

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.perf_counter_ns()
        space = data.find(b" ")
        if data[:1] != b"@" or space < 0:
            return
        t0 = self.pending.pop(int(data[1:space], 16), None)
        if t0 is None:
            return
        if self.run.measuring:
            self.run.latencies.append(now - t0)
        self.send()

    def error_received(self, exc) -> None:
        pass

    def expire(self, deadline: int) -> None:
        old = [seq for seq, t0 in self.pending.items() if t0 < deadline]
        for seq in old:
            del self.pending[seq]
            self.run.lost += self.run.measuring
            self.send()


class Run:
    def __init__(self, args) -> None:
        self.key = args.key.encode()
        self.window = args.window
        self.sending = True
        self.measuring = False
        self.sent = 0
        self.lost = 0
        self.latencies = array("q")


async def main(args) -> dict:
    loop = asyncio.get_running_loop()
    run = Run(args)
    clients = []
    for _ in range(args.sockets):
        _, proto = await loop.create_datagram_endpoint(lambda: Client(run),
                                                       remote_addr=(args.host, args.port))
        clients.append(proto)
    timeout_ns = int(args.timeout_ms * 1e6)
    t_end_warmup = time.perf_counter() + args.warmup
    while time.perf_counter() < t_end_warmup:
        await asyncio.sleep(0.05)
        for c in clients:
            c.expire(time.perf_counter_ns() - timeout_ns)
    run.measuring = True
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.duration:
        await asyncio.sleep(0.05)
        for c in clients:
            c.expire(time.perf_counter_ns() - timeout_ns)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    run.measuring = False
    run.sending = False
    lat = np.frombuffer(run.latencies, dtype=np.int64) if len(run.latencies) else np.zeros(1)
    return {"client": "asyncio" + ("+uvloop" if uvloop else ""), "sent": run.sent,
            "received": len(run.latencies), "lost": run.lost, "duration_s": elapsed,
            "rps": len(run.latencies) / elapsed, "cpu_s": cpu,
            "p50_ns": float(np.percentile(lat, 50)), "p99_ns": float(np.percentile(lat, 99))}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--sockets", type=int, default=64)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--key", default="BTC")
    p.add_argument("-d", "--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--timeout-ms", type=float, default=200.0)
    p.add_argument("--stdlib-loop", action="store_true",
                   help="run on asyncio's own event loop instead of uvloop")
    args = p.parse_args()
    if uvloop is not None and not args.stdlib_loop:
        uvloop.install()
    else:
        uvloop = None                   # reported as plain "asyncio"
    print(json.dumps(asyncio.run(main(args))))
