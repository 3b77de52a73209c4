"""The load generator over TLS: https:// against a real nginx with TLS, the
certificate checks and their one-line errors, session resumption and SNI;
wss:// against a `websockets` server with an ssl context."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import websockets

from beastnet.errors import LoadConfigError, LoadTLSError
from beastnet.loadgen import HTTPLoadConfig, run_http_load
from beastnet.loadgen.ws.run import run_ws_load
from beastnet.loadgen.ws.config import WSLoadConfig

from _loadgen_servers import ScriptedTCPServer
from _ws_scripted import ScriptedServer
from tls_support import NginxTLS, tls_certs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)


def https_cfg(port: int, ca, **kw) -> HTTPLoadConfig:
    base = dict(host="127.0.0.1", port=port, keys=["BTC"], connections=4, threads=1,
                duration_s=0.5, warmup_s=0.0, timeout_ms=2000, tls=True, cacert=str(ca))
    base.update(kw)
    return HTTPLoadConfig(**base)


@pytest.fixture(scope="module")
def nginx(tls_certs, tmp_path_factory):
    with NginxTLS(tmp_path_factory.mktemp("nginx"), tls_certs.server) as n:
        yield n


def test_keepalive_pipelined_requests_all_answered_and_one_handshake_per_connection(
        nginx, tls_certs):
    r = run_http_load(https_cfg(nginx.port, tls_certs.ca, connections=4, pipeline=4,
                                max_requests=4000, duration_s=20))
    tls = r.extra["tls"]
    assert (r.sent, r.received, r.failed, r.errors) == (4000, 4000, 0, 0)
    assert r.status_codes == {200: 4000}
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert tls["handshakes"] == r.extra["connects"] == 4
    assert tls["resumed"] == 0
    # Every answer is nginx's one response (its Date is fixed-width): the
    # bytes read are 4,000 of them, exactly.
    assert r.extra["bytes_in"] == 4000 * len(one_response(nginx.port, tls_certs.ca))


def one_response(port: int, ca) -> bytes:
    """nginx's whole answer to one keep-alive GET, read by Python's ssl."""
    import socket
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET /v1/BTC HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 ") and b"keep-alive" in head.lower()
    return head + b"\r\n\r\n" + rest


def test_nginx_logs_exactly_the_requests_the_generator_counts(tls_certs, tmp_path, monkeypatch):
    import tls_support
    log = tmp_path / "access.log"
    monkeypatch.setattr(tls_support, "_NGINX_TLS_CONF", tls_support._NGINX_TLS_CONF.replace(
        "access_log off;", f"access_log {log};"))
    with NginxTLS(tmp_path / "nginx", tls_certs.server) as n:
        r = run_http_load(https_cfg(n.port, tls_certs.ca, connections=3, pipeline=2,
                                    conn_mode=5, max_requests=900, duration_s=20))
    assert r.sent == r.received == 900
    # 5 requests a connection; one more may open as the quota runs out.
    assert r.extra["connects"] >= r.extra["tls"]["handshakes"] >= 900 // 5
    assert len(log.read_text().splitlines()) == 900


def test_close_mode_splits_tcp_connect_and_handshake_within_the_latency(nginx, tls_certs):
    r = run_http_load(https_cfg(nginx.port, tls_certs.ca, connections=2, conn_mode="close",
                                max_requests=200, duration_s=20))
    tls = r.extra["tls"]
    assert r.received == 200 and r.failed == 0
    assert tls["handshakes"] >= 200 and tls["handshakes_per_s"] > 0
    connect, handshake = r.extra["connect_ms"], tls["handshake_ms"]
    assert connect["count"] >= 200 and handshake["count"] >= 200
    assert 0 < connect["mean"] and 0 < handshake["mean"]
    # Latency runs from connect() through the handshake to the answer.
    total_mean_ms = r.histogram.mean_ns / 1e6
    assert connect["mean"] + handshake["mean"] < total_mean_ms * 1.2


@pytest.mark.parametrize("resume", [False, True])
def test_session_resumption_only_when_asked(tls_certs, tmp_path, monkeypatch, resume):
    """nginx logs `$ssl_session_reused` for each request (one per
    connection here): the generator's count of resumed sessions is nginx's.
    How many connections start before the first ticket arrives (after a
    handshake, with the first response) depends on the scheduler, so the
    share is not checked beyond "most"."""
    import tls_support
    log = tmp_path / "access.log"
    monkeypatch.setattr(tls_support, "_NGINX_TLS_CONF", tls_support._NGINX_TLS_CONF.replace(
        "access_log off;", f"log_format reuse '$ssl_session_reused'; access_log {log} reuse;"))
    with NginxTLS(tmp_path / "nginx", tls_certs.server) as n:
        r = run_http_load(https_cfg(n.port, tls_certs.ca, connections=2, conn_mode="close",
                                    max_requests=100, duration_s=20, tls_resume=resume))
    tls = r.extra["tls"]
    assert r.received == 100
    reused = log.read_text().split()
    assert len(reused) == 100 and set(reused) <= {"r", "."}
    # The generator's count is nginx's, but for the connections opened as
    # the quota ran out, which sent no request for nginx to log.
    assert 0 <= tls["resumed"] - reused.count("r") <= tls["handshakes"] - len(reused) <= 2
    if resume:
        assert tls["resumed"] > tls["handshakes"] / 2 > 0
    else:
        assert tls["resumed"] == 0


def test_sni_is_sent_for_a_host_name_and_not_for_an_ip(tls_certs, tmp_path):
    """nginx echoes the server name it received; the response sizes differ
    by exactly its length ("localhost") between the two targets."""
    with NginxTLS(tmp_path, tls_certs.server, body='{"sni":"$ssl_server_name"}') as n:
        sizes = {}
        for host in ("localhost", "127.0.0.1"):
            r = run_http_load(https_cfg(n.port, tls_certs.ca, host=host, max_requests=50,
                                        duration_s=20, host_header="x"))
            assert r.received == 50
            sizes[host] = r.extra["bytes_in"] / 50
    assert sizes["localhost"] - sizes["127.0.0.1"] == len("localhost")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beastnet", "load", *args, "-d", "0.5",
                           "--warmup", "0", "-c", "2", "-t", "1", "-q"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("which,reason", [
    ("expired", "certificate has expired"),
    ("wrong_host", "IP address mismatch"),
    ("self_signed", "self-signed certificate"),
])
def test_bad_certificates_give_one_line_and_exit_3(tls_certs, tmp_path, which, reason):
    with NginxTLS(tmp_path, getattr(tls_certs, which)) as n:
        done = run_cli(f"https://127.0.0.1:{n.port}/", "--cacert", str(tls_certs.ca))
    assert done.returncode == 3, done.stderr
    assert done.stderr == (f"beastnet load: TLS certificate verification failed for "
                           f"https://127.0.0.1:{n.port}: {reason} "
                           f"(use --cacert FILE or --insecure)\n")
    assert done.stdout == ""


def test_wrong_host_name_is_reported(tls_certs, tmp_path):
    with NginxTLS(tmp_path, tls_certs.wrong_host) as n:
        cfg = https_cfg(n.port, tls_certs.ca, host="localhost")
        with pytest.raises(LoadTLSError, match="localhost.*hostname mismatch"):
            run_http_load(cfg)


def test_untrusted_ca_without_cacert_fails_and_insecure_passes(tls_certs, tmp_path):
    with NginxTLS(tmp_path, tls_certs.self_signed) as n:
        failed = run_cli(f"https://127.0.0.1:{n.port}/")
        passed = run_cli(f"https://127.0.0.1:{n.port}/", "--insecure")
    assert failed.returncode == 3 and "verification failed" in failed.stderr
    assert passed.returncode == 0, passed.stderr
    assert "Traceback" not in failed.stderr + passed.stderr


class _Plain(BaseHTTPRequestHandler):
    def do_GET(self) -> None:           # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_plain_http_server_on_an_https_url_gives_one_line(tls_certs):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = run_cli(f"https://127.0.0.1:{server.server_address[1]}/",
                       "--cacert", str(tls_certs.ca))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "did not answer in TLS" in done.stderr


def test_a_handshake_that_never_finishes_times_out_and_is_retried(tls_certs):
    """The server accepts and reads the ClientHello but never answers."""
    stop = threading.Event()

    def silent(conn) -> None:
        conn.recv(4096)
        stop.wait(5)

    with ScriptedTCPServer(silent) as server:
        cfg = https_cfg(server.port, tls_certs.ca, connections=2, duration_s=0.6,
                        connect_timeout_ms=200)
        try:
            with pytest.raises(LoadTLSError, match="did not finish within the connect timeout"):
                run_http_load(cfg)
        finally:
            stop.set()
        assert server.accepted >= 4             # each slot retried after its timeout


def test_tls_flags_are_checked_before_anything_runs(tls_certs, tmp_path):
    missing = run_cli("https://127.0.0.1:1/", "--cacert", str(tmp_path / "none.pem"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--cacert" in missing.stderr and "Traceback" not in missing.stderr
    plain = run_cli("http://127.0.0.1:1/", "--insecure")
    assert plain.returncode == 2 and "need an https://" in plain.stderr
    with pytest.raises(LoadConfigError, match="contradict"):
        https_cfg(1, tls_certs.ca, insecure=True).validate()


def test_runs_free_their_tls_state(nginx, tls_certs):
    """Thousands of SSL objects per run: RSS stays flat across runs."""
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    cfg = https_cfg(nginx.port, tls_certs.ca, connections=4, conn_mode="close",
                    max_requests=600, duration_s=20)
    run_http_load(cfg)
    before = rss_kb()
    for _ in range(4):
        assert run_http_load(cfg).received == 600
    # 2400 leaked SSL objects would hold tens of MB.
    assert rss_kb() - before < 16 * 1024


# -- wss:// ------------------------------------------------------------------------------

class TLSScriptedServer(ScriptedServer):
    """The scripted `websockets` server, over TLS with `pair`."""

    def __init__(self, behaviour, pair) -> None:
        super().__init__(behaviour)
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.load_cert_chain(pair.cert, pair.key)

    async def _main(self) -> None:
        async with websockets.serve(self._handler, "127.0.0.1", 0, ping_interval=None,
                                    ssl=self.ssl) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop


async def numbered(ws, server) -> None:
    """After the subscribe message, 200 stamped, numbered messages."""
    server.record.setdefault("subscribes", []).append(await ws.recv())
    for seq in range(1, 201):
        await ws.send(orjson.dumps({"seq": seq, "ts": time.time_ns() // 10**6}))
        await asyncio.sleep(0.002)
    await asyncio.sleep(10)


def wss_cfg(port: int, ca, **kw) -> WSLoadConfig:
    base = dict(host="127.0.0.1", port=port, path="/", connections=3, threads=1,
                duration_s=1.5, warmup_s=0.0, tls=True, cacert=str(ca), seq_key="seq")
    base.update(kw)
    return WSLoadConfig(**base)


def test_wss_gets_every_message_and_splits_the_handshake(tls_certs):
    with TLSScriptedServer(numbered, tls_certs.server) as server:
        r = run_ws_load(wss_cfg(server.port, tls_certs.ca))
    tls = r.extra["tls"]
    assert r.received == 3 * 200 and r.lost == 0 and r.errors == 0
    assert len(server.record["subscribes"]) == 3
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["handshakes"] == 3
    assert tls["handshake_ms"]["count"] == r.extra["connect_ms"]["count"] == 3
    assert r.extra["upgrade_ms"]["count"] == 3 and tls["handshake_ms"]["mean"] > 0


def test_wss_with_an_untrusted_certificate_fails_in_one_line(tls_certs):
    with TLSScriptedServer(numbered, tls_certs.self_signed) as server:
        with pytest.raises(LoadTLSError, match="wss://127.0.0.1:.*self-signed certificate"):
            run_ws_load(wss_cfg(server.port, tls_certs.ca, duration_s=0.5))
        done = subprocess.run([sys.executable, "-m", "beastnet", "load",
                               f"wss://127.0.0.1:{server.port}/", "-d", "0.5", "--warmup", "0",
                               "--cacert", str(tls_certs.ca), "-q"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stderr.count("\n") == 1
    assert "TLS certificate verification failed for wss://" in done.stderr


async def short_lived(ws, server) -> None:
    """Three messages, then the server closes: the client reconnects.
    Records whether OpenSSL (server side) resumed the session."""
    server.record.setdefault("reused", []).append(
        ws.transport.get_extra_info("ssl_object").session_reused)
    await ws.recv()
    for seq in range(1, 4):
        await ws.send(orjson.dumps({"seq": seq, "ts": time.time_ns() // 10**6}))
    await ws.close()


@pytest.mark.parametrize("resume", [False, True])
def test_wss_reconnects_resume_the_session_only_when_asked(tls_certs, resume):
    with TLSScriptedServer(short_lived, tls_certs.server) as server:
        r = run_ws_load(wss_cfg(server.port, tls_certs.ca, connections=2, duration_s=1.0,
                                backoff_base_ms=5, backoff_cap_ms=20, tls_resume=resume))
    tls = r.extra["tls"]
    reused = server.record["reused"]
    assert r.extra["reconnects"] >= 4 and tls["handshakes"] >= 6
    # The server's own account: every connection it served resumed or not
    # as the generator counts (those cut by the run's end before their
    # upgrade reached the server are the difference, at most one a slot).
    assert len(reused) <= tls["handshakes"] <= len(reused) + 2
    assert sum(reused) <= tls["resumed"] <= sum(reused) + tls["handshakes"] - len(reused)
    if resume:
        assert sum(reused) > len(reused) / 2 > 0
    else:
        assert tls["resumed"] == sum(reused) == 0


def test_the_tls_line_says_when_every_handshake_happened_in_the_warm_up():
    from beastnet.loadgen.report import tls_line
    base = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "resumed": 0,
            "first_failure": None}
    kept = tls_line({"tls": {**base, "handshakes": 0, "handshakes_per_s": 0.0}})
    assert kept is not None and "no handshake in the measured window" in kept
    assert "0 handshakes" not in kept
    churn = tls_line({"tls": {**base, "handshakes": 1200, "handshakes_per_s": 400.0, "resumed": 7}})
    assert churn is not None and "1,200 handshakes (400/s), 7 resumed" in churn
    assert tls_line({}) is None


def test_a_failed_tls_run_gives_its_fds_back_while_its_error_is_kept(tls_certs):
    """The error of a run where no TLS connection worked may be kept (pytest
    keeps a failure's traceback): the native run's fds are closed before it
    is raised, not when the traceback goes (a kept one once failed the leak
    checks of the tests after it in that worker)."""
    import os
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(LoadTLSError, match="did not answer in TLS") as kept:
            run_http_load(HTTPLoadConfig(port=server.server_address[1], tls=True,
                                         cacert=str(tls_certs.ca), connections=2, threads=1,
                                         duration_s=0.3, warmup_s=0.0))
        assert set(os.listdir("/proc/self/fd")) == before, kept.value
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
