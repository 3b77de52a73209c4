"""Gemini: no ticker channel; the last price is the last trade of the market
data v2 `l2` stream (its first message carries recent trades, then one
`trade` message per trade), with heartbeats every 5 s.

Docs: https://docs.gemini.com/websocket-api/#market-data-version-2 and
https://docs.gemini.com/rest-api/#ticker (v1 pubticker, `last`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"type": "subscribe",
                          "subscriptions": [{"name": "l2", "symbols": list(symbols)}]}).decode()]


def _trade(row: dict) -> RawTick:
    return row["symbol"], decimal_text(row["price"]), row.get("timestamp", 0) / 1000.0


def parse(msg: Any) -> Parsed:
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "trade":
        return [_trade(msg)], None
    if kind == "l2_updates":
        # Recent trades, oldest first: the last one is the price now.
        return [_trade(row) for row in msg.get("trades", [])[-1:]], None
    return [], None                           # heartbeat, auction events


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [(f"/v1/pubticker/{s.lower()}", s) for s in symbols]


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    volume = body.get("volume") or {}
    return [(str(symbol), decimal_text(body["last"]), volume.get("timestamp", 0) / 1000.0)]


GEMINI = register_exchange(Exchange(
    name="gemini", ws_url="wss://api.gemini.com/v2/marketdata", rest_url="https://api.gemini.com",
    quote="USD", heartbeat_s=5.0, symbol=lambda asset: f"{asset}USD", subscribe=subscribe,
    parse=parse, rest_paths=rest_paths, parse_rest=parse_rest, subscribe_batch=1,
    subscribe_gap_s=0.1, rest_gap_s=0.5,
    docs="https://docs.gemini.com/websocket-api/#market-data-version-2"))
