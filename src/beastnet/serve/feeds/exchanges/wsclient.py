"""The WebSocket client under the exchange connections: aiohttp's, or the
`websockets` package's (the earlier choice, kept for `benchmarks/bench_feeds_ws.py
--compare` and as a way back).

Both sit behind one small interface: `read()` (the next message's payload,
None once the peer closed), `send(text)`, `close()` (the handshake, bounded
by a second) and `abort()` (the transport closed at once: a silent or hung
peer may never answer a close), then `release()` (what the client holds
besides the socket; no network I/O).  aiohttp is the default because it costs
less CPU per message on the same loopback stream (measured in
benchmarks/README.md, "Exchange feeds over a real WebSocket"); both are core
dependencies already (aiohttp for the REST tickers).
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional, Union

__all__ = ["CLIENTS", "WsStream", "open_stream"]

Payload = Union[str, bytes]
CLIENTS = ("aiohttp", "websockets")
MAX_MESSAGE = 4 << 20                         # no exchange ticker comes near: a broken peer


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


class _AiohttpStream(WsStream):
    def __init__(self, session: Any, ws: Any) -> None:
        import aiohttp
        self._session = session
        self._ws = ws
        self._receive = ws.receive
        self._data_types = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        self._error = aiohttp.WSMsgType.ERROR
        self.send = ws.send_str               # type: ignore[method-assign]

    async def read(self) -> Optional[Payload]:
        msg = await self._receive()
        if msg.type in self._data_types:
            return msg.data                   # bytes for text too: decode_text=False
        if msg.type is self._error:           # a protocol error (the peer's bad frame)
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


async def open_stream(url: str, client: str = "aiohttp", open_timeout_s: float = 10.0) -> WsStream:
    """Connect (TCP, TLS, WebSocket handshake) within `open_timeout_s`: no
    compression, no client pings of the protocol (the exchange's own
    keepalive is the connection's), no proxy from the environment."""
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
