"""A fake of the six exchanges' public market data, for the feed tests.

Each `FakeExchange` serves one exchange's documented WebSocket and REST
formats on 127.0.0.1: its messages are the documentation's own examples
(source named beside each fixture) with the symbol, price and time filled in.
It can stall (go silent without closing), drop connections without a close
frame (the client sees 1006), send malformed or out-of-order messages, answer
REST with 429 or 500, refuse WebSocket upgrades, and close a client that
breaks the exchange's liveness rule (Crypto.com: no respond-heartbeat in time;
OKX: no ping within its silence bound).
"""
from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any, Callable, Optional

import orjson
from aiohttp import WSMsgType, web

# -- fixtures: the documentation's examples --------------------------------------------

FIXTURES: dict[str, dict[str, Any]] = {
    # https://docs.cdp.coinbase.com/exchange/websocket-feed/channels (ticker, heartbeat)
    # https://docs.cdp.coinbase.com/exchange/reference/exchangerestapi_getproductticker
    "coinbase": {
        "ticker": {"type": "ticker", "sequence": 37475248783, "product_id": "ETH-USD",
                   "price": "1285.22", "open_24h": "1310.79", "volume_24h": "245532.79269678",
                   "low_24h": "1280.52", "high_24h": "1313.8", "volume_30d": "9788783.60117027",
                   "best_bid": "1285.04", "best_bid_size": "0.46688654", "best_ask": "1285.27",
                   "best_ask_size": "1.56637040", "side": "buy",
                   "time": "2022-10-19T23:28:22.061769Z", "trade_id": 370843401,
                   "last_size": "11.4396987"},
        "heartbeat": {"type": "heartbeat", "sequence": 90, "last_trade_id": 20,
                      "product_id": "BTC-USD", "time": "2014-11-07T08:19:28.464459Z"},
        "rest": {"ask": "6267.71", "bid": "6265.15", "volume": "53602.03940154",
                 "trade_id": 86326522, "price": "6268.48", "size": "0.00698254",
                 "time": "2020-03-20T00:22:57.833Z"},
    },
    # https://docs.kraken.com/api/docs/websocket-v2/ticker, .../websocket-v2/heartbeat,
    # https://docs.kraken.com/api/docs/rest-api/get-ticker-information
    "kraken": {
        "ticker": {"channel": "ticker", "type": "update", "data": [
            {"symbol": "ALGO/USD", "bid": 0.10025, "bid_qty": 740.0, "ask": 0.10036,
             "ask_qty": 1361.44813783, "last": 0.10035, "volume": 997038.98383185,
             "vwap": 0.10148, "low": 0.09979, "high": 0.10285, "change": -0.00017,
             "change_pct": -0.17}]},
        "heartbeat": {"channel": "heartbeat"},
        "rest": {"error": [], "result": {"XXBTZUSD": {
            "a": ["30300.10000", "1", "1.000"], "b": ["30300.00000", "1", "1.000"],
            "c": ["30303.20000", "0.00067643"], "v": ["4083.67001100", "4412.73601799"],
            "p": ["30706.77771", "30689.13205"], "t": [34619, 38907],
            "l": ["29868.30000", "29868.30000"], "h": ["31631.00000", "31631.00000"],
            "o": "30502.80000"}}},
    },
    # https://docs.gemini.com/websocket-api/#market-data-version-2 (l2_updates, trade,
    # heartbeat), https://docs.gemini.com/rest-api/#ticker (v1 pubticker)
    "gemini": {
        "ticker": {"type": "trade", "symbol": "BTCUSD", "event_id": 3575573053,
                   "timestamp": 151231241, "price": "9004.21000000", "quantity": "0.09110000",
                   "side": "buy"},
        "first": {"type": "l2_updates", "symbol": "BTCUSD",
                  "changes": [["buy", "9122.04", "0.00121425"], ["sell", "9122.07", "0.98942292"]],
                  "trades": [{"type": "trade", "symbol": "BTCUSD", "event_id": 169841458,
                              "timestamp": 1560976400428, "price": "9122.04",
                              "quantity": "0.0073173", "side": "sell"}],
                  "auction_events": []},
        "heartbeat": {"type": "heartbeat", "timestamp": 1560976400428},
        "rest": {"ask": "977.59", "bid": "977.35", "last": "977.65",
                 "volume": {"BTC": "2210.505328803", "USD": "2135477.463379586263",
                            "timestamp": 1483018200000}},
    },
    # https://www.gate.io/docs/developers/apiv4/ws/en/#tickers-channel,
    # .../ws/en/#application-ping-pong, .../apiv4/en/#retrieve-ticker-information
    "gateio": {
        "ticker": {"time": 1606292218, "time_ms": 1606292218231, "channel": "spot.tickers",
                   "event": "update", "result": {
                       "currency_pair": "BTC_USDT", "last": "19106.55", "lowest_ask": "19108.71",
                       "highest_bid": "19106.55", "change_percentage": "3.66",
                       "base_volume": "2811.3042155865",
                       "quote_volume": "53441606.52411221454674732293", "high_24h": "19417.74",
                       "low_24h": "18434.21"}},
        "pong": {"time": 1545404023, "time_ms": 1545404023123, "channel": "spot.pong",
                 "event": "", "result": None},
        "rest": [{"currency_pair": "BTC3L_USDT", "last": "2.46140352", "lowest_ask": "2.477",
                  "highest_bid": "2.4606821", "change_percentage": "-8.91",
                  "base_volume": "656614.0845820589",
                  "quote_volume": "1602221.66468375534639404191", "high_24h": "2.7431",
                  "low_24h": "1.9863"}],
    },
    # https://exchange-docs.crypto.com/exchange/v1/rest-ws/index.html#ticker-instrument_name,
    # ...#websocket-heartbeats, ...#public-get-tickers
    "cryptocom": {
        "ticker": {"id": -1, "method": "subscribe", "code": 0, "result": {
            "instrument_name": "BTCUSD-PERP", "subscription": "ticker.BTCUSD-PERP",
            "channel": "ticker", "data": [{
                "h": "51790.00", "l": "47895.50", "a": "51174.500000", "c": "0.03955106",
                "b": "51170.000000", "bs": "0.1000", "k": "51180.000000", "ks": "0.2000",
                "i": "BTCUSD-PERP", "v": "879.5024", "vv": "26370000.12", "oi": "12345.12",
                "t": 1613580710768}]}},
        "heartbeat": {"id": 1587523073344, "method": "public/heartbeat", "code": 0},
        "rest": {"id": -1, "method": "public/get-tickers", "code": 0, "result": {"data": [{
            "i": "BTCUSD-PERP", "h": "51790.00", "l": "47895.50", "a": "51174.500000",
            "v": "879.5024", "vv": "26370000.12", "c": "0.03955106", "b": "51170.000000",
            "k": "51180.000000", "oi": "12345.12", "t": 1613580710768}]}},
    },
    # https://www.okx.com/docs-v5/en/#public-data-websocket-tickers-channel,
    # .../#overview-websocket-connect, .../#order-book-trading-market-data-get-ticker
    "okx": {
        "ticker": {"arg": {"channel": "tickers", "instId": "BTC-USDT"}, "data": [{
            "instType": "SPOT", "instId": "BTC-USDT", "last": "9999.99", "lastSz": "0.1",
            "askPx": "9999.99", "askSz": "11", "bidPx": "8888.88", "bidSz": "5",
            "open24h": "9000", "high24h": "10000", "low24h": "8888.88", "volCcy24h": "2222",
            "vol24h": "2222", "sodUtc0": "2222", "sodUtc8": "2222", "ts": "1597026383085"}]},
        "rest": {"code": "0", "msg": "", "data": [{
            "instType": "SPOT", "instId": "BTC-USDT", "last": "9999.99", "lastSz": "0.1",
            "askPx": "9999.99", "askSz": "11", "bidPx": "8888.88", "bidSz": "5",
            "open24h": "9000", "high24h": "10000", "low24h": "8888.88", "volCcy24h": "2222",
            "vol24h": "2222", "sodUtc0": "2222", "sodUtc8": "2222", "ts": "1597026383085"}]},
    },
}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def ticker(exchange: str, symbol: str, price: str, ts: float) -> dict:
    """The documented ticker message of `exchange` for symbol, price, time."""
    msg = copy.deepcopy(FIXTURES[exchange]["ticker"])
    if exchange == "coinbase":
        msg.update(product_id=symbol, price=price, time=_iso(ts))
    elif exchange == "kraken":
        msg["data"][0].update(symbol=symbol, last=float(price))
    elif exchange == "gemini":
        msg.update(symbol=symbol, price=price, timestamp=int(ts * 1000))
    elif exchange == "gateio":
        msg["result"].update(currency_pair=symbol, last=price)
        msg.update(time=int(ts), time_ms=int(ts * 1000))
    elif exchange == "cryptocom":
        msg["result"].update(instrument_name=symbol, subscription=f"ticker.{symbol}")
        msg["result"]["data"][0].update(i=symbol, a=price, t=int(ts * 1000))
    elif exchange == "okx":
        msg["arg"]["instId"] = symbol
        msg["data"][0].update(instId=symbol, last=price, ts=str(int(ts * 1000)))
    return msg


