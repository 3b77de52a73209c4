"""Webhook push: the native UDP pusher's CPU per datagram against a plain
Python `sendto` loop sending the same datagrams; the scheduled engine at
1,000 Enterprise subscriptions (150 assets every 3 s = 50,000 datagrams/s)
with its cycle jitter; signed HTTPS deliveries per second to a local
receiver and the engine's CPU per delivery.

    PYTHONPATH=src python benchmarks/bench_webhooks.py [--subs 1000] [--udp-seconds 7]
                                                       [--https-subs 200] [--https-seconds 6]

UDP goes to sink sockets on loopback that nobody reads (the kernel drops
what overflows them), the same for both senders, so both pay the same
kernel path.  CPU is thread CPU (time.thread_time: user+sys of the sending
thread) for the head-to-head, and process CPU (getrusage) for the
scheduled runs, which include the scheduler, the delivery log and, for
HTTPS, TLS and aiohttp; the HTTPS receiver is a process of its own.
On a shared 2-core machine absolute figures move with everything else;
compare the rows of one run.
"""
from __future__ import annotations

import argparse
import array
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_DIR, asset_body, asset_names, child_env

sys.path.insert(0, str(REPO_DIR / "tests"))

from beastnet import ResponseTable  # noqa: E402
from beastnet._core import UDPPusher  # noqa: E402
from beastnet.serve.push import PushSettings, WebhookPusher, _sockaddr  # noqa: E402
from beastnet.serve.stores.sqlite import WebhookStore  # noqa: E402
from beastnet.serve.webhooks import WebhookTier  # noqa: E402

SINKS = 8

