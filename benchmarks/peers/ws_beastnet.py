"""beastnet's WebSocket feed for bench_ws.py: `HTTPServer(websocket=...)` on
the feed table, a publisher thread calling `table.update()` once per round
(the engine frames each body once and fans it out on its native workers).

    python benchmarks/peers/ws_beastnet.py [--rate 10|max|0] [--threads N] [--udp] [--deflate]

Prints the HTTP port on line 1 (and `udp PORT` on line 2 with --udp: the same
table over UDP, for the request/response-under-streams runs); on SIGTERM
prints the server's stats totals as one JSON line.
"""
from __future__ import annotations

import json
import threading

from ws_feed import (SYMBOLS, announce_port, on_sigterm, parse_args, publish_thread,
                     raise_nofile, report, round_bodies)

from beastnet import HTTPServer, ResponseTable, UDPServer, WebSocketOptions


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_nofile()
    _, first = round_bodies(0)
    table = ResponseTable(dict(first))
    stop = threading.Event()
    on_sigterm(stop.set)
    # Compression off unless asked: the engine's 1 KiB threshold, or never negotiated.
    ws = WebSocketOptions(path=args.path, max_subscriptions=len(SYMBOLS),
                          stall_timeout_s=30.0, compress_min_bytes=1024 if args.deflate else 0)
    udp = UDPServer(table, args.host, 0) if args.udp else None
    with HTTPServer(table, args.host, args.port, threads=args.threads, websocket=ws,
                    max_connections=24000, backlog=4096, grace_s=0.5) as server:
        announce_port(server.address[1])
        if udp is not None:
            udp.start()
            print(f"udp {udp.address[1]}", flush=True)

        def publish(n: int, t_ns: int, bodies: list[tuple[str, bytes]]) -> None:
            table.update(bodies)

        pub = publish_thread(args.rate, publish, stop)
        stop.wait()
        if pub.is_alive():
            pub.join(2.0)
        totals = server.stats()["totals"]
        if udp is not None:
            udp.stop()
    sched = pub.schedule  # type: ignore[attr-defined]
    report({"server": "beastnet", **sched.summary(),
            "totals": json.loads(json.dumps(totals, default=str))})


if __name__ == "__main__":
    main()
