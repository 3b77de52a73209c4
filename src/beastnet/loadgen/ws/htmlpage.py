"""The HTML page of a WebSocket report: a run (`beastnet load ws://`), the
density tiers, the stress ladder or the broadcast knee.  Same page as the
other modes (`htmlreport`): verdict, the nines plot of the timestamp latency
per run, the per-second timelines of every run on one time axis, then the
WebSocket specifics: handshake, stall and reconnect times, the stress
ladder's probe dimensions (their own nines plots), the degradation analysis,
the density tiers' RSS/CPU, and the clock rule the latency follows.
"""
from __future__ import annotations

from typing import Optional, Sequence

from beastnet.loadgen.htmlkit import (_e, _page, _server_section, _verdict_block, html_table,
                                     kv_table, nines_chart, svg_xy, timeline_charts)
from beastnet.loadgen.report import _ms, latency_rows, run_title, svg_chart

__all__ = ["is_ws_report", "ws_report_page"]

_KINDS = ("ws-density", "ws-stress", "ws-knee")
# The summaries of `extra` drawn in the breakdown, in order.
_PARTS = (("connect", "connect_ms"), ("upgrade", "upgrade_ms"), ("stall", "stall_ms"),
          ("reconnect", "reconnect_ms"), ("backoff", "backoff_ms"), ("probe", "probe_ms"),
          ("refusal", "refusal_ms"))
_DIM_TITLES = {"round_trip": "Message round trip", "subscribe": "Subscribe/unsubscribe ack",
               "permission": "Refusal (permission check)",
               "compression": "Delivery with permessage-deflate"}


def is_ws_report(report: dict) -> bool:
    """A report of a WebSocket run or test."""
    if report.get("kind") in _KINDS:
        return True
    return report.get("kind") == "run" and (report.get("result") or {}).get("mode") == "ws"


def _entries(report: dict) -> list[tuple[str, dict]]:
    """(label, result) of every run the report holds, in order."""
    kind = report.get("kind")
    if kind == "ws-density":
        return [(f"{t['symbols_per_connection']} symbols", t["result"])
                for t in report.get("tiers", []) if t.get("result")]
    if kind == "ws-stress":
        return [(f"level {lv['level']}", lv["result"]) for lv in report.get("levels", [])
                if lv.get("result")]
    if kind == "ws-knee":
        return [(f"{st['subscribers']} subscribers", st["result"])
                for st in report.get("steps", []) if st.get("result")]
    return [("latency", report["result"])] if report.get("result") else []


def _title(report: dict, entries: Sequence[tuple[str, dict]]) -> tuple[str, str]:
    import time
    what = run_title(entries[0][1]) if entries else "WebSocket load"
    label = {"run": "single run", "ws-density": "subscription density",
             "ws-stress": "stress ladder", "ws-knee": "broadcast knee"}.get(
        str(report.get("kind")), str(report.get("kind")))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                         time.gmtime(report.get("created_at") or time.time()))
    return (f"beastnet load: {what}",
            f"{label} · {when} · beastnet {report.get('beastnet_version', '')}")


def _verdict(report: dict) -> str:
    """The verdict block, with the tiers' and steps' reasons too."""
    reasons = list(report.get("reasons") or [])
    for t in report.get("tiers", []):
        reasons += [f"{t['symbols_per_connection']} symbols: {x}" for x in t.get("reasons", [])]
    for st in report.get("steps", []):
        reasons += [f"{st['subscribers']} subscribers: {x}" for x in st.get("reasons", [])]
    return _verdict_block(dict(report, reasons=reasons))


def _tiles(r: dict) -> str:
    e, lat = r["extra"], r["latency_ns"]
    items = [("messages/s", f"{e['messages_per_s']:,.0f}"),
             ("payload MB/s", f"{e['bytes_per_s'] / 1e6:,.3f}"),
             ("p50 ms", _ms(lat.get("p50"))), ("p99 ms", _ms(lat.get("p99"))),
             ("max ms", _ms(lat.get("max"))),
             ("connections", f"{e['upgrades'] - e['reconnects']:,} / {e['connections']:,}"),
             ("reconnects", f"{e['reconnects']:,}"), ("missing", f"{r['lost']:,}"),
             ("longest stall ms", "-" if e["longest_stall_ms"] is None
              else f"{e['longest_stall_ms']:.1f}"),
             ("errors", f"{r['errors']:,}"), ("measured s", f"{r['duration_s']:.2f}")]
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
        for k, v in items) + "</div>"


