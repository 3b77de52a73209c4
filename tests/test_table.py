"""ResponseTable: the Python API of docs/table.md, key validation, growth,
memory accounting, QSBR reclamation (with and without native readers), and
concurrent Python writers.  A hypothesis state machine checks it against a dict."""
from __future__ import annotations

import threading

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import beastnet
from beastnet import Entry, InvalidKeyError, ResponseTable
from beastnet._core import lookup_many
from support import UDPClient, wait_for

pytestmark = pytest.mark.timeout(60)

VALID_KEYS = st.from_regex(r"\A[A-Za-z0-9._:/-]{1,64}\Z", fullmatch=True)


# -- basic API -------------------------------------------------------------------

def test_empty_table():
    t = ResponseTable()
    assert len(t) == 0
    assert list(t) == [] and t.keys() == [] and t.items() == []
    assert t.get("a") is None and t.get("a", b"dflt") == b"dflt"
    assert t.entry("a") is None
    assert "a" not in t
    with pytest.raises(KeyError):
        t["a"]
    assert repr(t) == "<ResponseTable keys=0>"


def test_setitem_getitem_and_entry():
    t = ResponseTable()
    t["BTC"] = b'{"p":1}'
    assert t["BTC"] == b'{"p":1}'
    assert t.get("BTC") == b'{"p":1}'
    e = t.entry("BTC")
    assert isinstance(e, Entry)
    assert e == Entry(b'{"p":1}', "application/json", e.version)
    assert "BTC" in t and len(t) == 1


def test_set_with_content_type():
    t = ResponseTable()
    t.set("txt", "hello", content_type="text/plain; charset=utf-8")
    assert t.entry("txt").content_type == "text/plain; charset=utf-8"
    assert t["txt"] == b"hello"


@pytest.mark.parametrize("ctype", ["a" * 128, "text/plain\r\nX-Evil: 1", "x\ny"],
                         ids=["too-long", "crlf-injection", "lf"])
def test_invalid_content_type_rejected(ctype):
    t = ResponseTable()
    with pytest.raises(ValueError):
        t.set("k", b"v", content_type=ctype)
    assert "k" not in t and len(t) == 0


def test_content_type_max_length_accepted():
    t = ResponseTable()
    t.set("k", b"v", content_type="a" * 127)
    assert t.entry("k").content_type == "a" * 127


def test_set_json_uses_orjson():
    t = ResponseTable()
    obj = {"price": 1.5, "sym": "BTC", "n": [1, 2, 3], "u": "é"}
    t.set_json("BTC", obj)
    assert t["BTC"] == orjson.dumps(obj)
    assert t.entry("BTC").content_type == "application/json"


def test_set_json_unserializable_leaves_table_unchanged():
    t = ResponseTable({"k": b"old"})
    with pytest.raises(TypeError):
        t.set_json("k", object())
    assert t["k"] == b"old"


@pytest.mark.parametrize("body,stored", [
    (b"raw", b"raw"),
    ("h\u00e9llo", "h\u00e9llo".encode()),
    (bytearray(b"ba"), b"ba"),
    (memoryview(b"mv"), b"mv"),
    (b"", b""),
    (b"\x00\xff\r\n", b"\x00\xff\r\n"),
], ids=["bytes", "str-utf8", "bytearray", "memoryview", "empty", "binary"])
def test_body_types(body, stored):
    t = ResponseTable()
    t["k"] = body
    assert t["k"] == stored
    assert type(t["k"]) is bytes


@pytest.mark.parametrize("body", [1, None, 1.5, ["x"], {"a": 1}], ids=repr)
def test_bad_body_type(body):
    t = ResponseTable()
    with pytest.raises(TypeError):
        t["k"] = body
    assert len(t) == 0


