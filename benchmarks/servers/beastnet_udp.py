"""beastnet's UDPServer serving the benchmarks' "same table".

    python benchmarks/servers/beastnet_udp.py [--sockets N] [--no-steering] [--batch 32]
                                              [--handler-sleep-ms MS] [--keys 150]

Prints its bound port as the first stdout line, then runs until SIGTERM or
SIGINT; on the way out it prints `server.stats()` as one JSON line (the
harness reads batch fill, kernel drops and handler counts from it).

`--handler-sleep-ms` installs an async miss handler that sleeps that long and
answers a small JSON body without caching it, so every request for an
unknown key keeps going through the miss path (benchmarks/bench_miss_path.py).
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import asset_table  # noqa: E402

import orjson  # noqa: E402

from beastnet import APIKeyTable, ResponseTable, UDPServer  # noqa: E402


def make_handler(sleep_ms: float):
    delay_s = sleep_ms / 1000.0
    answer = b'{"error":"not_found","slow":true}'

    async def slow_miss(request):
        # Stands in for a database or upstream call on a miss.
        await asyncio.sleep(delay_s)
        return answer

    return slow_miss


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed first)")
    p.add_argument("--sockets", type=int, default=None,
                   help="SO_REUSEPORT sockets = reader threads (default: one per CPU)")
    p.add_argument("--no-steering", action="store_true",
                   help="no CPU pinning / reuseport CBPF: the kernel's hash spreads flows")
    p.add_argument("--batch", type=int, default=32, help="datagrams per recvmmsg/sendmmsg")
    p.add_argument("--handler-sleep-ms", type=float, default=None,
                   help="install an async miss handler sleeping this long per call")
    p.add_argument("--keys", type=int, default=150, help="assets in the table")
    p.add_argument("--body-bytes", type=int, default=None,
                   help="pad every body to exactly this size (default: ~110-byte JSON)")
    p.add_argument("--api-keys", action="store_true",
                   help="enforce API keys: 'partner-key' (no limits) and 'public-key' "
                        "(a GCRA limit of 1e7 req/s, burst 1e7: checked on every request, never hit)")
    args = p.parse_args(argv)

    table = ResponseTable(capacity=args.keys)
    table.update(asset_table(args.keys, args.body_bytes))
    handler = make_handler(args.handler_sleep_ms) if args.handler_sleep_ms is not None else None
    api_keys = None
    if args.api_keys:
        api_keys = APIKeyTable()
        api_keys.set("partner-key")
        # 1e7 req/s with a burst of 1e7: the limit is checked (CAS) on every
        # request, and its 1 s of tolerance absorbs any descheduled reader.
        api_keys.set("public-key", qps=1e7, burst=10_000_000, monthly_cap=10**15)

    # Block the signals before starting any thread, so the native and control
    # threads inherit the mask and sigwait() below is the only taker.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = UDPServer(table, args.host, args.port, sockets=args.sockets, batch=args.batch,
                       cpu_steering=not args.no_steering, handler=handler, api_keys=api_keys)
    with server:
        print(server.address[1], flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        stats = server.stats()
    stats["server"] = "beastnet"
    stats["keys"] = len(table)
    stats["table_memory"] = table.memory_stats()
    # Modules that cost RSS (and, for numpy, an OpenBLAS thread) without
    # serving anything: bench_memory.py reports them.
    stats["heavy_modules"] = [m for m in ("numpy", "beastnet.loadgen._native") if m in sys.modules]
    print(orjson.dumps(stats, default=str).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
