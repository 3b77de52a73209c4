"""Coinbase Exchange: the public WebSocket feed's `ticker` and `heartbeat` channels.

Docs: https://docs.cdp.coinbase.com/exchange/websocket-feed/channels (ticker,
heartbeat: one message per product each second) and
https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductticker.
The Exchange feed's channel is `heartbeat` (Advanced Trade calls its own
`heartbeats`).  A subscribe naming an unknown product fails as a whole, so
products are subscribed one per message, 10 a second (the feed's limit on
client messages is higher).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)


def _time_s(text: Any) -> float:
    return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else 0.0


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"type": "subscribe", "product_ids": list(symbols),
                          "channels": ["ticker", "heartbeat"]}).decode()]


def parse(msg: Any) -> Parsed:
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "ticker":
        return [(msg["product_id"], decimal_text(msg["price"]), _time_s(msg.get("time")))], None
    if kind == "error":
        raise ValueError(f"error message: {msg.get('message')} {msg.get('reason', '')}")
    return [], None                           # heartbeat, subscriptions: liveness only


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [(f"/products/{s}/ticker", s) for s in symbols]


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    # The product is named by the path, not the body.
    return [(str(symbol), decimal_text(body["price"]), _time_s(body.get("time")))]


COINBASE = register_exchange(Exchange(
    name="coinbase", ws_url="wss://ws-feed.exchange.coinbase.com",
    rest_url="https://api.exchange.coinbase.com", quote="USD", heartbeat_s=1.0,
    symbol=lambda asset: f"{asset}-USD", subscribe=subscribe, parse=parse,
    rest_paths=rest_paths, parse_rest=parse_rest, subscribe_batch=1, subscribe_gap_s=0.1,
    docs="https://docs.cdp.coinbase.com/exchange/websocket-feed/channels"))
