"""The WebSocket client under the exchange connections: beastnet's own
(`native`: an asyncio Protocol over the engine's frame reader), aiohttp's,
or the `websockets` package's (the earlier choices, kept for
`benchmarks/bench_feeds_ws.py --compare` and as a way back).

All sit behind one small interface: `read()` (the next message's payload,
None once the peer closed), `deliver(on_message, on_first, on_batch)` (every
message handed to a synchronous callback, or a read's messages at once,
until the stream ends), `send(text)`,
`close()` (the handshake, bounded by a second) and `abort()` (the transport
closed at once: a silent or hung peer may never answer a close), then
`release()` (what the client holds besides the socket; no network I/O).
`native` is the default: each socket read goes through one native call that
unframes every complete frame in it, and `deliver` hands the read's messages
to the adapter as one batch from the protocol's data_received, with no task
wake-up per message (measured
against aiohttp in benchmarks/README.md, "Exchange feeds over a real
WebSocket").  aiohttp stays a dependency (the REST tickers).
"""
from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections import deque
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from beastnet import WSClientReader, ws_accept_key, ws_client_frame

__all__ = ["CLIENTS", "WsProtocolError", "WsStream", "open_stream"]

Payload = Union[str, bytes]
OnMessage = Callable[[Payload], Optional[str]]  # a message -> a text to send back, or None
# the messages of one socket read -> the texts to send back, or None
OnBatch = Callable[[list[bytes]], Optional[list[str]]]
CLIENTS = ("native", "aiohttp", "websockets")
MAX_MESSAGE = 4 << 20                         # no exchange ticker comes near: a broken peer
MAX_HANDSHAKE = 16 << 10                      # the server's 101 response head, at most
# A read this large says the socket holds more: the stream lets the loop go
# round before it reads again (see _NativeStream.data_received).
YIELD_READ_BYTES = 64 << 10


class WsProtocolError(ValueError):
    """The peer broke the WebSocket protocol (a bad frame, an oversized
    length, a refused handshake): the connection is dropped and redialled."""


