"""Arbitrary bytes against a live server (hypothesis).

Every datagram must get exactly the reply the reference grammar predicts
(a hit body, a not_found/bad_request body, tag echoed where it parsed; a
truncated datagram bad_request without a tag; with API keys enforced, no reply
at all to unauthorized and malformed requests).  Afterwards good requests are
still answered, and the server's counters equal what was sent, one by one.
Response-rate limiting, which withholds error replies by time, exempts these
loopback clients by default; tests/test_udp_abuse.py covers it.
"""
from __future__ import annotations

import collections
import socket

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beastnet import Answer, APIKeyTable, ResponseTable, UDPServer
from conftest import SMALL_KEYS
from support import (BAD_REQUEST, GRAMMARISH, NOT_FOUND, UDPClient, counter_invariants,
                     expected_reply, reference_parse, settled_stats)

pytestmark = pytest.mark.timeout(90)

MAX_DATAGRAM = 512
TABLE = dict(SMALL_KEYS, **{"k": b'{"k":true}', "BTC-USD": b"\x00binary\xffbody"})


def lookup(key: bytes):
    return TABLE.get(key.decode())


DATAGRAMS = st.one_of(
    GRAMMARISH,
    st.binary(max_size=600),                                     # junk, some truncated
    st.binary(min_size=MAX_DATAGRAM + 1, max_size=4000),           # always MSG_TRUNC
    st.builds(lambda valid, pad: valid + pad,                      # valid prefix, truncated
              st.sampled_from([b"k1", b"@t k1", b"@t k1\n"]),
              st.binary(min_size=MAX_DATAGRAM, max_size=MAX_DATAGRAM + 10)),
)


class Expect:
    """Counters the server must end up with, accumulated per datagram sent."""

    def __init__(self, max_datagram: int, handled_misses: bool = False) -> None:
        self.max_datagram = max_datagram
        self.handled = handled_misses
        self.c = collections.Counter()

    def sent(self, datagram: bytes, reply: bytes) -> None:
        c = self.c
        c["rx_packets"] += 1
        c["rx_bytes"] += min(len(datagram), self.max_datagram)
        c["reply_bytes"] += len(reply)
        if len(datagram) > self.max_datagram:
            c["bad_requests"] += 1
            c["truncated"] += 1
            return
        status, _, key, _ = reference_parse(datagram)
        if status == "empty":
            c["bad_requests"] += 1
            c["empty"] += 1
        elif status == "bad":
            c["bad_requests"] += 1
        elif lookup(key) is not None:
            c["hits"] += 1
        else:
            c["misses"] += 1
            c["queued" if self.handled else "not_found"] += 1

    def check(self, totals: dict) -> None:
        for name in ("rx_packets", "rx_bytes", "hits", "misses", "bad_requests", "truncated",
                     "empty", "not_found", "queued"):
            assert totals[name] == self.c[name], name
        native = self.c["rx_packets"] - self.c["queued"]
        assert totals["tx_packets"] == native
        assert totals["send_errors"] == 0 and totals["kernel_drops"] == 0
        assert totals["queue_drops"] == 0 and totals["recv_errors"] == 0
        if self.handled:
            assert totals["handler_calls"] == self.c["queued"]
            assert totals["miss_replies"] == self.c["queued"]
            # all replies, native and from the control plane
        else:
            assert totals["tx_bytes"] == self.c["reply_bytes"]
        assert counter_invariants(totals) == []


def still_serving(address, miss_reply: bytes = NOT_FOUND) -> None:
    with UDPClient(address) as c:
        for key, body in TABLE.items():
            assert c.request(b"@ok " + key.encode() + b"\n") == b"@ok " + body
        assert c.request(b"@ok nope") == b"@ok " + miss_reply


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_fuzz_one_datagram_at_a_time(host):
    from conftest import HAS_IPV6
    if host == "::1" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    expect = Expect(MAX_DATAGRAM)
    with UDPServer(ResponseTable(TABLE), host, sockets=2, max_datagram=MAX_DATAGRAM) as srv, \
            UDPClient(srv.address) as client:

        @given(DATAGRAMS)
        @example(b"")
        @example(b"\n")
        @example(b"\r\n")
        @example(b"x" * (MAX_DATAGRAM + 1))
        @example(b"@t k1" + b" " * MAX_DATAGRAM)
        @example(b"x" * 9000)
        @example(b"@" + b"t" * 17 + b" k1")
        @example(b"k" * 65)
        @example(b"k1 " + b"a" * 65)
        def one(datagram):
            reply = client.request(datagram)
            assert reply == expected_reply(datagram, lookup, MAX_DATAGRAM)
            expect.sent(datagram, reply)

        one()
        expect.check(settled_stats(srv, expect.c["rx_packets"])["totals"])
        still_serving(srv.address)
        s = srv.stats()
        assert s["reader_errors"] == []
        assert 1.0 <= s["avg_batch_fill"] <= srv.batch


