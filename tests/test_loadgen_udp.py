"""The UDP load generator against servers whose behaviour is known: its numbers
must be true.  Every run is short and bounded; each test has a timeout."""
from __future__ import annotations

import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import orjson
import pytest

from beastnet import ResponseTable, UDPServer
from beastnet import _core
from beastnet.loadgen import _native
from beastnet.errors import LoadConfigError, LoadError
from beastnet.loadgen.histogram import BUCKET_LOWER_NS, BUCKET_UPPER_NS, BUCKET_VALUE_NS, Histogram
from beastnet.loadgen import UDPLoadConfig, alias_table, run_udp_load

from _loadgen_servers import BODY, ScriptedUDPServer, tag_of
from support import free_port

WINDOW_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_window_probe.py")

pytestmark = pytest.mark.timeout(60)


def cfg(port: int, **kw) -> UDPLoadConfig:
    base = dict(host="127.0.0.1", port=port, keys=["BTC"], sockets=4, threads=1, window=4,
                duration_s=1.0, warmup_s=0.2, timeout_ms=200)
    base.update(kw)
    return UDPLoadConfig(**base)


def assert_settled(r) -> None:
    """Every measured request ended one way: answered or timed out."""
    assert r.sent == r.received + r.lost, r.to_dict(histogram=False)


# -- the histogram -----------------------------------------------------------------


def test_histogram_relative_error_is_within_one_percent_from_1us_to_60s():
    values = np.unique(np.logspace(3, math.log10(60e9), 20000).astype(np.int64))
    for v in values:
        i = _native.hist_index_of(int(v))
        assert BUCKET_LOWER_NS[i] <= v < BUCKET_UPPER_NS[i]
        assert abs(BUCKET_VALUE_NS[i] - v) / v <= 0.01


def test_histogram_percentiles_of_a_known_distribution():
    counts = np.zeros(len(BUCKET_LOWER_NS), dtype=np.uint64)
    values = np.arange(1, 10001) * 1000             # 1 µs .. 10 ms, uniform
    for v in values:
        counts[_native.hist_index_of(int(v))] += 1
    h = Histogram(counts, len(values), int(values.sum()), int(values.min()), int(values.max()))
    for q in (50, 90, 99, 99.9):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert abs(h.percentile(q) - exact) / exact < 0.01
    assert h.percentile(100) == 10_000_000
    assert math.isnan(Histogram().percentile(50))


# -- against beastnet's own server ------------------------------------------------


@pytest.fixture
def beastnet_server():
    table = ResponseTable()
    table["BTC"] = b'{"price":1}'
    table["ETH"] = b'{"price":2}'
    with UDPServer(table, "127.0.0.1", 0, sockets=2) as server:
        yield server


def test_closed_loop_against_beastnet(beastnet_server):
    port = beastnet_server.address[1]
    r = run_udp_load(cfg(port, keys=["BTC", "ETH"], sockets=8, window=16, duration_s=1.0,
                         timeout_ms=2000))
    assert_settled(r)
    assert r.received > 1000 and r.lost == 0, r.to_dict(histogram=False)
    assert r.late == r.unmatched == r.bad_replies == r.errors == r.error_replies == 0
    assert r.rps > 0 and r.cpu_s > 0
    lat = r.latency_ns
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert r.percentile(99.9) == lat["p99.9"]
    assert len(r.timeline) >= 1 and {"sent", "received", "lost", "p50_ns", "p99_ns"} <= set(r.timeline[0])
    orjson.dumps(r.to_dict())                       # JSON-ready


def test_open_loop_holds_the_rate(beastnet_server):
    port = beastnet_server.address[1]
    r = run_udp_load(cfg(port, rate=5000, sockets=8, duration_s=1.0))
    assert_settled(r)
    assert r.sent == pytest.approx(5000, rel=0.02)
    assert r.received == r.sent and r.unsent == 0


def test_poisson_open_loop(beastnet_server):
    port = beastnet_server.address[1]
    r = run_udp_load(cfg(port, rate=5000, poisson=True, sockets=8, duration_s=1.0))
    assert_settled(r)
    assert r.sent == pytest.approx(5000, rel=0.1)


def test_unknown_key_counts_error_replies(beastnet_server):
    port = beastnet_server.address[1]
    r = run_udp_load(cfg(port, keys=["NOPE"], duration_s=0.3))
    assert r.received > 0 and r.error_replies == r.received and r.ok == 0
    assert r.success_rate == 0.0


def test_max_requests_stops_the_run(beastnet_server):
    port = beastnet_server.address[1]
    # A 2 s reply timeout, as the other exact-count tests: at the 200 ms
    # default a worker starved on the 6-worker suite lost 2 of 3,000.
    r = run_udp_load(cfg(port, max_requests=3000, warmup_s=0, duration_s=10.0, threads=2,
                         timeout_ms=2000))
    assert r.sent == 3000 and r.received == 3000, r.to_dict(histogram=False)
    assert r.duration_s < 10.0              # stopped by the count, not the 10 s duration


