"""Regression tests for what the loopback attacks broke (issue 9): output
memory per slow reader, the write-progress rule, requests that never got an
answer, the 503 at max_connections, and stop() with half-sent heads."""
from __future__ import annotations

import socket
import time

import pytest

from beastnet import HTTPServer, ResponseTable
from http_helpers import (BODIES, connect, exchange, get, read_until_close, rss_kb,
                          split_responses)

pytestmark = pytest.mark.timeout(120)


def totals(server) -> dict:
    return server.stats()["totals"]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def slow_client(server, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(server.address[:2])
    return sock


def read_response(sock: socket.socket, body_len: int) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed before the whole answer"
        data += chunk
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0 and len(data) >= head_end + 4 + body_len:
            return data[head_end + 4:]


# -- 1. output memory: references to entries, not copies -------------------------------------

def test_slow_readers_of_a_big_entry_cost_references_not_copies_regression():
    """20 clients asking once for an 8 MiB entry and not reading used to hold
    a copy each of what the kernel did not take (~100 MB here)."""
    body = bytes(range(256)) * (8 << 12)            # 8 MiB
    table = ResponseTable({"BIG": body})
    with HTTPServer(table, threads=1) as server:
        before = rss_kb()
        clients = [slow_client(server) for _ in range(20)]
        try:
            for sock in clients:
                sock.sendall(get("BIG"))
            assert wait_for(lambda: totals(server)["partial_writes"] >= 20, 20.0)
            time.sleep(0.3)
            grown_mb = (rss_kb() - before) / 1024
            assert grown_mb < 40, f"RSS grew {grown_mb:.0f} MB for 20 slow readers"
            # Owned output: the Date tails and the segment arrays, not the bodies.
            assert totals(server)["output_copied"] < 64 * 1024
            # The whole body still arrives intact.
            assert read_response(clients[0], len(body)) == body
        finally:
            for sock in clients:
                sock.close()
        assert wait_for(lambda: totals(server)["active"] == 0)
        assert wait_for(lambda: totals(server)["output_copied"] == 0)


def test_an_entry_replaced_while_queued_is_sent_as_it_was():
    """The queue holds a reference: a replacement (and QSBR reclamation of
    the old entry) must not change or free the bytes still being sent."""
    old = b"a" * (4 << 20)
    table = ResponseTable({"BIG": old})
    with HTTPServer(table, threads=1) as server:
        sock = slow_client(server)
        with sock:
            sock.sendall(get("BIG"))
            assert wait_for(lambda: totals(server)["partial_writes"] >= 1)
            table.set("BIG", b"b" * (4 << 20))
            table.discard("BIG")
            table.reclaim()
            assert read_response(sock, len(old)) == old
        [r] = exchange(server, get("BIG"), 1)
        assert r.status == 404


def test_copied_output_past_the_engine_cap_closes_and_counts():
    """Handler replies are copied when they must wait: past
    max_copied_output_bytes (all connections) the connection is closed."""
    big = b"z" * (12 << 20)                         # more than a socket buffer takes
    table = ResponseTable({"BTC": BODIES["BTC"]})
    with HTTPServer(table, threads=1, handler=lambda r: big,
                    max_copied_output_bytes=256 * 1024) as server:
        sock = slow_client(server)
        with sock:
            sock.sendall(get("MISS"))
            assert wait_for(lambda: totals(server)["output_cap_closes"] == 1)
            data, how = read_until_close(sock, 5)
            assert how in ("eof", "reset") and len(data) < len(big)
        assert wait_for(lambda: totals(server)["output_copied"] == 0)
        [r] = exchange(server, get("BTC"), 1)
        assert r.body == BODIES["BTC"]


# -- 2. write timeout: progress is bytes accepted over a window -------------------------------

def test_slow_but_steady_readers_are_not_cut_off_regression():
    """Clients reading 16 KB/s from a big entry used to be closed after
    write_timeout_s: a deep send buffer left no room for a send() that long.
    A client that reads nothing is still closed."""
    body = b"s" * (8 << 20)
    table = ResponseTable({"BIG": body})
    # Receive windows open in lumps (about 8 KB every 0.5-1 s here): the
    # window must be longer than a lump.
    with HTTPServer(table, threads=1, write_timeout_s=1.5) as server:
        readers = [slow_client(server, 16384) for _ in range(10)]
        stalled = slow_client(server)
        try:
            for sock in readers + [stalled]:
                sock.sendall(get("BIG"))
                sock.setblocking(False)
            got = [0] * len(readers)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 4.5:      # three windows
                for i, sock in enumerate(readers):
                    try:
                        chunk = sock.recv(1600)     # 16 KB/s at 10 reads a second
                    except BlockingIOError:
                        continue
                    assert chunk, "a steady reader was cut off"
                    got[i] += len(chunk)
                time.sleep(0.1)
            assert min(got) > 16 * 1024
            stats = totals(server)
            assert stats["write_timeouts"] == 1, stats   # the stalled one only
        finally:
            for sock in readers + [stalled]:
                sock.close()


# -- 5. requests that never got an answer -----------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + b"\x00\x20"


@pytest.mark.parametrize("payload", [
    b"GET /v1/BTC HTTP/1.1\nHost: t\n\n",                 # bare LF: a 400, not a hang
    b"GET /v1/BTC HTTP/1.1\r\nHost: t\n\n",               # bare LF after a CRLF request line
    TLS_CLIENT_HELLO,                                     # TLS to the plain-text port
    b"\x00\x01\x02\xff\xfe binary",                       # junk
    b"GET /v1/BTC\x01",                                   # junk in the target
    b"GET /v1/BTC SSH-2.0\r\n",                           # not an HTTP version
], ids=["bare-lf", "bare-lf-headers", "tls", "binary", "target-ctl", "version"])
def test_requests_that_can_never_be_valid_get_400_at_once_regression(payload):
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1, header_timeout_s=10.0) as server:
        with connect(server) as sock:
            t0 = time.monotonic()
            sock.sendall(payload)                       # the connection stays open on our side
            data, how = read_until_close(sock, 5)
            assert time.monotonic() - t0 < 2.0
        assert how in ("eof", "reset")
        assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data
        assert totals(server)["header_timeouts"] == 0


