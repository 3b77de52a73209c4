"""The WebSocket stress ladder's probe dimensions against servers of known
behaviour: round trips timed against an echo that answers after a fixed
delay, refusals counted exactly, subscribe/unsubscribe acknowledgements,
permission checks against beastnet's API keys, and permessage-deflate
(inflated bytes exact, a server that does not negotiate it skipped)."""
from __future__ import annotations

import asyncio
import json
import os
import time

import orjson
import pytest

from beastnet import APIKeyTable, WebSocketOptions
# Imported outside any capsys (see tests/test_loadgen_ws.py).
from beastnet.loadgen import report  # noqa: F401
from beastnet.loadgen.ws.run import run_ws_load
from beastnet.loadgen.ws.config import WSLoadConfig
from beastnet.loadgen.ws.stress import (NOTHING_COMPRESSED, StressProbes, StressThresholds,
                                       run_stress)
from _ws_scripted import ScriptedServer, feed_server
from browser import Browser, needs_chromium

pytestmark = pytest.mark.timeout(90)

ALLOWED, DENIED = "allowed-key-0001", "denied-key-00001"
LAX = StressThresholds(**{k: (5000.0, 10000.0) for k in (
    "upgrade_p95_ms", "delivery_p95_ms", "delivery_p99_ms", "round_trip_p95_ms",
    "round_trip_p99_ms", "subscribe_p95_ms", "refusal_p95_ms")})


def probe_config(port: int, **kw) -> WSLoadConfig:
    kw.setdefault("duration_s", 1.5)
    return WSLoadConfig(port=port, path="/", subscribe_template="", ts_key=None, **kw)


@pytest.fixture
def keyed_feed():
    """beastnet's feed with an echo endpoint, one key allowed the feed and one not."""
    keys = APIKeyTable()
    keys.set(ALLOWED, ws_allowed=True)
    keys.set(DENIED, ws_allowed=False)
    with feed_server(api_keys=keys, websocket=WebSocketOptions(echo_path="/v1/echo")) as (
            server, symbols):
        yield server.address[1], symbols


