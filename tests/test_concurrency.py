"""Torn-read test: client processes hammer a live server while a Python
writer rewrites all 150 entries as fast as it can (and grows/shrinks the index).

Every body embeds its key, a version and a CRC32 of the rest, and its length
varies with the version, so a torn, stale-freed or misdirected read shows up
as a bad checksum, a wrong key or a version going backwards.  The clients run
in their own processes (tests/_torn_client.py) so they are not starved by the
writer, and every reply must be at least as new as the writer's last completed
round when its request was sent: a reader stuck on an old index fails.

The runs are sized in replies checked, not in seconds.  The long variant with
4 sockets runs in CI; the longer ones are `slow` (`--run-slow`); docs/testing.md
records the run under AddressSanitizer.
"""
from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import threading
import time

import orjson
import pytest

from _torn_client import KEYS, check_body, make_body
from beastnet import ResponseTable, UDPServer
from support import counter_invariants, settled_stats

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torn_client.py")


def run_torn_read(replies_per_client: int, nclients: int, sockets: int = 2, window: int = 1,
                  min_rounds: int = 20, guard_s: float = 240.0, tmp_dir: str = "/tmp") -> dict:
    """Run until every client has checked `replies_per_client` replies and the
    writer has completed `min_rounds` rounds; `guard_s` only bounds a hang."""
    table = ResponseTable({k: make_body(k, 0) for k in KEYS})
    stop = threading.Event()
    errors: list[BaseException] = []
    stats: dict = {"writer_rounds": 0}
    rounds_path = os.path.join(tmp_dir, f"torn-rounds-{os.getpid()}-{id(stats)}")
    with open(rounds_path, "wb") as f:
        f.write(b"\0" * 8)
    rounds_file = open(rounds_path, "r+b")
    rounds = mmap.mmap(rounds_file.fileno(), 8)

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
                struct.pack_into("<Q", rounds, 0, version)   # every key is at >= version
                stats["writer_rounds"] = version
                if version % 25 == 0:
                    # grow the index under the readers, then leave tombstones
                    names = [f"tmp{extra + i}" for i in range(200)]
                    extra += 200
                    table.update({n: b"t" for n in names})
                    for n in names:
                        del table[n]
        except BaseException as exc:                  # pragma: no cover - reported
            errors.append(exc)

    try:
        with UDPServer(table, sockets=sockets) as srv:
            host, port = srv.address[:2]
            th = threading.Thread(target=writer, name="writer")
            th.start()
            procs = [subprocess.Popen([sys.executable, CLIENT, host, str(port), str(i),
                                       str(replies_per_client), str(window), rounds_path,
                                       str(min_rounds)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for i in range(nclients)]
            outputs = []
            try:
                for proc in procs:
                    out, err = proc.communicate(timeout=guard_s)
                    assert proc.returncode == 0, err.decode(errors="replace")
                    outputs.append(orjson.loads(out))
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                    proc.stdout.close()             # type: ignore[union-attr]
                    proc.stderr.close()             # type: ignore[union-attr]
                stop.set()
                th.join(30)
            assert not th.is_alive()
            if errors:
                raise errors[0]
            stats["clients"] = outputs
            total = sum(o["replies"] for o in outputs)
            s = settled_stats(srv, total)
            stats["server"] = s
            assert s["totals"]["hits"] == total
            assert counter_invariants(s["totals"]) == []
            assert s["reader_errors"] == []
    finally:
        rounds.close()
        rounds_file.close()
        os.unlink(rounds_path)
    table.reclaim()
    assert table.memory_stats()["retired_objects"] == 0
    stats["table"] = table.memory_stats()
    return stats


def check_run(r: dict, replies_per_client: int, min_rounds: int) -> None:
    """Each client checked its replies and saw the writer's rounds go by."""
    assert all(o["replies"] >= replies_per_client for o in r["clients"]), r["clients"]
    assert r["writer_rounds"] >= min_rounds
    for o in r["clients"]:
        # every client was still asking after the writer's min_rounds-th round,
        # and its newest answer is at least that new
        assert o["last_round_seen"] >= min_rounds and o["max_version"] >= o["last_round_seen"], o


def test_make_body_roundtrip():
    for v in (0, 1, 96, 97, 1000):
        assert check_body("sym:001/usd", make_body("sym:001/usd", v)) == v
    bad = make_body("sym:001/usd", 5).replace(b'"v":5', b'"v":6')
    with pytest.raises(AssertionError, match="checksum"):
        check_body("sym:001/usd", bad)
    with pytest.raises(AssertionError, match="asked"):
        check_body("sym:002/usd", make_body("sym:001/usd", 5))


@pytest.mark.timeout(300)
def test_torn_reads_short(tmp_path):
    """100,000 checked replies: 4 client processes, 2 readers, one writer
    rewriting all 150 keys."""
    n = int(os.environ.get("BEASTNET_TORN_REPLIES", "25000"))
    r = run_torn_read(n, nclients=4, tmp_dir=str(tmp_path))
    check_run(r, n, 20)


@pytest.mark.timeout(300)
def test_torn_reads_pipelined_window(tmp_path):
    """Sixteen requests in flight per client: recvmmsg batches fill up, so a
    batch's replies point into many different entries while they are replaced."""
    r = run_torn_read(50_000, nclients=2, window=16, tmp_dir=str(tmp_path))
    check_run(r, 50_000, 20)
    totals = r["server"]["totals"]
    # at least one batch carried more than one request: what this variant is for
    assert totals["rx_packets"] > totals["rx_batches"], totals


@pytest.mark.timeout(600)
def test_torn_reads_long_four_sockets(tmp_path):
    """The long variant CI runs: 3,000,000 checked replies (about 20 s here),
    4 readers, 6 clients with 4 requests in flight each."""
    r = run_torn_read(500_000, nclients=6, sockets=4, window=4, min_rounds=1000,
                      tmp_dir=str(tmp_path))
    check_run(r, 500_000, 1000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("sockets,clients", [(2, 4), (4, 6)])
def test_torn_reads_longer(sockets, clients, tmp_path):
    n = int(os.environ.get("BEASTNET_TORN_LONG_REPLIES", "5000000"))
    r = run_torn_read(n, nclients=clients, sockets=sockets, min_rounds=500, guard_s=1700,
                      tmp_dir=str(tmp_path))
    check_run(r, n, 500)
