"""The UDP request grammar (docs/protocol.md), rule by rule.

Each case runs three ways: against the C parser (`beastnet._core.parse_request`),
against the pure-Python reference in support.py, and against a live server on
IPv4 and IPv6 loopback, checking the exact reply bytes."""
from __future__ import annotations

import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beastnet import ResponseTable
from beastnet._core import parse_request
from conftest import DIFFERENTIAL, needs_ipv6
from support import BAD_REQUEST, GRAMMARISH, NOT_FOUND, reference_parse

pytestmark = pytest.mark.timeout(30)

K64 = b"K" * 64
TABLE = {
    "k": b'{"k":1}',
    "BTC-USD": b'{"sym":"BTC-USD","px":1}',
    "x.y:z/w-v_1": b'{"all":"chars"}',
    K64.decode(): b'{"long":64}',
}


def ok(key, tag=b"", apikey=None):
    return ("ok", tag, key, apikey)


def bad(tag=b""):
    return ("bad", tag, None, None)


EMPTY = ("empty", b"", None, None)

# (id, datagram, expected parse_request result)
CASES = [
    # KEY
    ("key-plain", b"k", ok(b"k")),
    ("key-all-classes", b"x.y:z/w-v_1", ok(b"x.y:z/w-v_1")),
    ("key-1-byte-absent", b"Z", ok(b"Z")),
    ("key-64-bytes", K64, ok(K64)),
    ("key-65-bytes", K64 + b"K", bad()),
    ("key-forbidden-char-?", b"k?x", bad()),
    ("key-forbidden-char-@-inside", b"k@x", bad()),
    ("key-forbidden-char-tab", b"k\tx", bad()),
    ("key-forbidden-nul", b"k\x00", bad()),
    ("key-forbidden-high-byte", b"k\xff", bad()),
    ("key-forbidden-percent", b"BTC%2FUSD", bad()),
    ("key-non-ascii-utf8", "caf\u00e9".encode(), bad()),
    ("missing-key-only-space", b" ", bad()),
    ("missing-key-leading-space", b" k", bad()),
    # line endings
    ("lf-ignored", b"k\n", ok(b"k")),
    ("crlf-ignored", b"k\r\n", ok(b"k")),
    ("cr-alone-bad", b"k\r", bad()),
    ("lfcr-bad", b"k\n\r", bad()),
    ("double-lf-bad", b"k\n\n", bad()),
    ("cr-cr-lf-bad", b"k\r\r\n", bad()),
    ("trailing-space-bad", b"k ", bad()),
    ("trailing-space-before-lf-bad", b"k \n", bad()),
    ("trailing-tab-bad", b"k\t", bad()),
    ("leading-lf-bad", b"\nk", bad()),
    # empty
    ("empty-datagram", b"", EMPTY),
    ("only-lf", b"\n", EMPTY),
    ("only-crlf", b"\r\n", EMPTY),
    ("only-cr", b"\r", bad()),
    # TAG
    ("tag-hit", b"@1 k", ok(b"k", b"@1 ")),
    ("tag-miss", b"@abc Z", ok(b"Z", b"@abc ")),
    ("tag-16-bytes", b"@" + b"t" * 16 + b" k", ok(b"k", b"@" + b"t" * 16 + b" ")),
    ("tag-17-bytes-bad", b"@" + b"t" * 17 + b" k", bad()),
    ("tag-any-printable", b"@!~{}\"'@ k", ok(b"k", b"@!~{}\"'@ ")),
    ("tag-empty-bad", b"@ k", bad()),
    ("tag-only-at-bad", b"@", bad()),
    ("tag-no-space-bad", b"@tag", bad()),
    ("tag-then-lf-bad", b"@tag\n", bad()),
    ("tag-tab-separator-bad", b"@tag\tk", bad()),
    ("tag-non-printable-bad", b"@t\x01g k", bad()),
    ("tag-then-missing-key-echoes-tag", b"@t ", bad(b"@t ")),
    ("tag-then-missing-key-lf-echoes-tag", b"@t \n", bad(b"@t ")),
    ("tag-then-two-spaces-echoes-tag", b"@t  k", bad(b"@t ")),
    ("tag-then-bad-key-echoes-tag", b"@t k?", bad(b"@t ")),
    ("tag-then-65-byte-key-echoes-tag", b"@t " + K64 + b"K", bad(b"@t ")),
    ("tag-then-trailing-space-echoes-tag", b"@t k ", bad(b"@t ")),
    ("tag-crlf", b"@7 k\r\n", ok(b"k", b"@7 ")),
    # APIKEY
    ("apikey", b"k secret", ok(b"k", apikey=b"secret")),
    ("apikey-with-tag", b"@9 BTC-USD s3cr3t!", ok(b"BTC-USD", b"@9 ", b"s3cr3t!")),
    ("apikey-printable-punct", b"k ~!@#$%^&*()", ok(b"k", apikey=b"~!@#$%^&*()")),
    ("apikey-64-bytes", b"k " + b"a" * 64, ok(b"k", apikey=b"a" * 64)),
    ("apikey-65-bytes-bad", b"k " + b"a" * 65, bad()),
    ("apikey-65-bytes-bad-with-tag", b"@q k " + b"a" * 65, bad(b"@q ")),
    ("apikey-lf", b"k key\n", ok(b"k", apikey=b"key")),
    ("apikey-crlf", b"k key\r\n", ok(b"k", apikey=b"key")),
    ("apikey-trailing-space-bad", b"k key ", bad()),
    ("apikey-inner-space-bad", b"k ke y", bad()),
    ("apikey-empty-double-space-bad", b"k  key", bad()),
    ("apikey-non-printable-bad", b"k ke\x7fy", bad()),
    ("apikey-high-byte-bad", b"k ke\x80y", bad()),
    # junk
    ("binary-junk", b"\x00\x01\x02\xfe\xff", bad()),
    ("json-junk", b'{"key":"k"}', bad()),
    ("http-request-line", b"GET /v1/k HTTP/1.1\r\n", bad()),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("datagram,expected", [c[1:] for c in CASES], ids=IDS)
def test_c_parser(datagram, expected):
    assert parse_request(datagram) == expected


@pytest.mark.parametrize("datagram,expected", [c[1:] for c in CASES], ids=IDS)
def test_reference_parser(datagram, expected):
    """The reference the fuzz tests rely on agrees with every hand-written case."""
    assert reference_parse(datagram) == expected


def test_parse_request_type_errors():
    with pytest.raises(TypeError):
        parse_request("k")          # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_request(None)         # type: ignore[arg-type]


@pytest.mark.timeout(900)          # the thorough profile asks for 50,000 examples
@DIFFERENTIAL
@given(GRAMMARISH | st.binary(max_size=200))
@example(b"@" + b"x" * 16 + b" " + b"k" * 64 + b" " + b"a" * 64 + b"\r\n")
@example(b"@\n")
@example(b"\r\n\n")
def test_c_parser_matches_reference(datagram):
    """Differential test: the C parser and the plain-Python grammar agree."""
    assert parse_request(datagram) == reference_parse(datagram)


# -- the same cases against a live server --------------------------------------------

def expected_live_reply(datagram, parsed):
    status, tag, key, _ = parsed
    if status != "ok":
        return tag + BAD_REQUEST
    body = TABLE.get(key.decode())
    return tag + (body if body is not None else NOT_FOUND)


@pytest.fixture(params=[("beastnet", "127.0.0.1"),
                        pytest.param(("beastnet", "::1"), marks=needs_ipv6),
                        ("reference", "127.0.0.1"),
                        pytest.param(("reference", "::1"), marks=needs_ipv6)],
                ids=["beastnet-ipv4", "beastnet-ipv6", "reference-ipv4", "reference-ipv6"],
                scope="module")
def live(request):
    """One server per implementation and address family for the whole module
    (the per-test leak check only sees it once it is running).  The same
    cases run against beastnet and the pure-Python reference server."""
    from beastnet import UDPServer
    from reference_server import ReferenceUDPServer
    from support import UDPClient
    implementation, host = request.param
    if implementation == "beastnet":
        srv = UDPServer(ResponseTable(TABLE), host, sockets=2).start()
    else:
        srv = ReferenceUDPServer(TABLE, host).start()
    cl = UDPClient(srv.address)
    yield srv, cl
    cl.close()
    srv.stop()


@pytest.mark.parametrize("datagram,expected", [c[1:] for c in CASES], ids=IDS)
def test_live_reply(live, datagram, expected):
    srv, cl = live
    assert cl.request(datagram) == expected_live_reply(datagram, expected)


def test_live_tagged_pipelined_replies_match_tags(live):
    """Thirty-two tagged requests in flight at once: each reply carries its
    request's tag and that key's body (tags are how clients match answers)."""
    srv, cl = live
    keys = list(TABLE) + ["absent"]
    sent = {}
    for i in range(32):
        key = keys[i % len(keys)]
        tag = b"@%d " % i
        sent[tag] = TABLE.get(key, NOT_FOUND)
        cl.send(tag + key.encode())
    for reply in cl.recv_many(32):
        tag, _, body = reply.partition(b" ")
        assert sent.pop(tag + b" ") == body
    assert not sent


def test_live_address_family(live):
    srv, _ = live
    assert srv.address[0] in ("127.0.0.1", "::1")
    assert len(srv.address) == (4 if srv.address[0] == "::1" else 2)
    assert srv.stats()["address"] == srv.address


def test_hit_reply_is_body_bytes_exactly(make_server, make_client):
    """A hit's reply is the stored body byte for byte, even binary and
    non-JSON bodies, with and without a tag."""
    body = bytes(range(256)) * 3
    srv = make_server(ResponseTable({"bin": body, "empty": b""}))
    c = make_client(srv.address)
    assert c.request(b"bin") == body
    assert c.request(b"@x bin") == b"@x " + body
    assert c.request(b"@x empty") == b"@x "
    assert c.request(b"empty") == b""


def test_the_session_keeps_conftests_hypothesis_profile():
    """Every test module is imported by now: none may have loaded a profile
    of its own over the one conftest.py chose."""
    from hypothesis import settings
    name = os.environ.get("BEASTNET_HYPOTHESIS_PROFILE", "ci")
    assert settings._current_profile == name
    assert settings.default.max_examples == settings.get_profile(name).max_examples