# -- numbers that must be true ---------------------------------------------------


def test_delay_of_2ms_shows_as_p50_of_2ms():
    with ScriptedUDPServer(delay_s=0.002) as server:
        r = run_udp_load(cfg(server.port, sockets=2, window=1, duration_s=1.5))
    assert_settled(r)
    assert r.received > 200
    assert r.percentile(50) == pytest.approx(2e6, rel=0.10)
    assert r.latency_ns["p50"] >= 2e6                  # never below the true delay


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendmmsg"])
@pytest.mark.parametrize("rate", [None, 2000], ids=["closed", "open"])
def test_dropping_every_10th_shows_10_percent_loss(rate, gso):
    with ScriptedUDPServer(drop_every=10) as server:
        r = run_udp_load(cfg(server.port, sockets=8, window=8, rate=rate, duration_s=1.5,
                             timeout_ms=100, gso=gso))
    assert r.extra["gso"] == gso
    assert_settled(r)
    assert r.sent > 1000
    assert r.loss_rate == pytest.approx(0.10, abs=0.01)
    assert r.unmatched == 0 and r.bad_replies == 0


def test_one_500ms_stall_shows_in_open_loop_p99_and_max():
    # Open loop keeps sending through the stall and measures from the intended
    # send time, so the requests queued behind the stall carry it.
    with ScriptedUDPServer(stall_at_s=0.8, stall_s=0.5) as server:
        r = run_udp_load(cfg(server.port, rate=1000, sockets=4, duration_s=2.5, warmup_s=0.2,
                             timeout_ms=2000))
        assert server.stalled_at is not None
    assert_settled(r)
    assert r.lost == 0
    assert r.latency_ns["max"] >= 450e6
    assert r.percentile(99) >= 400e6
    assert r.percentile(50) < 50e6


def test_closed_loop_hides_the_same_stall_in_p99():
    # The contrast that motivates open loop: one outstanding request per
    # socket means only a handful of samples see the stall (coordinated omission).
    with ScriptedUDPServer(stall_at_s=0.5, stall_s=0.5) as server:
        r = run_udp_load(cfg(server.port, sockets=1, window=1, duration_s=2.0, warmup_s=0.0,
                             timeout_ms=2000))
    assert r.latency_ns["max"] >= 450e6
    assert r.percentile(99) < 100e6


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendmmsg"])
def test_replies_with_unknown_tags_are_counted_never_matched(gso):
    def replies(data):
        return [tag_of(data) + BODY, b"@ffffffffffff " + BODY, b"@zz " + BODY]
    with ScriptedUDPServer(replies=replies) as server:
        r = run_udp_load(cfg(server.port, duration_s=0.5, warmup_s=0, gso=gso))
        total_requests = server.requests
    assert_settled(r)
    assert r.received == r.sent and r.lost == 0
    # One unknown-but-well-formed tag and one malformed tag per request.
    assert r.unmatched == pytest.approx(r.sent, abs=16)
    assert r.bad_replies == pytest.approx(r.sent, abs=16)
    assert r.sent <= total_requests


def test_duplicate_replies_are_not_matched_twice():
    with ScriptedUDPServer(replies=lambda d: [tag_of(d) + BODY] * 2) as server:
        r = run_udp_load(cfg(server.port, duration_s=0.5, warmup_s=0))
    assert_settled(r)
    assert r.received == r.sent
    assert r.unmatched == pytest.approx(r.sent, abs=16)
    assert r.late == 0


def test_late_replies_are_counted_as_late_and_lost():
    with ScriptedUDPServer(delay_s=0.15) as server:
        r = run_udp_load(cfg(server.port, sockets=2, window=2, duration_s=1.0, warmup_s=0,
                             timeout_ms=50))
    assert_settled(r)
    assert r.received == 0 and r.lost == r.sent > 0
    assert r.late == pytest.approx(r.sent, abs=8)
    assert r.unmatched <= 8


def test_junk_replies_are_bad_replies():
    with ScriptedUDPServer(replies=lambda d: [b"hello there"]) as server:
        r = run_udp_load(cfg(server.port, duration_s=0.5, warmup_s=0, timeout_ms=50))
    assert_settled(r)
    assert r.received == 0 and r.bad_replies > 0 and r.lost == r.sent


