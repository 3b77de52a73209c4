"""OKX v5: public `tickers` channel; the client sends the text `ping` when
nothing arrived for a while (the server drops a connection silent for 30 s)
and the server answers `pong`.

Docs: https://www.okx.com/docs-v5/en/#public-data-websocket-tickers-channel,
https://www.okx.com/docs-v5/en/#overview-websocket-connect (ping/pong) and
https://www.okx.com/docs-v5/en/#order-book-trading-market-data-get-ticker.
A connection may send 480 subscribe requests an hour, so symbols go 20 to a
request (a reconnect costs 4-5 of them, not 80).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"op": "subscribe", "args": [{"channel": "tickers", "instId": s}
                                                      for s in symbols]}).decode()]


def _row(row: dict) -> RawTick:
    return row["instId"], decimal_text(row["last"]), int(row.get("ts", 0)) / 1000.0


def parse(msg: Any) -> Parsed:
    if not isinstance(msg, dict):
        return [], None
    if msg.get("event") == "error":
        raise ValueError(f"error {msg.get('code')}: {msg.get('msg')}")
    if (msg.get("arg") or {}).get("channel") == "tickers" and "data" in msg:
        return [_row(row) for row in msg["data"]], None
    return [], None                           # subscribe acknowledgements


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [(f"/api/v5/market/ticker?instId={s}", None) for s in symbols]


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    if body.get("code") not in ("0", 0):
        raise ValueError(f"error {body.get('code')}: {body.get('msg')}")
    return [_row(row) for row in body["data"]]


OKX = register_exchange(Exchange(
    name="okx", ws_url="wss://ws.okx.com:8443/ws/v5/public", rest_url="https://www.okx.com",
    quote="USDT", heartbeat_s=10.0, symbol=lambda asset: f"{asset}-USDT", subscribe=subscribe,
    parse=parse, rest_paths=rest_paths, parse_rest=parse_rest, subscribe_batch=20,
    subscribe_gap_s=0.1, ping_text=lambda: "ping", ping_interval_s=10.0, pong_text="pong",
    docs="https://www.okx.com/docs-v5/en/#public-data-websocket-tickers-channel"))
