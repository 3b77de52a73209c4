"""Webhook subscriptions: the store, tiers, the SSRF guard, Standard Webhooks
signatures checked by the `standardwebhooks` package, the `beastnet
webhooks` command, and the native UDP pusher's batches."""
from __future__ import annotations

import array
import socket
import subprocess
import sys
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from beastnet import ResponseTable
from beastnet._core import UDPPusher
from beastnet.serve.assets import ASSETS
from beastnet.serve.config import ConfigError, load_config
from beastnet.serve.push import WebhookPusher, _sockaddr
from beastnet.serve.stores.sqlite import WebhookStore
from beastnet.serve.webhooks import (DEFAULT_WEBHOOK_TIERS, WebhookError, check_address,
                                     new_secret, parse_endpoint, sign_headers, webhook_tiers)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path):
    with WebhookStore(str(tmp_path / "keys.db"), DEFAULT_WEBHOOK_TIERS, ASSETS,
                      allow_private=True) as s:
        yield s


def test_default_webhook_tiers_and_config_overrides():
    assert {(t.name, t.interval_s, t.max_assets) for t in DEFAULT_WEBHOOK_TIERS.values()} == {
        ("starter", 60.0, 9), ("standard", 15.0, 30), ("professional", 6.0, 75),
        ("enterprise", 3.0, 150)}
    tiers = webhook_tiers({"enterprise": {"interval_s": 1}, "test": {"max_assets": 2}})
    assert tiers["enterprise"].interval_s == 1.0 and tiers["enterprise"].max_assets == 150
    assert tiers["test"].max_assets == 2


def test_config_checks_webhook_settings(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[webhook_tiers.x]\ninterval_s = 0\n")
    with pytest.raises(ConfigError, match="interval_s"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="webhook_max_attempts"):
        load_config(overrides={"webhook_max_attempts": 0})
    with pytest.raises(ConfigError, match="need a keystore"):
        load_config(profile="dev", overrides={"webhooks": True})


def test_add_list_pause_resume_remove(store):
    sub = store.add("udp://127.0.0.1:9999", "enterprise", ["BTC", "ETH"], label="desk")
    assert sub["method"] == "udp" and sub["state"] == "active"
    assert sub["secrets"][0].startswith("whsec_")
    store.set_state(sub["id"], "paused", only_from=("active",))
    with pytest.raises(WebhookError, match="is not active"):
        store.set_state(sub["id"], "paused", only_from=("active",))
    store.set_state(sub["id"], "active", only_from=("paused", "disabled"))
    assert [s["id"] for s in store.list("active")] == [sub["id"]]
    store.remove(sub["id"])
    assert store.list() == []
    with pytest.raises(WebhookError, match="no subscription"):
        store.remove(sub["id"])


@pytest.mark.parametrize("tier, n, ok", [("starter", 9, True), ("starter", 10, False),
                                         ("enterprise", 150, True)])
def test_assets_capped_by_tier(store, tier, n, ok):
    assets = list(ASSETS[:n])
    if ok:
        assert len(store.add("udp://127.0.0.1:9", tier, assets)["assets"]) == n
    else:
        with pytest.raises(WebhookError, match=f"allows 9 assets, {n} given"):
            store.add("udp://127.0.0.1:9", tier, assets)


@pytest.mark.parametrize("assets, message", [(["NOPE"], "unknown asset"), ([], "at least one"),
                                             (["BTC", "BTC"], "twice")])
def test_bad_assets_refused(store, assets, message):
    with pytest.raises(WebhookError, match=message):
        store.add("udp://127.0.0.1:9", "starter", assets)


@pytest.mark.parametrize("endpoint, message", [
    ("http://example.com/x", "https or udp"), ("udp://127.0.0.1", "needs a port"),
    ("udp://127.0.0.1:9/path", "host:port only"), ("https://user:pw@example.com/", "credentials"),
    ("https:///x", "no host"), ("https://a b/", "without spaces"), ("", "1-2048"),
    ("https://example.com:99999/", "out of range"), ("https://example.com/#frag", "fragment")])
def test_malformed_endpoints(endpoint, message):
    with pytest.raises(WebhookError, match=message):
        parse_endpoint(endpoint)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "224.0.0.1", "0.0.0.0", "::1", "::",
                                     "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
                                     "100.64.0.1"])
