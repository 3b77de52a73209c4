"""HTTPServer through clients no one here wrote (http.client, urllib, curl)
and a raw socket for what they cannot do (pipelining, malformed requests)."""
from __future__ import annotations

import asyncio
import gc
import http.client
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from beastnet import (Answer, HTTPServer, MissRequest, ResponseTable, ServerError,
                      UDPServer, _core)
from http_helpers import (BODIES, connect, exchange, get, open_fds, read_until_close,
                          split_responses)
from support import requires, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def table():
    t = ResponseTable(BODIES)
    t.set("TXT", "hello", content_type="text/plain; charset=utf-8")
    return t


@pytest.fixture
def server(table):
    seen: list[MissRequest] = []
    release = threading.Event()

    async def handler(request: MissRequest):
        seen.append(request)
        if request.key == "HOLD":           # answers once the test sets srv.release
            for _ in range(2000):
                if release.is_set():
                    break
                await asyncio.sleep(0.005)
            return {"held": True}
        if request.key == "SLOW":
            await asyncio.sleep(0.5)
            return {"slow": True}
        if request.key == "CACHE":
            return Answer({"cached": True}, cache=True)
        if request.key == "LIMIT":
            return Answer({"error": "rate_limited"}, status=429)
        if request.key == "NOAUTH":
            return Answer({"error": "unauthorized"}, status=401)
        if request.key == "BOOM":
            raise RuntimeError("handler bug")
        if request.path == "/admin/echo":
            return {"method": request.method, "query": request.query, "api_key": request.api_key}
        return None

    with HTTPServer(table, threads=2, handler=handler, grace_s=1.0) as srv:
        srv.seen = seen
        srv.release = release
        yield srv
        release.set()


_clients: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def client(server, timeout=5.0):
    host, port = server.address[:2]
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    _clients.append(c)
    return c


# -- hits and the HTTP basics ----------------------------------------------------------

def test_get_hit_with_content_type_and_date(server):
    c = client(server)
    c.request("GET", "/v1/BTC")
    r = c.getresponse()
    assert r.status == 200
    assert r.read() == BODIES["BTC"]
    assert r.getheader("Content-Type") == "application/json"
    assert r.getheader("Content-Length") == str(len(BODIES["BTC"]))
    assert r.getheader("Date").endswith(" GMT")
    c.request("GET", "/v1/TXT")
    r = c.getresponse()
    assert (r.status, r.read(), r.getheader("Content-Type")) == (200, b"hello", "text/plain; charset=utf-8")


def test_keep_alive_reuses_one_connection(server):
    c = client(server)
    for _ in range(50):
        c.request("GET", "/v1/ETH")
        r = c.getresponse()
        assert r.read() == BODIES["ETH"]
    assert server.stats()["totals"]["accepted"] == 1


def test_head_has_no_body(server):
    c = client(server)
    c.request("HEAD", "/v1/BTC")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == str(len(BODIES["BTC"]))
    assert r.read() == b""
    c.request("GET", "/v1/SOL")                 # the connection is still in step
    assert c.getresponse().read() == BODIES["SOL"]


def test_urllib(server):
    with urllib.request.urlopen(server.url + "/v1/BTC", timeout=5) as r:
        assert r.status == 200 and r.read() == BODIES["BTC"]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "/v1/MISSING", timeout=5)
    assert info.value.code == 404
    assert orjson.loads(info.value.read()) == {"error": "not_found"}


@requires("curl")
def test_curl_keepalive_and_http10(server):
    url = server.url + "/v1/BTC"
    out = subprocess.run(["curl", "-s", "-v", url, url], capture_output=True, timeout=10)
    assert out.stdout == BODIES["BTC"] * 2
    assert b"Re-using existing connection" in out.stderr or b"Reusing existing" in out.stderr
    out = subprocess.run(["curl", "-s", "-0", "-i", url], capture_output=True, timeout=10)
    assert out.stdout.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in out.stdout


def test_pipelined_requests_answered_in_order(server):
    keys = ["BTC", "ETH", "SOL", "NOPE", "TXT"] * 20
    payload = b"".join(get(k) for k in keys)
    responses = exchange(server, payload, len(keys))
    assert [r.status for r in responses] == [404 if k == "NOPE" else 200 for k in keys]
    for key, r in zip(keys, responses):
        if key in BODIES:
            assert r.body == BODIES[key]


