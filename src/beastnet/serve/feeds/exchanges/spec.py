"""What an exchange adapter is: a table of facts and two parse functions.

An adapter module builds one `Exchange` and registers it; the shared
connection loop (`connection.py`) does everything else (connect, subscribe,
liveness, backoff, stale timer, REST fallback, prewarm).  The parse functions
see one decoded message (or REST body) and return raw ticks: (exchange symbol,
price as decimal text, the exchange's time in seconds or 0.0 when it gives
none).  They never see sockets, clocks or the publisher.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

__all__ = ["EXCHANGES", "Exchange", "Parsed", "RawTick", "decimal_text", "register_exchange"]

RawTick = tuple[str, str, float]              # (exchange symbol, price text, exchange time s)
# What a WebSocket message gave: ticks, and a text to send back at once
# (Crypto.com's public/respond-heartbeat), or None.
Parsed = tuple[list[RawTick], Optional[str]]


@dataclass(frozen=True)
class Exchange:
    """One exchange's public market data, as its documentation describes it."""

    name: str
    ws_url: str
    rest_url: str                             # base URL; rest_paths are appended
    quote: str                                # the quote currency of every price: USD, USDT
    heartbeat_s: float                        # its liveness interval: stale after 2x this
    symbol: Callable[[str], str]              # asset -> the exchange's WebSocket symbol
    subscribe: Callable[[Sequence[str]], list[str]]   # symbols -> subscribe message texts
    parse: Callable[[Any], Parsed]            # one decoded WebSocket message -> ticks, reply
    # symbols -> (REST path to GET, the symbol it is for when the body does not say)
    rest_paths: Callable[[Sequence[str]], list[tuple[str, Optional[str]]]]
    parse_rest: Callable[[Any, Optional[str]], list[RawTick]]  # one decoded REST body -> ticks
    docs: str = ""                            # where the formats above are documented
    rest_gap_s: float = 0.2                   # between two REST requests (its public limit)
    subscribe_batch: int = 50                 # symbols per subscribe message
    subscribe_gap_s: float = 0.0              # pause between subscribe messages (rate limits)
    connect_delay_s: float = 0.0              # wait after connecting before the first send
    ping_text: Optional[Callable[[], str]] = None     # a client keepalive to send, if any
    ping_interval_s: float = 0.0              # how often (0: never)
    pong_text: Optional[str] = None           # a non-JSON keepalive answer (OKX "pong")
    aliases: dict[str, str] = field(default_factory=dict)  # asset -> the exchange's name for it

    def symbol_of(self, asset: str) -> str:
        """The exchange's symbol for one of our assets (under its `aliases` name, if any)."""
        return self.symbol(self.aliases.get(asset, asset))

    @property
    def stale_after_s(self) -> float:
        """No message for this long: the stream is stale (twice its heartbeat)."""
        return 2.0 * self.heartbeat_s


EXCHANGES: dict[str, Exchange] = {}


def register_exchange(exchange: Exchange) -> Exchange:
    """Add an adapter to `EXCHANGES` (each adapter module calls this once)."""
    if exchange.name in EXCHANGES:
        raise ValueError(f"exchange {exchange.name!r} is registered twice")
    EXCHANGES[exchange.name] = exchange
    return exchange


def decimal_text(value: Any) -> str:
    """A price field as decimal text: strings pass as sent; a JSON float
    (Kraken v2 sends numbers) becomes its shortest round-trip repr, which is
    the exchange's own digits for anything under 16 significant digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"price {value!r} is not a number")
