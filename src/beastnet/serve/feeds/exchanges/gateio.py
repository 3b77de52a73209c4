"""Gate.io: spot WebSocket v4 `spot.tickers`, kept alive with `spot.ping`.

Docs: https://www.gate.io/docs/developers/apiv4/ws/en/#tickers-channel,
https://www.gate.io/docs/developers/apiv4/ws/en/#application-ping-pong and
https://www.gate.io/docs/developers/apiv4/en/#retrieve-ticker-information.
Gate sends no heartbeat of its own: the client pings every 10 s and takes
the `spot.pong` as a sign of life.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"time": int(time.time()), "channel": "spot.tickers",
                          "event": "subscribe", "payload": list(symbols)}).decode()]


def ping() -> str:
    return orjson.dumps({"time": int(time.time()), "channel": "spot.ping"}).decode()


def parse(msg: Any) -> Parsed:
    if not isinstance(msg, dict):
        return [], None
    if msg.get("channel") == "spot.tickers" and msg.get("event") == "update":
        row = msg["result"]
        return [(row["currency_pair"], decimal_text(row["last"]),
                 msg.get("time_ms", 0) / 1000.0)], None
    if msg.get("error"):
        raise ValueError(f"error {msg['error']}")
    return [], None                           # spot.pong, subscribe acknowledgements


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [(f"/api/v4/spot/tickers?currency_pair={s}", None) for s in symbols]


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    return [(row["currency_pair"], decimal_text(row["last"]), 0.0) for row in body]


GATEIO = register_exchange(Exchange(
    name="gateio", ws_url="wss://api.gateio.ws/ws/v4/", rest_url="https://api.gateio.ws",
    quote="USDT", heartbeat_s=10.0, symbol=lambda asset: f"{asset}_USDT", subscribe=subscribe,
    parse=parse, rest_paths=rest_paths, parse_rest=parse_rest, subscribe_batch=1,
    subscribe_gap_s=0.05, ping_text=ping, ping_interval_s=10.0,
    docs="https://www.gate.io/docs/developers/apiv4/ws/en/#tickers-channel"))