def test_ssrf_guard_refuses_private_addresses(address):
    assert refusal(address, allow_private=False).endswith(
        "refused (allowed by webhooks_allow_private, --allow-private)")
    assert refusal(address, allow_private=True) == ""


def refusal(address: str, allow_private: bool) -> str:
    """check_address's refusal of `address`, or "" when it lets it through."""
    try:
        check_address(address, allow_private)
    except WebhookError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_ssrf_guard_lets_public_addresses_through(address):
    assert refusal(address, allow_private=False) == ""


def test_ssrf_guard_at_add_time(tmp_path):
    with WebhookStore(str(tmp_path / "k.db"), assets=ASSETS) as strict:
        for endpoint in ("https://127.0.0.1/x", "https://localhost:8443/x", "udp://[::1]:9",
                         "udp://10.0.0.1:9"):
            with pytest.raises(WebhookError, match="refused"):
                strict.add(endpoint, "starter", ["BTC"])
        with pytest.raises(WebhookError, match="does not resolve"):
            strict.add("https://no-such-host.invalid/x", "starter", ["BTC"])
        assert strict.list() == []


def test_signatures_verify_with_standardwebhooks():
    """Several secrets during a rotation: each one alone verifies the delivery."""
    secrets_ = [new_secret(), new_secret(), new_secret()]
    body = b'[{"asset":"BTC","price":1.5}]'
    headers = sign_headers(secrets_, "msg_abc", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 3
    for secret in secrets_:
        assert Webhook(secret).verify(body, headers) == [{"asset": "BTC", "price": 1.5}]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets_[0]).verify(body + b" ", headers)


def test_compat_signature_header():
    import hashlib
    import hmac
    from base64 import b64decode
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", 1_700_000_000, b"[]", style="compat")
    expected = hmac.new(b64decode(secret[6:]), b"[]", hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == "sha256=" + expected


def test_rotation_keeps_three_secrets(store):
    sub = store.add("udp://127.0.0.1:9", "starter", ["BTC"])
    rotated = [store.rotate_secret(sub["id"]) for _ in range(4)]
    assert store.get(sub["id"])["secrets"] == rotated[::-1][:3]
    store.drop_old_secrets(sub["id"])
    assert store.get(sub["id"])["secrets"] == [rotated[-1]]


def test_phase_and_grid():
    """Phases are stable and spread over the interval; the grid never drifts."""
    phases = [WebhookPusher.phase_s(f"sub_{i}", 3.0) for i in range(10_000)]
    assert phases[7] == WebhookPusher.phase_s("sub_7", 3.0)
    buckets = [0] * 30
    for p in phases:
        buckets[int(p / 0.1)] += 1
    assert min(buckets) > 250 and max(buckets) < 420, buckets   # ~333 per 100 ms
    due = WebhookPusher.next_due(0.25, 3.0, 1000.0)
    assert due == pytest.approx(1002.25)
    assert WebhookPusher.next_due(0.25, 3.0, due) == pytest.approx(due + 3.0)
    assert WebhookPusher.next_due(0.25, 3.0, due + 7.9) == pytest.approx(due + 9.0)
    # Each due time, fed back in, gives a later one (rounding never repeats a cycle).
    for phase, interval in ((0.1, 0.3), (0.2718, 0.3), (1.234, 3.0), (0.05, 0.2)):
        t = 1_796_090_000.0
        for _ in range(2000):
            nxt = WebhookPusher.next_due(phase, interval, t)
            assert t < nxt <= t + interval + 1e-6
            t = nxt


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beastnet", "webhooks", "--db",
                           str(tmp_path / "k.db"), *args], capture_output=True, text=True,
                          timeout=30)


