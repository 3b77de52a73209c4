"""The six exchange adapters on their one connection loop, against the fake
exchanges of tests/fake_exchange.py (each exchange's documented formats).

Every wait below waits on the loop's or the fake's state (a counter, a state
name, a published body); the assertions after it decide the result.
"""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from typing import Any

import orjson
import pytest

from beastnet import ResponseTable
from beastnet.serve.feeds import PricePublisher
from beastnet.serve.feeds.exchanges import EXCHANGES, ExchangeConnection, ExchangeFeed
from fake_exchange import FakeExchange, FakeExchangesThread
from support import until, wait_for

pytestmark = pytest.mark.timeout(60)

# One asset per exchange, with a price written with the exchange's own digits
# (Kraken sends JSON numbers: its digits are the float's shortest form).
CASES = {
    "coinbase": ("BTC", "97123.4500", "97001.25"),
    "kraken": ("ALGO", "0.10035", "0.1001"),
    "gemini": ("AAVE", "321.07000000", "320.5"),
    "gateio": ("BNB", "701.3300", "700.1"),
    "cryptocom": ("TON", "5.218000", "5.1"),
    "okx": ("TIA", "4.5120", "4.4"),
}
STALE_AFTER_S = 0.5


def fast(fake: FakeExchange, **extra: Any) -> dict[str, Any]:
    """Connection settings for a test: the fake's URLs, short bounds."""
    settings = dict(ws_url=fake.ws_url, rest_url=fake.rest_url, stale_after_s=STALE_AFTER_S,
                    rest_interval_s=0.1, rest_gap_s=0.01, backoff_base_s=0.05,
                    backoff_max_s=0.2, ping_interval_s=0.1, connect_delay_s=0.0)
    settings.update(extra)
    return settings


