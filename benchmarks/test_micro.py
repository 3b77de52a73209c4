"""Microbenchmarks: beastnet's per-request pieces next to the asyncio peer's.

    PYTHONPATH=src python -m pytest benchmarks/test_micro.py --benchmark-disable-gc

Kept out of the unit suite (tests/).  Every group pairs beastnet with the
Python code the peer (benchmarks/peers/udp_asyncio.py) runs for the same step,
on the same 150-asset table.  The summary prints ns per operation.

Limits: in-process timings on a shared 2-core VM; compare within a group and
within one run.  The beastnet entries that are called from Python
(`parse_request`, `send_reply`, `table.set`) include a Python call and its
argument conversion; the native reader pays none of that.  `lookup_many`
runs its whole loop without the GIL, as a reader does, so its figure is the
reader's per-lookup cost.
"""
from __future__ import annotations

import socket

import orjson
import pytest

from _common import asset_names, asset_table
from beastnet import ResponseTable, _core
from peers.udp_asyncio import parse_request as peer_parse

NAMES = asset_names()
TABLE = asset_table()
PEER_TABLE = {k.encode(): v for k, v in TABLE.items()}
MISS_NAMES = [f"MISS{i}" for i in range(len(NAMES))]
ROUNDS = 1000                           # lookups: rounds over the 150 keys per call


def make_table() -> ResponseTable:
    table = ResponseTable(capacity=len(TABLE))
    table.update(TABLE)
    return table


# -- table lookup -----------------------------------------------------------------

@pytest.mark.benchmark(group="lookup: 150 keys x 1000 rounds = 150,000 probes/call, all hits")
def test_lookup_hits_beastnet(benchmark, per_op):
    """The reader's probe, in a nogil C loop over the keys."""
    table = make_table()
    assert benchmark(_core.lookup_many, table, NAMES, ROUNDS) == len(NAMES) * ROUNDS
    per_op(benchmark, len(NAMES) * ROUNDS)


@pytest.mark.benchmark(group="lookup: 150 keys x 1000 rounds = 150,000 probes/call, all hits")
def test_lookup_hits_python_dict(benchmark, per_op):
    """The peer's `table.get(key)` on bytes keys, in an interpreter loop."""
    keys = [k.encode() for k in NAMES]

    def loop(d, keys, rounds):
        hits = 0
        get = d.get
        for _ in range(rounds):
            for k in keys:
                if get(k) is not None:
                    hits += 1
        return hits

    assert benchmark(loop, PEER_TABLE, keys, ROUNDS) == len(NAMES) * ROUNDS
    per_op(benchmark, len(NAMES) * ROUNDS)


@pytest.mark.benchmark(group="lookup: 150 absent keys x 1000 rounds, all misses")
def test_lookup_misses_beastnet(benchmark, per_op):
    table = make_table()
    assert benchmark(_core.lookup_many, table, MISS_NAMES, ROUNDS) == 0
    per_op(benchmark, len(MISS_NAMES) * ROUNDS)


@pytest.mark.benchmark(group="lookup: 150 absent keys x 1000 rounds, all misses")
def test_lookup_misses_python_dict(benchmark, per_op):
    keys = [k.encode() for k in MISS_NAMES]

    def loop(d, keys, rounds):
        hits = 0
        get = d.get
        for _ in range(rounds):
            for k in keys:
                if get(k) is not None:
                    hits += 1
        return hits

    assert benchmark(loop, PEER_TABLE, keys, ROUNDS) == 0
    per_op(benchmark, len(MISS_NAMES) * ROUNDS)


# -- request parsing ----------------------------------------------------------------

def _requests() -> list[bytes]:
    """150 datagrams as the load generator sends them, a third with an API key
    and CRLF, one per asset."""
    out = []
    for i, name in enumerate(NAMES):
        if i % 3 == 0:
            out.append(b"@%x %s apikey-%d\r\n" % (i, name.encode(), i))
        else:
            out.append(b"@%x %s\n" % (i, name.encode()))
    return out


REQUESTS = _requests()


@pytest.mark.benchmark(group="parse: 150 datagrams '@TAG KEY[ APIKEY]\\n'/call")
def test_parse_beastnet(benchmark, per_op):
    """udp_parse via the parse_request wrapper: the figure is dominated by the
    Python call and the 4-tuple it builds; the reader calls udp_parse inline."""
    parse = _core.parse_request

    def loop(reqs):
        for r in reqs:
            parse(r)

    assert parse(REQUESTS[0])[0] == "ok" and parse(REQUESTS[1])[2] == NAMES[1].encode()
    benchmark(loop, REQUESTS)
    per_op(benchmark, len(REQUESTS))


@pytest.mark.benchmark(group="parse: 150 datagrams '@TAG KEY[ APIKEY]\\n'/call")
def test_parse_python_peer(benchmark, per_op):
    """The peer's parser: strip the line ending, one anchored regex fullmatch."""
    def loop(reqs):
        for r in reqs:
            peer_parse(r)

    assert peer_parse(REQUESTS[1])[1] == NAMES[1].encode()
    benchmark(loop, REQUESTS)
    per_op(benchmark, len(REQUESTS))


# -- reply build ---------------------------------------------------------------------

TAGS = [b"@%x " % i for i in range(len(NAMES))]
BODIES = [TABLE[n] for n in NAMES]
CTYPE = "application/json"                # UDP ignores it: one send_reply signature for both engines