def test_body_size_limit():
    t = ResponseTable()
    t["big"] = b"x" * (16 * 1024 * 1024)
    assert len(t["big"]) == 16 * 1024 * 1024
    with pytest.raises(ValueError):
        t["big"] = b"x" * (16 * 1024 * 1024 + 1)
    assert len(t["big"]) == 16 * 1024 * 1024


def test_body_is_copied_not_referenced():
    t = ResponseTable()
    buf = bytearray(b"before")
    t["k"] = buf
    buf[:] = b"after!"
    assert t["k"] == b"before"


def test_versions_strictly_increase():
    t = ResponseTable()
    seen = []
    for i in range(5):
        t["a"] = b"%d" % i
        seen.append(t.entry("a").version)
        t["b"] = b"%d" % i
        seen.append(t.entry("b").version)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    # a delete and re-insert continues the sequence
    del t["a"]
    t["a"] = b"again"
    assert t.entry("a").version > seen[-1]


def test_update_mapping_and_pairs():
    t = ResponseTable()
    t.update({"a": b"1", "b": "2"})
    t.update([("c", b"3"), (b"d", bytearray(b"4"))], content_type="text/plain")
    t.update((f"g{i}", b"%d" % i) for i in range(3))      # any iterable of pairs
    assert dict(t.items()) == {"a": b"1", "b": b"2", "c": b"3", "d": b"4",
                               "g0": b"0", "g1": b"1", "g2": b"2"}
    assert t.entry("d").content_type == "text/plain"
    assert t.entry("a").content_type == "application/json"


def test_update_versions_ordered_within_batch():
    t = ResponseTable()
    t.update([("a", b"1"), ("b", b"2"), ("c", b"3")])
    va, vb, vc = (t.entry(k).version for k in "abc")
    assert va < vb < vc


def test_init_with_mapping_regression():
    """Regression: __cinit__ rejected the documented ResponseTable(mapping)."""
    t = ResponseTable({"a": b"1", "b": b"2"})
    assert dict(t.items()) == {"a": b"1", "b": b"2"}
    t = ResponseTable([("a", "x")], capacity=1000, content_type="text/plain")
    assert t.entry("a") == Entry(b"x", "text/plain", 1)
    assert t.memory_stats()["capacity"] >= 2000


def test_delete_and_discard():
    t = ResponseTable({"a": b"1", "b": b"2"})
    del t["a"]
    assert "a" not in t and len(t) == 1
    with pytest.raises(KeyError):
        del t["a"]
    with pytest.raises(KeyError):
        del t["never"]
    assert t.discard("b") is True
    assert t.discard("b") is False
    assert t.discard("never") is False
    assert len(t) == 0 and t.keys() == []


def test_reinsert_after_delete_reuses_key():
    t = ResponseTable({"a": b"1"})
    cap = t.memory_stats()["capacity"]
    for i in range(200):
        del t["a"]
        t["a"] = b"%d" % i
    assert t["a"] == b"199" and len(t) == 1
    assert t.memory_stats()["capacity"] == cap       # the tombstone is reused, no growth


def test_iteration_keys_items_contains():
    data = {f"sym.{i}": b"%d" % i for i in range(50)}
    t = ResponseTable(data)
    assert sorted(t) == sorted(data)
    assert sorted(t.keys()) == sorted(data)
    assert dict(t.items()) == data
    assert all(k in t for k in data)
    assert all(isinstance(k, str) for k in t)


def test_iteration_is_a_snapshot():
    t = ResponseTable({f"k{i}": b"v" for i in range(20)})
    seen = []
    for k in t:                      # mutating while iterating is allowed
        seen.append(k)
        t.discard(k)
        t[f"new{k}"] = b"n"
    assert len(seen) == 20 and len(t) == 20


def test_str_and_bytes_keys_are_the_same_key():
    t = ResponseTable()
    t[b"BTC-USD"] = b"1"
    assert t["BTC-USD"] == b"1" and t.get(b"BTC-USD") == b"1"
    t["BTC-USD"] = b"2"
    assert len(t) == 1 and t[b"BTC-USD"] == b"2"
    assert t.keys() == ["BTC-USD"]
    assert b"BTC-USD" in t