async def stop_all(task: "asyncio.Future[Any]", fakes: dict[str, FakeExchange]) -> None:
    """Cancel a publisher's task, then stop the fakes it read."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for fake in fakes.values():
        await fake.stop()


class LoopStalls:
    """The time this event loop woke late, summed from `start()` (a task
    sleeping 10 ms at a time): how long the process was stalled, which the
    stale watchdog excuses from a silence.  A stale verdict's timing is
    checked against the bound plus this, not against the test's clock
    alone (on six busy workers one verdict came 0.97 s after the silence,
    its bound 0.5 s)."""

    def __init__(self) -> None:
        self.stalled_s = 0.0
        self._task: "asyncio.Future[Any] | None" = None

    def start(self) -> "LoopStalls":
        async def watch() -> None:
            while True:
                due = time.monotonic() + 0.01
                await asyncio.sleep(0.01)
                self.stalled_s += max(0.0, time.monotonic() - due)
        self.stalled_s = 0.0
        self._task = asyncio.ensure_future(watch())
        return self

    def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        return self.stalled_s


def body(table: ResponseTable, asset: str) -> dict:
    return orjson.loads(table[asset]) if asset in table else {}


class Rig:
    """One fake exchange, one connection, a publisher and its table."""

    def __init__(self, name: str, exchange=None, quiet: bool = False, threaded: bool = False,
                 **settings: Any) -> None:
        self.name = name
        self.quiet = quiet                    # the stream sends no ticker at all
        self.threaded = threaded              # the fake on a loop of its own, in a thread
        self.asset, self.ws_price, self.rest_price = CASES[name]
        self.exchange = exchange or EXCHANGES[name]
        self.symbol = self.exchange.symbol_of(self.asset)
        self.settings = settings

    async def __aenter__(self) -> "Rig":
        if self.threaded:
            self.fakes = FakeExchangesThread([self.name])
            self.fake = self.fakes.fakes[self.name]
        else:
            self.fake = await FakeExchange(self.name).start()
        if not self.quiet:
            self.fake.ws_prices[self.symbol] = self.ws_price
        self.fake.rest_prices[self.symbol] = self.rest_price
        self.table = ResponseTable()
        self.publisher = PricePublisher(self.table, stale_after_s=5.0)
        self.conn = ExchangeConnection(self.exchange, [self.asset], self.publisher.on_tick,
                                       **fast(self.fake, **self.settings))
        self.publisher.source_stale_after_s[self.name] = self.conn.fresh_for_s
        self.task = asyncio.ensure_future(self.conn.run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if self.threaded:
            self.fakes.close()
        else:
            await self.fake.stop()

    def price_is(self, price: str) -> bool:
        return orjson.loads(orjson.dumps(body(self.table, self.asset).get("price"))) == \
            float(price) and body(self.table, self.asset).get("source") == self.name


@pytest.mark.parametrize("name", list(CASES))
def test_prices_flow_exactly_and_the_liveness_rule_is_kept(name):
    async def scenario():
        async with Rig(name) as rig:
            assert await until(lambda: rig.conn.state == "connected" and
                               rig.price_is(rig.ws_price)), rig.conn.health()
            raw = rig.table[rig.asset]
            # Three heartbeat periods of the fake (0.1 s each) on one connection.
            hb0 = rig.conn.messages
            assert await until(lambda: rig.fake.pings + rig.fake.heartbeat_replies >= 3
                               if name in ("okx", "gateio", "cryptocom")
                               else rig.conn.messages - hb0 >= 6)
            # Malformed and out-of-order messages are counted, never published.
            await rig.fake.send_raw('{"not": json')
            if name != "kraken":              # Kraken's ticker carries no time to order by
                await rig.fake.send_ticker(rig.symbol, "1.5", time.time() - 3600)
            assert await until(lambda: rig.conn.bad_messages >= 1 and
                               (name == "kraken" or rig.conn.out_of_order >= 1))
            health = rig.conn.health()
            return raw, health, rig.fake.connections, rig.fake.closed_for_heartbeat, \
                body(rig.table, rig.asset)

    raw, health, connections, closed, last = asyncio.run(scenario())
    asset, ws_price, _ = CASES[name]
    assert f'"price":{ws_price},'.encode() in raw          # the exchange's digits, verbatim
    assert last["quote"] == EXCHANGES[name].quote and last["stale"] is False
    assert last["price"] == float(ws_price)                # the out-of-order 1.5 was refused
    assert (connections, closed, health["reconnects"]) == (1, 0, 0), health
    assert health["state"] == "connected" and health["symbols_seen"] == 1


@pytest.mark.parametrize("name", list(CASES))
def test_silent_stream_goes_stale_in_its_bound_rest_serves_then_the_stream_returns(name):
    async def scenario():
        async with Rig(name) as rig:
            assert await until(lambda: rig.conn.state == "connected" and
                               rig.price_is(rig.ws_price))
            rig.fake.silent = True                # open, but nothing sent
            silenced, stalls = time.monotonic(), LoopStalls().start()
            assert await until(lambda: rig.conn.stale_events >= 1)
            detected_s = time.monotonic() - silenced - stalls.stop()
            assert await until(lambda: rig.conn.state == "fallback" and
                               rig.price_is(rig.rest_price)), rig.conn.health()
            served_by_rest = body(rig.table, rig.asset)
            # REST failing too: down, counted; 429 counted apart.
            rig.fake.rest_status = 500
            assert await until(lambda: rig.conn.state == "down")
            rig.fake.rest_status = 429
            assert await until(lambda: rig.conn.rest_rate_limited >= 1)
            rig.fake.rest_status = 200
            # The stream returns with a new price.
            new_price = rig.ws_price[:-1] + "9"
            rig.fake.ws_prices[rig.symbol] = new_price
            rig.fake.silent = False
            assert await until(lambda: rig.conn.state == "connected" and
                               rig.price_is(new_price)), rig.conn.health()
            return detected_s, served_by_rest, rig.conn.health()

    detected_s, served_by_rest, health = asyncio.run(scenario())
    # The bound is STALE_AFTER_S; the watchdog looks every bound/8; the
    # time the process was stalled meanwhile is excused (LoopStalls).
    assert detected_s <= STALE_AFTER_S * 1.5, detected_s
    assert served_by_rest["stale"] is False and served_by_rest["source"] == name
    assert health["rest_errors"] >= 2 and health["rest_polls"] >= 2
    assert health["reconnects"] >= 1


@pytest.mark.parametrize("name", ["okx", "cryptocom"])
def test_the_fake_closes_a_client_that_breaks_the_liveness_rule(name):
    """The control for the liveness test above: without pings (OKX) or
    respond-heartbeat (Crypto.com) the fake closes the connection."""
    exchange = EXCHANGES[name]
    if name == "cryptocom":
        exchange = dataclasses.replace(exchange, parse=lambda m: (EXCHANGES[name].parse(m)[0],
                                                                  None))

    async def scenario():
        async with Rig(name, exchange=exchange, ping_interval_s=0.0) as rig:
            assert await until(lambda: rig.fake.closed_for_heartbeat >= 1)
            assert await until(lambda: rig.conn.reconnects >= 1)
            return rig.fake.closed_for_heartbeat

    assert asyncio.run(scenario()) >= 1


def test_one_exchanges_trouble_leaves_the_others_alone():
    async def scenario():
        fakes = {n: await FakeExchange(n).start() for n in ("coinbase", "okx")}
        for n, fake in fakes.items():
            asset, price, _ = CASES[n]
            fake.ws_prices[EXCHANGES[n].symbol_of(asset)] = price
            fake.rest_prices[EXCHANGES[n].symbol_of(asset)] = CASES[n][2]
        routes = {CASES[n][0]: [n] for n in fakes}
        feed = ExchangeFeed(routes=routes, assets=list(routes),
                            settings={n: fast(f) for n, f in fakes.items()})
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0)
        task = asyncio.ensure_future(publisher.run(feed))
        try:
            conns = feed.connections
            assert await until(lambda: all(c.state == "connected" for c in conns.values()))
            fakes["coinbase"].silent = True
            fakes["coinbase"].refuse = True
            assert await until(lambda: conns["coinbase"].state in ("fallback", "down"))
            okx_before = body(table, "TIA")["seq"]
            assert await until(lambda: body(table, "TIA")["seq"] > okx_before + 5)
            return {n: c.health() for n, c in conns.items()}, publisher.health()
        finally:
            await stop_all(task, fakes)

    health, published = asyncio.run(scenario())
    assert health["okx"]["state"] == "connected"
    assert health["okx"]["reconnects"] == 0 and health["okx"]["stale_events"] == 0
    assert health["coinbase"]["stale_events"] == 1
    assert set(published["exchanges"]) == {"coinbase", "okx"}


def test_a_jump_past_the_bound_is_refused_counted_and_logged(caplog):
    table = ResponseTable()
    publisher = PricePublisher(table, max_jump=0.2)
    from beastnet.serve.feeds import Tick
    publisher.on_tick(Tick("BTC", "97000", "coinbase", 1.0))
    publisher.on_tick(Tick("BTC", "97100", "kraken", 1.0))
    with caplog.at_level("WARNING", logger="beastnet.serve.feeds"):
        publisher.on_tick(Tick("BTC", "9.7", "kraken", 2.0))      # a misplaced decimal point
        publisher.on_tick(Tick("BTC", "970000", "coinbase", 2.0))
    assert publisher.refused_jumps == 2
    assert orjson.loads(table["BTC"])["price"] in (97000, 97100)
    assert any("refused BTC 9.7 from kraken" in r.getMessage() for r in caplog.records)


def test_all_six_reach_the_http_api_and_stream_subscribers(tmp_path):
    import http.client

    import websockets

    from beastnet.serve.config import load_config
    from beastnet.serve.service import PriceService
    from fake_exchange import FakeExchangesThread

    fakes = FakeExchangesThread(list(CASES))
    try:
        for name, fake in fakes.fakes.items():
            asset, price, rest_price = CASES[name]
            symbol = EXCHANGES[name].symbol_of(asset)
            fake.ws_prices[symbol] = price
            fake.rest_prices[symbol] = rest_price
        settings = {n: {k: v for k, v in fast(f).items()} for n, f in fakes.fakes.items()}
        cfg = load_config(profile="dev", overrides={
            "udp_port": 0, "http_port": 0, "admin_port": 0, "feed": "exchanges",
            "feed_exchanges": settings,
            "feed_assets": {CASES[n][0]: [n] for n in CASES}})
        with PriceService(cfg) as service:
            assert service.http is not None and service.admin is not None

            def get(address, path):
                conn = http.client.HTTPConnection(*address[:2], timeout=5)
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    return resp.status, resp.read()
                finally:
                    conn.close()

            want = {CASES[n][0]: (n, CASES[n][1]) for n in CASES}
            deadline = time.monotonic() + 15
            bodies: dict[str, bytes] = {}
            while time.monotonic() < deadline and len(bodies) < len(want):
                for asset, (name, price) in want.items():
                    status, raw = get(service.http.address, f"/v1/{asset}")
                    if status == 200 and f'"price":{price},'.encode() in raw:
                        bodies[asset] = raw
                time.sleep(0.02)
            _, stats = get(service.admin.address, "/admin/stats")
            _, metrics = get(service.admin.address, "/metrics")

            async def first_frame(asset):
                url = f"ws://127.0.0.1:{service.http.address[1]}/v1/stream"
                async with websockets.connect(url) as ws:
                    await ws.send(orjson.dumps({"op": "subscribe", "symbols": [asset]}).decode())
                    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == \
                        "subscribed"
                    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))

            frames = {a: asyncio.run(first_frame(a)) for a in want}
    finally:
        fakes.close()
    assert set(bodies) == set(want), sorted(set(want) - set(bodies))
    for asset, raw in bodies.items():
        name = want[asset][0]
        answer = orjson.loads(raw)
        assert (answer["source"], answer["quote"]) == (name, EXCHANGES[name].quote)
    exchanges = orjson.loads(stats)["feed"]["exchanges"]
    assert set(exchanges) == set(CASES)
    assert all(e["state"] == "connected" for e in exchanges.values()), exchanges
    assert b'beastnet_feed_exchange_state{exchange="okx",state="connected"} 1' in metrics
    assert b"\nbeastnet_feed_dropped_total 0\n" in metrics
    assert b"\nbeastnet_feed_sink_errors_total 0\n" in metrics
    assert b"\nbeastnet_feed_exchange_messages_total{exchange=\"okx\"} " in metrics
    for asset, (name, _) in want.items():     # every exchange's price reaches a subscriber
        assert (frames[asset]["asset"], frames[asset]["source"], frames[asset]["quote"]) == \
            (asset, name, EXCHANGES[name].quote)


def dead_port() -> int:
    from support import free_port
    return free_port()


def test_no_network_says_so_once_per_exchange_and_keeps_retrying(caplog):
    port = dead_port()                        # nothing listens: refused at once
    settings = {n: dict(ws_url=f"ws://127.0.0.1:{port}/ws", rest_url=f"http://127.0.0.1:{port}",
                        backoff_base_s=0.01, backoff_max_s=0.05, rest_interval_s=0.05,
                        rest_gap_s=0.0, connect_delay_s=0.0) for n in CASES}
    feed = ExchangeFeed(routes={CASES[n][0]: [n] for n in CASES}, settings=settings)

    async def scenario():
        task = asyncio.ensure_future(PricePublisher(ResponseTable()).consume(feed))
        try:
            return await until(lambda: all(c.reconnects >= 5 and c.rest_errors >= 3
                                           for c in feed.connections.values()))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("INFO", logger="beastnet.serve.feeds.exchanges"):
        retried = asyncio.run(scenario())
    assert retried
    lines = [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"]
    for name in CASES:
        mine = [line for line in lines if line.startswith(f"exchange {name}:")]
        assert len(mine) == 1 and ": down: " in mine[0], mine
    assert all(c.state == "down" for c in feed.connections.values())


def test_record_then_replay_publishes_the_same_prices_in_the_same_order(tmp_path):
    from beastnet.serve.feeds.exchanges import ExchangeReplayFeed, JSONLRecorder

    path = tmp_path / "recording.jsonl"
    routes = {CASES[n][0]: [n] for n in CASES}

    def capture(publisher: PricePublisher) -> list:
        seen: list = []
        publish = publisher._publish

        def spy(asset, price, ts, source, quote, stale, age_s=None):
            seen.append((asset, price, source, quote))
            publish(asset, price, ts, source, quote, stale, age_s)
        publisher._publish = spy              # type: ignore[method-assign]
        return seen

    async def record() -> list:
        fakes = {n: await FakeExchange(n).start() for n in CASES}
        for n, fake in fakes.items():
            symbol = EXCHANGES[n].symbol_of(CASES[n][0])
            fake.ws_prices[symbol] = CASES[n][1]
            fake.rest_prices[symbol] = CASES[n][2]
        with open(path, "wb") as fh:
            feed = ExchangeFeed(routes=routes, assets=list(routes), recorder=JSONLRecorder(fh),
                                settings={n: fast(f) for n, f in fakes.items()})
            publisher = PricePublisher(ResponseTable())
            seen = capture(publisher)
            task = asyncio.ensure_future(publisher.consume(feed))
            try:
                for step in range(3):             # three prices each, a bad message between
                    assert await until(lambda: all(c.ticks >= 4 * (step + 1)
                                                   for c in feed.connections.values()))
                    for n, fake in fakes.items():
                        symbol = EXCHANGES[n].symbol_of(CASES[n][0])
                        fake.ws_prices[symbol] = f"{step + 2}.25"
                        await fake.send_raw("{garbage")
                assert await until(lambda: all(c.ticks >= 16 for c in feed.connections.values()))
                assert await until(feed.queue.empty)       # the publisher caught up
            finally:
                await stop_all(task, fakes)
        return seen

    async def replay() -> list:
        publisher = PricePublisher(ResponseTable())
        seen = capture(publisher)
        await publisher.consume(ExchangeReplayFeed(str(path), speed=0, routes=routes,
                                                   assets=list(routes)))
        return seen

    recorded = asyncio.run(record())
    replayed = asyncio.run(replay())
    assert len(recorded) >= 6 * 16
    assert replayed[:len(recorded)] == recorded
    # Everything the recording holds was published then or after the stop.
    assert {p for _, p, _, _ in recorded} >= {"2.25", "3.25", "4.25"}


def test_beastnet_feeds_check_against_the_fake_and_a_dead_host(tmp_path):
    import subprocess
    import sys

    from fake_exchange import FakeExchangesThread

    fakes = FakeExchangesThread(list(CASES))
    try:
        for name, fake in fakes.fakes.items():
            fake.ws_prices[EXCHANGES[name].symbol_of(CASES[name][0])] = CASES[name][1]
            fake.rest_prices[EXCHANGES[name].symbol_of(CASES[name][0])] = CASES[name][2]
        live = tmp_path / "live.toml"
        dead = tmp_path / "dead.toml"
        port = dead_port()
        live.write_text("".join(
            f'[feeds.exchanges.{n}]\nws_url = "{f.ws_url}"\nrest_url = "{f.rest_url}"\n'
            f'connect_delay_s = 0\nping_interval_s = 0.1\n' for n, f in fakes.fakes.items()))
        dead.write_text("".join(
            f'[feeds.exchanges.{n}]\nws_url = "ws://127.0.0.1:{port}/ws"\n' for n in CASES))

        def check(config):
            return subprocess.run([sys.executable, "-m", "beastnet", "feeds", "check",
                                   "--config", str(config), "--timeout", "2s"],
                                  capture_output=True, text=True, timeout=60)
        good, bad = check(live), check(dead)
        recording = tmp_path / "rec.jsonl"
        # Recorded until the file holds both exchanges' stream and REST lines
        # (each line is flushed as written), then stopped with Ctrl-C: a fixed
        # 1.5 s recorded nothing at load 10, the connections not yet up.
        rec = subprocess.Popen([sys.executable, "-m", "beastnet", "feeds", "record", "--config",
                                str(live), "--exchange", "okx", "--exchange", "gateio",
                                "--duration", "60s", str(recording)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def kinds() -> set:
                text = recording.read_bytes() if recording.exists() else b""
                return {(r["x"] if r["k"] == "ws" else "", r["k"])
                        for r in map(orjson.loads, text.splitlines()[:-1])
                        if r["k"] == "rest"
                        or EXCHANGES[r["x"]].symbol_of(CASES[r["x"]][0]) in r["m"]}
            wait_for(lambda: kinds() == {("okx", "ws"), ("gateio", "ws"), ("", "rest")},
                     timeout=30, interval=0.05, message="both exchanges' tickers and a REST "
                                                         "answer recorded")
            rec.send_signal(signal.SIGINT)
            out, err = rec.communicate(timeout=30)
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.communicate()
    finally:
        fakes.close()
    assert rec.returncode == 0, out + err
    assert f"messages to {recording}" in out
    lines = [orjson.loads(line) for line in recording.read_bytes().splitlines()]
    assert {r["x"] for r in lines} == {"okx", "gateio"}, out
    assert {r["k"] for r in lines} == \
        {"ws", "rest"}
    assert any(CASES["okx"][1] in r["m"] for r in lines if r["k"] == "ws")
    lines = dict(line.split(None, 1) for line in good.stdout.splitlines())
    assert set(lines) == set(CASES), good.stdout + good.stderr
    for name in CASES:
        assert lines[name].startswith("ok    connect "), lines[name]
        assert EXCHANGES[name].symbol_of(CASES[name][0]) not in lines[name].split("missing:")[-1]
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    dead_lines = bad.stdout.splitlines()
    assert len(dead_lines) == 6 and all(" DOWN  ws://127.0.0.1:" in d for d in dead_lines)


def test_beastnet_stats_shows_a_row_per_exchange():
    from beastnet.cli.stats import format_stats
    health = {"state": "fallback", "quote": "USDT", "message_age_s": 4.25, "msgs_per_s": 12.5,
              "reconnects": 3, "rest_polls": 40, "rest_errors": 2, "symbols_seen": 30,
              "symbols": 31}
    text = format_stats({"uptime_s": 1, "profile": "production", "assets": 150,
                         "feed": {"sources": {}, "exchanges": {"okx": health},
                                  "refused_jumps": 4}})
    assert "exchange okx        fallback   USDT msg age 4.2 s  12.5 msg/s  reconnects 3  " \
           "REST polls 40 (2 failed)  symbols 30/31" in text
    assert "refused 4" in text


def test_an_asset_falls_back_to_its_second_exchange_then_says_stale():
    """Stream stale -> that exchange's REST -> both down -> the asset's next
    exchange -> nothing fresh -> the last price, "stale": true with its age."""
    async def scenario():
        fakes = {n: await FakeExchange(n).start() for n in ("coinbase", "kraken")}
        for n, fake in fakes.items():
            fake.ws_prices[EXCHANGES[n].symbol_of("BTC")] = {"coinbase": "97000.5",
                                                             "kraken": "97010.5"}[n]
            fake.rest_prices[EXCHANGES[n].symbol_of("BTC")] = "96990.5"
        feed = ExchangeFeed(routes={"BTC": ["coinbase", "kraken"]}, assets=["BTC"],
                            settings={n: fast(f) for n, f in fakes.items()})
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0, check_interval_s=0.02)
        task = asyncio.ensure_future(publisher.run(feed))
        seen = []
        try:
            assert await until(lambda: body(table, "BTC").get("source") == "coinbase" and
                               body(table, "BTC")["price"] == 97000.5)
            seen.append(body(table, "BTC"))
            cb = fakes["coinbase"]
            cb.silent, cb.refuse = True, True                 # stream gone
            assert await until(lambda: feed.connections["coinbase"].state == "fallback" and
                               body(table, "BTC")["price"] == 96990.5)
            seen.append(body(table, "BTC"))                    # coinbase's REST
            cb.rest_status = 500                               # and its REST too
            assert await until(lambda: body(table, "BTC").get("source") == "kraken")
            seen.append(body(table, "BTC"))
            for fake in fakes.values():
                fake.silent, fake.refuse, fake.rest_status = True, True, 500
            assert await until(lambda: body(table, "BTC").get("stale") is True, 30)
            seen.append(body(table, "BTC"))
            return seen, publisher.health()
        finally:
            await stop_all(task, fakes)

    seen, health = asyncio.run(scenario())
    assert [s["source"] for s in seen[:3]] == ["coinbase", "coinbase", "kraken"]
    assert seen[2]["stale"] is False and seen[3]["stale"] is True and seen[3]["age_s"] > 0
    assert health["assets_stale"] == ["BTC"] and health["fallbacks"] >= 1


def test_rest_bodies_are_read_within_the_cap():
    async def scenario():
        async with Rig("gateio", rest_max_bytes=64) as rig:   # a documented body is longer
            rig.fake.refuse = True
            assert await until(lambda: rig.conn.rest_errors >= 2)
            return rig.conn, body(rig.table, rig.asset)

    conn, published = asyncio.run(scenario())
    assert conn.ticks == 0 and published == {} and "over 64 bytes" in conn._rest_error


def test_replay_recognises_an_exchange_recording(tmp_path):
    from beastnet.serve.config import ServeConfig
    from beastnet.serve.feeds import open_feed
    from beastnet.serve.feeds.exchanges import ExchangeReplayFeed
    path = tmp_path / "rec.jsonl"
    path.write_text('{"t":1.0,"x":"okx","k":"ws","s":null,"m":"pong"}\n')
    assert isinstance(open_feed(ServeConfig(feed="replay", feed_path=str(path))),
                      ExchangeReplayFeed)


def test_a_stream_that_never_speaks_is_stale_too():
    async def scenario():
        async with Rig("kraken") as rig:
            rig.fake.silent = True            # from the first byte: subscribed, then nothing
            assert await until(lambda: rig.conn.stale_events >= 2)
            assert await until(lambda: rig.price_is(rig.rest_price))
            return rig.conn.health(), rig.fake.connections

    health, connections = asyncio.run(scenario())
    assert health["state"] == "fallback" and connections >= 2


def test_the_publisher_takes_each_tick_in_the_reader_task_and_counts_sink_errors(caplog):
    """deliver_to: the connection's reader task calls on_tick itself (no
    queue, no second task); a tick the sink raises on is counted in
    feed_sink_errors and logged, and the stream reads on."""
    async def scenario():
        fake = await FakeExchange("okx").start()
        asset, price, _ = CASES["okx"]
        fake.ws_prices[EXCHANGES["okx"].symbol_of(asset)] = price
        feed = ExchangeFeed(routes={asset: ["okx"]}, assets=[asset],
                            settings={"okx": fast(fake)})
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0)
        take = publisher.on_tick
        callers: set = set()
        calls = [0]

        def sink(item):
            callers.add(asyncio.current_task())
            calls[0] += 1
            if calls[0] % 3 == 0:
                raise RuntimeError("a bug in the publisher")
            take(item)
        publisher.on_tick = sink              # type: ignore[method-assign]
        consumer = asyncio.ensure_future(publisher.consume(feed))
        try:
            assert await until(lambda: feed.sink_errors >= 5 and
                               feed.connections["okx"].ticks >= 15)
            return (callers, consumer, feed.queue.qsize(), feed.sink_errors, calls[0],
                    body(table, asset), publisher.health(), feed.connections["okx"].health())
        finally:
            await stop_all(consumer, {"okx": fake})

    with caplog.at_level("ERROR", logger="beastnet.serve.feeds.exchanges"):
        callers, consumer, queued, errors, calls, published, health, okx = \
            asyncio.run(scenario())
    assert consumer not in callers and len(callers) == 1   # the one reader task, not consume's
    assert queued == 0 and health["feed_dropped"] == 0
    assert errors == calls // 3 and health["feed_sink_errors"] == errors
    assert okx["reconnects"] == 0 and okx["state"] == "connected"   # the stream read on
    assert published["price"] == float(CASES["okx"][1]) and published["source"] == "okx"
    lines = [r.getMessage() for r in caplog.records if "the sink refused" in r.getMessage()]
    assert len(lines) == 1 and "RuntimeError: a bug in the publisher" in lines[0]


@pytest.mark.parametrize("client", ["native", "aiohttp", "websockets"])
def test_a_silent_stream_is_aborted_at_once_and_redialled(client):
    """The watchdog drops a silent stream without a close handshake (the
    peer may never answer one): the fake sees the connection end with no
    close frame (1006), and the client redials.  Every WebSocket client."""
    async def scenario():
        async with Rig("coinbase", ws_client=client) as rig:
            assert await until(lambda: rig.conn.state == "connected" and
                               rig.price_is(rig.ws_price))
            rig.fake.silent = True
            assert await until(lambda: rig.conn.stale_events >= 1)
            assert await until(lambda: len(rig.fake.close_codes) >= 1)
            rig.fake.silent = False
            assert await until(lambda: rig.conn.state == "connected" and
                               rig.fake.connections >= 2)
            return rig.fake.close_codes[0], rig.conn.health()

    code, health = asyncio.run(scenario())
    assert code == 1006, code
    assert health["reconnects"] >= 1 and health["stale_events"] >= 1


def test_an_unknown_websocket_client_is_refused():
    from beastnet.serve.feeds.exchanges.wsclient import open_stream
    with pytest.raises(ValueError, match="unknown WebSocket client 'picows'"):
        asyncio.run(open_stream("ws://127.0.0.1:9/", "picows"))


def test_the_prewarm_skips_symbols_the_stream_already_priced():
    """Gate.io's REST ticker carries no time: a prewarm request answered
    after the stream's price would overwrite it with an older one.  Two
    symbols, REST requests 2 s apart: the stream prices both meanwhile,
    so only the first is asked for and the stream's prices stay (0.5 s
    apart, a 6-worker run once had the stream connect later than that)."""
    async def scenario():
        fake = await FakeExchange("gateio").start()
        assets = ["BNB", "TRX"]
        symbols = [EXCHANGES["gateio"].symbol_of(a) for a in assets]
        for s, ws_price, rest_price in zip(symbols, ("701.33", "0.2501"), ("650.5", "0.2")):
            fake.ws_prices[s], fake.rest_prices[s] = ws_price, rest_price
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0)
        conn = ExchangeConnection(EXCHANGES["gateio"], assets, publisher.on_tick,
                                  **fast(fake, rest_gap_s=2.0))
        task = asyncio.ensure_future(conn.run())
        try:
            assert await until(lambda: conn.prewarm_skipped >= 1 and
                               all(s in conn.stream_priced for s in symbols))
            # past the second request's turn: the round is over, and says so
            assert await until(lambda: conn.connected and conn.prewarmed)
            return fake.rest_requests, conn.health(), [body(table, a) for a in assets]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fake.stop()

    requests, health, bodies = asyncio.run(scenario())
    assert requests == 1 and health["prewarm_skipped"] == 1 and health["rest_polls"] == 1
    assert health["prewarmed"] and health["state"] == "connected"
    assert [b["price"] for b in bodies] == [701.33, 0.2501]


@pytest.mark.parametrize("name", list(CASES))
def test_a_quiet_market_on_a_live_connection_is_not_declared_dead(name):
    """No trade for many times the stale bound, but the exchange's liveness
    traffic flows (Coinbase/Gemini/Kraken heartbeats, Crypto.com
    public/heartbeat answered, Gate.io spot.pong, OKX pong): the stream stays
    connected, is never dropped, and its REST price stays fresh."""
    async def scenario():
        async with Rig(name, quiet=True) as rig:
            # A price from the prewarm (and Gemini's subscription snapshot).
            assert await until(lambda: rig.conn.state == "connected" and
                               body(rig.table, rig.asset).get("source") == name)
            ticks0, messages0 = rig.conn.ticks, rig.conn.messages
            # 20 liveness messages at 0.1 s: four stale bounds (0.5 s) without
            # a price.
            assert await until(lambda: rig.conn.messages >= messages0 + 20)
            rig.publisher.check()
            return (rig.conn.ticks - ticks0, rig.conn.health(), rig.publisher.health(),
                    body(rig.table, rig.asset))

    new_ticks, health, published, last = asyncio.run(scenario())
    assert new_ticks == 0
    assert (health["state"], health["stale_events"], health["reconnects"]) == \
        ("connected", 0, 0), health
    assert published["sources"][name]["stale"] is False and published["assets_stale"] == []
    assert last["stale"] is False and last["source"] == name


@pytest.mark.parametrize("threaded", [False, True], ids=["next-after", "in-flight"])
def test_a_stall_of_the_whole_process_is_not_taken_for_a_silent_exchange(threaded):
    """The loop held for three stale bounds (a busy host descheduling the
    process; here a blocking call).  next-after: the exchange's next message
    comes 0.1 s after the stall (nothing was in flight: the fake shares the
    stalled process, as when two of six exchanges went stale together in a
    CI run).  in-flight: the fake, in a thread of its own, sends all along,
    and the messages wait in the socket (a real exchange) until the loop
    runs again, its timers and its reads in one turn.  The watchdog, woken that late,
    excuses the time no one could listen: the stream stays up.  A silence
    that goes on after a stall is still found, within a bound of its end."""
    async def scenario():
        # Coinbase: its liveness rule asks nothing of the client.
        async with Rig("coinbase", threaded=threaded) as rig:
            assert await until(lambda: rig.conn.state == "connected" and rig.conn.ticks >= 3)
            rig.fake.silent = not threaded
            time.sleep(3 * STALE_AFTER_S)                 # the stall itself
            if not threaded:
                asyncio.get_running_loop().call_later(0.1, setattr, rig.fake, "silent", False)
            messages = rig.conn.messages
            assert await until(lambda: rig.conn.messages >= messages + 10)
            held = rig.conn.health()
            rig.fake.silent = True
            time.sleep(3 * STALE_AFTER_S)
            ended, stalls = time.monotonic(), LoopStalls().start()
            assert await until(lambda: rig.conn.stale_events >= 1)
            return held, rig.conn.health(), time.monotonic() - ended - stalls.stop()

    held, silent, found_after_s = asyncio.run(scenario())
    assert (held["state"], held["stale_events"], held["reconnects"]) == ("connected", 0, 0), held
    assert silent["stale_events"] == 1 and silent["state"] != "connected", silent
    # Not at once (the stall is excused: an exchange silent through it
    # counts from its end), not much past one bound after it.
    assert STALE_AFTER_S / 4 < found_after_s < STALE_AFTER_S * 4, found_after_s


@pytest.mark.parametrize("name", list(CASES))
def test_each_exchanges_trouble_leaves_the_other_five_serving(name):
    """One exchange goes through a malformed message, a dropped connection
    (1006), a stale stream and a REST 429 while its stream is refused; the
    other five stay connected, never count a fault, and keep publishing."""
    async def scenario():
        fakes = {n: await FakeExchange(n).start() for n in CASES}
        for n, fake in fakes.items():
            symbol = EXCHANGES[n].symbol_of(CASES[n][0])
            fake.ws_prices[symbol], fake.rest_prices[symbol] = CASES[n][1], CASES[n][2]
        routes = {CASES[n][0]: [n] for n in CASES}
        feed = ExchangeFeed(routes=routes, assets=list(routes),
                            settings={n: fast(f) for n, f in fakes.items()})
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0)
        task = asyncio.ensure_future(publisher.run(feed))
        conns, sick = feed.connections, feed.connections[name]
        others = [n for n in CASES if n != name]
        try:
            assert await until(lambda: all(c.state == "connected" and c.ticks >= 1
                                           for c in conns.values()))
            seq0 = {n: body(table, CASES[n][0])["seq"] for n in others}
            trouble = fakes[name]
            await trouble.send_raw('{"malformed": ')
            assert await until(lambda: sick.bad_messages >= 1)
            trouble.drop()                                      # no close frame: 1006
            assert await until(lambda: sick.reconnects >= 1 and sick.state == "connected")
            trouble.silent = True
            assert await until(lambda: sick.stale_events >= 1)
            trouble.refuse, trouble.rest_status = True, 429
            trouble.drop()
            assert await until(lambda: sick.rest_rate_limited >= 1)
            # The others published all along: several prices each since.
            assert await until(lambda: all(body(table, CASES[n][0])["seq"] > seq0[n] + 10
                                           for n in others))
            publisher.check()
            return ({n: c.health() for n, c in conns.items()},
                    {n: body(table, CASES[n][0]) for n in CASES}, publisher.health())
        finally:
            await stop_all(task, fakes)

    health, bodies, published = asyncio.run(scenario())
    assert health[name]["bad_messages"] >= 1 and health[name]["stale_events"] >= 1
    for n in CASES:
        if n == name:
            continue
        h = health[n]
        assert (h["state"], h["reconnects"], h["stale_events"], h["bad_messages"],
                h["rest_errors"]) == ("connected", 0, 0, 0, 0), (n, h)
        assert (bodies[n]["source"], bodies[n]["stale"]) == (n, False)
        assert bodies[n]["price"] == float(CASES[n][1])
        assert published["sources"][n]["stale"] is False


def test_one_exchange_tick_reaches_a_stream_subscriber_as_it_arrives():
    """`serve`'s path from an exchange's socket to a WebSocket subscriber has
    no round in it: with the publisher's only periodic task (the stale
    checker) put off for an hour and the fake sending nothing on its own (no
    ticker pump, no heartbeat), one ticker message gives exactly one
    publication, one ring drain, one frame, carrying that message's price."""
    import websockets

    from beastnet.serve.config import load_config
    from beastnet.serve.service import PriceService
    from fake_exchange import FakeExchangesThread

    name = "coinbase"
    asset, ws_price, rest_price = CASES[name]
    symbol = EXCHANGES[name].symbol_of(asset)
    fakes = FakeExchangesThread([name], tick_interval_s=3600.0, heartbeat_s=3600.0)
    fake = fakes.fakes[name]
    fake.rest_prices[symbol] = rest_price          # the prewarm's price: the snapshot
    try:
        settings = {name: fast(fake, stale_after_s=60.0, rest_interval_s=3600.0)}
        cfg = load_config(profile="dev", overrides={
            "udp_port": 0, "http_port": 0, "admin_port": 0, "feed": "exchanges",
            "feed_exchanges": settings, "feed_assets": {asset: [name]}})
        service = PriceService(cfg)
        service.publisher.check_interval_s = 3600.0
        with service:
            assert service.http is not None
            conn = service.publisher.feed.connections[name]   # type: ignore[union-attr]

            def counters() -> tuple[int, int, int]:
                totals = service.http.stats()["totals"]        # type: ignore[union-attr]
                return (service.publisher.published, totals["ws_publications"],
                        totals["ws_frames_out"])

            async def scenario():
                # fake.clients belongs to the fakes' thread: copied in one step.
                assert await until(lambda: asset in service.table and any(
                    symbol in subscribed for subscribed in list(fake.clients.values()))), \
                    conn.health()
                url = f"ws://127.0.0.1:{service.http.address[1]}/v1/stream"
                async with websockets.connect(url) as ws:
                    await ws.send(orjson.dumps({"op": "subscribe", "symbols": [asset]}).decode())
                    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == \
                        "subscribed"
                    snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                    before, messages = counters(), conn.messages
                    sent = time.monotonic()
                    fakes.call(lambda: fake.send_ticker(symbol, ws_price, time.time()))
                    frame = await asyncio.wait_for(ws.recv(), 5)
                    received = time.monotonic()
                    # The server's side, read once the frame is here and the
                    # worker has counted it: it counts after its write
                    # returns, which the client can beat (a 4-worker run read
                    # frames_out one short).
                    await until(lambda: counters()[2] > before[2], timeout_s=5)
                    return snapshot, frame, sent, received, before, counters(), messages
            snapshot, frame, sent, received, before, after, messages = asyncio.run(scenario())
            arrived, seq = conn.last_message, service.publisher._seq
            messages = conn.messages - messages
    finally:
        fakes.close()
    assert snapshot["price"] == float(rest_price) and snapshot["source"] == name
    assert f'"price":{ws_price},'.encode() in frame.encode()      # the tick's own digits
    update = orjson.loads(frame)
    assert (update["source"], update["stale"], update["seq"]) == (name, False, seq)
    assert messages == 1                             # the ticker alone reached the feed
    # One publication, drained from the ring once, written as one frame: the
    # tick's, and nothing a round or a checker would have added.
    assert tuple(a - b for a, b in zip(after, before)) == (1, 1, 1), (before, after)
    # The connection's arrival stamp is this message's: after the send, before
    # the client had the frame.
    assert sent < arrived < received, (sent, arrived, received)


