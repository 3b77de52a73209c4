"""WindowProbeUDPServer as its own process, so that its Python thread does
not share a GIL with the test measuring how much the GIL is free.

    python _window_probe.py DEPTH [HOLD_S]

Prints the port, serves until stdin closes, then prints a JSON summary:
the most requests any source address had waiting, the fewest full batches
an address was answered, and the most part-full ones the hold timer released.
"""
from __future__ import annotations

import sys

import orjson

from _loadgen_servers import WindowProbeUDPServer

if __name__ == "__main__":
    with WindowProbeUDPServer(depth=int(sys.argv[1]),
                              hold_s=float(sys.argv[2]) if len(sys.argv) > 2 else 1.0) as server:
        print(server.port, flush=True)
        sys.stdin.read()
    print(orjson.dumps({"addresses": len(server.most_outstanding),
                        "most_outstanding": sorted(set(server.most_outstanding.values())),
                        "fewest_batches": min(server.batches.values(), default=0),
                        "most_held": max(server.held.values(), default=0)}).decode())
