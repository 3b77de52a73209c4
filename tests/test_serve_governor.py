"""The governor in `beastnet serve`: its profile parameters switched live,
reported in /admin/stats, /metrics and the cluster snapshot; its reactions to
red flags, bounded, logged and counted; the readers' live batch it moves."""
from __future__ import annotations

import http.client
import logging
import socket

import orjson
import pytest

from beastnet import ResponseTable, UDPServer
from beastnet.serve.cluster import GAUGES, SNAPSHOT_COUNTERS
from beastnet.serve.config import ConfigError, load_config
from beastnet.serve.governor import COOLDOWN_S
from beastnet.serve.keys import configured_tiers
from beastnet.serve.service import PriceService

pytestmark = pytest.mark.timeout(90)


def admin(svc: PriceService, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*svc.admin.address[:2], timeout=5)
    try:
        conn.request(method, path, headers={"Content-Length": "0"} if method == "POST" else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def service(tmp_path, **overrides) -> PriceService:
    values = {"udp_port": 0, "http_port": 0, "admin_port": 0, "feed": "sim"}
    values.update(overrides)
    return PriceService(load_config(profile="dev", overrides=values))


def test_a_profile_switch_turns_the_governor_on_live_and_every_view_shows_it(tmp_path):
    with service(tmp_path) as svc:
        assert svc.http.stats()["governor"]["enabled"] is False
        status, body = admin(svc, "POST", "/admin/profile?name=dev&adaptive_enabled=true"
                                          "&adaptive_target_ms=30&adaptive_max_limit=200")
        assert status == 200, body
        assert orjson.loads(body)["changed"] == {"adaptive_enabled": True,
                                                 "adaptive_target_ms": 30.0,
                                                 "adaptive_max_limit": 200}
        engine = svc.http.stats()["governor"]
        assert (engine["enabled"], engine["target_ms"], engine["max_limit"]) == (True, 30.0, 200)
        udp_engine = svc.udp.stats()["governor"]       # the UDP readers' own limit
        assert (udp_engine["enabled"], udp_engine["max_limit"]) == (True, 200)
        stats = orjson.loads(admin(svc, "GET", "/admin/stats")[1])
        assert stats["governor"]["enabled"] is True and stats["governor"]["limit"] == 20
        assert stats["live_parameters"]["adaptive_enabled"] is True
        # What the plan runner reads to know the node has a governor, and its state.
        profile = orjson.loads(admin(svc, "GET", "/admin/profile")[1])
        assert profile["profile"] == "dev" and profile["live"]["adaptive_enabled"] is True
        assert stats["governor"]["shed_public"] == 0
        assert stats["governor"]["udp"] == {"limit": 20, "inflight": 0, "shed_public": 0,
                                            "shed_partner": 0}
        assert stats["governor"]["actions"]["udp_batch"] == 0
        metrics = admin(svc, "GET", "/metrics")[1].decode()
        assert "beastnet_governor_enabled 1" in metrics
        assert "beastnet_governor_limit 20" in metrics
        assert 'beastnet_http_shed_public_total{thread="0"} 0' in metrics
        assert 'beastnet_udp_shed_public_total{thread="0"} 0' in metrics
        counters = svc.counters()
        snapshot = {name: counters.get(group, {}).get(field)
                    for name, group, field in SNAPSHOT_COUNTERS}
        assert snapshot["governor_enabled"] == 1 and snapshot["governor_limit"] == 20
        assert snapshot["http_shed_public"] == 0 and snapshot["http_shed_partner"] == 0
        assert snapshot["udp_shed_public"] == 0 and snapshot["udp_shed_partner"] == 0
        assert {"governor_enabled", "governor_limit"} <= GAUGES
        # The profile alone again: dev leaves the governor off.
        status, body = admin(svc, "POST", "/admin/profile?name=dev")
        assert status == 200 and orjson.loads(body)["changed"]["adaptive_enabled"] is False
        assert svc.http.stats()["governor"]["enabled"] is False
        assert svc.udp.stats()["governor"]["enabled"] is False


@pytest.mark.parametrize("query, says", [
    ("adaptive_enabled=maybe", "adaptive_enabled must be bool"),
    ("adaptive_min_limit=0", "adaptive_min_limit"),
    ("adaptive_min_limit=50&adaptive_max_limit=10", "adaptive_min_limit"),
    ("adaptive_tolerance=0.5", "adaptive_tolerance must be 1..10"),
    ("udp_port=1", "udp_port is not a live parameter"),
])
def test_a_bad_live_parameter_is_refused_and_nothing_changes(tmp_path, query, says):
    with service(tmp_path) as svc:
        status, body = admin(svc, "POST", f"/admin/profile?name=dev&{query}")
        assert status == 400 and says in orjson.loads(body)["detail"]
        assert svc.cfg.adaptive_enabled is False and svc.cfg.adaptive_min_limit == 4
        assert svc.http.stats()["governor"]["enabled"] is False


def totals(udp_rx=0, udp_drops=0, bg_drops=0, bg_offered=0) -> dict[str, int]:
    return {"udp_rx": udp_rx, "udp_drops": udp_drops, "bg_drops": bg_drops,
            "bg_offered": bg_offered}


def test_udp_drops_double_the_batch_up_to_its_bound_logged_and_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="beastnet.serve.governor")
    with service(tmp_path, batch=16, adaptive_enabled=True, adaptive_max_batch=48) as svc:
        governor = svc.component("governor")
        assert svc.udp.batch_capacity == 48
        governor.react(totals(), now=0.0)
        # 2 % of the datagrams dropped: the batch doubles.
        assert governor.react(totals(udp_rx=9800, udp_drops=200), now=1.0) == ["udp_batch"]
        assert svc.udp.batch == 32
        # Still red within the cooldown: it waits for the effect.
        assert governor.react(totals(udp_rx=19600, udp_drops=400), now=2.0) == []
        # After it, once more, up to the bound (48, not 64) ...
        assert governor.react(totals(udp_rx=29400, udp_drops=600),
                              now=2.0 + COOLDOWN_S) == ["udp_batch"]
        assert svc.udp.batch == 48
        # ... where a red flag only counts.
        assert governor.react(totals(udp_rx=39200, udp_drops=800), now=3.0 + 2 * COOLDOWN_S) == []
        assert svc.udp.batch == 48 and governor.at_bound["udp_batch"] == 1
        # Under 1 %: nothing.
        assert governor.react(totals(udp_rx=139200, udp_drops=801), now=10.0 + 3 * COOLDOWN_S) == []
        stats = svc.stats()["governor"]
        assert stats["actions"]["udp_batch"] == 2 and stats["udp_batch"] == 48
        assert [(a["from"], a["to"]) for a in stats["last_actions"]] == [(16, 32), (32, 48)]
        lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event")
                 == "governor_action"]
        assert [(r.fields["action"], r.fields["to"]) for r in lines] == [("udp_batch", 32),
                                                                          ("udp_batch", 48)]
        # Off: the profile's batch again, logged as a restore.
        assert admin(svc, "POST", "/admin/profile?name=dev&adaptive_enabled=false")[0] == 200
        assert svc.udp.batch == 16 and governor.actions["restore"] == 1