def test_cli_round_trip(tmp_path):
    out = run_cli(tmp_path, "--allow-private", "add", "udp://127.0.0.1:9", "--tier", "standard",
                  "--assets", "BTC,ETH")
    assert out.returncode == 0, out.stderr
    sub_id, secret = out.stdout.split()
    assert secret.startswith("whsec_")
    listed = run_cli(tmp_path, "list")
    assert sub_id in listed.stdout and secret not in listed.stdout
    assert run_cli(tmp_path, "pause", sub_id).returncode == 0
    assert run_cli(tmp_path, "resume", sub_id).returncode == 0
    new = run_cli(tmp_path, "rotate-secret", sub_id).stdout.strip()
    assert new.startswith("whsec_") and new != secret
    with WebhookStore(str(tmp_path / "k.db"), assets=ASSETS) as s:
        s.write_log([(time.time(), sub_id, "msg_1", "https", 2, 1, 200, 1, 3.0, "",
                      '["BTC","ETH"]', "[61234.5,3012.25]", '["sim-a","sim-b"]')])
    log = run_cli(tmp_path, "log", "--id", sub_id)
    assert log.returncode == 0 and "BTC=61234.5@sim-a ETH=3012.25@sim-b" in log.stdout
    assert run_cli(tmp_path, "remove", sub_id).returncode == 0


