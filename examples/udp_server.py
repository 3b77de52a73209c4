"""Serve live prices for 150 assets over UDP and HTTP from one table, with the public API only.

    python examples/udp_server.py --port 9100 --http-port 8090 --updates-per-s 20
    printf '@1 BTC' | nc -u -w1 127.0.0.1 9100
    curl http://127.0.0.1:8090/v1/BTC

The default ports stay clear of `beastnet serve`'s (9000, 8080, 8081): a port
another process holds is refused unless the servers are given reuse_port=True.
It serves until Ctrl-C, SIGTERM or `--duration-s`.

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

from beastnet import Answer, HTTPServer, MissRequest, ResponseTable, UDPServer
from beastnet.serve.assets import ASSETS, random_walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--http-port", type=int, default=8090, help="-1: no HTTP")
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

    stop = threading.Event()        # ends the publisher

    def publish() -> None:
        period = 1.0 / args.updates_per_s
        while not stop.wait(period):
            table.update(next(feed))

    server = UDPServer(table, args.host, args.port, sockets=args.sockets, handler=on_miss).start()
    web = None
    if args.http_port >= 0:
        web = HTTPServer(table, args.host, args.http_port, threads=args.sockets,
                         handler=on_miss).start()
    threading.Thread(target=publish, daemon=True).start()
    print(f"serving {len(table)} assets on udp://{server.address[0]}:{server.address[1]}"
          f" steering={server.stats()['steering']['reason']}"
          + (f" and {web.url}/v1/<asset>" if web else ""), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if args.duration_s:
        threading.Timer(args.duration_s, server.stop).start()
    server.serve_forever()          # returns on stop() or Ctrl-C, the server stopped
    stop.set()
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
