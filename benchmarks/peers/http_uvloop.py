"""Peer for bench_http.py: the same table served by a uvloop + httptools server in Python.

    python benchmarks/peers/http_uvloop.py --port 18082

One process, one event loop: what a careful asyncio service does.  Answers
come from a dict snapshot of the ResponseTable's bodies (cheaper for the peer
than a table.get() per request), keep-alive, pipelining in order, 404 JSON.
"""
import argparse
import asyncio
import signal

import httptools
import uvloop

from beastnet import ResponseTable
from beastnet.serve.assets import ASSETS, price_body

PREFIX = b"/v1/"
NOT_FOUND = b'{"error":"not_found"}'


def build_answers(table: ResponseTable) -> dict:
    # Pre-serialized like beastnet's: head + body built once per key.
    out = {}
    for key, body in table.items():
        out[PREFIX + key.encode()] = (b"HTTP/1.1 200 OK\r\nServer: peer\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: %d\r\n\r\n" % len(body)) + body
    return out


class HTTPProtocol(asyncio.Protocol):
    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.url = b""
        self.out = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        answer = self.answers.get(self.url.split(b"?", 1)[0])
        if answer is None:
            answer = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(NOT_FOUND)) + NOT_FOUND
        self.out.append(answer)
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    answers = build_answers(ResponseTable({a: price_body(a, 12345.6 + i, 1700000000000, source="exchange") for i, a in enumerate(ASSETS)}))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTPProtocol(answers), host, port, backlog=1024,
                                      reuse_port=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18082)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
