"""`beastnet serve`'s admin listener as an attacker and an operator meet it:
a reverse proxy in front of the public port (a real nginx on loopback), the
token (header only, from a file or the environment), the methods each route
takes, the profile in force after a switch, and room to read /admin/stats
while the public port is flooded."""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from typing import Iterator

import orjson
import pytest

import test_serve
from beastnet import Answer
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute
from beastnet.serve.component import Component
from test_serve import request
from support import free_port, require
from test_cli import beastnet, one_error_line

pytestmark = pytest.mark.timeout(90)

serve = test_serve.serve       # the fixture: `beastnet serve` processes, killed after the test

TOKEN = "admin-token-0123456789"
# Debian puts nginx in /usr/sbin, which a non-root PATH may lack.


# -- a reverse proxy on the same host -------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path) -> Iterator:
    """`start(upstream_port)` runs nginx on a free loopback port, proxying
    everything to `upstream_port` as the docs' TLS set-up does, and returns
    its port; stopped by PID after the test."""
    nginx_path = require("nginx")
    procs: list[subprocess.Popen] = []

    def start(upstream: int) -> int:
        d = tmp_path / f"nginx-{len(procs)}"
        d.mkdir()
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=d, port=port, upstream=upstream))
        proc = subprocess.Popen([nginx_path, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"nginx did not start: {err}")
                time.sleep(0.05)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_a_reverse_proxy_on_loopback_cannot_reach_admin(serve, nginx):
    server = serve("--no-keys")
    proxy = nginx(server.http_port)
    status, _, body = request(proxy, "GET", "/v1/BTC")
    assert status == 200 and orjson.loads(body)["asset"] == "BTC"   # the proxy works
    assert request(proxy, "GET", "/healthz")[0] == 200               # probes still pass
    for method, path in (("GET", "/admin/stats"), ("GET", "/metrics"),
                         ("GET", "/admin/profile"), ("POST", "/admin/reset"),
                         ("POST", "/admin/profile?name=stress-udp-direct")):
        status, _, body = request(proxy, method, path, {"Content-Length": "0"})
        assert (status, body) == (404, b'{"error":"not_found"}'), (method, path)
    # Nothing the proxied requests asked for happened: no profile switch, and
    # no reset (the counters still hold all 7 proxied requests).
    stats = orjson.loads(server.admin("GET", "/admin/stats")[2])
    assert stats["profile"] == "dev" and stats["http"]["totals"]["requests"] >= 7
    assert server.terminate() == 0


# -- the token ----------------------------------------------------------------------

def test_the_token_is_read_from_a_header_and_refused_in_the_query(serve, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    server = serve("--no-keys", "--admin-token-file", str(token_file))
    assert server.admin("GET", "/admin/stats")[0] == 401
    assert server.admin("GET", "/admin/stats", {"Authorization": "Bearer not-the-token-0000"})[0] \
        == 401
    assert server.admin("GET", "/admin/stats", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert server.admin("GET", "/metrics", {"X-API-Key": TOKEN})[0] == 200
    # In the query string it would end up in proxy and access logs: refused,
    # even when right, with a message saying where it goes.
    for query in (f"token={TOKEN}", f"api_key={TOKEN}"):
        status, _, body = server.admin("GET", f"/admin/stats?{query}")
        assert status == 400
        assert "header" in orjson.loads(body)["detail"]
    assert server.admin("GET", "/healthz")[0] == 200        # open to probes
    assert TOKEN not in server.output()
    assert server.terminate() == 0


def test_a_non_loopback_admin_address_needs_a_token(serve):
    refused = beastnet("serve", "--profile", "dev", "--no-keys", "--udp-port", "0",
                       "--http-port", "0", "--admin-host", "0.0.0.0", "--admin-port", "0")
    assert refused.returncode == 2
    line = one_error_line(refused, "beastnet serve: error:", alone=True)
    assert "--admin-host 0.0.0.0 is not a loopback address" in line
    assert "--admin-token-file" in line and "BEASTNET_ADMIN_TOKEN" in line
    server = serve("--no-keys", "--admin-host", "0.0.0.0", env={"BEASTNET_ADMIN_TOKEN": TOKEN})
    assert server.ready["admin_host"] == "0.0.0.0"
    assert server.admin("GET", "/admin/stats")[0] == 401
    assert server.admin("GET", "/admin/stats", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert server.terminate() == 0


def test_the_token_is_given_one_way(tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    env = dict(os.environ, BEASTNET_ADMIN_TOKEN=TOKEN)
    proc = subprocess.run([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                           "--admin-token-file", str(token_file)], capture_output=True,
                          text=True, env=env, timeout=30)
    assert proc.returncode == 2
    line = one_error_line(proc, "beastnet serve: error:", alone=True)
    assert "given 2 ways" in line and "--admin-token-file" in line
    assert "BEASTNET_ADMIN_TOKEN" in line and TOKEN not in line
    assert "--admin-token " not in beastnet("serve", "--help").stdout   # no token in ps


def test_stats_reads_the_token_from_a_flag_a_file_or_the_environment(serve, tmp_path):
    server = serve("--no-keys", env={"BEASTNET_ADMIN_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{server.admin_port}"
    token_file = tmp_path / "t"
    token_file.write_text(TOKEN + "\n")
    missing = beastnet("stats", "--url", url)
    assert missing.returncode == 1
    assert "HTTP 401" in one_error_line(missing, alone=True)
    assert beastnet("stats", "--url", url, "--token", TOKEN).returncode == 0
    assert beastnet("stats", "--url", url, "--token-file", str(token_file)).returncode == 0
    env = dict(os.environ, BEASTNET_ADMIN_TOKEN=TOKEN)
    shown = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url, "--json"],
                           capture_output=True, text=True, env=env, timeout=30)
    assert shown.returncode == 0 and orjson.loads(shown.stdout)["assets"] == 150
    unreadable = beastnet("stats", "--url", url, "--token-file", str(tmp_path / "none"))
    assert unreadable.returncode == 2 and "--token-file" in one_error_line(unreadable, alone=True)
    assert server.terminate() == 0


def test_stats_defaults_to_the_admin_listener():
    from beastnet.serve.config import ServeConfig

    shown = beastnet("stats", "--help")
    defaults = ServeConfig()
    assert f"(default: http://{defaults.admin_host}:{defaults.admin_port})" \
        in " ".join(shown.stdout.split())


# -- methods and profiles -------------------------------------------------------------

@pytest.mark.parametrize("method,path,on,allow", [
    ("POST", "/healthz", "public", "GET, HEAD"), ("DELETE", "/healthz", "public", "GET, HEAD"),
    ("POST", "/healthz", "admin", "GET, HEAD"), ("PUT", "/metrics", "admin", "GET, HEAD"),
    ("POST", "/admin/stats", "admin", "GET, HEAD"), ("DELETE", "/admin/stats", "admin", "GET, HEAD"),
    ("GET", "/admin/reset", "admin", "POST"),
    ("PUT", "/admin/profile?name=dev", "admin", "GET, HEAD, POST"),
    ("POST", "/dashboard", "public", "GET, HEAD"),
])
def test_serve_routes_keep_the_method_check(serve, method, path, on, allow):
    server = serve("--no-keys")
    port = server.http_port if on == "public" else server.admin_port
    status, headers, body = request(port, method, path, {"Content-Length": "0"})
    assert (status, body) == (405, b'{"error":"method_not_allowed"}')
    assert headers.get("Allow") == allow          # RFC 9110: a 405 says what the path takes
    assert server.terminate() == 0


def test_a_get_never_resets_the_counters(serve):
    server = serve("--no-keys")
    for _ in range(5):
        server.udp_ask(b"BTC")
    assert server.admin("GET", "/admin/reset")[0] == 405
    stats = orjson.loads(server.admin("GET", "/admin/stats")[2])
    assert stats["udp"]["totals"]["hits"] >= 5
    assert server.terminate() == 0


def test_a_profile_switch_is_reported(serve):
    server = serve("--no-keys", "--profile", "production", "--feed", "sim")
    before = orjson.loads(server.admin("GET", "/admin/stats")[2])
    assert before["profile"] == "production"
    status, _, body = server.admin("POST", "/admin/profile?name=dev", {"Content-Length": "0"})
    assert status == 200 and orjson.loads(body)["profile"] == "dev"
    stats = orjson.loads(server.admin("GET", "/admin/stats")[2])
    assert stats["profile"] == "dev" and stats["profile_at_start"] == "production"
    assert stats["live_parameters"]["log_level"] == "debug"
    profile = orjson.loads(server.admin("GET", "/admin/profile")[2])
    assert profile["profile"] == "dev" and profile["live"]["log_level"] == "debug"
    assert server.terminate() == 0


# -- a connection flood ---------------------------------------------------------------

def _flood(port: int, n: int) -> list[socket.socket]:
    """Open `n` idle connections (each one a slot, or a refusal past the cap)."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return socks


def _flooded_totals(admin_port: int, active: int) -> dict:
    """The public port's counters, read from the admin listener until its
    workers have accepted the flood (the kernel completes connections before
    accept); every read must be answered."""
    deadline = time.monotonic() + 10
    while True:
        status, _, body = request(admin_port, "GET", "/admin/stats")
        assert status == 200
        totals = orjson.loads(body)["http"]["totals"]
        if (totals["active"] >= active and totals["rejected"] >= 1) \
                or time.monotonic() > deadline:
            return totals
        time.sleep(0.05)


def test_admin_answers_while_the_public_port_is_full(serve):
    server = serve("--no-keys", "--max-connections", "8")
    socks = _flood(server.http_port, 40)
    try:
        totals = _flooded_totals(server.admin_port, 8)
        assert totals["active"] == 8 and totals["rejected"] >= 1
    finally:
        for s in socks:
            s.close()
    assert server.terminate() == 0


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))


def test_a_low_open_file_limit_keeps_room_for_admin(tmp_path):
    """With `ulimit -n 300`, the default 10,000 connections would let a flood
    take every descriptor (EMFILE), the admin listener's too: the cap is
    lowered to what fits, and admin still answers."""
    env = dict(os.environ)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                                 "--no-keys", "--udp-port", "0", "--http-port", "0",
                                 "--admin-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=_low_nofile)
        socks: list[socket.socket] = []
        try:
            ready = None
            lowered = 0
            deadline = time.monotonic() + 20
            while ready is None:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                for line in log_path.read_bytes().splitlines():
                    entry = orjson.loads(line) if line.startswith(b"{") else {}
                    if entry.get("event") == "max_connections_lowered":
                        lowered = entry["max_connections"]
                    if entry.get("event") == "ready":
                        ready = entry
                time.sleep(0.05)
            assert 0 < lowered < 300
            socks = _flood(ready["http_port"], lowered + 50)
            totals = _flooded_totals(ready["admin_port"], lowered)
            assert totals["active"] == lowered and totals["rejected"] >= 1
            assert totals.get("accept_emfile", 0) == 0
        finally:
            for s in socks:
                s.close()
            proc.terminate()
            status = proc.wait(30)
    assert status == 0, log_path.read_text()
    assert "max_connections 10000 lowered to" in log_path.read_text()


# -- a component: its own file and one registration line ---------------------------------

class Probe(Component):
    """A part registered in COMPONENTS the way a new one would be (this module
    is its file): its stats, metrics, admin route and lifecycle reach the
    service without any other change."""

    name = "probe"
    calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")

    def stats(self) -> dict:
        return {"probe": {"seen": True}}

    def families(self) -> list:
        return [MetricFamily("beastnet_probe_up", "gauge", "The probe.").add(1)]

    def routes(self) -> list:
        return [AdminRoute("/admin/probe", ("GET",), lambda request: Answer({"probe": 1}))]


def test_a_registered_component_is_started_stopped_and_served(monkeypatch):
    import http.client

    from beastnet.serve import service as service_module
    from beastnet.serve.config import load_config

    monkeypatch.setattr(service_module, "COMPONENTS",
                        service_module.COMPONENTS + ("test_serve_admin:Probe",))
    Probe.calls.clear()
    cfg = load_config(profile="dev", overrides={"udp_port": 0, "http_port": 0, "admin_port": 0})
    with service_module.PriceService(cfg) as svc:
        assert Probe.calls == ["start"]
        assert svc.admin is not None
        answers = {}
        for path in ("/admin/probe", "/admin/stats", "/metrics", "/admin/nothing"):
            conn = http.client.HTTPConnection(*svc.admin.address[:2], timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            answers[path] = (resp.status, resp.read())
            conn.close()
    assert Probe.calls == ["start", "stop"]
    assert answers["/admin/probe"] == (200, b'{"probe":1}')
    assert orjson.loads(answers["/admin/stats"][1])["probe"] == {"seen": True}
    assert b"beastnet_probe_up 1" in answers["/metrics"][1]
    assert answers["/admin/nothing"][0] == 404
