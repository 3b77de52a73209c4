"""Load agents: `beastnet agent` processes driven by `beastnet load --agents N`
through a real redis-server, against the real engine on loopback.

Three agents on one host (separate processes, started and killed by PID):
the merged totals equal the server's counters, the merged histogram equals
one histogram of every sample (an independent HdrHistogram implementation
adds the agents' encodings), an agent killed mid-run is reported and the run
fails as short, and a coordinator killed leaves no agent running once its
lease lapsed.  Merging itself is checked exactly with hypothesis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beastnet.cli import main
from beastnet.errors import LoadConfigError
from beastnet.loadgen import _native
from beastnet.loadgen.agents import (DEFAULT_LEASE_S, ORPHAN_GRACE_S, histogram_from_wire,
                                     histogram_to_wire, merge_histograms, split_config)
from beastnet.loadgen.config import HTTPLoadConfig, UDPLoadConfig
from beastnet.loadgen.histogram import NBUCKETS, Histogram

from _loadgen_servers import beastnet_price_server
from support import free_port, requires, wait_for
from test_cluster import RedisServer
from test_loadgen_udp import beastnet_server  # noqa: F401  (the fixture: the engine here)
from test_plan import cluster  # noqa: F401  (the fixture)

hdrh_histogram = pytest.importorskip("hdrh.histogram")

pytestmark = pytest.mark.timeout(120)
needs_redis = requires("redis-server")


def histogram_of(values: list[int]) -> Histogram:
    counts = np.zeros(NBUCKETS, dtype=np.uint64)
    for v in values:
        counts[_native.hist_index_of(v)] += 1
    return Histogram(counts, len(values), sum(values), min(values, default=0),
                     max(values, default=0))


# -- merging, without Redis -----------------------------------------------------------

latencies = st.lists(st.integers(min_value=1, max_value=(1 << 38) - 1), max_size=300)


@given(st.lists(latencies, min_size=1, max_size=5))
def test_merged_wire_histograms_equal_the_histogram_of_every_sample(parts):
    # Each agent's histogram crosses Redis in HdrHistogram's encoding; the
    # merge of the decoded ones is the histogram of the union, count for count.
    shipped = [histogram_from_wire(histogram_to_wire(histogram_of(p))) for p in parts]
    merged = merge_histograms(shipped)
    whole = histogram_of([v for p in parts for v in p])
    assert (merged.counts == whole.counts).all()
    assert (merged.total, merged.sum_ns) == (whole.total, whole.sum_ns)
    assert (merged.min_ns, merged.max_ns) == (whole.min_ns, whole.max_ns)
    for q in (50, 90, 99, 99.9, 100):
        assert merged.percentile(q) == whole.percentile(q) or merged.total == 0


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_a_histogram_that_is_not_an_encoding_is_a_clear_error(junk):
    text = junk.decode("latin-1") if isinstance(junk, bytes) else junk
    with pytest.raises(ValueError, match="HdrHistogram"):
        Histogram.from_hdr(text)


def test_an_encoding_of_another_layout_is_refused():
    other = hdrh_histogram.HdrHistogram(1, 1 << 38, 3)
    other.record_value(1000)
    with pytest.raises(ValueError, match="significant digits"):
        Histogram.from_hdr(other.encode().decode())


@given(st.integers(1, 8), st.integers(8, 500), st.integers(8, 10_000),
       st.floats(1.0, 1e7))
def test_shares_add_up_to_the_whole(n, sockets, requests, rate):
    cfg = UDPLoadConfig(sockets=sockets, max_requests=requests, rate=rate, seed=7)
    shares = split_config(cfg, n)
    assert sum(s.sockets for s in shares) == sockets
    assert sum(s.max_requests for s in shares) == requests
    assert sum(s.rate for s in shares) == pytest.approx(rate)
    assert len({s.seed for s in shares}) == n          # no two agents send the same keys


def test_a_share_without_a_connection_is_refused():
    with pytest.raises(LoadConfigError, match="connections 2 cannot be split over 3 agents"):
        split_config(HTTPLoadConfig(connections=2), 3)


# -- three agents, a real redis-server, the real engine ----------------------------------


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


class Agents:
    """`beastnet agent` processes, each logging to its own file; stopped by PID."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "beastnet", "agent", "--redis", self.url,
                                 "--name", name], stdout=log, stderr=log)
        log.close()
        self.procs[name] = proc
        wait_for(lambda: b"waiting for work" in self.log(name) or proc.poll() is not None,
                 timeout=30, interval=0.05, message=f"agent {name} to register")
        assert proc.poll() is None, self.log(name)
        return proc

    def log(self, name: str) -> bytes:
        return (self.tmp / f"{name}.log").read_bytes()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def agents(tmp_path, redis_server) -> Iterator[Agents]:
    group = Agents(tmp_path, redis_server.url)
    try:
        for name in ("a1", "a2", "a3"):
            group.start(name)
        yield group
    finally:
        group.stop()


