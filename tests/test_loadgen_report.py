"""The load generator's reports: HdrHistogram interchange, the terminal
tables, the timeline, `beastnet report` (one run, A/B), `--server-stats`,
and the HTML page opened in headless Chromium."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import orjson
import pytest

from beastnet.cli import main
from beastnet.cli._common import EXIT_PASS, EXIT_USAGE
from beastnet.loadgen import _native
from beastnet.loadgen.histogram import NBUCKETS, Histogram
from beastnet.loadgen.htmlkit import nines_points, svg_xy
from beastnet.loadgen.htmlreport import report_page
from beastnet.loadgen.report import hdr_log, text_table

from _loadgen_servers import beastnet_price_server
from browser import needs_chromium
from support import require

hdrh_histogram = pytest.importorskip("hdrh.histogram")
hdrh_log = pytest.importorskip("hdrh.log")

pytestmark = pytest.mark.timeout(90)



def histogram_of(values: np.ndarray) -> Histogram:
    counts = np.zeros(NBUCKETS, dtype=np.uint64)
    for v in values.tolist():
        counts[_native.hist_index_of(int(v))] += 1
    return Histogram(counts, len(values), int(values.sum()), int(values.min()), int(values.max()))


@pytest.fixture(scope="module")
def server_port():
    with beastnet_price_server() as port:
        yield port


@pytest.fixture(scope="module")
def saved_run(server_port, tmp_path_factory):
    """One real run with every output: JSON, HDR log, HTML (and its text)."""
    d = tmp_path_factory.mktemp("run")
    argv = ["load", f"127.0.0.1:{server_port}", "-k", "BTC,ETH", "-d", "1.3", "--warmup", "0.5",
            "-s", "4", "-w", "4", "-t", "1", "--json", str(d / "a.json"), "--hdr",
            str(d / "a.hdr"), "--html", str(d / "a.html")]
    assert main(argv) == EXIT_PASS
    return d


# -- HdrHistogram interchange ----------------------------------------------------------


def test_merge_is_exact_and_survives_the_hdr_encoding():
    # Two agents' histograms merge bucket by bucket into the histogram of all
    # their samples, and so do their HdrHistogram encodings.
    rng = np.random.default_rng(7)
    a, b = rng.lognormal(13, 1, 3000).astype(np.int64), rng.lognormal(15, 0.5, 500).astype(np.int64)
    merged, whole = histogram_of(a).merge(histogram_of(b)), histogram_of(np.concatenate([a, b]))
    assert (merged.counts == whole.counts).all()
    assert (merged.total, merged.sum_ns, merged.min_ns, merged.max_ns) == (
        whole.total, whole.sum_ns, whole.min_ns, whole.max_ns)
    for q in (50, 90, 99, 99.9, 100):
        assert merged.percentile(q) == whole.percentile(q)
    decoded = hdrh_histogram.HdrHistogram.decode(histogram_of(a).to_hdr())
    decoded.add(hdrh_histogram.HdrHistogram.decode(histogram_of(b).to_hdr()))
    assert decoded.get_total_count() == merged.total


def test_hdr_encoding_round_trips_through_the_hdrhistogram_package():
    rng = np.random.default_rng(7)
    values = rng.lognormal(11.0, 1.6, 50_000).astype(np.int64) + 1
    ours = histogram_of(values)
    theirs = hdrh_histogram.HdrHistogram.decode(ours.to_hdr())
    assert theirs.get_total_count() == ours.total
    # Same layout: every count sits in the same bucket.
    for i in np.nonzero(ours.counts)[0].tolist():
        lower = int(_native.hist_bucket_bounds()[0][i])
        assert theirs.get_count_at_value(lower) == int(ours.counts[i])
    for q in (50, 90, 99, 99.9, 99.99):
        mine, other = ours.percentile(q), theirs.get_value_at_percentile(q)
        assert abs(mine - other) <= 0.008 * other, (q, mine, other)     # within one bucket
    assert hdrh_histogram.HdrHistogram.decode(Histogram().to_hdr()).get_total_count() == 0


def test_hdr_file_and_json_field_of_a_real_run(saved_run):
    report = orjson.loads((saved_run / "a.json").read_bytes())
    hist = report["result"]["histogram"]
    decoded = hdrh_histogram.HdrHistogram.decode(hist["hdr"])
    assert decoded.get_total_count() == hist["total"] == report["result"]["received"]
    reader = hdrh_log.HistogramLogReader(str(saved_run / "a.hdr"),
                                         hdrh_histogram.HdrHistogram(1, 1 << 38, 2))
    try:
        logged = reader.get_next_interval_histogram()
        assert reader.get_next_interval_histogram() is None
    finally:
        reader.close()
    assert logged.get_total_count() == hist["total"]
    p99 = report["result"]["latency_ns"]["p99"]
    assert abs(logged.get_value_at_percentile(99) - p99) <= 0.008 * p99


def test_hdr_log_tags_each_ramp_level():
    rng = np.random.default_rng(3)
    levels = []
    for n in (1, 2):
        h = histogram_of(rng.integers(1000, 90_000, 500))
        levels.append({"level": n, "result": {"started_at": 100.0 + n, "duration_s": 0.5,
                                              "config": {}, "histogram": h.to_dict()}})
    text = hdr_log({"kind": "ramp", "levels": levels})
    assert re.findall(r"^Tag=(level-\d),", text, re.M) == ["level-1", "level-2"]


# -- terminal ----------------------------------------------------------------------------


def test_terminal_summary_is_tables_without_reprs(saved_run):
    proc = subprocess.run([sys.executable, "-m", "beastnet", "report", str(saved_run / "a.json"),
                           "-o", str(saved_run / "again.html")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "{" not in out and "None" not in out and "'" not in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["requests", "count"])
    rule = lines[head + 1]
    # The rule lines up under the header: "requests" starts where its dashes
    # start, "count" (numbers, flush right) ends where its dashes end.
    dashes = list(re.finditer(r"-+", rule))
    words = list(re.finditer(r"\S+", lines[head]))
    assert words[0].start() == dashes[0].start() and words[1].end() == dashes[1].end()
    count_end = dashes[1].end()
    for line in lines[head + 2:head + 5]:
        assert line[count_end - 1].isdigit() and line[count_end] == " "
    assert "connect" not in out                     # UDP: never measured, never shown
    assert out.strip().splitlines()[-2] == "verdict: PASS"


def test_text_table_aligns_columns():
    text = text_table([["a", "1", "x"], ["bbb", "1,000", "yy"]], ["k", "n", "d"], "lrl")
    rows = text.splitlines()
    assert rows[0] == "  k        n  d" and rows[2] == "  a        1  x"
    assert rows[3] == "  bbb  1,000  yy"


# -- the timeline ----------------------------------------------------------------------


def test_timeline_marks_warmup_and_scales_partial_seconds(saved_run):
    rows = orjson.loads((saved_run / "a.json").read_bytes())["result"]["timeline"]
    assert rows[0]["warmup"] and rows[0]["t_start"] == 0.0
    assert not rows[-1]["warmup"]
    partial = rows[-1]
    assert partial["partial"] and partial["span_s"] < 0.95
    assert partial["rps"] == pytest.approx(partial["received"] / partial["span_s"], rel=0.01)
    assert [r["t_start"] for r in rows[1:]] == [r["t"] for r in rows[:-1]]


def test_nines_axis():
    h = histogram_of(np.arange(1, 1001, dtype=np.int64) * 1000)
    pts = nines_points(h.to_dict())
    xs = [x for x, _ in pts]
    assert xs == sorted(xs) and xs[0] == 0.0 and xs[-1] == pytest.approx(3.0)
    # At 2 on the axis (99 %), the curve reads the 99th percentile.
    at99 = [y for x, y in pts if x <= 2.0 + 1e-9][-1]
    assert at99 == pytest.approx(990 * 1000 / 1e6, rel=0.01)
    svg = svg_xy("t", [("a", pts, {})], "percentile", "ms", log_y=True, nines=True, step=True)
    ET.fromstring(svg)
    assert ">99%<" in svg and ">99.9%<" in svg


# -- beastnet report ---------------------------------------------------------------------


def test_report_command_compares_two_runs(saved_run, server_port, capsys):
    b = saved_run / "b.json"
    assert main(["load", f"127.0.0.1:{server_port}", "-k", "BTC", "-d", "0.5", "--warmup", "0.2",
                 "-s", "2", "-w", "2", "-t", "1", "--json", str(b), "-q"]) == EXIT_PASS
    out_html = saved_run / "ab.html"
    assert main(["report", str(saved_run / "a.json"), str(b), "-o", str(out_html),
                 "--names", "before,after"]) == EXIT_PASS
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    a_rep, b_rep = (orjson.loads(p.read_bytes()) for p in (saved_run / "a.json", b))
    delta = b_rep["result"]["lost"] - a_rep["result"]["lost"]
    assert rows["lost"].split()[1:4] == [f"{a_rep['result']['lost']:,}",
                                          f"{b_rep['result']['lost']:,}", f"{delta:+,}"]
    assert "before" in out and "after" in out and "p99" in out
    page = out_html.read_text()
    assert "before vs after" in page and "Latency by percentile" in page


def test_report_command_says_when_two_protocols_are_compared(saved_run, tmp_path, capsys):
    udp = orjson.loads((saved_run / "a.json").read_bytes())
    # The same numbers under an HTTPS target: another protocol, not a change.
    https = orjson.loads((saved_run / "a.json").read_bytes())
    https["result"]["mode"] = "http"
    https["result"]["config"].update(tls=True, path_prefix="/v1/")
    a, b, page = tmp_path / "udp.json", tmp_path / "https.json", tmp_path / "ab.html"
    a.write_bytes(orjson.dumps(udp))
    b.write_bytes(orjson.dumps(https))
    assert main(["report", str(a), str(b), "-o", str(page)]) == EXIT_PASS
    out = capsys.readouterr().out
    assert out.startswith("note: these reports compare two protocols: udp is UDP, https is HTTPS")
    assert "Note: these reports compare two protocols" in page.read_text()
    # A like-for-like A/B carries no note.
    assert main(["report", str(a), str(a), "-o", str(page)]) == EXIT_PASS
    assert "note:" not in capsys.readouterr().out and "Note:" not in page.read_text()


@pytest.mark.parametrize("content,why", [(b"{", "not JSON"), (b'{"kind":"x"}', "not a report"),
                                         (None, "No such file")])
def test_report_command_rejects_bad_input_in_one_line(content, why, tmp_path, capsys):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_bytes(content)
    assert main(["report", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and err[0].startswith("beastnet report: ")


def test_unwritable_output_is_one_line(server_port, capsys):
    code = main(["load", f"127.0.0.1:{server_port}", "-d", "0.2", "--warmup", "0", "-s", "2",
                 "-q", "--html", "/nonexistent/dir/r.html"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USAGE and err == ["beastnet load: cannot write /nonexistent/dir/r.html: "
                                          "No such file or directory"]


# -- --server-stats ----------------------------------------------------------------------


ADMIN_TOKEN = "admin-token-for-tests"


def test_server_stats_sit_beside_the_client_timeline(tmp_path, capsys, monkeypatch):
    from test_serve import Serve
    server = Serve(tmp_path, "--no-keys", env={"BEASTNET_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        j, h = tmp_path / "s.json", tmp_path / "s.html"
        short = ["load", f"127.0.0.1:{server.udp[1]}", "-k", "BTC", "-s", "2", "-w", "2", "-t",
                 "1", "-q", "--server-stats", f"http://127.0.0.1:{server.admin_port}"]
        code = main(short + ["-d", "2", "--warmup", "0.5", "--json", str(j), "--html", str(h),
                             "--server-stats-token", ADMIN_TOKEN])
        # Without the token every read is refused (and said so); from the
        # environment it is accepted.
        denied, from_env = tmp_path / "denied.json", tmp_path / "env.json"
        assert main(short + ["-d", "0.3", "--warmup", "0", "--json", str(denied)]) == EXIT_PASS
        assert "HTTP 401 Unauthorized (wrong or missing --server-stats-token?)" in \
            capsys.readouterr().err
        monkeypatch.setenv("BEASTNET_ADMIN_TOKEN", ADMIN_TOKEN)
        assert main(short + ["-d", "0.3", "--warmup", "0", "--json", str(from_env)]) == EXIT_PASS
    finally:
        server.kill()
    assert code == EXIT_PASS, capsys.readouterr()
    assert orjson.loads(denied.read_bytes())["server_stats"]["rows"] == []
    assert orjson.loads(from_env.read_bytes())["server_stats"]["failures"] == 0
    stats = orjson.loads(j.read_bytes())["server_stats"]
    assert stats["failures"] == 0 and len(stats["rows"]) >= 3
    served = stats["rows"][-1]["udp"]["rx_packets"] - stats["rows"][0]["udp"]["rx_packets"]
    sent = orjson.loads(j.read_bytes())["result"]["timeline"]
    assert served >= sum(r["sent"] for r in sent) * 0.9
    assert max(r["rx"] for r in stats["rates"]) > 0
    page = h.read_text()
    assert "Server drops beside client loss" in page and "server kernel drops/s" in page


def test_server_stats_that_cannot_be_read_do_not_stop_the_run(server_port, tmp_path, capsys):
    j = tmp_path / "s.json"
    code = main(["load", f"127.0.0.1:{server_port}", "-d", "0.5", "--warmup", "0", "-s", "2",
                 "--json", str(j), "--server-stats", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == EXIT_PASS and "--server-stats http://127.0.0.1:1/admin/stats" in err
    assert orjson.loads(j.read_bytes())["server_stats"]["failures"] >= 1


# -- the page in a real browser ---------------------------------------------------------

ERROR_HOOK = ("<script>window.onerror=function(m){document.documentElement.setAttribute("
              "'data-script-error',String(m));};</script>")


def chromium() -> str:
    return require("chromium")


def script_error(dom: str) -> str:
    """What the error hook wrote on <html>, or ""."""
    m = re.search(r'<html[^>]*data-script-error="([^"]*)"', dom)
    return m.group(1) if m else ""


def render_dom(html_path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium (file only)."""
    hooked = html_path.with_name("hooked-" + html_path.name)
    text = html_path.read_text()
    hooked.write_text(text.replace("<head>", "<head>" + ERROR_HOOK, 1))
    home = html_path.parent / "chromium-home"
    home.mkdir(exist_ok=True)
    proc = subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--disable-sync",
         f"--user-data-dir={home}", "--virtual-time-budget=2000", "--dump-dom",
         hooked.as_uri()],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(home)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.timeout(120)