@given(st.lists(DATAGRAMS, min_size=1, max_size=64))
def _burst_property(ctx, datagrams):
    srv, client, expect = ctx
    for d in datagrams:
        client.send(d)
    replies = client.recv_many(len(datagrams))
    wanted = [expected_reply(d, lookup, MAX_DATAGRAM) for d in datagrams]
    # Two reader sockets: replies may interleave, but none is lost, extra or wrong.
    assert collections.Counter(replies) == collections.Counter(wanted)
    for d, r in zip(datagrams, wanted):
        expect.sent(d, r)


def test_fuzz_bursts_of_datagrams():
    """Batches of up to 64 arbitrary datagrams in flight at once exercise
    recvmmsg/sendmmsg batches mixing hits, misses, junk and truncation."""
    expect = Expect(MAX_DATAGRAM)
    with UDPServer(ResponseTable(TABLE), sockets=2, batch=8, max_datagram=MAX_DATAGRAM) as srv, \
            UDPClient(srv.address) as client:
        _burst_property((srv, client, expect))
        expect.check(settled_stats(srv, expect.c["rx_packets"])["totals"])
        still_serving(srv.address)
        s = srv.stats()
        assert 1.0 <= s["avg_batch_fill"] <= 8         # batch=8 caps a recvmmsg


def test_fuzz_miss_path_with_handler():
    """Misses go through the control plane: the handler's answer comes back
    with the tag echoed, caching nothing, and counters account for each one."""
    calls = []

    def handler(req):
        calls.append(req.key)
        return Answer({"miss": req.key, "tag": req.tag}, cache=False)

    def miss_body(datagram):
        _, tag, key, _ = reference_parse(datagram)
        import orjson
        return orjson.dumps({"miss": key.decode(), "tag": tag[1:-1].decode() or None})

    expect = Expect(MAX_DATAGRAM, handled_misses=True)
    table = ResponseTable(TABLE)
    with UDPServer(table, sockets=2, handler=handler, max_datagram=MAX_DATAGRAM) as srv, \
            UDPClient(srv.address) as client:

        @given(DATAGRAMS)
        @example(b"@tg zz")
        def one(datagram):
            reply = client.request(datagram)
            status, tag, key, _ = ("bad", b"", None, None) if len(datagram) > MAX_DATAGRAM \
                else reference_parse(datagram)
            if status == "ok" and lookup(key) is None:
                assert reply == tag + miss_body(datagram)
            else:
                assert reply == expected_reply(datagram, lookup, MAX_DATAGRAM)
            expect.sent(datagram, reply)

        one()
        totals = settled_stats(srv, expect.c["rx_packets"])["totals"]
        expect.check(totals)
        assert len(calls) == expect.c["queued"]
        assert len(table) == len(TABLE)              # nothing cached
        still_serving(srv.address, b'{"miss":"nope","tag":"ok"}')


# Keyed: "BIG" fits one IPv4 datagram only behind a tag of at most 6 bytes.
KEYED_TABLE = dict(TABLE, BIG=b"B" * (65507 - 6))
API_KEYS = {b"good", b"k1"}
KEYED = st.one_of(
    DATAGRAMS,
    st.builds(lambda tag, key, apikey: tag + key + b" " + apikey,
              st.sampled_from([b"", b"@t ", b"@tt ", b"@ttt ", b"@0123456789abcdef "]),
              st.sampled_from([b"k1", b"BIG", b"nope"]),
              st.sampled_from([b"good", b"k1", b"bad"])),
)


