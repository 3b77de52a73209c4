"""Exchange feeds over a real loopback WebSocket: a fake of the six exchanges
in its own process pushes their documented ticker messages at N msgs/s to the
feed; this process (the feed's, as in `beastnet serve`: ExchangeFeed ->
PricePublisher -> ResponseTable on one uvloop loop) is measured.

    PYTHONPATH=src python benchmarks/bench_feeds_ws.py [--rates 1500,10000,0]
        [--seconds 5] [--rounds 2] [--compare]

Rate 0 is saturation: the fake writes pre-built frames, 64 to a write, as
fast as the feed takes them (each connection's unsent bytes kept under
256 KiB beside what the kernel holds), so each read of the feed carries many
frames: the ingest's capacity.  Its latency is queueing, not the path's.

Per arm and rate: messages received per CPU-second of this process
(time.process_time over the push window: WebSocket client, JSON, parse,
publish, table write, event loop) and the send -> table latency p50/p99/max
(the fake writes its CLOCK_MONOTONIC send time, in microseconds, into the
price; the publisher's write to the table is stamped here: both processes
read the same clock).  Every message is a new price of an asset at its
primary exchange, so every message publishes one answer.

Arms (--compare runs all six, interleaved, in each round; without it
aiohttp+direct, native+each and native+direct):
  websockets+queue   the `websockets` client, ticks through the feed's queue
                     to the publisher's task (main before this change)
  websockets+direct  the `websockets` client, the publisher called in the reader task
  aiohttp+queue      aiohttp's client, through the queue
  aiohttp+direct     aiohttp's client, the publisher in the reader task (the default
                     before the native client)
  native+direct      beastnet's client (wsclient.py): a Protocol whose data_received
                     unframes a read's frames in one native call and hands them to the
                     adapter as a batch; the publisher checks every tick and writes the
                     table once per asset per read (the default)
  native+each        the same client, the table written for every tick (no batch hooks:
                     what the conflation saves)
  picows+direct      (--picows) picows behind the same read() interface (a deque and a
                     future: one task wake-up per read, as aiohttp)
  picows+callback    (--picows) picows calling on_message from its frame callback: no
                     coroutine wake-up per read at all (an experiment, not in the package)
With --subscriber, the aiohttp+direct arm also serves its table as `serve`
does (an HTTPServer with the WebSocket stream, one worker thread, in this
process) to a native subscriber (clients/ws_fanout_client.c, one connection
subscribed to every asset of the arm): exchange send -> WebSocket subscriber
receive, p50/p99/max from the client's histogram over the push window (the
subscription's snapshot frames fall before it), and table write -> subscriber
receive, each frame matched by its price to the write stamped here.
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

from beastnet import HTTPServer, ResponseTable, WebSocketOptions  # noqa: E402
from beastnet.serve.feeds import Feed, PricePublisher  # noqa: E402
from beastnet.serve.feeds.exchanges import DEFAULT_ROUTES, EXCHANGES, ExchangeFeed  # noqa: E402

NAMES = list(EXCHANGES)
ARMS = ["websockets+queue", "websockets+direct", "aiohttp+queue", "aiohttp+direct",
        "native+each", "native+direct"]
DEFAULT_ARMS = ["aiohttp+direct", "native+each", "native+direct"]
BURST = 64                                    # frames to one write at saturation
SATURATION_BUFFER = 256 << 10                 # unsent bytes per connection, at most
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
    from beastnet._core import ws_frame
    clients: dict[str, web.WebSocketResponse] = {}
    gens: dict[str, str] = {}                 # exchange -> the arm (?gen=) of its connection
    transports: dict[str, Any] = {}
    changed = asyncio.Event()

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        name = request.match_info["name"]
        clients[name] = ws
        gens[name] = request.query.get("gen", "")
        transports[name] = request.transport
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
        rate, seconds, gen = int(line[1]), float(line[2]), line[3]
        # The arm's own six connections (a previous arm's may still be closing).
        while len(clients) < len(NAMES) or any(gens.get(n) != gen for n in NAMES):
            changed.clear()
            await changed.wait()
        order = [(clients[n], templates[n][i % len(templates[n])])
                 for i in range(PER_EXCHANGE) for n in NAMES]
        start = time.monotonic()
        sent = 0
        if rate == 0:
            sent = await saturate(order, [transports[n] for n in NAMES], seconds, base_ns,
                                  ws_frame)
            print(f"done {sent} {time.monotonic() - start:.3f}", flush=True)
            continue
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


async def saturate(order: list, transports: list, seconds: float, base_ns: int,
                   ws_frame: Any) -> int:
    """Push for `seconds` as fast as the feed reads: BURST frames to a write
    on every connection whose unsent bytes are under SATURATION_BUFFER
    (frames written to the TCP transport directly: aiohttp's writer costs
    more per frame than the feed does); the number of messages sent."""
    by_transport: dict[int, list] = {}
    for i, (ws, row) in enumerate(order):
        by_transport.setdefault(i % len(transports), []).append(row)
    end = time.monotonic() + seconds
    sent = 0
    k = 0
    while time.monotonic() < end:
        wrote = False
        for i, tr in enumerate(transports):
            if tr.is_closing() or tr.get_write_buffer_size() > SATURATION_BUFFER:
                continue
            rows = by_transport[i]
            frames = []
            for j in range(BURST):
                pre, post = rows[(k + j) % len(rows)]
                price = f"{(time.monotonic_ns() - base_ns) // 1000}.5"
                frames.append(ws_frame(1, (pre + price + post).encode()))
            tr.write(b"".join(frames))
            sent += BURST
            wrote = True
        k += BURST
        await asyncio.sleep(0 if wrote else 0.0005)
    return sent


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


def build_subscriber() -> str:
    """Compile clients/ws_fanout_client.c into a temp dir; its path."""
    import shutil
    import subprocess
    import tempfile
    src = REPO_DIR / "benchmarks" / "clients" / "ws_fanout_client.c"
    exe = os.path.join(tempfile.mkdtemp(prefix="bench-feeds-ws-"), "ws_fanout_client")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("bench_feeds_ws: --subscriber needs a C compiler (cc/gcc)")
    r = subprocess.run([cc, "-O2", "-Wall", "-o", exe, str(src), "-lz"], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"bench_feeds_ws: building the subscriber failed:\n{r.stderr.strip()}")
    return exe


def hist_quantile(hist: list[list[int]], q: float) -> float:
    """The q-quantile (µs) of the client's [floor ns, count] histogram."""
    total = sum(c for _, c in hist)
    seen = 0
    for floor, count in sorted(hist):
        seen += count
        if seen >= q * total:
            return floor / 1e3
    return float("nan")


