"""First-message auth on the WebSocket feed: a stream opened without a key
(browsers cannot send headers) must send {"op":"auth","api_key":K} first,
within auth_timeout_s; K is admitted as an upgrade's X-API-Key is."""
from __future__ import annotations

import time

import orjson
import pytest

from beastnet import APIKeyTable, HTTPServer, ResponseTable, WebSocketOptions
from test_websocket import RawClient
from ws_reference import PING, TEXT, build_frame

pytestmark = pytest.mark.timeout(60)

SYMBOLS = ["S001", "S002", "S003"]


def auth(key: str) -> bytes:
    return build_frame(TEXT, orjson.dumps({"op": "auth", "api_key": key}))


def subscribe(*symbols: str) -> bytes:
    return build_frame(TEXT, orjson.dumps({"op": "subscribe", "symbols": list(symbols)}))


class Client(RawClient):
    def json(self) -> dict:
        op, payload = self.frame()
        assert op == TEXT, (op, payload)
        return orjson.loads(payload)


@pytest.fixture
def table() -> ResponseTable:
    return ResponseTable({s: orjson.dumps({"s": s, "v": 0}) for s in SYMBOLS})


@pytest.fixture
def keys() -> APIKeyTable:
    keys = APIKeyTable()
    keys.set("basic-key-0001", ws_max_connections=1, ws_max_subscriptions=2)
    keys.set("plain-key-0001")
    keys.set("capped-key-001", monthly_cap=1)
    keys.set("slow-key-00001", qps=0.01, burst=1)
    keys.set("denied-key-001", ws_allowed=False)
    keys.set("neighbour-0001", ws_unlimited=True)
    return keys


@pytest.fixture
def feed(table, keys):
    options = WebSocketOptions(auth_timeout_s=2.0)
    with HTTPServer(table, threads=1, api_keys=keys, websocket=options) as server:
        yield server


def opened(server, headers: str = "", path: str = "/v1/stream") -> Client:
    client = Client(server, path=path, headers=headers)
    assert client.handshake().startswith(b"HTTP/1.1 101")
    return client


def totals(server) -> dict:
    return server.stats()["totals"]


def neighbour_served(server, table, neighbour: Client, version: int) -> None:
    table.set("S003", orjson.dumps({"s": "S003", "v": version}))
    assert neighbour.json() == {"s": "S003", "v": version}
    neighbour.send(build_frame(PING, b"still"))
    assert neighbour.frame() == (0xA, b"still")


@pytest.fixture
def neighbour(feed):
    client = opened(feed, "X-API-Key: neighbour-0001\r\n")
    client.send(subscribe("S003"))
    assert client.json()["op"] == "subscribed"
    assert client.json()["s"] == "S003"
    yield client
    client.close()


def test_auth_admits_the_key_with_its_stream_limits(feed, table, keys):
    client = opened(feed)
    client.send(auth("basic-key-0001"))
    assert client.json() == {"op": "authenticated"}
    # The key's own limit (2 symbols a stream) applies, as with a header key.
    client.send(subscribe(*SYMBOLS))
    assert client.json() == {"op": "error", "error": "subscription_limit"}
    assert client.json() == {"op": "subscribed", "unknown": []}
    assert {client.json()["s"], client.json()["s"]} == {"S001", "S002"}
    # A second auth: an error message, the stream stays open.
    client.send(auth("plain-key-0001"))
    assert client.json() == {"op": "error", "error": "already_authenticated"}
    table.set("S001", orjson.dumps({"s": "S001", "v": 1}))
    assert client.json() == {"s": "S001", "v": 1}
    # ws_max_connections=1: a second stream authenticating with the key is refused.
    second = opened(feed)
    second.send(auth("basic-key-0001"))
    assert second.json() == {"op": "error", "error": "connection_limit"}
    assert second.close_code() == 1008
    second.close()
    client.close()
    t = totals(feed)
    assert t["ws_auths"] == 1 and t["ws_auth_refused"] == 1
    assert keys.usage()["basic-key-0001"][0] == 2     # admitted as requests, as a GET is


