"""Receiving ends for the webhook tests, on loopback: an HTTPS receiver
(aiohttp, certificates from tls_support) whose paths behave as the fault
cases need and which verifies every signature with the `standardwebhooks`
package, and a UDP receiver that counts datagrams.  Each runs on a thread
of its own and is stopped (thread joined, sockets closed) on exit."""
from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    at: float                       # time.time() when the request was read
    msg_id: str
    body: bytes
    verified: list[bool]            # per secret in HTTPSReceiver.secrets
    headers: dict = field(default_factory=dict)


class HTTPSReceiver:
    """Paths: /ok 200; /flaky 500 on a message's first attempt, then 200;
    /fail 500 always; /gone 410; /hang never answers; /cut announces 100
    bytes and closes after 10; /redirect 302 to /ok; /limited 429 with
    Retry-After: 1 on a message's first attempt, then 200; /huge 200 with a
    body of `huge_bytes` (200 MB), generated as it is written, so only the
    client that reads it can hold it; /switch 500 while `failing`, else 200."""

    def __init__(self, cert: str, key: str, secrets: Optional[list[str]] = None) -> None:
        self.secrets = list(secrets or [])
        self.received: list[Received] = []
        self._attempts: dict[str, int] = {}
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-receiver")
        self._runner: Optional[web.AppRunner] = None
        self._hang = asyncio.Event()
        self.port = 0
        self.huge_bytes = 200 * 1024 * 1024
        self.huge_written: list[int] = []     # per /huge answer, bytes the client took
        self.failing = True                     # /switch answers 500 while set

    def count(self, path: str) -> int:
        return sum(1 for r in self.received if r.path == path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        verified = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified.append(True)
            except WebhookVerificationError:
                verified.append(False)
        msg_id = headers.get("webhook-id", "")
        self.received.append(Received(request.path, time.time(), msg_id, body, verified, headers))
        nth = self._attempts[msg_id] = self._attempts.get(msg_id, 0) + 1
        path = request.path
        if path == "/flaky":
            return web.Response(status=500 if nth == 1 else 200)
        if path == "/fail":
            return web.Response(status=500)
        if path == "/gone":
            return web.Response(status=410)
        if path == "/hang":
            await self._hang.wait()
            return web.Response(status=200)
        if path == "/redirect":
            return web.Response(status=302, headers={"Location": "/ok"})
        if path == "/limited" and nth == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        if path == "/switch":
            return web.Response(status=500 if self.failing else 200)
        if path == "/huge":
            return await self._huge(request)
        if path == "/cut":
            resp = web.StreamResponse(status=200, headers={"Content-Length": "100"})
            await resp.prepare(request)
            await resp.write(b"x" * 10)
            assert request.transport is not None
            request.transport.abort()
            return resp
        return web.Response(status=200, text="ok")

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Length": str(self.huge_bytes)})
        await resp.prepare(request)
        chunk = b"x" * 65536
        written = 0
        try:
            while written < self.huge_bytes:
                n = min(len(chunk), self.huge_bytes - written)
                await resp.write(chunk[:n])
                written += n
        except (ConnectionError, RuntimeError):
            pass                            # the client closed: what it read is counted
        self.huge_written.append(written)
        return resp

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        self._hang.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def __enter__(self) -> "HTTPSReceiver":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# <asm-generic/socket.h>: the kernel stamps each datagram as it arrives
# (CLOCK_REALTIME, the clock of time.time()); Python names neither constant.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("qq")         # struct timespec: tv_sec, tv_nsec


class UDPReceiver:
    """Counts datagrams on a loopback port, each with the time the kernel
    received it: a stall of this thread (the GIL, a busy CPU) delays reading
    them, never their stamps, so arrival times are the sender's alone."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-udp-receiver")

    def _run(self) -> None:
        ancillary_size = socket.CMSG_SPACE(_TIMESPEC.size)
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, ancillary_size)
            except socket.timeout:
                continue
            at = time.time()                # Linux always sends the stamp; else, read now
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(value[:_TIMESPEC.size])
                    at = sec + nsec / 1e9
            self.datagrams.append((at, data))

    def __enter__(self) -> "UDPReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
