"""The C/C++ anchor: uWebSockets through socketify.  Each symbol is a uWS
topic: a connection `subscribe()`s to its symbols and the publisher calls
`app.publish(symbol, body, TEXT)` once per body; uWS frames it once and
writes it to every subscriber in C++ (its own pub/sub, the recommended
fan-out).  With --deflate, permessage-deflate with its SHARED_COMPRESSOR
(one deflate per publish for every subscriber that negotiated, no context
takeover); otherwise no compression.  One process: the uWS event loop with socketify's
asyncio loop beside it for the publisher.

    python benchmarks/peers/ws_socketify.py [--rate 10|max|0] [--deflate]
"""
from __future__ import annotations

import signal

import socketify
from socketify import App, CompressOptions, OpCode

from ws_feed import (Schedule, announce_port, parse_args, parse_subscribe, publish_task,
                     raise_nofile, report, round_bodies, subscribed_ack)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_nofile()
    _, first = round_bodies(0)
    current = dict(first)
    stats = {"connections": 0}
    app = App()

    def on_open(ws) -> None:
        stats["connections"] += 1

    def on_message(ws, message, opcode) -> None:
        symbols = parse_subscribe(message)
        if symbols is None:
            ws.send(b'{"op":"error","error":"bad_json"}', OpCode.TEXT)
            return
        ws.send(subscribed_ack(symbols, current), OpCode.TEXT)
        for s in symbols:
            if s in current:
                ws.subscribe(s)
                ws.send(current[s], OpCode.TEXT)

    app.ws(args.path, {
        "compression": CompressOptions.SHARED_COMPRESSOR if args.deflate
        else CompressOptions.DISABLED,
        "max_payload_length": 64 * 1024,
        "idle_timeout": 0,
        # max_backpressure stays at uWS's default (64 KiB): past it, publish()
        # skips that subscriber without telling anyone; the client counts the
        # skipped rounds as gaps.
        "open": on_open,
        "message": on_message,
    })

    def publish(n: int, t_ns: int, bodies: list[tuple[str, bytes]]) -> None:
        for s, b in bodies:
            current[s] = b
            app.publish(s, b, OpCode.TEXT, args.deflate)    # compress: uWS deflates it

    sched = Schedule(args.rate)

    def stop(*_: object) -> None:
        report({"server": "socketify", "version": getattr(socketify, "__version__", "?"),
                **sched.summary(), **stats})
        app.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def on_listen(config) -> None:
        announce_port(config.port)

    app.listen(socketify.AppListenOptions(port=args.port, host=args.host), on_listen)
    app.loop.ensure_future(publish_task(args.rate, publish, sched))
    app.run()


if __name__ == "__main__":
    main()
