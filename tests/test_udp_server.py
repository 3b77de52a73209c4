"""UDPServer: lifecycle, options (sockets, batch, buffers, CPU steering),
counters, and the miss path through the Python control plane."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest
import uvloop

from beastnet import Answer, MissRequest, ResponseTable, ServerError, UDPServer
from conftest import SMALL_KEYS
from support import (BAD_REQUEST, BUSY, INTERNAL_ERROR, NOT_FOUND, UDPClient, counter_invariants,
                     native_thread_count, open_fds, quiet_native_thread_count, settled_stats,
                     wait_for)

pytestmark = pytest.mark.timeout(30)

NCPU = len(os.sched_getaffinity(0))
STOP_BUDGET_S = 0.200


def timed_stop(srv: UDPServer) -> float:
    t0 = time.monotonic()
    srv.stop()
    return time.monotonic() - t0


def port_is_free(address) -> bool:
    """Bind the exact address without SO_REUSEPORT: works only once every
    server socket on it is closed."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind(address[:2])
            return True
        except OSError:
            return False


# -- lifecycle -------------------------------------------------------------------

def test_context_manager_serves_then_releases_everything(small_table):
    fds0, threads0 = len(open_fds()), quiet_native_thread_count()
    with UDPServer(small_table, sockets=2) as srv:
        assert srv.address[0] == "127.0.0.1" and srv.address[1] > 0
        assert native_thread_count() == threads0 + 2        # one native reader per socket
        assert len(open_fds()) >= fds0 + 2
        with UDPClient(srv.address) as c:
            assert c.request(b"k3") == SMALL_KEYS["k3"]
        address = srv.address
        assert not port_is_free(address)
    assert quiet_native_thread_count() == threads0         # readers joined
    assert len(open_fds()) == fds0                         # sockets and eventfds closed
    assert port_is_free(address)


@pytest.mark.parametrize("with_handler", [False, True], ids=["native-only", "handler"])
def test_stopped_server_holds_no_fds_regression(small_table, with_handler):
    """Regression: a stopped server kept its engine's eventfds (stop and miss)
    open until the server object was garbage-collected."""
    fds0 = open_fds()
    srv = UDPServer(small_table, sockets=2, handler=(lambda r: None) if with_handler else None)
    srv.start()
    srv.stop()
    assert open_fds() == fds0               # `srv` is still alive here
    assert srv.stats()["totals"]["rx_packets"] == 0       # counters survive stop()


def test_context_manager_stops_on_exception(small_table):
    with pytest.raises(ZeroDivisionError):
        with UDPServer(small_table, sockets=1) as srv:
            address = srv.address
            1 / 0
    assert port_is_free(address)


def test_start_returns_self_and_stop_is_idempotent(small_table):
    srv = UDPServer(small_table, sockets=2)
    srv.stop()                                  # never started: a no-op
    assert srv.start() is srv
    assert timed_stop(srv) < STOP_BUDGET_S
    assert timed_stop(srv) < STOP_BUDGET_S       # again: no-op
    srv.stop()


def test_start_twice_raises(small_table):
    srv = UDPServer(small_table, sockets=1).start()
    try:
        with pytest.raises(ServerError):
            srv.start()
        with UDPClient(srv.address) as c:         # the first start is unharmed
            assert c.request(b"k1") == SMALL_KEYS["k1"]
    finally:
        srv.stop()
    srv.start()                                   # a stopped server starts again
    try:
        with UDPClient(srv.address) as c:
            assert c.request(b"k1") == SMALL_KEYS["k1"]
        assert srv.stats()["totals"]["hits"] == 1  # a new engine: fresh counters
    finally:
        srv.stop()


def test_address_before_start_raises(small_table):
    with pytest.raises(ServerError):
        UDPServer(small_table).address


def test_stats_before_start(small_table):
    s = UDPServer(small_table, sockets=2).stats()
    assert s["totals"] == {} and s["per_socket"] == [] and s["avg_batch_fill"] == 0.0


def test_stop_is_fast_idle_and_after_traffic(make_server, make_client, small_table):
    srv = make_server(small_table, sockets=2)
    assert timed_stop(make_server(small_table, sockets=2)) < STOP_BUDGET_S   # idle
    c = make_client(srv.address)
    for _ in range(200):
        c.send(b"k1")
    c.recv_many(200)
    assert timed_stop(srv) < STOP_BUDGET_S