def test_the_page_renders_in_headless_chromium_without_script_errors(saved_run):
    page = saved_run / "a.html"
    text = page.read_text()
    # Self-contained: nothing to fetch (the SVG namespace is a name, not a fetch).
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    dom = render_dom(page)
    assert not script_error(dom), script_error(dom)
    charts = text.count("<svg ")
    assert charts >= 4
    # The page's own script ran to its end and counted the charts it found.
    assert f'data-charts="{charts}"' in dom
    assert dom.count("<path ") >= charts and "Latency by percentile" in dom


@pytest.mark.timeout(120)
def test_a_script_error_would_be_seen(saved_run):
    page = saved_run / "broken.html"
    report = orjson.loads((saved_run / "a.json").read_bytes())
    page.write_text(report_page(report).replace("document.body", "document.nobody"))
    assert "setAttribute" in script_error(render_dom(page))


@needs_chromium()
@pytest.mark.timeout(120)
def test_charts_share_the_page_width(saved_run):
    from browser import Browser
    with Browser() as browser:
        browser.call("Emulation.setDeviceMetricsOverride", width=1600, height=1200,
                     deviceScaleFactor=1, mobile=False)
        browser.open((saved_run / "a.html").as_uri())
        browser.wait_for("document.body && document.body.getAttribute('data-charts')")
        rows = browser.eval(
            "JSON.stringify([...document.querySelectorAll('.charts')].map(c => "
            "[c.getBoundingClientRect().width, [...c.querySelectorAll('svg')].map("
            "s => s.getBoundingClientRect().width)]))")
    widths = orjson.loads(rows)
    assert widths and all(svgs for _, svgs in widths)
    # Two charts a row on a 1600 px window: each takes about half the row (a
    # fixed 590 px chart took 40 %, leaving a third of the page empty).
    for row, svgs in widths:
        assert all(w >= 0.45 * row for w in svgs), (row, svgs)


