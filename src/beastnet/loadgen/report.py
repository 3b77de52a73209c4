"""Load-generator output: the live progress line, the final table, the JSON
report (orjson) and a self-contained HTML page with SVG charts (no extra
dependency; it opens in any browser)."""
from __future__ import annotations

import html
import math
import sys
import time
from typing import Iterable, Optional, Sequence, TextIO

import orjson

from beastnet.loadgen.targets import describe

__all__ = [
    "ProgressLine",
    "build_report",
    "format_knee",
    "format_report",
    "format_ramp",
    "format_result",
    "format_run",
    "format_table",
    "level_line",
    "probe_line",
    "read_report",
    "hdr_log",
    "text_table",
    "write_hdr",
    "write_json",
]

PERCENTILE_COLUMNS = ("p50", "p90", "p99", "p99.9", "max")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _ms(ns: Optional[float]) -> str:
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    ms = ns / 1e6
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _count(n: float) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


class ProgressLine:
    """One self-overwriting status line on a terminal; silent when `stream`
    is not a TTY (logs and pipes get only the final table)."""

    def __init__(self, stream: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 prefix: str = "") -> None:
        # sys.stderr at call time, not at import: tests and callers swap it.
        self.stream = stream = sys.stderr if stream is None else stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.prefix = prefix
        self._width = 0

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        phase = "warm-up " if row.get("warmup") else ""
        text = (f"{self.prefix}{phase}t={row['t']:.0f}s  {_count(row['rps'])} req/s  "
                f"sent {_count(row['sent'])}  lost {_count(row['lost'])}  "
                f"p50 {_ms(row.get('p50_ns'))} ms  p99 {_ms(row.get('p99_ns'))} ms")
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.3%}" if whole else "-"


