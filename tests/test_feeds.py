"""Feeds: simulated and replayed ticks, per-source health, stale fallback."""
import asyncio
import time

import orjson
import pytest

from beastnet import ResponseTable
from beastnet.serve.assets import ASSETS
from beastnet.serve.feeds import PricePublisher, ReplayFeed, SimulatedFeed, Tick
from support import until

pytestmark = pytest.mark.timeout(30)


def body(table, asset):
    return orjson.loads(table[asset])


def test_simulated_feed_publishes_every_asset_once_per_update():
    table = ResponseTable()
    publisher = PricePublisher(table)
    feed = SimulatedFeed(sources=("a",), rounds_per_s=1000, max_rounds=3)
    asyncio.run(publisher.consume(feed))
    assert len(table) == 150 and set(table.keys()) == set(ASSETS)
    assert publisher.published == 3 * 150
    assert body(table, "BTC")["seq"] > 0 and not body(table, "BTC")["stale"]


def test_stale_source_falls_back_then_recovers_preferred():
    async def scenario():
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=0.2, source_priority=["a", "b"],
                                   check_interval_s=0.02)
        feed = SimulatedFeed(sources=("a", "b"), rounds_per_s=50, outages={"a": (0.3, 0.8)})
        task = asyncio.ensure_future(publisher.run(feed))
        seen = []
        for _ in range(60):                         # 1.5 s sampled every 25 ms
            await asyncio.sleep(0.025)
            if "BTC" in table:
                seen.append(body(table, "BTC")["source"])
        health = publisher.health()
        task.cancel()
        return seen, health, publisher

    seen, health, publisher = asyncio.run(scenario())
    assert seen[0] == "a" and "b" in seen and seen[-1] == "a"
    # order: a, then b while a is out, then a again
    first_b, last_b = seen.index("b"), len(seen) - 1 - seen[::-1].index("b")
    assert all(s == "a" for s in seen[:first_b]) and all(s == "a" for s in seen[last_b + 1:])
    assert publisher.fallbacks >= 150 * 2
    assert set(health["sources"]) == {"a", "b"}


def test_no_fresh_source_marks_answers_stale():
    table = ResponseTable()
    publisher = PricePublisher(table, stale_after_s=0.05)
    publisher.on_tick(Tick("BTC", 100.0, "only", time.time()))
    assert not body(table, "BTC")["stale"]
    time.sleep(0.1)
    publisher.check()
    assert body(table, "BTC")["stale"] and body(table, "BTC")["price"] == 100.0
    assert publisher.health()["assets_stale"] == ["BTC"]
    publisher.on_tick(Tick("BTC", 101.0, "only", time.time()))
    assert not body(table, "BTC")["stale"] and body(table, "BTC")["price"] == 101.0


def test_unknown_assets_are_counted_not_published():
    table = ResponseTable()
    publisher = PricePublisher(table)
    publisher.on_tick(Tick("NOT-AN-ASSET", 1.0, "s", time.time()))
    assert len(table) == 0 and publisher.unknown_assets == 1


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_replay_jsonl_paced_and_bad_lines_reported(tmp_path):
    good = [orjson.dumps({"asset": "ETH", "price": 100 + i, "ts": 1000 + i * 0.05,
                          "source": "x"}).decode() for i in range(20)]
    path = write(tmp_path / "ticks.jsonl", good[:10] + ["garbage", '{"asset":"ETH","ts":1}',
                                                        '{"asset":"ETH","price":-5,"ts":1}'] + good[10:])
    table = ResponseTable()
    feed = ReplayFeed(path, speed=2.0)             # 0.95 s recorded -> ~0.475 s
    started = time.monotonic()
    asyncio.run(PricePublisher(table).consume(feed))
    elapsed = time.monotonic() - started
    # paced: 19 gaps of 50 ms at speed 2 cannot take less than 0.475 s (less
    # the loop clock's 1 ms resolution per sleep); no upper bound: a busy
    # machine only makes it slower
    assert elapsed >= 0.475 - 0.02, elapsed
    assert feed.ticks == 20 and body(table, "ETH")["price"] == 119
    assert [n for n, _ in feed.errors] == [11, 12, 13]
    assert "price" in feed.errors[1][1]


def test_replay_csv_as_fast_as_possible(tmp_path):
    rows = ["asset,price,ts,source"] + [f"BTC,{50000 + i},{i},csvsrc" for i in range(5000)]
    rows.insert(100, "BTC,notaprice,1,x")
    path = write(tmp_path / "ticks.csv", rows)
    table = ResponseTable()
    feed = ReplayFeed(path, speed=0)
    asyncio.run(PricePublisher(table).consume(feed))
    assert feed.ticks == 5000 and feed.errors[0][0] == 101
    assert body(table, "BTC")["source"] == "csvsrc" and body(table, "BTC")["price"] == 54999


@pytest.mark.parametrize("kwargs", [{"rounds_per_s": 0}, {"sources": ()}])
def test_simulated_feed_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        SimulatedFeed(**kwargs)


