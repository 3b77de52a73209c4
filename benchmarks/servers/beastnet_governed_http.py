"""beastnet's HTTPServer whose answer path is slow: every miss goes to a
handler that holds the control loop `--handler-ms` (a fixed service rate,
whatever else the machine does), with the governor on or off.

    python benchmarks/servers/beastnet_governed_http.py [--governor] [--handler-ms 2]
                                                        [--target-ms 20]

API keys: 'partner-key-0001' (a shed-last tier) and 'public-key-00001', no
rate limits.  Prints its bound port as the first stdout line, runs until
SIGTERM or SIGINT, then prints `server.stats()` as one JSON line.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Optional

import orjson

from beastnet import Answer, APIKeyTable, HTTPServer, ResponseTable


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--governor", action="store_true", help="switch the governor on")
    p.add_argument("--handler-ms", type=float, default=2.0, help="control-loop time per miss")
    p.add_argument("--target-ms", type=float, default=20.0, help="the governor's latency target")
    p.add_argument("--max-limit", type=int, default=400, help="the governor's hard bound")
    args = p.parse_args(argv)
    delay_s = args.handler_ms / 1000.0

    def slow_miss(request):
        # Stands in for work that holds the control loop (a report query,
        # a synchronous store): the loop serves one miss at a time.
        time.sleep(delay_s)
        return Answer({"key": request.key})

    keys = APIKeyTable()
    keys.set("partner-key-0001", shed_last=True)
    keys.set("public-key-00001")
    table = ResponseTable()
    table["HIT"] = b'{"hit":true}'
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with HTTPServer(table, threads=1, handler=slow_miss, api_keys=keys) as server:
        server.set_governor(args.governor, min_limit=2, max_limit=args.max_limit,
                            target_ms=args.target_ms)
        print(server.address[1], flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        stats = server.stats()
    stats["server"] = "beastnet-governed" if args.governor else "beastnet"
    print(orjson.dumps({k: v for k, v in stats.items() if k != "per_thread"},
                       default=str).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