def rest_body(exchange: str, symbols: list[str], prices: dict[str, str], ts: float) -> Any:
    """The documented REST ticker body of `exchange` for these symbols."""
    base = copy.deepcopy(FIXTURES[exchange]["rest"])
    if exchange == "coinbase":
        base.update(price=prices[symbols[0]], time=_iso(ts))
        return base
    if exchange == "kraken":
        row = base["result"].pop("XXBTZUSD")
        for s in symbols:     # REST names: XXBTZUSD for BTC, else BASEUSD
            key = "XXBTZUSD" if s == "BTC/USD" else s.replace("/", "")
            base["result"][key] = dict(row, c=[prices[s], "0.00067643"])
        return base
    if exchange == "gemini":
        base.update(last=prices[symbols[0]])
        base["volume"]["timestamp"] = int(ts * 1000)
        return base
    if exchange == "gateio":
        return [dict(base[0], currency_pair=s, last=prices[s]) for s in symbols]
    if exchange == "cryptocom":
        row = base["result"]["data"][0]
        base["result"]["data"] = [dict(row, i=s, a=prices[s], t=int(ts * 1000)) for s in symbols]
        return base
    row = base["data"][0]
    base["data"] = [dict(row, instId=s, last=prices[s], ts=str(int(ts * 1000))) for s in symbols]
    return base


