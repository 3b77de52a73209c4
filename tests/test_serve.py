"""`beastnet serve` as a real process on loopback: keys, limits, usage that
survives restarts and SIGTERM, bounded loss on kill -9, admin routes,
metrics, profiles, and clear errors for bad configuration."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import orjson
import pytest

from beastnet import APIKeyTable, api_key_id
from support import gcra_bounds

pytestmark = pytest.mark.timeout(90)


def request(port: int, method: str, path: str,
            headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:`port`: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class Serve:
    """A `beastnet serve` subprocess, started and stopped by PID."""

    def __init__(self, tmp_path: Path, *args: str, config: Optional[str] = None,
                 env: Optional[dict] = None) -> None:
        argv = [sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                "--udp-port", "0", "--http-port", "0", "--admin-port", "0", *args]
        if config is not None:
            path = tmp_path / "beastnet.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        env = dict(os.environ, **(env or {}))
        if env.get("BEASTNET_TEST_HTTP_IO") and "--http-io" not in args:
            argv += ["--http-io", env["BEASTNET_TEST_HTTP_IO"]]     # conftest's http_io
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        try:
            # the interpreter under test and whatever beastnet it imports:
            # an installed wheel or the in-place build alike
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
            self.ready = self._wait_ready()
        except BaseException:
            # the caller never gets this object to stop: give back the log
            # file and the process here
            self.kill()
            raise
        self.udp = ("127.0.0.1", self.ready["udp_port"])
        self.http_port = self.ready["http_port"]
        self.admin_port = self.ready["admin_port"]

    def _wait_ready(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_bytes().splitlines():
                if line.startswith(b"{"):
                    entry = orjson.loads(line)
                    if entry.get("event") == "ready":
                        return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"serve not ready: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_entries(self) -> list[dict]:
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines()
                if line.startswith(b"{")]

    def udp_ask(self, payload: bytes, sock: Optional[socket.socket] = None) -> bytes:
        own = sock is None
        sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2)
        try:
            sock.sendto(payload, self.udp)
            return sock.recv(2048)
        finally:
            if own:
                sock.close()

    def udp_unanswered(self, payload: bytes, wait_s: float = 0.3) -> bool:
        """True if `payload` draws no reply within `wait_s` (a refusal while
        keys are enforced is not answered)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(wait_s)
            sock.sendto(payload, self.udp)
            try:
                sock.recv(2048)
            except socket.timeout:
                return True
            return False

    def http(self, method: str, path: str,
             headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
        """One request to the public port."""
        return request(self.http_port, method, path, headers)

    def admin(self, method: str, path: str,
              headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
        """One request to the admin listener."""
        return request(self.admin_port, method, path, headers)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(*args, **kwargs):
        server = Serve(tmp_path, *args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def add_key(db: Path, tier: str, key: str) -> None:
    # Through the library: `beastnet keys add --key` refuses keys this short.
    from beastnet.serve.stores.sqlite import KeyStore
    with KeyStore(str(db)) as store:
        store.add(tier, key=key)


def month_count(db: Path, key: str) -> int:
    conn = sqlite3.connect(db)              # its context manager commits, it does not close
    try:
        row = conn.execute("SELECT SUM(count) FROM usage WHERE key = ?",
                           (api_key_id(key),)).fetchone()
    finally:
        conn.close()
    return row[0] or 0


TIERS = '[tiers.public]\nqps = 100\nburst = 10\nmonthly_cap = 1000000\n'


def test_serves_prices_over_udp_and_http_without_keys(serve):
    server = serve("--no-keys")
    body = orjson.loads(server.udp_ask(b"@1 BTC")[3:])
    assert body["asset"] == "BTC" and body["price"] > 0
    status, headers, raw = server.http("GET", "/v1/ETH")
    assert status == 200 and orjson.loads(raw)["asset"] == "ETH"
    assert headers["Content-Type"] == "application/json"
    assert server.http("GET", "/v1/NOPE")[0] == 404
    assert server.terminate() == 0
    assert any(entry.get("msg") == "stopped cleanly" for entry in server.log_entries())


def test_http_io_uring_serves_the_public_port(serve):
    """`--http-io uring` (the WebSocket stream on, as by default) serves the
    public port on io_uring workers; their own counters show it."""
    server = serve("--no-keys", "--http-io", "uring")
    status, _, raw = server.http("GET", "/v1/ETH")
    assert status == 200 and orjson.loads(raw)["asset"] == "ETH"
    assert server.http("GET", "/v1/NOPE")[0] == 404
    status, _, raw = server.admin("GET", "/metrics")
    metrics = raw.decode()
    waits = [line for line in metrics.splitlines() if line.startswith("beastnet_http_uring_waits")]
    assert status == 200 and waits and float(waits[0].split()[-1]) > 0, waits
    assert server.terminate() == 0


def test_cors_origins_setting_answers_browsers_natively(serve):
    """Issue 21: no Access-Control-Allow-Origin, and OPTIONS answered 405."""
    server = serve("--no-keys", config='cors_origins = ["https://app.example"]\n')
    origin = {"Origin": "https://app.example"}
    status, headers, _ = server.http("GET", "/v1/BTC", origin)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, headers, _ = server.http("OPTIONS", "/v1/BTC", origin)
    assert status == 204 and "X-API-Key" in headers["Access-Control-Allow-Headers"]
    assert server.terminate() == 0


def test_asset_list_batch_and_lower_case_symbols(serve):
    """Issue 21: /v1/assets, /v1/btc and a batch query all answered not_found."""
    server = serve("--no-keys")
    status, _, raw = server.http("GET", "/v1/assets")
    assert status == 200 and len(orjson.loads(raw)["assets"]) == 150
    status, _, raw = server.http("GET", "/v1/btc")
    assert status == 200 and orjson.loads(raw)["asset"] == "BTC"
    status, _, raw = server.http("GET", "/v1/prices?symbols=BTC,ETH")
    assert status == 200 and [a["asset"] for a in orjson.loads(raw)] == ["BTC", "ETH"]
    status, _, raw = server.http("GET", "/v1/prices?symbols=BTC,NOPE")
    assert status == 404 and orjson.loads(raw)["unknown"] == ["NOPE"]
    assert orjson.loads(server.admin("GET", "/healthz")[2])["assets"] == 150
    assert server.terminate() == 0


# needs_core: what a key is served is bounded by its rate times the run's
# elapsed time, and a starved client sends too few (105 against 108 seen)
@pytest.mark.needs_core
def test_keys_and_limits_enforced_on_both_protocols(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "public", "pub-key")
    add_key(db, "partner", "partner-key")
    server = serve("--keystore", str(db), config=TIERS)
    assert server.udp_unanswered(b"@1 BTC")
    assert server.udp_unanswered(b"@2 BTC nope")
    assert b'"asset":"BTC"' in server.udp_ask(b"@3 BTC partner-key")
    assert server.http("GET", "/v1/BTC")[0] == 401
    assert server.http("GET", "/v1/BTC", {"X-API-Key": "partner-key"})[0] == 200
    assert server.http("GET", "/v1/BTC?api_key=partner-key")[0] == 200

    # One GCRA bucket per key, shared by UDP and HTTP: alternate the two as
    # fast as they answer for 1 s.  Together they get burst + qps x elapsed
    # (+-1); a bucket per protocol would admit about twice that.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stamps, served, limited_http = [], {"udp": 0, "http": 0}, []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        sent = time.monotonic()
        if len(stamps) % 2:
            reply = server.udp_ask(b"BTC pub-key", sock)
            served["udp"] += b'"asset"' in reply
            assert b'"asset"' in reply or reply.startswith(b'{"error":"rate_limited"'), reply
        else:
            answer = server.http("GET", "/v1/BTC", {"X-API-Key": "pub-key"})
            served["http"] += answer[0] == 200
            assert answer[0] in (200, 429), answer
            if answer[0] == 429:
                limited_http.append(answer)
        stamps.append((sent, time.monotonic()))
    sock.close()
    least, most = gcra_bounds(100, 10, stamps)
    assert served["udp"] > 0 and served["http"] > 0, served
    assert least <= served["udp"] + served["http"] <= most, (least, served, most)
    assert limited_http and limited_http[0][1]["Retry-After"] == "1"
    assert orjson.loads(limited_http[0][2]) == {"error": "rate_limited"}
    # a partner key is never limited
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert all(b'"asset"' in server.udp_ask(b"BTC partner-key", sock) for _ in range(1000))
    sock.close()
    assert server.terminate() == 0


def test_usage_is_exact_after_sigterm_and_survives_restart(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "partner", "k1")
    server = serve("--keystore", str(db))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(500):
        assert b'"asset"' in server.udp_ask(b"SOL k1", sock)
    for _ in range(50):
        assert server.http("GET", "/v1/SOL", {"X-API-Key": "k1"})[0] == 200
    assert server.terminate() == 0            # SIGTERM: drain and final flush
    assert month_count(db, "k1") == 550

    server = serve("--keystore", str(db))
    for _ in range(25):
        assert b'"asset"' in server.udp_ask(b"SOL k1", sock)
    sock.close()
    assert server.terminate() == 0
    assert month_count(db, "k1") == 575


def test_kill_9_loses_at_most_one_flush_interval(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "partner", "k9")
    server = serve("--keystore", str(db))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for _ in range(400):
        sent += b'"asset"' in server.udp_ask(b"ADA k9", sock)
    time.sleep(0.35)                          # > 3 flush intervals of 100 ms since the last request
    recent = 0
    deadline = time.monotonic() + 0.05        # requests inside the last (unflushed) interval
    while time.monotonic() < deadline:
        recent += b'"asset"' in server.udp_ask(b"ADA k9", sock)
    sock.close()
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    persisted = month_count(db, "k9")
    assert sent <= persisted <= sent + recent


def test_admin_routes_metrics_and_profile_switch(serve, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    server = serve("--no-keys")
    for _ in range(20):
        server.udp_ask(b"BTC")
    status, _, raw = server.admin("GET", "/admin/stats")
    stats = orjson.loads(raw)
    assert status == 200 and stats["profile"] == "dev"
    assert stats["udp"]["totals"]["hits"] >= 20 and stats["udp"]["cache_hit_pct"] == 100.0
    assert set(stats["feed"]["sources"]) == {"sim-a", "sim-b"}
    assert "rates_per_s" in stats["udp"] and "http" in stats

    status, headers, raw = server.admin("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    assert sum(s.value for s in families["beastnet_udp_hits"].samples) >= 20
    assert "beastnet_feed_source_ticks" in families and "beastnet_http_requests" in families

    assert server.admin("GET", "/healthz")[0] == 200
    assert server.admin("POST", "/admin/reset", {"Content-Length": "0"})[0] == 200
    stats = orjson.loads(server.admin("GET", "/admin/stats")[2])
    assert stats["udp"]["totals"]["hits"] == 0
    status, _, raw = server.admin("POST", "/admin/profile?name=stress-udp-direct",
                                  {"Content-Length": "0"})
    assert status == 200 and orjson.loads(raw)["changed"] == {"feed_rounds_per_s": 1.0,
                                                               "log_level": "info"}
    assert orjson.loads(server.admin("GET", "/admin/profile")[2])["live"]["feed_rounds_per_s"] == 1.0
    assert server.admin("POST", "/admin/profile?name=turbo", {"Content-Length": "0"})[0] == 400
    assert server.terminate() == 0


def test_admin_token_is_enforced(serve):
    token = "t0k3n-long-enough-123"
    server = serve("--no-keys", env={"BEASTNET_ADMIN_TOKEN": token})
    assert server.admin("GET", "/admin/stats")[0] == 401
    assert server.admin("GET", "/admin/stats", {"X-API-Key": "wrong-token-xxxxxxx"})[0] == 401
    assert server.admin("GET", "/admin/stats", {"X-API-Key": token})[0] == 200
    assert server.admin("GET", "/healthz")[0] == 200          # health stays open for probes
    assert server.terminate() == 0


@pytest.mark.parametrize("args,message", [
    (["--profile", "turbo"], "unknown profile 'turbo'"),
    (["--batch", "0"], "batch must be 1..1024"),
    (["--replay", "/nonexistent.jsonl"], "is not a file"),
    (["--stream-compress-min-bytes", "-1"], "--stream-compress-min-bytes must be 0 (off)..16 MiB"),
])
def test_bad_configuration_is_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "beastnet", "serve", *args], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("beastnet serve: error:")


def test_a_failed_start_gives_back_its_log_file_regression(tmp_path):
    """Serve closes its log file when start-up fails; the leak check then
    blamed whichever test ran next."""
    with pytest.raises(AssertionError, match="serve exited 2"):
        Serve(tmp_path, "--batch", "0")


def test_keys_are_stored_hashed_never_in_plaintext(tmp_path):
    from beastnet.serve.stores.sqlite import KeyStore
    db = tmp_path / "keys.db"
    with KeyStore(str(db)) as store:
        key = store.add("pro", label="acme")
        store.add_usage({api_key_id(key): 3}, "2026-01")
        assert store.usage(key, "2026-01") == 3
        [row] = store.list("2026-01")
        assert row["key"] == api_key_id(key) and row["prefix"] == key[:10] + "…"
        table = APIKeyTable()
        assert store.sync_into(table) == 1 and table.admit(key)[0] == "ok"
        store.revoke(key)
        store.sync_into(table)
        assert table.admit(key)[0] == "unauthorized"
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    assert key.encode() not in store_bytes and key[10:].encode() not in store_bytes


def test_a_plaintext_key_store_is_migrated_keeping_keys_and_usage(tmp_path):
    """A store written before keys were hashed: every key still admits, with
    its usage and state; the file no longer holds a key."""
    from beastnet.serve.stores.sqlite import KeyStore
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE api_keys (key TEXT PRIMARY KEY, tier TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked_at REAL);
        CREATE TABLE usage (key TEXT NOT NULL, month TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (key, month));
        INSERT INTO api_keys VALUES ('bk_old_public_key_0123', 'public', 'a', 1, NULL);
        INSERT INTO api_keys VALUES ('bk_old_partner_key_456', 'partner', 'b', 2, NULL);
        INSERT INTO api_keys VALUES ('bk_old_revoked_key_789', 'pro', 'c', 3, 4);
        INSERT INTO usage VALUES ('bk_old_public_key_0123', '2026-01', 41);
        INSERT INTO usage VALUES ('bk_old_partner_key_456', '2026-01', 7);
    """)
    conn.close()
    with KeyStore(str(db)) as store:
        rows = {r["prefix"]: r for r in store.list("2026-01")}
        assert {p: (r["tier"], r["revoked"], r["month_count"]) for p, r in rows.items()} == {
            "bk_old_pub…": ("public", False, 41), "bk_old_par…": ("partner", False, 7),
            "bk_old_rev…": ("pro", True, 0)}
        assert store.usage("bk_old_public_key_0123", "2026-01") == 41
        table = APIKeyTable()
        assert store.sync_into(table, "2026-01") == 2
        assert table.admit("bk_old_public_key_0123")[0] == "ok"
        assert table.admit("bk_old_partner_key_456")[0] == "ok"
        assert table.admit("bk_old_revoked_key_789")[0] == "unauthorized"
        store.add_usage({api_key_id("bk_old_public_key_0123"): 1}, "2026-01")
        assert store.usage("bk_old_public_key_0123", "2026-01") == 42
    with KeyStore(str(db)) as store:            # a second open finds nothing to migrate
        assert len(store.list()) == 3
    # Not even in the file's free pages: the migration rewrites the file.
    store_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("old.db*"))
    assert b"key_0123" not in store_bytes and b"key_456" not in store_bytes


def test_corrupt_keystore_is_reported(tmp_path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not sqlite" * 300)
    proc = subprocess.run([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                           "--udp-port", "0", "--http-port", "0", "--admin-port", "0",
                           "--keystore", str(db)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "corrupt.db" in proc.stderr and "not a database" in proc.stderr


def test_replay_feed_with_bad_lines(serve, tmp_path):
    ticks = tmp_path / "ticks.jsonl"
    lines = [orjson.dumps({"asset": "BTC", "price": 100 + i, "ts": 1000 + i, "source": "rec"})
             .decode() for i in range(5)]
    lines.insert(2, "{broken")
    ticks.write_text("\n".join(lines) + "\n")
    server = serve("--no-keys", "--replay", str(ticks), "--replay-speed", "0")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = server.udp_ask(b"BTC")
        if b'"price":104' in reply:
            break
        time.sleep(0.05)
    assert b'"price":104' in reply and b'"source":"rec"' in reply
    assert server.terminate() == 0
    assert "ticks.jsonl:3: skipped" in server.output()


def test_stats_command_reads_a_running_server(serve):
    server = serve("--no-keys")
    for _ in range(10):
        server.udp_ask(b"BTC")
    url = f"http://127.0.0.1:{server.admin_port}"
    table = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "UDP" in table.stdout and "HTTP" in table.stdout and "feed sim-a" in table.stdout
    raw = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert orjson.loads(raw.stdout)["udp"]["totals"]["hits"] >= 10
    assert server.terminate() == 0
    down = subprocess.run([sys.executable, "-m", "beastnet", "stats", "--url", url],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("beastnet stats: error:")


def test_stream_compression_threshold_lets_the_stress_ladder_measure_deflate(serve):
    """Prices (~106 bytes) sit under the engine's 1 KiB default, so the stress
    ladder's compression dimension was skipped against serve.  With the
    threshold under them it runs: every price comes deflated, and the share
    saved is what zlib itself saves on such a body (no context takeover)."""
    import zlib

    from beastnet.loadgen.ws.config import WSLoadConfig
    from beastnet.loadgen.ws.stress import StressProbes, StressThresholds, run_stress
    server = serve("--no-keys", "--stream-compress-min-bytes", "64")
    status, _, body = server.http("GET", "/v1/BTC")
    assert status == 200 and len(body) >= 64
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    alone = deflater.compress(body) + deflater.flush(zlib.Z_SYNC_FLUSH)
    expected_saved = 1.0 - (len(alone) - 4) / len(body)    # RFC 7692 drops 00 00 ff ff
    # Thresholds for ~100-byte messages: the share saved is small and the
    # client's inflate time per KiB is mostly its per-message cost.
    body_ = run_stress(WSLoadConfig(port=server.http_port, symbols=["BTC", "ETH", "SOL"],
                                    duration_s=1.0),
                       levels=[1, 10],
                       probes=StressProbes(dimensions=["compression"],
                                           server_stats=f"http://127.0.0.1:{server.admin_port}"),
                       thresholds=StressThresholds(compression_saved=(0.05, 0.0),
                                                   inflate_us_per_kib=(500.0, 5000.0)))
    for level in body_["levels"]:
        dim = level["dimensions"]["compression"]
        m = dim["metrics"]
        assert dim["verdict"] == "pass", (level["connections"], dim["reasons"])
        assert m["compressed_messages"] > 0
        assert m["inflated_bytes"] > m["deflated_bytes"] > 0
        assert abs(m["compression_saved"] - expected_saved) < 0.05, (m, expected_saved)
        assert m["server_deflated"] > 0 and m["server_deflate_us_per_publication"] > 0
        assert m["server_deflate_ns_per_message"] > 0
    # The server deflates once per publication, whatever the subscribers: ten
    # times the connections (each run as long) is not ten times the deflates.
    one, ten = (lv["dimensions"]["compression"]["metrics"]["server_deflated"]
                for lv in body_["levels"])
    assert ten < 3 * one, (one, ten)
    assert not any("compression" in n for n in body_["not_measured"])
    assert server.terminate() == 0


def test_ws_stress_server_stats_unreachable_is_one_line_before_any_run(capsys):
    from beastnet.cli import main
    assert main(["ws", "stress", "ws://127.0.0.1:1/v1/stream", "--dimensions", "compression",
                 "--server-stats", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "beastnet ws stress: --server-stats http://127.0.0.1:1/admin/stats: "), err