def test_pipelined_behind_a_slow_miss_stays_in_order(server):
    keys = ["BTC", "SLOW", "ETH", "CACHE", "SOL"]
    responses = exchange(server, b"".join(get(k) for k in keys), len(keys))
    assert [r.status for r in responses] == [200] * 5
    assert [r.body for r in responses] == [BODIES["BTC"], b'{"slow":true}', BODIES["ETH"],
                                           b'{"cached":true}', BODIES["SOL"]]


def test_slow_miss_does_not_block_other_connections(server):
    """Ten hits on another connection are answered while a miss is still
    held by its handler: the order of events, not a stopwatch, shows it."""
    with connect(server) as held:
        held.sendall(get("HOLD"))
        wait_for(lambda: any(r.key == "HOLD" for r in server.seen))
        responses = exchange(server, get("BTC") * 10, 10)
        assert [r.body for r in responses] == [BODIES["BTC"]] * 10
        held.setblocking(False)
        with pytest.raises(BlockingIOError):
            held.recv(4096)                 # the held miss is still unanswered
        server.release.set()
        held.setblocking(True)
        data = b""
        while b'{"held":true}' not in data:
            chunk = held.recv(4096)
            assert chunk
            data += chunk


def test_http10_and_connection_close(server):
    with connect(server) as s:
        s.sendall(b"GET /v1/BTC HTTP/1.0\r\n\r\n")
        data, how = read_until_close(s)
    assert how == "eof" and data.endswith(BODIES["BTC"]) and b"Connection: close" in data
    with connect(server) as s:
        s.sendall(b"GET /v1/BTC HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + get("ETH", version="1.0"))
        data, how = read_until_close(s)
    responses, _ = split_responses(data)
    assert [r.headers.get("connection") for r in responses] == ["keep-alive", "close"]
    with connect(server) as s:
        s.sendall(get("BTC", extra="Connection: close\r\n") + get("ETH"))
        data, how = read_until_close(s)
    responses, rest = split_responses(data)
    assert how == "eof" and len(responses) == 1 and rest == b""


def test_cached_answer_becomes_a_native_hit(server, table):
    c = client(server)
    c.request("GET", "/v1/CACHE")
    assert c.getresponse().read() == b'{"cached":true}'
    assert table.get("CACHE") == b'{"cached":true}'
    before = server.stats()["totals"]["queued"]
    c.request("GET", "/v1/CACHE")
    assert c.getresponse().read() == b'{"cached":true}'
    assert server.stats()["totals"]["queued"] == before


# -- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload,status", [
    (b"GET /v1/BTC HTTP/1.1\r\n\r\n", 400),                       # no Host
    (b"GET /v1/BTC HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    (b"GET v1/BTC HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 413),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
    (b"GET /v1/" + b"A" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2000, 431),  # never ends
])
def test_errors_close_the_connection(server, payload, status):
    with connect(server) as s:
        s.sendall(payload)
        data, how = read_until_close(s)
    responses, _ = split_responses(data)
    assert how in ("eof", "reset")
    assert responses[0].status == status
    assert responses[0].headers["connection"] == "close"
    assert responses[0].headers["content-type"] == "application/json"
    assert "error" in responses[0].json()


def test_errors_that_keep_the_connection(server):
    payload = (get("NOPE") + b"POST /v1/BTC HTTP/1.1\r\nHost: x\r\n\r\n" + get("LIMIT")
               + get("NOAUTH") + get("BOOM") + b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n"
               + get("BTC"))
    responses = exchange(server, payload, 7)
    assert [r.status for r in responses] == [404, 405, 429, 401, 500, 404, 200]
    assert responses[1].headers["allow"] == "GET, HEAD"
    assert responses[2].headers["retry-after"] == "1"
    assert responses[4].json() == {"error": "internal_error"}


def test_api_key_from_header_or_query(server):
    responses = exchange(server, b"GET /admin/echo?a=1&api_key=q123 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /admin/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: h456\r\n\r\n", 2)
    assert responses[0].json() == {"method": "GET", "query": "a=1&api_key=q123", "api_key": "q123"}
    assert responses[1].json()["api_key"] == "h456"