@pytest.mark.parametrize("key", [
    "", "a" * 65, "a b", "tab\t", "new\nline", "caf\u00e9", "emoji\U0001F600", "q?x", "a@b",
    "pct%", "back\\slash", "quote\"", b"\x00", b"\xff", b"a" * 65, "\r",
], ids=["empty", "65-bytes", "space", "tab", "newline", "non-ascii", "emoji", "question",
        "at", "percent", "backslash", "quote", "nul-bytes", "high-byte", "65-bytes-bytes", "cr"])
def test_invalid_keys(key):
    t = ResponseTable({"ok": b"1"})
    for op in (lambda: t.set(key, b"v"), lambda: t.__setitem__(key, b"v"),
               lambda: t.get(key), lambda: t.entry(key), lambda: t.discard(key),
               lambda: t.update({key: b"v"}), lambda: t.set_json(key, 1),
               lambda: t[key], lambda: t.__delitem__(key)):
        with pytest.raises(InvalidKeyError) as info:
            op()
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, beastnet.BeastnetError)
    assert key not in t                # __contains__ answers False, never raises
    assert dict(t.items()) == {"ok": b"1"}


@pytest.mark.parametrize("key", [1, 1.0, None, ("a",), bytearray(b"a")], ids=repr)
def test_key_wrong_type(key):
    t = ResponseTable()
    with pytest.raises(TypeError):
        t[key] = b"v"
    assert key not in t


def test_key_edge_lengths_and_charset():
    t = ResponseTable()
    keys = ["a", "a" * 64, "A-Z_a.z:0/9", "../..", "-", ".", ":", "/"]
    for k in keys:
        t[k] = k.encode()
    assert sorted(t) == sorted(keys)
    assert all(t[k] == k.encode() for k in keys)


@given(VALID_KEYS)
def test_any_valid_key_roundtrips(key):
    t = ResponseTable()
    t[key] = key.encode()
    assert t[key] == key.encode() and t[key.encode()] == key.encode()
    assert t.keys() == [key]


@given(st.binary(min_size=1, max_size=70))
def test_key_validation_matches_grammar(raw):
    """A bytes key is accepted exactly when it matches [A-Za-z0-9._:/-]{1,64}."""
    import re
    t = ResponseTable()
    valid = re.fullmatch(rb"[A-Za-z0-9._:/-]{1,64}", raw) is not None
    if valid:
        t[raw] = b"v"
        assert raw in t
    else:
        with pytest.raises(InvalidKeyError):
            t[raw] = b"v"
        assert len(t) == 0


def test_update_with_invalid_key_raises_and_publishes_nothing():
    t = ResponseTable({"a": b"1"})
    version = t.entry("a").version
    with pytest.raises(InvalidKeyError):
        t.update([("a", b"new"), ("b", b"2"), ("bad key", b"x")])
    with pytest.raises(TypeError):
        t.update([("a", b"new"), ("c", 3)])
    # checked before anything is published: the table is as it was
    assert dict(t.items()) == {"a": b"1"} and t.entry("a").version == version
    assert len(t) == len(t.keys()) == len(t.items()) == 1


# -- growth and memory -----------------------------------------------------------

def test_growth_with_deletes_and_reinserts():
    t = ResponseTable()
    n = 5000
    for i in range(n):
        t[f"key:{i}"] = b"%d" % i
    assert len(t) == n
    cap = t.memory_stats()["capacity"]
    assert cap >= 2 * n                         # load factor stays <= 1/2
    for i in range(0, n, 2):
        del t[f"key:{i}"]
    assert len(t) == n // 2
    for i in range(0, n, 4):
        t[f"key:{i}"] = b"re%d" % i
    t.update({f"more:{i}": b"m" for i in range(n)})
    expected = {f"key:{i}": (b"re%d" % i if i % 4 == 0 else b"%d" % i)
                for i in range(n) if i % 2 == 1 or i % 4 == 0}
    expected.update({f"more:{i}": b"m" for i in range(n)})
    assert len(t) == len(expected)
    assert dict(t.items()) == expected
    assert all(t[k] == v for k, v in expected.items())
    assert lookup_many(t, list(expected)) == len(expected)      # the native probe agrees
    assert lookup_many(t, [f"key:{i}" for i in range(2, n, 4)]) == 0


