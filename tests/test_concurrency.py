"""Torn-read test: clients hammer a live server while a Python writer
rewrites all 150 entries as fast as it can (and grows/shrinks the index).

Every body embeds its key, a version and a CRC32 of the rest, and its length
varies with the version, so a torn, stale-freed or misdirected read shows up
as a bad checksum, a wrong key or a version going backwards.

Run the long variant with `-m slow`; docs/testing.md records the run under
AddressSanitizer.
"""
from __future__ import annotations

import os
import threading
import time
import zlib

import orjson
import pytest

from beastnet import ResponseTable, UDPServer
from support import UDPClient, counter_invariants, settled_stats

NKEYS = 150
KEYS = [f"sym:{i:03d}/usd" for i in range(NKEYS)]


def make_body(key: str, version: int) -> bytes:
    # pad length changes with the version: a mix of two entries cannot keep
    # both the JSON shape and the checksum right
    payload = {"key": key, "v": version, "pad": "x" * (version % 97)}
    raw = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return orjson.dumps({"p": payload, "crc": zlib.crc32(raw)})


def check_body(key: str, body: bytes) -> int:
    """The version in a valid body for `key`; raises AssertionError otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AssertionError(f"unparseable reply for {key}: {body[:80]!r}") from exc
    raw = orjson.dumps(doc["p"], option=orjson.OPT_SORT_KEYS)
    assert zlib.crc32(raw) == doc["crc"], f"checksum mismatch for {key}: {body[:80]!r}"
    assert doc["p"]["key"] == key, f"asked {key}, got {doc['p']['key']}"
    assert doc["p"]["pad"] == "x" * (doc["p"]["v"] % 97)
    return doc["p"]["v"]


def run_torn_read(duration_s: float, nclients: int, sockets: int = 2, window: int = 1) -> dict:
    table = ResponseTable({k: make_body(k, 0) for k in KEYS})
    stop = threading.Event()
    errors: list[BaseException] = []
    stats = {"writer_rounds": 0, "requests": [0] * nclients}

    def writer():
        version = 0
        extra = 0
        try:
            while not stop.is_set():
                version += 1
                if version % 2:
                    for k in KEYS:                     # one publish per key
                        table.set(k, make_body(k, version))
                else:                                  # one batch for all keys
                    table.update({k: make_body(k, version) for k in KEYS})
                if version % 25 == 0:
                    # grow the index under the readers, then leave tombstones
                    names = [f"tmp{extra + i}" for i in range(200)]
                    extra += 200
                    table.update({n: b"t" for n in names})
                    for n in names:
                        del table[n]
                stats["writer_rounds"] = version
        except BaseException as exc:                  # pragma: no cover - reported
            errors.append(exc)

    def client(idx: int, address):
        last: dict[str, int] = {}
        seq = 0
        try:
            with UDPClient(address, timeout=2.0) as c:
                while not stop.is_set():
                    # `window` tagged requests in flight; versions are compared in
                    # send order only for window=1 (with more in flight, two
                    # readers may answer out of order)
                    batch = []
                    for _ in range(window):
                        key = KEYS[(seq * 7 + idx) % NKEYS]
                        tag = b"@%d " % seq
                        batch.append((tag, key))
                        c.send(tag + key.encode())
                        seq += 1
                    want = dict(batch)
                    for _ in batch:
                        reply = c.recv()
                        tag, sep, body = reply.partition(b" ")
                        key = want.pop(tag + sep)
                        version = check_body(key, body)
                        if window == 1:
                            assert version >= last.get(key, 0), (
                                f"client {idx} key {key}: version {version} after {last[key]}")
                        last[key] = max(version, last.get(key, 0))
                    stats["requests"][idx] += len(batch)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    with UDPServer(table, sockets=sockets) as srv:
        threads = [threading.Thread(target=writer, name="writer")]
        threads += [threading.Thread(target=client, args=(i, srv.address), name=f"client{i}")
                    for i in range(nclients)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        stop.set()
        for th in threads:
            th.join(10)
        assert not any(th.is_alive() for th in threads)
        if errors:
            raise errors[0]
        s = settled_stats(srv, sum(stats["requests"]))
        stats["server"] = s
        assert s["totals"]["hits"] == sum(stats["requests"])
        assert counter_invariants(s["totals"]) == []
        assert s["reader_errors"] == []
    table.reclaim()
    assert table.memory_stats()["retired_objects"] == 0
    stats["table"] = table.memory_stats()
    return stats


def test_make_body_roundtrip():
    for v in (0, 1, 96, 97, 1000):
        assert check_body("sym:001/usd", make_body("sym:001/usd", v)) == v
    bad = make_body("sym:001/usd", 5).replace(b'"v":5', b'"v":6')
    with pytest.raises(AssertionError, match="checksum"):
        check_body("sym:001/usd", bad)
    with pytest.raises(AssertionError, match="asked"):
        check_body("sym:002/usd", make_body("sym:001/usd", 5))


@pytest.mark.timeout(60)
def test_torn_reads_short():
    """~3 s, 3 clients, 2 readers, one writer rewriting all 150 keys."""
    r = run_torn_read(float(os.environ.get("BEASTNET_TORN_SECONDS", "3")), nclients=3)
    # the writer really rewrote the table many times while clients read it
    assert r["writer_rounds"] >= 20, r["writer_rounds"]
    assert all(n >= 100 for n in r["requests"]), r["requests"]


@pytest.mark.timeout(60)
def test_torn_reads_pipelined_window():
    """Sixteen requests in flight per client: recvmmsg batches fill up, so a
    batch's replies point into many different entries while they are replaced."""
    r = run_torn_read(2.0, nclients=2, window=16)
    assert r["writer_rounds"] >= 10
    assert r["server"]["avg_batch_fill"] >= 1.0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sockets,clients", [(2, 4), (4, 6)])
def test_torn_reads_long(sockets, clients):
    r = run_torn_read(float(os.environ.get("BEASTNET_TORN_LONG_SECONDS", "30")),
                      nclients=clients, sockets=sockets)
    assert r["writer_rounds"] >= 100