def test_empty_lines_before_a_request_line_are_ignored_regression():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1) as server:
        responses = exchange(server, b"\r\n" + get("BTC") + b"\r\n\r\n" + get("ETH"), 2)
        assert [r.body for r in responses] == [BODIES["BTC"], BODIES["ETH"]]
        with connect(server) as sock:                   # the CRLF split from its request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"\r")
            time.sleep(0.05)
            sock.sendall(b"\n" + get("SOL"))
            data = b""
            while not split_responses(data)[0]:
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
            assert split_responses(data)[0][0].body == BODIES["SOL"]


def test_absolute_form_targets_are_served_regression():
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1) as server:
        payload = (b"GET http://example.com/v1/BTC HTTP/1.1\r\nHost: example.com\r\n\r\n"
                   b"HEAD HTTPS://example.com:443/v1/ETH?x=1 HTTP/1.1\r\nHost: e\r\n\r\n")
        first, second = exchange(server, payload, 2, head_only=[False, True])
        assert first.status == 200 and first.body == BODIES["BTC"]
        assert second.status == 200


# -- 6. at max_connections: the 503 arrives, not a reset ---------------------------------------

def test_clients_over_max_connections_read_the_503_regression():
    """The refused socket used to be closed with the client's request
    unread, and the kernel's reset could destroy the 503 before it was read."""
    table = ResponseTable(BODIES)
    with HTTPServer(table, threads=1, max_connections=2) as server:
        held = [connect(server) for _ in range(2)]
        outcomes = []
        try:
            for sock in held:
                sock.sendall(get("BTC"))
                assert BODIES["BTC"] in sock.recv(4096)
            for _ in range(20):
                with connect(server) as sock:
                    sock.sendall(get("BTC"))
                    time.sleep(0.02)                    # the request arrives before we read
                    data, how = read_until_close(sock, 3)
                    outcomes.append((how, data[:12]))
        finally:
            for sock in held:
                sock.close()
        assert outcomes == [("eof", b"HTTP/1.1 503")] * 20
        assert totals(server)["rejected"] == 20


# -- 11. stop() does not wait on half-sent heads ---------------------------------------------

def test_stop_closes_half_sent_heads_at_once_regression():
    """stop() used to wait out grace_s for connections holding part of a head."""
    table = ResponseTable(BODIES)
    server = HTTPServer(table, threads=1, grace_s=3.0, header_timeout_s=10.0).start()
    idle = [connect(server) for _ in range(3)]
    drips = [connect(server) for _ in range(10)]
    head = b"GET /v1/BTC HTTP/1.1\r\nHost:"
    try:
        for sock in drips:
            sock.sendall(head)
        assert wait_for(lambda: totals(server)["bytes_in"] >= 10 * len(head))
        t0 = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - t0
        for sock in idle + drips:
            assert read_until_close(sock, 2)[1] in ("eof", "reset")
    finally:
        server.stop(grace_s=0)
        for sock in idle + drips:
            sock.close()
    assert elapsed < 1.5, f"stop() took {elapsed:.2f} s with grace_s=3"