def test_churn_of_distinct_keys_does_not_grow_without_bound():
    """Insert-then-delete of ever-new keys leaves tombstones; rebuilds must drop them."""
    t = ResponseTable({"keep": b"1"})
    for i in range(20000):
        t[f"tmp{i}"] = b"x"
        del t[f"tmp{i}"]
    assert len(t) == 1 and t["keep"] == b"1"
    assert t.memory_stats()["capacity"] <= 1024


def test_memory_stats_accounting():
    t = ResponseTable()
    ms = t.memory_stats()
    assert ms["keys"] == 0 and ms["entry_bytes"] == 0 and ms["retired_objects"] == 0
    t["a"] = b"x" * 100
    # struct + content type + the pre-built HTTP head (status line, Server,
    # Content-Type, Content-Length: ~90 bytes that HTTP hits never format)
    overhead = t.memory_stats()["entry_bytes"] - 100
    assert 0 < overhead < 200

    def entry_cost(body_len):               # the head's Content-Length has len(str(n)) digits
        return body_len + overhead - len("100") + len(str(body_len))
    t.update({f"k{i}": b"y" * i for i in range(1, 101)})
    ms = t.memory_stats()
    assert ms["keys"] == 101
    assert ms["entry_bytes"] == entry_cost(100) + sum(entry_cost(i) for i in range(1, 101))
    assert ms["index_bytes"] > ms["capacity"] * 64           # a slot holds a 64-byte key
    # replace and delete: live bytes follow, nothing stays retired without readers
    t["a"] = b"z"
    del t["k100"]
    ms = t.memory_stats()
    assert ms["entry_bytes"] == entry_cost(1) + sum(entry_cost(i) for i in range(1, 100))
    assert ms["retired_objects"] == 0 and ms["retired_bytes"] == 0


def test_reclaim_without_readers_frees_immediately():
    t = ResponseTable({f"k{i}": b"v" for i in range(10)})
    for r in range(50):
        t.update({f"k{i}": b"v%d" % r for i in range(10)})
        assert t.memory_stats()["retired_objects"] == 0
    for i in range(1000):
        t[f"grow{i}"] = b"g"                 # index rebuilds retire whole indexes
        assert t.memory_stats()["retired_bytes"] == 0
    assert t.reclaim() == 0


def test_reclaim_with_idle_running_server_frees(make_server):
    """Idle readers block in recvmmsg offline, so they never hold reclamation back."""
    t = ResponseTable({f"k{i}": b"v" for i in range(10)})
    srv = make_server(t, sockets=2)
    with UDPClient(srv.address) as c:
        for i in range(10):
            assert c.request(b"k%d" % i) == b"v"
    # Once the traffic stops, both readers block in recvmmsg offline; from
    # then on a write's retired entries and indexes are freed by the write itself.
    def writes_reclaimed():
        t.update({f"k{i}": b"w" for i in range(10)})
        for i in range(100):
            t[f"g{i}"] = b"g"               # growth: retires indexes too
        return t.memory_stats()["retired_objects"] == 0
    wait_for(writes_reclaimed, timeout=5, message="retired entries freed with idle readers")
    assert srv.stats()["totals"]["rx_batches"] >= 2
    ms = t.memory_stats()
    assert ms["retired_objects"] == 0 and ms["retired_bytes"] == 0


