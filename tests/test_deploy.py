"""The operator's kit (docs/deploy.md, examples/): systemd readiness over a
real unix datagram socket, the example config file and unit, and backing up
the SQLite key store while the server writes to it."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

import test_serve
from support import require
from beastnet.serve.config import FEEDS_TABLE, ServeConfig, load_config
from beastnet.serve.systemd import notify

pytestmark = pytest.mark.timeout(90)

serve = test_serve.serve       # the fixture: `beastnet serve` processes, killed after the test
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


# -- sd_notify -------------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path):
    """A unix datagram socket bound as systemd binds its notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def test_notify_sends_one_datagram_to_the_named_socket(notify_socket):
    sock, path = notify_socket
    assert notify("READY=1", "STATUS=up", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    assert notify("RELOADING=1", environ={"NOTIFY_SOCKET": path})
    reloading = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])


def test_notify_reaches_an_abstract_socket_and_is_a_no_op_outside_systemd():
    name = f"beastnet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"
    assert notify("READY=1", environ={}) is False


def test_notify_to_a_missing_socket_warns_and_goes_on(tmp_path, caplog):
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "sd_notify READY=1" in caplog.text


def next_datagram(sock: socket.socket, waiting_for: str) -> bytes:
    try:
        return sock.recv(4096)
    except socket.timeout:
        raise AssertionError(f"no {waiting_for} on the notify socket") from None


def test_serve_tells_systemd_ready_reloading_and_stopping(serve, notify_socket):
    sock, path = notify_socket
    server = serve(env={"NOTIFY_SOCKET": path})
    try:
        ready = next_datagram(sock, "READY=1").decode().split("\n")
        assert ready[0] == "READY=1" and f"MAINPID={server.proc.pid}" in ready
        assert any(line.startswith("STATUS=serving 150 assets") for line in ready)
        server.proc.send_signal(signal.SIGHUP)                 # ExecReload in the unit
        assert next_datagram(sock, "RELOADING=1").startswith(b"RELOADING=1\n")
        assert next_datagram(sock, "READY=1").startswith(b"READY=1\n")
    finally:
        assert server.terminate() == 0
    assert next_datagram(sock, "STOPPING=1") == b"STOPPING=1\nSTATUS=draining after SIGTERM"


# -- examples/beastnet.toml ------------------------------------------------------------------

def test_the_example_config_loads_and_names_every_setting():
    path = EXAMPLES / "beastnet.toml"
    cfg = load_config(str(path), environ={})
    assert cfg.profile == "production"
    text = path.read_text()
    # every setting appears as a line of its own, set or commented out with its default
    named, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[([a-z_.]+)\]\s*$", line)
        if header:                                  # [tiers.NAME], [feeds], [feeds.assets]
            table = header.group(1)
            parts = table.split(".")
            named.add(FEEDS_TABLE.get(parts[1], f"feed_{parts[1]}") if table.startswith("feeds.")
                      else parts[0])
        elif (setting := re.match(r"^#?\s*([a-z_]+)\s*=", line)):
            name = setting.group(1)
            # [feeds] keys are settings by another name (FEEDS_TABLE); in other tables a
            # key is the table's own (a tier's qps), not a setting
            named.add(FEEDS_TABLE.get(name, f"feed_{name}") if table == "feeds"
                      else name if not table else table)
    missing = {f.name for f in fields(ServeConfig)} - named
    assert not missing, f"examples/beastnet.toml does not describe {sorted(missing)}"
    # a commented-out default is the real default: uncommenting it changes nothing
    defaults = ServeConfig()
    for name, value in re.findall(r"^#\s*([a-z_]+)\s*=\s*(.+?)\s*$", text, re.M):
        if name in {f.name for f in fields(ServeConfig)} and not value.startswith("\""):
            shown = getattr(defaults, name)
            if shown is None:               # "unset" defaults show an example value
                continue
            if isinstance(shown, bool):
                assert value == str(shown).lower(), name
            elif isinstance(shown, (int, float)) and not isinstance(shown, bool):
                assert float(value.replace("_", "")) == shown, name


