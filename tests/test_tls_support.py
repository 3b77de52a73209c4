"""The TLS test material is what it claims to be, checked by Python's own ssl
module against the real nginx: the CA vouches for `server`, and each bad
certificate fails verification for its own reason."""
from __future__ import annotations

import http.client
import ssl

import pytest

from tls_support import NginxTLS, tls_certs  # noqa: F401  (fixture)


def _client_context(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


def _get(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    try:
        conn.request("GET", "/x")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nginx_serves_the_body_over_https_with_a_certificate_the_ca_vouches_for(tls_certs, tmp_path):
    with NginxTLS(tmp_path / "ok", tls_certs.server, body='{"p":1}') as nginx:
        assert _get(nginx.port, _client_context(tls_certs)) == (200, b'{"p":1}')
        assert _get(nginx.port, _client_context(tls_certs), host="localhost") == (200, b'{"p":1}')


@pytest.mark.parametrize("which, reason", [
    ("expired", "certificate has expired"),
    ("wrong_host", "IP address mismatch"),
    ("self_signed", "self-signed certificate"),
])
def test_each_bad_certificate_fails_verification_for_its_own_reason(tls_certs, tmp_path, which, reason):
    with NginxTLS(tmp_path / which, getattr(tls_certs, which)) as nginx:
        with pytest.raises(ssl.SSLCertVerificationError, match=reason):
            _get(nginx.port, _client_context(tls_certs))
