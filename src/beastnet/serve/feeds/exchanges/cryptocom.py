"""Crypto.com Exchange v1: `ticker.{instrument_name}`; the server's
`public/heartbeat` (every 30 s) must be answered with
`public/respond-heartbeat` carrying its id within 5 s, or it disconnects.

Docs: https://exchange-docs.crypto.com/exchange/v1/rest-ws/index.html#ticker-instrument_name,
#websocket-heartbeats and #public-get-tickers.  The docs ask for a 1 s pause
after connecting before the first request (rate limits are counted from it).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"id": 1, "method": "subscribe", "nonce": int(time.time() * 1000),
                          "params": {"channels": [f"ticker.{s}" for s in symbols]}}).decode()]


def _row(row: dict) -> RawTick:
    # i = instrument, a = last trade price, t = time (ms)
    return row["i"], decimal_text(row["a"]), row.get("t", 0) / 1000.0


def parse(msg: Any) -> Parsed:
    if not isinstance(msg, dict):
        return [], None
    if msg.get("method") == "public/heartbeat":
        return [], orjson.dumps({"id": msg.get("id"),
                                 "method": "public/respond-heartbeat"}).decode()
    if msg.get("code"):
        raise ValueError(f"error code {msg['code']}: {msg.get('message', '')}")
    result = msg.get("result")
    if msg.get("method") == "subscribe" and isinstance(result, dict) \
            and result.get("channel") == "ticker":
        return [_row(row) for row in result.get("data", [])], None
    return [], None


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [(f"/exchange/v1/public/get-tickers?instrument_name={s}", None) for s in symbols]


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    if body.get("code"):
        raise ValueError(f"error code {body['code']}")
    return [_row(row) for row in body["result"]["data"]]


CRYPTOCOM = register_exchange(Exchange(
    name="cryptocom", ws_url="wss://stream.crypto.com/exchange/v1/market",
    rest_url="https://api.crypto.com", quote="USD", heartbeat_s=30.0,
    symbol=lambda asset: f"{asset}_USD", subscribe=subscribe, parse=parse,
    rest_paths=rest_paths, parse_rest=parse_rest, connect_delay_s=1.0,
    docs="https://exchange-docs.crypto.com/exchange/v1/rest-ws/index.html"))
