"""Serve live prices for 150 assets over UDP and HTTP from one table, with the public API only.

    python examples/udp_server.py --port 9000 --http-port 8080 --updates-per-s 20
    printf '@1 BTC' | nc -u -w1 127.0.0.1 9000
    curl http://127.0.0.1:8080/v1/BTC

Answers come from pre-serialized bodies in a ResponseTable; a background thread
re-publishes every asset's price `--updates-per-s` times a second while the
native readers and HTTP workers keep serving.  Unknown keys (on either
protocol: `request.protocol` tells them apart) reach the miss handler: it answers
lower-case spellings of known assets (not cached: prices move), and `assets`
with the list of assets (cached: the next request is a native hit).
"""
import argparse
import signal
import threading
import time

from beastnet import Answer, HTTPServer, MissRequest, ResponseTable, UDPServer
from beastnet.serve.assets import ASSETS, random_walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--http-port", type=int, default=8080, help="-1: no HTTP")
    parser.add_argument("--sockets", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--updates-per-s", type=float, default=10.0)
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    args = parser.parse_args()

    feed = random_walk()
    table = ResponseTable(next(feed))

    def on_miss(request: MissRequest):
        if request.key == "assets":
            return Answer(list(ASSETS), cache=True)
        upper = request.key.upper()
        if upper in ASSETS:
            return table.get(upper)
        return None                  # -> {"error":"not_found"}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def publish() -> None:
        period = 1.0 / args.updates_per_s
        while not stop.wait(period):
            table.update(next(feed))

    web = None
    with UDPServer(table, args.host, args.port, sockets=args.sockets, handler=on_miss) as server:
        if args.http_port >= 0:
            web = HTTPServer(table, args.host, args.http_port, threads=args.sockets,
                             handler=on_miss).start()
        threading.Thread(target=publish, daemon=True).start()
        print(f"serving {len(table)} assets on udp://{server.address[0]}:{server.address[1]}"
              f" steering={server.stats()['steering']['reason']}"
              + (f" and {web.url}/v1/<asset>" if web else ""), flush=True)
        deadline = time.monotonic() + args.duration_s if args.duration_s else None
        try:
            while not stop.wait(1.0):
                if deadline and time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            pass
        if web is not None:
            web.stop()
            http = web.stats()["totals"]
            print(f"http requests={http['requests']} hits={http['hits']} misses={http['misses']}"
                  f" connections={http['accepted']}")
        totals = server.stats()["totals"]
        print(f"served rx={totals['rx_packets']} hits={totals['hits']} misses={totals['misses']}"
              f" bad={totals['bad_requests']}")


if __name__ == "__main__":
    main()
