"""Where an HTTP request's API key may come from, and what happens when it
comes twice: X-API-Key, Authorization: Bearer (RFC 6750), ?api_key=.  A
request that carries two credentials is ambiguous and answered 400, whichever
places they came from; the connection's neighbours keep being served."""
from __future__ import annotations

import pytest

from beastnet import HTTPServer, ResponseTable, _core
from http_helpers import BODIES, exchange, get

pytestmark = pytest.mark.timeout(60)


def parsed_key(head: bytes):
    p = _core.http_parse(head)
    return p["status"], p.get("api_key")


@pytest.mark.io_free
@pytest.mark.parametrize("head,expected", [
    (b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n", (0, "k1")),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k2\r\n\r\n", (0, "k2")),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nauthorization: bearer   k3\r\n\r\n", (0, "k3")),
    (b"GET /v1/BTC?api_key=k4 HTTP/1.1\r\nHost: a\r\n\r\n", (0, "k4")),
    (b"GET /v1/BTC?api_key= HTTP/1.1\r\nHost: a\r\n\r\n", (0, None)),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nAuthorization: Basic dXNlcjpwdw==\r\n\r\n", (0, None)),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \r\n\r\n", (0, None)),
], ids=["x-api-key", "bearer", "bearer-any-case", "query", "empty-query", "basic-ignored",
        "bearer-without-token"])
def test_one_credential_from_any_place(head, expected):
    assert parsed_key(head) == expected


@pytest.mark.io_free
@pytest.mark.parametrize("head", [
    b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nX-API-Key: k2\r\n\r\n",
    b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nX-API-Key: k1\r\n\r\n",
    b"GET /v1/BTC?api_key=k1&api_key=k2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/BTC?api_key=k1 HTTP/1.1\r\nHost: a\r\nX-API-Key: k2\r\n\r\n",
    b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\nAuthorization: Bearer k2\r\n\r\n",
    b"GET /v1/BTC HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k1\r\nAuthorization: Bearer k1\r\n\r\n",
], ids=["two-headers", "two-equal-headers", "two-query", "query-and-header", "header-and-bearer",
        "two-bearers"])
def test_two_credentials_are_refused(head):
    assert parsed_key(head) == (400, None)


def test_live_server_answers_400_and_serves_the_next_connection():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1, require_api_key=True) as server:
        refused = exchange(server, get("BTC", extra="X-API-Key: a\r\nX-API-Key: b\r\n"), 1)
        bearer = exchange(server, get("BTC", extra="Authorization: Bearer k\r\n"), 1)
        after = exchange(server, get("ETH", extra="X-API-Key: k\r\n"), 1)
        totals = server.stats()["totals"]
    assert [r.status for r in refused] == [400]
    assert refused[0].json() == {"error": "bad_request"}
    assert [r.status for r in bearer] == [200] and bearer[0].body == BODIES["BTC"]
    assert [r.status for r in after] == [200] and after[0].body == BODIES["ETH"]
    assert totals["parse_errors"] >= 1