def test_fuzz_with_api_keys_enforced():
    """Keys enforced, refusals silent by default: unauthorized and malformed
    datagrams get no reply, the rest exactly the reference's reply, an answer
    too large for the datagram with its tag is answered too_large.  A probe
    after each datagram tells "no reply" from "late reply": one reader socket
    answers in order."""
    keys = APIKeyTable()
    for k in API_KEYS:
        keys.set(k.decode())
    counts = collections.Counter()
    with UDPServer(ResponseTable(KEYED_TABLE), sockets=1, max_datagram=MAX_DATAGRAM,
                   api_keys=keys) as srv, UDPClient(srv.address) as client:

        @given(KEYED)
        @example(b"@tttttt BIG good")
        @example(b"@ttttttt BIG good")
        @example(b"BIG")
        @example(b"x" * (MAX_DATAGRAM + 1))
        def one(datagram):
            counts["probe"] += 1
            probe = b"@p%d k1 good" % counts["probe"]
            client.send(datagram)
            client.send(probe)
            first = client.recv()
            wanted = expected_reply(datagram, lambda k: KEYED_TABLE.get(k.decode()), MAX_DATAGRAM,
                                    api_keys=API_KEYS)
            if wanted is None:
                assert first == probe.split(b" ")[0] + b" " + TABLE["k1"]
                counts["unanswered"] += 1
            else:
                assert first == wanted
                assert client.recv() == probe.split(b" ")[0] + b" " + TABLE["k1"]
                counts["too_large"] += wanted.endswith(b'{"error":"too_large"}')

        one()
        t = settled_stats(srv, 2 * counts["probe"])["totals"]
        assert (t["unanswered"], t["too_large"]) == (counts["unanswered"], counts["too_large"])
        assert t["rx_packets"] - t["unanswered"] == t["tx_packets"]
        assert counter_invariants(t) == []


@pytest.mark.parametrize("max_datagram,key,datagram", [
    (64, b"b" * 46, b"@" + b"t" * 16 + b" " + b"b" * 46),
    (128, b"b" * 64, b"@" + b"t" * 16 + b" " + b"b" * 64 + b" " + b"a" * 45),
], ids=["64", "128"])
def test_truncation_boundary(max_datagram, key, datagram, make_client):
    """A valid datagram of exactly max_datagram bytes is answered; the same
    plus one byte (even a harmless "\n") is truncated (MSG_TRUNC) and answered
    bad_request without its tag, and counted as truncated."""
    assert len(datagram) == max_datagram
    with UDPServer(ResponseTable({key: b"hit"}), sockets=1, max_datagram=max_datagram) as srv:
        c = make_client(srv.address)
        assert c.request(datagram) == b"@" + b"t" * 16 + b" hit"
        assert c.request(datagram + b"\n") == BAD_REQUEST
        assert c.request(datagram + b"x" * 1000) == BAD_REQUEST
        assert c.request(b"@tt " + key) == b"@tt hit"
        t = settled_stats(srv, 4)["totals"]
        assert (t["hits"], t["truncated"], t["bad_requests"]) == (2, 2, 2)
        assert t["rx_bytes"] == 3 * max_datagram + 4 + len(key)
        assert counter_invariants(t) == []


def test_max_datagram_udp_payload(make_client):
    """The largest IPv4 UDP payload, against the largest read slot, is parsed
    (and is bad: far too long for the grammar), never a crash."""
    with UDPServer(ResponseTable(TABLE), sockets=1, max_datagram=65536) as srv:
        c = make_client(srv.address)
        assert c.request(b"k" * 65507) == BAD_REQUEST
        assert c.request(b"@big k1") == b"@big " + TABLE["k1"]
        t = settled_stats(srv, 2)["totals"]
        assert t["truncated"] == 0 and t["rx_bytes"] == 65507 + 7


def probe(c) -> int:
    """Ask until answered; returns how many probes that took.  A lone probe
    after a burst is the first datagram of its batch, so it carries the
    socket's final drop count; the first may be dropped too while the
    backlog drains."""
    for probes in range(1, 21):
        try:
            assert c.request(b"@p%d k2" % probes, timeout=0.5) == b"@p%d " % probes + TABLE["k2"]
            return probes
        except socket.timeout:
            continue
    pytest.fail("no probe answered")


def test_kernel_drops_explain_missing_replies(make_client):
    """With a tiny receive buffer a burst overflows the socket; SO_RXQ_OVFL
    must account for every datagram that got no reply:
    rx_packets + kernel_drops == sent."""
    sent = 0
    with UDPServer(ResponseTable(TABLE), sockets=1, batch=1, recv_buffer_bytes=4096) as srv:
        c = make_client(srv.address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blaster:
            blaster.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # replies may drop here
            # Bursts until the kernel has dropped some: the check below is
            # about drops, so a reader fast enough to take every datagram
            # must not make it pass without any.
            for _ in range(20):
                for _ in range(3000):
                    blaster.sendto(b"k1", srv.address)
                sent += 3000
                probes = probe(c)
                sent += probes
                if srv.stats()["totals"]["kernel_drops"] > 0:
                    break
        t = settled_stats(srv, sent)["totals"]
        assert t["kernel_drops"] > 0
        assert t["rx_packets"] + t["kernel_drops"] == sent
        assert t["hits"] == t["rx_packets"]
        assert counter_invariants(t) == []