def coordinator(tmp: Path, url: str, port: int, *args: str) -> subprocess.Popen:
    """`beastnet load --agents 3` in its own process, stderr to coordinator.log."""
    err = open(tmp / "coordinator.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "beastnet", "load", f"127.0.0.1:{port}", "-t", "1", "-s", "6",
         "-w", "8", "--agents", "3", "--redis", url, "--json", str(tmp / "run.json"),
         "--progress", *args], stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    return proc


def wait_for_progress(tmp: Path, proc: subprocess.Popen) -> None:
    """Until the coordinator showed a merged second: every agent has streamed
    one row, so each has sent something."""
    wait_for(lambda: b"req/s" in (tmp / "coordinator.log").read_bytes() or
             proc.poll() is not None, timeout=30, interval=0.05,
             message="the coordinator's first merged second")
    assert proc.poll() is None, (tmp / "coordinator.log").read_bytes()


@needs_redis
def test_three_agents_merge_to_the_servers_counters_and_one_histogram(
        beastnet_server, redis_server, agents, tmp_path, capsys):
    before = beastnet_server.stats()["totals"]
    assert main(["load", f"127.0.0.1:{beastnet_server.address[1]}", "-d", "1.5",
                 "--warmup", "0.3", "-t", "1", "-s", "6", "-w", "8", "-k", "BTC,ETH",
                 "--agents", "3", "--redis", redis_server.url, "--json",
                 str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]) == 0
    terminal = capsys.readouterr().out.splitlines()
    html = (tmp_path / "r.html").read_text()
    after = beastnet_server.stats()["totals"]
    r = orjson.loads((tmp_path / "r.json").read_bytes())["result"]
    rows = r["extra"]["agents"]
    assert sorted(a["name"] for a in rows) == ["a1", "a2", "a3"]
    assert all(a["state"] == "done" and a["sent"] > 0 for a in rows)
    # The merged counts are the sum of the agents'; over the whole run (the
    # warm-up too) the datagrams sent are those the server received (or its
    # kernel dropped, on a crowded machine), and the answers the agents read
    # are those it sent but the ones still in flight when the run stopped
    # (at most the 6 sockets x window 8).
    assert r["sent"] == sum(a["sent"] for a in rows)
    assert r["received"] == sum(a["received"] for a in rows)
    whole_run = sum(row["sent"] for row in r["timeline"])
    assert whole_run == (after["rx_packets"] - before["rx_packets"]
                         + after["kernel_drops"] - before["kernel_drops"])
    unread = after["tx_packets"] - before["tx_packets"] - sum(
        row["received"] for row in r["timeline"])
    assert 0 <= unread <= 6 * 8
    # One histogram of every sample, built by another implementation from the
    # agents' encodings, holds in each bucket what the merged one holds.
    union = hdrh_histogram.HdrHistogram(1, (1 << 38) - 1, 2)
    for a in rows:
        union.add(hdrh_histogram.HdrHistogram.decode(a["histogram"]["hdr"]))
    merged = r["histogram"]
    assert union.get_total_count() == merged["total"] == r["received"]
    for lower, count in zip(merged["bucket_lower_ns"], merged["counts"]):
        assert union.get_count_at_value(lower) == count
    for q, name in ((50, "p50"), (99, "p99")):
        ours = r["latency_ns"][name]
        assert abs(union.get_value_at_percentile(q) - ours) <= 0.008 * ours
    assert r["extra"]["start_skew_ms"] is not None and r["extra"]["start_skew_ms"] >= 0
    assert "its own monotonic clock" in r["extra"]["agents_clock_rule"]
    # A row per agent beside the merged total, on the terminal and the page.
    for a in rows:
        assert any(line.split()[:3] == [a["name"], f"{a['sent']:,}", f"{a['received']:,}"]
                   for line in terminal if line.strip()), terminal
        assert f'<td class="l">{a["name"]}</td>' in html
    assert any(line.split()[:2] == ["total", f"{r['sent']:,}"] for line in terminal if line)
    assert "<h2>Load agents</h2>" in html and "start skew" in html


