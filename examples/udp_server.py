"""Serve live prices for 150 assets over UDP, from the public API only.

    python examples/udp_server.py --port 9000 --updates-per-s 20
    printf '@1 BTC' | nc -u -w1 127.0.0.1 9000

Answers come from pre-serialized bodies in a ResponseTable; a background thread
re-publishes every asset's price `--updates-per-s` times a second while the
native readers keep serving.  Unknown keys reach the miss handler: it answers
lower-case spellings of known assets (not cached: prices move), and `assets`
with the list of assets (cached: the next request is a native hit).
"""
import argparse
import signal
import threading
import time

from beastnet import Answer, MissRequest, ResponseTable, UDPServer
from beastnet.assets import ASSETS, random_walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
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

    with UDPServer(table, args.host, args.port, sockets=args.sockets, handler=on_miss) as server:
        threading.Thread(target=publish, daemon=True).start()
        print(f"serving {len(table)} assets on udp://{server.address[0]}:{server.address[1]}"
              f" steering={server.stats()['steering']['reason']}", flush=True)
        deadline = time.monotonic() + args.duration_s if args.duration_s else None
        try:
            while not stop.wait(1.0):
                if deadline and time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            pass
        totals = server.stats()["totals"]
        print(f"served rx={totals['rx_packets']} hits={totals['hits']} misses={totals['misses']}"
              f" bad={totals['bad_requests']}")


if __name__ == "__main__":
    main()