def test_reclaim_after_traffic_and_stop(make_server):
    t = ResponseTable({f"k{i}": b"v" for i in range(10)})
    srv = make_server(t, sockets=2)
    with UDPClient(srv.address) as c:
        for r in range(20):
            t.update({f"k{i}": b"v%d" % r for i in range(10)})
            assert c.request(b"k3") == b"v%d" % r
    srv.stop()
    assert t.memory_stats()["retired_objects"] == 0     # stop() reclaims


def test_native_lookup_concurrent_with_writers():
    """lookup_many probes without the GIL like a reader; writers replace,
    delete and grow meanwhile.  It must never crash (see ASan run in
    docs/testing.md) and never report a hit for a key that was never set."""
    t = ResponseTable({f"k{i}": b"v" for i in range(64)})
    keys = [f"k{i}" for i in range(64)]
    never = ["absent", "k64", "extra", "k", "k0x"]      # never set: near the real keys
    stop = threading.Event()
    started = threading.Event()
    results = []
    false_hits = []

    def reader():
        while not stop.is_set():
            results.append(lookup_many(t, keys, 200))
            false_hits.append(lookup_many(t, never, 200))
            started.set()

    th = threading.Thread(target=reader)
    th.start()
    try:
        assert started.wait(10)
        for r in range(300):
            t.update({k: b"v%d" % r for k in keys})
            t.discard(f"k{r % 64}")
            t[f"k{r % 64}"] = b"back"
            t[f"extra{r}"] = b"e"
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive()
    assert len(results) >= 2 and all(h <= 64 * 200 for h in results)
    assert sum(false_hits) == 0, false_hits
    assert lookup_many(t, keys) == 64
    t.reclaim()
    assert t.memory_stats()["retired_objects"] == 0


def test_online_native_reader_holds_reclamation():
    """While a native reader is inside one long batch (QSBR-online, no
    quiescent point yet), entries retired by writers must not be freed; once
    it passes its quiescent point, reclaim() frees them all."""
    long_key = b"o" * 64                     # 64-byte keys: each probe hashes 64 bytes
    t = ResponseTable({"hot": b"v0", long_key: b"o"})
    probe = [long_key] * 500_000             # one round: a batch of tens of ms, no quiescent point
    i = 0
    for attempt in range(5):                 # a loaded box may not run the writer in the window
        th = threading.Thread(target=lambda: lookup_many(t, probe, 1))
        th.start()
        held = []
        while th.is_alive():
            i += 1
            t["hot"] = b"v%d" % i            # retires the previous entry
            held.append(t.memory_stats()["retired_objects"])
        th.join(10)
        t.reclaim()                          # the reader has left: everything goes
        assert t.memory_stats()["retired_objects"] == 0
        if max(held, default=0) > 0:
            break
    assert max(held) > 0, "no write was ever held back by the online reader"
    assert t["hot"] == b"v%d" % i


# -- concurrent Python writers ----------------------------------------------------

def test_concurrent_python_writers():
    t = ResponseTable()
    nthreads, rounds = 4, 400
    errors = []
    barrier = threading.Barrier(nthreads)

    def writer(w):
        try:
            barrier.wait()
            for r in range(rounds):
                t[f"own{w}.{r % 50}"] = b"%d:%d" % (w, r)       # private keys
                t["shared"] = b"%d:%d" % (w, r)                  # contended key
                t.update({f"batch{w}.{i}": b"%d" % r for i in range(5)})
                if r % 10 == 0:
                    t.discard(f"own{w}.{(r + 25) % 50}")
                t[f"grow{w}.{r}"] = b"g"                         # forces rebuilds
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    items = dict(t.items())
    assert len(t) == len(items) == len(t.keys())
    for w in range(nthreads):
        for i in range(5):
            assert items[f"batch{w}.{i}"] == b"%d" % (rounds - 1)
        for r in range(rounds):
            assert items[f"grow{w}.{r}"] == b"g"
        last = {}
        for r in range(rounds):
            last[r % 50] = r
            if r % 10 == 0:
                last.pop((r + 25) % 50, None)
        for slot in range(50):
            key = f"own{w}.{slot}"
            if slot in last:
                assert items[key] == b"%d:%d" % (w, last[slot])
            else:
                assert key not in items
    # the globally last write of "shared" is its writer's last round
    w, r = items["shared"].split(b":")
    assert int(r) == rounds - 1 and 0 <= int(w) < nthreads
    versions = [t.entry(k).version for k in items]
    assert len(set(versions)) == len(versions)
    assert t.memory_stats()["retired_objects"] == 0


