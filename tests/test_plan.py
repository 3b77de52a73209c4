"""`beastnet plan`: the plan file and its errors, and the runner against the
real `plan local` topology (three `beastnet serve` nodes, redis-server,
PostgreSQL, nginx TLS and nginx stream) at the tiny scale: every test runs,
the nodes keep their keys and usage in the one PostgreSQL, a node that
refuses its reset stops the pre-flight, a node made to drop UDP raises its
red flag when it drops, Ctrl-C restores the nodes and leaves no process
behind, a node killed mid-test is reported."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from beastnet.cli import main
from beastnet.loadgen.plan import DEFAULT_PLAN, PlanError, load_plan, parse_plan, run_plan
from beastnet.loadgen.plan.local import LocalCluster
from beastnet.loadgen.plan.runner import NodeTarget, PlanRunner, ReportLoad
from pg_support import fetchval
from support import requires, wait_for
from test_loadgen_report import render_dom, script_error

TOPOLOGY = requires("redis-server", "nginx", "openssl", "initdb", "pg_ctl")
SEVEN = ["1a", "1b", "2a", "2b", "2c", "2d", "2e"]


def one_test(body: str, poll_s: float = 0.5) -> str:
    return f'name = "one"\npoll_s = {poll_s}\n[[tests]]\nname = "t1"\n{body}'


UDP_DIRECT = ('protocol = "udp"\naccess = "direct"\ntier = "partner"\n'
              'profile = "stress-udp-direct"\n')
UDP_BALANCED = 'protocol = "udp"\naccess = "balanced"\ntier = "partner"\nprofile = "production"\n'


# -- the plan file ----------------------------------------------------------------------

def test_default_plan_prints_and_keeps_its_shape_at_every_scale(capsys):
    assert main(["plan", "--print-default"]) == 0
    assert capsys.readouterr().out == DEFAULT_PLAN
    full, small, tiny = (load_plan(None, s) for s in ("full", "2core", "tiny"))
    for plan in (full, small, tiny):
        assert [t.name for t in plan.tests] == SEVEN
        assert [t.governor for t in plan.tests] == [False, False] + [True] * 5
        assert plan.tests[-1].rate_of == (0.8, "2a")
    assert full.tests[0].levels[0] == (300, 30) and len(full.tests[0].levels) == 13
    assert small.tests[0].levels[0] == (30, 3) and len(small.tests[0].levels) == 9
    assert (full.tests[-1].duration_s, small.tests[-1].duration_s) == (1800, 120)
    assert small.scale.name == "2core"
    assert full.tests[4].criteria.expect == ["rate_limited"]


@pytest.mark.parametrize("text, key", [
    ('name = "x"\n', "tests"),
    ('bogus = 1\n', "bogus"),
    (one_test(UDP_DIRECT.replace('"udp"', '"sctp"') + "levels = [[10, 1]]\n"),
     "tests[0].protocol"),
    (one_test(UDP_DIRECT + 'levels = [[10, 0]]\n'), "tests[0].levels[0]"),
    (one_test(UDP_DIRECT + 'levels = [[10, 1]]\nrate = 5\nduration_s = 1\n'), "tests[0].levels"),
    (one_test(UDP_DIRECT + 'rate = "0.8 * 2a"\nduration_s = 1\n'), "tests[0].rate"),
    (one_test(UDP_DIRECT + 'rate = 5\n'), "tests[0].duration_s"),
    (one_test(UDP_DIRECT + 'levels = "default"\ngovernor = "yes"\n'), "tests[0].governor"),
    (one_test(UDP_DIRECT + 'levels = "default"\ncriteria = {p99_ms = -1}\n'),
     "tests[0].criteria.p99_ms"),
    (one_test(UDP_DIRECT + 'levels = "default"\ncriteria = {expect = ["nope"]}\n'),
     "tests[0].criteria.expect"),
    (one_test(UDP_DIRECT + 'levels = "default"\n') + '[red_flags]\nudp_drop_max_pct = "1"\n',
     "red_flags.udp_drop_max_pct"),
    (one_test(UDP_DIRECT + 'levels = "default"\n') + '[target]\nlocal = false\n',
     "target.nodes"),
])
def test_a_bad_plan_is_one_line_naming_the_key(text, key):
    with pytest.raises(PlanError) as err:
        parse_plan(text)
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)


def test_the_command_reports_a_bad_plan_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(one_test(UDP_DIRECT + 'levels = "nope"\n'))
    assert main(["plan", "run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("beastnet plan: tests[0].levels:") and "\n" not in err
    assert main(["plan", "run", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml: No such file" in capsys.readouterr().err


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["protocol", "access", "tier", "profile", "levels",
                                        "rate", "duration_s", "governor", "criteria", "keys",
                                        "report_rate", "phase"]),
                       st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True),
                                 st.text(max_size=8), st.booleans(),
                                 st.lists(st.lists(st.integers(-2, 100), max_size=3),
                                          max_size=3),
                                 st.dictionaries(st.text(max_size=6), st.integers(-1, 5),
                                                 max_size=2))))
def test_any_test_table_is_accepted_or_refused_with_a_plan_error(table):
    table = dict(table, name="t")
    from beastnet.loadgen.plan.spec import SCALES, CriteriaSpec, _test
    try:
        _test("tests[0].", table, SCALES["tiny"], CriteriaSpec(), [])
    except PlanError as exc:
        assert str(exc).startswith("tests[0].") and "\n" not in str(exc)


# -- against plan local ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Small UDP receive buffers, so a node stopped for 0.8 s overflows its
    # socket whatever rate this machine's generator reaches.
    c = LocalCluster(str(tmp_path_factory.mktemp("plan-local")),
                     serve_args=("--recv-buffer-bytes", "262144"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def node_pids(c: LocalCluster) -> dict[str, int]:
    return {p.name: p.pid for p in c.processes}


def running(pid: int) -> bool:
    """Whether `pid` runs: /proc has it and it is not a zombie (the
    postmaster, not our child, waits for PID 1 to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@TOPOLOGY
@requires("chromium")
@pytest.mark.timeout(240)
def test_every_test_of_the_default_plan_runs_against_plan_local(cluster, tmp_path, capsys):
    lines: list[str] = []
    report = run_plan(load_plan(None, "tiny"), lines.append, cluster=cluster, poll_s=0.5)
    by_name = {t["name"]: t for t in report["tests"]}
    assert list(by_name) == SEVEN and report["scale"] == "tiny"
    for t in report["tests"]:
        assert [s["ok"] for s in t["preflight"]["nodes"]] == [True] * 3, t["preflight"]
        assert t["verdict"] in ("pass", "warn", "fail")
        assert ("ramp" in t) == (t["name"] != "2e") and ("run" in t) == (t["name"] == "2e")
        assert t["timeline"] and t["poll_failures"] == 0
    assert by_name["2e"]["rate"] > 0            # 80 % of 2a's ceiling, measured
    # Phase 1 without the governor, phase 2 with it, on every node (each
    # node's profile switches its HTTP and its UDP engine alike).
    for t in report["tests"]:
        want = "off" if t["name"].startswith("1") else "on"
        assert t["preflight"]["governor"] == {f"node{i}": want for i in (1, 2, 3)}, t["name"]
    # The UDP shed counters ride in the cluster snapshot; these nodes answer
    # UDP misses natively (no queue), so their UDP governor never sheds.
    for name in ("2b", "2c"):
        deltas = [r["delta"] for r in by_name[name]["timeline"] if "delta" in r]
        assert deltas and all("udp_shed_public" in d and "udp_shed_partner" in d
                              for d in deltas)
        assert sum(d["udp_shed_public"] + d["udp_shed_partner"] for d in deltas) == 0
    reports = by_name["2d"]["reports"]         # the nodes serve /v1/reports/usage
    assert reports["run"]["sent"] > 0 and set(reports["run"]["status_codes"]) == {"200"}
    # ... from the one PostgreSQL: the usage log the reports read is there.
    assert report["database"]["kind"] == "postgresql"
    assert report["database"]["dsn"] == cluster.postgres.dsn
    wait_for(lambda: fetchval(cluster.postgres.dsn,
                              "SELECT count(*) FROM usage_log_all WHERE route = 'report'"),
             timeout=15, message="the report requests' usage rows in PostgreSQL")
    assert [c["a"] + c["b"] for c in report["comparisons"]] == ["2b2c", "2a2d", "1a2a"]
    assert all("rps_ratio" in c for c in report["comparisons"])
    assert set(report["endurance"]["nodes"]) == {"node1", "node2", "node3"}
    assert all(r["ok"] and r["profile"] == "dev" for r in report["restores"]), \
        report["restores"]
    assert {p["name"] for p in report["processes"]} == {"redis", "postgres", "node1", "node2",
                                                        "node3", "nginx"}
    assert report["versions"]["postgresql"].startswith("postgres (PostgreSQL) ")
    assert any("1b level 3/3" in line for line in lines)
    assert report["versions"]["nginx"].startswith("nginx version: nginx/")
    assert report["versions"]["redis-server"].startswith("Redis server v=")
    # One report: the JSON `beastnet report` reads back into the page.
    path = tmp_path / "plan.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY))
    assert main(["report", str(path), "-o", str(tmp_path / "plan.html")]) == 0
    assert "verdict:" in capsys.readouterr().out
    html = (tmp_path / "plan.html").read_text()
    dom = render_dom(tmp_path / "plan.html")
    assert not script_error(dom), script_error(dom)
    charts = html.count("<svg ")
    assert charts >= 7 * 2 and f'data-charts="{charts}"' in dom
    for what in ("The tests against their criteria", "Comparisons", "Endurance (2e",
                 "Plan file (scale tiny)", "Latency by percentile"):
        assert what in dom


@TOPOLOGY
@pytest.mark.timeout(60)
def test_a_failed_start_stops_what_did_start(tmp_path):
    """The nodes refuse their flags after redis-server is up: the error
    names the node and its last log line, and redis-server is stopped."""
    c = LocalCluster(str(tmp_path / "procs"), serve_args=("--batch", "0"))
    try:
        with pytest.raises(PlanError) as err:
            c.start()
        assert str(err.value).startswith("plan local: node1 exited with 2 before the ready "
                                         "line")
        assert "batch" in str(err.value)
        assert [p.name for p in c.processes][:1] == ["redis"]
        assert all(not Path(f"/proc/{p.pid}").exists() for p in c.processes), c.describe()
        assert c.postgres_pid is not None and not running(c.postgres_pid)
    finally:
        c.stop()                        # a broken start's leftovers, by their PIDs


@TOPOLOGY
def test_plan_local_without_initdb_is_one_line_and_starts_nothing(tmp_path, capsys,
                                                                    monkeypatch):
    import beastnet.serve.stores.pg_local as pg_local
    monkeypatch.setattr(pg_local, "find_pg_tool", lambda name: None)
    plan = tmp_path / "plan.toml"
    plan.write_text(one_test(UDP_DIRECT + "rate = 100\nduration_s = 1\n"))
    assert main(["plan", "local", str(plan), "--dir", str(tmp_path / "procs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("beastnet plan: plan local: initdb and pg_ctl not installed (PostgreSQL's "
                   "server binaries; scripts/system-deps installs them); --no-postgres runs "
                   "the nodes on SQLite key stores")
    assert not list((tmp_path / "procs").glob("*.log")), "something was started"


@TOPOLOGY
@pytest.mark.timeout(90)
def test_no_postgres_keeps_the_nodes_on_sqlite(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(one_test(UDP_BALANCED + "rate = 200\nduration_s = 1\n"))
    status = main(["plan", "local", str(plan), "--no-postgres", "--poll-s", "0.5",
                   "--dir", str(tmp_path / "procs"), "-o", str(tmp_path / "r")])
    out = capsys.readouterr().out
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert status == (1 if report["verdict"] == "fail" else 0), out
    assert report["database"]["kind"] == "sqlite" and len(report["database"]["files"]) == 3
    assert "postgres" not in {p["name"] for p in report["processes"]}
    assert "database: SQLite key stores, one per node (--no-postgres)" in out
    assert all(Path(f).exists() for f in report["database"]["files"])


@TOPOLOGY
@pytest.mark.timeout(90)
def test_plan_run_drives_the_nodes_a_plan_file_names(cluster, tmp_path, capsys):
    """`beastnet plan run`: the target from the file (no local topology), the
    report written as JSON and HTML, the exit status from the verdict."""
    t = cluster.target()
    nodes = ", ".join(f'{{name = "{n["name"]}", admin = "{n["admin"]}", http = "{n["http"]}", '
                      f'udp = "{n["udp"]}"}}' for n in t["nodes"])
    keys = ", ".join(f'{tier} = "{key}"' for tier, key in t["keys"].items())
    plan = tmp_path / "plan.toml"
    plan.write_text(one_test(UDP_BALANCED + "levels = [[300, 30]]\n") + "[[tests]]\n"
                    + 'name = "t2"\nprotocol = "tcp"\naccess = "balanced"\ntier = "partner"\n'
                    + 'profile = "production"\nrate = "0.5 * t1"\nduration_s = 2\n'
                    + f'[target]\nlocal = false\nnodes = [{nodes}]\n'
                    + f'balanced_http = "{t["balanced_http"]}"\n'
                    + f'balanced_udp = "{t["balanced_udp"]}"\ncacert = "{t["cacert"]}"\n'
                    + f"keys = {{{keys}}}\n")
    status = main(["plan", "run", str(plan), "-o", str(tmp_path / "r")])
    out = capsys.readouterr().out
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert status == (1 if report["verdict"] == "fail" else 0), out
    assert [x["name"] for x in report["tests"]] == ["t1", "t2"]
    assert report["tests"][1]["rate"] == pytest.approx(0.5 * report["tests"][0]["ramp"]
                                                       ["levels"][0]["result"]["rps"])
    assert report["tests"][1]["run"]["config"]["tls"] is True
    assert report["processes"] == [] and report["endurance"]["note"].startswith("RSS not measured")
    assert "written: " in out and (tmp_path / "r.html").read_text().count("<svg ") >= 3
    assert t["keys"]["partner"] not in (tmp_path / "r.json").read_text()


class FakeAdmin(BaseHTTPRequestHandler):
    """A tiny node speaking the admin API (no load is sent to it): profiles,
    reset and stats.  `refuse_reset`: POST /admin/reset answers 403 (a node
    whose reset is blocked); `governor`: None (no `adaptive_enabled`
    parameter), "obeys" or "ignores" the parameter when posted;
    `drop_profile_posts`: that many POST /admin/profile are closed
    unanswered (a node too busy to answer in time), `refuse_profile`: each
    answers 409."""

    refuse_reset = False
    drop_profile_posts = 0
    refuse_profile = False
    profile_posts = 0
    governor: str | None = None
    adaptive = False

    def _json(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path.startswith("/admin/profile"):
            live = {} if self.governor is None else {"adaptive_enabled": type(self).adaptive}
            self._json(200, {"profile": "dev", "live": live})
        else:
            self._json(200, {"udp": {"totals": {"rx_packets": 5 if self.refuse_reset else 0}}})

    def do_POST(self) -> None:
        if self.path.startswith("/admin/reset") and self.refuse_reset:
            self._json(403, {"error": "reset is blocked on this node"})
            return
        if self.path.startswith("/admin/profile"):
            type(self).profile_posts += 1
            if type(self).profile_posts <= self.drop_profile_posts:
                self.close_connection = True     # no status line: the client sees a reset
                return
            if self.refuse_profile:
                self._json(409, {"error": "a switch is under way"})
                return
        if "adaptive_enabled=" in self.path and self.governor == "obeys":
            type(self).adaptive = self.path.endswith("adaptive_enabled=true")
        self._json(200, {"profile": "dev"})

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_node(name: str, **behaviour: object):
    handler = type("Node", (FakeAdmin,), dict(behaviour))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = NodeTarget(name, f"http://127.0.0.1:{server.server_port}")
        target.handler = handler        # type: ignore[attr-defined]  (its class counters)
        yield target
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("governor, on, expect", [
    (None, True, "not available on this node"),
    ("obeys", True, "on"), ("obeys", False, "off"),
    ("ignores", True, "fake: the governor did not switch on (adaptive_enabled)"),
])
def test_preflight_switches_the_governor_through_adaptive_enabled(governor, on, expect):
    plan = parse_plan(one_test(UDP_DIRECT + f"governor = {str(on).lower()}\n"
                               "levels = [[10, 1]]\n"))
    with fake_node("fake", governor=governor) as node:
        pre = PlanRunner(plan, [node], {}, lambda _: None)._preflight(plan.tests[0])
    if expect.startswith("fake:"):
        assert pre["stopped"] == expect
    else:
        assert pre["stopped"] is None and pre["governor"] == {"fake": expect}


@pytest.mark.parametrize("behaviour, ok, attempts, posts", [
    ({"drop_profile_posts": 2}, True, 3, 3),      # unanswered twice: asked again, restored
    ({"drop_profile_posts": 5}, False, 3, 3),     # never answered: three tries, reported
    ({"refuse_profile": True}, False, 1, 1),      # answered no: not asked again
])
def test_a_restore_the_node_did_not_answer_is_asked_again(behaviour, ok, attempts, posts):
    plan = parse_plan(one_test(UDP_DIRECT + "levels = [[10, 1]]\n"))
    with fake_node("busy", **behaviour) as node:
        runner = PlanRunner(plan, [node], {}, lambda _: None)
        runner.original["busy"] = {"profile": "dev"}
        runner._restore("end of plan")
        handler_posts = node.handler.profile_posts
    (entry,) = runner.restores
    assert (entry["ok"], entry.get("attempts"), handler_posts) == (ok, attempts, posts), entry
    assert ok or "reason" in entry


class NoReports(BaseHTTPRequestHandler):
    """A public port without the usage-report routes."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_node_without_report_routes_makes_the_report_half_not_available():
    plan = parse_plan(one_test('protocol = "tcp"\naccess = "balanced"\ntier = "partner"\n'
                               'profile = "dev"\nlevels = [[10, 1]]\nreport_rate = 5\n'))
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoReports)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        runner = PlanRunner(plan, [], {"balanced_http": f"http://127.0.0.1:{server.server_port}"
                                                        "/v1/", "keys": {"partner": "k" * 20}},
                            lambda _: None)
        result = ReportLoad(runner, plan.tests[0]).finish()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result == {"verdict": "not available", "reasons": [
        "not available: GET /v1/reports/usage answered 404 (this node has no usage-report "
        "routes)"]}


@TOPOLOGY
@pytest.mark.timeout(60)
def test_preflight_stops_the_test_when_a_node_refuses_its_reset(cluster):
    plan = parse_plan(one_test(UDP_DIRECT + "levels = [[100, 10]]\n") + "[[tests]]\n"
                      'name = "t2"\n' + UDP_DIRECT + "levels = [[100, 10]]\n")
    with fake_node("blocked", refuse_reset=True) as blocked:
        report = run_plan(plan, lambda _: None, cluster=cluster, extra_nodes=[blocked])
    for t in report["tests"]:          # each test tries again, and stops again
        assert t["verdict"] == "fail" and "ramp" not in t
        assert t["reasons"] == ["pre-flight: blocked: POST /admin/reset answered 403 "
                                '{"error": "reset is blocked on this node"}']
        assert [s["ok"] for s in t["preflight"]["nodes"]] == [True, True, True, False]
    assert all(r["ok"] for r in report["restores"])


@TOPOLOGY
@pytest.mark.timeout(60)
def test_a_load_run_that_cannot_start_fails_its_test_and_the_plan_goes_on(cluster):
    """A test whose load raised LoadError (here LoadTLSError, as when no
    handshake worked in time) is that test's fail, with the reason; the
    next test runs and the nodes are restored."""
    from beastnet.errors import LoadTLSError
    from beastnet.loadgen.ramp import runner_for
    plan = parse_plan(one_test(UDP_DIRECT + "levels = [[100, 10]]\n") + "[[tests]]\n"
                      'name = "t2"\n' + UDP_DIRECT + "levels = [[100, 10]]\n")
    calls: list[str] = []

    def load_runner(cfg, **kwargs):
        calls.append(cfg)
        if len(calls) == 1:
            raise LoadTLSError("no TLS handshake with 127.0.0.1:1 succeeded (test)")
        return runner_for(cfg)(cfg, **kwargs)
    lines: list[str] = []
    report = run_plan(plan, lines.append, cluster=cluster, load_runner=load_runner)
    t1, t2 = report["tests"]
    assert t1["verdict"] == "fail"
    assert t1["reasons"] == ["the load run failed: no TLS handshake with 127.0.0.1:1 "
                             "succeeded (test)"]
    assert any("the load run failed" in line for line in lines)
    assert len(calls) >= 2 and t2["verdict"] in ("pass", "warn"), t2
    assert t2["ramp"]["levels"][0]["result"]["received"] > 0
    assert all(r["ok"] for r in report["restores"])


@TOPOLOGY
@pytest.mark.timeout(90)
def test_a_node_made_to_drop_udp_raises_the_red_flag_when_it_drops(cluster):
    """node1 is stopped (SIGSTOP) for 0.8 s under an open-loop UDP load: its
    socket buffer overflows and the kernel drops what does not fit.  The flag
    must name node1 and come after the stop, within a poll and a snapshot."""
    node1 = cluster.process("node1")
    assert node1 is not None
    plan = parse_plan(one_test(UDP_DIRECT + "rate = 5000\nduration_s = 5\n"))
    loading = threading.Event()
    stopped: list[float] = []

    def on_line(line: str) -> None:
        if "req/s:" in line:
            loading.set()

    def freeze() -> None:
        if loading.wait(30):
            stopped.append(time.time())
            os.kill(node1.pid, signal.SIGSTOP)
            time.sleep(0.8)
            os.kill(node1.pid, signal.SIGCONT)
            stopped.append(time.time())
    freezer = threading.Thread(target=freeze)
    freezer.start()
    try:
        report = run_plan(plan, on_line, cluster=cluster, poll_s=0.5)
    finally:
        freezer.join()
        os.kill(node1.pid, signal.SIGCONT)
    t = report["tests"][0]
    assert len(stopped) == 2, "the load never started"
    drops = [f for f in t["flags"] if f["flag"] == "udp_drop"]
    assert drops and drops[0]["scope"] in ("node1", "cluster"), t["flags"]
    assert any(f["scope"] == "node1" for f in drops), t["flags"]
    first = t["poll_started_at"] + min(f["t"] for f in drops)
    # Raised after the stop began, and within a poll (0.5 s) plus a snapshot
    # interval (1 s) of the node's return, with room for a busy machine.
    assert stopped[0] < first < stopped[1] + 0.5 + 1.0 + 2.0, (stopped, first)
    assert any("red flag udp_drop" in r for r in t["reasons"])


@TOPOLOGY
@pytest.mark.timeout(120)
def test_ctrl_c_restores_the_nodes_and_leaves_no_process_behind(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(one_test(UDP_DIRECT + "rate = 2000\nduration_s = 60\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "beastnet", "plan", "local", str(plan), "--poll-s", "0.5",
         "--dir", str(tmp_path / "procs"), "-o", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pids: dict[str, int] = {}
    output = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("started "):
                name, rest = line[len("started "):].split(":", 1)
                pids[name] = int(rest.split(",")[0].split()[1])
            if "req/s:" in line:            # the load is under way
                break
        assert set(pids) == {"redis", "postgres", "node1", "node2", "node3", "nginx"}, \
            "".join(output)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(output)
    left = [f"{name} (PID {pid})" for name, pid in pids.items() if running(pid)]
    for name, pid in pids.items():      # a broken runner's leftovers, stopped by their PIDs
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, text
    assert not left, f"left running: {left}"
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["interrupted"] and report["tests"][0]["run"]["interrupted"]
    restored = [r for r in report["restores"] if r["when"] == "interrupted"]
    assert [(r["node"], r["profile"], r["ok"]) for r in restored] == [
        (f"node{i}", "dev", True) for i in (1, 2, 3)]
    # The nodes' own word: the last profile each switched to is the original.
    for i in (1, 2, 3):
        switches = [line for line in (tmp_path / "procs" / f"node{i}.log").read_text()
                    .splitlines() if '"profile ' in line and "changed" in line]
        assert switches and '"profile dev: changed' in switches[-1], switches[-2:]


@TOPOLOGY
@pytest.mark.timeout(120)
def test_a_node_killed_mid_test_is_reported_not_hung_on(tmp_path):
    with LocalCluster(str(tmp_path / "procs")) as c:
        node2 = c.process("node2")
        assert node2 is not None
        plan = parse_plan(one_test(UDP_BALANCED + "rate = 2000\nduration_s = 6\n"))
        loading = threading.Event()

        def kill_node2() -> None:
            if loading.wait(30):
                node2.proc.kill()
        killer = threading.Thread(target=kill_node2)
        killer.start()
        t0 = time.monotonic()
        try:
            report = run_plan(plan, lambda line: "req/s:" in line and loading.set(),
                              cluster=c, poll_s=0.5)
        finally:
            loading.set()
            killer.join()
        took = time.monotonic() - t0
    t = report["tests"][0]
    assert took < 40, took
    lost = [f for f in t["flags"] if f["flag"] == "node_lost"]
    assert [f["scope"] for f in lost] == ["node2"], t["flags"]
    assert any("red flag node_lost on node2" in r for r in t["reasons"])
    failed = [r for r in report["restores"] if not r["ok"]]
    assert {r["node"] for r in failed} == {"node2"}
    assert all("unreachable" in r["reason"] for r in failed)
    wait_for(lambda: not node2.alive(), timeout=5)
