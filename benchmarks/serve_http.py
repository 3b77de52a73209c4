"""Run beastnet's HTTPServer on a port until SIGTERM/SIGINT, for the benchmarks.

    python benchmarks/serve_http.py --port 18080 --threads 1 [--io uring] [--tls-cert C --tls-key K]

Prints "ready" once listening and the final stats totals as JSON on exit.
Serves the 150 bundled assets (about 110-byte JSON bodies each).
"""
import argparse
import json
import signal
import threading

from beastnet import HTTPServer, ResponseTable, TLSConfig
from beastnet.serve.assets import ASSETS, price_body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-connections", type=int, default=20000)
    parser.add_argument("--io", default="epoll", choices=HTTPServer.IO_BACKENDS,
                        help="the workers' I/O backend")
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (needs --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    table = ResponseTable({a: price_body(a, 12345.6 + i, 1700000000000, source="exchange") for i, a in enumerate(ASSETS)})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with HTTPServer(table, args.host, args.port, threads=args.threads,
                    max_connections=args.max_connections, grace_s=0.5, io=args.io,
                    tls=TLSConfig(args.tls_cert, args.tls_key) if args.tls_cert else None) as server:
        print("ready", flush=True)
        stop.wait()
    print(json.dumps(server.stats()["totals"]), flush=True)


if __name__ == "__main__":
    main()