def _breakdown(entries: Sequence[tuple[str, dict]]) -> str:
    """Handshake, stall, reconnect, probe and refusal times: a table per run
    and a chart of their p50/p99."""
    names = ("p50", "p90", "p99", "max")
    rows, bars = [], []
    for label, r in entries:
        e = r["extra"]
        for part, key in _PARTS:
            s = e.get(key) or {}
            if s.get("count"):
                rows.append([label, part, f"{s['count']:,}"] + [_fmt(s.get(k)) for k in names])
                if len(entries) == 1:
                    bars.append((part, [s.get(k) for k in names]))
    if not rows:
        return ""
    chart = (svg_chart("Handshake, stalls and reconnects", list(names), bars, "ms", log_y=True,
                       bars=True) if bars else "")
    return ("<section><h2>WebSocket breakdown</h2>"
            + html_table(rows, ["run", "time", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                         left=2)
            + f'<div class="charts">{chart}</div></section>')


def _counts(entries: Sequence[tuple[str, dict]]) -> str:
    keys = ("subscribe_sent", "gaps", "gap_events", "seq_backwards", "no_timestamp",
            "clock_skew", "fragments", "close_frames", "pings_received", "pongs_received",
            "probes_sent", "probe_answers", "probe_refused", "probe_timeouts",
            "upgrades_refused", "upgrade_forbidden", "compressed_messages", "deflated_bytes",
            "inflated_bytes")
    rows = [[label] + [f"{r['extra'].get(k, 0):,}" for k in keys] for label, r in entries]
    shown = [i for i, k in enumerate(keys) if any(row[i + 1] != "0" for row in rows)]
    if not shown:
        return ""
    return ("<section><h2>Messages and events</h2>"
            + html_table([[row[0]] + [row[i + 1] for i in shown] for row in rows],
                         ["run"] + [keys[i].replace("_", " ") for i in shown])
            + "</section>")


def _levels_table(report: dict) -> str:
    kind = report.get("kind")
    if kind == "ws-density":
        head = ["symbols", "distinct", "conns", "msgs/s", "p50 ms", "p99 ms", "stall ms",
                "reconnects", "errors", "rate cv", "verdict"]
        rows = []
        for t in report.get("tiers", []):
            r = t["result"]
            lat = r["latency_ns"]
            rows.append([t["symbols_per_connection"], t["distinct_symbols"], t["connections"],
                         f"{t['messages_per_s']:,.0f}", _ms(lat.get("p50")), _ms(lat.get("p99")),
                         _fmt(r["extra"].get("longest_stall_ms")),
                         r["extra"]["reconnects"], r["errors"],
                         "-" if t.get("rate_cv") is None else f"{t['rate_cv']:.2f}",
                         t["verdict"].upper()])
        return html_table(rows, head)
    if kind == "ws-knee":
        head = ["subscribers", "msgs/s", "p50 ms", "p95 ms", "p99 ms", "verdict"]
        rows = [[st["subscribers"], f"{st.get('messages_per_s', 0):,.0f}",
                 *(_fmt(st.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")),
                 st["verdict"].upper() + (f": {st['reasons'][0]}" if st["reasons"] else "")]
                for st in report.get("steps", [])]
        return html_table(rows, head) + (f"<p>Knee: <b>{_e(report.get('knee'))}</b> subscribers "
                                         f"(p95 limit {_e(report.get('p95_limit_ms'))} ms).</p>")
    head = ["level", "conns", "connected", "upg p95", "p95 ms", "p99 ms", "msgs/s", "rt p95",
            "rt/s", "sub/s", "sub p95", "refused", "ref p95", "granted", "saved", "us/KiB",
            "server deflate us/msg", "verdict"]
    rows = []
    for lv in report.get("levels", []):
        m = lv["metrics"]
        if lv["verdict"] == "skipped":
            rows.append([lv["level"], lv["connections"]] + ["-"] * 15
                        + [f"SKIPPED: {lv['reasons'][0]}"])
            continue
        rows.append([lv["level"], lv["connections"], f"{m['connected'] or 0:.2%}",
                     *(_fmt(m.get(k)) for k in ("upgrade_p95_ms", "delivery_p95_ms",
                                                 "delivery_p99_ms")),
                     f"{m['messages_per_s']:,.0f}", _fmt(m.get("round_trip_p95_ms")),
                     _num(m.get("round_trips_per_s")), _num(m.get("subscribe_ops_per_s")),
                     _fmt(m.get("subscribe_p95_ms")), _num(m.get("refusals")),
                     _fmt(m.get("refusal_p95_ms")), _num(m.get("wrongly_granted")),
                     "-" if m.get("compression_saved") is None
                     else f"{m['compression_saved']:.0%}",
                     _fmt(m.get("inflate_us_per_kib")),
                     _fmt(None if m.get("server_deflate_ns_per_message") is None
                          else m["server_deflate_ns_per_message"] / 1e3),
                     lv["verdict"].upper()])
    return html_table(rows, head)


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _stress_sections(report: dict) -> list[str]:
    """The probe dimensions' nines plots, their verdicts, the degradation."""
    levels = [lv for lv in report.get("levels", []) if lv.get("dimensions")]
    charts = []
    for name, title in _DIM_TITLES.items():
        curves = [(f"level {lv['level']}", lv["dimensions"][name].get("histogram"))
                  for lv in levels if name in lv["dimensions"]]
        if any(h and h.get("total") for _, h in curves):
            charts.append(nines_chart(f"{title} by percentile, per level", curves))
    rows = [[lv["level"], name, d["verdict"].upper(), "; ".join(d["reasons"]) or "-"]
            for lv in levels for name, d in lv["dimensions"].items()]
    deg = report.get("degradation") or {}
    deg_rows = [[k, "-" if v is None else f"{v:.1%}"]
                for k, v in (deg.get("by_dimension") or {}).items()]
    missing = report.get("not_measured") or []
    return [
        '<section><h2>Probe dimensions</h2><div class="charts">' + "".join(charts) + "</div>"
        + (html_table(rows, ["level", "dimension", "verdict", "why"], left=2) if rows else "")
        + "</section>",
        "<section><h2>Degradation</h2>" + html_table(deg_rows, ["dimension", "1 - best/worst"])
        + f"<p>Most degraded: <b>{_e(deg.get('most_degraded') or '-')}</b></p>"
        + "<p>Not measured: " + (_e(", ".join(missing)) if missing else "nothing") + "</p>"
        + "</section>"]


def _resources_chart(report: dict) -> str:
    """RSS and CPU of the generator and the server, tier after tier."""
    series: dict[str, list[tuple[float, Optional[float]]]] = {}
    offset = 0.0
    for t in report.get("tiers", []):
        rows = t.get("resources") or []
        for row in rows:
            for key in ("generator_rss_mib", "server_rss_mib", "generator_cpu", "server_cpu"):
                if key in row:
                    series.setdefault(key, []).append((offset + row["t"], row[key]))
        offset += max((row["t"] for row in rows), default=0.0) + 1.0
    if not series:
        return ""
    Series = list[tuple[str, Sequence[tuple[float, Optional[float]]], dict]]
    rss: Series = [(k.replace("_", " "), v, {}) for k, v in series.items() if k.endswith("rss_mib")]
    cpu: Series = [(k.replace("_", " "), v, {}) for k, v in series.items() if k.endswith("_cpu")]
    return (svg_xy("Resident memory, tier after tier", rss, "seconds", "MiB")
            + svg_xy("CPU (cores), tier after tier", cpu, "seconds", "cores"))


def ws_report_page(report: dict, text_summary: str = "") -> str:
    """The page of a WebSocket report."""
    entries = _entries(report)
    results = [r for _, r in entries]
    title, subtitle = _title(report, entries)
    body = [_verdict(report)]
    kind = report.get("kind")
    if kind == "run" and results:
        body.append(f"<section><h2>Summary</h2>{_tiles(results[0])}</section>")
    else:
        # The ladder's table is wide: it scrolls rather than spill.
        body.append(f"<section><h2>{_e(title.split(': ', 1)[-1])}</h2>"
                    f"<div style='overflow-x:auto'>{_levels_table(report)}</div></section>")
    marks = []
    if len(results) > 1:
        base = min(r.get("started_at") or 0.0 for r in results)
        marks = [((r.get("started_at") or base) - base, label.split()[-1] if kind == "ws-stress"
                  else label.split()[0]) for label, r in entries]
    nines = nines_chart("Delivery latency (message timestamp) by percentile",
                        [(label, r.get("histogram")) for label, r in entries])
    # No "sent" line: the server pushes, the client sends only subscribes.
    timeline = (timeline_charts(results, None, marks, received_label="received/s",
                                sent_label=None, rate_unit="messages / s")
                if results else [])
    body.append('<section><h2>Latency and timeline</h2><div class="charts">' + nines
                + "".join(timeline) + _resources_chart(report) + "</div></section>")
    if kind == "ws-stress":
        body += _stress_sections(report)
    if kind == "run" and results:
        lat = latency_rows(results[0])
        body.append(f"<section><h2>Latency</h2>{html_table(lat[1:], lat[0])}</section>")
    body.append(_breakdown(entries))
    body.append(_counts(entries))
    rule = next((r["extra"].get("clock_rule") for r in results if r["extra"].get("clock_rule")),
                None)
    if rule:
        body.append(f"<section><h2>Clock rule</h2><p>{_e(rule)}</p></section>")
    body.append(_server_section(report))
    settings = {k: report[k] for k in ("thresholds", "probes", "criteria") if k in report}
    body.append("<section><h2>Machine and configuration</h2><div class='grid'>"
                f"<div><h2>Machine</h2>{kv_table(report.get('machine', {}))}</div>"
                f"<div><h2>Configuration</h2>{kv_table(report.get('config', {}))}</div>"
                + (f"<div><h2>Thresholds</h2>{kv_table(settings)}</div>" if settings else "")
                + "</div>" + (f"<p>Command: <code>beastnet {_e(' '.join(report['argv']))}</code>"
                              "</p>" if report.get("argv") else "") + "</section>")
    if text_summary:
        body.append(f"<section><h2>Terminal summary</h2><pre>{_e(text_summary)}</pre></section>")
    return _page(title, subtitle, body)