def test_warmup_is_excluded():
    """For its first 0.5 s the server answers {"error":"warm"} and 20 ms late;
    the generator's warm-up is 0.7 s, and the server's clock starts at the
    first request's arrival, after the generator's, so every warm answer
    belongs to a request sent in the warm-up.  None may be measured: no
    error reply, and no 20 ms latency, counted."""
    state = {"t0": None, "warm": 0, "after": 0}

    def replies(data):
        now = time.monotonic()
        if state["t0"] is None:
            state["t0"] = now
        if now - state["t0"] < 0.5:
            state["warm"] += 1
            time.sleep(0.02)
            return [tag_of(data) + b'{"error":"warm"}']
        state["after"] += 1
        return [tag_of(data) + BODY]
    with ScriptedUDPServer(replies=replies) as server:
        r = run_udp_load(cfg(server.port, sockets=1, window=1, warmup_s=0.7, duration_s=0.8))
    assert state["warm"] > 0 and state["after"] > 0
    assert r.received > 0 and r.error_replies == 0 and r.ok == r.received
    assert r.histogram.total == r.received              # the same requests as the counts
    # each timeline row (t_start..t) is flagged exactly by whether it overlaps the warm-up
    assert r.timeline and all(row["warmup"] == (row["t_start"] < 0.7) for row in r.timeline)


def test_weighted_keys_follow_the_weights():
    with ScriptedUDPServer() as server:
        run_udp_load(cfg(server.port, keys=["A", "B", "C"], weights=[6, 3, 1], duration_s=0.8,
                         warmup_s=0))
        seen = dict(server.seen)
    total = sum(seen.values())
    assert total > 1000
    assert seen[b"A"] / total == pytest.approx(0.6, abs=0.03)
    assert seen[b"B"] / total == pytest.approx(0.3, abs=0.03)
    assert seen[b"C"] / total == pytest.approx(0.1, abs=0.03)


def test_keys_of_very_different_lengths_fall_back_from_gso():
    keys = ["A", "A" * 40]
    with ScriptedUDPServer() as server:
        r = run_udp_load(cfg(server.port, keys=keys, duration_s=0.3, warmup_s=0))
        seen = dict(server.seen)
    assert r.extra["gso"] is False and r.received > 0 and r.lost == 0
    assert set(seen) == {b"A", b"A" * 40}


def test_gso_requests_are_equal_sized_and_parse():
    from beastnet.loadgen.udp import _gso_tag_digits, _payloads
    payloads = _payloads(["BTC", "ETHUSD", "X"], "key1")
    digits = _gso_tag_digits(payloads)
    sizes = {2 + d + len(p) for d, p in zip(digits, payloads)}
    assert len(sizes) == 1 and min(digits) >= 10 and max(digits) <= 16
    for d, p in zip(digits, payloads):
        status, tag, key, api = _core.parse_request(b"@" + b"0" * (d - 1) + b"7 " + p)
        assert status == "ok" and api == b"key1"


def test_alias_table_is_exact():
    prob, alias = alias_table([1, 0, 3])
    n = 3
    p = [0.0] * n
    for i in range(n):
        keep = prob[i] / 2 ** 32 if prob[i] < 2 ** 32 - 1 else 1.0
        p[i] += keep / n
        p[alias[i]] += (1 - keep) / n
    assert p == pytest.approx([0.25, 0.0, 0.75], abs=1e-6)


def test_api_key_is_sent():
    parsed = []
    with ScriptedUDPServer(replies=lambda d: parsed.append(_core.parse_request(d)) or
                           [tag_of(d) + BODY]) as s:
        r = run_udp_load(cfg(s.port, api_key="k3y", duration_s=0.3, warmup_s=0))
    assert r.received > 0 and len(parsed) == s.requests >= r.received
    # every datagram the server saw: a well-formed request for BTC carrying the key
    assert {(status, key, apikey) for status, _, key, apikey in parsed} == {("ok", b"BTC", b"k3y")}


def test_pinned_threads():
    with ScriptedUDPServer() as server:
        r = run_udp_load(cfg(server.port, threads=2, pin_threads=True, duration_s=0.3,
                             warmup_s=0))
    assert r.received > 0 and r.extra["pin_errors"] == []


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = ScriptedUDPServer(host="::1")
    except OSError:
        pytest.skip("no ::1")
    with server:
        r = run_udp_load(cfg(server.port, host="::1", duration_s=0.3, warmup_s=0))
    assert r.received > 0 and r.lost == 0


# -- bad input and limits --------------------------------------------------------


def test_unreachable_port_counts_refusals_without_crashing():
    port = free_port(kind=socket.SOCK_DGRAM)
    r = run_udp_load(cfg(port, duration_s=0.5, warmup_s=0, timeout_ms=50))
    assert r.received == 0
    assert r.errors_by_kind.get("refused", 0) > 0 and r.errors == sum(r.errors_by_kind.values())
    assert r.success_rate == 0.0


