"""The peer: beastnet's UDP protocol as a typical, well-written asyncio service.

    python benchmarks/peers/udp_asyncio.py --loop asyncio|uvloop [--port 0] [--keys 150]

A `DatagramProtocol` answers from a dict of pre-serialized bytes with one
`transport.sendto` per datagram -- what a service would write without a
native core.  The same code runs on the stdlib loop and on uvloop, so the two
rows of the comparison differ by the event loop only.  It serves the same
table as benchmarks/servers/beastnet_udp.py (benchmarks/_common.py).

Prints its bound port as the first stdout line; on SIGTERM or SIGINT it stops,
prints one JSON line of counters and exits 0.

Protocol (docs/protocol.md):
    request  := [ "@" TAG " " ] KEY [ " " APIKEY ]   (a trailing \\n or \\r\\n is ignored)
    response := [ "@" TAG " " ] BODY
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import asset_table  # noqa: E402

import orjson  # noqa: E402

NOT_FOUND = b'{"error":"not_found"}'
BAD_REQUEST = b'{"error":"bad_request"}'

# The whole grammar in one anchored regex, as a service would write it:
# TAG 1-16 printable non-space, KEY 1-64 of [A-Za-z0-9._:/-], APIKEY 1-64 printable.
_REQUEST = re.compile(rb"(@[!-~]{1,16} )?([A-Za-z0-9._:/-]{1,64})(?: ([!-~]{1,64}))?")
_TAG_PREFIX = re.compile(rb"@[!-~]{1,16} ")


def parse_request(data: bytes) -> tuple[bytes, Optional[bytes], Optional[bytes]]:
    """(tag_prefix, key, apikey) of one datagram; key is None when it is malformed.

    tag_prefix is "@TAG " (echoed as is) or b"".  A malformed request still
    gets its tag echoed when the tag itself is well formed, as beastnet does.
    """
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    m = _REQUEST.fullmatch(data)
    if m is None:
        t = _TAG_PREFIX.match(data)
        return (t.group(0) if t else b""), None, None
    return m.group(1) or b"", m.group(2), m.group(3)


class QuoteProtocol(asyncio.DatagramProtocol):
    """Answers each datagram from `table` (bytes key -> pre-serialized body)."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.requests = 0
        self.hits = 0
        self.not_found = 0
        self.bad = 0
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.requests += 1
        tag, key, _apikey = parse_request(data)
        if key is None:
            self.bad += 1
            body = BAD_REQUEST
        else:
            body = self.table.get(key)
            if body is None:
                self.not_found += 1
                body = NOT_FOUND
            else:
                self.hits += 1
        self.transport.sendto(tag + body if tag else body, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client went away): count, keep serving.
        self.errors += 1

    def counters(self) -> dict:
        return {"requests": self.requests, "hits": self.hits, "not_found": self.not_found,
                "bad_requests": self.bad, "errors": self.errors}


def make_socket(host: str, port: int, buffer_bytes: int) -> socket.socket:
    """A bound UDP socket with big buffers.  The load client keeps thousands of
    requests in flight; with the 208 KiB default the kernel would drop them
    and the comparison would measure drops, not serving.  beastnet asks for
    the same size (UDPServer's DEFAULT_BUFFER_BYTES)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, opt in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, buffer_bytes)  # root: past rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    table = {k.encode("ascii"): v for k, v in asset_table(args.keys, args.body_bytes).items()}
    sock = make_socket(args.host, args.port, args.buffer_bytes)
    transport, protocol = await loop.create_datagram_endpoint(lambda: QuoteProtocol(table),
                                                              sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(sock.getsockname()[1], flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()
    return {"server": args.loop, "keys": len(table), **protocol.counters()}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed first)")
    p.add_argument("--keys", type=int, default=150, help="assets in the table")
    p.add_argument("--body-bytes", type=int, default=None,
                   help="pad every body to exactly this size (default: ~110-byte JSON)")
    p.add_argument("--buffer-bytes", type=int, default=32 * 1024 * 1024,
                   help="SO_RCVBUF/SO_SNDBUF asked for (default: beastnet's 32 MiB)")
    args = p.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        counters = runner.run(serve(args))
    print(orjson.dumps(counters).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