RECEIVER = r"""
import asyncio, ssl, sys
from aiohttp import web
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
async def ok(request):
    await request.read()
    return web.Response(text="ok")
async def main():
    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


def sinks() -> list[socket.socket]:
    out = []
    for _ in range(SINKS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out


def sender() -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.setblocking(False)
    return s


def head_to_head(table: ResponseTable, assets: list[str], subs: int, cycles: int) -> dict:
    """One full cycle of `subs` x len(assets) datagrams, `cycles` times, by each sender."""
    rx = sinks()
    ports = [s.getsockname()[1] for s in rx]
    tx = sender()
    try:
        pusher = UDPPusher(table, assets, tx)
        pusher.set_targets([(_sockaddr(socket.AF_INET, "127.0.0.1", ports[i % SINKS], True),
                             list(range(len(assets)))) for i in range(subs)])
        due = array.array("I", range(subs))
        sent = array.array("I", bytes(4 * subs))
        t_cpu, t_wall = time.thread_time(), time.perf_counter()
        native = sum(pusher.push(due, sent) for _ in range(cycles))
        native_cpu, native_wall = time.thread_time() - t_cpu, time.perf_counter() - t_wall
        stats = pusher.stats()
        # The peer: the bodies fetched once per cycle, one sendto per datagram.
        addrs = [("::ffff:127.0.0.1", ports[i % SINKS]) for i in range(subs)]
        py_sent = py_dropped = 0
        t_cpu, t_wall = time.thread_time(), time.perf_counter()
        for _ in range(cycles):
            bodies = [table.get(a) for a in assets]
            for addr in addrs:
                for b in bodies:
                    try:
                        tx.sendto(b, addr)
                        py_sent += 1
                    except BlockingIOError:
                        py_dropped += 1
        py_cpu, py_wall = time.thread_time() - t_cpu, time.perf_counter() - t_wall
    finally:
        tx.close()
        for s in rx:
            s.close()
    return {"native": (native, native_cpu, native_wall, stats["syscalls"],
                       stats["eagain"] + stats["enobufs"]),
            "python": (py_sent, py_cpu, py_wall, py_sent + py_dropped, py_dropped)}


def rusage_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def scheduled_udp(table: ResponseTable, assets: list[str], subs: int, seconds: float,
                  tmp: Path) -> dict:
    rx = sinks()
    ports = [s.getsockname()[1] for s in rx]
    tiers = {"enterprise": WebhookTier("enterprise", 3.0, 150)}
    try:
        with WebhookStore(str(tmp / "udp.db"), tiers, assets, allow_private=True) as store:
            for i in range(subs):
                store.add(f"udp://127.0.0.1:{ports[i % SINKS]}", "enterprise", assets,
                          resolve=False)
            pusher = WebhookPusher(table, store, assets, PushSettings(allow_private=True))
            cpu0 = rusage_cpu()
            with pusher:
                time.sleep(seconds)
                stats = pusher.stats()
                cpu = rusage_cpu() - cpu0
    finally:
        for s in rx:
            s.close()
    return {"datagrams": stats["udp"]["datagrams"], "cpu": cpu, "seconds": seconds,
            "syscalls": stats["udp"]["syscalls"], "ticks": stats["udp"]["ticks"],
            "dropped": stats["udp"]["eagain"] + stats["udp"]["enobufs"],
            "cycles": stats["cycles"], "lateness": stats["cycle_lateness_ms"],
            "interval_error": stats["cycle_interval_error_ms"], "logged": stats["log"]["written"]}


def scheduled_https(table: ResponseTable, assets: list[str], subs: int, seconds: float,
                    tmp: Path) -> dict:
    from tls_support import make_certs

    certs = make_certs(tmp / "certs")
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(certs.server.cert),
                             str(certs.server.key)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env())
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        tiers = {"fast": WebhookTier("fast", 1.0, 150)}
        with WebhookStore(str(tmp / "https.db"), tiers, assets, allow_private=True) as store:
            for _ in range(subs):
                store.add(f"https://localhost:{port}/hook", "fast", assets[:10], resolve=False)
            pusher = WebhookPusher(table, store, assets,
                                   PushSettings(allow_private=True, ca_file=str(certs.ca)))
            with pusher:
                time.sleep(1.5)                 # connections opened, pools warm
                before = pusher.stats()["methods"]["https"]["deliveries"]
                cpu0, t0 = rusage_cpu(), time.perf_counter()
                time.sleep(seconds)
                stats = pusher.stats()
                cpu, wall = rusage_cpu() - cpu0, time.perf_counter() - t0
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(10)
    https = stats["methods"]["https"]
    return {"deliveries": https["deliveries"] - before, "cpu": cpu, "wall": wall,
            "failures": https["failures"], "latency": https["latency_ms"],
            "interval_error": stats["cycle_interval_error_ms"], "skipped": stats["cycles_skipped_busy"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subs", type=int, default=1000, help="Enterprise subscriptions (default 1000)")
    ap.add_argument("--cycles", type=int, default=2, help="head-to-head cycles (default 2)")
    ap.add_argument("--udp-seconds", type=float, default=7.0, help="scheduled UDP run (default 7)")
    ap.add_argument("--https-subs", type=int, default=200, help="HTTPS subscriptions, 1 s tier "
                                                                "(default 200)")
    ap.add_argument("--https-seconds", type=float, default=6.0, help="HTTPS run (default 6)")
    args = ap.parse_args()
    assets = asset_names(150)
    table = ResponseTable({a: asset_body(a) for a in assets})
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    h2h = head_to_head(table, assets, args.subs, args.cycles)
    print(f"\nUDP, one full cycle x {args.cycles}: {args.subs} subscriptions x 150 assets "
          f"(thread CPU of the sender)")
    print(f"{'sender':<22} {'datagrams':>10} {'dropped':>8} {'syscalls':>9} {'CPU s':>7} "
          f"{'us/datagram':>12} {'datagrams/s':>12}")
    native_us = h2h["native"][1] / max(h2h["native"][0], 1) * 1e6
    for name, (n, cpu, wall, calls, dropped) in (("UDPPusher (sendmmsg)", h2h["native"]),
                                                 ("Python sendto loop", h2h["python"])):
        us = cpu / max(n, 1) * 1e6
        print(f"{name:<22} {n:>10,} {dropped:>8,} {calls:>9,} {cpu:>7.3f} {us:>12.3f} "
              f"{n / wall:>12,.0f}")
    py_us = h2h["python"][1] / max(h2h["python"][0], 1) * 1e6
    print(f"ratio: the Python loop spends {py_us / native_us:.1f}x the CPU per datagram")

    with tempfile.TemporaryDirectory() as tmp:
        udp = scheduled_udp(table, assets, args.subs, args.udp_seconds, Path(tmp))
        print(f"\nUDP, scheduled: {args.subs} Enterprise subscriptions (150 assets / 3 s) for "
              f"{udp['seconds']:.0f} s (process CPU)")
        n = udp["datagrams"]
        print(f"  datagrams {n:,} ({n / udp['seconds']:,.0f}/s), dropped {udp['dropped']:,}, "
              f"sendmmsg calls {udp['syscalls']:,} over {udp['ticks']:,} ticks, cycles "
              f"{udp['cycles']:,}, log rows {udp['logged']:,}")
        print(f"  CPU {udp['cpu']:.2f} s = {udp['cpu'] / max(n, 1) * 1e6:.3f} us/datagram "
              f"({udp['cpu'] / udp['seconds'] * 100:.1f} % of a core)")
        print(f"  cycle lateness ms {udp['lateness']}; |interval - 3 s| ms {udp['interval_error']}")
        https = scheduled_https(table, assets, args.https_subs, args.https_seconds, Path(tmp))
        d = https["deliveries"]
        print(f"\nHTTPS: {args.https_subs} subscriptions (10 assets, 1 s tier) to a local aiohttp "
              f"receiver (its own process), {https['wall']:.1f} s")
        print(f"  deliveries {d:,} ({d / https['wall']:,.0f}/s), failures {https['failures']}, "
              f"cycles skipped busy {https['skipped']}")
        print(f"  CPU {https['cpu']:.2f} s = {https['cpu'] / max(d, 1) * 1e6:.0f} us/delivery; "
              f"latency ms {https['latency']}")
        print(f"  |interval - 1 s| ms {https['interval_error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