class WsStream:
    """One open WebSocket connection (see the module docstring)."""

    async def read(self) -> Optional[Payload]:
        raise NotImplementedError

    async def send(self, text: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        """After `abort()`: free the client's own resources."""

    async def deliver(self, on_message: OnMessage, on_first: Callable[[], None],
                      on_batch: Optional[OnBatch] = None) -> bool:
        """Hand every message to `on_message` (sending back the text it
        returns) until the peer closes; `on_first` is called before the
        first one.  A client that reads several messages at once may hand
        them to `on_batch` instead.  True if any message came."""
        raw = await self.read()
        if raw is None:
            return False
        on_first()
        while raw is not None:
            reply = on_message(raw)
            if reply is not None:
                await self.send(reply)
            raw = await self.read()
        return True


class _AiohttpStream(WsStream):
    def __init__(self, session: Any, ws: Any) -> None:
        import aiohttp
        self._session = session
        self._ws = ws
        self._receive = ws.receive
        self._data_types = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        self._error = aiohttp.WSMsgType.ERROR
        self._ws_error = aiohttp.WebSocketError
        self.send = ws.send_str               # type: ignore[method-assign]

    async def read(self) -> Optional[Payload]:
        msg = await self._receive()
        if msg.type in self._data_types:
            return msg.data                   # bytes for text too: decode_text=False
        if msg.type is self._error:           # a protocol error (the peer's bad frame)
            if isinstance(msg.data, self._ws_error):
                raise WsProtocolError(str(msg.data)) from msg.data
            raise msg.data
        return None                           # CLOSE, CLOSING, CLOSED

    async def close(self) -> None:
        try:
            await self._ws.close()
        finally:
            self._ws._response.close()        # a lost connection is not released by close()
            await self._session.close()

    def abort(self) -> None:
        # aiohttp keeps no public handle on the connection's transport; its
        # close() would wait for the peer's close frame.
        conn = getattr(self._ws, "_conn", None)
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()
        # Release the connection to its pool as closed (else aiohttp warns
        # of an unclosed connection when it is collected).
        self._ws._response.close()

    async def release(self) -> None:
        await self._session.close()           # its connector holds nothing open now


class _WebsocketsStream(WsStream):
    def __init__(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosedOK
        self._ws = ws
        self._closed_ok = ConnectionClosedOK
        self.send = ws.send                   # type: ignore[method-assign]

    async def read(self) -> Optional[Payload]:
        try:
            return await self._ws.recv()
        except self._closed_ok:
            return None

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        self._ws.transport.abort()


class _NativeStream(asyncio.Protocol, WsStream):
    """RFC 6455 client on an asyncio (uvloop) Protocol: the opening
    handshake here, frames through the engine's `WSClientReader` (one native
    call per socket read, however many frames it holds), client frames
    masked natively.  A ping is answered at once, a close echoed; a protocol
    error (bad opcode, oversized length, invalid UTF-8) closes the
    connection with the reader's code and raises `WsProtocolError` to the
    reader of the stream."""

    def __init__(self, host_header: str, target: str) -> None:
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = (f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n"
                         "\r\n").encode()
        self._head = bytearray()              # the handshake response, until its blank line
        self._reader = WSClientReader(MAX_MESSAGE, MAX_MESSAGE)
        self._transport: Any = None
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()    # the handshake's outcome
        self._done = loop.create_future()     # the connection's end: None or an exception
        self._queue: deque = deque()          # read()'s messages (no deliver callback)
        self._waiter: Optional[asyncio.Future] = None
        self._on_batch: Optional[OnBatch] = None
        self._on_first: Optional[Callable[[], None]] = None
        self._close_sent = False
        self._loop = loop
        self.yields = 0                       # reads paused for a turn of the loop
        self.pings = 0                        # pings answered
        self.close_code = 0                   # the peer's close code (1005: none given)

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            data = self._handshake(data)
            if not data:
                return
        reader = self._reader
        messages = reader.feed(data)
        try:
            if messages:
                on_batch = self._on_batch
                if on_batch is None:
                    self._queue.extend(messages)
                    if self._waiter is not None and not self._waiter.done():
                        self._waiter.set_result(None)
                else:
                    if self._on_first is not None:
                        first, self._on_first = self._on_first, None
                        first()
                    replies = on_batch(messages)
                    if replies:
                        for reply in replies:
                            self._write(1, reply)         # text
            if reader.controls:
                controls = list(reader.controls)
                reader.controls.clear()
                for ev in controls:
                    self._control(ev)
        except Exception as exc:              # the callback's bug: ends the stream, redialled
            self._end(exc)
            self._transport.abort()
            return
        if len(data) >= YIELD_READ_BYTES and not self._transport.is_closing():
            # libuv reads a ready socket up to 32 times before the loop goes
            # on; with the messages handled right here, six saturated streams
            # held the loop for seconds and the watchdog found the others
            # silent.  One large read per stream per turn of the loop keeps
            # the streams, timers and tasks fair.
            self.yields += 1
            self._transport.pause_reading()
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the WebSocket handshake"))
        self._end(None)

    # -- the pieces -----------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        """Collect and check the 101 response; the bytes after it."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HANDSHAKE:
                self._refuse("a handshake response head past 16 KiB")
            return b""
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        rest = bytes(self._head[end + 4:])
        self._head = bytearray()
        status = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "101":
            self._refuse(f"handshake answered {lines[0][:80]!r}")
        elif headers.get("upgrade", "").lower() != "websocket" or \
                "upgrade" not in headers.get("connection", "").lower():
            self._refuse("handshake without Upgrade: websocket")
        elif headers.get("sec-websocket-accept") != ws_accept_key(self._key):
            self._refuse("handshake with a wrong Sec-WebSocket-Accept")
        elif headers.get("sec-websocket-extensions"):   # none offered: none may be used
            self._refuse("handshake with an extension not offered")
        else:
            self.opened.set_result(None)
            return rest
        return b""

    def _refuse(self, why: str) -> None:
        exc = WsProtocolError(why)
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._end(exc)
        self._transport.abort()

    def _control(self, ev: tuple) -> None:
        kind, code, payload = ev
        if kind == "ping":
            self.pings += 1
            self._write(0xA, payload)                           # pong, same payload
        elif kind == "close":
            self.close_code = code
            if not self._close_sent:                            # echo it (RFC 6455 5.5.1)
                self._write(0x8, code.to_bytes(2, "big") if code != 1005 else b"")
                self._close_sent = True
            self._end(None)
            self._transport.close()
        elif kind == "error":
            if not self._close_sent:
                self._write(0x8, code.to_bytes(2, "big"))
                self._close_sent = True
            self._end(WsProtocolError(f"the peer broke the protocol (closed {code})"))
            self._transport.abort()
        # pong: nothing to do (we send no pings of the protocol)

    def _write(self, opcode: int, payload: Union[str, bytes]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(ws_client_frame(opcode, payload, os.urandom(4)))

    def _end(self, exc: Optional[BaseException]) -> None:
        if not self._done.done():
            self._done.set_result(exc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- WsStream ---------------------------------------------------------------------

    async def read(self) -> Optional[Payload]:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._done.done():
                exc = self._done.result()
                if exc is not None:
                    raise exc
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def deliver(self, on_message: OnMessage, on_first: Callable[[], None],
                      on_batch: Optional[OnBatch] = None) -> bool:
        """A read's messages are handed over in data_received, to `on_batch`
        (or one by one to `on_message`)."""
        if on_batch is None:
            def on_batch(messages: list[bytes]) -> Optional[list[str]]:
                replies = [on_message(raw) for raw in messages]
                return [r for r in replies if r is not None]
        heard = bool(self._queue)
        if heard:
            on_first()
            replies = on_batch(list(self._queue))     # what came before deliver() was called
            self._queue.clear()
            for reply in replies or ():
                self._write(1, reply)
        self._on_first = None if heard else on_first
        self._on_batch = on_batch
        try:
            exc = await asyncio.shield(self._done)
        finally:
            self._on_batch = None
        if exc is not None:
            raise exc
        return heard or self._on_first is None

    async def send(self, text: str) -> None:
        if self._done.done() or self._close_sent:
            raise ConnectionError("the WebSocket is closed")
        self._write(1, text)

    async def close(self) -> None:
        if not self._close_sent and not self._done.done():
            self._write(0x8, (1000).to_bytes(2, "big"))         # normal closure
            self._close_sent = True
            try:
                await asyncio.wait_for(asyncio.shield(self._done), 1.0)
            except asyncio.TimeoutError:
                pass
        self._transport.close()

    def abort(self) -> None:
        self._end(None)
        self._transport.abort()


async def _open_native(url: str, open_timeout_s: float) -> WsStream:
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("ws", "wss") or not host:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    host_header = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    async def connect() -> _NativeStream:
        _, proto = await loop.create_connection(
            lambda: _NativeStream(host_header, target), host, port,
            ssl=ssl.create_default_context() if tls else None,
            server_hostname=host if tls else None)
        try:
            await proto.opened
        except BaseException:
            if not proto.opened.done():       # timed out: no outcome left unread
                proto.opened.cancel()
            proto._transport.abort()
            raise
        return proto

    return await asyncio.wait_for(connect(), open_timeout_s)


_OPTIONS: Optional[dict[str, Any]] = None


def _aiohttp_options() -> dict[str, Any]:
    """ws_connect's options that moved between the aiohttp versions the
    package allows (>= 3.9): no receive timeout (the watchdog is ours), a
    1 s close, text frames as bytes where it can (orjson parses bytes; no
    UTF-8 decode into a str first)."""
    global _OPTIONS
    if _OPTIONS is None:
        import inspect

        import aiohttp
        params = inspect.signature(aiohttp.ClientSession.ws_connect).parameters
        timeout_cls = getattr(aiohttp, "ClientWSTimeout", None)
        options: dict[str, Any] = {
            "timeout": 1.0 if timeout_cls is None else timeout_cls(ws_receive=None, ws_close=1.0)}
        if "decode_text" in params:
            options["decode_text"] = False
        _OPTIONS = options
    return _OPTIONS


async def open_stream(url: str, client: str = "native", open_timeout_s: float = 10.0) -> WsStream:
    """Connect (TCP, TLS, WebSocket handshake) within `open_timeout_s`: no
    compression, no client pings of the protocol (the exchange's own
    keepalive is the connection's), no proxy from the environment."""
    if client == "native":
        return await _open_native(url, open_timeout_s)
    if client == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                        trust_env=False)
        try:
            ws = await asyncio.wait_for(session.ws_connect(
                url, autoping=True, heartbeat=None, compress=0, max_msg_size=MAX_MESSAGE,
                **_aiohttp_options()), open_timeout_s)
        except BaseException:
            await session.close()
            raise
        return _AiohttpStream(session, ws)
    if client == "websockets":
        from websockets.asyncio.client import connect
        conn = await connect(url, open_timeout=open_timeout_s, ping_interval=None,
                             close_timeout=1.0, compression=None, max_size=MAX_MESSAGE,
                             proxy=None)
        return _WebsocketsStream(conn)
    raise ValueError(f"unknown WebSocket client {client!r}: one of {', '.join(CLIENTS)}")
