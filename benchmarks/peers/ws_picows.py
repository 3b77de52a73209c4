"""The feed on picows (Cython WebSocket frames over asyncio/uvloop
transports): subscribers kept per symbol, and each published body sent to
each of them with `transport.send()` (picows has no broadcast; each send
frames the body and writes it).  One process, uvloop when installed.

    python benchmarks/peers/ws_picows.py [--rate 10|max|0]
"""
from __future__ import annotations

import logging

import picows
from picows import WSListener, WSMsgType, ws_create_server

from ws_feed import Feed, announce_port, parse_subscribe, report, run_loop, subscribed_ack


async def main() -> None:
    feed = Feed(__doc__.splitlines()[0])
    args, current, subs = feed.args, feed.current, feed.subs
    # picows' transport (aiofastnet) logs a warning for every write to a
    # connection the client has reset: thousands at the end of each run.
    logging.getLogger("aiofastnet").setLevel(logging.ERROR)
    stats = {"connections": 0}

    class Subscriber(WSListener):
        def __init__(self) -> None:
            self.mine: list[str] = []

        def on_ws_connected(self, transport) -> None:
            stats["connections"] += 1

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
                return
            if frame.msg_type != WSMsgType.TEXT:
                return
            symbols = parse_subscribe(frame.get_payload_as_bytes())
            if symbols is None:
                transport.send(WSMsgType.TEXT, b'{"op":"error","error":"bad_json"}')
                return
            transport.send(WSMsgType.TEXT, subscribed_ack(symbols, current))
            for s in symbols:
                if s in subs:
                    subs[s].add(transport)
                    self.mine.append(s)
                    transport.send(WSMsgType.TEXT, current[s])

        def on_ws_disconnected(self, transport) -> None:
            for s in self.mine:
                subs[s].discard(transport)

    def factory(request):
        return Subscriber() if request.path.decode() == args.path else None

    def publish(n: int, t_ns: int, bodies: list[tuple[str, bytes]]) -> None:
        text = WSMsgType.TEXT
        for s, b in bodies:
            current[s] = b
            for t in subs[s]:
                t.send(text, b)

    server = await ws_create_server(factory, args.host, args.port, backlog=4096,
                                    websocket_handshake_timeout=30)
    announce_port(server.sockets[0].getsockname()[1])
    await feed.serve_until_stopped(publish)
    server.close()
    report({"server": "picows", "version": picows.__version__, **feed.schedule.summary(), **stats})


if __name__ == "__main__":
    run_loop(main())
