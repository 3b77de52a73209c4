"""`beastnet plan local`: the production topology on one host, started and
stopped by the plan runner.

Three `beastnet serve` nodes sharing one `redis-server` and one PostgreSQL
(keys, usage and the usage log, as in production; `postgres=False` gives
each node a SQLite key store instead), nginx terminating TLS in front of
their HTTP ports (the application load balancer) and nginx `stream`
spreading UDP over their UDP ports (the network load balancer).
Every process is started in its own session (a Ctrl-C on the terminal
reaches the runner only, which then restores and stops them in order) and
stopped by the PID this module recorded: nothing is found by name, nothing
is left running after `stop()`, whether the plan ended, was interrupted,
or a start failed half-way.  PostgreSQL is started by `pg_ctl` (which puts
the postmaster in a session of its own) and stopped by `pg_ctl stop` on its
data directory, after the nodes.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from beastnet._lifecycle import StartStop
from beastnet.loadgen.plan.spec import PlanError
from beastnet.serve.stores.pg_local import LocalPostgres, LocalPostgresError

__all__ = ["LocalCluster", "LocalProcess"]

NODES = 3
# Snapshots every second (the runner polls every poll_s), gone 3 s after a node dies.
SNAPSHOT_ARGS = ("--snapshot-interval", "1", "--snapshot-ttl", "3")
TIERS_TOML = "[tiers.public]\nqps = 100\nburst = 10\nmonthly_cap = 0\n"
_NGINX_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
_STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so",
                   "/usr/share/nginx/modules/ngx_stream_module.so")

_NGINX_CONF = """\
{load_module}
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream beastnet_http {{
{http_servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://beastnet_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
        }}
    }}
}}
stream {{
    upstream beastnet_udp {{
{udp_servers}
    }}
    server {{
        listen 127.0.0.1:{udp_port} udp reuseport;
        proxy_pass beastnet_udp;
        proxy_timeout 10s;
    }}
}}
"""


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str, extra_dirs: tuple[str, ...] = ()) -> str:
    found = shutil.which(name)
    if found is None:
        for d in extra_dirs:
            if os.access(os.path.join(d, name), os.X_OK):
                found = os.path.join(d, name)
                break
    if found is None:
        raise PlanError(f"plan local: {name} is not installed (scripts/system-deps installs it)")
    return found


@dataclass
class LocalProcess:
    """One process the cluster started: what it is, its PID, ports and log."""

    name: str
    pid: int
    ports: dict[str, int]
    log: str
    argv: list[str]
    proc: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "ports": self.ports, "log": self.log,
                "command": " ".join(self.argv)}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster(StartStop):
    """Start with `start()` (or `with`), stop with `stop()`.  `directory`
    holds the configs, certificates, key stores and logs (a temporary one
    by default, kept so the logs can be read after the run)."""

    def __init__(self, directory: Optional[str] = None, nodes: int = NODES,
                 serve_args: tuple[str, ...] = (), postgres: bool = True) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="beastnet-plan-")
        os.makedirs(self.directory, exist_ok=True)
        self.node_count = nodes
        self.serve_args = serve_args
        self.use_postgres = postgres
        self.postgres: Optional[LocalPostgres] = None
        self.postgres_pid: Optional[int] = None     # the postmaster's, once started
        self.processes: list[LocalProcess] = []
        self.nodes: list[dict[str, Any]] = []
        self.keys: dict[str, str] = {}
        self.cacert = os.path.join(self.directory, "cert.pem")
        self.balanced_http = ""
        self.balanced_udp = ""
        self.versions: dict[str, str] = {}     # the programs' own version lines

    # -- start ---------------------------------------------------------------------

    def start(self) -> "LocalCluster":
        """Everything, in dependency order; on any failure what did start is
        stopped and PlanError says which step failed."""
        try:
            nginx = _tool("nginx", _NGINX_DIRS)
            redis_server = _tool("redis-server")
            openssl = _tool("openssl")
            if self.use_postgres:
                try:
                    # Its own temporary directory, not ours: as root the
                    # server runs as nobody, who may not enter ours.
                    self.postgres = LocalPostgres()
                except LocalPostgresError as exc:
                    raise PlanError(f"plan local: {exc}; --no-postgres runs the nodes on "
                                    f"SQLite key stores") from None
            self.versions = {name: _version(path, flag) for name, path, flag in (
                ("nginx", nginx, "-v"), ("redis-server", redis_server, "--version"),
                ("openssl", openssl, "version"))}
            if self.postgres is not None:
                self.versions["postgresql"] = self.postgres.version()
            self._certificate(openssl)
            redis_url = self._redis(redis_server)
            if self.postgres is not None:
                self._database()
            self._key_store()
            self._nodes(redis_url)
            self._nginx(nginx)
        except BaseException:
            self.stop()
            raise
        return self

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _spawn(self, name: str, argv: list[str], ports: dict[str, int]) -> LocalProcess:
        log_path = self._path(f"{name}.log")
        with open(log_path, "wb") as log:
            # Its own session: the terminal's Ctrl-C goes to the runner alone,
            # which restores the nodes before it stops them.
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        p = LocalProcess(name, proc.pid, ports, log_path, argv, proc)
        self.processes.append(p)
        return p

    def _certificate(self, openssl: str) -> None:
        key = self._path("key.pem")
        done = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", self.cacert, "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise PlanError(f"plan local: openssl req failed: {done.stderr.strip()[:200]}")

    def _redis(self, redis_server: str) -> str:
        port = _free_port()
        os.makedirs(self._path("redis"), exist_ok=True)
        p = self._spawn("redis", [redis_server, "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no",
                                  "--dir", self._path("redis")], {"tcp": port})
        self._wait(p, lambda: _connects(port), "redis-server to accept connections")
        return f"redis://127.0.0.1:{port}/0"

    def _database(self) -> None:
        """PostgreSQL, started and migrated: the nodes' shared key store."""
        assert self.postgres is not None
        try:
            self.postgres.start()
        except LocalPostgresError as exc:
            raise PlanError(f"plan local: PostgreSQL did not start: {exc} "
                            f"(log {self.postgres.log})") from None
        self.postgres_pid = self.postgres.pid
        self._beastnet("db migrate", "db", "migrate", "--database", self.postgres.dsn)

    def _beastnet(self, what: str, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "beastnet", *args],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise PlanError(f"plan local: beastnet {what} failed: "
                            f"{(done.stderr or done.stdout).strip()[:200]}")

    def _key_store(self) -> None:
        """One key per tier: in PostgreSQL, which every node reads, or in
        node1's SQLite store, which the others start from copies of."""
        with open(self._path("beastnet.toml"), "w", encoding="utf-8") as f:
            f.write(TIERS_TOML)
        store = (["--database", self.postgres.dsn] if self.postgres is not None
                 else ["--db", self._path("keys-1.db")])
        for tier in ("partner", "public"):
            key = f"bk_plan_{tier}_{secrets.token_urlsafe(12)}"
            self._beastnet("keys add", "keys", *store, "--config", self._path("beastnet.toml"),
                           "add", "--tier", tier, "--key", key)
            self.keys[tier] = key
        if self.postgres is None:
            for i in range(2, self.node_count + 1):
                shutil.copy(self._path("keys-1.db"), self._path(f"keys-{i}.db"))

    def _store_args(self, i: int) -> list[str]:
        if self.postgres is not None:
            # Each node its own key cache: they would otherwise write one file.
            return ["--database", self.postgres.dsn,
                    "--key-cache", self._path(f"key-cache-{i}.json")]
        return ["--keystore", self._path(f"keys-{i}.db")]

    @property
    def database(self) -> dict[str, Any]:
        """What the nodes keep their keys, usage and usage log in (for the report)."""
        if self.postgres is not None:
            return {"kind": "postgresql", "dsn": self.postgres.dsn,
                    "version": self.versions.get("postgresql", "unknown"),
                    "pid": self.postgres_pid, "log": self._path("postgres.log")}
        return {"kind": "sqlite", "files": [self._path(f"keys-{i}.db")
                                            for i in range(1, self.node_count + 1)]}

    def _nodes(self, redis_url: str) -> None:
        started = []
        for i in range(1, self.node_count + 1):
            argv = [sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                    "--log-level", "info", "--feed", "sim",
                    "--udp-port", "0", "--http-port", "0", "--admin-port", "0",
                    *self._store_args(i),
                    "--config", self._path("beastnet.toml"),
                    "--redis", redis_url, "--node-id", f"node{i}", *SNAPSHOT_ARGS,
                    *self.serve_args]
            started.append(self._spawn(f"node{i}", argv, {}))
        for p in started:
            ready = self._wait(p, lambda p=p: _ready_line(p.log), "the ready line", 60.0)
            p.ports = {"udp": ready["udp_port"], "http": ready["http_port"],
                       "admin": ready["admin_port"]}
            self.nodes.append({"name": p.name, "admin": f"http://127.0.0.1:{ready['admin_port']}",
                               "http": f"http://127.0.0.1:{ready['http_port']}/v1/",
                               "udp": f"127.0.0.1:{ready['udp_port']}", "pid": p.pid})

    def _nginx(self, nginx: str) -> None:
        module = next((m for m in _STREAM_MODULES if os.path.exists(m)), None)
        https_port, udp_port = _free_port(), _free_port(socket.SOCK_DGRAM)
        nodes = [p for p in self.processes if p.name.startswith("node")]
        conf = self._path("nginx.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(_NGINX_CONF.format(
                load_module=f"load_module {module};" if module else "", d=self.directory,
                https_port=https_port, udp_port=udp_port, cert=self.cacert,
                key=self._path("key.pem"),
                http_servers="\n".join(f"        server 127.0.0.1:{p.ports['http']} "
                                       f"max_fails=1 fail_timeout=2s;" for p in nodes),
                udp_servers="\n".join(f"        server 127.0.0.1:{p.ports['udp']};"
                                      for p in nodes)))
        p = self._spawn("nginx", [nginx, "-p", self.directory, "-c", conf,
                                  "-e", self._path("nginx-error.log")],
                        {"https": https_port, "udp": udp_port})
        self._wait(p, lambda: _connects(https_port), "nginx to accept TLS connections")
        self.balanced_http = f"https://127.0.0.1:{https_port}/v1/"
        self.balanced_udp = f"127.0.0.1:{udp_port}"

    def _wait(self, p: LocalProcess, ready: Any, what: str, timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = ready()
            if value:
                return value
            if not p.alive():
                raise PlanError(f"plan local: {p.name} exited with {p.proc.returncode} before "
                                f"{what}: {_tail(p.log)}")
            if time.monotonic() > deadline:
                raise PlanError(f"plan local: {p.name} (PID {p.pid}) gave no sign of {what} "
                                f"within {timeout_s:g} s: {_tail(p.log)}")
            time.sleep(0.05)

    # -- what the runner needs -----------------------------------------------------

    def target(self) -> dict[str, Any]:
        """The target as a plan file would give it."""
        return {"local": True, "nodes": [dict(n) for n in self.nodes],
                "balanced_http": self.balanced_http, "balanced_udp": self.balanced_udp,
                "cacert": self.cacert, "keys": dict(self.keys)}

    def process(self, name: str) -> Optional[LocalProcess]:
        return next((p for p in self.processes if p.name == name), None)

    def describe(self) -> list[dict[str, Any]]:
        out = [p.to_dict() for p in self.processes]
        if self.postgres is not None and self.postgres_pid is not None:
            pg = self.postgres
            out.insert(1 if out else 0, {
                "name": "postgres", "pid": self.postgres_pid, "ports": {"tcp": pg.port},
                "log": self._path("postgres.log"), "command": f"{pg.pg_ctl} -D {pg.data} start"})
        return out

    # -- stop ----------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every process started, in reverse order, by PID: SIGTERM,
        then SIGKILL after 10 s.  Returns what did not stop cleanly."""
        problems = []
        for p in reversed(self.processes):
            if p.proc is None or p.proc.poll() is not None:
                continue
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)
                problems.append(f"{p.name} (PID {p.pid}) needed SIGKILL")
        if self.postgres is not None:
            # After the nodes, whose last usage flushes go to it.  Its log
            # joins the others (the report names that copy); its data goes.
            try:
                self.postgres.stop()
            except LocalPostgresError as exc:
                problems.append(f"postgres (PID {self.postgres_pid}): {exc}")
                if self.postgres_pid is not None and _alive(self.postgres_pid):
                    os.kill(self.postgres_pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                shutil.copy(self.postgres.log, self._path("postgres.log"))
            self.postgres.close()
        return problems


def _version(path: str, flag: str) -> str:
    """The first line a program prints for its version flag (nginx prints to stderr)."""
    try:
        done = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return ((done.stdout or done.stderr).strip().splitlines() or ["unknown"])[0]


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _ready_line(path: str) -> Optional[dict[str, Any]]:
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"{"):
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if entry.get("event") == "ready":
                    return dict(entry)
    return None


def _tail(path: str, limit: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    last = text.splitlines()[-1] if text else "(empty log)"
    return last[-limit:]