def test_a_key_in_the_upgrade_needs_no_auth_and_a_second_auth_is_an_error(feed):
    client = opened(feed, "X-API-Key: plain-key-0001\r\n")
    client.send(auth("plain-key-0001"))
    assert client.json() == {"op": "error", "error": "already_authenticated"}
    client.send(subscribe("S001"))
    assert client.json()["op"] == "subscribed"
    client.close()


def test_query_api_key_still_opens_the_stream(feed):
    client = opened(feed, path="/v1/stream?api_key=plain-key-0001")
    client.send(subscribe("S002"))
    assert client.json()["op"] == "subscribed"
    client.close()


@pytest.mark.parametrize("first, error", [
    (auth("no-such-key-01"), "unauthorized"),
    (auth("denied-key-001"), "forbidden"),
    (build_frame(TEXT, b'{"op":"auth","api_key":"' + b"k" * 80 + b'"}'), "unauthorized"),
    (subscribe("S001"), "auth_required"),
    (build_frame(TEXT, b'{"op":"auth"}'), "auth_required"),
    (build_frame(TEXT, b"not json"), "auth_required"),
], ids=["wrong-key", "denied-key", "too-long-key", "subscribe-first", "auth-without-key",
        "junk-first"])
def test_anything_but_a_good_auth_first_closes_1008(feed, table, neighbour, first, error):
    before = totals(feed)
    client = opened(feed)
    client.send(first)
    assert client.json() == {"op": "error", "error": error}
    assert client.close_code() == 1008
    client.close()
    after = totals(feed)
    assert after["ws_auth_refused"] == before["ws_auth_refused"] + 1
    if error == "unauthorized":
        assert after["unauthorized"] == before["unauthorized"] + 1
    neighbour_served(feed, table, neighbour, 5)


def test_auth_counts_against_the_rate_limit_and_the_monthly_cap(feed):
    for key, error in (("capped-key-001", "over_quota"), ("slow-key-00001", "rate_limited")):
        first = opened(feed)
        first.send(auth(key))
        assert first.json() == {"op": "authenticated"}
        second = opened(feed)
        second.send(auth(key))
        assert second.json() == {"op": "error", "error": error}
        assert second.close_code() == 1008
        first.close()
        second.close()
    t = totals(feed)
    assert t["over_quota"] >= 1 and t["rate_limited"] >= 1


def test_no_auth_in_time_closes_1008(table, keys):
    options = WebSocketOptions(auth_timeout_s=0.3)
    with HTTPServer(table, threads=1, api_keys=keys, websocket=options) as server:
        silent = opened(server)
        assert silent.json() == {"op": "error", "error": "auth_timeout"}
        assert silent.close_code() == 1008
        silent.close()
        # An auth sent once the deadline has passed is refused the same way
        # (by the message itself, or by the timer if it got there first).
        late = opened(server)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline + 0.05:
            time.sleep(0.05)
        late.send(auth("plain-key-0001"))
        assert late.json() == {"op": "error", "error": "auth_timeout"}
        assert late.close_code() == 1008
        late.close()
        assert totals(server)["ws_auth_refused"] == 2


def test_auth_timeout_zero_refuses_a_keyless_upgrade_401(table, keys):
    options = WebSocketOptions(auth_timeout_s=0)
    with HTTPServer(table, threads=1, api_keys=keys, websocket=options) as server:
        client = Client(server)
        assert client.handshake().startswith(b"HTTP/1.1 401")
        client.close()


def test_without_keys_enforced_no_auth_is_needed(table):
    with HTTPServer(table, threads=1, websocket=WebSocketOptions()) as server:
        client = opened(server)
        client.send(subscribe("S001"))
        assert client.json()["op"] == "subscribed"
        client.close()
