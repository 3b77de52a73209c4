"""Kraken: WebSocket v2 `ticker` (with its automatic `heartbeat`), REST Ticker.

Docs: https://docs.kraken.com/api/docs/websocket-v2/ticker,
https://docs.kraken.com/api/docs/websocket-v2/heartbeat (about once a second
when nothing else is sent) and
https://docs.kraken.com/api/docs/rest-api/get-ticker-information.  v2 names
pairs BTC/USD and sends numbers as JSON numbers; REST still answers with the
legacy names (XXBTZUSD, XDGUSD for DOGE), mapped back here.  One REST
request asks for every pair; Kraken refuses the whole request when one pair
is unknown, which `beastnet feeds check` shows as a missing symbol to take
out of the asset map.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import orjson

from beastnet.serve.feeds.exchanges.spec import (
    Exchange, Parsed, RawTick, decimal_text, register_exchange)

# REST's legacy asset codes -> the v2 (ISO) ones.
_LEGACY = {"XBT": "BTC", "XDG": "DOGE", "XXBT": "BTC", "XETH": "ETH", "XXDG": "DOGE",
           "XLTC": "LTC", "XXRP": "XRP", "XXLM": "XLM", "XZEC": "ZEC", "XETC": "ETC",
           "XXMR": "XMR", "XREP": "REP", "XMLN": "MLN"}
_PAIR = re.compile(r"^(?P<base>.+?)Z?USD$")


def subscribe(symbols: Sequence[str]) -> list[str]:
    return [orjson.dumps({"method": "subscribe",
                          "params": {"channel": "ticker", "symbol": list(symbols)}}).decode()]


def parse(msg: Any) -> Parsed:
    if not isinstance(msg, dict):
        return [], None
    if msg.get("channel") == "ticker" and msg.get("type") in ("snapshot", "update"):
        return [(row["symbol"], decimal_text(row["last"]), 0.0) for row in msg["data"]], None
    if msg.get("method") == "subscribe" and msg.get("success") is False:
        raise ValueError(f"subscribe refused: {msg.get('error')}")
    return [], None                           # heartbeat, status, acknowledgements


def _rest_symbol(symbol: str) -> str:
    base = symbol.split("/")[0]
    return ("XBT" if base == "BTC" else "XDG" if base == "DOGE" else base) + "USD"


def rest_paths(symbols: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    return [("/0/public/Ticker?pair=" + ",".join(_rest_symbol(s) for s in symbols), None)]


def _v2_symbol(key: str) -> str:
    match = _PAIR.match(key)
    if match is None:
        raise ValueError(f"pair {key!r} is not quoted in USD")
    base = match.group("base")
    return f"{_LEGACY.get(base, base)}/USD"


def parse_rest(body: Any, symbol: Optional[str]) -> list[RawTick]:
    if body.get("error"):
        raise ValueError(f"error {body['error']}")
    # c = last trade closed: [price, lot volume]
    return [(_v2_symbol(key), decimal_text(row["c"][0]), 0.0)
            for key, row in body["result"].items()]


KRAKEN = register_exchange(Exchange(
    name="kraken", ws_url="wss://ws.kraken.com/v2", rest_url="https://api.kraken.com",
    quote="USD", heartbeat_s=1.0, symbol=lambda asset: f"{asset}/USD", subscribe=subscribe,
    parse=parse, rest_paths=rest_paths, parse_rest=parse_rest, rest_gap_s=1.0,
    docs="https://docs.kraken.com/api/docs/websocket-v2/ticker"))