def test_demo_report_carries_the_server_counters(tmp_path, capsys):
    j, h = tmp_path / "demo.json", tmp_path / "demo.html"
    assert main(["demo", "--max-level", "1", "--json", str(j), "--html", str(h)]) == EXIT_PASS
    out = capsys.readouterr().out
    totals = orjson.loads(j.read_bytes())["server_totals"]
    assert f"server: {totals['rx_packets']:,} requests" in out
    assert totals["rx_packets"] >= 300
    page = h.read_text()
    assert "Server counters" in page and out.strip().splitlines()[-1] in page
    assert not list(tmp_path.glob("beastnet-demo-*"))


# -- every kind of page ------------------------------------------------------------------


def svgs_of(page: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", page, re.S)


def test_ramp_knee_and_compare_pages_are_well_formed(saved_run):
    from beastnet.loadgen.htmlreport import compare_page
    run = orjson.loads((saved_run / "a.json").read_bytes())
    result = run["result"]
    ramp = {"kind": "ramp", "verdict": "fail", "breaking_point": 2, "interrupted": False,
            "degradation": None, "config": run["config"], "machine": run["machine"],
            "levels": [{"level": n, "requests": 10, "concurrency": 1, "verdict": v,
                        "reasons": [] if v == "pass" else ["p99 400.000 ms >= 300 ms"],
                        "result": result} for n, v in ((1, "pass"), (2, "fail"))]}
    knee = {"kind": "find-max", "verdict": "pass", "knee_rps": 1000.0, "config": {},
            "probes": [{"rate": 1000.0, "rps": 990.0, "p50_ms": 0.1, "p99_ms": 0.2,
                        "loss": 0.0, "ok": True, "breaches": []}], "results": [result]}
    for page, curves in ((report_page(ramp), ("level 1", "level 2")),
                         (report_page(knee), ("1.00k/s",)),
                         (compare_page(ramp, ramp, ("x", "y")), ("x level 1", "y level 2"))):
        for svg in svgs_of(page):
            ET.fromstring(svg)
        for name in curves:
            assert f'data-legend="{name}"' in page
    page = report_page(ramp)
    # The one line that says why, then nothing repeated.
    assert page.count("level 2: p99 400.000 ms &gt;= 300 ms") == 1


def test_http_page_breaks_down_connect_first_byte_and_total(tmp_path, capsys):
    from _loadgen_servers import ScriptedTCPServer, read_requests

    def handle(conn):
        for _ in read_requests(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    j, h = tmp_path / "h.json", tmp_path / "h.html"
    with ScriptedTCPServer(handle) as server:
        code = main(["load", f"http://127.0.0.1:{server.port}/", "-d", "0.6", "--warmup", "0.1",
                     "-c", "2", "-t", "1", "--conn-mode", "5", "--timeout-ms", "1000",
                     "--json", str(j), "--html", str(h)])
    out = capsys.readouterr().out
    assert code == EXIT_PASS, out
    extra = orjson.loads(j.read_bytes())["result"]["extra"]
    assert extra["connect_ms"]["count"] > 0 and extra["connect_ms"]["p99.9"] is not None
    page = h.read_text()
    assert "HTTP breakdown" in page and "<td class=\"l\">connect</td>" in page
    assert "first byte" in out and "connect" in out


def test_ramp_latency_chart_draws_max_behind_p999(saved_run):
    from beastnet.loadgen.report import charts
    result = orjson.loads((saved_run / "a.json").read_bytes())["result"]
    ramp = {"kind": "ramp", "levels": [{"level": n, "result": result} for n in (1, 2)]}
    latency = [svg for svg in charts(ramp) if "Latency percentiles per level" in svg][0]
    # Equal p99.9 and max must leave p99.9 visible: max is drawn first, dashed.
    first_path = re.search(r"<path [^>]*>", latency).group(0)
    assert 'stroke-dasharray="5,3"' in first_path
    assert latency.index("<title>max ") < latency.index("<title>p99.9 ")
