"""Certificates and a TLS nginx for the tests, made by the real `openssl` and
`nginx` binaries (.ci/run installs both), in a temporary directory.

`make_certs(directory)` writes a private CA and, signed by it:
  - `server`: valid now, for localhost, 127.0.0.1 and ::1 (what the tests dial);
  - `expired`: the same names, valid only in 2020;
  - `wrong_host`: valid now, but only for wrong-host.invalid;
and a self-signed certificate for localhost that no CA vouches for.

`tls_certs` is a session fixture built from it (import it into a test module:
`from tls_support import tls_certs`).  `NginxTLS` runs nginx with TLS on a
free loopback port, serving a fixed body on every path, stopped by PID.
"""
from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from support import free_port, require



@dataclass(frozen=True)
class CertPair:
    cert: Path        # PEM certificate (the leaf only)
    key: Path         # PEM private key, unencrypted


@dataclass(frozen=True)
class Certs:
    ca: Path                # PEM CA certificate: what --cacert / cafile takes
    server: CertPair        # valid for localhost, 127.0.0.1, ::1
    expired: CertPair       # same names, notAfter in 2020
    wrong_host: CertPair    # valid, but for wrong-host.invalid only
    self_signed: CertPair   # localhost, signed by itself


_CA_CONF = """\
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {d}
database = {d}/index.txt
new_certs_dir = {d}/issued
serial = {d}/serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[ anything ]
commonName = supplied
[ leaf ]
basicConstraints = CA:false
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""

_LOCAL_SAN = "DNS:localhost,IP:127.0.0.1,IP:::1"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run([require("openssl"), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


def _leaf(d: Path, name: str, san: str, dates: tuple[str, str] | None) -> CertPair:
    """A P-256 key and a certificate for it signed by the CA in `d`, valid
    from now for a year unless `dates` (YYYYMMDDHHMMSSZ pair) says otherwise."""
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    conf = d / f"{name}.cnf"
    conf.write_text(_CA_CONF.format(d=d, san=san))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={san.split(',')[0][4:]}", cwd=d)
    span = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "365"]
    _openssl("ca", "-batch", "-config", str(conf), "-extensions", "leaf", "-notext",
             "-cert", str(d / "ca.pem"), "-keyfile", str(d / "ca.key"),
             "-in", str(csr), "-out", str(cert), *span, cwd=d)
    return CertPair(cert, key)


def make_certs(directory: Path) -> Certs:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "issued").mkdir(exist_ok=True)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "365", "-subj", "/CN=beastnet test CA",
             "-addext", "basicConstraints=critical,CA:true",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    server = _leaf(d, "server", _LOCAL_SAN, None)
    expired = _leaf(d, "expired", _LOCAL_SAN, ("20200101000000Z", "20200201000000Z"))
    wrong = _leaf(d, "wrong_host", "DNS:wrong-host.invalid", None)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "self.key", "-out", "self.pem", "-days", "365", "-subj", "/CN=localhost",
             "-addext", f"subjectAltName={_LOCAL_SAN}", cwd=d)
    return Certs(d / "ca.pem", server, expired, wrong, CertPair(d / "self.pem", d / "self.key"))


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


# -- nginx with TLS ---------------------------------------------------------------------

_NGINX_TLS_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    ssl_session_cache shared:tls:10m;
    ssl_session_tickets on;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


class NginxTLS:
    """nginx (one worker, no master) answering `body` over HTTPS on every path.

    `with NginxTLS(tmpdir, certs.server) as n: n.port` — started on a free
    loopback port, stopped by its PID on exit."""

    def __init__(self, directory: Path, pair: CertPair, body: str = '{"ok":true}',
                 host: str = "127.0.0.1") -> None:
        self.nginx = require("nginx")
        self.directory = Path(directory)
        self.pair = pair
        self.body = body
        self.host = host
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "NginxTLS":
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        conf = d / "nginx.conf"
        conf.write_text(_NGINX_TLS_CONF.format(
            d=d, host=f"[{self.host}]" if ":" in self.host else self.host, port=self.port,
            cert=self.pair.cert, key=self.pair.key, body=self.body.replace("'", "\\'")))
        self.proc = subprocess.Popen([self.nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.__exit__()
                    raise AssertionError(f"nginx did not start: {err}")
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