@pytest.mark.benchmark(group="reply build: tag prefix + ~110-byte body, 150/call")
def test_reply_build_python_concat(benchmark, per_op):
    """The peer builds each reply as one new bytes object (a copy of the body)."""
    def loop(tags, bodies):
        for tag, body in zip(tags, bodies):
            tag + body

    benchmark(loop, TAGS, BODIES)
    per_op(benchmark, len(TAGS))


@pytest.mark.benchmark(group="reply build: tag prefix + ~110-byte body, 150/call")
def test_reply_build_python_loop_overhead(benchmark, per_op):
    """The same loop without the concatenation: what the build itself adds is
    the difference.  beastnet's reader builds no reply object at all: it
    stores two iovec pointers into the receive slot and the table entry."""
    def loop(tags, bodies):
        for tag, body in zip(tags, bodies):
            pass

    benchmark(loop, TAGS, BODIES)
    per_op(benchmark, len(TAGS))


@pytest.fixture
def sink():
    """A bound socket nobody reads, with a tiny buffer: datagrams sent to it
    are dropped on arrival, so every send costs the same full kernel path."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


@pytest.fixture
def sender():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def _sockaddr_in(addr: tuple) -> bytes:
    """struct sockaddr_in bytes, the form a reader keeps from recvmmsg."""
    import struct
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1]) + \
        socket.inet_aton(addr[0]) + b"\0" * 8


@pytest.mark.benchmark(group="reply send: build + one send syscall, 150 replies/call")
def test_reply_send_beastnet_iovec(benchmark, per_op, sink, sender):
    """UDPEngine.send_reply: sendmsg with iovec [tag prefix, body], no user-space
    copy (the miss path's reply; readers do the same per sendmmsg slot)."""
    table = make_table()
    engine = _core.UDPEngine(table, [sender.fileno()])     # not started: no readers
    addr = _sockaddr_in(sink.getsockname())

    def loop(tags, bodies):
        send = engine.send_reply
        for tag, body in zip(tags, bodies):
            send(0, 0, 0, addr, tag, 200, CTYPE, body)

    assert engine.send_reply(0, 0, 0, addr, TAGS[0], 200, CTYPE, BODIES[0]) == 0
    benchmark(loop, TAGS, BODIES)
    per_op(benchmark, len(TAGS))


@pytest.mark.benchmark(group="reply send: build + one send syscall, 150 replies/call")
def test_reply_send_python_concat_sendto(benchmark, per_op, sink, sender):
    """The peer's `transport.sendto(tag + body, addr)` minus the transport layer."""
    addr = sink.getsockname()

    def loop(tags, bodies):
        sendto = sender.sendto
        for tag, body in zip(tags, bodies):
            sendto(tag + body, addr)

    benchmark(loop, TAGS, BODIES)
    per_op(benchmark, len(TAGS))


@pytest.mark.benchmark(group="reply send: build + one send syscall, 150 replies/call")
def test_reply_send_python_sendmsg_iovec(benchmark, per_op, sink, sender):
    """Scatter-gather from Python: no concatenation, a list and a sendmsg."""
    addr = sink.getsockname()

    def loop(tags, bodies):
        sendmsg = sender.sendmsg
        for tag, body in zip(tags, bodies):
            sendmsg([tag, body], [], 0, addr)

    benchmark(loop, TAGS, BODIES)
    per_op(benchmark, len(TAGS))


# -- table writes ----------------------------------------------------------------------

DOCS = {name: orjson.loads(body) for name, body in TABLE.items()}


@pytest.mark.benchmark(group="write: replace one key's answer, 150 keys/call")
def test_write_set_beastnet(benchmark, per_op):
    """table.set: validate, copy into a new entry, atomic swap, retire + reclaim the old."""
    table = make_table()

    def loop(items):
        s = table.set
        for k, v in items:
            s(k, v)

    benchmark(loop, list(TABLE.items()))
    per_op(benchmark, len(TABLE))


@pytest.mark.benchmark(group="write: replace one key's answer, 150 keys/call")
def test_write_set_python_dict(benchmark, per_op):
    d = dict(PEER_TABLE)
    items = list(PEER_TABLE.items())

    def loop(items):
        for k, v in items:
            d[k] = v

    benchmark(loop, items)
    per_op(benchmark, len(items))


@pytest.mark.benchmark(group="write: serialize a dict and publish it, 150 keys/call")
def test_write_set_json_beastnet(benchmark, per_op):
    table = make_table()

    def loop(items):
        s = table.set_json
        for k, doc in items:
            s(k, doc)

    benchmark(loop, list(DOCS.items()))
    per_op(benchmark, len(DOCS))


@pytest.mark.benchmark(group="write: serialize a dict and publish it, 150 keys/call")
def test_write_set_json_python_dict(benchmark, per_op):
    d = dict(PEER_TABLE)
    items = [(k.encode(), v) for k, v in DOCS.items()]

    def loop(items):
        dumps = orjson.dumps
        for k, doc in items:
            d[k] = dumps(doc)

    benchmark(loop, items)
    per_op(benchmark, len(items))


@pytest.mark.benchmark(group="write: update() with 150 keys in one call (per key)")
def test_write_update_beastnet(benchmark, per_op):
    """table.update: one lock, at most one index growth, one reclaim for the batch."""
    table = make_table()
    benchmark(table.update, TABLE)
    per_op(benchmark, len(TABLE))


@pytest.mark.benchmark(group="write: update() with 150 keys in one call (per key)")
def test_write_update_python_dict(benchmark, per_op):
    d = dict(PEER_TABLE)
    benchmark(d.update, PEER_TABLE)
    per_op(benchmark, len(PEER_TABLE))
