"""`beastnet feeds check`: connect to each exchange once and say what it has.

What an operator runs first on a new host: can this machine reach each
exchange, how long does it take, and which of the configured symbols does
the exchange actually stream.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from beastnet.serve.feeds.base import SourceAlive, Tick
from beastnet.serve.feeds.exchanges.connection import ExchangeConnection, reap
from beastnet.serve.feeds.exchanges.wsclient import open_stream
from beastnet.serve.feeds.exchanges.spec import Exchange

__all__ = ["CheckResult", "check_exchange", "check_exchanges"]


@dataclass
class CheckResult:
    """What one exchange answered."""

    exchange: str
    url: str
    connect_ms: Optional[float] = None        # TCP + TLS + WebSocket handshake
    first_price_ms: Optional[float] = None    # from the subscribe to the first price
    found: list[str] = field(default_factory=list)    # symbols that streamed a price
    missing: list[str] = field(default_factory=list)  # symbols that did not in the time
    error: str = ""                           # why the exchange could not be reached

    @property
    def ok(self) -> bool:
        return not self.error


async def check_exchange(exchange: Exchange, assets: Sequence[str], timeout_s: float = 10.0,
                         **settings: Any) -> CheckResult:
    """Connect once, subscribe every symbol, wait up to `timeout_s` for each
    to stream a price; never raises for a dead or strange exchange."""
    seen: list[str] = []

    def emit(item: Any) -> None:
        if isinstance(item, Tick) and item.asset not in seen:
            seen.append(item.asset)

    conn = ExchangeConnection(exchange, assets, emit, **settings)
    result = CheckResult(exchange.name, conn.ws_url)
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        # The client the feed itself runs on, so a check tells what serve will see.
        ws = await open_stream(conn.ws_url, conn.ws_client, timeout_s)
        try:
            result.connect_ms = (time.monotonic() - start) * 1000
            if conn.connect_delay_s:
                await asyncio.sleep(conn.connect_delay_s)
            subscribed = time.monotonic()
            helpers = [asyncio.ensure_future(conn.subscribe(ws)),
                       asyncio.ensure_future(conn.keepalive(ws))]   # its liveness rule too
            try:
                while len(seen) < len(assets) and time.monotonic() < deadline:
                    try:
                        raw = await asyncio.wait_for(ws.read(), deadline - time.monotonic())
                    except asyncio.TimeoutError:
                        break
                    if raw is None:           # the exchange closed
                        break
                    reply = conn.on_message(raw)
                    if seen and result.first_price_ms is None:
                        result.first_price_ms = (time.monotonic() - subscribed) * 1000
                    if reply is not None:
                        await ws.send(reply)
            finally:
                for task in helpers:
                    task.cancel()
                    task.add_done_callback(reap)
        finally:
            ws.abort()                        # a check needs no close handshake
            await ws.release()
    except asyncio.CancelledError:
        raise
    except Exception as exc:                  # unreachable, refused, TLS, handshake: said
        result.error = f"{type(exc).__name__}: {exc}".strip(": ") if str(exc) \
            else type(exc).__name__
    symbol = exchange.symbol_of
    result.found = [symbol(a) for a in assets if a in seen]
    result.missing = [symbol(a) for a in assets if a not in seen]
    if not result.error and conn.bad_messages and not seen:
        result.error = f"{conn.bad_messages} messages not in the documented format"
    return result


async def check_exchanges(plan: Sequence[tuple[Exchange, list[str], dict[str, Any]]],
                          timeout_s: float = 10.0) -> list[CheckResult]:
    """Every (exchange, assets, connection settings) of `plan`, at once."""
    return list(await asyncio.gather(*(check_exchange(ex, assets, timeout_s, **settings)
                                       for ex, assets, settings in plan)))
