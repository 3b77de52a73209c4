"""`beastnet serve --tls-cert --tls-key`: HTTPS and WSS on the public port,
the admin listener still plain on loopback, SIGHUP reloading the certificate,
bad TLS settings as one line and exit 2, and the live page in Chromium."""
from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from browser import Browser, needs_chromium
from support import wait_for
from test_serve import Serve, serve  # noqa: F401  (the fixture)
from tls_support import tls_certs  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.timeout(120)


def https_get(port: int, path: str, cafile) -> tuple[int, bytes, bytes]:
    """(status, body, the server's certificate in DER) over a verified connection."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                         server_hostname="localhost") as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body, s.getpeercert(binary_form=True)


def der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_https_and_wss_on_the_public_port_reloaded_on_sighup(serve, tls_certs, tmp_path):  # noqa: F811
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_certs.server.cert, cert)
    shutil.copy(tls_certs.server.key, key)
    server = serve("--no-keys", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        ready = next(e for e in server.log_entries() if e.get("event") == "ready")
        assert f"https://127.0.0.1:{server.http_port}" in ready["msg"]
        assert f"stream wss://127.0.0.1:{server.http_port}/v1/stream" in ready["msg"]
        assert f"admin http://127.0.0.1:{server.admin_port}" in ready["msg"]
        status, body, peer = https_get(server.http_port, "/v1/BTC", tls_certs.ca)
        assert status == 200 and b'"asset":"BTC"' in body and peer == der(tls_certs.server.cert)
        assert server.admin("GET", "/healthz")[0] == 200      # the admin listener stays plain

        # A new certificate on disk, then SIGHUP: new connections get it.
        shutil.copy(tls_certs.wrong_host.cert, cert)
        shutil.copy(tls_certs.wrong_host.key, key)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("event") == "tls_reloaded" for e in server.log_entries()))
        ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
        ctx.check_hostname = False      # wrong_host is for another name: we only compare it
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.http_port), timeout=5),
                             server_hostname="localhost") as s:
            assert s.getpeercert(binary_form=True) == der(tls_certs.wrong_host.cert)

        # A broken file: logged, and the last good certificate stays.
        cert.write_text("broken\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("event") == "tls_reload_failed" for e in server.log_entries()))
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.http_port), timeout=5),
                             server_hostname="localhost") as s:
            assert s.getpeercert(binary_form=True) == der(tls_certs.wrong_host.cert)
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("args,message", [
    (["--tls-cert", "{cert}"], "TLS needs both --tls-cert and --tls-key"),
    (["--tls-key", "{key}"], "TLS needs both --tls-cert and --tls-key"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "{key}"],
     "--tls-cert /nonexistent.pem: No such file or directory"),
    (["--tls-cert", "{garbage}", "--tls-key", "{key}"], "garbage.pem"),
    (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "key values mismatch"),
])
def test_bad_tls_settings_are_one_line_and_exit_2(tls_certs, tmp_path, args, message):  # noqa: F811
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    values = dict(cert=tls_certs.server.cert, key=tls_certs.server.key, garbage=garbage,
                  other_key=tls_certs.self_signed.key)
    argv = [a.format(**values) for a in args]
    proc = subprocess.run([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                           "--udp-port", "0", "--http-port", "0", "--admin-port", "0", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("beastnet serve: error:")


def test_config_file_keys(serve, tls_certs):  # noqa: F811
    server = serve("--no-keys", config=f'tls_cert = "{tls_certs.server.cert}"\n'
                                       f'tls_key = "{tls_certs.server.key}"\n')
    try:
        assert https_get(server.http_port, "/healthz", tls_certs.ca)[0] == 200
    finally:
        assert server.terminate() == 0


@needs_chromium()
def test_the_live_page_over_tls_in_chromium(serve, tls_certs, tmp_path):  # noqa: F811
    server = serve("--no-keys", "--tls-cert", str(tls_certs.server.cert),
                   "--tls-key", str(tls_certs.server.key))
    try:
        with Browser() as browser:
            # The test CA is not in Chromium's store: accept its certificate.
            browser.call("Security.setIgnoreCertificateErrors", ignore=True)
            browser.open(f"https://localhost:{server.http_port}/")
            browser.wait_for("document.getElementById('status').textContent === 'open'")
            assert browser.eval("location.protocol") == "https:"
            price = "document.querySelector('[data-asset=BTC] .price').textContent"
            first = browser.wait_for(f"{price} !== '–' && {price}")
            browser.wait_for(f"{price} !== {first!r}", timeout_s=10)
            assert browser.errors == []
            browser.screenshot(str(tmp_path / "dashboard-tls.png"))
        assert (tmp_path / "dashboard-tls.png").stat().st_size > 10_000
    finally:
        assert server.terminate() == 0
