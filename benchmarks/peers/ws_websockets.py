"""The feed on the `websockets` library (asyncio implementation), fanned out
with `websockets.broadcast()`, the library's recommended way to send one
message to many connections.  No compression (the library's default would
deflate every frame).  One process, uvloop when installed.

    python benchmarks/peers/ws_websockets.py [--rate 10|max|0]
"""
from __future__ import annotations

import websockets
from websockets.asyncio.server import broadcast, serve

from ws_feed import Feed, announce_port, parse_subscribe, report, run_loop, subscribed_ack


async def main() -> None:
    feed = Feed(__doc__.splitlines()[0])
    args, subs = feed.args, feed.subs
    current = {s: b.decode() for s, b in feed.current.items()}
    stats = {"connections": 0}

    async def handler(ws) -> None:
        if ws.request.path != args.path:
            await ws.close(1008)
            return
        stats["connections"] += 1
        mine: list[str] = []
        try:
            async for msg in ws:
                symbols = parse_subscribe(msg)
                if symbols is None:
                    await ws.send('{"op":"error","error":"bad_json"}')
                    continue
                await ws.send(subscribed_ack(symbols, current).decode())
                for s in symbols:
                    if s in subs:
                        subs[s].add(ws)
                        mine.append(s)
                        await ws.send(current[s])
        except websockets.ConnectionClosed:
            pass
        finally:
            for s in mine:
                subs[s].discard(ws)

    def publish(n: int, t_ns: int, bodies: list[tuple[str, bytes]]) -> None:
        for s, b in bodies:
            text = b.decode()
            current[s] = text
            broadcast(subs[s], text)

    async with serve(handler, args.host, args.port, compression=None, max_queue=16,
                     ping_interval=None, backlog=4096) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce_port(port)
        await feed.serve_until_stopped(publish)
    report({"server": "websockets", "version": websockets.__version__,
            **feed.schedule.summary(), **stats})


if __name__ == "__main__":
    run_loop(main())
