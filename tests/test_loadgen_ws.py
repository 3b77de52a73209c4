"""The WebSocket load generator against servers of known behaviour
(tests/_ws_scripted.py): latency from a stamp, sequence gaps, reconnects and
their full-jitter backoff, stalls; then against beastnet's own feed, and the
`beastnet load ws://` command."""
from __future__ import annotations

import asyncio
import json
import os
import random
import time

import orjson
import pytest

from beastnet.errors import LoadConfigError
# Imported here, outside any capsys: ProgressLine's default stream is the
# sys.stderr of report's import time, and a capsys stream is closed later
# (tests/test_loadgen_http.py::test_cli_http then writes to it).
from beastnet.loadgen import report  # noqa: F401
from beastnet.loadgen.ws.run import run_ws_load
from beastnet.loadgen.ws.config import WSLoadConfig
from beastnet.loadgen.ws.stress import NOTHING_COMPRESSED
from _ws_scripted import ScriptedServer, feed_server
from support import free_port

pytestmark = pytest.mark.timeout(60)


def config(port: int, **kw) -> WSLoadConfig:
    kw.setdefault("duration_s", 2.0)
    return WSLoadConfig(port=port, path="/", **kw)


# needs_core: a clock is the subject (on six busy workers 47 of the 60
# stamped messages arrived inside the 2 s run)
@pytest.mark.needs_core
def test_latency_from_a_stamp_sent_after_a_fixed_delay_is_within_10_percent():
    delay_s = 0.1

    async def stamped_late(ws, server):
        await ws.recv()                                     # the subscribe message
        delays = server.record.setdefault("delays", [])

        async def one():
            stamp = time.time_ns()
            await asyncio.sleep(delay_s)
            delays.append(time.time_ns() - stamp)
            await ws.send(orjson.dumps({"t": stamp}).decode())
        tasks = []
        for _ in range(60):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        await asyncio.sleep(10)

    with ScriptedServer(stamped_late) as server:
        r = run_ws_load(config(server.port, ts_key="t", ts_unit="ns", duration_s=2.0))
    truth = sorted(server.record["delays"])[len(server.record["delays"]) // 2]
    assert r.received >= 50 and r.histogram.total == r.received
    assert r.extra["no_timestamp"] == 0 and r.extra["clock_skew"] == 0
    # The truth is what the server measured between stamping and sending (the
    # 100 ms sleep plus its overshoot on a busy machine).
    assert truth >= delay_s * 1e9
    assert abs(r.percentile(50) - truth) <= 0.1 * truth


def test_every_20th_sequence_number_dropped_is_counted_exactly():
    async def drops(ws, server):
        await ws.recv()
        for seq in range(1, 402):
            if seq % 20:
                await ws.send(json.dumps({"seq": seq, "ts": time.time_ns() // 10**6}))
            if seq % 50 == 0:
                await asyncio.sleep(0.005)
        await asyncio.sleep(10)

    with ScriptedServer(drops) as server:
        r = run_ws_load(config(server.port, seq_key="seq", connections=2, duration_s=1.5))
    # 20, 40, ..., 400 on each of the two connections; 401 reveals the last.
    assert r.received == 2 * (401 - 20)
    assert r.lost == 2 * 20
    assert r.sent == r.received + r.lost and r.loss_rate == pytest.approx(40 / 802)
    assert r.extra["gap_events"] == 2 * 20
    assert r.extra["seq_backwards"] == 0


def test_random_closes_are_reconnected_with_backoff_within_the_jitter_bound():
    base_ms = 40.0

    async def closes_at_random(ws, server):
        await ws.recv()
        await ws.send('{"ts":1}')
        await asyncio.sleep(random.uniform(0.02, 0.12))
        server.record["closes"] = server.record.get("closes", 0) + 1
        await ws.close(1001, "bye")

    with ScriptedServer(closes_at_random) as server:
        r = run_ws_load(config(server.port, connections=4, duration_s=2.0,
                               backoff_base_ms=base_ms, backoff_cap_ms=1000))
        accepted = server.accepted
    e = r.extra
    # Every upgrade counted was accepted; the run may end while a
    # connection's handshake is in flight (accepted, its 101 not yet read):
    # at most one per connection.
    assert e["upgrades"] <= accepted <= e["upgrades"] + 4, (e["upgrades"], accepted)
    assert e["reconnects"] == e["upgrades"] - 4
    assert e["reconnects"] >= 20
    # Each close is answered by one drawn delay, and an upgrade resets the
    # attempt count, so every delay lies in [0, base].
    # The server closes with a close frame every time: no close is seen as a
    # bare TCP close, and no frame is counted that the server did not send.
    assert r.errors_by_kind.get("closed", 0) == 0
    assert e["close_frames"] <= server.record["closes"]
    assert e["backoff_ms"]["count"] >= e["reconnects"]
    assert e["backoff_ms"]["max"] <= base_ms
    assert e["close_frames"] >= e["reconnects"]
    assert e["reconnect_ms"]["count"] == e["reconnects"]


def test_refused_connects_back_off_exponentially_up_to_the_cap():
    port = free_port()                                      # nobody listens there
    r = run_ws_load(config(port, connections=2, duration_s=1.5, backoff_base_ms=5,
                           backoff_cap_ms=80))
    b = r.extra["backoff_ms"]
    assert r.received == 0 and r.extra["upgrades"] == 0
    assert r.errors_by_kind["connect_refused"] == b["count"] >= 20
    assert b["max"] <= 80
    # Attempts 0-3 draw below 5, 10, 20, 40 ms; the rest uniformly below the cap.
    assert b["max"] > 40 and 20 < b["mean"] < 60


def test_a_500_ms_stall_is_the_longest_gap():
    async def stalls(ws, server):
        await ws.recv()
        last = None
        i = 0
        while True:                     # until the client leaves: no stall at the end
            if i == 60:
                await asyncio.sleep(0.5)
            now = time.monotonic_ns()
            if last is not None:
                server.record["max_gap_ns"] = max(server.record.get("max_gap_ns", 0), now - last)
            last = now
            await ws.send('{"ts":%d}' % (time.time_ns() // 10**6))
            await asyncio.sleep(0.005)
            i += 1

    with ScriptedServer(stalls) as server:
        r = run_ws_load(config(server.port, duration_s=2.0))
        truth_ms = server.record["max_gap_ns"] / 1e6
    assert truth_ms >= 500
    assert abs(r.extra["longest_stall_ms"] - truth_ms) <= 0.1 * truth_ms


def test_ping_answered_with_pong_and_our_pings_get_pongs():
    async def pings(ws, server):
        await ws.recv()
        waiter = await ws.ping(b"hello")
        await asyncio.wait_for(waiter, 2)
        server.record["pong"] = True
        await asyncio.sleep(10)

    with ScriptedServer(pings) as server:
        r = run_ws_load(config(server.port, duration_s=2.0, ping_interval_ms=100))
    assert server.record.get("pong") is True
    assert r.extra["pings_received"] == 1 and r.extra["pongs_sent"] == 1
    assert r.extra["pings_sent"] >= 5 and r.extra["pongs_received"] >= r.extra["pings_sent"] - 1


def test_fragmented_and_oversize_messages_are_counted_once_each():
    async def big(ws, server):
        await ws.recv()
        stamp = time.time_ns()
        await ws.send(iter(['{"t":%d,' % stamp, '"pad":"', "x" * 100, '"}']))   # fragmented
        await ws.send('{"t":%d,"pad":"%s"}' % (stamp, "y" * 200_000))          # > read buffer
        await asyncio.sleep(10)

    with ScriptedServer(big) as server:
        r = run_ws_load(config(server.port, ts_key="t", ts_unit="ns", duration_s=1.0,
                               read_buffer=8192))
    assert r.received == 2 and r.histogram.total == 2
    # websockets sends the three later pieces, then an empty FIN frame.
    assert r.extra["fragments"] == 4
    assert r.extra["payload_bytes"] > 200_000


@pytest.fixture
def beastnet_feed():
    """beastnet's feed over 20 symbols, written every 5 ms with a "ts" stamp."""
    with feed_server() as (server, symbols):
        host, port = server.address[:2]
        yield f"ws://{host}:{port}/v1/stream", symbols


def test_against_beastnet_feed_with_its_subscribe_message(beastnet_feed):
    url, symbols = beastnet_feed
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    r = run_ws_load(WSLoadConfig(port=port, connections=20, threads=2, symbols=symbols,
                                 symbols_per_connection=3, duration_s=1.0))
    assert r.extra["upgrades"] == 20 and r.extra["subscribe_sent"] == 20 and r.errors == 0
    assert r.sent == r.received and r.success_rate == 1.0
    assert r.received > 1000 and r.histogram.total > 0.9 * r.received
    assert r.extra["messages_per_s"] > 0 and r.extra["bytes_per_s"] > 0
    assert r.extra["connect_ms"]["count"] == 20 and r.extra["upgrade_ms"]["count"] == 20


@pytest.mark.parametrize("kw,word", [
    ({"ts_unit": "h"}, "ts_unit"),
    ({"subscribe_template": '{"sub":1}'}, "{symbols}"),
    ({"rate": 10.0}, "pushes"),
    ({"symbols_per_connection": 0}, "symbols_per_connection"),
    ({"path": "nope"}, "path"),
])
def test_bad_configs_are_refused_with_the_setting_named(kw, word):
    with pytest.raises(LoadConfigError, match=word.replace("{", r"\{").replace("}", r"\}")):
        WSLoadConfig(**kw).validate()


def test_subscribe_messages_split_and_templated():
    cfg = WSLoadConfig(symbols=["A", "B", "C"], symbols_per_connection=5, connections=2,
                       symbols_per_message=2, subscribe_template='["sub",{symbols}]')
    per = cfg.connection_symbols()
    assert per == [["A", "B", "C", "A", "B"], ["C", "A", "B", "C", "A"]]
    assert cfg.subscribe_messages(per[0]) == [b'["sub",["A","B"]]', b'["sub",["C","A"]]',
                                              b'["sub",["B"]]']


def test_cli_load_ws_writes_a_json_report(beastnet_feed, tmp_path, capsys):
    from beastnet.cli import main
    url, symbols = beastnet_feed
    out = tmp_path / "r.json"
    rc = main(["load", url, "-c", "4", "--symbols", ",".join(symbols[:5]), "-d", "1.5",
               "--warmup", "0.2", "--server-pid", str(os.getpid()), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads(out.read_text())
    assert report["kind"] == "run" and report["result"]["mode"] == "ws"
    assert report["result"]["received"] > 100 and report["verdict"] == "pass"
    assert "messages" in text and "CLOCK_REALTIME" in text
    rows = report["resources"]
    assert rows and all(r["server_rss_mib"] > 0 and r["generator_rss_mib"] > 0 for r in rows)


def test_cli_ws_density_runs_each_tier_and_judges_it(beastnet_feed, tmp_path, capsys):
    from beastnet.cli import main
    url, symbols = beastnet_feed
    out = tmp_path / "d.json"
    rc = main(["ws", "density", url, "--symbols", ",".join(symbols), "--tiers", "5,40",
               "-c", "2", "-d", "1", "--warmup", "0.2", "--server-pid", str(os.getpid()),
               "--p99-ms", "5000",
               "--json", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["kind"] == "ws-density"
    tiers = report["tiers"]
    assert [t["symbols_per_connection"] for t in tiers] == [5, 40]
    assert [t["distinct_symbols"] for t in tiers] == [5, 20]     # 40 deals the 20 twice
    assert all(t["result"]["received"] > 0 for t in tiers)
    assert all(row["server_rss_mib"] > 0 for t in tiers for row in t["resources"])
    # A healthy feed (a stamp every 5 ms, no sequence, no close) passes every
    # tier's rules (the latency limit is raised: a busy machine is no fault).
    assert all(t["verdict"] in ("pass", "warn") for t in tiers), [t["reasons"] for t in tiers]
    assert report["verdict"] in ("pass", "warn") and rc == 0
    assert f"verdict: {report['verdict'].upper()}" in text


@pytest.mark.parametrize("argv,message", [
    (["load", "wss://127.0.0.1:1/x", "--cacert", "/nonexistent/ca.pem"], "--cacert"),
    (["load", "ws://127.0.0.1:1/x", "--ts-key", 'a"b'], "ts_key"),
    (["ws", "density", "ws://127.0.0.1:1/x", "--tiers", "x"], "--tiers"),
])
def test_cli_bad_usage_is_one_line_and_status_2(argv, message, capsys):
    from beastnet.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_ws_knee_stops_at_the_limit_and_skips_what_the_machine_cannot_reach(
        beastnet_feed, tmp_path, capsys):
    from beastnet.cli import main
    import resource
    url, symbols = beastnet_feed
    out = tmp_path / "k.json"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    beyond = (hard if hard != resource.RLIM_INFINITY else 1 << 20) + 1
    rc = main(["ws", "knee", url, "--symbols", symbols[0], "--steps", f"2,8,{beyond}",
               "-d", "0.8", "--warmup", "0.2", "--p95-ms", "5000", "--json", str(out)])
    capsys.readouterr()
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert [s["subscribers"] for s in steps] == [2, 8, beyond]
    assert [s["verdict"] for s in steps] == ["pass", "pass", "skipped"]
    assert "RLIMIT_NOFILE" in steps[2]["reasons"][0] or "ephemeral" in steps[2]["reasons"][0]
    assert report["knee"] == 8 and report["verdict"] == "warn" and rc == 0


def test_ws_knee_ends_at_the_first_step_over_the_limit(beastnet_feed):
    from beastnet.loadgen.ws.knee import run_knee
    url, symbols = beastnet_feed
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    # Millisecond stamps: no delivery is under 0.0001 ms at p95 on any machine.
    body = run_knee(WSLoadConfig(port=port, symbols=symbols[:1], duration_s=0.6, warmup_s=0.2),
                    steps=[2, 4], p95_ms=0.0001)
    assert [s["verdict"] for s in body["steps"]] == ["fail"]
    assert body["knee"] is None and body["verdict"] == "fail"


def test_cli_ws_stress_judges_levels_and_skips_the_unreachable(beastnet_feed, tmp_path,
                                                               capsys):
    from beastnet.cli import main
    import resource
    url, symbols = beastnet_feed
    out = tmp_path / "s.json"
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    beyond = (hard if hard != resource.RLIM_INFINITY else 1 << 20) + 1
    rc = main(["ws", "stress", url, "--symbols", ",".join(symbols[:3]),
               "--levels", f"2,6,{beyond}", "-d", "0.8", "--warmup", "0.2",
               "--delivery-p95-ms", "2000", "5000", "--delivery-p99-ms", "2000", "5000",
               "--upgrade-p95-ms", "2000", "5000", "--round-trip-p95-ms", "2000", "5000",
               "--round-trip-p99-ms", "2000", "5000", "--subscribe-p95-ms", "2000", "5000",
               "--json", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    levels = report["levels"]
    # beastnet negotiates permessage-deflate but sends these small bodies
    # plain: that dimension is skipped, so a level is at best a warning.
    assert [lv["verdict"] for lv in levels] == ["warn", "warn", "skipped"]
    assert levels[0]["reasons"] == levels[1]["reasons"] == [
        f"compression: skipped: {NOTHING_COMPRESSED}"]
    assert report["counts"] == {"pass": 0, "warn": 2, "fail": 0, "skipped": 1}
    assert report["verdict"] == "warn" and rc == 0           # a skipped level is no pass
    assert levels[1]["metrics"]["connected"] == 1.0
    assert levels[1]["metrics"]["delivery_p95_ms"] is not None
    deg = report["degradation"]
    assert deg["most_degraded"] in deg["by_dimension"]
    assert any(m.startswith("permission checks (no denied key") for m in report["not_measured"])
    assert "not measured" in text


def test_ws_stress_fails_a_level_past_its_threshold(beastnet_feed):
    from beastnet.loadgen.ws.stress import StressThresholds, run_stress
    url, symbols = beastnet_feed
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    body = run_stress(WSLoadConfig(port=port, symbols=symbols[:1], duration_s=0.6,
                                   warmup_s=0.2), levels=[3],
                      thresholds=StressThresholds(delivery_p95_ms=(0.00005, 0.0001)))
    assert body["levels"][0]["verdict"] == "fail" and body["verdict"] == "fail"
    assert any("delivery_p95_ms" in r for r in body["levels"][0]["reasons"])
