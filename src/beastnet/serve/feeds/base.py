"""What every feed shares: the `Tick`, the `Feed` interface and exact price text.

A price travels as the decimal text the source sent ("97123.45") from the
parser to the published body, so no float rounding shows in an answer; a
float (the simulator's walk) is turned into its shortest round-trip text once.
"""
from __future__ import annotations

import math
import re
from typing import AsyncIterator, NamedTuple, Optional, Union

__all__ = ["Feed", "SourceAlive", "Tick", "price_text"]

# A JSON number that is a plain decimal (no sign, no exponent): what the
# exchanges send and what a body may carry verbatim.
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?")


class Tick(NamedTuple):
    """One price update.  `price` is decimal text (or a float from a
    simulation); `ts` is the source's time in seconds since the epoch;
    `quote` the currency the price is in (USD, USDT).  A NamedTuple, not a
    frozen dataclass: one is made per exchange message, and a frozen
    dataclass's __init__ costs several times a tuple's."""

    asset: str
    price: Union[str, float]
    source: str
    ts: float
    quote: str = "USD"


class SourceAlive(NamedTuple):
    """A source proved it is alive without a price (an exchange heartbeat),
    so a quiet market is not taken for a dead feed."""

    source: str


class Feed:
    """Base class of feeds: an async iterator of `Tick`s (and `SourceAlive`s)."""

    name = "feed"

    def __aiter__(self) -> AsyncIterator[Union[Tick, SourceAlive]]:
        raise NotImplementedError


def price_text(price: Union[str, float]) -> Optional[str]:
    """The price as JSON number text, or None when it is not a finite
    positive number (zero, negative, NaN, inf, garbage)."""
    if isinstance(price, str):
        if _DECIMAL.fullmatch(price) is None:
            return None
        if price.strip("0.") == "":          # "0", "0.000"
            return None
        return price
    if not isinstance(price, (int, float)) or isinstance(price, bool):
        return None
    value = float(price)
    if not math.isfinite(value) or value <= 0:
        return None
    text = repr(value)
    if "e" in text or "E" in text:           # 1e-07 is valid JSON, but say it plainly
        text = f"{value:.20f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.1f}"
        if _DECIMAL.fullmatch(text) is None:
            return None
    return text