@pytest.mark.parametrize("args, message", [
    (("add", "udp://127.0.0.1:9", "--assets", "BTC"), "refused"),
    (("add", "https://example.invalid/x", "--assets", "BTC,,ETH"), "empty asset"),
    (("add", "ftp://x", "--assets", "BTC"), "https or udp"),
    (("add", "udp://8.8.8.8:9", "--assets", "NOPE"), "unknown asset"),
    (("add", "udp://8.8.8.8:9", "--tier", "gold", "--assets", "BTC"), "unknown tier"),
    (("add", "udp://8.8.8.8:9", "--assets", ",".join(ASSETS[:10])), "allows 9 assets"),
    (("pause", "sub_nope"), "no subscription"),
    (("log", "--limit", "0"), "--limit"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, args, message):
    out = run_cli(tmp_path, *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_udp_pusher_batches_and_counts_refusals():
    """1,102 datagrams in one push: two batches (1,024 + 78); a body too large
    for a datagram (EMSGSIZE) is counted and skipped, and the second batch
    goes on after it (one more sendmmsg for the datagram behind it)."""
    keys = [f"K{i}" for i in range(100)]
    table = ResponseTable({k: k.encode() for k in keys})
    table.set("BIG", b"x" * 70_000)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tx.setblocking(False)
    try:
        pusher = UDPPusher(table, keys + ["BIG", "MISSING"], tx)
        addr = _sockaddr(socket.AF_INET, "127.0.0.1", rx.getsockname()[1], True)
        pusher.set_targets([(addr, list(range(100)))] * 11 + [(addr, [0, 100, 101, 1])])
        due = array.array("I", range(12))
        sent = array.array("I", [0] * 12)
        assert pusher.push(due, sent) == 1102
        assert list(sent) == [100] * 11 + [2]
        stats = pusher.stats()
        assert stats["syscalls"] == 3 and stats["send_errors"] == 1 and stats["missing"] == 1
        rx.settimeout(1.0)
        assert sum(1 for _ in range(1102) if rx.recv(100)) == 1102
        with pytest.raises(ValueError):
            pusher.push(array.array("I", [12]), array.array("I", [0]))
        with pytest.raises(ValueError):
            pusher.set_targets([(addr, [102])])
    finally:
        tx.close()
        rx.close()


def test_push_counters_name_every_field_of_bn_push_counters():
    """beastnet.counters.PUSH_COUNTERS names the fields of the native struct,
    in order; stats() reports exactly them; /metrics takes names and help
    from the list."""
    import re
    from pathlib import Path

    from beastnet.counters import PUSH_COUNTERS
    from beastnet.metrics import push_families, render

    pxi = (Path(__file__).resolve().parent.parent / "src" / "beastnet" / "_push.pxi").read_text()
    body = re.search(r"cdef struct bn_push_counters:\n((?:    .*\n)+)", pxi)
    assert body is not None
    fields = re.findall(r"^    uint64_t (\w+)", body.group(1), re.M)
    names = [c.name for c in PUSH_COUNTERS]
    assert fields == names
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        stats = UDPPusher(ResponseTable(), [], sock).stats()
    finally:
        sock.close()
    assert list(stats) == names
    text = render(push_families(stats, "beastnet_webhook_udp")).decode()
    for c in PUSH_COUNTERS:
        assert f"# HELP beastnet_webhook_udp_{c.name}_total {c.help}\n" in text


def _row(i: int, ts: float = 0.0) -> tuple:
    return (ts or time.time(), "sub_x", f"msg_{i}", "https", 1, 1, 200, 1, 1.0, "", '["BTC"]',
            "[1.5]", '["sim-a"]')


def test_delivery_log_micro_batches(store):
    """300 rows or 100 ms, whichever first; stop() writes what is queued."""
    from beastnet.serve.push import DeliveryLog

    log = DeliveryLog(store, batch_rows=300, interval_s=0.1).start()
    try:
        for i in range(1000):
            log.add(_row(i))
        wait_for_rows = time.monotonic() + 5
        while log.written < 1000 and time.monotonic() < wait_for_rows:
            time.sleep(0.01)
        assert log.written == 1000
        assert log.writes <= 5, "a thousand rows go out in a few batches, not row by row"
        log.add(_row(1000))
        t0 = time.monotonic()
        while log.written < 1001 and time.monotonic() < t0 + 2:
            time.sleep(0.005)
        assert 0.0 < time.monotonic() - t0 < 0.5, "a lone row waits at most about one interval"
    finally:
        log.stop()
    slow = DeliveryLog(store, batch_rows=300, interval_s=60.0).start()
    for i in range(7):
        slow.add(_row(2000 + i))
    slow.stop()
    assert slow.written == 7 and len(store.read_log(limit=10_000)) == 1008


def test_delivery_log_keeps_rows_a_failed_write_refused(tmp_path):
    from beastnet.serve.push import DeliveryLog

    store = WebhookStore(str(tmp_path / "k.db"), assets=ASSETS)
    log = DeliveryLog(store, interval_s=60.0)
    log.add(_row(1))
    store.close()                       # every write fails from now on
    assert log.flush() == 0 and log.write_errors == 1 and log.pending == 1


def test_log_columns_added_to_an_older_file(tmp_path):
    """A key store whose delivery log predates asset_list, prices and sources
    gains them when opened; its old rows read with the defaults."""
    import sqlite3

    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE webhook_log (ts REAL NOT NULL, subscription TEXT NOT NULL,
        msg_id TEXT NOT NULL, method TEXT NOT NULL, assets INTEGER NOT NULL,
        attempt INTEGER NOT NULL, status INTEGER NOT NULL, delivered INTEGER NOT NULL,
        latency_ms REAL NOT NULL, error TEXT NOT NULL DEFAULT '');
        INSERT INTO webhook_log VALUES (1.0, 'sub_old', 'msg_0', 'udp', 3, 1, 0, 1, 0.1, '');""")
    db.close()
    with WebhookStore(path, assets=ASSETS) as s:
        s.write_log([_row(1)])
        new, old = s.read_log(limit=10)
    assert (old["subscription"], old["assets"], old["asset_list"], old["prices"]) == \
        ("sub_old", 3, [], None)
    assert (new["asset_list"], new["prices"], new["sources"]) == (["BTC"], [1.5], ["sim-a"])
    with WebhookStore(path, assets=ASSETS) as s:      # a second open adds nothing twice
        assert len(s.read_log(limit=10)) == 2


def test_log_retention(store):
    store.write_log([_row(1, ts=time.time() - 100), _row(2)])
    assert store.prune_log(older_than_s=50) == 1
    assert [r["msg_id"] for r in store.read_log()] == ["msg_2"]
