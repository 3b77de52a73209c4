"""Finding assets (issue 21): upper-case fallback for keys and the native
batch query GET /v1/prices?symbols=A,B."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beastnet import HTTPServer, ResponseTable
from http_helpers import BODIES, exchange, get

pytestmark = pytest.mark.timeout(30)


def query(q: str, method: str = "GET") -> bytes:
    return f"{method} /v1/prices?{q} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


@pytest.fixture
def server():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1, batch_key="prices") as srv:
        yield srv


def test_lower_case_key_is_served_as_upper_case(server):
    lower, mixed, unknown = exchange(server, get("btc") + get("Eth") + get("nope"), 3)
    assert lower.status == 200 and lower.body == BODIES["BTC"]
    assert mixed.status == 200 and mixed.body == BODIES["ETH"]
    assert unknown.status == 404


def test_batch_is_a_json_array_in_the_order_asked(server):
    both, one, lower = exchange(server, query("symbols=ETH,BTC") + query("x=1&symbols=SOL")
                                + query("symbols=sol,btc&x=2"), 3)
    assert both.status == 200 and both.headers["content-type"] == "application/json"
    assert both.body == b"[" + BODIES["ETH"] + b"," + BODIES["BTC"] + b"]"
    assert [a["asset"] for a in both.json()] == ["ETH", "BTC"]
    assert one.json() == [orjson.loads(BODIES["SOL"])]
    assert [a["asset"] for a in lower.json()] == ["SOL", "BTC"]


def test_batch_names_every_unknown_symbol(server):
    (r,) = exchange(server, query("symbols=BTC,XYZ,ETH,QQQ"), 1)
    assert r.status == 404 and r.json() == {"error": "not_found", "unknown": ["XYZ", "QQQ"]}


def test_batch_head_has_the_length_and_no_body(server):
    (r,) = exchange(server, query("symbols=BTC,ETH", method="HEAD"), 1, head_only=[True])
    assert r.status == 200 and r.body == b""
    assert int(r.headers["content-length"]) == len(BODIES["BTC"]) + len(BODIES["ETH"]) + 3


@pytest.mark.parametrize("q", ["", "symbols=", "symbols=BTC,,ETH", "symbols=BTC,", "symbols=B%20C",
                               "symbols=" + ",".join(["BTC"] * 65)],
                         ids=["none", "empty", "empty-item", "trailing", "bad-char", "65"])
def test_malformed_or_oversized_batch_is_400(server, q):
    (r,) = exchange(server, query(q), 1)
    assert r.status == 400


def test_64_symbols_and_pipelined_batches_stay_whole(server):
    many = ",".join(["BTC", "ETH", "SOL"] * 21 + ["BTC"])     # 64
    payload = query("symbols=" + many) * 20 + query("symbols=NOPE") + query("symbols=SOL")
    responses = exchange(server, payload, 22)
    assert len(responses) == 22
    for r in responses[:20]:
        assert r.status == 200 and len(r.json()) == 64
    assert responses[20].json()["unknown"] == ["NOPE"] and responses[21].json()[0]["asset"] == "SOL"


def test_without_batch_key_prices_is_an_ordinary_key():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1) as srv:
        (r,) = exchange(srv, query("symbols=BTC"), 1)
    assert r.status == 404 and r.json() == {"error": "not_found"}


def test_the_docs_list_every_asset_serve_publishes():
    from pathlib import Path

    from beastnet.serve.assets import ASSETS
    doc = (Path(__file__).resolve().parent.parent / "docs" / "serve.md").read_text()
    missing = [a for a in ASSETS if f"`{a}`" not in doc]
    assert not missing and "/v1/assets" in doc


SYMBOL = st.text(alphabet="BTCEHSOLbtcx,%._-/ ", min_size=0, max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])   # one server, reused
@given(st.lists(SYMBOL, min_size=0, max_size=70))
def test_any_symbol_list_is_answered_whole(server, symbols):
    """Whatever the list, one well-formed answer: 200 with a JSON array of the
    known symbols in order, 404 naming the unknown, or 400; and the
    connection keeps serving."""
    q = "symbols=" + ",".join(symbols)
    (r, after) = exchange(server, query(q.replace(" ", "%20")) + get("BTC"), 2)
    assert after.status == 200 and after.body == BODIES["BTC"]
    assert r.status in (200, 400, 404)
    if r.status == 200:
        assert [a["asset"] for a in r.json()] == [s.upper() for s in symbols]
    elif r.status == 404:
        unknown = r.json()["unknown"]
        assert unknown and all(s.upper() not in BODIES for s in unknown)