def test_background_drops_slow_the_usage_flushes_within_bounds(tmp_path):
    with service(tmp_path, keystore=str(tmp_path / "keys.db"), adaptive_enabled=True,
                 adaptive_max_flush_interval_s=0.3) as svc:
        governor, keys = svc.component("governor"), svc.component("api_keys")
        usage = svc.component("usage_log")
        assert keys.flusher.interval_s == 0.1 and usage.log.interval_s == 0.1
        governor.react(totals(), now=0.0)
        # 10 % of the background work dropped: the interval doubles, then is capped.
        assert governor.react(totals(bg_drops=10, bg_offered=100), now=1.0) == ["flush_interval"]
        assert keys.flusher.interval_s == pytest.approx(0.2)
        assert governor.react(totals(bg_drops=20, bg_offered=200),
                              now=1.0 + COOLDOWN_S) == ["flush_interval"]
        assert keys.flusher.interval_s == pytest.approx(0.3)
        assert usage.log.interval_s == pytest.approx(0.3)
        assert svc.stats()["governor"]["flush_interval_s"] == pytest.approx(0.3)
        assert admin(svc, "POST", "/admin/profile?name=dev&adaptive_enabled=false")[0] == 200
        assert keys.flusher.interval_s == pytest.approx(0.1)
        assert usage.log.interval_s == pytest.approx(0.1)


def test_the_background_signal_is_the_usage_logs_drops(tmp_path):
    with service(tmp_path, keystore=str(tmp_path / "keys.db"), adaptive_enabled=True) as svc:
        usage = svc.component("usage_log").log
        usage.rows_queued, usage.bg_drop = 90, 10       # what a full queue would have counted
        signals = svc.component("governor")._signals()
        assert (signals["bg_drops"], signals["bg_offered"]) == (10, 100)


def test_the_background_signal_is_the_miss_queues_drops_without_a_usage_queue(tmp_path):
    with service(tmp_path, adaptive_enabled=True) as svc:
        signals = svc.component("governor")._signals()
        udp, http_ = svc.udp.stats()["totals"], svc.http.stats()["totals"]
        assert signals["bg_drops"] == udp["queue_drops"] + http_["queue_drops"]
        assert signals["bg_offered"] == udp["misses"] + http_["misses"]


def test_partners_are_shed_last_and_a_tier_may_say_so():
    tiers = configured_tiers({"gold": {"qps": 5, "shed_last": True}})
    assert tiers["partner"].shed_last and tiers["gold"].shed_last
    assert not tiers["public"].shed_last and not tiers["pro"].shed_last
    with pytest.raises(ConfigError, match="shed_last must be true or false"):
        load_config(profile="dev", overrides={"tiers": {"gold": {"shed_last": "yes"}}})


def test_the_readers_batch_changes_live_within_its_capacity():
    table = ResponseTable()
    table["BTC"] = b'{"p":1}'
    with UDPServer(table, sockets=1, batch=4, batch_capacity=64, cpu_steering=False) as server:
        assert server.batch_capacity == 64
        server.set_batch(64)
        with pytest.raises(ValueError):
            server.set_batch(65)
        with pytest.raises(ValueError):
            server.set_batch(0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.connect(server.address[:2])
        for _ in range(100):
            sock.send(b"@1 BTC")
        answers = [sock.recv(512) for _ in range(100)]
        sock.close()
        assert answers == [b'@1 {"p":1}'] * 100
        assert server.stats()["batch"] == 64