# needs_core: the subject is a clock, and the server's Python handler wakes
# late on a busy machine (5.4 ms on 46 at load 10) in a way its own stamps
# cannot see
@pytest.mark.needs_core
def test_round_trip_to_an_echo_answering_after_a_fixed_delay_is_within_10_percent():
    delay_s = 0.04

    async def late_echo(ws, server):
        delays = server.record.setdefault("delays", [])
        async for message in ws:
            start = time.perf_counter_ns()
            await asyncio.sleep(delay_s)
            delays.append(time.perf_counter_ns() - start)
            await ws.send(message)

    with ScriptedServer(late_echo) as server:
        r = run_ws_load(probe_config(server.port, connections=3,
                                     probe_messages=['{"op":"ping","n":1}']))
    delays = sorted(server.record["delays"])
    truth = delays[len(delays) // 2]
    e = r.extra
    assert truth >= delay_s * 1e9
    assert e["probe_answers"] >= 60 and e["probe_timeouts"] == 0
    assert e["probe_ms"]["count"] == e["probe_answers"]
    assert abs(e["probe_ms"]["p50"] * 1e6 - truth) <= 0.1 * truth


def test_a_server_refusing_every_5th_subscribe_is_counted_exactly():
    answered = 200

    async def refuses(ws, server):
        n = 0
        async for message in ws:
            n += 1
            if n > answered:
                continue                            # silent: the client times out
            if n % 5 == 0:
                await ws.send('{"error":"forbidden","symbol":"X"}')
            else:
                await ws.send('{"op":"subscribed"}')

    with ScriptedServer(refuses) as server:
        r = run_ws_load(probe_config(
            server.port, probe_messages=['{"op":"subscribe","symbols":["X"]}'],
            probe_answers=[""], refusal_pattern='"error"', probe_timeout_ms=300))
    e = r.extra
    # Answers are the first message after each request: 200, of which 40 refusals.
    assert e["probe_answers"] == answered and e["probe_refused"] == answered // 5
    assert e["probe_timeouts"] >= 1


def test_subscribe_and_unsubscribe_acks_are_matched_by_pattern():
    pairs = 50

    async def acks(ws, server):
        n = 0
        async for message in ws:
            n += 1
            if n > 2 * pairs:
                continue
            op = orjson.loads(message)["op"]
            if op == "subscribe":
                await ws.send('{"s":"X","px":1}')   # a body before the ack: not the answer
                await ws.send('{"op":"subscribed"}')
            else:
                await ws.send('{"op":"unsubscribed"}')
            server.record[op] = server.record.get(op, 0) + 1

    with ScriptedServer(acks) as server:
        r = run_ws_load(probe_config(
            server.port, probe_messages=['{"op":"subscribe","symbols":["X"]}',
                                         '{"op":"unsubscribe","symbols":["X"]}'],
            probe_answers=['"op":"subscribed"', '"op":"unsubscribed"'], probe_timeout_ms=300))
    assert server.record == {"subscribe": pairs, "unsubscribe": pairs}
    assert r.extra["probe_answers"] == 2 * pairs
    assert r.received == 3 * pairs                  # the bodies arrived, and were not answers


def test_compression_inflated_bytes_are_exact_and_stamps_read_from_them():
    count = 300

    async def compressible(ws, server):
        await ws.recv()
        sizes = server.record.setdefault("sizes", [])
        for seq in range(count):
            text = orjson.dumps({"ts": time.time_ns(), "seq": seq, "pad": "abcd" * 200}).decode()
            sizes.append(len(text))
            await ws.send(text)
            await asyncio.sleep(0.001)
        await asyncio.sleep(10)

    received = 0

    def all_received(row: dict) -> bool:
        # Until the last message is in (the server's 300 sends took past a
        # fixed 1.5 s run at load 5: 297 received); 15 s is only the bound.
        nonlocal received
        received += row["received"]
        return received >= count

    with ScriptedServer(compressible) as server:     # websockets negotiates deflate by default
        r = run_ws_load(WSLoadConfig(port=server.port, path="/", deflate=True, ts_key="ts",
                                     ts_unit="ns", seq_key="seq", duration_s=15.0),
                        stop_when=all_received)
    e = r.extra
    assert e["deflate_negotiated"] == 1 and e["inflate_errors"] == 0 and r.errors == 0
    assert e["compressed_messages"] == r.received == count
    assert e["inflated_bytes"] == sum(server.record["sizes"])
    assert e["deflated_bytes"] < e["inflated_bytes"] / 5 and e["inflate_ns"] > 0
    assert r.histogram.total == count and e["gaps"] == 0 and e["no_timestamp"] == 0


def test_without_an_offer_a_compressed_frame_is_a_protocol_error_and_no_offer_means_no_inflate():
    async def push(ws, server):
        await ws.recv()
        for _ in range(50):
            await ws.send('{"ts":1,"pad":"' + "x" * 500 + '"}')
        await asyncio.sleep(10)

    with ScriptedServer(push) as server:
        r = run_ws_load(WSLoadConfig(port=server.port, path="/", duration_s=0.8))
    # Not offered: websockets sends plain frames, nothing is inflated.
    assert r.received == 50 and r.extra["compressed_messages"] == 0
    assert r.extra["deflate_negotiated"] == 0 and r.extra["deflate_missing"] == 0


def test_stress_probes_against_beastnet(keyed_feed):
    port, symbols = keyed_feed
    body = run_stress(WSLoadConfig(port=port, symbols=symbols[:2], api_key=ALLOWED,
                                   duration_s=0.6, warmup_s=0.2),
                      levels=[2, 8], thresholds=LAX, probes=StressProbes(denied_key=DENIED))
    for lv in body["levels"]:
        d, m = lv["dimensions"], lv["metrics"]
        assert d["round_trip"]["verdict"] == "pass" and m["round_trips_per_s"] > 100
        assert d["subscribe"]["verdict"] == "pass" and m["subscribe_ops_per_s"] > 100
        assert d["permission"]["verdict"] == "pass"
        assert m["refusals"] > 0 and m["wrongly_granted"] == 0 and m["other_refusals"] == 0
        # beastnet negotiates permessage-deflate but sends these small bodies
        # plain (under compress_min_bytes): skipped, never passed.
        assert d["compression"] == {"verdict": "skipped", "metrics": {}, "histogram": None,
                                    "reasons": [NOTHING_COMPRESSED]}
        assert d["round_trip"]["histogram"]["total"] > 0
        assert d["permission"]["histogram"]["total"] == m["refusals"]
        assert lv["verdict"] == "warn"
    assert body["verdict"] == "warn"
    assert body["not_measured"] == [f"compression ({NOTHING_COMPRESSED})"]
    assert body["degradation"]["by_dimension"]["round_trip_p95_ms"] is not None


def test_stress_round_trip_through_beastnet_echo_endpoint(keyed_feed):
    port, symbols = keyed_feed
    body = run_stress(WSLoadConfig(port=port, symbols=symbols[:1], api_key=ALLOWED,
                                   duration_s=0.5, warmup_s=0.1), levels=[4], thresholds=LAX,
                      probes=StressProbes(round_trip_path="/v1/echo",
                                          round_trip_message='{"echo":{symbols}}',
                                          round_trip_answer='"echo"', dimensions=["round_trip"]))
    lv = body["levels"][0]
    assert lv["verdict"] == "pass" and lv["metrics"]["round_trip_timeouts"] == 0
    assert body["not_measured"] == ["subscribe/unsubscribe rate (not selected)",
                                    "permission checks (not selected)",
                                    "compression (not selected)"]


def test_a_key_wrongly_granted_fails_the_permission_check(keyed_feed):
    port, symbols = keyed_feed
    # ALLOWED as the "denied" key: every upgrade is granted, which must fail.
    body = run_stress(WSLoadConfig(port=port, symbols=symbols[:1], api_key=ALLOWED,
                                   duration_s=0.5, warmup_s=0.1), levels=[2], thresholds=LAX,
                      probes=StressProbes(denied_key=ALLOWED, dimensions=["permission"]))
    lv = body["levels"][0]
    assert lv["dimensions"]["permission"]["verdict"] == "fail"
    assert lv["metrics"]["wrongly_granted"] == 2 and lv["metrics"]["refusals"] == 0
    assert lv["verdict"] == "fail" and body["verdict"] == "fail"


def test_permission_by_message_counts_each_wrong_grant():
    async def grants_every_3rd(ws, server):
        n = 0
        async for message in ws:
            n += 1
            await ws.send('{"op":"subscribed"}' if n % 3 == 0 else '{"error":"forbidden"}')

    with ScriptedServer(grants_every_3rd) as server:
        body = run_stress(WSLoadConfig(port=server.port, path="/", duration_s=0.5,
                                       warmup_s=0.1, ts_key=None), levels=[2], thresholds=LAX,
                          probes=StressProbes(denied_subscribe='{"op":"subscribe","symbols":'
                                                               '{symbols}}',
                                              dimensions=["permission"]))
    assert "subscribe/unsubscribe rate (not selected)" in body["not_measured"]
    m = body["levels"][0]["metrics"]
    assert m["refusals"] > 0 and m["wrongly_granted"] > 0
    # One in three answers is a grant (the count per connection runs on).
    assert abs(m["wrongly_granted"] / (m["refusals"] + m["wrongly_granted"]) - 1 / 3) < 0.02
    assert body["levels"][0]["verdict"] == "fail"


def test_stress_compression_measured_against_a_deflating_server():
    async def push(ws, server):
        await ws.recv()
        while True:
            await ws.send(orjson.dumps({"ts": time.time_ns() // 10**6, "pad": "ab" * 400}).decode())
            await asyncio.sleep(0.002)

    with ScriptedServer(push) as server:
        body = run_stress(WSLoadConfig(port=server.port, path="/", duration_s=0.6,
                                       warmup_s=0.1), levels=[2], thresholds=LAX,
                          probes=StressProbes(dimensions=["compression"]))
    lv = body["levels"][0]
    m = lv["metrics"]
    assert list(lv["dimensions"]) == ["compression"]
    assert lv["dimensions"]["compression"]["verdict"] == "pass", lv["reasons"]
    assert m["compression_saved"] > 0.5 and m["inflate_us_per_kib"] > 0
    # Every message inflated whole (they are all one size); how many arrive
    # in 0.6 s is the machine's business (~600 quiet, 79 at load 10).
    size = len(orjson.dumps({"ts": time.time_ns() // 10**6, "pad": "ab" * 400}))
    assert m["compressed_messages"] >= 10, m
    assert m["inflated_bytes"] == m["compressed_messages"] * size, m


def test_cli_ws_stress_with_probes_writes_them_to_the_report(keyed_feed, tmp_path, capsys):
    from beastnet.cli import main
    port, symbols = keyed_feed
    out = tmp_path / "s.json"
    rc = main(["ws", "stress", f"ws://127.0.0.1:{port}/v1/stream", "--symbols", symbols[0],
               "--levels", "2", "-d", "0.5", "--warmup", "0.1", "--api-key", ALLOWED,
               "--denied-key", DENIED, "--dimensions", "round-trip,subscribe,permission",
               "--round-trip-p95-ms", "5000", "9000", "--subscribe-p95-ms", "5000", "9000",
               "--refusal-p95-ms", "5000", "9000", "--delivery-p95-ms", "5000", "9000",
               "--delivery-p99-ms", "5000", "9000", "--json", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert rc == 0 and report["verdict"] == "pass", text
    assert report["not_measured"] == ["compression (not selected)"]
    m = report["levels"][0]["metrics"]
    assert m["refusals"] > 0 and m["round_trips_per_s"] > 0 and "rt p95" in text
    # The saved report renders later, one at a time.
    page = tmp_path / "later.html"
    assert main(["report", str(out), "-o", str(page), "-q"]) == 0
    assert "Probe dimensions" in page.read_text()
    assert main(["report", str(out), str(out), "-q"]) == 2
    assert "one at a time" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--dimensions", "speed"], "--dimensions"),
    (["--rt-path", "echo"], "--rt-path"),
    (["--compression-connections", "0"], "--compression-connections"),
])
def test_cli_ws_stress_bad_probe_flags_are_one_line(argv, message, capsys):
    from beastnet.cli import main
    assert main(["ws", "stress", "ws://127.0.0.1:1/x", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# -- the HTML report of WebSocket runs, rendered in a real browser --------------------


def check_page_in_chromium(page, expect_texts, min_charts):
    """Open `page` in headless Chromium: no script error, the page's script
    counted its charts, each chart drew, and the texts are on the page."""
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    charts = text.count("<svg ")
    assert charts >= min_charts, charts
    with Browser() as browser:
        browser.open(page.as_uri())
        assert browser.wait_for("document.body.getAttribute('data-charts')") == str(charts)
        drawn = browser.eval("Array.from(document.querySelectorAll('svg')).filter("
                             "s => s.querySelectorAll('path,rect,polyline').length > 0).length")
        assert drawn == charts
        body = browser.eval("document.body.innerText")
        for t in expect_texts:
            assert t in body, t
        assert browser.errors == []


@needs_chromium()
@pytest.mark.timeout(180)
def test_html_reports_of_ws_run_and_stress_render_in_chromium(keyed_feed, tmp_path, capsys):
    from beastnet.cli import main
    port, symbols = keyed_feed
    url = f"ws://127.0.0.1:{port}/v1/stream"
    run_html, stress_html, density_html = (tmp_path / "run.html", tmp_path / "stress.html",
                                           tmp_path / "density.html")
    assert main(["load", url, "-c", "3", "--symbols", ",".join(symbols[:3]), "-d", "1",
                 "--warmup", "0.2", "--api-key", ALLOWED, "--html", str(run_html)]) == 0
    # Limits a busy machine cannot break: these pages are drawn from runs of
    # a healthy feed, which must not fail (compression skipped: at best warn).
    loose = [a for name in ("delivery-p95-ms", "delivery-p99-ms", "upgrade-p95-ms",
                            "round-trip-p95-ms", "round-trip-p99-ms", "subscribe-p95-ms",
                            "refusal-p95-ms") for a in (f"--{name}", "2000", "5000")]
    assert main(["ws", "stress", url, "--symbols", symbols[0], "--levels", "2,4", "-d", "0.5",
                 "--warmup", "0.1", "--api-key", ALLOWED, "--denied-key", DENIED, *loose,
                 "--html", str(stress_html)]) == 0
    assert main(["ws", "density", url, "--symbols", ",".join(symbols), "--tiers", "2,8",
                 "-d", "0.6", "--warmup", "0.1", "--api-key", ALLOWED, "--server-pid",
                 str(os.getpid()), "--p99-ms", "5000", "--html", str(density_html)]) == 0
    capsys.readouterr()
    assert "not drawn" not in capsys.readouterr().err
    check_page_in_chromium(run_html, ["WS load against ws://127.0.0.1", "messages/s",
                                      "WebSocket breakdown", "CLOCK_REALTIME"], 5)
    check_page_in_chromium(stress_html, ["stress ladder", "Message round trip by percentile",
                                         "Refusal (permission check) by percentile",
                                         "Most degraded", "every message came uncompressed"], 7)
    check_page_in_chromium(density_html, ["subscription density", "Resident memory"], 6)


# -- the stamp and the sequence found by a JSON path ------------------------------------


def test_a_nested_stamp_and_sequence_are_read_at_their_json_path():
    delay_s = 0.05

    async def nested(ws, server):
        await ws.recv()
        delays = server.record.setdefault("delays", [])

        async def one(seq):
            stamp = time.time_ns()
            await asyncio.sleep(delay_s)
            delays.append(time.time_ns() - stamp)
            # Decoys: a top-level "ts" and "seq", brackets and an escaped
            # quote inside a string, the same key at other depths and indexes.
            await ws.send(orjson.dumps({
                "note": 'a "}]{[" b', "ts": 1, "seq": 0,
                "data": [{"ts": 3}, {"x": {"ts": 4}, "seq": 5},
                         {"px": [1, {"ts": 6}], "ts": stamp, "seq": seq}]}).decode())
        tasks = []
        for seq in range(1, 61):
            if seq % 10:                                # every 10th is never sent
                tasks.append(asyncio.create_task(one(seq)))
            await asyncio.sleep(0.015)
        await asyncio.gather(*tasks)
        await asyncio.sleep(10)

    with ScriptedServer(nested) as server:
        r = run_ws_load(WSLoadConfig(port=server.port, path="/", ts_key="$.data[2].ts",
                                     ts_unit="ns", seq_key="data[2].seq", duration_s=1.8))
    delays = sorted(server.record["delays"])
    truth = delays[len(delays) // 2]
    assert r.received == 54 and r.extra["no_timestamp"] == 0 and r.extra["clock_skew"] == 0
    assert r.histogram.total == 54
    assert abs(r.percentile(50) - truth) <= 0.1 * truth
    # 10, 20, 30, 40, 50 missing; 60 was not sent either and nothing after it shows it.
    assert r.lost == 5 and r.extra["gap_events"] == 5 and r.extra["seq_backwards"] == 0


def test_a_path_that_misses_finds_nothing_and_a_plain_key_still_searches_anywhere():
    async def push(ws, server):
        await ws.recv()
        for _ in range(20):
            await ws.send('{"data":{"inner":{"ts":1}},"list":[{"ts":2}]}')
        await asyncio.sleep(10)

    with ScriptedServer(push) as server:
        miss = run_ws_load(WSLoadConfig(port=server.port, path="/", ts_key="data.ts",
                                        duration_s=0.6))
    assert miss.received == 20 and miss.extra["no_timestamp"] == 20
    with ScriptedServer(push) as server:
        plain = run_ws_load(WSLoadConfig(port=server.port, path="/", ts_key="ts", ts_unit="s",
                                         duration_s=0.6))
    assert plain.extra["no_timestamp"] == 0 and plain.histogram.total == 20


@pytest.mark.parametrize("spec", ["a..b", "$", "a[x]", "$." + ".".join("k" * 9)])
def test_bad_json_paths_are_refused_with_the_setting_named(spec):
    from beastnet.errors import LoadConfigError
    with pytest.raises(LoadConfigError, match="ts_key"):
        WSLoadConfig(ts_key=spec).validate()


def test_a_feed_without_subscribe_messages_has_no_subscribe_dimension():
    async def push(ws, server):
        while True:
            await ws.send(orjson.dumps({"ts": time.time_ns() // 10**6}).decode())
            await asyncio.sleep(0.005)

    with ScriptedServer(push) as server:
        body = run_stress(WSLoadConfig(port=server.port, path="/", duration_s=0.4,
                                       warmup_s=0.1, subscribe_template=""), levels=[2],
                          thresholds=LAX, probes=StressProbes(dimensions=["subscribe"]))
    assert body["levels"][0]["dimensions"] == {} and body["levels"][0]["verdict"] == "pass"
    assert "subscribe/unsubscribe rate (no subscribe or unsubscribe message)" in (
        body["not_measured"])
