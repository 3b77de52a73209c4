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

import html
import math
import time
from typing import Any, Optional, Sequence

from beastnet.loadgen.report import (_count, _ms, latency_rows, outcome_rows, run_title,
                                     setup_parts, svg_chart, tls_line)

__all__ = ["compare_page", "compare_pairs", "compare_rows", "nines_points", "report_page",
           "svg_xy"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939")

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;
background:#f4f6f8}
header{background:#1d2b3a;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:21px;font-weight:600}
header .sub{color:#b8c4d0;margin-top:4px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:700;margin-right:8px}
.pass{background:#2e7d32;color:#fff}.warn{background:#ef8f00;color:#fff}.fail{background:#c62828;color:#fff}
main{padding:12px 28px 40px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin:14px 0;
padding:10px 18px 16px}
h2{font-size:16px;margin:6px 0 10px;color:#33414f}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{border:1px solid #dde3e9;border-radius:6px;padding:8px 14px;min-width:110px}
.tile .v{font-size:20px;font-weight:600}.tile .k{color:#66727f;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:8px}
.charts svg{background:#fff}
table{border-collapse:collapse;margin:4px 0 8px;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #e6eaee;text-align:right;white-space:nowrap}
th{background:#f0f3f6;color:#33414f}
td.l,th.l{text-align:left}
td.better{color:#2e7d32}td.worse{color:#c62828}
.kv td:first-child{text-align:left;color:#55616d}.kv td{text-align:left}
.reason{font-family:ui-monospace,monospace;margin:2px 0}
.grid{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
code{font-family:ui-monospace,monospace;font-size:12px}
g.series{cursor:pointer}g.off{opacity:.12}
"""

# Legend entries toggle their series; nothing else runs.
SCRIPT = """
document.querySelectorAll('svg').forEach(function (svg) {
  svg.querySelectorAll('[data-legend]').forEach(function (item) {
    item.addEventListener('click', function () {
      var name = item.getAttribute('data-legend');
      svg.querySelectorAll('[data-series="' + name + '"]').forEach(function (g) {
        g.classList.toggle('off');
      });
      item.classList.toggle('off');
    });
  });
});
document.body.setAttribute('data-charts', String(document.querySelectorAll('svg').length));
"""

NINES_LABELS = ("0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%", "99.99999%")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# -- charts on numeric axes ---------------------------------------------------------


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / 5
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= step * m:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4:
        return _count(v)
    return f"{v:.6g}"


def svg_xy(title: str, series: Sequence[tuple[str, Sequence[tuple[float, Optional[float]]], dict]],
           x_label: str, y_label: str, *, log_y: bool = False, nines: bool = False,
           shade: Sequence[tuple[float, float, str]] = (),
           marks: Sequence[tuple[float, str]] = (), x_range: Optional[tuple[float, float]] = None,
           width: int = 590, height: int = 290, step: bool = False) -> str:
    """A line chart on numeric axes as inline SVG.  `series`: (name, points,
    style) with style keys ``dash`` and ``width``; a None y breaks the line.
    `nines`: x is -log10(1 - q) and labelled 90 %, 99 %, ...  `shade`: x
    ranges drawn grey (the warm-up); `marks`: labelled vertical lines."""
    left, right, top, bottom = 60, 150, 28, 42
    pw, ph = width - left - right, height - top - bottom
    pts = [(x, y) for _, ps, _ in series for x, y in ps
           if y is not None and (y > 0 or not log_y)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" '
           f'role="img" aria-label="{_e(title)}">',
           f'<text x="{left}" y="17" font-size="13" font-weight="bold">{_e(title)}</text>']
    if not pts:
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
                   f'stroke="#bbb"/><text x="{left + pw / 2}" y="{top + ph / 2}" '
                   f'text-anchor="middle" fill="#777">no data</text></svg>')
        return "".join(out)
    x0, x1 = x_range or (min(x for x, _ in pts), max(x for x, _ in pts))
    if nines:
        x0, x1 = 0.0, max(1.0, math.ceil(x1 - 1e-9))
    if x1 <= x0:
        x1 = x0 + 1.0
    ys = [y for _, y in pts]
    if log_y:
        y0 = 10 ** math.floor(math.log10(min(ys)))
        y1 = 10 ** math.ceil(math.log10(max(ys)))
        if y1 <= y0:
            y1 = y0 * 10
        yt = [10.0 ** e for e in range(round(math.log10(y0)), round(math.log10(y1)) + 1)]
    else:
        y0, y1 = 0.0, max(ys) * 1.08 or 1.0
        yt = _ticks(y0, y1)
        y1 = max(y1, yt[-1])

    def X(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def Y(y: float) -> float:
        f = ((math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) if log_y
             else (y - y0) / (y1 - y0))
        return top + ph * (1 - f)

    for a, b, label in shade:
        a, b = max(a, x0), min(b, x1)
        if b > a:
            out.append(f'<rect x="{X(a):.1f}" y="{top}" width="{X(b) - X(a):.1f}" height="{ph}" '
                       f'fill="#e3e7eb"><title>{_e(label)}</title></rect>')
            if X(b) - X(a) > 40:            # room for the label inside the band
                out.append(f'<text x="{X(a) + 4:.1f}" y="{top + 12}" fill="#66727f">'
                           f'{_e(label)}</text>')
    for t in yt:
        if y0 <= t <= y1:
            out.append(f'<line x1="{left}" y1="{Y(t):.1f}" x2="{left + pw}" y2="{Y(t):.1f}" '
                       f'stroke="#e4e4e4"/><text x="{left - 6}" y="{Y(t) + 4:.1f}" '
                       f'text-anchor="end">{_fmt_tick(t)}</text>')
    xt = [float(i) for i in range(int(x1) + 1)] if nines else _ticks(x0, x1)
    # Long nines labels: label every other tick when they would touch.
    every = 2 if nines and len(xt) > 1 and pw / (len(xt) - 1) < 62 else 1
    for t in xt:
        if x0 - 1e-9 <= t <= x1 + 1e-9:
            label = (NINES_LABELS[int(t)] if nines and int(t) < len(NINES_LABELS)
                     else _fmt_tick(t))
            if nines and int(t) % every:
                label = ""
            out.append(f'<line x1="{X(t):.1f}" y1="{top}" x2="{X(t):.1f}" y2="{top + ph}" '
                       f'stroke="#f0f0f0"/><text x="{X(t):.1f}" y="{top + ph + 15}" '
                       f'text-anchor="middle">{label}</text>')
    for x, label in marks:
        if x0 <= x <= x1:
            out.append(f'<line x1="{X(x):.1f}" y1="{top}" x2="{X(x):.1f}" y2="{top + ph}" '
                       f'stroke="#9aa5b1" stroke-dasharray="2,3"/><text x="{X(x) + 2:.1f}" '
                       f'y="{top + ph - 4}" fill="#66727f" font-size="10">{_e(label)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">'
               f'{_e(x_label)}</text><text x="13" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 13 {top + ph / 2})">{_e(y_label)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#888"/>')
    for k, (name, ps, style) in enumerate(series):
        color = style.get("color", COLORS[k % len(COLORS)])
        path, pen, prev = [], "M", None
        for x, y in ps:
            if y is None or (log_y and y <= 0):
                pen, prev = "M", None
                continue
            if step and prev is not None:
                path.append(f"L{X(x):.1f},{Y(prev):.1f}")
            path.append(f"{pen}{X(x):.1f},{Y(y):.1f}")
            pen, prev = "L", y
        dash = f' stroke-dasharray="{style["dash"]}"' if style.get("dash") else ""
        dots = "" if step or len(ps) > 80 else "".join(
            f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.2" fill="{color}">'
            f'<title>{_e(name)}: {y:.6g} at {x:.6g}</title></circle>'
            for x, y in ps if y is not None and (y > 0 or not log_y))
        out.append(f'<g class="series" data-series="{_e(name)}"><path d="{" ".join(path)}" '
                   f'fill="none" stroke="{color}" stroke-width="{style.get("width", 1.8)}"'
                   f'{dash}/>{dots}</g>')
        ly = top + 8 + 16 * k
        out.append(f'<g class="series" data-legend="{_e(name)}"><line x1="{left + pw + 8}" '
                   f'y1="{ly}" x2="{left + pw + 24}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2.5"{dash}/><text x="{left + pw + 28}" y="{ly + 4}">'
                   f'{_e(name)}</text></g>')
    out.append("</svg>")
    return "".join(out)


# -- the nines plot -------------------------------------------------------------------


def _nines(q: float, total: int) -> float:
    """-log10(1 - q), capped where the last sample sits (1/total)."""
    floor = 1.0 / max(total, 1)
    return -math.log10(max(1.0 - q, floor))


def nines_points(hist: dict) -> list[tuple[float, Optional[float]]]:
    """The step curve of latency (ms) against percentile on the nines axis,
    from the sparse histogram of the JSON report."""
    total = hist.get("total") or 0
    if not total:
        return []
    lo_ns, hi_ns = hist.get("min_ns") or 0, hist.get("max_ns") or 0
    cum, pts = 0, []
    for lower, upper, count in zip(hist["bucket_lower_ns"], hist["bucket_upper_ns"],
                                   hist["counts"]):
        value = lower if upper - lower <= 1 else (lower + upper) / 2.0
        if hi_ns:
            value = min(max(value, lo_ns), hi_ns)
        pts.append((_nines(cum / total, total), value / 1e6))
        cum += count
    pts.append((_nines(1.0, total), (hi_ns or pts[-1][1] * 1e6) / 1e6))
    return pts


def nines_chart(title: str, curves: Sequence[tuple[str, Optional[dict]]]) -> str:
    series: list[tuple[str, Sequence[tuple[float, Optional[float]]], dict]] = [
        (name, nines_points(h), {}) for name, h in curves if h]
    return svg_xy(title, series, "percentile", "latency (ms)", log_y=True, nines=True,
                  step=True)


# -- timelines ------------------------------------------------------------------------


def _rows_at(result: dict, base: float) -> list[tuple[float, dict]]:
    """(x = seconds since `base`, row) of a result's timeline, x at the
    middle of each row's span."""
    start = (result.get("started_at") or base) - base
    return [(start + (row.get("t_start", row["t"] - row["span_s"]) + row["t"]) / 2.0, row)
            for row in result.get("timeline", [])]


def _rate(row: dict, name: str) -> float:
    if name + "_per_s" in row:
        return float(row[name + "_per_s"])
    return row.get(name, 0) / row["span_s"] if row.get("span_s") else 0.0


def timeline_charts(results: Sequence[dict], server: Optional[dict] = None,
                    marks: Sequence[tuple[float, str]] = (), *,
                    received_label: str = "answered/s", sent_label: Optional[str] = "sent/s",
                    rate_unit: str = "requests / s") -> list[str]:
    """Throughput, latency, loss/errors per second (and the server beside the
    client), over one run or the runs of a ramp placed on one time axis."""
    base = min((r.get("started_at") or 0.0) for r in results) if results else 0.0
    rows = [xr for r in results for xr in _rows_at(r, base)]
    span = (0.0, max((x + row["span_s"] / 2 for x, row in rows), default=1.0))
    shade = []
    for r in results:
        warm = float(r.get("config", {}).get("warmup_s") or 0.0)
        s0 = (r.get("started_at") or base) - base
        if warm > 0:
            shade.append((s0, s0 + warm, "warm-up"))
        if len(results) == 1 and r.get("config", {}).get("max_requests") is None:
            # After the measured window: no more sends, the last replies and
            # timeouts come in.
            end = s0 + warm + float(r.get("duration_s") or 0.0)
            if span[1] - end > 0.02:
                shade.append((end, span[1], "drain"))

    def line(name: str, fn: Any, **style: Any) -> tuple[str, list, dict]:
        return name, [(x, fn(row)) for x, row in rows], style

    def ms(key: str) -> Any:
        return lambda row: None if row.get(key) is None else row[key] / 1e6
    charts = [
        svg_xy("Throughput per second",
               [line(received_label, lambda r: r["rps"])]
               + ([line(sent_label, lambda r: _rate(r, "sent"), dash="5,3")] if sent_label else []),
               "seconds", rate_unit, shade=shade, marks=marks, x_range=span),
        svg_xy("Latency per second", [line("p50", ms("p50_ns")), line("p99", ms("p99_ns")),
                                      line("max", ms("max_ns"), dash="4,3", width=1.2)],
               "seconds", "ms", log_y=True, shade=shade, marks=marks, x_range=span),
        svg_xy("Loss and errors per second",
               [line("lost/s", lambda r: _rate(r, "lost")),
                line("error replies/s", lambda r: _rate(r, "error_replies")),
                line("transport errors/s", lambda r: _rate(r, "errors"))],
               "seconds", "per second", shade=shade, marks=marks, x_range=span),
    ]
    rates = (server or {}).get("rates") or []
    if rates:
        def srv(name: str, **style: Any) -> tuple[str, list, dict]:
            return (f"server {name}/s",
                    [(row["at"] - row["span_s"] / 2 - base, row[name]) for row in rates], style)
        charts.append(svg_xy(
            "Server and client, per second",
            [srv("rx"), srv("tx", dash="5,3"),
             line("client sent/s", lambda r: _rate(r, "sent"), width=1.2),
             line("client answered/s", lambda r: r["rps"], dash="2,2", width=1.2)],
            "seconds", "per second", shade=shade, marks=marks, x_range=span))
        charts.append(svg_xy(
            "Server drops beside client loss",
            [srv("kernel drops"), srv("queue drops"), srv("rate limited"),
             line("client lost/s", lambda r: _rate(r, "lost"), dash="5,3")],
            "seconds", "per second", shade=shade, marks=marks, x_range=span))
    return charts


# -- tables ---------------------------------------------------------------------------


def html_table(rows: Sequence[Sequence[Any]], head: Optional[Sequence[str]] = None,
               left: int = 1, cls: str = "") -> str:
    """Rows as an HTML table; the first `left` columns flush left."""
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        out.append("<tr>" + "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>'
                                    for i, h in enumerate(head)) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row))
            + "</tr>")
    return "".join(out) + "</table>"


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            out.append((prefix + str(k), ", ".join(str(x) for x in v) if v else "-"))
        else:
            out.append((prefix + str(k), "-" if v is None else str(v)))
    return out


def kv_table(d: dict) -> str:
    return html_table(_flat(d), cls="kv")


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
    if r.get("mode") != "http":
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
    first = _first_result(report)
    what = run_title(first) if first else "load"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                         time.gmtime(report.get("created_at") or time.time()))
    label = {"run": "single run", "ramp": "ramp", "find-max": "knee finder"}.get(kind, kind)
    return f"beastnet load: {what}", f"{label} · {when} · beastnet {report.get('beastnet_version', '')}"


def _first_result(report: dict) -> Optional[dict]:
    if report.get("kind") == "ramp":
        return report["levels"][0]["result"] if report.get("levels") else None
    if report.get("kind") == "find-max":
        return report["results"][0] if report.get("results") else None
    return report.get("result")


def _results(report: dict) -> list[dict]:
    if report.get("kind") == "ramp":
        return [lv["result"] for lv in report.get("levels", [])]
    if report.get("kind") == "find-max":
        return list(report.get("results", []))
    return [report["result"]] if report.get("result") else []


def _verdict_block(report: dict) -> str:
    """The badge, the one line that says why, then every other reason."""
    from beastnet.loadgen.verdict import summary_line
    v = str(report.get("verdict", "")).lower()
    line = summary_line(report)
    # "verdict: FAIL: <why>": the why alone, beside the badge.
    why = line.split(": ", 2)[2] if v == "fail" and line.count(": ") >= 2 else ""
    reasons = [x for x in (report.get("reasons") or []) if x != why]
    for lv in report.get("levels", []):
        reasons += [f"level {lv['level']}: {x}" for x in lv.get("reasons", [])
                    if f"level {lv['level']}: {x}" != why]
    return (f'<section><h2>Verdict</h2><span class="verdict {_e(v)}">{_e(v.upper())}</span>'
            f'{_e(why)}' + "".join(f'<div class="reason">{_e(x)}</div>' for x in reasons)
            + "</section>")


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
    from beastnet.loadgen.report import charts
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


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><div class='sub'>{_e(subtitle)}</div></header><main>",
        *body, f"</main><script>{SCRIPT}</script></body></html>"])


def report_page(report: dict, text_summary: str = "") -> str:
    """The page of one report (a run, a ramp or a knee finder, or any
    WebSocket report: see `wshtml`)."""
    from beastnet.loadgen.wshtml import is_ws_report, ws_report_page
    if is_ws_report(report):
        return ws_report_page(report, text_summary)
    title, subtitle = _title(report)
    results = _results(report)
    first = _first_result(report)
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


def _server_section(report: dict) -> str:
    server = report.get("server_stats")
    totals = report.get("server_totals")
    if not server and not totals:
        return ""
    parts = ["<section><h2>Server counters</h2>"]
    if server:
        rows = server.get("rows") or []
        parts.append(f"<p>Sampled from <code>{_e(server['url'])}</code>: {len(rows)} reads, "
                     f"{server.get('failures', 0)} failed"
                     + (f" (last: {_e(server['last_error'])})" if server.get("last_error") else "")
                     + ".</p>")
        if len(rows) >= 2:
            first, last = rows[0], rows[-1]
            table = []
            for proto in ("udp", "http"):
                for k, v in (last.get(proto) or {}).items():
                    d = v - (first.get(proto) or {}).get(k, 0)
                    if d:
                        table.append([f"{proto} {k}", f"{d:,}"])
            parts.append(html_table(table, ["counter", "during the run"]))
    if totals:
        parts.append(kv_table(totals))
    return "".join(parts) + "</section>"


# -- A/B ------------------------------------------------------------------------------


def _delta_cell(a: Optional[float], b: Optional[float], lower_is_better: bool,
                spec: str) -> tuple[str, str]:
    """The change B - A in the metric's own format, with its relative size."""
    if a is None or b is None:
        return "-", ""
    d = b - a
    pct = f" ({d / a:+.1%})" if a and d else ""
    cls = "" if d == 0 else ("better" if (d < 0) == lower_is_better else "worse")
    return f"{d:+{spec}}{pct}", cls


# (name, lower is better, format) of each compared metric.
_COUNT, _MS, _PCT = ",.0f", ",.3f", ".3f"


def _metrics(r: dict) -> list[tuple[str, Optional[float], bool, str]]:
    """(name, value, lower is better, format) compared between two runs."""
    lat = r["latency_ns"]
    out: list[tuple[str, Optional[float], bool, str]] = [
        ("answered req/s", r["rps"], False, _COUNT),
        ("success %", 100 * r["success_rate"], False, _PCT),
        ("lost", float(r["lost"]), True, _COUNT), ("errors", float(r["errors"]), True, _COUNT)]
    for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max"):
        out.append((f"{k} ms", None if lat.get(k) is None else lat[k] / 1e6, True, _MS))
    if r.get("cpu_per_request_us") is not None:
        out.append(("generator µs/request", r["cpu_per_request_us"], True, _MS))
    return out


def compare_rows(a: dict, b: dict) -> list[tuple[str, str, str, str, str]]:
    """(metric, A, B, delta, css class) of two results."""
    rows = []
    for (name, va, low, spec), (_, vb, _, _) in zip(_metrics(a), _metrics(b)):
        delta, cls = _delta_cell(va, vb, low, spec)
        rows.append((name, "-" if va is None else f"{va:{spec}}",
                     "-" if vb is None else f"{vb:{spec}}", delta, cls))
    return rows


def compare_pairs(a: dict, b: dict) -> list[tuple[str, dict, dict]]:
    """(label, result of A, result of B) to compare: ramps level by level
    (the levels both ran), otherwise the first result of each."""
    if a.get("kind") == "ramp" and b.get("kind") == "ramp":
        lb = {lv["level"]: lv["result"] for lv in b["levels"]}
        return [(f"level {lv['level']}", lv["result"], lb[lv["level"]])
                for lv in a["levels"] if lv["level"] in lb]
    ra, rb = _results(a), _results(b)
    return [("", ra[0], rb[0])] if ra and rb else []


def compare_page(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two reports side by side with deltas (B - A): the A/B comparison made
    after a change.  Ramps are compared level by level."""
    title = f"beastnet load A/B: {names[0]} vs {names[1]}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time()))
    ra, rb = _results(a), _results(b)
    body = ['<section><h2>Runs</h2>' + html_table(
        [[n, _title(r)[0].replace("beastnet load: ", ""), _title(r)[1],
          str(r.get("verdict", "")).upper()] for n, r in zip(names, (a, b))],
        ["", "target", "when", "verdict"], left=4) + "</section>"]
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
