"""Exchange feeds over a real loopback WebSocket: a fake of the six exchanges
in its own process pushes their documented ticker messages at N msgs/s to the
feed; this process (the feed's, as in `beastnet serve`: ExchangeFeed ->
PricePublisher -> ResponseTable on one uvloop loop) is measured.

    PYTHONPATH=src python benchmarks/bench_feeds_ws.py [--rates 1500,10000]
        [--seconds 5] [--rounds 2] [--compare]

Per arm and rate: messages received per CPU-second of this process
(time.process_time over the push window: WebSocket client, JSON, parse,
publish, table write, event loop) and the send -> table latency p50/p99/max
(the fake writes its CLOCK_MONOTONIC send time, in microseconds, into the
price; the publisher's write to the table is stamped here: both processes
read the same clock).  Every message is a new price of an asset at its
primary exchange, so every message publishes one answer.

Arms (--compare runs all four, interleaved, in each round; without it only
the default):
  websockets+queue   the `websockets` client, ticks through the feed's queue
                     to the publisher's task (main before this change)
  websockets+direct  the `websockets` client, the publisher called in the reader task
  aiohttp+queue      aiohttp's client, through the queue
  aiohttp+direct     aiohttp's client, the publisher in the reader task (the default)
  picows+direct      (--picows) picows behind the same read() interface (a deque and a
                     future: one task wake-up per read, as aiohttp)
  picows+callback    (--picows) picows calling on_message from its frame callback: no
                     coroutine wake-up per read at all (an experiment, not in the package)
The machine is shared: compare arms of one run, not runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any, Optional

import orjson
from _common import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "tests"))

from beastnet import ResponseTable  # noqa: E402
from beastnet.serve.feeds import Feed, PricePublisher  # noqa: E402
from beastnet.serve.feeds.exchanges import DEFAULT_ROUTES, EXCHANGES, ExchangeFeed  # noqa: E402

NAMES = list(EXCHANGES)
ARMS = ["websockets+queue", "websockets+direct", "aiohttp+queue", "aiohttp+direct"]
SENTINEL = "987654321.25"                     # the price in a template, replaced per message
PER_EXCHANGE = 30


def assets_of() -> dict[str, list[str]]:
    """exchange -> up to 30 assets it is the primary of."""
    return {n: [a for a, names in DEFAULT_ROUTES.items() if names[0] == n][:PER_EXCHANGE]
            for n in NAMES}


# -- the fake exchanges' process --------------------------------------------------------

async def pusher(base_ns: int) -> None:
    """One aiohttp server, /ws/<exchange> for each; on "go RATE SECONDS" from
    stdin, push RATE msgs/s in all (round robin over exchanges and symbols)
    to the newest connection of each exchange; print "done SENT"."""
    from aiohttp import web

    from fake_exchange import ticker

    templates: dict[str, list[tuple[str, str]]] = {}
    for name, assets in assets_of().items():
        rows = []
        for asset in assets:
            text = orjson.dumps(ticker(name, EXCHANGES[name].symbol_of(asset), SENTINEL,
                                       time.time())).decode()
            pre, post = text.split(SENTINEL)
            rows.append((pre, post))
        templates[name] = rows
    clients: dict[str, web.WebSocketResponse] = {}
    changed = asyncio.Event()

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        name = request.match_info["name"]
        clients[name] = ws
        changed.set()
        async for _ in ws:                    # subscribes, pings: not answered, not needed
            pass
        if clients.get(name) is ws:
            del clients[name]
        return ws

    app = web.Application()
    app.router.add_get("/ws/{name}", ws_handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port {port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        rate, seconds = int(line[1]), float(line[2])
        while len(clients) < len(NAMES):
            changed.clear()
            await changed.wait()
        order = [(clients[n], templates[n][i % len(templates[n])])
                 for i in range(PER_EXCHANGE) for n in NAMES]
        start = time.monotonic()
        sent = 0
        total = int(rate * seconds)
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                ws, (pre, post) = order[sent % len(order)]
                price = f"{(time.monotonic_ns() - base_ns) // 1000}.5"
                try:
                    await ws.send_str(pre + price + post)
                except ConnectionError:       # an arm's connection gone early: not counted
                    pass
                else:
                    sent += 1
                    continue
                sent += 1
            await asyncio.sleep(0.001)
        print(f"done {sent} {time.monotonic() - start:.3f}", flush=True)
    await runner.cleanup()


# -- the feed's process ------------------------------------------------------------------

class PicowsStream:
    """picows behind WsStream's interface, for the picows arms (an
    experiment: picows is not a dependency of beastnet)."""

    def __init__(self) -> None:
        from collections import deque
        self.buf: Any = deque()
        self.waiter: Optional[asyncio.Future] = None
        self.closed = False
        self.transport: Any = None
        self.callback: Any = None             # picows+callback: on_message(raw) -> reply

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read(self) -> Optional[bytes]:
        while True:
            if self.buf:
                return self.buf.popleft()
            if self.closed:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    async def send(self, text: str) -> None:
        from picows import WSMsgType
        self.transport.send(WSMsgType.TEXT, text.encode())

    async def close(self) -> None:
        self.transport.send_close()
        self.transport.disconnect()

    def abort(self) -> None:
        self.transport.underlying_transport.abort()

    async def release(self) -> None:
        pass


async def open_picows(url: str, client: str = "picows", open_timeout_s: float = 10.0) -> Any:
    from picows import WSListener, WSMsgType, ws_connect
    stream = PicowsStream()
    data_types = (WSMsgType.TEXT, WSMsgType.BINARY)

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            t = frame.msg_type
            if t in data_types:
                raw = frame.get_payload_as_bytes()
                if stream.callback is not None:
                    reply = stream.callback(raw)
                    if reply is not None:
                        transport.send(WSMsgType.TEXT, reply.encode())
                    return
                stream.buf.append(raw)
                stream.wake()
            elif t == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            stream.closed = True
            stream.wake()

    stream.transport, _ = await asyncio.wait_for(ws_connect(Listener, url), open_timeout_s)
    return stream


async def callback_session(conn: Any, ws: PicowsStream) -> bool:
    """ExchangeConnection._session with on_message called from picows'
    frame callback (the connection's bookkeeping as in _session)."""
    conn.last_message = time.monotonic()
    pinger = asyncio.ensure_future(conn.keepalive(ws))
    subscriber = asyncio.ensure_future(conn.subscribe(ws))
    first = asyncio.get_running_loop().create_future()

    def take(raw: bytes) -> Optional[str]:
        if not first.done():
            first.set_result(None)
            conn._live()
        return conn.on_message(raw)
    ws.callback = take
    try:
        await ws.transport.wait_disconnected()
        return first.done()
    finally:
        for task in (subscriber, pinger):
            task.cancel()


class QueueHop(Feed):
    """The feed as main consumed it: iterated, each tick through its queue."""

    def __init__(self, feed: ExchangeFeed) -> None:
        self.inner = feed
        self.name = feed.name
        self.source_stale_after_s = feed.source_stale_after_s
        self.asset_priority = feed.asset_priority

    def __aiter__(self) -> Any:
        return self.inner.__aiter__()


async def run_arm(arm: str, port: int, child: Any, rate: int, seconds: float,
                  base_ns: int) -> dict[str, Any]:
    client, path = arm.split("+")
    routes = {a: [n] for n, assets in assets_of().items() for a in assets}
    settings = {n: {"ws_url": f"ws://127.0.0.1:{port}/ws/{n}",
                    "rest_url": "http://127.0.0.1:9", "connect_delay_s": 0.0,
                    "rest_interval_s": 3600.0} for n in NAMES}
    if client == "picows":
        from beastnet.serve.feeds.exchanges import connection
        connection.open_stream = open_picows  # type: ignore[assignment]
    feed = ExchangeFeed(routes=routes, assets=list(routes), settings=settings,
                        ws_client="aiohttp" if client == "picows" else client)
    if arm == "picows+callback":
        for conn in feed.connections.values():
            conn._session = (lambda c: lambda ws: callback_session(c, ws))(conn)  # type: ignore
    publisher = PricePublisher(ResponseTable(capacity=512), max_jump=0.2)   # serve's default
    stamps: list[tuple[int, str]] = []
    publish = publisher._publish

    def stamped(asset: str, price: str, *rest: Any, **kw: Any) -> None:
        publish(asset, price, *rest, **kw)
        stamps.append((time.monotonic_ns(), price))
    publisher._publish = stamped              # type: ignore[method-assign]
    task = asyncio.ensure_future(publisher.consume(feed if path == "direct" else QueueHop(feed)))
    try:
        # All six connected before the fake is told to push (it pushes to
        # the newest connection of each exchange).
        while any(c._ws is None for c in feed.connections.values()):
            await asyncio.sleep(0.001)
        child.stdin.write(f"go {rate} {seconds}\n".encode())
        await child.stdin.drain()
        conns = list(feed.connections.values())
        while sum(c.messages for c in conns) == 0:
            await asyncio.sleep(0.001)
        m0, c0, t0 = sum(c.messages for c in conns), time.process_time(), time.monotonic()
        n0 = len(stamps)
        done = (await child.stdout.readline()).decode().split()
        sent = int(done[1])
        deadline = time.monotonic() + 2.0
        while sum(c.messages for c in conns) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        m1, c1, t1 = sum(c.messages for c in conns), time.process_time(), time.monotonic()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if client == "picows":
            from beastnet.serve.feeds.exchanges import connection, wsclient
            connection.open_stream = wsclient.open_stream  # type: ignore[assignment]
    lat = sorted(ns - base_ns - int(float(price)) * 1000 for ns, price in stamps[n0:])
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3) if lat else \
        (lambda q: float("nan"))
    bad = sum(c.bad_messages for c in conns)
    return {"arm": arm, "rate": rate, "received": m1, "sent": sent, "window_s": t1 - t0,
            "per_cpu_s": (m1 - m0) / max(c1 - c0, 1e-9), "cpu_ms_per_s": (c1 - c0) / (t1 - t0) * 1e3,
            "p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] / 1e3 if lat else float("nan"),
            "published": len(stamps) - n0, "bad": bad, "sink_errors": feed.sink_errors}


