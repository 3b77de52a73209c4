"""Arbitrary and malformed HTTP requests against the native parser: split at
every byte boundary, pipelined, oversized, with bodies, with bad headers.
Each must get the right status (or a clean close), and a well-formed client on
another connection must keep getting its answers meanwhile.

Example counts come from the session's hypothesis profile (conftest.py).
"""
from __future__ import annotations

import socket
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from beastnet import HTTPServer, ResponseTable
from beastnet._core import http_parse
from conftest import DIFFERENTIAL
from http_helpers import BODIES, connect, get, read_until_close, split_responses
from http_reference import NO_ANSWER, Answer, Unmodelled, expected_answers, parse_head

pytestmark = pytest.mark.timeout(300)

MAX_HEADER_BYTES = 2048
MAX_TARGET_BYTES = 512


@pytest.fixture(scope="module")
def server():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=2, max_header_bytes=MAX_HEADER_BYTES,
                    max_target_bytes=MAX_TARGET_BYTES,
                    header_timeout_s=2.0) as srv:
        yield srv


def send_in_pieces(sock: socket.socket, payload: bytes, cuts: list[int]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(payload))) + [len(payload)]:
        try:
            sock.sendall(payload[last:cut])
        except OSError:                 # the server closed after an error: fine
            return
        last = cut
        time.sleep(0.0005)


def shut_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:                     # already reset by the server after an error answer
        pass


def check_neighbour(server) -> None:
    """A well-formed keep-alive client on another connection is still served."""
    with connect(server) as sock:
        sock.sendall(get("BTC") + get("ETH"))
        data = b""
        while len(split_responses(data)[0]) < 2:
            chunk = sock.recv(65536)
            assert chunk, "well-formed neighbour lost its connection"
            data += chunk
        responses, _ = split_responses(data)
        assert [r.body for r in responses] == [BODIES["BTC"], BODIES["ETH"]]


# -- requests with a known answer -------------------------------------------------------------

def _case(payload: bytes, status: int, head_only: bool = False):
    return (payload, status, head_only)


header_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda n: n not in ("host", "connection", "content-length", "transfer-encoding", "x-api-key",
                      "authorization"))
header_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30)


@st.composite
def good_request(draw):
    key = draw(st.sampled_from(list(BODIES) + ["NOPE", "a.b:c/d-e_f"]))
    method = draw(st.sampled_from(["GET", "HEAD"]))
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=4))
    host_case = draw(st.sampled_from(["Host", "host", "HOST"]))
    query = draw(st.sampled_from(["", "?x=1", "?api_key=abc", "?a=b&api_key=k"]))
    lines = [f"{method} /v1/{key}{query} HTTP/1.1", f"{host_case}: t"]
    lines += [f"{n}: {v}" for n, v in headers]
    if "api_key" not in query and draw(st.booleans()):     # two credentials are a 400
        lines.append("X-API-Key: key123")
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return _case(payload, 200 if key in BODIES else 404, method == "HEAD")