def text_table(rows: Sequence[Sequence[str]], head: Optional[Sequence[str]] = None,
               align: str = "l", indent: str = "  ") -> str:
    """Rows of strings as aligned columns, column i flush left when
    ``align[i]`` is "l", else right (columns past `align` follow its last
    letter but the final column, which is flush left when "l" ends it); a
    rule under `head`."""
    allrows = ([list(head)] if head else []) + [list(r) for r in rows]
    if not allrows:
        return ""
    ncol = max(len(r) for r in allrows)
    allrows = [r + [""] * (ncol - len(r)) for r in allrows]
    widths = [max(len(r[i]) for r in allrows) for i in range(ncol)]
    lefts = [(align[i] if i < len(align) - 1 else "r") == "l" for i in range(ncol)]
    lefts[0] = align[0] == "l"
    if len(align) > 1:
        lefts[-1] = align[-1] == "l"

    def line(r: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if lefts[i] else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    out = [line(r) for r in allrows]
    if head:
        out.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_title(d: dict) -> str:
    """"UDP closed-loop load, 127.0.0.1:9000" from a result dict."""
    return describe(d)


def outcome_rows(d: dict) -> list[list[str]]:
    """What happened to the requests, with shares of the attempted ones."""
    attempted = d["sent"] + d["unsent"]
    rows = [["sent", f"{d['sent']:,}", _pct(d["sent"], attempted), ""],
            ["answered", f"{d['received']:,}", _pct(d["received"], attempted), ""],
            ["  ok", f"{d['ok']:,}", _pct(d["ok"], attempted), ""]]
    if d["error_replies"]:
        detail = d.get("error_bodies") or {
            f"status {k}": v for k, v in d.get("status_codes", {}).items() if int(k) >= 400}
        rows.append(["  errors", f"{d['error_replies']:,}", _pct(d["error_replies"], attempted),
                     ", ".join(f"{k} {v:,}" for k, v in detail.items())])
    for name, key in (("lost", "lost"), ("failed", "failed"), ("never sent", "unsent")):
        if d.get(key) or key == "lost":
            rows.append([name, f"{d[key]:,}", _pct(d[key], attempted), ""])
    for name, key in (("late replies", "late"), ("unmatched", "unmatched"),
                      ("bad replies", "bad_replies")):
        if d.get(key):
            rows.append([name, f"{d[key]:,}", "", ""])
    if d["errors"]:
        rows.append(["transport errors", f"{d['errors']:,}", "",
                     ", ".join(f"{k} {v:,}" for k, v in d["errors_by_kind"].items())])
    if d.get("status_codes"):
        rows.append(["statuses", "", "",
                     ", ".join(f"{k}: {v:,}" for k, v in sorted(d["status_codes"].items()))])
    return rows


def latency_rows(d: dict) -> list[list[str]]:
    """Latency percentiles in ms: the total, then (HTTP) connect and time to
    first byte where they were measured."""
    lat = d["latency_ns"]
    names = list(lat)
    rows = [["total"] + [_ms(lat[k]) for k in names]]
    for label, part in setup_parts(d.get("extra", {})):
        rows.append([label] + [_ms(None if part.get(k) is None else part[k] * 1e6)
                               for k in names])
    return [["ms"] + names] + rows


def setup_parts(extra: dict) -> list[tuple[str, dict]]:
    """(label, summary in ms) of the HTTP set-up figures that were measured:
    TCP connect, TLS handshake (https://), time to first byte."""
    parts = [("connect", extra.get("connect_ms")),
             ("TLS handshake", (extra.get("tls") or {}).get("handshake_ms")),
             ("first byte", extra.get("ttfb_ms"))]
    return [(label, part) for label, part in parts if part and part.get("count")]


def tls_line(extra: dict) -> Optional[str]:
    """One line of what TLS negotiated and how often (None over plain TCP)."""
    tls = extra.get("tls")
    if not tls:
        return None
    line = f"  TLS {tls.get('version') or '-'} {tls.get('cipher') or '-'}   "
    if tls["handshakes"] == 0 and tls.get("version"):
        # Kept-alive connections all shook hands in the warm-up: "0/s" alone
        # reads as if TLS never happened.
        line += "no handshake in the measured window (connections set up in the warm-up)"
    else:
        line += (f"{tls['handshakes']:,} handshakes ({tls['handshakes_per_s']:,.0f}/s), "
                 f"{tls['resumed']:,} resumed")
    if tls.get("first_failure"):
        line += f"   first failure: {tls['first_failure']}"
    return line


def format_result(d: dict, extra_percentiles: Sequence[float] = ()) -> str:
    """A single run's summary (from `LoadResult.to_dict()`): aligned tables,
    no Python reprs."""
    lines = [f"{run_title(d)}: {d['duration_s']:.2f} s measured"
             + ("  (interrupted)" if d["interrupted"] else ""), ""]
    lines.append(text_table(outcome_rows(d), ["requests", "count", "share", "detail"], "lrrl"))
    rate = [f"  rate {d['rps']:,.0f} req/s answered"]
    if d.get("cpu_per_request_us") is not None:
        rate.append(f"generator CPU {d['cpu_s']:.3f} s ({d['cpu_per_request_us']:.2f} µs/request)")
    extra = d.get("extra", {})
    if extra.get("reuse_rate") is not None:
        rate.append(f"connection reuse {extra['reuse_rate']:.1%}, "
                    f"{extra.get('reconnects', 0):,} reconnects")
    lines += ["", "   ".join(rate)]
    tls = tls_line(extra)
    if tls:
        lines.append(tls)
    lines.append("")
    lat = latency_rows(d)
    lines.append(text_table(lat[1:], lat[0]))
    more = d.get("extra_percentiles") or {}
    if more:
        lines.append(text_table([[f"p{q}", _ms(v)] for q, v in more.items()]))
    agents = agent_rows(d)
    if agents:
        lines += ["", text_table(agents[1:], agents[0], "l" + "r" * 9 + "l"), agents_line(d)]
    return "\n".join(lines)


def agent_rows(d: dict) -> list[list[str]]:
    """A load-agents run's rows, one per agent and the total (merged
    histogram), under a head; [] for a run of one process."""
    agents = d.get("extra", {}).get("agents") or []
    if not agents:
        return []
    head = ["agent", "sent", "answered", "lost", "errors", "req/s", "p50 ms", "p99 ms",
            "max ms", "start ms", "state"]
    rows = [head]
    for a in agents:
        lat = a.get("latency_ns") or {}
        start = a.get("start_offset_ms")
        rows.append([str(a["name"]), f"{a['sent']:,}", f"{a['received']:,}", f"{a['lost']:,}",
                     f"{a['errors']:,}", f"{a['rps']:,.0f}", _ms(lat.get("p50")),
                     _ms(lat.get("p99")), _ms(lat.get("max")),
                     "-" if start is None else f"{start:+.1f}",
                     a["state"] + (f": {a['message']}" if a.get("message") else "")])
    lat = d.get("latency_ns") or {}
    rows.append(["total", f"{d['sent']:,}", f"{d['received']:,}", f"{d['lost']:,}",
                 f"{d['errors']:,}", f"{d['rps']:,.0f}", _ms(lat.get("p50")),
                 _ms(lat.get("p99")), _ms(lat.get("max")), "", "merged"])
    return rows


def agents_line(d: dict) -> str:
    """The start skew of a load-agents run, and what its clocks can tell."""
    extra = d.get("extra", {})
    skew = extra.get("start_skew_ms")
    offsets = [abs(a["clock_offset_ms"]) for a in extra.get("agents", [])]
    rtts = [a["clock_rtt_ms"] for a in extra.get("agents", [])]
    if skew is None:
        return "  start skew: unknown (no agent reported its start)"
    return (f"  start skew {skew:.1f} ms across {len(offsets)} agents (clock offsets up to "
            f"{max(offsets):.2f} ms, known within {max(rtts) / 2:.2f} ms)\n"
            "  latency is timed on each agent's own clock")


def format_table(levels: Iterable[dict]) -> str:
    """The final table of a ramp (from `RampReport.to_dict()["levels"]`)."""
    head = ["lvl", "requests", "conc", "sent", "ok", "lost", "err", "success", "req/s"]
    head += [f"{p} ms" for p in PERCENTILE_COLUMNS] + ["verdict"]
    rows = [head]
    for lv in levels:
        r = lv["result"]
        lat = r["latency_ns"]
        rows.append([str(lv["level"]), _count(lv["requests"]), _count(lv["concurrency"]),
                     str(r["sent"]), str(r["ok"]), str(r["lost"]), str(r["errors"]),
                     f"{r['success_rate']:.2%}", f"{r['rps']:.0f}"]
                    + [_ms(lat.get(p)) for p in PERCENTILE_COLUMNS] + [lv["verdict"].upper()])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    for lv in levels:
        for reason in lv["reasons"]:
            out.append(f"  level {lv['level']}: {lv['verdict']}: {reason}")
    return "\n".join(out)


def _fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_run(body: dict) -> str:
    """A single run's summary and verdict (from `ramp.judge_run`): the last
    line says why a run failed."""
    from beastnet.loadgen.verdict import summary_line
    return (format_result(body["result"])
            + "".join(f"\n  also: {reason}" for reason in body["reasons"][1:])
            + "\n" + summary_line(body))


def format_ramp(body: dict) -> str:
    """A ramp's table, its best level against the first, the breaking point
    and the verdict (from `RampReport.to_dict()`)."""
    text = format_table(body["levels"])
    for lv in body["levels"]:
        agents = lv["result"].get("extra", {}).get("agents") or []
        if agents:
            skew = lv["result"]["extra"].get("start_skew_ms")
            text += (f"\n  level {lv['level']} agents: " + ", ".join(
                f"{a['name']} {a['sent']:,} sent" + ("" if a["state"] == "done"
                                                     else f" ({a['state']})")
                for a in agents) + ("" if skew is None else f"; start skew {skew:.1f} ms"))
    deg = body["degradation"]
    if deg:
        text += (f"\nbest level {deg['best_level']}: {deg['rps_best']:.0f} req/s "
                 f"(level {deg['first_level']}: {deg['rps_first']:.0f} req/s); p99 "
                 f"{_fmt_ms(deg['p99_ms_first'])} -> {_fmt_ms(deg['p99_ms_best'])} ms")
    text += (f"\nbreaking point: level {body['breaking_point']}" if body["breaking_point"]
             else "\nbreaking point: none reached")
    from beastnet.loadgen.verdict import summary_line
    return text + "\n" + summary_line(body) + (
        "  (interrupted)" if body["interrupted"] else "")


def format_knee(body: dict) -> str:
    """The knee finder's probes and its answer (from `KneeReport.to_dict()`)."""
    lines = ["   target/s  answered/s     p50 ms     p99 ms    loss  result"]
    for p in body["probes"]:
        lines.append(f"{p['rate']:11.0f} {p['rps']:11.0f} {_fmt_ms(p['p50_ms']):>10} "
                     f"{_fmt_ms(p['p99_ms']):>10} {p['loss']:7.3%}  "
                     f"{'ok' if p['ok'] else '; '.join(p['breaches'])}")
    knee = body["knee_rps"]
    lines.append(f"highest sustainable rate: {knee:.0f} req/s" if knee
                 else "highest sustainable rate: none (the SLO broke at every rate tried)")
    lines.append(f"verdict: {body['verdict'].upper()}")
    return "\n".join(lines)


def level_line(number: int, rps: float, p50_ns: float, p99_ns: float, verdict: str) -> str:
    """One finished ramp level, for a terminal."""
    return (f"level {number:2d}: {rps:10.0f} req/s  p50 {p50_ns / 1e6:8.3f} ms  "
            f"p99 {p99_ns / 1e6:8.3f} ms  {verdict.upper()}")


def probe_line(p: dict) -> str:
    """One knee-finder probe, for a terminal."""
    return (f"rate {p['rate']:10.0f}/s: answered {p['rps']:10.0f}/s  p99 "
            f"{_fmt_ms(p['p99_ms'])} ms  "
            f"{'ok' if p['ok'] else 'BREACH ' + '; '.join(p['breaches'])}")

def build_report(body: dict, config: dict, machine: dict, argv: Optional[list] = None) -> dict:
    """The JSON report: what ran (kind, verdict, levels/result), the
    configuration, the machine, when, and the command line."""
    from beastnet import __version__
    return {"beastnet_version": __version__, "created_at": time.time(), "argv": argv,
            "machine": machine, "config": config, **body}


def _histogram_entries(report: dict) -> list[tuple[str, dict]]:
    """(tag, result dict) of each measured histogram in a report."""
    kind = report.get("kind")
    if kind == "ramp":
        return [(f"level-{lv['level']}", lv["result"]) for lv in report["levels"]]
    if kind == "find-max":
        return [(f"rate-{p['rate']:.0f}", r) for p, r in zip(report["probes"], report["results"])]
    return [("", report["result"])]


def hdr_log(report: dict) -> str:
    """The report's latency histograms as an HdrHistogram interval log
    (format 1.3, values in ns, max in ms): one line per run, ramp level or
    probe, tagged level-N / rate-R.  HdrHistogram's HistogramLogProcessor and
    the `hdrhistogram` package read it."""
    entries = [(tag, r) for tag, r in _histogram_entries(report)
               if r.get("histogram", {}).get("hdr")]
    starts = [r.get("started_at") or 0.0 for _, r in entries]
    base = min(starts) if starts else 0.0
    lines = ["#[Histogram log format version 1.3]",
             f"#[StartTime: {base:.3f} (seconds since epoch), "
             f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(base))}]",
             "#[beastnet load: latency in ns from the intended send time]",
             '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"']
    for (tag, r), start in zip(entries, starts):
        warmup = float(r.get("config", {}).get("warmup_s") or 0.0)
        max_ms = (r["histogram"].get("max_ns") or 0) / 1e6
        lines.append(("Tag=" + tag + "," if tag else "")
                     + f"{start - base + warmup:.3f},{r['duration_s']:.3f},{max_ms:.3f},"
                     + r["histogram"]["hdr"])
    return "\n".join(lines) + "\n"


