"""Whatever an exchange sends, the adapters refuse it by counting, never by
raising, and publish only positive finite decimal prices."""
from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from beastnet.serve.feeds import Tick
from beastnet.serve.feeds.exchanges import EXCHANGES, ExchangeConnection
from fake_exchange import ticker

int64 = st.integers(min_value=-2**63, max_value=2**63 - 1)   # what orjson can write
json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def connection(name: str, out: list) -> ExchangeConnection:
    return ExchangeConnection(EXCHANGES[name], ["BTC", "ETH"], out.append)


@pytest.mark.parametrize("name", list(EXCHANGES))
@settings(max_examples=150, deadline=None)
@given(raw=st.one_of(st.text(max_size=64), st.binary(max_size=64),
                     st.integers().map(lambda n: f'{{"price": {n}}}'),
                     json_values.map(lambda v: orjson.dumps(v).decode())))
def test_arbitrary_messages_are_counted_never_raised(name, raw):
    out: list = []
    conn = connection(name, out)
    conn.on_message(raw)
    assert conn.messages == 1
    for item in out:
        if isinstance(item, Tick):
            assert item.asset in ("BTC", "ETH")


@pytest.mark.parametrize("name", list(EXCHANGES))
@settings(max_examples=100, deadline=None)
@given(field=st.one_of(st.text(max_size=12), st.floats(), int64, st.none()))
def test_a_ticker_with_any_price_field_never_raises(name, field):
    from beastnet import ResponseTable
    from beastnet.serve.feeds import PricePublisher
    table = ResponseTable()
    publisher = PricePublisher(table)
    conn = ExchangeConnection(EXCHANGES[name], ["BTC"], publisher.on_tick)
    msg = ticker(name, EXCHANGES[name].symbol_of("BTC"), "1", 1.7e9)
    text = orjson.dumps(msg).decode().replace('"1"', orjson.dumps(field).decode(), 1) \
        if name != "kraken" else orjson.dumps(msg).decode().replace(
            '"last":1.0', '"last":' + orjson.dumps(field).decode(), 1)
    conn.on_message(text)
    if "BTC" in table:
        price = orjson.loads(table["BTC"])["price"]
        assert isinstance(price, (int, float)) and math.isfinite(price) and price > 0
    else:                                     # refused, and counted where it was refused
        assert conn.bad_messages + publisher.refused == 1


def test_msgs_per_s_is_the_last_whole_window_for_every_reader():
    """Two readers one after the other (stats and metrics in one scrape)
    read the same rate: the second is not given a window of microseconds
    (it read 0 msg/s while 1,500 a second came in)."""
    import time
    out: list = []
    conn = connection("okx", out)
    text = orjson.dumps(ticker("okx", EXCHANGES["okx"].symbol_of("BTC"), "97000.5",
                               1.7e9)).decode()
    conn._rate_mark = (time.monotonic() - 2.0, 0)     # a window opened 2 s ago
    for _ in range(10):
        conn.on_message(text)
    first, second = conn.health()["msgs_per_s"], conn.health()["msgs_per_s"]
    assert 4.0 < first <= 5.0 and second == first, (first, second)