def test_require_api_key_answers_401_natively(table):
    with HTTPServer(table, threads=1, require_api_key=True) as srv:
        responses = exchange(srv, get("BTC") + get("BTC", extra="X-API-Key: k\r\n")
                             + b"GET /v1/BTC?api_key=k HTTP/1.1\r\nHost: x\r\n\r\n", 3)
    assert [r.status for r in responses] == [401, 200, 200]
    assert responses[0].json() == {"error": "unauthorized"}


def test_full_miss_queue_answers_503(table):
    release = threading.Event()

    def handler(request):
        release.wait(5)
        return {"late": True}

    with HTTPServer(table, threads=1, handler=handler, miss_queue_size=1, max_inflight=1) as srv:
        socks = [connect(srv) for _ in range(6)]
        for s in socks:
            s.sendall(get("MISS"))
        time.sleep(0.3)
        busy = 0
        for s in socks:
            s.settimeout(0.2)
            try:
                data = s.recv(4096)
            except socket.timeout:
                continue
            if b" 503 " in data:
                assert b'{"error":"busy"}' in data
                busy += 1
        release.set()
        assert busy >= 3                # one in the handler, two queued (the ring holds >= 2)
        assert srv.stats()["totals"]["queue_drops"] == busy
        for s in socks:
            s.close()


# -- routes to the control plane ------------------------------------------------------------

def test_healthz_metrics_admin(server):
    c = client(server)
    c.request("GET", "/healthz")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b'{"status":"ok"}')
    c.request("GET", "/v1/BTC")
    c.getresponse().read()
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    assert r.getheader("Content-Type").startswith("text/plain")
    hits = re.findall(r'^beastnet_http_hits_total\{thread="(\d+)"\} (\d+)$', text, re.M)
    assert sorted(t for t, _ in hits) == ["0", "1"] and sum(int(v) for _, v in hits) == 1
    assert "# TYPE beastnet_http_accepted_total counter" in text
    assert "# TYPE beastnet_http_active gauge" in text
    c.request("GET", "/admin/stats")
    stats = orjson.loads(c.getresponse().read())
    assert stats["totals"]["hits"] == 1 and stats["threads"] == 2
    c.request("HEAD", "/healthz")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b""
    c.request("POST", "/healthz")
    r = c.getresponse()
    assert (r.status, r.read()) == (405, b'{"error":"method_not_allowed"}')
    c.request("GET", "/admin/unknown")
    r = c.getresponse()
    assert (r.status, r.read()) == (404, b'{"error":"not_found"}')


def test_routes_without_a_handler(table):
    with HTTPServer(table, threads=1) as srv:
        responses = exchange(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + get("NOPE"), 2)
        assert [r.status for r in responses] == [200, 404]
        assert srv.stats()["totals"]["queued"] == 1        # the miss was answered natively