async def bench(args: argparse.Namespace) -> None:
    base_ns = time.monotonic_ns() - 10**12      # prices ~1e9 µs: relative steps stay tiny
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_DIR / "src"), str(REPO_DIR / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--pusher", str(base_ns), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env)
    try:
        port = int((await child.stdout.readline()).decode().split()[1])  # type: ignore[union-attr]
        arms = ARMS if args.compare else ["aiohttp+direct"]
        if args.picows:
            arms = arms + ["picows+direct", "picows+callback"]
        results: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            for rate in args.rates:
                for arm in arms:
                    r = await run_arm(arm, port, child, rate, args.seconds, base_ns)
                    r["round"] = rnd + 1
                    r["load"] = os.getloadavg()[0]
                    results.append(r)
                    print(f"round {rnd + 1}  {rate:>6,}/s  {arm:<18} "
                          f"{r['per_cpu_s']:>9,.0f} msg/CPU-s  CPU {r['cpu_ms_per_s']:5.0f} ms/s  "
                          f"send->table p50 {r['p50']:7.0f} us  p99 {r['p99']:8.0f} us  "
                          f"max {r['max']:8.0f} us  ({r['received'] - 0:,} recv, "
                          f"{r['published']:,} published, {r['bad']} bad)  "
                          f"load {r['load']:.1f}", flush=True)
        print("\nmedians over rounds")
        for rate in args.rates:
            for arm in arms:
                rows = [r for r in results if r["rate"] == rate and r["arm"] == arm]
                med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]  # noqa: E731
                print(f"{rate:>6,}/s  {arm:<18} {med('per_cpu_s'):>9,.0f} msg/CPU-s  "
                      f"p50 {med('p50'):6.0f} us  p99 {med('p99'):7.0f} us")
            if args.compare:
                def ratio(a: str, b: str) -> float:
                    xs = [r["per_cpu_s"] for r in results if r["rate"] == rate and r["arm"] == a]
                    ys = [r["per_cpu_s"] for r in results if r["rate"] == rate and r["arm"] == b]
                    return sorted(xs)[len(xs) // 2] / sorted(ys)[len(ys) // 2]
                if args.picows:
                    print(f"{rate:>6,}/s  picows+direct / aiohttp+direct "
                          f"{ratio('picows+direct', 'aiohttp+direct'):.2f}x; picows+callback / "
                          f"aiohttp+direct {ratio('picows+callback', 'aiohttp+direct'):.2f}x")
                print(f"{rate:>6,}/s  aiohttp+direct / websockets+queue "
                      f"{ratio('aiohttp+direct', 'websockets+queue'):.2f}x msgs per CPU-s; "
                      f"aiohttp / websockets (direct) "
                      f"{ratio('aiohttp+direct', 'websockets+direct'):.2f}x; "
                      f"direct / queue (aiohttp) {ratio('aiohttp+direct', 'aiohttp+queue'):.2f}x")
    finally:
        if child.stdin is not None:
            child.stdin.write(b"quit\n")
        try:
            await asyncio.wait_for(child.wait(), 5)
        except asyncio.TimeoutError:
            child.kill()
            await child.wait()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--pusher":
        import uvloop
        uvloop.run(pusher(int(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1500,10000",
                    help="messages a second, all six exchanges together (comma-separated)")
    ap.add_argument("--seconds", type=float, default=5.0, help="push window per arm and rate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", action="store_true", help="all four arms, interleaved")
    ap.add_argument("--picows", action="store_true",
                    help="also the two picows arms (pip install picows)")
    args = ap.parse_args()
    args.rates = [int(x) for x in args.rates.split(",")]
    load = os.getloadavg()
    print(f"# bench_feeds_ws: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    # The fakes have no REST: the prewarm's one failure per exchange is not news.
    import logging
    logging.getLogger("beastnet.serve.feeds.exchanges").setLevel(logging.CRITICAL)
    import uvloop
    uvloop.run(bench(args))


if __name__ == "__main__":
    main()
