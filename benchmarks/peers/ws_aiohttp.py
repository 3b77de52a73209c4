"""The feed on aiohttp's server (`web.WebSocketResponse`): subscribers kept
per symbol, and each published body sent to each with
`await ws.send_frame(body, TEXT)` in turn, as aiohttp's docs broadcast (no
compression).  One process, uvloop when installed.

    python benchmarks/peers/ws_aiohttp.py [--rate 10|max|0]
"""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, web

from ws_feed import Feed, announce_port, parse_subscribe, report, run_loop, subscribed_ack


async def main() -> None:
    feed = Feed(__doc__.splitlines()[0])
    args, current, subs = feed.args, feed.current, feed.subs
    stats = {"connections": 0, "send_errors": 0}

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True)
        await ws.prepare(request)
        stats["connections"] += 1
        mine: list[str] = []
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                symbols = parse_subscribe(msg.data)
                if symbols is None:
                    await ws.send_str('{"op":"error","error":"bad_json"}')
                    continue
                await ws.send_frame(subscribed_ack(symbols, current), WSMsgType.TEXT)
                for s in symbols:
                    if s in subs:
                        subs[s].add(ws)
                        mine.append(s)
                        await ws.send_frame(current[s], WSMsgType.TEXT)
        finally:
            for s in mine:
                subs[s].discard(ws)
        return ws

    async def publish(n: int, t_ns: int, bodies: list[tuple[str, bytes]]) -> None:
        for s, b in bodies:
            current[s] = b
            for ws in list(subs[s]):
                try:
                    await ws.send_frame(b, WSMsgType.TEXT)
                except (ConnectionError, RuntimeError):
                    stats["send_errors"] += 1

    app = web.Application()
    app.router.add_get(args.path, stream)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()
    announce_port(site._server.sockets[0].getsockname()[1])   # type: ignore[union-attr]
    await feed.serve_until_stopped(publish)
    report({"server": "aiohttp", "version": aiohttp.__version__, **feed.schedule.summary(), **stats})
    await asyncio.wait_for(runner.cleanup(), 3)


if __name__ == "__main__":
    run_loop(main())