def test_the_example_config_s_tables_load_when_uncommented(tmp_path):
    """Tables come last (TOML puts every key after a [table] line into it): each
    commented table, uncommented as a reader would, is valid as written."""
    text = (EXAMPLES / "beastnet.toml").read_text()
    settings, tables = text.split("# == Tables", 1)
    opened = [re.sub(r"^# (\[[a-z_.]+\]|[A-Za-z_]+ = .*)$", r"\1", line)
              for line in tables.splitlines()[1:]]
    assert sum(line.startswith("[") for line in opened) >= 6
    path = tmp_path / "tables.toml"
    path.write_text(settings + "\n".join(opened) + "\n")
    cfg = load_config(str(path), environ={})
    assert cfg.tiers["pro"]["stream"] is True and cfg.webhook_tiers["standard"]["max_assets"] == 30
    assert cfg.feed == "exchanges" and cfg.feed_assets["BTC"][0] == "coinbase"
    assert cfg.feed_exchanges["kraken"]["stale_after_s"] == 10.0


# -- examples/beastnet.service ---------------------------------------------------------------

def test_the_example_unit_is_type_notify_and_reloads_with_sighup():
    unit = (EXAMPLES / "beastnet.service").read_text()
    assert re.search(r"^Type=notify$", unit, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M)
    assert re.search(r"^NotifyAccess=main$", unit, re.M)
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes"):
        assert hardening in unit


def test_systemd_analyze_verifies_the_example_unit(tmp_path):
    analyze = require("systemd-analyze")
    # the unit names /usr/local/bin/beastnet; verify checks that ExecStart exists
    unit = (EXAMPLES / "beastnet.service").read_text()
    unit = unit.replace("/usr/local/bin/beastnet", shutil.which("beastnet") or sys.executable)
    (tmp_path / "beastnet.service").write_text(unit)
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "beastnet.service")],
                          capture_output=True, text=True, timeout=60)
    complaints = [line for line in done.stderr.splitlines()
                  if "beastnet.service" in line]
    assert done.returncode == 0 and not complaints, done.stderr


# -- backing up the key store ----------------------------------------------------------------

def _usage(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, SUM(count) FROM usage GROUP BY key"))


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)              # its context manager commits, it does not close
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _used(db: Path) -> int:
    return _rows(db, "SELECT COALESCE(SUM(count), 0) FROM usage")[0][0]


def _backup_with_python(source: Path, target: Path) -> None:
    """The online backup API (what `sqlite3 DB ".backup FILE"` runs), from Python."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst, pages=64)           # in steps: the server's writes go on in between
    finally:
        dst.close()
        src.close()


def _backup_with_cli(source: Path, target: Path) -> None:
    cli = require("sqlite3")
    subprocess.run([cli, str(source), f".backup '{target}'"], check=True, timeout=30)


@pytest.mark.parametrize("backup", [_backup_with_cli, _backup_with_python],
                         ids=["sqlite3-shell", "python-backup-api"])
def test_back_up_the_key_store_under_load_and_restore_it(serve, tmp_path, backup):
    db, copy = tmp_path / "keys.db", tmp_path / "backup.db"
    test_serve.add_key(db, "partner", "partner-key-00001")
    test_serve.add_key(db, "pro", "pro-key-000000001")
    server = serve("--keystore", str(db))
    stop = threading.Event()
    answered = [0]

    def load() -> None:                         # requests counted into usage while we copy
        while not stop.is_set():
            status, _, _ = server.http("GET", "/v1/BTC", {"X-API-Key": "partner-key-00001"})
            assert status == 200
            answered[0] += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        deadline = time.monotonic() + 20
        while _used(db) < 50:                   # the flusher has written usage at least once
            assert time.monotonic() < deadline, "no usage flushed in 20 s"
            time.sleep(0.02)
        before = _used(db)
        backup(db, copy)
        after = _used(db)
    finally:
        stop.set()
        loader.join(10)
        assert server.terminate() == 0
    assert _rows(copy, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(copy, "SELECT * FROM api_keys ORDER BY 1") == \
        _rows(db, "SELECT * FROM api_keys ORDER BY 1")
    saved = _used(copy)
    assert before <= saved <= after, (before, saved, after)     # one consistent instant
    assert _used(db) == answered[0]             # the clean stop flushed every count

    # restore: the copy in place of a lost store, served again
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, db)
    server = serve("--keystore", str(db))
    try:
        assert server.http("GET", "/v1/ETH", {"X-API-Key": "pro-key-000000001"})[0] == 200
        assert server.http("GET", "/v1/ETH", {"X-API-Key": "partner-key-00001"})[0] == 200
        assert server.http("GET", "/v1/ETH", {"X-API-Key": "nobody-000000000"})[0] == 401
    finally:
        assert server.terminate() == 0
    assert _used(db) == saved + 2
