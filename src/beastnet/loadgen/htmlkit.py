"""The parts every HTML report page is built from: the page frame (CSS, the
legend script), escaping, tables, numeric-axis and nines-axis SVG charts,
per-second timelines, the verdict block and the server-counter section.

The report pages (`htmlreport` for runs, ramps, knee finders and A/B pages,
`ws.htmlpage` for WebSocket reports) import this module; it imports neither,
so the page modules form no circle.
"""
from __future__ import annotations

import html
import math
from typing import Any, Optional, Sequence

from beastnet.loadgen.report import _count


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
/* Charts share the page width: columns of at least 560 px, each SVG scaled to its
column through its viewBox. */
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));
gap:8px}
.charts svg{background:#fff;width:100%;height:auto}
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


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><div class='sub'>{_e(subtitle)}</div></header><main>",
        *body, f"</main><script>{SCRIPT}</script></body></html>"])


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
