"""CORS on the public price API (issue 21): Access-Control-Allow-Origin on
answers under the prefix and OPTIONS preflights, all native."""
from __future__ import annotations

import pytest

from beastnet import HTTPServer, ResponseTable
from http_helpers import BODIES, exchange

pytestmark = pytest.mark.timeout(30)

APP = "https://app.example"


def request(method: str, key: str, headers: str = "") -> bytes:
    return f"{method} /v1/{key} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode()


@pytest.fixture
def table():
    return ResponseTable(BODIES)


def test_no_cors_by_default_and_options_is_405(table):
    with HTTPServer(table, threads=1) as srv:
        hit, pre = exchange(srv, request("GET", "BTC", f"Origin: {APP}\r\n")
                            + request("OPTIONS", "BTC", f"Origin: {APP}\r\n"), 2)
    assert hit.status == 200 and "access-control-allow-origin" not in hit.headers
    assert pre.status == 405


def test_any_origin_on_hits_errors_and_preflight(table):
    with HTTPServer(table, threads=1, cors_origins=["*"]) as srv:
        hit, miss, plain, pre = exchange(
            srv, request("GET", "BTC", f"Origin: {APP}\r\n") + request("GET", "NOPE", "Origin: x://y\r\n")
            + request("GET", "ETH") + request("OPTIONS", "BTC", f"Origin: {APP}\r\n"
                                              "Access-Control-Request-Method: GET\r\n"
                                              "Access-Control-Request-Headers: x-api-key\r\n"), 4)
    assert hit.status == 200 and hit.body == BODIES["BTC"]
    assert hit.headers["access-control-allow-origin"] == "*" and "vary" not in hit.headers
    assert miss.status == 404 and miss.headers["access-control-allow-origin"] == "*"
    assert plain.status == 200 and "access-control-allow-origin" not in plain.headers
    assert pre.status == 204 and pre.body == b"" and "content-length" not in pre.headers
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "X-API-Key" in pre.headers["access-control-allow-headers"]
    assert pre.headers["access-control-allow-methods"] == "GET, HEAD"
    assert int(pre.headers["access-control-max-age"]) > 0


def test_listed_origins_are_echoed_with_vary(table):
    with HTTPServer(table, threads=1, cors_origins=[APP, "http://localhost:3000"]) as srv:
        ok, other, none, pre_ok, pre_other = exchange(
            srv, request("GET", "BTC", "Origin: http://localhost:3000\r\n")
            + request("GET", "BTC", "Origin: https://evil.example\r\n")
            + request("HEAD", "BTC") + request("OPTIONS", "ETH", f"Origin: {APP}\r\n")
            + request("OPTIONS", "ETH", "Origin: https://evil.example\r\n"), 5,
            head_only=[False, False, True, False, False])
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert ok.headers["vary"] == "Origin" and ok.body == BODIES["BTC"]
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"
    assert none.status == 200 and none.headers["vary"] == "Origin"
    assert pre_ok.status == 204 and pre_ok.headers["access-control-allow-origin"] == APP
    assert pre_other.status == 204 and "access-control-allow-origin" not in pre_other.headers


def test_cors_only_under_the_prefix(table):
    with HTTPServer(table, threads=1, cors_origins=["*"]) as srv:
        (health,) = exchange(srv, b"GET /healthz HTTP/1.1\r\nHost: t\r\nOrigin: x://y\r\n\r\n", 1)
    assert health.status == 200 and "access-control-allow-origin" not in health.headers


def test_miss_answered_by_the_handler_carries_the_header(table):
    with HTTPServer(table, threads=1, cors_origins=[APP], handler=lambda r: {"k": r.key}) as srv:
        (miss,) = exchange(srv, request("GET", "ABC", f"Origin: {APP}\r\n"), 1)
    assert miss.status == 200 and miss.json() == {"k": "ABC"}
    assert miss.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize("origins", [["*", APP], ["app.example"], ["https://a b"],
                                     ["https://x"] * 17])
def test_bad_origins_refused(table, origins):
    srv = HTTPServer(table, threads=1, cors_origins=origins)
    with pytest.raises(ValueError, match="cors_origins"):
        srv.start()
    srv.stop()
