"""The feed on the `websockets` library (asyncio implementation), fanned out
with `websockets.broadcast()`, the library's recommended way to send one
message to many connections.  No compression (the library's default would
deflate every frame).  One process, uvloop when installed.

    python benchmarks/peers/ws_websockets.py [--rate 10|max|0]
"""
from __future__ import annotations

import asyncio
import signal

import websockets
from websockets.asyncio.server import broadcast, serve

from ws_feed import (SYMBOLS, announce_port, parse_args, parse_subscribe, publish_task,
                     raise_nofile, report, round_bodies, run_loop, subscribed_ack, Schedule)


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_nofile()
    _, first = round_bodies(0)
    current = {s: b.decode() for s, b in first}
    subs: dict[str, set] = {s: set() for s in SYMBOLS}
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

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sched = Schedule(args.rate)
    async with serve(handler, args.host, args.port, compression=None, max_queue=16,
                     ping_interval=None, backlog=4096) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce_port(port)
        pub = asyncio.create_task(publish_task(args.rate, publish, sched))
        await stop.wait()
        pub.cancel()
    report({"server": "websockets", "version": websockets.__version__,
            **sched.summary(), **stats})


if __name__ == "__main__":
    run_loop(main())