def test_stop_is_fast_under_load(small_table):
    """stop() while a client thread floods the server: readers are busy in
    recvmmsg/sendmmsg, not in poll(), and must still leave promptly."""
    srv = UDPServer(small_table, sockets=2).start()
    done = threading.Event()

    def flood():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not done.is_set():
                for _ in range(64):
                    s.sendto(b"@x k1", srv.address)
    th = threading.Thread(target=flood)
    th.start()
    try:
        wait_for(lambda: srv.stats()["totals"]["rx_packets"] > 2000, message="load")
        elapsed = timed_stop(srv)
    finally:
        done.set()
        th.join(5)
    assert elapsed < STOP_BUDGET_S
    assert srv.stats()["reader_errors"] == []


def test_stop_is_fast_with_inflight_async_handler(small_table):
    release = threading.Event()

    async def slow(req):
        while not release.is_set():
            await asyncio.sleep(0.005)
        return b"late"

    srv = UDPServer(small_table, sockets=2, handler=slow).start()
    try:
        with UDPClient(srv.address) as c:
            for i in range(20):
                c.send(b"miss%d" % i)
            wait_for(lambda: srv.stats()["totals"]["handler_calls"] == 20, message="calls")
            elapsed = timed_stop(srv)
            assert c.expect_silence(0.1) is None        # cancelled: no reply after stop
    finally:
        release.set()
        srv.stop()
    assert elapsed < STOP_BUDGET_S


def test_stop_with_queued_misses_calls_no_handler_regression(small_table):
    """Regression: stopping with misses still queued behind a busy async
    handler used to pop them during shutdown, call the handler, and leave
    tasks 'destroyed but pending'."""
    calls = []
    release = threading.Event()

    async def slow(req):
        calls.append(req.key)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return b"late"

    srv = UDPServer(small_table, sockets=1, handler=slow, max_inflight=1,
                    miss_queue_size=8).start()
    try:
        with UDPClient(srv.address) as c:
            for i in range(6):
                c.send(b"m%d" % i)
            wait_for(lambda: srv.stats()["totals"]["queued"] == 6 and calls, message="6 queued")
            assert calls == ["m0"]
            srv.stop()
    finally:
        release.set()
        srv.stop()
    assert calls == ["m0"]


def test_failed_bind_cleans_up(small_table):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))            # no SO_REUSEPORT: the port is taken
        srv = UDPServer(small_table, "127.0.0.1", squatter.getsockname()[1], sockets=2)
        with pytest.raises(ServerError, match="bind"):
            srv.start()
        srv.stop()
    # the leak check verifies no socket or thread survived the failed start


