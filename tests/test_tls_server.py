"""TLS in the engine (HTTPServer(tls=...)) against clients nobody here wrote:
curl, `openssl s_client`, Python's ssl/http.client, the `websockets` client
over wss://; bad input (a ClientHello on the plain port, plain HTTP on the
TLS port, junk, handshakes that stall or stop half-way, renegotiation), each
answered or counted while the worker keeps serving; certificate reloads."""
from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from beastnet import HTTPServer, ResponseTable, TLSConfig, TLSConfigError, WebSocketOptions
from support import find_tool, requires, wait_for
from tls_support import Certs, tls_certs  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.timeout(90)

CURL = find_tool("curl")
OPENSSL = find_tool("openssl")
BIG = bytes(range(256)) * 1000          # 256 000 bytes: many records, a full socket


@pytest.fixture
def table() -> ResponseTable:
    return ResponseTable({"BTC": b'{"s":"BTC","p":1}', "BIG": BIG})


@pytest.fixture
def tls_server(table, tls_certs):  # noqa: F811
    server = HTTPServer(table, threads=1, tls=TLSConfig(str(tls_certs.server.cert),
                                                         str(tls_certs.server.key),
                                                         handshake_timeout_s=0.5),
                        websocket=WebSocketOptions())
    with server:
        yield server