def test_reply_for_a_closed_connection_is_dropped(server):
    with connect(server) as s:
        s.sendall(get("SLOW"))
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 3
    while server.stats()["totals"]["replies_dropped"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = server.stats()["totals"]
    assert totals["replies_dropped"] == 1
    assert exchange(server, get("BTC"), 1)[0].body == BODIES["BTC"]


# -- the engine's contracts ----------------------------------------------------------------

def test_hit_iovecs_point_into_the_entry(table):
    """Zero copy: the head and body iovecs of a hit are the entry's own bytes."""
    info = _core.http_hit_iovecs(table, get("BTC"))
    (head, head_len), (tail, tail_len), (body, body_len) = info["iovecs"]
    assert head == info["entry_head"] and body == info["entry_body"]
    assert body_len == len(BODIES["BTC"])
    info = _core.http_hit_iovecs(table, get("BTC") + get("ETH", method="HEAD"))
    assert len(info["iovecs"]) == 6 and info["iovecs"][5][1] == 0


def test_parser_fields():
    p = _core.http_parse(b"GET /v1/BTC?x=1&api_key=k HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n")
    assert p == {"status": 0, "method": "GET", "target": "/v1/BTC?x=1&api_key=k", "path": "/v1/BTC",
                 "api_key": "k", "keepalive": False, "http10": False, "has_body": False}
    assert _core.http_parse(b"GET / HTTP/1.0\r\n\r\n")["keepalive"] is False
    assert _core.http_parse(b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n")["status"] == 400
    assert _core.http_parse(b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n")["status"] == 400
    assert _core.http_parse(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 50)["status"] == 414


def test_table_updates_seen_by_http(server, table):
    c = client(server)
    for i in range(200):
        table.set("BTC", b'{"v":%d}' % i)
        c.request("GET", "/v1/BTC")
        assert c.getresponse().read() == b'{"v":%d}' % i
    assert table.memory_stats()["retired_objects"] <= 2


def test_ipv6(table):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = HTTPServer(table, "::1", threads=1).start()
    except Exception as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert srv.url.startswith("http://[::1]:")
        with urllib.request.urlopen(srv.url + "/v1/ETH", timeout=5) as r:
            assert r.read() == BODIES["ETH"]
    finally:
        srv.stop()


def test_udp_and_http_share_one_table(table):
    with UDPServer(table, sockets=1) as udp, HTTPServer(table, threads=1) as web:
        table.set("SHARED", b'{"both":1}')
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"SHARED", udp.address)
        assert s.recv(1024) == b'{"both":1}'
        s.close()
        assert exchange(web, get("SHARED"), 1)[0].body == b'{"both":1}'


# -- robustness ------------------------------------------------------------------------------

def test_max_connections_answers_503_and_counts(table):
    with HTTPServer(table, threads=1, max_connections=4) as srv:
        held = [connect(srv) for _ in range(4)]
        for s in held:
            s.sendall(get("BTC"))
            assert BODIES["BTC"] in s.recv(4096)
        extra = connect(srv)
        data, how = read_until_close(extra, 3)
        assert how in ("eof", "reset")
        if data:
            assert data.startswith(b"HTTP/1.1 503") and data.endswith(b'{"error":"busy"}')
        assert srv.stats()["totals"]["rejected"] == 1
        held.pop().close()
        time.sleep(0.1)
        assert exchange(srv, get("ETH"), 1)[0].body == BODIES["ETH"]
        for s in held + [extra]:
            s.close()


def test_header_timeout_closes_slowloris(table):
    with HTTPServer(table, threads=1, header_timeout_s=0.3) as srv:
        with connect(srv) as silent, connect(srv) as drip:
            for ch in b"GET /v1/BTC HTTP/1.1\r\nHost: x\r\n":
                try:
                    drip.send(bytes([ch]))
                except OSError:
                    break
                time.sleep(0.02)
            assert read_until_close(silent, 3)[1] in ("eof", "reset")
            assert read_until_close(drip, 3)[1] in ("eof", "reset")
        totals = srv.stats()["totals"]
        assert totals["header_timeouts"] == 2 and totals["timeouts"] == 2


def test_idle_timeout(table):
    with HTTPServer(table, threads=1, idle_timeout_s=0.3) as srv:
        with connect(srv) as s:
            s.sendall(get("BTC"))
            assert BODIES["BTC"] in s.recv(4096)
            assert read_until_close(s, 3)[1] == "eof"
        assert srv.stats()["totals"]["timeouts"] == 1


def test_client_that_never_reads_is_paused_then_closed(table):
    table.set("BIG", b"x" * 60000)
    with HTTPServer(table, threads=1, max_output_bytes=256 * 1024, write_timeout_s=0.5) as srv:
        s = connect(srv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        sent = 0
        request = get("BIG")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:          # keep asking, never read
            try:
                sent += s.send(request * 50)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        deadline = time.monotonic() + 3
        while srv.stats()["totals"]["write_timeouts"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        totals = srv.stats()["totals"]
        assert totals["read_pauses"] >= 1 and totals["partial_writes"] >= 1
        assert totals["write_timeouts"] == 1 and totals["active"] == 0
        s.close()
        assert exchange(srv, get("BTC"), 1)[0].body == BODIES["BTC"]


def test_reset_by_client_is_counted_not_fatal(table):
    table.set("BIG", b"y" * 200000)
    with HTTPServer(table, threads=1) as srv:
        for _ in range(5):
            s = connect(srv)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(get("BIG") * 20)
            time.sleep(0.02)
            s.close()                                # RST: unread data + linger 0
        time.sleep(0.3)
        totals = srv.stats()["totals"]
        assert totals["econnreset"] + totals["epipe"] >= 1
        assert totals["active"] == 0 and srv.stats()["worker_errors"] == []
        assert exchange(srv, get("BTC"), 1)[0].body == BODIES["BTC"]


def test_stop_drains_within_grace(table):
    release = threading.Event()

    def handler(request):
        release.wait(0.3)
        return {"drained": True}

    srv = HTTPServer(table, threads=1, handler=handler, grace_s=2.0).start()
    idle = connect(srv)
    busy = connect(srv)
    busy.sendall(get("MISS"))
    time.sleep(0.1)
    srv.stop()                              # drained: the answer below, not a stopwatch
    data, how = read_until_close(busy, 2)
    assert how == "eof" and data.endswith(b'{"drained":true}') and b"Connection: close" in data
    assert read_until_close(idle, 2)[1] == "eof"
    totals = srv.stats()["totals"]
    assert totals["active"] == 0 and totals["closed"] == 2
    busy.close()
    idle.close()


def test_stop_with_zero_grace_closes_everything(table):
    srv = HTTPServer(table, threads=2, handler=lambda r: time.sleep(1) or {"late": 1}).start()
    socks = [connect(srv) for _ in range(10)]
    socks[0].sendall(get("MISS"))
    time.sleep(0.1)
    srv.stop(grace_s=0)
    for s in socks:
        assert read_until_close(s, 2)[1] in ("eof", "reset")
        s.close()


def test_no_fd_or_memory_leak_after_20k_connections(table):
    """The unit-run variant of benchmarks/leak_http.py (a million connections)."""
    import resource
    with HTTPServer(table, threads=2) as srv:
        addr = srv.address[:2]
        request = get("BTC", extra="Connection: close\r\n")

        def churn(n):
            for _ in range(n):
                with socket.create_connection(addr, timeout=5) as s:
                    s.sendall(request)
                    while s.recv(4096):
                        pass

        churn(2000)                                  # warm up allocator and tables
        fds_before = open_fds()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        churn(20000)
        time.sleep(0.2)
        fds_after = open_fds()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        totals = srv.stats()["totals"]
    assert fds_after == fds_before
    assert rss_after - rss_before < 20 * 1024          # KiB
    assert totals["accepted"] == totals["closed"] + totals["active"] == 22000
    assert totals["active"] == 0


def test_server_leaves_no_fds_or_threads(table):
    with HTTPServer(table, threads=1):          # uvloop opens a pipe once per process
        pass
    gc.collect()
    before_fds = open_fds()
    before_threads = threading.active_count()
    for _ in range(3):
        with HTTPServer(table, threads=2) as srv:
            exchange(srv, get("BTC"), 1)
    gc.collect()
    assert open_fds() == before_fds
    assert threading.active_count() == before_threads


@requires("wrk")
def test_wrk_short_run(table):
    with HTTPServer(table, threads=2) as srv:
        out = subprocess.run(["wrk", "-t1", "-c20", "-d1s", srv.url + "/v1/BTC"],
                             capture_output=True, text=True, timeout=20)
        totals = srv.stats()["totals"]
    assert out.returncode == 0, out.stderr
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout
    assert totals["hits"] > 1000 and totals["responses_4xx"] == 0 and totals["parse_errors"] == 0


EMFILE_SERVER = r"""
import json, os, resource, sys, time
from beastnet import HTTPServer, ResponseTable
table = ResponseTable({"BTC": b'{"ok":1}'})
io = os.environ.get("BEASTNET_TEST_HTTP_IO", "epoll")
if io == "uring":
    # io_uring reads RLIMIT_NOFILE when it arms the multishot accept (at
    # start), not per connection: lower it before, by what a server takes.
    base = len(os.listdir("/proc/self/fd"))
    with HTTPServer(table, threads=1, io=io):
        taken = len(os.listdir("/proc/self/fd")) - base
    resource.setrlimit(resource.RLIMIT_NOFILE, (base + taken + 4, base + taken + 4))
with HTTPServer(table, threads=1, io=io) as srv:
    nfds = len(os.listdir("/proc/self/fd"))
    if io != "uring":
        resource.setrlimit(resource.RLIMIT_NOFILE, (nfds + 4, nfds + 4))
    print(srv.address[1], flush=True)
    sys.stdin.readline()                      # the test opens connections meanwhile
    tries0, t0 = srv.stats()["totals"]["accept_emfile"], time.monotonic()
    time.sleep(1.0)                           # out of fds: must not spin
    tries = srv.stats()["totals"]["accept_emfile"] - tries0
    window_s = time.monotonic() - t0
    sys.stdin.readline()
    print(json.dumps({"emfile_tries": tries, "window_s": window_s, **srv.stats()["totals"]}),
          flush=True)
"""


def test_emfile_on_accept_is_counted_without_spinning(tmp_path):
    import os
    import sys
    proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        socks = []
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        time.sleep(0.2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        time.sleep(1.2)
        served = 0
        for s in socks[:3]:                     # accepted before the limit: still served
            s.sendall(get("BTC"))
            s.settimeout(2)
            try:
                served += b'{"ok":1}' in s.recv(4096)
            except OSError:
                pass
        for s in socks:
            s.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        totals = orjson.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
    assert totals["accept_emfile"] >= 1
    # paused 100 ms after each EMFILE, not spinning on a readable listener:
    # at most one retry per pause in the window (a spin retries thousands)
    assert totals["emfile_tries"] <= totals["window_s"] / 0.1 + 1, totals
    assert served >= 1


def test_udp_miss_path_after_the_dispatcher_generalisation(table):
    """The shared MissDispatcher still answers UDP misses as before (HTTP fields unused)."""
    seen = []

    def handler(request: MissRequest):
        seen.append((request.protocol, request.method, request.path))
        if request.key == "LIMIT":
            return Answer({"error": "rate_limited"}, status=429)   # UDP sends the body only
        if request.key == "CACHE":
            return Answer({"c": 1}, cache=True)
        if request.key == "BOOM":
            raise RuntimeError("bug")
        return None

    with UDPServer(table, sockets=1, handler=handler) as udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        answers = []
        for key in ("@1 LIMIT", "@2 CACHE", "@3 BOOM", "@4 NOPE"):
            s.sendto(key.encode(), udp.address)
            answers.append(s.recv(1024))
        s.close()
    assert answers == [b'@1 {"error":"rate_limited"}', b'@2 {"c":1}',
                       b'@3 {"error":"internal_error"}', b'@4 {"error":"not_found"}']
    assert table.get("CACHE") == b'{"c":1}'
    assert seen[0] == ("udp", None, None)


def test_405_from_a_route_names_the_allowed_methods(server):
    # RFC 9110 15.5.6: the control plane's 405s carry Allow, as the native ones do.
    responses = exchange(server, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                                 b"PUT /v1/BTC HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 2)
    assert [r.status for r in responses] == [405, 405]
    assert [r.headers.get("allow") for r in responses] == ["GET, HEAD", "GET, HEAD"]


# -- sharing a port ------------------------------------------------------------------

def test_port_held_by_another_server_is_refused_unless_shared(table):
    """Issue 21: a second HTTPServer on an occupied port used to join the
    first one's SO_REUSEPORT group silently and take part of its clients."""
    with HTTPServer(table, threads=2) as first:
        port = first.address[1]
        with pytest.raises(ServerError, match=r"in use by another socket.*reuse_port=True"):
            HTTPServer(table, "127.0.0.1", port, threads=1).start()
        with HTTPServer(table, "127.0.0.1", port, threads=1, reuse_port=True) as second:
            for _ in range(40):             # 40 connections: 40 source ports to hash
                assert [r.status for r in exchange(first, get("BTC"), 1)] == [200]
            wait_for(lambda: first.stats()["totals"]["requests"]
                     + second.stats()["totals"]["requests"] == 40)
            assert second.stats()["totals"]["requests"] > 0


def test_keyed_replies_answer_an_admitted_keys_request_natively():
    """A keyed reply (serve's rendered reports) is answered by the worker for
    that API key only, after the same admission and counting, with no query
    string; anything else still goes to the handler."""
    from beastnet import APIKeyTable, USAGE_ROUTE_NAMES, api_key_id
    from beastnet.http_server import keyed_reply_key
    table = ResponseTable()
    keys = APIKeyTable()
    keys.set("alice-key")
    keys.set("bob-key")
    keys.set("slow-key", qps=0.001, burst=1)
    seen: list[tuple[str, str]] = []

    def handler(request: MissRequest):
        seen.append((request.api_key, request.query))
        return {"from": "handler"}
    with HTTPServer(table, threads=1, handler=handler, miss_prefix="reports/",
                    api_keys=keys, keyed_replies=True) as srv:
        assert srv.keyed_replies is not None
        name = keyed_reply_key(api_key_id("alice-key"), "reports/usage/summary")
        assert name == keyed_reply_key("alice-key", "reports/usage/summary")
        assert name == api_key_id("alice-key")[7:39] + "/reports/usage/summary"
        srv.keyed_replies.set(name, b'{"from":"keyed"}')
        srv.keyed_replies.set(keyed_reply_key("slow-key", "reports/usage/summary"),
                              b'{"from":"keyed"}')
        c = client(srv)

        def ask(path: str, key: str, method: str = "GET") -> tuple[int, bytes]:
            c.request(method, path, headers={"X-API-Key": key})
            r = c.getresponse()
            return r.status, r.read()
        assert ask("/v1/reports/usage/summary", "alice-key") == (200, b'{"from":"keyed"}')
        assert ask("/v1/reports/usage/summary", "alice-key", "HEAD") == (200, b"")
        assert seen == []
        assert ask("/v1/reports/usage/summary", "bob-key") == (200, b'{"from":"handler"}')
        assert ask("/v1/reports/usage/summary?from=1", "alice-key")[1] == b'{"from":"handler"}'
        assert ask("/v1/reports/usage", "alice-key")[1] == b'{"from":"handler"}'
        assert seen == [("bob-key", ""), ("alice-key", "from=1"), ("alice-key", "")]
        # Admission comes first: a limited key is refused, a revoked one too.
        assert ask("/v1/reports/usage/summary", "slow-key")[0] == 200
        assert ask("/v1/reports/usage/summary", "slow-key")[0] == 429
        keys.revoke("slow-key")
        assert ask("/v1/reports/usage/summary", "slow-key")[0] == 401
        totals = srv.stats()["totals"]
        assert totals["keyed_hits"] == 3 and totals["hits"] == 3 and totals["queued"] == 3
        # Counted as requests of the report route, keyed or not: (admitted,
        # unauthorized, rate_limited, over_quota).
        route = USAGE_ROUTE_NAMES.index(("http", "report"))
        for key, want in (("alice-key", (4, 0, 0, 0)), ("slow-key", (1, 1, 1, 0))):
            counts, _ = keys.usage_counts(key)
            assert counts[key][route * 4:route * 4 + 4] == want, key
        srv.keyed_replies.discard(name)         # the reply removed: the handler again
        assert ask("/v1/reports/usage/summary", "alice-key")[1] == b'{"from":"handler"}'
    with pytest.raises(ValueError, match="not a table key"):
        keyed_reply_key("alice-key", "reports/" + "x" * 30)
    with pytest.raises(ValueError, match="keyed_replies needs api_keys"):
        HTTPServer(table, threads=1, keyed_replies=True)


def test_miss_prefix_sends_the_handler_only_its_misses():
    """serve's reports handler takes misses under reports/usage only: every
    other miss is a native 404, never queued to the control plane."""
    table = ResponseTable()
    table.set("BTC", b'{"asset":"BTC"}')
    seen: list[str] = []

    def handler(request: MissRequest):
        seen.append(request.path)
        return {"report": request.key}

    with HTTPServer(table, threads=1, handler=handler, miss_prefix="reports/usage") as srv:
        c = client(srv)
        for path, status in (("/v1/NOPE", 404), ("/v1/reports", 404), ("/v1/reportsX/usage", 404),
                             ("/v1/reports/usage/summary", 200), ("/v1/BTC", 200),
                             ("/v1/reports/usag", 404), ("/v1/reports/usage", 200)):
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            assert r.status == status, path
        assert seen == ["/v1/reports/usage/summary", "/v1/reports/usage"]
        totals = srv.stats()["totals"]
        assert totals["queued"] == 2 and totals["misses"] == 6
    with pytest.raises(ValueError, match="miss_prefix"):
        HTTPServer(table, threads=1, handler=handler, miss_prefix="x" * 4096).start()
