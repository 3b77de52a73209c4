"""A well-written asyncio UDP load client: the "asyncio Python client" baseline.

    python benchmarks/clients/udp_asyncio_client.py --port 9000 [--sockets 16] [--window 16]
        [--duration 5] [--warmup 1] [--rate R] [--procs 2 [--pin]] [--loop uvloop]

What a Python team would write before having a native load generator: one
event loop, many *connected* UDP sockets (distinct source ports, so a server's
SO_REUSEPORT group spreads them), requests tagged ``@<seq> KEY`` and matched on
the echoed tag, a timeout counted as loss.

Closed loop (default): each socket keeps ``window`` requests in flight and
sends the next one when an answer (or a timeout) retires one.  Open loop
(``--rate``): requests leave on a fixed schedule, and latency is measured from
the *intended* send time, so a stalled client or server cannot hide queueing
(coordinated omission).  The schedule is served by a 1 ms tick, so open-loop
latencies carry up to ~1 ms of client-side jitter.

Measurement window: requests *sent* between warm-up end and the end of the
run count; their answers are awaited up to the timeout after the end.  rps is
answered requests in the window / window length.  Latency is the time from
send (or intended send) to the matching datagram's arrival in the event loop,
so it includes this client's own loop delay: a Python client measures itself
as much as the server at high load.  Use it as a baseline, not a yardstick.

``--procs P`` runs P independent client processes (each with the options
given, ``--pin`` puts process i on CPU i) and merges their counts and raw
latencies.  Output: one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import orjson

TICK_S = 0.001                          # open-loop scheduler and sweep granularity


@dataclass
class ClientConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    keys: Sequence[str] = ("BTC",)
    sockets: int = 16                   # connected sockets, one source port each
    window: int = 16                    # closed loop: requests in flight per socket
    rate: Optional[float] = None        # open loop: requests/s over all sockets
    duration_s: float = 5.0             # measured window
    warmup_s: float = 1.0               # excluded from every figure
    timeout_ms: float = 200.0           # unanswered after this: lost
    loop: str = "uvloop"                # "asyncio" or "uvloop"
    api_key: Optional[str] = None
    start_at_ns: Optional[int] = None   # begin at this time.monotonic_ns(): processes
                                        # started together share one window


@dataclass
class ClientResult:
    sent: int = 0                       # requests sent in the window
    received: int = 0                   # ... answered before their timeout
    lost: int = 0                       # ... not answered in time
    late: int = 0                       # answers that arrived after their timeout
    duration_s: float = 0.0
    cpu_s: float = 0.0                  # this process's CPU time over the window
    window_ns: tuple = (0, 0)           # the window in CLOCK_MONOTONIC ns (time.monotonic_ns),
                                        # the same clock in every process: the harness
                                        # lines the server's CPU samples up with it
    latency_ns: array = field(default_factory=lambda: array("q"))

    @property
    def rps(self) -> float:
        return self.received / self.duration_s if self.duration_s else 0.0


class _Conn(asyncio.DatagramProtocol):
    """One connected socket: its in-flight requests by tag."""

    def __init__(self, run: "_Run", index: int) -> None:
        self.run = run
        self.prefix = f"@{index:x}.".encode()
        self.seq = 0
        self.inflight: dict[bytes, int] = {}   # tag -> (intended) send time, ns
        self.transport: Optional[asyncio.DatagramTransport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, t_ns: int) -> None:
        self.seq += 1
        tag = self.prefix + b"%x" % self.seq
        self.inflight[tag[1:]] = t_ns
        self.transport.sendto(tag + b" " + next(self.run.requests))  # type: ignore[union-attr]
        self.run.on_sent(t_ns)

    def datagram_received(self, data: bytes, addr: object) -> None:
        now = time.monotonic_ns()
        t0 = self.inflight.pop(data[1:data.find(b" ")], None)
        if t0 is None:
            self.run.late += 1          # timed out already (or not ours)
            return
        self.run.on_answer(t0, now)
        if self.run.closed_loop and self.run.sending:
            self.send(now)

    def error_received(self, exc: Exception) -> None:
        self.run.errors += 1            # ECONNREFUSED: nothing listens; timeouts count it

    def sweep(self, now: int, timeout_ns: int) -> int:
        """Retire requests older than the timeout; return how many."""
        expired = [tag for tag, t0 in self.inflight.items() if now - t0 > timeout_ns]
        for tag in expired:
            self.run.on_lost(self.inflight.pop(tag))
        return len(expired)


class _Run:
    def __init__(self, cfg: ClientConfig) -> None:
        self.cfg = cfg
        self.closed_loop = cfg.rate is None
        suffix = f" {cfg.api_key}".encode() if cfg.api_key else b""
        self.requests = itertools.cycle([k.encode("ascii") + suffix for k in cfg.keys])
        self.sending = True
        self.window_start = 0
        self.window_end = 0
        self.res = ClientResult(duration_s=cfg.duration_s)
        self.late = 0
        self.errors = 0

    def in_window(self, t_ns: int) -> bool:
        return self.window_start <= t_ns < self.window_end

    def on_sent(self, t_ns: int) -> None:
        if self.in_window(t_ns):
            self.res.sent += 1

    def on_answer(self, t0: int, now: int) -> None:
        if self.in_window(t0):
            self.res.received += 1
            self.res.latency_ns.append(now - t0)

    def on_lost(self, t0: int) -> None:
        if self.in_window(t0):
            self.res.lost += 1

    async def main(self) -> ClientResult:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        conns: list[_Conn] = []
        for i in range(cfg.sockets):
            _, conn = await loop.create_datagram_endpoint(
                lambda i=i: _Conn(self, i), remote_addr=(cfg.host, cfg.port),
                family=socket.AF_INET)
            conns.append(conn)
        timeout_ns = int(cfg.timeout_ms * 1e6)
        if cfg.start_at_ns is not None:
            await asyncio.sleep(max(0.0, (cfg.start_at_ns - time.monotonic_ns()) / 1e9))
        start = time.monotonic_ns()
        self.window_start = start + int(cfg.warmup_s * 1e9)
        self.window_end = self.window_start + int(cfg.duration_s * 1e9)
        cpu_start: Optional[float] = None
        if self.closed_loop:
            for conn in conns:
                for _ in range(cfg.window):
                    conn.send(time.monotonic_ns())
        interval_ns = int(1e9 / cfg.rate) if cfg.rate else 0
        scheduled = 0
        next_sweep = start
        rr = itertools.cycle(conns)
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic_ns()
            if cpu_start is None and now >= self.window_start:
                cpu_start = time.process_time()
            if now >= self.window_end:
                break
            if interval_ns:
                # Open loop: every request due by now leaves, stamped with its
                # intended time, however late this tick runs.
                due = (now - start) // interval_ns
                while scheduled < due:
                    next(rr).send(start + scheduled * interval_ns)
                    scheduled += 1
            if now >= next_sweep:
                next_sweep = now + timeout_ns // 4
                for conn in conns:
                    if conn.sweep(now, timeout_ns) and self.closed_loop:
                        for _ in range(cfg.window - len(conn.inflight)):
                            conn.send(now)
        cpu_end = time.process_time()
        # Stop sending, give the window's last requests their full timeout.
        self.sending = False
        deadline = self.window_end + timeout_ns
        while any(c.inflight for c in conns) and time.monotonic_ns() < deadline:
            await asyncio.sleep(TICK_S)
        for conn in conns:
            conn.sweep(deadline + timeout_ns + 1, timeout_ns)
            if conn.transport is not None:
                conn.transport.close()
        self.res.cpu_s = cpu_end - (cpu_start if cpu_start is not None else cpu_end)
        self.res.window_ns = (self.window_start, self.window_end)
        self.res.late = self.late
        return self.res


def run(cfg: ClientConfig) -> ClientResult:
    """Run one client in this process (blocks for warmup + duration + drain)."""
    if cfg.loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_Run(cfg).main())


def summarize(parts: list[ClientResult], duration_s: float) -> dict:
    """Merge per-process results: counts add, latencies pool before percentiles."""
    import numpy as np
    lat = np.concatenate([np.frombuffer(p.latency_ns, dtype=np.int64) for p in parts]
                         ) if parts else np.zeros(0, dtype=np.int64)
    received = sum(p.received for p in parts)
    pct = {f"p{q:g}": float(np.percentile(lat, q)) if lat.size else float("nan")
           for q in (50, 90, 99, 99.9)}
    return {
        "sent": sum(p.sent for p in parts),
        "received": received,
        "lost": sum(p.lost for p in parts),
        "late": sum(p.late for p in parts),
        "duration_s": duration_s,
        "rps": received / duration_s if duration_s else 0.0,
        "cpu_s": sum(p.cpu_s for p in parts),
        "latency_ns": {**pct, "max": float(lat.max()) if lat.size else float("nan")},
        "processes": len(parts),
        # run_processes gives every process the same start time, so the
        # windows agree to within the event loop's wake-up delay.
        "window_ns": [min(p.window_ns[0] for p in parts), max(p.window_ns[1] for p in parts)]
        if parts else [0, 0],
    }


def run_processes(cfg: ClientConfig, procs: int, pin: bool = False,
                  timeout_slack_s: float = 30.0) -> dict:
    """Run `procs` client processes at once (process i on CPU i when `pin`),
    wait for all (bounded), and merge their results."""
    children = []
    # Python start-up takes ~0.2 s a process; all start measuring together.
    start_at_ns = time.monotonic_ns() + int(1.5e9)
    with tempfile.TemporaryDirectory(prefix="bn-client-") as tmp:
        for i in range(procs):
            out = Path(tmp) / f"lat{i}.bin"
            argv = [sys.executable, __file__, "--host", cfg.host, "--port", str(cfg.port),
                    "--keys", ",".join(cfg.keys), "--sockets", str(cfg.sockets),
                    "--window", str(cfg.window), "--duration", str(cfg.duration_s),
                    "--warmup", str(cfg.warmup_s), "--timeout-ms", str(cfg.timeout_ms),
                    "--loop", cfg.loop, "--latency-out", str(out),
                    "--start-at-ns", str(start_at_ns)]
            if cfg.rate:
                argv += ["--rate", str(cfg.rate / procs)]
            if cfg.api_key:
                argv += ["--api-key", cfg.api_key]
            if pin:
                argv += ["--cpu", str(i % len(os.sched_getaffinity(0)))]
            children.append((subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                              start_new_session=True), out))
        limit = 1.5 + cfg.warmup_s + cfg.duration_s + 2 * cfg.timeout_ms / 1000 + timeout_slack_s
        parts = []
        for proc, out in children:
            try:
                stdout, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()             # by PID: only the child we started
                proc.communicate(timeout=5)
                raise RuntimeError(f"client process {proc.pid} did not finish in {limit:.0f} s")
            if proc.returncode != 0:
                raise RuntimeError(f"client process {proc.pid} exited {proc.returncode}")
            doc = orjson.loads(stdout.strip().splitlines()[-1])
            part = ClientResult(sent=doc["sent"], received=doc["received"], lost=doc["lost"],
                                late=doc["late"], duration_s=doc["duration_s"],
                                cpu_s=doc["cpu_s"], window_ns=tuple(doc["window_ns"]))
            part.latency_ns.frombytes(out.read_bytes())
            parts.append(part)
    return summarize(parts, cfg.duration_s)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--keys", default=None,
                   help="comma-separated keys (default: the benchmarks' 150-asset table)")
    p.add_argument("--sockets", type=int, default=16)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--rate", type=float, default=None, help="open loop at this req/s")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--timeout-ms", type=float, default=200.0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    p.add_argument("--api-key", default=None)
    p.add_argument("--procs", type=int, default=1, help="client processes to run at once")
    p.add_argument("--pin", action="store_true", help="with --procs: process i on CPU i")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    p.add_argument("--start-at-ns", type=int, default=None,
                   help="start at this time.monotonic_ns() (used by --procs)")
    p.add_argument("--latency-out", default=None,
                   help="write raw latencies (int64 ns) here instead of summarizing")
    args = p.parse_args(argv)
    if args.keys:
        keys = args.keys.split(",")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from _common import asset_names
        keys = asset_names()
    cfg = ClientConfig(host=args.host, port=args.port, keys=keys, sockets=args.sockets,
                       window=args.window, rate=args.rate, duration_s=args.duration,
                       warmup_s=args.warmup, timeout_ms=args.timeout_ms, loop=args.loop,
                       api_key=args.api_key, start_at_ns=args.start_at_ns)
    if args.procs > 1:
        print(orjson.dumps(run_processes(cfg, args.procs, args.pin)).decode())
        return 0
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    res = run(cfg)
    if args.latency_out:
        Path(args.latency_out).write_bytes(res.latency_ns.tobytes())
        doc = {k: v for k, v in asdict(res).items() if k != "latency_ns"}
        print(orjson.dumps(doc).decode())
    else:
        print(orjson.dumps(summarize([res], cfg.duration_s)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
