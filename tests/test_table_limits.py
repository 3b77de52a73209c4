"""ResponseTable bounds: the index shrinks after deletes (with native readers
probing it meanwhile), and `max_keys` refuses keys past a cap, including keys a
miss handler tries to cache for clients."""
from __future__ import annotations

import threading

import pytest

from beastnet import Answer, ResponseTable, TableFullError, UDPServer
from beastnet._core import lookup_many
from support import UDPClient, settled_stats

pytestmark = pytest.mark.timeout(60)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_index_shrinks_after_deletes_and_gives_memory_back():
    t = ResponseTable()
    empty_index = t.memory_stats()["index_bytes"]
    n = 300_000
    t.update((f"k{i}", b"x") for i in range(n))
    grown = t.memory_stats()
    assert grown["index_bytes"] > 100 * empty_index
    rss_full = rss_bytes()
    for i in range(n):
        del t[f"k{i}"]
    t.reclaim()
    stats = t.memory_stats()
    assert stats["keys"] == 0 and stats["retired_objects"] == 0
    assert stats["index_bytes"] == empty_index
    # The big index was one calloc of ~grown["index_bytes"]: most of it is
    # back with the kernel, not just on a free list.
    assert rss_full - rss_bytes() > grown["index_bytes"] // 2


def test_shrink_keeps_every_live_key_and_never_goes_below_the_initial_capacity():
    t = ResponseTable(capacity=1000)
    floor = t.memory_stats()["capacity"]
    t.update((f"k{i}", f"v{i}") for i in range(20_000))
    for i in range(20_000):
        if i % 97:
            t.discard(f"k{i}")
    assert t.memory_stats()["capacity"] < 20_000
    assert t.memory_stats()["capacity"] >= floor
    assert sorted(t.keys()) == sorted(f"k{i}" for i in range(0, 20_000, 97))
    for i in range(0, 20_000, 97):
        assert t[f"k{i}"] == f"v{i}".encode()
    for i in range(0, 20_000, 97):
        del t[f"k{i}"]
    assert t.memory_stats()["capacity"] == floor


def test_native_readers_see_every_stable_key_while_the_index_shrinks():
    t = ResponseTable()
    stable = [f"s{i}" for i in range(100)]
    t.update((k, b"stable") for k in stable)
    t.update((f"c{i}", b"churn") for i in range(100_000))
    rounds = 3_000
    hits: list[int] = []
    reader = threading.Thread(target=lambda: hits.append(lookup_many(t, stable, rounds)))
    reader.start()
    shrinks = 0
    capacity = t.memory_stats()["capacity"]
    for i in range(100_000):
        del t[f"c{i}"]
        if t.memory_stats()["capacity"] < capacity:
            capacity = t.memory_stats()["capacity"]
            shrinks += 1
    reader.join()
    assert shrinks >= 5                     # the index was republished under the reader
    assert hits == [rounds * len(stable)]   # and it never missed a key that was there


def test_max_keys_refuses_new_keys_but_not_replacements():
    t = ResponseTable({"a": b"1", "b": b"2"}, max_keys=2)
    assert t.max_keys == 2
    t["a"] = b"3"                           # replacing is always allowed
    with pytest.raises(TableFullError, match="maximum of 2 keys"):
        t["c"] = b"x"
    assert "c" not in t and len(t) == 2
    with pytest.raises(TableFullError, match="nothing was published"):
        t.update({"a": b"4", "c": b"x"})
    assert t["a"] == b"3"                   # the batch published nothing
    del t["b"]
    t["c"] = b"x"                           # room again after a delete
    assert sorted(t.keys()) == ["a", "c"]
    assert isinstance(TableFullError("x"), OverflowError)
    assert ResponseTable().max_keys is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_max_keys_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_keys"):
        ResponseTable(max_keys=bad)


def test_miss_handler_cache_stops_at_max_keys_and_clients_still_get_answers():
    table = ResponseTable({"BTC": b"1"}, max_keys=3)

    def handler(request):
        return Answer({"computed": request.key}, cache=True)

    with UDPServer(table, "127.0.0.1", 0, sockets=1, handler=handler) as server, \
            UDPClient(server.address) as client:
        for i in range(10):
            assert client.request(f"@{i} k{i}".encode()) == f'@{i} {{"computed":"k{i}"}}'.encode()
        totals = settled_stats(server, 10)["totals"]
    assert len(table) == 3
    assert totals["miss_cached"] == 2 and totals["miss_cache_refused"] == 8
    assert totals["handler_errors"] == 0