def test_feeds_are_opened_by_registered_name(tmp_path):
    from beastnet.serve.config import ServeConfig
    from beastnet.serve.feeds import FEEDS, open_feed, register_feed
    assert {"sim", "replay"} <= set(FEEDS)
    assert isinstance(open_feed(ServeConfig(feed="sim")), SimulatedFeed)
    path = tmp_path / "t.jsonl"
    path.write_text('{"asset":"BTC","price":"1.5","ts":1}\n')
    assert isinstance(open_feed(ServeConfig(feed="replay", feed_path=str(path))), ReplayFeed)
    with pytest.raises(ValueError, match="unknown feed 'nope'"):
        open_feed(ServeConfig(feed="nope"))
    with pytest.raises(ValueError, match="registered twice"):
        register_feed("sim")(lambda cfg: SimulatedFeed())


def test_body_keeps_the_sources_decimal_digits():
    table = ResponseTable()
    publisher = PricePublisher(table)
    publisher.on_tick(Tick("BTC", "97123.450", "x", 1.0, "USDT"))
    assert b'"price":97123.450,' in table["BTC"]
    assert body(table, "BTC")["quote"] == "USDT"
    for bad in ("0", "-1", "nan", "1e400", "abc", float("inf"), 0.0):
        publisher.on_tick(Tick("ETH", bad, "x", 1.0))
    assert "ETH" not in table and publisher.refused == 7


def test_prices_of_a_feed_that_ended_turn_stale_with_their_age(tmp_path, caplog):
    path = tmp_path / "ticks.jsonl"
    path.write_text('{"asset":"BTC","price":"97000.5","ts":1,"source":"a"}\n'
                    '{"asset":"NOPE","price":"1","ts":1,"source":"a"}\n'
                    '{"asset":"ETH","price":"3300.25","ts":1,"source":"a"}\n'
                    '{"asset":"NOPE","price":"2","ts":1,"source":"a"}\n')

    async def scenario():
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=0.1, check_interval_s=0.01)
        task = asyncio.ensure_future(publisher.run(ReplayFeed(str(path), speed=0)))
        stale = await until(lambda: publisher.stale_assets == {"BTC", "ETH"})
        aged = await until(lambda: body(table, "BTC").get("age_s", 0) >= 1.0)
        task.cancel()
        return publisher, table, stale, aged

    with caplog.at_level("WARNING", logger="beastnet.serve.feeds"):
        publisher, table, stale, aged = asyncio.run(scenario())
    assert stale, "the checker stopped with the feed: prices served as fresh"
    btc = body(table, "BTC")
    assert btc["stale"] is True and btc["price"] == 97000.5 and aged
    assert publisher.health()["feed_state"] == "ended"
    assert any("feed replay ended after 2 ticks" in r.getMessage() for r in caplog.records)
    assert publisher.unknown_assets == 2
    unknown = [r for r in caplog.records if "unknown asset 'NOPE'" in r.getMessage()]
    assert len(unknown) == 1 and publisher.health()["unknown_asset_names"] == ["NOPE"]


class _Failing(SimulatedFeed):
    name = "failing"

    async def __aiter__(self):
        yield Tick("BTC", "10", "a", 1.0)
        raise ConnectionResetError("upstream went away")


def test_a_feed_that_raises_is_logged_and_its_prices_turn_stale(caplog):
    async def scenario():
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=0.05, check_interval_s=0.01)
        task = asyncio.ensure_future(publisher.run(_Failing()))
        stale = await until(lambda: "BTC" in publisher.stale_assets)
        done = task.done()
        task.cancel()
        return publisher, stale, done

    with caplog.at_level("ERROR", logger="beastnet.serve.feeds"):
        publisher, stale, done = asyncio.run(scenario())
    assert stale and not done and publisher.feed_state == "failed"
    assert any("feed failing failed: ConnectionResetError: upstream went away" in r.getMessage()
               for r in caplog.records)


def test_healthz_is_degraded_when_any_served_price_is_stale(tmp_path):
    import http.client

    from beastnet.serve.config import load_config
    from beastnet.serve.service import PriceService

    path = tmp_path / "ticks.jsonl"
    path.write_text('{"asset":"BTC","price":"97000.5","ts":1,"source":"a"}\n')
    cfg = load_config(profile="dev", overrides={
        "udp_port": 0, "http_port": 0, "admin_port": 0, "feed": "replay",
        "feed_path": str(path), "replay_speed": 0, "feed_stale_after_s": 0.2})

    def get(address, path):
        conn = http.client.HTTPConnection(*address[:2], timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, orjson.loads(resp.read())
        finally:
            conn.close()

    with PriceService(cfg) as service:
        assert service.admin is not None and service.http is not None
        deadline = time.monotonic() + 5
        while service.publisher.stale_assets != {"BTC"} and time.monotonic() < deadline:
            time.sleep(0.01)                    # waits on the publisher's state
        status, health = get(service.admin.address, "/healthz")
        _, btc = get(service.http.address, "/v1/BTC")
    assert (status, health["status"], health["stale_assets"]) == (503, "degraded", 1)
    assert btc["stale"] is True and btc["age_s"] >= 0.2