def subscribed_symbols(exchange: str, msg: dict) -> list[str]:
    """The symbols a client's subscribe message asks for (each exchange's own shape)."""
    if exchange == "coinbase":
        return list(msg.get("product_ids", [])) if msg.get("type") == "subscribe" else []
    if exchange == "kraken":
        return list(msg["params"]["symbol"]) if msg.get("method") == "subscribe" else []
    if exchange == "gemini":
        return [s for sub in msg.get("subscriptions", []) for s in sub.get("symbols", [])]
    if exchange == "gateio":
        return list(msg.get("payload", [])) if msg.get("event") == "subscribe" else []
    if exchange == "cryptocom":
        if msg.get("method") != "subscribe":
            return []
        return [c.split(".", 1)[1] for c in msg["params"]["channels"]]
    if msg.get("op") == "subscribe":
        return [a["instId"] for a in msg.get("args", [])]
    return []


class FakeExchange:
    """One exchange on 127.0.0.1: WebSocket at /ws, its REST paths at /."""

    def __init__(self, name: str, heartbeat_s: float = 0.1, tick_interval_s: float = 0.05,
                 reply_deadline_s: float = 0.5, client_silence_s: float = 0.6) -> None:
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.tick_interval_s = tick_interval_s
        self.reply_deadline_s = reply_deadline_s      # Crypto.com: respond-heartbeat in time
        self.client_silence_s = client_silence_s      # OKX: a ping before this much silence
        self.silent = False          # send nothing (connections stay open)
        self.refuse = False          # answer upgrades with 503
        self.rest_status = 200       # or 429, 500
        self.ws_prices: dict[str, str] = {}           # symbol -> price pushed on the stream
        self.rest_prices: dict[str, str] = {}         # symbol -> price REST answers
        self.clients: dict[web.WebSocketResponse, set[str]] = {}
        self.connections = 0
        self.closed_for_heartbeat = 0
        self.pings = 0
        self.heartbeat_replies = 0
        self.rest_requests = 0
        self.close_codes: list[Optional[int]] = []
        self.port = 0
        self._last_heard: dict[web.WebSocketResponse, float] = {}  # monotonic
        # unanswered heartbeat: (id, monotonic time sent)
        self._pending: dict[web.WebSocketResponse, tuple[int, float]] = {}
        self._runner: Optional[web.AppRunner] = None
        self._tasks: list[asyncio.Task] = []
        self.changed = asyncio.Event()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FakeExchange":
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._tasks.append(asyncio.ensure_future(self._pump()))
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.drop()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- misbehaviour on demand --------------------------------------------------------

    def drop(self) -> None:
        """Close every connection without a close frame (the client sees 1006)."""
        for ws in list(self.clients):
            transport = ws._req.transport if ws._req is not None else None  # type: ignore
            if transport is not None:
                transport.abort()
        self.clients.clear()

    async def send_raw(self, text: str) -> None:
        """Send `text` as is to every client (malformed, out of order, ...)."""
        for ws in list(self.clients):
            await ws.send_str(text)

    async def send_ticker(self, symbol: str, price: str, ts: float) -> None:
        await self.send_raw(orjson.dumps(ticker(self.name, symbol, price, ts)).decode())

    # -- the WebSocket -----------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            return web.Response(status=503, text="down for the test")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self.clients[ws] = set()
        self.changed.set()
        watcher = asyncio.ensure_future(self._liveness(ws))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._on_client_text(ws, msg.data)
        finally:
            watcher.cancel()
            self.clients.pop(ws, None)
            # How each connection ended: 1006 when the client left without a
            # close frame (an abort), its code when it closed properly.
            self.close_codes.append(ws.close_code)
            self.changed.set()
        return ws

    async def _on_client_text(self, ws: web.WebSocketResponse, text: str) -> None:
        ws_state = self.clients.get(ws)
        if ws_state is None:
            return
        self._last_heard[ws] = time.monotonic()
        if self.name == "okx" and text == "ping":
            self.pings += 1
            if not self.silent:               # a hung server answers nothing
                await ws.send_str("pong")
            return
        data = orjson.loads(text)
        if self.name == "gateio" and data.get("channel") == "spot.ping":
            self.pings += 1
            if not self.silent:
                await ws.send_str(orjson.dumps(FIXTURES["gateio"]["pong"]).decode())
            return
        if self.name == "cryptocom" and data.get("method") == "public/respond-heartbeat":
            if data.get("id") == self._pending.get(ws, (None,))[0]:
                self._pending.pop(ws, None)
                self.heartbeat_replies += 1
            return
        symbols = subscribed_symbols(self.name, data)
        ws_state.update(symbols)
        if symbols and self.name == "gemini":
            # The first message of an l2 subscription carries recent trades.
            for s in symbols:
                first = copy.deepcopy(FIXTURES["gemini"]["first"])
                first["symbol"] = first["trades"][0]["symbol"] = s
                first["trades"][0].update(price=self.ws_prices.get(s, "9122.04"),
                                          timestamp=int(time.time() * 1000))
                await ws.send_str(orjson.dumps(first).decode())
        self.changed.set()

    async def _liveness(self, ws: web.WebSocketResponse) -> None:
        """Heartbeats out; the exchange's rule on what must come back."""
        self._last_heard[ws] = time.monotonic()
        seq = 0
        while not ws.closed:
            due = time.monotonic() + self.heartbeat_s
            await asyncio.sleep(self.heartbeat_s)
            # Woken late: the test process stalled, this fake with it.  A
            # real exchange's clock runs on meanwhile but so would the
            # client's pings reach it: the stall is no client's silence.
            late = time.monotonic() - due - self.heartbeat_s
            if late > 0:
                self._last_heard[ws] += late
                if ws in self._pending:
                    self._pending[ws] = (self._pending[ws][0], self._pending[ws][1] + late)
            if self.name == "okx" and time.monotonic() - self._last_heard[ws] > \
                    self.client_silence_s:
                self.closed_for_heartbeat += 1
                await ws.close(code=4000, message=b"no ping")
                return
            if self.silent:
                continue
            seq += 1
            hb = FIXTURES[self.name].get("heartbeat")
            if self.name == "cryptocom":
                pending = self._pending.get(ws)
                if pending is not None:
                    if time.monotonic() - pending[1] > self.reply_deadline_s:
                        self.closed_for_heartbeat += 1
                        await ws.close(code=4001, message=b"missed respond-heartbeat")
                        return
                    continue                  # one heartbeat in flight at a time
                self._pending[ws] = (int(time.time() * 1000) + seq, time.monotonic())
                hb = dict(hb, id=self._pending[ws][0])
            if hb is not None:
                try:
                    await ws.send_str(orjson.dumps(hb).decode())
                except ConnectionError:
                    return

    async def _pump(self) -> None:
        """A ticker message per subscribed symbol every tick_interval_s."""
        while True:
            await asyncio.sleep(self.tick_interval_s)
            if self.silent:
                continue
            now = time.time()
            for ws, symbols in list(self.clients.items()):
                for s in sorted(symbols):
                    price = self.ws_prices.get(s)
                    if price is None:
                        continue
                    try:
                        await ws.send_str(orjson.dumps(ticker(self.name, s, price, now)).decode())
                    except ConnectionError:
                        break

    # -- REST ------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        self.rest_requests += 1
        self.changed.set()
        if self.rest_status == 429:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        if self.rest_status != 200:
            return web.Response(status=self.rest_status, text="broken for the test")
        symbols = self._rest_symbols(request)
        known = [s for s in symbols if s in self.rest_prices]
        if not known:
            return web.Response(status=404, text="unknown symbol")
        return web.json_response(rest_body(self.name, known, self.rest_prices, time.time()),
                                 dumps=lambda o: orjson.dumps(o).decode())

    def _rest_symbols(self, request: web.Request) -> list[str]:
        path, query = request.path, request.query
        if self.name == "coinbase":          # /products/BTC-USD/ticker
            return [path.split("/")[2]]
        if self.name == "kraken":            # /0/public/Ticker?pair=XBTUSD,ETHUSD
            return [("BTC" if p[:-3] == "XBT" else "DOGE" if p[:-3] == "XDG" else p[:-3]) + "/USD"
                    for p in query.get("pair", "").split(",") if p]
        if self.name == "gemini":            # /v1/pubticker/btcusd
            return [path.rsplit("/", 1)[1].upper()]
        if self.name == "gateio":
            return [query.get("currency_pair", "")]
        if self.name == "cryptocom":
            return [query.get("instrument_name", "")]
        return [query.get("instId", "")]


class FakeExchangesThread:
    """Several FakeExchanges on their own loop in a thread (for a PriceService test)."""

    def __init__(self, names: list[str], **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-exchanges",
                                       daemon=True)
        self.thread.start()
        self.fakes = {n: self.call(lambda n=n: FakeExchange(n, **kwargs).start()) for n in names}

    def call(self, make: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await make()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        for fake in self.fakes.values():
            self.call(fake.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