@needs_redis
def test_an_agent_killed_mid_run_is_reported_and_the_load_was_short(
        beastnet_server, redis_server, agents, tmp_path):
    proc = coordinator(tmp_path, redis_server.url, beastnet_server.address[1], "-d", "8",
                       "--warmup", "0")
    try:
        wait_for_progress(tmp_path, proc)
        agents.procs["a2"].kill()
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    report = orjson.loads((tmp_path / "run.json").read_bytes())
    assert report["verdict"] == "fail"
    assert report["reasons"][0].startswith("the load was short: agent a2 died")
    rows = {a["name"]: a for a in report["result"]["extra"]["agents"]}
    assert rows["a2"]["state"] == "died" and rows["a2"]["sent"] > 0
    assert rows["a1"]["state"] == rows["a3"]["state"] == "done"
    assert report["result"]["sent"] == sum(a["sent"] for a in rows.values())


@needs_redis
def test_a_coordinator_killed_leaves_no_agent_running_after_its_lease(
        beastnet_server, redis_server, agents, tmp_path):
    proc = coordinator(tmp_path, redis_server.url, beastnet_server.address[1], "-d", "60")
    wait_for_progress(tmp_path, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    killed = time.monotonic()
    bound = DEFAULT_LEASE_S + ORPHAN_GRACE_S + 2.0
    wait_for(lambda: all(p.poll() is not None for p in agents.procs.values()),
             timeout=bound + 10, interval=0.05, message="the orphaned agents to exit")
    took = time.monotonic() - killed
    for name, p in agents.procs.items():
        assert p.returncode == 5, (name, agents.log(name))
        assert b"lease lapsed" in agents.log(name)
    assert took < bound, took
    assert redis_server.client().keys("beastnet:load:agent:*") == []


@needs_redis
def test_no_agents_in_time_is_one_line_and_exit_4(redis_server, capsys):
    started = time.monotonic()
    status = main(["load", "127.0.0.1:9", "--agents", "2", "--redis", redis_server.url,
                   "--agents-wait", "0.5", "-q"])
    err = capsys.readouterr().err
    assert status == 4
    assert err.count("\n") == 1 and "0 of 2 agents free" in err and "Traceback" not in err
    assert time.monotonic() - started < 5


def test_a_dead_redis_is_one_line_for_the_coordinator_and_the_agent(capsys):
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["load", "127.0.0.1:9", "--agents", "2", "--redis", url, "-q"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("beastnet load: --redis ")
    run = subprocess.run([sys.executable, "-m", "beastnet", "agent", "--redis", url],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 4
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("beastnet agent: --redis ")
    run = subprocess.run([sys.executable, "-m", "beastnet", "agent", "--redis", "http://x"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 4 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "--redis http://x" in run.stderr
    assert main(["load", "127.0.0.1:9", "--agents", "2", "--redis", "http://x", "-q"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("beastnet load: --redis http://x")


@needs_redis
def test_a_websocket_run_splits_its_connections_over_the_agents(redis_server, agents, tmp_path):
    from _ws_scripted import feed_server
    with feed_server() as (server, symbols):
        host, port = server.address[:2]
        status = main(["load", f"ws://{host}:{port}/v1/stream", "-c", "9", "-t", "1",
                       "--symbols", ",".join(symbols), "--symbols-per-conn", "3", "-d", "1",
                       "--warmup", "0.2", "--agents", "3", "--redis", redis_server.url,
                       "--json", str(tmp_path / "ws.json"), "-q"])
    r = orjson.loads((tmp_path / "ws.json").read_bytes())["result"]
    rows = r["extra"]["agents"]
    assert status == 0, r
    assert [a["connections"] for a in rows] == [3, 3, 3]
    assert r["extra"]["upgrades"] == 9 and r["errors"] == 0
    assert r["received"] == sum(a["received"] for a in rows) > 0
    assert r["histogram"]["total"] == sum(a["histogram"]["total"] for a in rows)


@needs_redis
def test_a_ramp_runs_each_level_on_every_agent(beastnet_server, redis_server, agents, tmp_path,
                                               capsys):
    assert main(["load", f"127.0.0.1:{beastnet_server.address[1]}", "--levels",
                 "300x30,900x90", "-s", "30", "-t", "1", "--agents", "3", "--redis",
                 redis_server.url, "--json", str(tmp_path / "ramp.json")]) == 0
    terminal = capsys.readouterr().out
    levels = orjson.loads((tmp_path / "ramp.json").read_bytes())["levels"]
    assert [lv["result"]["sent"] for lv in levels] == [300, 900]
    for lv in levels:
        rows = lv["result"]["extra"]["agents"]
        assert [a["sent"] for a in rows] == [lv["requests"] // 3] * 3
        assert f"level {lv['level']} agents: " + ", ".join(
            f"{a['name']} {a['sent']:,} sent" for a in rows) in terminal


@requires("redis-server", "nginx", "openssl")
@pytest.mark.timeout(180)
def test_a_plan_test_runs_its_load_on_the_agents(cluster, redis_server, agents):  # noqa: F811
    from beastnet.loadgen.agents import Coordinator
    from beastnet.loadgen.plan import parse_plan, run_plan
    from test_plan import UDP_DIRECT, one_test
    plan = parse_plan(one_test(UDP_DIRECT + "rate = 3000\nduration_s = 2\n"))
    with Coordinator(redis_server.url, 3) as coord:
        report = run_plan(plan, lambda line: None, cluster=cluster, load_runner=coord.run)
    run = report["tests"][0]["run"]
    rows = run["extra"].get("agents")
    assert rows, "the load ran in this process, not on the agents"
    assert [a["state"] for a in rows] == ["done"] * 3
    assert [a["rate"] for a in rows] == [pytest.approx(1000.0)] * 3
    assert run["sent"] == sum(a["sent"] for a in rows) > 0


# -- what crosses Redis is checked, never trusted ----------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                           | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["scheme", "fields"]), json_values))
def test_a_job_config_is_a_config_or_a_clear_error(wire):
    from beastnet.loadgen.agents import config_from_wire
    try:
        cfg = config_from_wire(wire)
    except LoadConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        cfg.validate()


@given(st.binary(max_size=100) | st.builds(
    lambda kind, body: orjson.dumps({"agent": "a1", "type": kind, **body}),
    st.sampled_from(["row", "result", "error", "other"]),
    st.dictionaries(st.sampled_from(["row", "histogram", "result", "message"]), json_values)))
def test_an_event_that_is_not_one_is_dropped_and_counted(raw):
    from beastnet.loadgen.agents import Coordinator, _AgentRun
    parts = {"a1": _AgentRun("a1", 0.0, 0.0)}
    taken = Coordinator._take(parts, raw)
    p = parts["a1"]
    assert taken == (p.state != "running" or len(p.rows) == 1)
    if p.rows:                          # an accepted row merges
        from beastnet.loadgen.agents import merge_timelines
        assert merge_timelines([p.rows], [p.deltas])[0]["sent"] == p.rows[0]["sent"]


@needs_redis
def test_ctrl_c_on_the_coordinator_stops_the_agents_runs_not_the_agents(
        beastnet_server, redis_server, agents, tmp_path):
    proc = coordinator(tmp_path, redis_server.url, beastnet_server.address[1], "-d", "60",
                       "--warmup", "0")
    try:
        wait_for_progress(tmp_path, proc)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: proc.poll() is not None, timeout=30, interval=0.05,
                 message="the coordinator to end the run it was told to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
    result = orjson.loads((tmp_path / "run.json").read_bytes())["result"]
    assert result["interrupted"] and result["duration_s"] < 30
    rows = result["extra"]["agents"]
    assert [a["state"] for a in rows] == ["done"] * 3 and all(a["duration_s"] < 30 for a in rows)
    # The agents stopped their runs on the command and wait for the next one.
    assert all(p.poll() is None for p in agents.procs.values())
    for name in agents.procs:
        wait_for(lambda: b"done:" in agents.log(name), timeout=10, message=f"{name}'s run end")