def client_context(certs: Certs, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


def tls_connect(server, certs: Certs, **kw) -> ssl.SSLSocket:
    host, port = server.address[:2]
    raw = socket.create_connection((host, port), timeout=5)
    return client_context(certs, **kw).wrap_socket(raw, server_hostname="localhost")


def read_responses(sock, count: int, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    """`count` pipelined HTTP/1.1 responses (head, body) read from `sock`."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end]
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            if len(buf) >= end + 4 + length:
                out.append((head, buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed after {len(out)} of {count} responses")
        buf += chunk
    return out


def totals(server) -> dict:
    return server.stats()["totals"]


def still_serves(server, certs: Certs) -> None:
    """A fresh client is answered: the worker kept serving."""
    with tls_connect(server, certs) as s:
        s.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n")
        (head, body), = read_responses(s, 1)
    assert head.startswith(b"HTTP/1.1 200") and body == b'{"s":"BTC","p":1}'


# -- real clients ------------------------------------------------------------------------

@requires("curl")
def test_curl_verifies_and_gets_http11_over_alpn(tls_server, tls_certs):  # noqa: F811
    port = tls_server.address[1]
    for version in ("--tlsv1.2 --tls-max 1.2", "--tlsv1.3"):
        done = subprocess.run([CURL, "-sS", "-v", *version.split(), "--cacert", str(tls_certs.ca),
                               f"https://localhost:{port}/v1/BTC"],
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert done.stdout == '{"s":"BTC","p":1}'
        assert "ALPN: server accepted http/1.1" in done.stderr
        assert ("TLSv1.2" if "1.2" in version else "TLSv1.3") in done.stderr
    assert tls_server.url.startswith("https://")
    t = totals(tls_server)
    assert t["tls_handshakes"] == 2 and t["tls_v13"] == 1 and t["hits"] == 2


def test_http_client_keep_alive(tls_server, tls_certs):  # noqa: F811
    host, port = tls_server.address[:2]
    conn = http.client.HTTPSConnection("localhost", port, context=client_context(tls_certs),
                                       timeout=5)
    try:
        for key, body in (("BTC", b'{"s":"BTC","p":1}'), ("BIG", BIG), ("BTC", b'{"s":"BTC","p":1}')):
            conn.request("GET", f"/v1/{key}")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == body
        conn.request("GET", "/v1/NOPE")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
    finally:
        conn.close()
    assert totals(tls_server)["tls_handshakes"] == 1     # one connection, four answers


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_pipelined_requests_share_records(tls_server, tls_certs, version):  # noqa: F811
    with tls_connect(tls_server, tls_certs, maximum_version=version) as s:
        assert s.version() == ("TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
        batch = (b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n" * 40 + b"GET /v1/BIG HTTP/1.1\r\nHost: t\r\n\r\n"
                 + b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n" * 40)
        s.sendall(batch)
        out = read_responses(s, 81)
    assert [b for _, b in out] == [b'{"s":"BTC","p":1}'] * 40 + [BIG] + [b'{"s":"BTC","p":1}'] * 40


def test_a_flush_of_pipelined_answers_is_coalesced_into_records(tls_server, tls_certs):  # noqa: F811
    with tls_connect(tls_server, tls_certs) as s:
        before = totals(tls_server)["tls_writes"]
        s.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n" * 60)     # one read, one flush
        out = read_responses(s, 60)
    assert len(out) == 60
    # 60 answers of ~150 bytes (~9 KB) fit one 16 KiB record; the client's
    # bytes may arrive in two reads, so allow a few writes, never one each.
    # The worker counts a write after it returns, which the client can beat
    # (a 4-worker run read 0): wait for the first, then all but the last one
    # are counted, so one write per answer would still show as >= 59.
    wait_for(lambda: totals(tls_server)["tls_writes"] > before,
             message="the worker to count its TLS writes")
    assert 1 <= totals(tls_server)["tls_writes"] - before <= 4


def test_unread_big_answers_wait_and_arrive_whole(tls_server, tls_certs):  # noqa: F811
    # 40 x 256 KB pipelined and not read until SSL_write has met a full
    # socket (WANT_WRITE, counted): the committed bytes wait, and every byte
    # arrives.
    with tls_connect(tls_server, tls_certs) as s:
        s.sendall(b"GET /v1/BIG HTTP/1.1\r\nHost: t\r\n\r\n" * 40)
        wait_for(lambda: totals(tls_server)["tls_write_blocked"] > 0,
                 message="SSL_write to meet the unread client's full socket")
        out = read_responses(s, 40, timeout=20)
    assert len(out) == 40 and all(body == BIG for _, body in out)


def test_session_resumption(tls_server, tls_certs):  # noqa: F811
    ctx = client_context(tls_certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    host, port = tls_server.address[:2]
    with ctx.wrap_socket(socket.create_connection((host, port), timeout=5),
                         server_hostname="localhost") as s:
        session = s.session
        assert not s.session_reused
    with ctx.wrap_socket(socket.create_connection((host, port), timeout=5),
                         server_hostname="localhost", session=session) as s:
        assert s.session_reused
        s.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(s, 1)
    assert totals(tls_server)["tls_resumed"] == 1


def test_websocket_feed_over_wss(tls_server, tls_certs, table):  # noqa: F811
    host, port = tls_server.address[:2]

    async def run() -> list:
        async with websockets.connect(f"wss://localhost:{port}/v1/stream",
                                      ssl=client_context(tls_certs)) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "symbols": ["BTC"]}).decode())
            got = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            table.set("BTC", b'{"s":"BTC","p":2}')
            got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
            return got

    got = asyncio.run(run())
    assert got[0]["op"] == "subscribed" and got[1] == {"s": "BTC", "p": 1}
    assert got[2] == {"s": "BTC", "p": 2}


def test_wss_slow_subscriber_gets_whole_frames_and_the_newest(tls_server, tls_certs, table):  # noqa: F811
    # A subscriber that stops reading while 200 KB updates are published:
    # records block (WANT_WRITE), pending frames are conflated behind them,
    # and once it reads again every frame is whole and the last is the newest.
    port = tls_server.address[1]

    def update(v: int) -> bytes:
        return orjson.dumps({"s": "W", "v": v, "pad": "x" * 200_000})

    table.set("W", update(0))

    async def run() -> tuple[list, int]:
        # Uncompressed: deflated, the padding would never fill a socket.
        async with websockets.connect(f"wss://localhost:{port}/v1/stream", max_size=None,
                                      max_queue=1, ssl=client_context(tls_certs),
                                      compression=None) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "symbols": ["W"]}).decode())
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == "subscribed"
            # The event loop is not run while publishing, so the client
            # reads nothing: publish until a record blocks, then 20 more,
            # and wait until the worker has conflated some of them.
            v = 0
            while totals(tls_server)["tls_write_blocked"] == 0:
                v += 1
                assert v < 2000, "no record ever blocked"
                table.set("W", update(v))
            conflated = totals(tls_server)["ws_conflated"]
            for v in range(v + 1, v + 21):
                table.set("W", update(v))
            wait_for(lambda: totals(tls_server)["ws_conflated"] > conflated,
                     message="a pending frame to be replaced")
            seen: list = []
            while not seen or seen[-1] < v:
                try:
                    message = await asyncio.wait_for(ws.recv(), 2)
                except asyncio.TimeoutError:
                    break                   # the newest never came: the asserts below say so
                seen.append(orjson.loads(message)["v"])
            return seen, v

    seen, last = asyncio.run(run())
    assert seen and seen[-1] == last, seen[-5:]
    assert seen == sorted(set(seen)) and len(seen) < last      # conflated, in order


def test_stats_report_ktls_as_detected(tls_server, tls_certs):  # noqa: F811
    still_serves(tls_server, tls_certs)
    info = tls_server.stats()["tls"]
    ulp = Path("/proc/sys/net/ipv4/tcp_available_ulp")
    assert info["ktls_available"] == ("tls" in (ulp.read_text().split() if ulp.exists() else []))
    assert info["ktls_send"]["on"] + info["ktls_send"]["off"] == totals(tls_server)["tls_handshakes"]
    if not info["ktls_available"]:
        assert info["ktls_send"]["on"] == 0
    assert b"beastnet_http_tls_handshakes_total" in tls_server.metrics_text()


# -- bad input -----------------------------------------------------------------------------

@requires("curl")
def test_client_hello_on_the_plain_port_is_answered_at_once(table):
    with HTTPServer(table, threads=1, header_timeout_s=10.0) as server:
        started = time.monotonic()
        done = subprocess.run([CURL, "-sS", f"https://127.0.0.1:{server.address[1]}/v1/BTC"],
                              capture_output=True, text=True, timeout=20)
        assert time.monotonic() - started < 5           # not after the 10 s header timeout
        assert done.returncode == 35 and "wrong version number" in done.stderr
        assert totals(server)["tls_on_plain_port"] == 1
        with socket.create_connection(server.address[:2], timeout=5) as s:
            s.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_plain_http_on_the_tls_port(tls_server, tls_certs):  # noqa: F811
    with socket.create_connection(tls_server.address[:2], timeout=5) as s:
        s.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and b"plain HTTP request was sent to HTTPS port" in data
    assert totals(tls_server)["tls_plain_http"] == 1
    still_serves(tls_server, tls_certs)


def test_junk_handshake_is_refused(tls_server, tls_certs):  # noqa: F811
    with socket.create_connection(tls_server.address[:2], timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x10" + b"\x01junk-junk-junk!")
        data = s.recv(100)              # a fatal alert record, then the close
    assert data[:1] == b"\x15"
    wait_for(lambda: totals(tls_server)["tls_handshake_errors"] == 1)
    still_serves(tls_server, tls_certs)


def test_stalled_handshake_times_out(tls_server, tls_certs):  # noqa: F811
    # Half a ClientHello, then silence: closed after handshake_timeout_s (0.5 s).
    with socket.create_connection(tls_server.address[:2], timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 3
    t = totals(tls_server)
    assert t["tls_handshake_timeouts"] == 1 and t["timeouts"] == 1
    with socket.create_connection(tls_server.address[:2], timeout=5) as s:
        assert s.recv(100) == b""       # sending nothing at all: the same timeout
    assert totals(tls_server)["tls_handshake_timeouts"] == 2
    still_serves(tls_server, tls_certs)


def test_disconnect_mid_handshake(tls_server, tls_certs):  # noqa: F811
    for _ in range(3):
        with socket.create_connection(tls_server.address[:2], timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    wait_for(lambda: totals(tls_server)["tls_handshake_aborted"] == 3)
    assert totals(tls_server)["tls_handshake_timeouts"] == 0
    still_serves(tls_server, tls_certs)


@requires("openssl")
def test_renegotiation_is_refused_and_counted(tls_server, tls_certs):  # noqa: F811
    port = tls_server.address[1]
    # s_client reads "R" at the start of a line as "renegotiate".
    proc = subprocess.Popen([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
                             "-CAfile", str(tls_certs.ca)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: totals(tls_server)["tls_handshakes"] == 1)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        wait_for(lambda: totals(tls_server)["tls_renegotiations"] == 1)
    finally:
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "no renegotiation" in out
    still_serves(tls_server, tls_certs)


# The client ends its side after the junk, so the worker meets the junk and
# then EOF at once: nothing waits for the handshake timeout, which is long
# enough that the probe's own handshake never meets it (at 0.3 s, with the
# junk left open to time out, a CPU hog beside four workers once made the
# server close the probe: SSLEOFError).
@settings(deadline=None)
@given(junk=st.binary(min_size=1, max_size=600))
def test_junk_bytes_never_stop_the_worker(tls_certs, junk):  # noqa: F811
    table = ResponseTable({"BTC": b'{"s":"BTC","p":1}', "BIG": BIG})
    with HTTPServer(table, threads=1, tls=TLSConfig(str(tls_certs.server.cert),
                                                     str(tls_certs.server.key),
                                                     handshake_timeout_s=5.0)) as server:
        with socket.create_connection(server.address[:2], timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        still_serves(server, tls_certs)
        t = totals(server)
        assert t["tls_handshakes"] == 1
        # The junk connection ended one of these ways, each counted.
        assert (t["tls_handshake_errors"] + t["tls_handshake_aborted"] + t["tls_handshake_timeouts"]
                + t["tls_plain_http"]) == 1


# -- configuration and reload ------------------------------------------------------------

def test_bad_files_fail_at_start(table, tls_certs, tmp_path):  # noqa: F811
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSConfigError, match="missing.pem: No such file"):
        HTTPServer(table, tls=TLSConfig(str(missing), str(tls_certs.server.key))).start()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="garbage.pem"):
        HTTPServer(table, tls=TLSConfig(str(garbage), str(tls_certs.server.key))).start()
    with pytest.raises(TLSConfigError, match="key values mismatch"):
        HTTPServer(table, tls=TLSConfig(str(tls_certs.server.cert),
                                        str(tls_certs.self_signed.key))).start()
    with pytest.raises(TLSConfigError, match="min_version"):
        HTTPServer(table, tls=TLSConfig(str(tls_certs.server.cert), str(tls_certs.server.key),
                                        min_version="SSLv3")).start()


def peer_cert(server, **kw) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(server.address[:2], timeout=5),
                         server_hostname="localhost") as s:
        return s.getpeercert(binary_form=True)


def pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_reload_swaps_the_certificate_for_new_connections(table, tls_certs, tmp_path):  # noqa: F811
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_certs.server.cert, cert)
    shutil.copy(tls_certs.server.key, key)
    with HTTPServer(table, threads=1, tls=TLSConfig(str(cert), str(key))) as server:
        old = tls_connect(server, tls_certs)          # stays open across the reloads
        try:
            assert peer_cert(server) == pem_der(tls_certs.server.cert)
            shutil.copy(tls_certs.self_signed.cert, cert)
            shutil.copy(tls_certs.self_signed.key, key)
            server.reload_tls()
            assert peer_cert(server) == pem_der(tls_certs.self_signed.cert)
            # A bad new file: the error is reported, the last good one stays.
            cert.write_text("broken\n")
            with pytest.raises(TLSConfigError, match="cert.pem"):
                server.reload_tls()
            assert peer_cert(server) == pem_der(tls_certs.self_signed.cert)
            old.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: t\r\n\r\n")
            (head, body), = read_responses(old, 1)
            assert head.startswith(b"HTTP/1.1 200")
        finally:
            old.close()


def test_reload_without_tls_is_an_error(table):
    with HTTPServer(table, threads=1) as server:
        from beastnet import ServerError
        with pytest.raises(ServerError, match="reload_tls"):
            server.reload_tls()
        assert server.stats()["tls"] is None


def test_sessions_are_freed_on_close_and_on_stop(table, tls_certs):  # noqa: F811
    server = HTTPServer(table, threads=1, tls=TLSConfig(str(tls_certs.server.cert),
                                                         str(tls_certs.server.key)))
    with server:
        done = [tls_connect(server, tls_certs) for _ in range(4)]
        half = socket.create_connection(server.address[:2], timeout=5)   # mid-handshake
        half.sendall(b"\x16\x03\x01\x02\x00\x01")
        try:
            wait_for(lambda: totals(server)["tls_active"] == 5)
            for s in done[:2]:
                s.close()
            wait_for(lambda: totals(server)["tls_active"] == 3)
            # stop() with sessions open: each is freed on the way out.
        finally:
            server.stop(grace_s=0.0)
            for s in done[2:]:
                s.close()
            half.close()
    assert totals(server)["tls_active"] == 0 and totals(server)["active"] == 0


def test_a_fifo_key_is_refused_at_once_and_serving_goes_on(table, tls_certs, tmp_path):  # noqa: F811
    """Issue 23: a key path that is a FIFO blocked the reload in fopen with
    the GIL held, freezing the control plane (admin, /healthz, SIGTERM)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    # The leaf followed by its CA: the chain is read from memory too.
    cert.write_bytes(tls_certs.server.cert.read_bytes() + tls_certs.ca.read_bytes())
    shutil.copy(tls_certs.server.key, key)
    with HTTPServer(table, threads=1, tls=TLSConfig(str(cert), str(key))) as server:
        assert peer_cert(server) == pem_der(tls_certs.server.cert)
        key.unlink()
        os.mkfifo(key)
        outcome: list[BaseException] = []
        reload = threading.Thread(target=lambda: _capture(server.reload_tls, outcome), daemon=True)
        reload.start()
        reload.join(5.0)
        assert not reload.is_alive(), "reload_tls() blocked on the FIFO"
        assert len(outcome) == 1 and isinstance(outcome[0], TLSConfigError)
        assert "not a regular file" in str(outcome[0])
        with tls_connect(server, tls_certs) as s:          # the control plane answers
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            (head, body), = read_responses(s, 1)
        assert head.startswith(b"HTTP/1.1 200") and b"ok" in body
        still_serves(server, tls_certs)


def _capture(fn, into: list) -> None:
    try:
        fn()
    except BaseException as exc:        # noqa: BLE001 - handed to the test thread
        into.append(exc)