def write_hdr(path: str, report: dict) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(hdr_log(report))


def write_json(path: str, report: dict) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


# -- SVG charts -------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** e for e in range(a, b + 1)]
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def svg_chart(title: str, xlabels: Sequence[str], series: Sequence[tuple[str, Sequence[Optional[float]]]],
              y_label: str, log_y: bool = False, bars: bool = False,
              width: int = 590, height: int = 290) -> str:
    """A small line (or bar) chart as inline SVG; None values leave gaps."""
    left, right, top, bottom = 70, 130, 30, 45
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None and (v > 0 or not log_y)]
    n = len(xlabels)
    # The viewBox lets a page scale the chart to its column (htmlkit CSS).
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" '
           f'font-weight="bold">{html.escape(title)}</text>']
    if not values or n == 0:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    lo, hi = min(values), max(values)
    if log_y:
        lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        if lo == hi:
            hi = lo * 10
    else:
        lo = 0.0
        hi = hi * 1.1 if hi > 0 else 1.0
    ticks = _nice_ticks(lo, hi, log_y)
    hi = max(hi, ticks[-1]) if not log_y else hi

    def ypos(v: float) -> float:
        if log_y:
            f = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            f = (v - lo) / (hi - lo)
        return top + ph * (1 - f)

    def xpos(i: int) -> float:
        return left + pw * (i + 0.5) / n

    for t in ticks:
        if lo <= t <= hi:
            y = ypos(t)
            label = f"{t:g}" if log_y or t < 1e4 else _count(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>'
                       f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    step = max(1, n // 16)
    for i, lab in enumerate(xlabels):
        if i % step == 0:
            out.append(f'<text x="{xpos(i):.1f}" y="{top + ph + 16}" text-anchor="middle">'
                       f'{html.escape(lab)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               f'text-anchor="middle">{html.escape(y_label)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    nser = len(series)
    # "max" is drawn first, thin and dashed, so it cannot hide p99.9 when
    # the two meet.
    order = sorted(range(nser), key=lambda k: series[k][0] != "max")
    for k in order:
        name, vs = series[k]
        color = COLORS[k % len(COLORS)]
        thin = not bars and name == "max"
        if bars:
            bw = pw / n / (nser + 1)
            for i, v in enumerate(vs):
                if v is None or (log_y and v <= 0):
                    continue
                x = xpos(i) - bw * nser / 2 + k * bw
                y = ypos(v)
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                           f'height="{top + ph - y:.1f}" fill="{color}"><title>{name} {v:.6g}'
                           f'</title></rect>')
        else:
            path, pen = [], "M"
            for i, v in enumerate(vs):
                if v is None or (log_y and v <= 0):
                    pen = "M"
                    continue
                path.append(f"{pen}{xpos(i):.1f},{ypos(v):.1f}")
                pen = "L"
                out.append(f'<circle cx="{xpos(i):.1f}" cy="{ypos(v):.1f}" r="2.5" fill="{color}">'
                           f'<title>{name} {v:.6g}</title></circle>')
            style = 'stroke-width="1.2" stroke-dasharray="5,3"' if thin else 'stroke-width="1.8"'
            out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" {style}/>')
        ly = top + 14 + 16 * k
        out.append(f'<rect x="{left + pw + 10}" y="{ly - 9}" width="12" height="10" fill="{color}"/>'
                   f'<text x="{left + pw + 27}" y="{ly}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _latency_series(results: Sequence[dict]) -> list[tuple[str, list[Optional[float]]]]:
    return [(name, [None if r["latency_ns"].get(name) is None else r["latency_ns"][name] / 1e6
                    for r in results]) for name in PERCENTILE_COLUMNS]


def charts(report: dict) -> list[str]:
    """The SVG charts that fit the report's kind."""
    kind = report.get("kind")
    if kind == "ramp":
        levels = report["levels"]
        xl = [str(lv["level"]) for lv in levels]
        results = [lv["result"] for lv in levels]
        return [svg_chart("Throughput per level", xl, [("answered req/s", [r["rps"] for r in results])],
                          "requests / s", bars=True),
                svg_chart("Latency percentiles per level", xl, _latency_series(results), "ms",
                          log_y=True)]
    if kind == "find-max":
        probes = report["probes"]
        xl = [_count(p["rate"]) for p in probes]
        return [svg_chart("Knee finder: target vs answered rate", xl,
                          [("target", [p["rate"] for p in probes]),
                           ("answered", [p["rps"] for p in probes])], "requests / s", bars=True),
                svg_chart("Knee finder: latency", xl, [("p50", [p["p50_ms"] for p in probes]),
                                                       ("p99", [p["p99_ms"] for p in probes])],
                          "ms", log_y=True)]
    result = report["result"]
    rows = result["timeline"]
    xl = [f"{row['t']:.0f}" for row in rows]
    return [svg_chart("Throughput per second", xl, [("answered", [row["rps"] for row in rows]),
                                                     ("lost", [row["lost"] / row["span_s"]
                                                               for row in rows])],
                      "requests / s"),
            svg_chart("Latency per second", xl,
                      [("p50", [None if row["p50_ns"] is None else row["p50_ns"] / 1e6 for row in rows]),
                       ("p99", [None if row["p99_ns"] is None else row["p99_ns"] / 1e6 for row in rows])],
                      "ms", log_y=True)]


KINDS = {"run": "result", "ramp": "levels", "find-max": "probes",
         # `beastnet ws density / stress / knee --json`
         "ws-density": "tiers", "ws-stress": "levels", "ws-knee": "steps",
         # `beastnet plan`
         "plan": "tests"}


def read_report(path: str) -> dict:
    """A JSON report written by `beastnet load --json`; ValueError (one
    line naming the file) if it cannot be read or is not such a report."""
    try:
        with open(path, "rb") as f:
            report = orjson.loads(f.read())
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(report, dict) or KINDS.get(report.get("kind", "")) not in report:
        raise ValueError(f"{path}: not a report of `beastnet load --json`")
    return report


def format_report(report: dict) -> str:
    """The terminal summary of a saved report, as `beastnet load` printed it."""
    kind = report["kind"]
    if kind == "ramp":
        return format_ramp(report)
    if kind == "find-max":
        return format_knee(report)
    return format_run(report)


def first_result(report: dict) -> Optional[dict]:
    if report.get("kind") == "ramp":
        return report["levels"][0]["result"] if report.get("levels") else None
    if report.get("kind") == "find-max":
        return report["results"][0] if report.get("results") else None
    return report.get("result")


def report_results(report: dict) -> list[dict]:
    if report.get("kind") == "ramp":
        return [lv["result"] for lv in report.get("levels", [])]
    if report.get("kind") == "find-max":
        return list(report.get("results", []))
    return [report["result"]] if report.get("result") else []