def test_port_held_by_a_reuseport_socket_is_refused_unless_shared(small_table):
    """Issue 21: a foreign SO_REUSEPORT holder (another beastnet server) must
    not be joined silently; reuse_port=True joins it on purpose."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        srv = UDPServer(small_table, "127.0.0.1", port, sockets=2)
        with pytest.raises(ServerError, match=r"in use by another socket.*reuse_port=True"):
            srv.start()
        srv.stop()
        with UDPServer(small_table, "127.0.0.1", port, sockets=2, cpu_steering=False,
                       reuse_port=True) as shared:
            assert shared.address[1] == port


def test_exclusive_server_is_joined_only_on_purpose(small_table):
    """The first server binds exclusively, yet a second one asking for
    reuse_port=True joins its group and the kernel splits the traffic."""
    with UDPServer(small_table, "127.0.0.1", 0, sockets=2, cpu_steering=False) as first:
        port = first.address[1]
        with pytest.raises(ServerError, match="reuse_port=True"):
            UDPServer(small_table, "127.0.0.1", port, sockets=1).start()
        with UDPServer(small_table, "127.0.0.1", port, sockets=1, reuse_port=True) as second:
            clients = [UDPClient(first.address) for _ in range(48)]
            try:
                for i, c in enumerate(clients):
                    assert c.request(b"@%d k1" % i) == b"@%d " % i + SMALL_KEYS["k1"]
            finally:
                for c in clients:
                    c.close()
            wait_for(lambda: first.stats()["totals"]["rx_packets"]
                     + second.stats()["totals"]["rx_packets"] == 48)
            assert second.stats()["totals"]["rx_packets"] > 0


def test_serve_forever_returns_when_stopped(small_table):
    srv = UDPServer(small_table, sockets=1)
    done = threading.Event()
    runner = threading.Thread(target=lambda: (srv.serve_forever(), done.set()))
    runner.start()
    wait_for(lambda: srv._running)
    with UDPClient(srv.address) as c:
        assert c.request(b"@1 k1") == b"@1 " + SMALL_KEYS["k1"]
    assert not done.is_set()
    srv.stop()
    runner.join(5.0)
    assert done.is_set() and not srv._running


def test_concurrent_stops_join_the_readers_once(small_table):
    """stop() from a timer while serve_forever() returns used to join the
    reader threads twice at once and hang."""
    srv = UDPServer(small_table, sockets=2).start()
    stoppers = [threading.Thread(target=srv.stop) for _ in range(4)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(5.0)
    assert not any(t.is_alive() for t in stoppers)
    assert port_is_free(srv.address)


@pytest.mark.parametrize("kwargs,exc", [
    ({"sockets": 0}, ValueError),
    ({"batch": 0}, ValueError),
    ({"batch": 1025}, ValueError),
    ({"miss_queue_size": 0}, ValueError),
], ids=["sockets-0", "batch-0", "batch-1025", "queue-0"])
def test_invalid_options(small_table, kwargs, exc):
    with pytest.raises(exc):
        UDPServer(small_table, **kwargs)


@pytest.mark.parametrize("max_datagram", [63, 65537])
def test_invalid_max_datagram_fails_start_cleanly(small_table, max_datagram):
    srv = UDPServer(small_table, sockets=2, max_datagram=max_datagram)
    with pytest.raises(ValueError, match="max_datagram"):
        srv.start()
    srv.stop()


def test_table_type_checked():
    with pytest.raises(TypeError):
        UDPServer({"k": b"v"})                      # type: ignore[arg-type]


def test_unresolvable_host():
    with pytest.raises(OSError):
        UDPServer(ResponseTable(), "no-such-host.invalid", sockets=1).start()


# -- options -----------------------------------------------------------------------

def test_default_sockets_one_per_cpu(make_server, small_table):
    srv = make_server(small_table, sockets=None)
    s = srv.stats()
    assert s["sockets"] == NCPU and len(s["per_socket"]) == NCPU


@pytest.mark.parametrize("nsockets", [1, 3, 4])
def test_n_sockets_share_the_port(make_server, small_table, nsockets):
    srv = make_server(small_table, sockets=nsockets, cpu_steering=False)
    clients = [UDPClient(srv.address) for _ in range(24)]   # distinct source ports
    try:
        for i, c in enumerate(clients):
            key = f"k{i % 10}"
            assert c.request(b"@%d " % i + key.encode()) == b"@%d " % i + SMALL_KEYS[key]
    finally:
        for c in clients:
            c.close()
    s = settled_stats(srv, 24)
    per = s["per_socket"]
    assert len(per) == nsockets and len(s["buffers"]["recv_granted"]) == nsockets
    assert sum(p["rx_packets"] for p in per) == s["totals"]["rx_packets"] == 24
    if nsockets > 1:
        # the kernel's reuseport hash spreads 24 source ports over the group
        assert sum(1 for p in per if p["rx_packets"]) >= 2


@pytest.mark.parametrize("batch", [1, 4, 32])
def test_batch_option(make_server, make_client, small_table, batch):
    srv = make_server(small_table, sockets=1, batch=batch)
    c = make_client(srv.address)
    for i in range(100):
        c.send(b"k%d" % (i % 10))
    assert len(c.recv_many(100)) == 100
    s = settled_stats(srv, 100)
    t = s["totals"]
    assert s["batch"] == batch
    assert t["rx_batches"] >= -(-100 // batch)      # never more than `batch` per recvmmsg
    assert s["avg_batch_fill"] == pytest.approx(t["rx_packets"] / t["rx_batches"])
    assert 1.0 <= s["avg_batch_fill"] <= batch
    if batch == 1:
        assert t["rx_batches"] == t["rx_packets"] == 100


def _expected_grant(requested: int, which: str) -> set:
    with open(f"/proc/sys/net/core/{which}mem_max") as f:
        limit = int(f.read())
    # The kernel doubles the value for bookkeeping; without CAP_NET_ADMIN the
    # request is capped at net.core.[rw]mem_max.
    return {2 * requested, 2 * min(requested, limit)}


@pytest.mark.parametrize("req", [None, 1 << 20], ids=["default-32MiB", "1MiB"])
def test_buffer_sizes_requested_and_reported(make_server, small_table, req):
    kwargs = {} if req is None else {"recv_buffer_bytes": req, "send_buffer_bytes": req}
    srv = make_server(small_table, sockets=2, **kwargs)
    b = srv.stats()["buffers"]
    want = req or 32 * 1024 * 1024
    assert b["recv_requested"] == want and b["send_requested"] == want
    assert len(b["recv_granted"]) == len(b["send_granted"]) == 2
    for g in b["recv_granted"]:
        assert g in _expected_grant(want, "r")
    for g in b["send_granted"]:
        assert g in _expected_grant(want, "w")


def test_steering_on_by_default_with_one_socket_per_cpu(make_server, make_client, small_table):
    srv = make_server(small_table, sockets=NCPU)
    st = srv.stats()["steering"]
    allowed = sorted(os.sched_getaffinity(0))
    if allowed != list(range(len(allowed))):
        assert st["enabled"] is False and "CPU set" in st["reason"]
        return
    if not st["enabled"]:                                   # kernel refused: must say so
        assert st["reason"].startswith("SO_ATTACH_REUSEPORT_CBPF")
        pytest.skip(f"steering not permitted here: {st['reason']}")
    assert st == {"enabled": True, "reason": "ok", "cpus": allowed}
    assert "pin_errors" not in st
    c = make_client(srv.address)
    for i in range(20):
        assert c.request(b"k%d" % (i % 10)) == SMALL_KEYS[f"k{i % 10}"]


def test_steering_disabled_by_option(make_server, small_table):
    st = make_server(small_table, sockets=NCPU, cpu_steering=False).stats()["steering"]
    assert st["enabled"] is False and st["reason"] == "disabled"


def test_steering_off_with_reason_when_sockets_differ_from_cpus(make_server, make_client,
                                                                small_table):
    srv = make_server(small_table, sockets=NCPU + 1)
    st = srv.stats()["steering"]
    assert st["enabled"] is False
    assert f"{NCPU + 1} sockets for {NCPU} CPUs" in st["reason"]
    assert make_client(srv.address).request(b"k0") == SMALL_KEYS["k0"]   # still serves


# -- counters ----------------------------------------------------------------------

ISSUE_COUNTERS = ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_batches", "tx_batches",
                  "hits", "misses", "bad_requests", "send_errors", "kernel_drops", "queue_drops",
                  "handler_calls", "handler_errors"]


def test_counters_exact_and_derivable(make_server, make_client, small_table):
    async def handler(req):
        return None if req.key == "none" else {"m": req.key}

    srv = make_server(small_table, sockets=2, handler=handler)
    c = make_client(srv.address)
    hits = [b"k%d" % i for i in range(10)] * 3
    misses = [b"@m%d zz%d" % (i, i) for i in range(7)] + [b"none"]
    bad = [b"", b"k1 ", b"\xff", b"x" * 600, b"@" + b"t" * 17 + b" k1"]
    for d in hits + misses + bad:
        c.request(d)
    s = settled_stats(srv, len(hits) + len(misses) + len(bad))
    t = s["totals"]
    assert set(ISSUE_COUNTERS) <= set(t)
    assert (t["hits"], t["misses"], t["bad_requests"]) == (30, 8, 5)
    assert (t["truncated"], t["empty"], t["queued"], t["not_found"]) == (1, 1, 8, 0)
    assert (t["handler_calls"], t["handler_errors"], t["miss_replies"]) == (8, 0, 8)
    assert t["tx_packets"] == 35                        # native replies: hits + bad
    assert t["rx_bytes"] == sum(min(len(d), 512) for d in hits + misses + bad)
    assert t["tx_bytes"] == sum(len(SMALL_KEYS[d.decode()]) for d in hits) + 5 * len(BAD_REQUEST)
    assert s["avg_batch_fill"] == pytest.approx(t["rx_packets"] / t["rx_batches"])
    assert counter_invariants(t) == []
    for name in t:
        if name in s["per_socket"][0]:
            assert t[name] == sum(p[name] for p in s["per_socket"]), name
    assert s["uptime_s"] > 0


def test_counters_without_handler(make_server, make_client, small_table):
    srv = make_server(small_table, sockets=1)
    c = make_client(srv.address)
    assert c.request(b"@a nope") == b"@a " + NOT_FOUND
    assert c.request(b"k2") == SMALL_KEYS["k2"]
    t = settled_stats(srv, 2)["totals"]
    assert (t["hits"], t["misses"], t["not_found"], t["queued"]) == (1, 1, 1, 0)
    assert "handler_calls" not in t
    assert counter_invariants(t) == []


def test_hits_see_table_updates_immediately(make_server, make_client):
    t = ResponseTable({"k": b"v0"})
    srv = make_server(t, sockets=2)
    c = make_client(srv.address)
    for i in range(50):
        t["k"] = b"v%d" % i
        assert c.request(b"k") == b"v%d" % i
    del t["k"]
    assert c.request(b"k") == NOT_FOUND
    t["new"] = b"n"
    assert c.request(b"new") == b"n"


# -- miss path ---------------------------------------------------------------------

def test_sync_handler(make_server, make_client, small_table):
    seen = []

    def handler(req):
        seen.append((req.key, req.api_key, req.tag, req.protocol))
        assert isinstance(req, MissRequest)
        return {"dict": req.key} if req.key == "d" else (b"bytes" if req.key == "b" else "str\u00e9")

    srv = make_server(small_table, handler=handler)
    c = make_client(srv.address)
    assert c.request(b"@t1 d") == b'@t1 {"dict":"d"}'
    assert c.request(b"b apikey!") == b"bytes"
    assert c.request(b"s\r\n") == "str\u00e9".encode()
    assert c.request(b"k1") == SMALL_KEYS["k1"]           # hits never reach the handler
    assert seen == [("d", None, "t1", "udp"), ("b", "apikey!", None, "udp"), ("s", None, None, "udp")]
    assert "MissRequest(key='d'" in repr(MissRequest("d", None, None, "udp", b"", 0))


def test_async_handler_runs_on_uvloop(make_server, make_client, small_table):
    loops = []

    async def handler(req):
        loops.append(type(asyncio.get_running_loop()))
        await asyncio.sleep(0.001)
        return Answer({"async": req.key})

    srv = make_server(small_table, handler=handler)
    c = make_client(srv.address)
    assert c.request(b"@z q") == b'@z {"async":"q"}'
    assert loops == [uvloop.Loop]


def test_handler_returning_none_is_not_found(make_server, make_client, small_table):
    srv = make_server(small_table, handler=lambda req: None)
    c = make_client(srv.address)
    assert c.request(b"@n none") == b"@n " + NOT_FOUND
    assert c.request(b"none") == NOT_FOUND


@pytest.mark.parametrize("kind", ["sync", "async", "unencodable"])
def test_handler_error_is_internal_error_and_counted(make_server, make_client, small_table,
                                                     kind, caplog):
    def sync(req):
        raise RuntimeError("boom")

    async def async_(req):
        raise RuntimeError("boom")

    handler = {"sync": sync, "async": async_, "unencodable": lambda req: object()}[kind]
    srv = make_server(small_table, handler=handler)
    c = make_client(srv.address)
    with caplog.at_level("ERROR", logger="beastnet"):
        assert c.request(b"@e x") == b"@e " + INTERNAL_ERROR
        assert c.request(b"y") == INTERNAL_ERROR
        assert c.request(b"k1") == SMALL_KEYS["k1"]        # the server keeps serving
    t = settled_stats(srv, 3)["totals"]
    assert t["handler_errors"] == 2 and t["handler_calls"] == 2
    assert srv._dispatcher.last_error is not None
    assert any("miss handler raised" in r.getMessage() for r in caplog.records)


def test_answer_cache_makes_next_request_a_native_hit(make_server, make_client, small_table):
    calls = []

    def handler(req):
        calls.append(req.key)
        return Answer({"computed": req.key}, cache=True, content_type="application/x-test")

    srv = make_server(small_table, handler=handler)
    c = make_client(srv.address)
    assert c.request(b"@1 fresh") == b'@1 {"computed":"fresh"}'
    assert c.request(b"@2 fresh") == b'@2 {"computed":"fresh"}'
    assert c.request(b"fresh") == b'{"computed":"fresh"}'
    assert calls == ["fresh"]
    assert small_table.entry("fresh").content_type == "application/x-test"
    t = settled_stats(srv, 3)["totals"]
    assert (t["misses"], t["hits"], t["miss_cached"]) == (1, 2, 1)


def test_answer_without_cache_calls_handler_each_time(make_server, make_client, small_table):
    calls = []

    def handler(req):
        calls.append(req.key)
        return Answer(b"once")

    srv = make_server(small_table, handler=handler)
    c = make_client(srv.address)
    for _ in range(3):
        assert c.request(b"k") == b"once"
    assert calls == ["k"] * 3 and "k" not in small_table


def test_full_queue_answers_busy_and_counts_drops(make_server, make_client, small_table):
    release = threading.Event()

    async def slow(req):
        while not release.is_set():
            await asyncio.sleep(0.005)
        return {"done": req.key}

    srv = make_server(small_table, sockets=1, handler=slow, miss_queue_size=2, max_inflight=1)
    c = make_client(srv.address)
    c.send(b"@0 m0")
    wait_for(lambda: srv.stats()["totals"]["handler_inflight"] == 1, message="first call")
    for i in range(1, 6):
        c.send(b"@%d m%d" % (i, i))           # 2 fit the queue, 3 are refused
    busy = sorted(c.recv_many(3))
    assert busy == [b"@3 " + BUSY, b"@4 " + BUSY, b"@5 " + BUSY]
    # counters are bumped just after the replies go out: poll for them
    wait_for(lambda: srv.stats()["totals"]["queue_drops"] == 3, message="drops counted")
    t = srv.stats()["totals"]
    assert (t["queue_drops"], t["queued"], t["handler_calls"]) == (3, 3, 1)
    assert c.request(b"k1") == SMALL_KEYS["k1"]      # hits unaffected by the full queue
    release.set()
    done = sorted(c.recv_many(3))
    assert done == [b'@0 {"done":"m0"}', b'@1 {"done":"m1"}', b'@2 {"done":"m2"}']
    t = settled_stats(srv, 7)["totals"]
    assert t["handler_calls"] == 3 and t["miss_replies"] == 3
    assert counter_invariants(t) == []


@pytest.mark.parametrize("kind", ["sync-blocking", "async-slow"])
def test_slow_handler_does_not_block_hits(make_server, make_client, small_table, kind):
    release = threading.Event()

    def blocking(req):
        release.wait(10)
        return b"slow"

    async def slow(req):
        while not release.is_set():
            await asyncio.sleep(0.005)
        return b"slow"

    srv = make_server(small_table, handler=blocking if kind == "sync-blocking" else slow)
    c = make_client(srv.address)
    try:
        c.send(b"@s miss")
        wait_for(lambda: srv.stats()["totals"]["handler_calls"] == 1, message="handler entered")
        t0 = time.monotonic()
        for i in range(200):
            assert c.request(b"@%d k%d" % (i, i % 10), timeout=2) == \
                b"@%d " % i + SMALL_KEYS[f"k{i % 10}"]
        assert time.monotonic() - t0 < 10           # not a benchmark: hits did not wait
        assert srv.stats()["totals"]["handler_inflight"] in (0, 1)
    finally:
        release.set()
    assert c.recv() == b"@s slow"


def test_miss_reply_reaches_ipv6_client(make_server, make_client, small_table):
    from conftest import HAS_IPV6
    if not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    srv = make_server(small_table, "::1", handler=lambda req: {"v6": req.key})
    c = make_client(srv.address)
    assert c.request(b"@6 q") == b'@6 {"v6":"q"}'
    assert c.request(b"@6 k1") == b"@6 " + SMALL_KEYS["k1"]


@pytest.mark.timeout(20)
def test_running_engine_collected_after_its_sockets_closed_regression():
    """A reader blocked in recvmmsg is woken by shutdown() on the engine's own
    duplicate of the socket, even when the caller already closed the original
    (this used to hang pthread_join forever)."""
    import gc
    import socket as socket_module

    from beastnet import ResponseTable, _core

    table = ResponseTable({"A": b"1"})
    sock = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    native_before = native_thread_count()
    engine = _core.UDPEngine(table, [sock.fileno()])
    engine.start()
    sock.close()
    assert native_thread_count() == native_before + 1
    del engine
    gc.collect()
    # dropping the last reference joined the reader: it is gone, not leaked
    wait_for(lambda: native_thread_count() == native_before, timeout=5)