# The original design's twelve assets per exchange (issue 24), in its words.
DESIGN_ASSETS = {
    "coinbase": "BTC ETH SOL DOGE XRP LINK DOT LTC AVAX UNI PEPE XLM",
    "gemini": "AAVE ADA MATIC ATOM NEAR ARB MKR CRV GRT FIL SHIB BAT",
    "kraken": "NANO SC LSK KAVA BICO RARI OCEAN CFG CQT ALGO FET FLOW",
    "gateio": "BNB TRX APT SEI INJ OP SUI VET HBAR SAND MANA FTM",
    "cryptocom": "TON WLD APE BLUR IMX ENS LDO SNX COMP 1INCH SUSHI GALA",
    "okx": "KAS TIA JUP STRK PYTH W ZRO PENDLE ONDO RENDER WIF FLOKI",
}


def test_the_designs_72_assets_are_served_each_from_its_own_exchange_first():
    from beastnet.serve.assets import ASSETS, snapshot_prices
    from beastnet.serve.feeds.exchanges import DEFAULT_ROUTES

    named = {a: name for name, words in DESIGN_ASSETS.items() for a in words.split()}
    assert len(named) == 72
    assert sorted(set(named) - set(ASSETS)) == [] and len(set(ASSETS)) == 150
    assert set(DEFAULT_ROUTES) == set(ASSETS) == set(snapshot_prices())
    wrong = {a: DEFAULT_ROUTES[a] for a, name in named.items() if DEFAULT_ROUTES[a][0] != name}
    assert wrong == {}
    # Every exchange an asset lists is a known one, none twice; each price positive.
    assert all(set(v) <= set(EXCHANGES) and len(set(v)) == len(v)
               for v in DEFAULT_ROUTES.values())
    assert min(snapshot_prices().values()) > 0