@pytest.mark.parametrize("field,value", [
    ("duration_s", 0), ("duration_s", -1), ("duration_s", float("nan")),
    ("max_requests", 0), ("max_requests", -5), ("rate", 0), ("rate", -10.0),
    ("sockets", 0), ("window", 0), ("threads", 0), ("timeout_ms", 0), ("warmup_s", -1),
    ("batch", 0), ("batch", 5000), ("port", 0), ("keys", []), ("keys", ["bad key"]),
    ("weights", [1, 2]), ("api_key", "has space"),
])
def test_bad_settings_are_clear_errors(field, value):
    c = cfg(9)
    setattr(c, field, value)
    with pytest.raises(LoadConfigError, match=field.split("_")[0] if field != "keys" else "key"):
        run_udp_load(c)


def test_poisson_without_rate_is_an_error():
    with pytest.raises(LoadConfigError):
        run_udp_load(cfg(9, poisson=True))


def test_more_sockets_than_the_fd_limit_is_a_clear_error():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        pytest.skip("no finite hard limit on file descriptors")
    with pytest.raises(LoadError, match="RLIMIT_NOFILE"):
        run_udp_load(cfg(9, sockets=hard + 10))


def test_soft_fd_limit_is_raised_when_permitted():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip("hard limit too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with ScriptedUDPServer() as server:
            r = run_udp_load(cfg(server.port, sockets=400, window=1, duration_s=0.3, warmup_s=0))
        assert r.received > 0
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 400
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_unresolvable_host_is_a_clear_error():
    with pytest.raises(LoadError, match="getaddrinfo"):
        run_udp_load(cfg(9, host="no-such-host.invalid"))


def test_ctrl_c_returns_the_partial_result():
    with ScriptedUDPServer() as server:
        timer = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            r = run_udp_load(cfg(server.port, duration_s=5.0, warmup_s=0.1))
        finally:
            timer.cancel()
    assert r.interrupted
    assert r.received > 0 and r.duration_s < 5.0     # cut short, not the 5 s asked
    assert_settled(r)


def test_no_fd_leak():
    before = len(os.listdir("/proc/self/fd"))
    with ScriptedUDPServer() as server:
        run_udp_load(cfg(server.port, sockets=16, duration_s=0.2, warmup_s=0))
    assert len(os.listdir("/proc/self/fd")) == before


def runnable_s() -> float:
    """Seconds the calling thread has spent on a CPU or waiting for one
    (/proc/.../schedstat): it excludes time blocked, e.g. on the GIL."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        on_cpu, run_wait = f.read().split()[:2]
    return (int(on_cpu) + int(run_wait)) / 1e9


def runnable_share(stop: threading.Event, out: list) -> None:
    """A pure-Python loop until `stop`; appends the share of the wall time it
    was runnable, i.e. not blocked on the GIL (CPU load does not lower it)."""
    t0, r0 = time.monotonic(), runnable_s()
    while not stop.is_set():
        pass
    out.append((runnable_s() - r0) / (time.monotonic() - t0))


def test_one_thread_keeps_a_32_deep_window_on_each_socket_without_the_gil():
    """The server (its own process) answers a socket once 32 of its requests
    are waiting (or, at the end of the run, after a 2 s hold), so the run goes
    on only if one native thread keeps all 64 windows full; it must never see
    a 33rd.  A Python loop meanwhile must be runnable (on a CPU or
    queued for one, not blocked on the GIL) at least half as much of the time
    as the same loop just before, alone; a 99 % GIL hold would leave it 1 %.
    Runnable time is what the scheduler reports, so a busy machine does not
    lower it as it lowers a count of iterations."""
    # The hold is 2 s, not 1: a 4-worker run at load 7.5 once saw one window
    # held twice (the load thread off a CPU for a second, mid-run).
    probe = subprocess.Popen([sys.executable, WINDOW_PROBE, "32", "2.0"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(probe.stdout.readline())                 # type: ignore[union-attr]
        shares: list = []
        stop = threading.Event()
        alone = threading.Thread(target=runnable_share, args=(stop, shares))
        alone.start()                       # the baseline: the same loop, no load run
        time.sleep(0.5)
        stop.set()
        alone.join()
        stop = threading.Event()
        worker = threading.Thread(target=runnable_share, args=(stop, shares))
        worker.start()
        try:
            r = run_udp_load(cfg(port, sockets=64, window=32, threads=1, duration_s=1.0,
                                 warmup_s=0.3, timeout_ms=5000))
        finally:
            stop.set()
            worker.join()
        out, _ = probe.communicate("", timeout=10)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.communicate()
    seen = orjson.loads(out)
    assert r.lost == 0 and r.received > 0
    assert seen["addresses"] == 64 and seen["most_outstanding"] == [32], seen
    # every window went round at full depth, and only the end of the run left
    # one part full: a window that sagged mid-run would wait out the 2 s hold
    assert seen["fewest_batches"] >= 1 and seen["most_held"] <= 1, seen
    baseline, during = shares
    assert during >= 0.5 * baseline, shares
