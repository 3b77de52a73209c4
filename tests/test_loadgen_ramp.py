"""Ramps, criteria, the knee finder, the reports and the `beastnet load` command."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import orjson
import pytest

from beastnet import ResponseTable, UDPServer
from beastnet.loadgen import _native
from beastnet.cli import main
from beastnet.errors import LoadConfigError
from beastnet.loadgen.histogram import NBUCKETS, Histogram
from beastnet.loadgen import LoadResult, UDPLoadConfig, level_config
from beastnet.loadgen.ramp import (DEFAULT_RAMP, SLO, Criteria, Level, default_levels, find_max,
                           parse_levels, ramp_table, run_ramp)
from beastnet.loadgen.outputs import write_html
from beastnet.loadgen.report import charts, format_table

from _loadgen_servers import ScriptedUDPServer, beastnet_price_server

# Source paths, for reading files only: subprocesses run the package under test.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

pytestmark = pytest.mark.timeout(90)


def fake_result(p50_ms: float, p99_ms: float, sent: int = 1000, lost: int = 0,
                duration_s: float = 1.0) -> LoadResult:
    """A result whose latency is 98 % at p50_ms and 2 % at p99_ms."""
    counts = np.zeros(NBUCKETS, dtype=np.uint64)
    received = sent - lost
    slow = received * 2 // 100
    counts[_native.hist_index_of(int(p50_ms * 1e6))] += received - slow
    counts[_native.hist_index_of(int(p99_ms * 1e6))] += slow
    h = Histogram(counts, received, 0, int(p50_ms * 1e6), int(p99_ms * 1e6))
    return LoadResult(sent=sent, received=received, lost=lost, duration_s=duration_s, histogram=h)


def test_default_ramp_is_the_design_table():
    levels = default_levels()
    assert len(levels) == 13
    assert (levels[0].requests, levels[0].concurrency) == (300, 30)
    assert (levels[-1].requests, levels[-1].concurrency) == (9_000_000, 21_000)
    assert [lv.number for lv in default_levels(quick=True)] == [1, 2, 3, 4, 5, 6]
    assert len(default_levels(max_level=3)) == 3
    assert [(lv.requests, lv.concurrency) for lv in parse_levels("10x2, 1_000x30")] == [(10, 2), (1000, 30)]
    with pytest.raises(LoadConfigError):
        parse_levels("10by2")
    with pytest.raises(LoadConfigError):
        default_levels(max_level=0)
    assert DEFAULT_RAMP[8] == (900_000, 9_000)


def test_level_config_keeps_concurrency_exact():
    base = UDPLoadConfig(sockets=64)
    for requests, conc in DEFAULT_RAMP:
        c = level_config(base, requests, conc)
        assert c.sockets * c.window == conc and c.sockets <= 64
        assert c.max_requests == requests and c.warmup_s == 0 and c.rate is None


@pytest.mark.parametrize("number,p50,p99,lost,verdict", [
    (1, 1, 2, 0, "pass"),
    (1, 1, 2, 1, "fail"),          # success < 100 % through level 9
    (10, 1, 2, 1, "warn"),         # ... only a warning after it
    (5, 12, 20, "0", "fail"),      # p50 >= 10 ms in levels 5-8
    (5, 1, 350, 0, "fail"),        # p99 >= 300 ms in levels 5-8
    (3, 1, 350, 0, "warn"),        # ... only a warning outside them
    (6, 9, 20, 0, "warn"),         # near the p50 limit
])
def test_criteria(number, p50, p99, lost, verdict):
    r = fake_result(p50, p99, lost=int(lost))
    got, reasons = Criteria().judge(Level(number, 1000, 10), r)
    assert got == verdict, reasons


@pytest.mark.parametrize("rps,lost,p99,verdict", [
    (120_000, 0, 20, "warn"),      # 1,500 in flight under 150k req/s: a p50 of 12 ms follows
    (160_000, 0, 20, "fail"),      # over the bar: the throughput does not explain it
    (120_000, 1, 20, "fail"),      # a lost request fails whatever the throughput
    (120_000, 0, 350, "fail"),     # ... and so does a p99 over its limit
])
def test_machine_relative_criteria_excuse_only_the_latency_the_throughput_implies(
        rps, lost, p99, verdict):
    # 90,000 requests at 1,500 in flight answered at `rps`, p50 12 ms >= 10 ms.
    sent = 90_000
    r = fake_result(12, p99, sent=sent, lost=lost, duration_s=(sent - lost) / rps)
    level = Level(6, sent, 1500)
    assert Criteria().judge(level, r)[0] == "fail"             # strict: the design table
    got, reasons = Criteria(machine_relative=True).judge(level, r)
    assert got == verdict, reasons
    p50_reason = next(x for x in reasons if x.startswith("p50"))
    if rps < 150_000:
        assert "not met on this machine" in p50_reason and ">= 150,000 req/s" in p50_reason
    else:
        assert "not met on this machine" not in p50_reason


def test_demo_note_never_calls_a_level_with_an_unmet_bar_a_pass():
    from beastnet.cli.demo import machine_note
    bar = ("p50 12.000 ms >= 10 ms: not met on this machine (at 1,500 in flight the limit "
           "asks for >= 150,000 req/s by Little's law; answered 120,000 req/s)")
    note = machine_note({"verdict": "warn", "levels": [{"level": 6, "reasons": [bar]}]})
    assert "NOT MET on this machine" in note and f"level 6: {bar}" in note
    assert "every level met" in machine_note({"verdict": "pass", "levels": []})
    assert "failed" in machine_note({"verdict": "fail", "levels": []})


def test_ramp_stops_at_the_breaking_point_and_reports_degradation():
    seen = []

    def run_level(level):
        seen.append(level.number)
        return fake_result(1.0 * level.number, 2.0 * level.number, sent=level.requests,
                           lost=1 if level.number == 3 else 0, duration_s=1.0)
    rep = run_ramp(default_levels(), run_level)
    assert seen == [1, 2, 3] and rep.breaking_point == 3 and rep.verdict == "fail"
    assert rep.stopped_early
    deg = rep.degradation()
    assert deg["first_level"] == 1 and deg["best_level"] == 3
    assert deg["p50_ratio"] == pytest.approx(3.0, rel=0.02)
    rep2 = run_ramp(default_levels(max_level=4), run_level, stop_at_break=False)
    assert [lr.level.number for lr in rep2.levels] == [1, 2, 3, 4]
    orjson.dumps(rep2.to_dict())
    assert "FAIL" in format_table(rep2.to_dict()["levels"])


def test_knee_finder_brackets_the_capacity():
    capacity = 37_000.0

    def at_rate(rate):
        if rate <= capacity:
            return fake_result(0.5, 2.0, sent=int(rate))
        return fake_result(50, 400, sent=int(rate), lost=int(rate - capacity))
    rep = find_max(at_rate, start_rate=1000, slo=SLO(p99_ms=10), precision=0.02, max_probes=30)
    assert rep.knee_rps is not None and rep.first_breach_rps is not None
    assert rep.knee_rps <= capacity < rep.first_breach_rps
    assert (rep.first_breach_rps - rep.knee_rps) / rep.knee_rps <= 0.02
    assert rep.verdict == "pass"
    # A server that breaks at any rate: the finder goes down, then gives up.
    rep = find_max(lambda rate: fake_result(50, 400, sent=10), start_rate=100, max_probes=5)
    assert rep.knee_rps is None and rep.verdict == "fail" and len(rep.probes) == 5


def test_knee_finder_against_a_real_server():
    table = ResponseTable()
    table["BTC"] = b"1"
    with UDPServer(table, "127.0.0.1", 0, sockets=1) as server:
        base = UDPLoadConfig(port=server.address[1], sockets=8, threads=1, warmup_s=0.1,
                             duration_s=0.4)
        import dataclasses
        from beastnet.loadgen import run_udp_load
        rep = find_max(lambda rate: run_udp_load(dataclasses.replace(base, rate=rate)),
                       start_rate=2000, slo=SLO(p99_ms=500, max_loss=0.01, min_delivery=0.8),
                       max_probes=3, max_rate=8000)
    # Generous SLO: the box is shared, this checks the plumbing, not the server.
    assert rep.knee_rps is not None and rep.knee_rps >= 2000, rep.probes
    assert len(rep.probes) <= 3


def test_svg_charts_are_well_formed(tmp_path):
    levels = []
    for n in (1, 2):
        levels.append({"level": n, "requests": 10, "concurrency": 1, "verdict": "pass",
                       "reasons": [], "result": fake_result(n, 2 * n).to_dict()})
    report = {"kind": "ramp", "verdict": "pass", "levels": levels, "config": {}, "machine": {}}
    for svg in charts(report):
        ET.fromstring(svg)
    path = tmp_path / "r.html"
    write_html(str(path), report, "table")
    text = path.read_text()
    assert "<svg" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")


@pytest.fixture
def server_port():
    with beastnet_price_server() as port:
        yield port


def test_cli_single_run_writes_json_and_html(server_port, tmp_path, capsys):
    j, h = tmp_path / "r.json", tmp_path / "r.html"
    code = main(["load", f"127.0.0.1:{server_port}", "-k", "BTC,ETH", "-d", "0.5",
                 "--warmup", "0.1", "-s", "4", "-w", "4", "--json", str(j), "--html", str(h),
                 "-p", "99.999"])
    assert code == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "p99" in out
    rep = orjson.loads(j.read_bytes())
    assert rep["kind"] == "run" and rep["result"]["received"] > 0
    assert rep["machine"]["cpus"] and rep["config"]["keys"] == ["BTC", "ETH"]
    assert "99.999" in rep["result"]["extra_percentiles"]
    assert "<svg" in h.read_text()


def test_cli_quick_ramp(server_port, tmp_path, capsys):
    j = tmp_path / "ramp.json"
    code = main(["load", f"127.0.0.1:{server_port}", "--levels", "300x30,900x90,3000x300",
                 "-s", "16", "--json", str(j), "--p99-ms", "1000"])
    out = capsys.readouterr().out
    rep = orjson.loads(j.read_bytes())
    assert [lv["level"] for lv in rep["levels"]] == [1, 2, 3]
    assert all(lv["result"]["sent"] == lv["requests"] for lv in rep["levels"])
    assert code == (1 if rep["verdict"] == "fail" else 0)
    assert "breaking point" in out


def test_cli_exit_code_is_1_on_failure(capsys):
    with ScriptedUDPServer(drop_every=2) as server:
        code = main(["load", f"127.0.0.1:{server.port}", "--levels", "100x4", "-s", "4",
                     "--timeout-ms", "50", "-q"])
    assert code == 1


def test_cli_abort_threshold_stops_early(capsys):
    with ScriptedUDPServer(drop_every=2) as server:
        code = main(["load", f"127.0.0.1:{server.port}", "-d", "5", "--warmup", "0",
                     "-s", "4", "--timeout-ms", "50", "--abort-loss", "0.2", "--json", "/dev/null"])
    out = capsys.readouterr().out
    assert code == 1 and "stopped early" in out


@pytest.mark.parametrize("argv", [
    ["load", "127.0.0.1:9", "-d", "0"],
    ["load", "127.0.0.1:9", "-d", "-1"],
    ["load", "127.0.0.1:9", "-n", "0"],
    ["load", "127.0.0.1", "-d", "1"],
    ["load", "ftp://x:1"],
    ["load", "127.0.0.1:9", "--find-max", "--quick"],
])
def test_cli_bad_input_is_a_clear_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("beastnet load: ")


def exit_code_for(out: str) -> int:
    """The documented exit status for the verdict the output prints: 0 for
    PASS or WARN, 1 for FAIL (whichever verdict the shared machine yields)."""
    verdicts = re.findall(r"verdict: (PASS|WARN|FAIL)", out)
    assert verdicts, out
    return 1 if verdicts[-1] == "FAIL" else 0


def test_cli_find_max(server_port, capsys):
    code = main(["load", f"127.0.0.1:{server_port}", "--find-max", "--start-rate", "2000",
                 "--max-rate", "4000", "--step-s", "0.4", "--warmup", "0.1", "-s", "8",
                 "--max-probes", "2", "--slo-p99-ms", "100"])
    out = capsys.readouterr().out
    assert "highest sustainable rate" in out
    assert code == exit_code_for(out), out


def test_example_runs_against_a_server(server_port):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "load_generator.py"),
                           f"127.0.0.1:{server_port}", "BTC"], capture_output=True,
                          text=True, timeout=80)
    assert "level 1:" in proc.stdout and "verdict:" in proc.stdout, proc.stderr
    assert proc.returncode == exit_code_for(proc.stdout), proc.stdout


def test_example_imports_only_the_public_api():
    with open(os.path.join(ROOT, "examples", "load_generator.py")) as f:
        text = f.read()
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert all("._" not in line and "_core" not in line for line in imports)


def test_python_m_beastnet_help():
    proc = subprocess.run([sys.executable, "-m", "beastnet", "load", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--find-max" in proc.stdout


def test_load_help_shows_the_ramp_table_from_the_code():
    env = dict(os.environ, COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "beastnet", "load", "--help"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+(\S.*)$", proc.stdout, re.M)
    assert [(int(n), int(r.replace(",", "")), int(c.replace(",", ""))) for n, r, c, _ in rows] \
        == [(i + 1, r, c) for i, (r, c) in enumerate(DEFAULT_RAMP)]
    musts = {int(n): must for n, _, _, must in rows}
    assert musts[1] == "100% success" and musts[10] == "(warnings only)"
    assert musts[5] == musts[8] == "100% success; p50 < 10 ms, p99 < 300 ms"
    assert "p50 < 10 ms and p99 < 300 ms in levels 5-8" in proc.stdout


def test_docs_show_the_ramp_table_from_the_code():
    with open(os.path.join(ROOT, "docs", "loadgen.md"), encoding="utf-8") as f:
        docs = f.read()
    assert ramp_table(markdown=True) in docs
    assert "| 13 | 9,000,000 | 21,000 |" in docs


def test_load_generator_files_cite_no_internal_design_notes():
    paths = [os.path.join(ROOT, "docs", "loadgen.md"), os.path.join(ROOT, "examples", "load_generator.py"),
             os.path.join(SRC, "beastnet", "cli", "load.py"), os.path.join(SRC, "beastnet", "cli", "demo.py")]
    for top in (os.path.join(SRC, "beastnet", "loadgen"), os.path.join(ROOT, "benchmarks")):
        paths += [os.path.join(d, f) for d, _, files in os.walk(top) for f in files
                  if f.endswith((".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h", ".md", ".lua"))]
    cited = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            if re.search(r"\b(DESIGN|STYLE)\.md", f.read()):
                cited.append(path)
    assert not cited


def test_the_cli_and_the_ramp_policy_load_without_numpy_or_the_native_generator():
    code = ("import sys, beastnet, beastnet.cli, beastnet.loadgen.ramp, beastnet.loadgen.config; "
            "heavy = [m for m in ('numpy', 'beastnet.loadgen._native', 'beastnet.loadgen.udp') "
            "if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