async def start_subscriber(exe: str, port: int, assets: list[str], base_ns: int,
                           dump: str) -> Any:
    """The native subscriber, connected and acknowledged; it waits for its
    window ("T0 T1") on stdin."""
    proc = await asyncio.create_subprocess_exec(
        exe, "--port", str(port), "--conns", "1", "--assets", ",".join(assets),
        "--universe", str(max(len(assets), 1)), "--symbols", "1", "--price-base-ns",
        str(base_ns), "--connect-timeout-s", "10", "--dump", dump, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    ready = (await proc.stdout.readline()).decode().split()  # type: ignore[union-attr]
    if ready != ["ready", "1"]:
        proc.kill()
        raise SystemExit(f"bench_feeds_ws: the subscriber did not connect: {ready}")
    return proc


async def run_arm(arm: str, port: int, child: Any, rate: int, seconds: float,
                  base_ns: int, subscriber: Optional[str] = None) -> dict[str, Any]:
    client, path = arm.split("+")
    routes = {a: [n] for n, assets in assets_of().items() for a in assets}
    gen = f"{os.getpid()}-{time.monotonic_ns()}"
    settings = {n: {"ws_url": f"ws://127.0.0.1:{port}/ws/{n}?gen={gen}",
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
    table = ResponseTable(capacity=512)
    publisher = PricePublisher(table, max_jump=0.2)   # serve's default
    server: Optional[HTTPServer] = None
    sub: Any = None
    if subscriber is not None:
        # The stream subscribes known symbols only (serve's prewarm has them
        # all in the table before anyone subscribes): a placeholder each.
        for asset in routes:
            table.set(asset, b'{"asset":"%s","price":0}' % asset.encode())
        server = HTTPServer(table, threads=1, websocket=WebSocketOptions()).start()
        dump = subscriber + f".{os.getpid()}.dump"
        sub = await start_subscriber(subscriber, server.address[1], list(routes), base_ns, dump)
    stamps: list[tuple[int, str]] = []
    calls: dict[str, int] = {}                # price -> ns the publisher's write began
    publish = publisher._publish

    end_batch = publisher.end_batch

    def stamped(asset: str, price: str, *rest: Any, **kw: Any) -> None:
        if publisher._pending is not None:    # a read's batch: written at end_batch
            publish(asset, price, *rest, **kw)
            return
        if sub is not None:
            calls[price] = time.monotonic_ns()
        publish(asset, price, *rest, **kw)
        stamps.append((time.monotonic_ns(), price))

    def stamped_end() -> None:
        # The prices the batch writes: each asset's last (the others were conflated).
        written = [fields[0] for fields in (publisher._pending or {}).values()]
        if sub is not None:
            now = time.monotonic_ns()
            calls.update((price, now) for price in written)
        end_batch()
        now = time.monotonic_ns()
        stamps.extend((now, price) for price in written)
    publisher._publish = stamped              # type: ignore[method-assign]
    publisher.end_batch = stamped_end         # type: ignore[method-assign]
    if path == "each":
        deliver_to = feed.deliver_to
        feed.deliver_to = lambda sink, batch=None: deliver_to(sink)  # type: ignore
    task = asyncio.ensure_future(publisher.consume(QueueHop(feed) if path == "queue" else feed))
    try:
        # All six connected before the fake is told to push (it pushes to
        # the newest connection of each exchange).
        while any(c._ws is None for c in feed.connections.values()):
            await asyncio.sleep(0.001)
        if sub is not None:             # the window: the push's, with room either side
            now = time.monotonic_ns()
            sub.stdin.write(f"{now} {now + int((seconds + 0.5) * 1e9)}\n".encode())
            await sub.stdin.drain()
        child.stdin.write(f"go {rate} {seconds} {gen}\n".encode())
        await child.stdin.drain()
        conns = list(feed.connections.values())
        while sum(c.messages for c in conns) == 0:
            await asyncio.sleep(0.001)
        m0, c0, t0 = sum(c.messages for c in conns), time.process_time(), time.monotonic()
        n0 = len(stamps)
        done = (await child.stdout.readline()).decode().split()
        sent = int(done[1])
        # At saturation the kernel's socket buffers hold a backlog still to read.
        deadline = time.monotonic() + (2.0 if rate else 20.0)
        while sum(c.messages for c in conns) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        m1, c1, t1 = sum(c.messages for c in conns), time.process_time(), time.monotonic()
        sub_result: dict[str, Any] = {}
        if sub is not None:
            line = await asyncio.wait_for(sub.stdout.readline(), seconds + 30)
            sub_result = orjson.loads(line)
            await sub.wait()
    finally:
        if sub is not None and sub.returncode is None:
            sub.kill()
            await sub.wait()
        if server is not None:
            server.stop(grace_s=0.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if client == "picows":
            from beastnet.serve.feeds.exchanges import connection, wsclient
            connection.open_stream = wsclient.open_stream  # type: ignore[assignment]
    lat = sorted(ns - base_ns - int(float(price)) * 1000 for ns, price in stamps[n0:])
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3) if lat else \
        (lambda q: float("nan"))
    bad = sum(c.bad_messages for c in conns)
    hist = sub_result.get("hist", [])
    ws: dict[str, Any] = {}
    if sub_result:
        # From the start of the write: the worker may have sent the frame
        # before the publisher's call returns.
        written = {int(float(price)): ns for price, ns in calls.items()}
        with open(dump) as fh:
            hop = sorted(int(t) - written[int(p)] for p, t in (line.split() for line in fh)
                         if int(p) in written)
        os.unlink(dump)
        q = (lambda x: hop[min(len(hop) - 1, int(x * len(hop)))] / 1e3) if hop else \
            (lambda x: float("nan"))
        ws = {"ws_bodies": sub_result.get("bodies", 0), "ws_p50": hist_quantile(hist, 0.5),
              "ws_p99": hist_quantile(hist, 0.99), "ws_max": hist_quantile(hist, 1.0),
              "hop_matched": len(hop), "hop_p50": q(0.5), "hop_p99": q(0.99),
              "hop_max": hop[-1] / 1e3 if hop else float("nan")}
    return {**ws, "arm": arm, "rate": rate, "received": m1, "sent": sent, "window_s": t1 - t0,
            "per_cpu_s": (m1 - m0) / max(c1 - c0, 1e-9), "cpu_ms_per_s": (c1 - c0) / (t1 - t0) * 1e3,
            "p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] / 1e3 if lat else float("nan"),
            "published": len(stamps) - n0, "conflated": publisher.conflated, "bad": bad,
            "sink_errors": feed.sink_errors,
            "reconnects": sum(c.reconnects for c in conns),
            "errors": sorted({c._last_error for c in conns if c._last_error})}


async def bench(args: argparse.Namespace) -> None:
    base_ns = time.monotonic_ns() - 10**12      # prices ~1e9 µs: relative steps stay tiny
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_DIR / "src"), str(REPO_DIR / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--pusher", str(base_ns), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env)
    try:
        port = int((await child.stdout.readline()).decode().split()[1])  # type: ignore[union-attr]
        arms = ARMS if args.compare else DEFAULT_ARMS
        subscriber = build_subscriber() if args.subscriber else None
        if args.picows:
            arms = arms + ["picows+direct", "picows+callback"]
        results: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            for rate in args.rates:
                for arm in arms:
                    r = await run_arm(arm, port, child, rate, args.seconds, base_ns,
                                      subscriber if arm == args.subscriber_arm else None)
                    r["round"] = rnd + 1
                    r["load"] = os.getloadavg()[0]
                    results.append(r)
                    print(f"round {rnd + 1}  {rate if rate else 'sat':>6}/s  {arm:<18} "
                          f"{r['per_cpu_s']:>9,.0f} msg/CPU-s  CPU {r['cpu_ms_per_s']:5.0f} ms/s  "
                          f"send->table p50 {r['p50']:7.0f} us  p99 {r['p99']:8.0f} us  "
                          f"max {r['max']:8.0f} us  ({r['received']:,} of {r['sent']:,} recv, "
                          f"{r['published']:,} published, {r['conflated']:,} conflated, {r['bad']} bad, "
                          f"{r['reconnects']} reconnects)  "
                          f"load {r['load']:.1f}", flush=True)
                    if "ws_p99" in r:
                        print(f"          send->WebSocket subscriber ({r['ws_bodies']:,} frames) "
                              f"p50 {r['ws_p50']:7.0f} us  p99 {r['ws_p99']:8.0f} us  "
                              f"max {r['ws_max']:8.0f} us; table->subscriber "
                              f"({r['hop_matched']:,} matched) p50 {r['hop_p50']:5.0f} us  "
                              f"p99 {r['hop_p99']:6.0f} us  max {r['hop_max']:6.0f} us",
                              flush=True)
        print("\nmedians over rounds (rate 'sat': saturation; its latency is queueing)")
        for rate in args.rates:
            label = f"{rate:,}" if rate else "sat"

            def ratio(a: str, b: str) -> float:
                xs = [r["per_cpu_s"] for r in results if r["rate"] == rate and r["arm"] == a]
                ys = [r["per_cpu_s"] for r in results if r["rate"] == rate and r["arm"] == b]
                return sorted(xs)[len(xs) // 2] / sorted(ys)[len(ys) // 2]
            for arm in arms:
                rows = [r for r in results if r["rate"] == rate and r["arm"] == arm]
                med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]  # noqa: E731
                print(f"{label:>6}/s  {arm:<18} {med('per_cpu_s'):>9,.0f} msg/CPU-s  "
                      f"p50 {med('p50'):6.0f} us  p99 {med('p99'):7.0f} us" +
                      (f"  subscriber p50 {med('ws_p50'):6.0f} us  p99 {med('ws_p99'):7.0f} us"
                       f"  table->subscriber p50 {med('hop_p50'):5.0f} us  "
                       f"p99 {med('hop_p99'):6.0f} us"
                       if rows and "ws_p99" in rows[0] else ""))
            print(f"{label:>6}/s  native+direct / aiohttp+direct "
                  f"{ratio('native+direct', 'aiohttp+direct'):.2f}x msgs per CPU-s; "
                  f"native+each / aiohttp+direct {ratio('native+each', 'aiohttp+direct'):.2f}x")
            if args.picows:
                print(f"{label:>6}/s  picows+direct / aiohttp+direct "
                      f"{ratio('picows+direct', 'aiohttp+direct'):.2f}x; picows+callback / "
                      f"aiohttp+direct {ratio('picows+callback', 'aiohttp+direct'):.2f}x")
            if args.compare:
                print(f"{label:>6}/s  aiohttp+direct / websockets+queue "
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
    ap.add_argument("--rates", default="1500,10000,0",
                    help="messages a second, all six exchanges together (comma-separated; "
                    "0: saturation)")
    ap.add_argument("--seconds", type=float, default=5.0, help="push window per arm and rate")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", action="store_true", help="all four arms, interleaved")
    ap.add_argument("--subscriber", action="store_true",
                    help="serve one arm's table to a native WebSocket subscriber")
    ap.add_argument("--subscriber-arm", default="native+direct",
                    help="the arm --subscriber serves (default native+direct)")
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