@st.composite
def bad_request(draw):
    kind = draw(st.sampled_from(["body", "chunked", "ctl", "name", "fold", "version", "target",
                                 "long_target", "big_header", "method", "no_host", "cl_bad",
                                 "smuggle", "post"]))
    base = "GET /v1/BTC HTTP/1.1\r\nHost: t\r\n"
    if kind == "body":
        n = draw(st.integers(1, 50))
        return _case(f"{base}Content-Length: {n}\r\n\r\n".encode() + b"x" * n, 413)
    if kind == "chunked":
        return _case(f"{base}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(), 413)
    if kind == "ctl":
        c = draw(st.sampled_from([0, 1, 8, 10, 27, 127]))
        return _case(base.encode() + b"X-A: a" + bytes([c]) + b"b\r\n\r\n", 400)
    if kind == "name":
        bad = draw(st.sampled_from(["Bad Name", "a(b)", "", "x@y", "é"]))
        return _case(base.encode() + bad.encode() + b": 1\r\n\r\n", 400)
    if kind == "fold":
        return _case(f"{base}X-A: 1\r\n  continued\r\n\r\n".encode(), 400)
    if kind == "version":
        v = draw(st.sampled_from(["HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1", "HTTP/1.1 "]))
        return _case(f"GET /v1/BTC {v}\r\nHost: t\r\n\r\n".encode(), 400)
    if kind == "target":
        t = draw(st.sampled_from(["v1/BTC", "*", "http://x/v1/BTC", "/v1/B TC"]))
        # absolute-form is served as its origin-form part (RFC 9112 section 3.2.2)
        return _case(f"GET {t} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 200 if t[0] == "h" else 400)
    if kind == "long_target":
        return _case(f"GET /v1/{'A' * draw(st.integers(600, 1500))} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 414)
    if kind == "big_header":
        return _case(f"{base}X-Big: {'b' * draw(st.integers(MAX_HEADER_BYTES, 3 * MAX_HEADER_BYTES))}\r\n\r\n".encode(), 431)
    if kind == "method":
        m = draw(st.sampled_from(["G@T", "GE T", "", "GETTTTTTTTTTTTTTTT"]))
        return _case(f"{m} /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 400)
    if kind == "no_host":
        return _case(b"GET /v1/BTC HTTP/1.1\r\n\r\n", 400)
    if kind == "cl_bad":
        v = draw(st.sampled_from(["-1", "1.0", "0x10", "", "99999999999999999999"]))
        return _case(f"{base}Content-Length: {v}\r\n\r\n".encode(), 400)
    if kind == "smuggle":
        return _case(f"{base}Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n".encode(), 400)
    return _case(b"POST /v1/BTC HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 405)


def owed(payload: bytes) -> list[Answer]:
    """The exact answers the fuzz server owes `payload` (http_reference)."""
    try:
        return expected_answers(payload, lambda k: BODIES.get(k.decode()),
                                max_header=MAX_HEADER_BYTES, max_target=MAX_TARGET_BYTES)
    except Unmodelled:
        assume(False)
        raise


def exchange_and_check(server, payload: bytes, cuts: list[int]) -> list:
    """Send `payload` in pieces, shut the write side, and check the answers
    are exactly the owed ones, in order.  A reset is allowed only when the
    server had closed after an answer that closes, with bytes left unread."""
    want = owed(payload)
    with connect(server) as sock:
        send_in_pieces(sock, payload, cuts)
        shut_write(sock)                    # the server answers what is complete, then closes
        data, how = read_until_close(sock, 10)
    assert how in ("eof", "reset"), how
    responses, rest = split_responses(data, [a.head_only for a in want])
    got = [r.status for r in responses]
    assert rest == b"", (got, rest[:80])
    answered = want[:len(got)]
    assert len(got) <= len(want), (got, want)
    for status, answer in zip(got, answered):
        assert status in answer.statuses, (got, want)
    missing = want[len(got):]
    assert all(NO_ANSWER in a.statuses for a in missing), (got, want, how)
    if how == "reset":
        assert want and want[-1].closes, ("reset without a closing answer", got, want)
    for r, answer in zip(responses, want):
        if r.status != 200 and not answer.head_only:
            assert r.body.startswith(b'{"error":"'), r
    return responses


@given(cases=st.lists(st.one_of(good_request(), good_request(), bad_request()), min_size=1,
                      max_size=6),
       cuts=st.lists(st.integers(0, 20000), max_size=12))
def test_pipelined_requests_get_the_right_status(server, cases, cuts):
    payload = b"".join(c[0] for c in cases)
    # The generator's own label agrees with the reference for each request.
    want = owed(payload)
    labels = []
    for _, status, _head in cases:
        labels.append(status)
        if status not in (200, 404, 405):
            break
    assert [next(iter(a.statuses)) for a in want] == labels[:len(want)]
    responses = exchange_and_check(server, payload, cuts)
    for (payload_, status, head_only), r in zip(cases, responses):
        if status == 200 and not head_only:
            key = payload_.split(b" ")[1].split(b"?")[0].split(b"/v1/", 1)[1].decode()
            assert r.body == BODIES[key]
    check_neighbour(server)


def test_every_byte_boundary(server):
    """One request split in two at each possible offset, then a pipelined pair."""
    request = get("BTC", extra="X-API-Key: k\r\nAccept: */*\r\n")
    for i in range(1, len(request)):
        with connect(server) as sock:
            send_in_pieces(sock, request + get("ETH"), [i, len(request) + i % 7])
            data = b""
            while len(split_responses(data)[0]) < 2:
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
        responses, rest = split_responses(data)
        assert [r.body for r in responses] == [BODIES["BTC"], BODIES["ETH"]] and rest == b""
    check_neighbour(server)


@given(junk=st.binary(min_size=1, max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_arbitrary_bytes_get_the_owed_answer(server, junk, cuts):
    exchange_and_check(server, junk, cuts)
    check_neighbour(server)


@given(mutation=st.tuples(st.integers(0, 200), st.binary(min_size=0, max_size=3)),
       cuts=st.lists(st.integers(0, 300), max_size=4))
def test_mutated_requests(server, mutation, cuts):
    base = get("BTC", extra="X-API-Key: k\r\n") + get("ETH")
    pos, insert = mutation
    pos = pos % len(base)
    payload = base[:pos] + insert + base[pos + 1:]
    for r in exchange_and_check(server, payload, cuts):
        if r.status == 200:
            assert r.body in (BODIES["BTC"], BODIES["ETH"])
    check_neighbour(server)


def _head(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw[:end + 4] if end >= 0 else raw + b"\r\n\r\n"


heads = st.one_of(good_request().map(lambda c: c[0]), bad_request().map(lambda c: c[0]),
                  st.binary(max_size=300),
                  st.tuples(good_request(), st.integers(0, 400), st.binary(max_size=3)).map(
                      lambda t: t[0][0][:t[1] % len(t[0][0])] + t[2] + t[0][0][t[1] % len(t[0][0]) + 1:]))


@pytest.mark.io_free
@pytest.mark.timeout(900)          # the thorough profile asks for 50,000 examples
@DIFFERENTIAL
@given(raw=heads)
def test_c_head_parser_matches_reference(raw):
    """Differential: the engine's head parser and the plain-Python one agree
    on the status and every field."""
    head = _head(raw)
    c = http_parse(head, MAX_TARGET_BYTES)
    ref = parse_head(head, MAX_TARGET_BYTES)
    assert c["status"] == ref.status, (head, c, ref)
    if ref.status == 0:
        assert (c["method"], c["target"], c["path"], c["api_key"], c["keepalive"], c["http10"],
                c["has_body"]) == (ref.method.decode(), ref.target.decode("latin-1"),
                                   ref.path.decode("latin-1"),
                                   ref.api_key.decode("latin-1") if ref.api_key else None,
                                   ref.keepalive, ref.http10, ref.has_body)