# -- model-based ----------------------------------------------------------------

MODEL_KEYS = st.sampled_from([f"k{i}" for i in range(12)] + ["a" * 64, "x.y:z/w-v_1"]) | VALID_KEYS
BODIES = st.binary(max_size=40)


class TableMachine(RuleBasedStateMachine):
    """ResponseTable against a dict of key -> (body, content type)."""

    @initialize()
    def setup(self):
        self.table = ResponseTable()
        self.model: dict[str, tuple[bytes, str]] = {}
        self.last_version = 0
        self.versions: dict[str, int] = {}

    def _wrote(self, key):
        v = self.table.entry(key).version
        assert v > self.last_version
        self.last_version = v
        self.versions[key] = v

    @rule(key=MODEL_KEYS, body=BODIES)
    def setitem(self, key, body):
        self.table[key] = body
        self.model[key] = (body, "application/json")
        self._wrote(key)

    @rule(key=MODEL_KEYS, body=st.text(max_size=10),
          ctype=st.sampled_from(["text/plain", "application/octet-stream"]))
    def set_with_type(self, key, body, ctype):
        self.table.set(key.encode(), body, content_type=ctype)
        self.model[key] = (body.encode(), ctype)
        self._wrote(key)

    @rule(obj=st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1), max_size=3), key=MODEL_KEYS)
    def set_json(self, key, obj):
        self.table.set_json(key, obj)
        self.model[key] = (orjson.dumps(obj), "application/json")
        self._wrote(key)

    @rule(pairs=st.lists(st.tuples(MODEL_KEYS, BODIES), max_size=8))
    def update(self, pairs):
        self.table.update(pairs)
        for k, b in pairs:
            self.model[k] = (b, "application/json")
        written = {k: self.table.entry(k).version for k in dict(pairs)}
        # every key of the batch got a fresh version, newer than any before it
        assert all(v > self.last_version for v in written.values())
        assert len(set(written.values())) == len(written)
        if written:
            self.last_version = max(written.values())
        self.versions.update(written)

    @rule(key=MODEL_KEYS)
    def delete(self, key):
        if key in self.model:
            del self.table[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.table[key]

    @rule(key=MODEL_KEYS)
    def discard(self, key):
        assert self.table.discard(key) == (key in self.model)
        self.model.pop(key, None)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def get_existing(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        body, ctype = self.model[key]
        assert self.table[key] == body
        e = self.table.entry(key)
        assert (e.body, e.content_type) == (body, ctype)
        assert e.version == self.versions[key]

    @rule(key=MODEL_KEYS)
    def get_any(self, key):
        expected = self.model.get(key, (None, None))[0]
        assert self.table.get(key) == expected
        assert (key in self.table) == (key in self.model)

    @invariant()
    def same_contents(self):
        assert len(self.table) == len(self.model)
        assert sorted(self.table.keys()) == sorted(self.model)
        assert dict(self.table.items()) == {k: b for k, (b, _) in self.model.items()}
        assert self.table.memory_stats()["retired_objects"] == 0


TestTableStateMachine = TableMachine.TestCase
# Shorter runs in the default profile; dev/thorough keep hypothesis' 50 steps.
if settings.default.max_examples < 100:
    TestTableStateMachine.settings = settings(settings.default, stateful_step_count=20)
