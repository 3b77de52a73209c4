"""The HTML report: one self-contained page (inline SVG and CSS, a few lines
of script for legend toggles; nothing fetched from the network).

It draws from the JSON report alone, so `beastnet report RUN.json` renders
the same page later, and `compare_page` puts two runs side by side with
deltas.  What it shows:

- a title with the target, the mode and the time, the verdict and why;
- the latency distribution on HdrHistogram's "nines" axis (x = -log10(1-q):
  50 %, 90 %, 99 %, 99.9 % ... equally spaced), one curve per run, ramp
  level or side of an A/B comparison;
- per-second timelines (answered and sent rates, p50/p99/max, loss and
  errors) on a time axis, the warm-up shaded; every row is a rate over its
  own span, so a partial last second is not a collapse;
- HTTP: connect, time to first byte and total as a table and a chart;
- with ``--server-stats``, the server's rx/tx, drops and rate-limited
  answers per second beside the client's sent, answered and lost;
- summary, outcomes, machine and configuration as tables.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from beastnet.loadgen.compare import compare_pairs, compare_rows, unlike
from beastnet.loadgen.htmlkit import (_e, _flat, _page, _rows_at, _server_section,
                                      _verdict_block, html_table, kv_table, nines_chart, svg_xy,
                                      timeline_charts)
from beastnet.loadgen.report import (_count, _ms, agent_rows, agents_line, charts,
                                     first_result, latency_rows, outcome_rows, report_results,
                                     run_title, setup_parts, svg_chart, tls_line)
from beastnet.loadgen.targets import kind_of

__all__ = ["compare_page", "report_page"]


# -- tables ---------------------------------------------------------------------------


def tiles(r: dict) -> str:
    lat = r["latency_ns"]
    items = [("answered req/s", f"{r['rps']:,.0f}"),
             ("success", f"{r['success_rate']:.3%}"),
             ("p50 ms", _ms(lat.get("p50"))), ("p99 ms", _ms(lat.get("p99"))),
             ("p99.9 ms", _ms(lat.get("p99.9"))), ("max ms", _ms(lat.get("max"))),
             ("sent", f"{r['sent']:,}"), ("lost", f"{r['lost']:,}"),
             ("errors", f"{r['errors']:,}"), ("measured s", f"{r['duration_s']:.2f}")]
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
        for k, v in items) + "</div>"


def http_breakdown(r: dict) -> str:
    """Connect, time to first byte and total: a table and a chart."""
    extra = r.get("extra", {})
    kind = kind_of(str(r.get("mode")))
    if kind is None or not kind.setup_timings:
        return ""
    rows = latency_rows(r)
    names = ["p50", "p90", "p99", "max"]
    lat = r["latency_ns"]
    parts = [("total", {k: None if lat.get(k) is None else lat[k] / 1e6 for k in names})]
    for label, part in setup_parts(extra):
        parts.append((label, {k: part.get(k) for k in names}))
    chart = svg_chart("HTTP: connect, TLS, first byte, total" if extra.get("tls")
                      else "HTTP: connect, first byte, total", names,
                      [(label, [vals.get(k) for k in names]) for label, vals in parts],
                      "ms", log_y=True, bars=True)
    note = ("" if len(parts) > 2 else
            "<p>Connect time is shown only where it was measured (after the warm-up).</p>")
    tls = tls_line(extra)
    if tls:
        note += f"<p>{_e(tls.strip())}</p>"
    return (f"<section><h2>HTTP breakdown</h2>{html_table(rows[1:], rows[0])}{note}"
            f'<div class="charts">{chart}</div></section>')


# -- pages ----------------------------------------------------------------------------


def _title(report: dict) -> tuple[str, str]:
    """(title, subtitle): the target, the mode and the time."""
    kind = report.get("kind", "run")
    first = first_result(report)
    what = run_title(first) if first else "load"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                         time.gmtime(report.get("created_at") or time.time()))
    label = {"run": "single run", "ramp": "ramp", "find-max": "knee finder"}.get(kind, kind)
    return f"beastnet load: {what}", f"{label} · {when} · beastnet {report.get('beastnet_version', '')}"


def _ramp_table(report: dict) -> str:
    head = ["level", "requests", "concurrency", "sent", "ok", "lost", "errors", "success",
            "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "verdict"]
    rows = []
    for lv in report["levels"]:
        r = lv["result"]
        lat = r["latency_ns"]
        rows.append([lv["level"], f"{lv['requests']:,}", f"{lv['concurrency']:,}",
                     f"{r['sent']:,}", f"{r['ok']:,}", f"{r['lost']:,}", f"{r['errors']:,}",
                     f"{r['success_rate']:.3%}", f"{r['rps']:,.0f}"]
                    + [_ms(lat.get(k)) for k in ("p50", "p90", "p99", "p99.9", "max")]
                    + [lv["verdict"].upper()])
    return html_table(rows, head)


def _kind_charts(report: dict) -> list[str]:
    """The charts of a ramp or knee finder, before the timelines."""
    kind = report.get("kind")
    if kind == "ramp":
        levels = report["levels"]
        out = charts(report)
        out.append(nines_chart("Latency by percentile, per level",
                               [(f"level {lv['level']}", lv["result"].get("histogram"))
                                for lv in levels]))
        return out
    if kind == "find-max":
        return charts(report) + [nines_chart(
            "Latency by percentile, per probe",
            [(f"{_count(p['rate'])}/s", r.get("histogram"))
             for p, r in zip(report["probes"], report["results"])])]
    r = report["result"]
    return [nines_chart("Latency by percentile", [("latency", r.get("histogram"))])]


def report_page(report: dict, text_summary: str = "") -> str:
    """The page of one report (a run, a ramp or a knee finder, or any
    WebSocket report: see `wshtml`)."""
    from beastnet.loadgen.ws.htmlpage import is_ws_report, ws_report_page
    if is_ws_report(report):
        return ws_report_page(report, text_summary)
    title, subtitle = _title(report)
    results = report_results(report)
    first = first_result(report)
    body = [_verdict_block(report)]
    if report.get("kind") == "run" and first:
        body.append(f"<section><h2>Summary</h2>{tiles(first)}</section>")
    marks = []
    if report.get("kind") == "ramp" and results:
        base = min(r.get("started_at") or 0.0 for r in results)
        marks = [((lv["result"].get("started_at") or base) - base, f"L{lv['level']}")
                 for lv in report["levels"]]
        body.append(f"<section><h2>Levels</h2>{_ramp_table(report)}</section>")
    timeline = timeline_charts(results, report.get("server_stats"), marks) if results else []
    if report.get("kind") == "run":
        # The distribution first, then the seconds: one grid, two a row.
        body.append('<section><h2>Latency and timeline</h2><div class="charts">'
                    + "".join(_kind_charts(report) + timeline) + "</div></section>")
    else:
        body.append('<section><h2>Latency and throughput</h2><div class="charts">'
                    + "".join(_kind_charts(report)) + "</div></section>")
        body.append('<section><h2>Timeline</h2><div class="charts">' + "".join(timeline)
                    + "</div></section>")
    if report.get("kind") == "run" and first:
        lat = latency_rows(first)
        body.append("<section><h2>Outcomes</h2><div class='grid'>"
                    + html_table(outcome_rows(first), ["requests", "count", "share", "detail"])
                    + html_table(lat[1:], lat[0]) + "</div></section>")
        agents = agent_rows(first)
        if agents:
            body.append(f"<section><h2>Load agents</h2>{html_table(agents[1:], agents[0])}"
                        f"<p>{_e(agents_line(first).strip())}</p></section>")
        body.append(http_breakdown(first))
    body.append(_server_section(report))
    body.append("<section><h2>Machine and configuration</h2><div class='grid'>"
                f"<div><h2>Machine</h2>{kv_table(report.get('machine', {}))}</div>"
                f"<div><h2>Configuration</h2>{kv_table(report.get('config', {}))}</div>"
                "</div>" + (f"<p>Command: <code>beastnet {_e(' '.join(report['argv']))}</code></p>"
                            if report.get("argv") else "") + "</section>")
    if text_summary:
        body.append(f"<section><h2>Terminal summary</h2><pre>{_e(text_summary)}</pre></section>")
    return _page(title, subtitle, body)


# -- A/B ------------------------------------------------------------------------------



def compare_page(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two reports side by side with deltas (B - A): the A/B comparison made
    after a change.  Ramps are compared level by level."""
    title = f"beastnet load A/B: {names[0]} vs {names[1]}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time()))
    ra, rb = report_results(a), report_results(b)
    body = ['<section><h2>Runs</h2>' + html_table(
        [[n, _title(r)[0].replace("beastnet load: ", ""), _title(r)[1],
          str(r.get("verdict", "")).upper()] for n, r in zip(names, (a, b))],
        ["", "target", "when", "verdict"], left=4)
        + "".join(f'<div class="reason">Note: {_e(n)}</div>' for n in unlike(a, b, names))
        + "</section>"]
    pairs = compare_pairs(a, b)
    for label, x, y in pairs:
        rows = compare_rows(x, y)
        table = ["<table><tr><th class='l'>metric</th><th>" + _e(names[0]) + "</th><th>"
                 + _e(names[1]) + "</th><th>delta</th></tr>"]
        for name, va, vb, delta, cls in rows:
            table.append(f"<tr><td class='l'>{_e(name)}</td><td>{_e(va)}</td><td>{_e(vb)}</td>"
                         f"<td class='{cls}'>{_e(delta)}</td></tr>")
        body.append(f"<section><h2>{_e(label or 'Summary')}: {_e(names[1])} against "
                    f"{_e(names[0])}</h2>{''.join(table)}</table></section>")
    curves: list[tuple[str, Optional[dict]]] = []
    for label, x, y in pairs:
        curves += [(f"{names[0]} {label}".strip(), x.get("histogram")),
                   (f"{names[1]} {label}".strip(), y.get("histogram"))]
    series: list[tuple[str, Sequence[tuple[float, Optional[float]]], dict]] = []
    for name, rs in ((names[0], ra), (names[1], rb)):
        base = min((r.get("started_at") or 0.0) for r in rs) if rs else 0.0
        timeline = [xr for r in rs for xr in _rows_at(r, base)]
        series.append((name, [(x, row["rps"]) for x, row in timeline], {}))
    charts = [nines_chart("Latency by percentile", curves),
              svg_xy("Answered per second, from each run's start", series, "seconds",
                     "requests / s")]
    ca, cb = dict(_flat(a.get("config", {}))), dict(_flat(b.get("config", {})))
    changed = [[k, ca.get(k, "-"), cb.get(k, "-")] for k in sorted(set(ca) | set(cb))
               if ca.get(k) != cb.get(k)]
    if changed:
        body.append("<section><h2>Configuration that differs</h2>"
                    + html_table(changed, ["setting", names[0], names[1]], left=3)
                    + "</section>")
    body.append('<section><h2>Charts</h2><div class="charts">' + "".join(charts)
                + "</div></section>")
    body.append("<section><h2>Machines</h2><div class='grid'>"
                + "".join(f"<div><h2>{_e(n)}</h2>{kv_table(r.get('machine', {}))}</div>"
                          for n, r in zip(names, (a, b))) + "</div></section>")
    return _page(title, when, body)
