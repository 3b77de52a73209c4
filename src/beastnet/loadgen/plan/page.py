"""The plan's one report: the JSON body (`plan_report`), its terminal
summary (`format_plan`) and its HTML page (`plan_page`): the tests against
their criteria, each test's ramp and nines plot, the cluster-stats timeline
with its red flags marked, the comparisons, the endurance test's memory and
latency slopes per node with a leak verdict, the machine, versions, profile
values and the plan file itself."""
from __future__ import annotations

import platform
import time
from typing import Any, Optional

from beastnet.loadgen.htmlkit import _e, _page, html_table, kv_table, nines_chart, svg_xy
from beastnet.loadgen.plan.spec import Plan

__all__ = ["COMPARISONS", "format_plan", "plan_page", "plan_report"]

# Long reasons wrap in their cell (tables keep one line per cell otherwise).
_WRAP = "white-space:normal"

#: (A, B, what B against A costs)
COMPARISONS = (("2b", "2c", "rate limiting (partner vs public keys over UDP)"),
               ("2a", "2d", "usage reports beside the price load"),
               ("1a", "2a", "the TLS load balancer in front of the nodes"))


def plan_report(plan: Plan, body: dict[str, Any], cluster: Any = None) -> dict[str, Any]:
    """The report (JSON-ready) of a plan run."""
    from beastnet import __version__
    from beastnet.loadgen.result import machine_info
    tests = body["tests"]
    verdicts = {t["verdict"] for t in tests}
    verdict = ("fail" if "fail" in verdicts or body["interrupted"]
               else "warn" if verdicts & {"warn", "skip"} else "pass")
    by_name = {t["name"]: t for t in tests}
    report = {
        "kind": "plan", "plan": plan.to_dict(), "name": plan.name, "scale": plan.scale.name,
        "verdict": verdict, "interrupted": body["interrupted"],
        "started_at": body["started_at"], "duration_s": body["duration_s"],
        "tests": tests, "comparisons": _comparisons(by_name),
        "endurance": _endurance(by_name, plan),
        "original_profiles": body["original_profiles"], "restores": body["restores"],
        "overhead": _overhead(body, tests),
        "machine": machine_info(),
        "versions": {"beastnet": __version__, "python": platform.python_version(),
                     **(cluster.versions if cluster is not None else {})},
        "processes": cluster.describe() if cluster is not None else [],
        # What the nodes kept keys, usage and the usage log in (plan local only).
        "database": getattr(cluster, "database", None),
        "written_at": time.time(),
    }
    return report


def _best(test: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The level with the highest throughput of a ramp test (or its run)."""
    if not test:
        return None
    if "ramp" in test and test["ramp"]["levels"]:
        lv = max(test["ramp"]["levels"], key=lambda lv: lv["result"]["rps"])
        return {"rps": lv["result"]["rps"], "p99_ms": _ms(lv["result"], "p99"),
                "level": lv["level"]}
    if "run" in test:
        return {"rps": test["run"]["rps"], "p99_ms": _ms(test["run"], "p99"), "level": None}
    return None


def _ms(result: dict[str, Any], q: str) -> Optional[float]:
    v = (result.get("latency_ns") or {}).get(q)
    return None if v is None or v != v else round(v / 1e6, 3)


def _comparisons(by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a, b, what in COMPARISONS:
        ba, bb = _best(by_name.get(a)), _best(by_name.get(b))
        row: dict[str, Any] = {"a": a, "b": b, "what": what}
        if ba is None or bb is None:
            row["note"] = f"not available: {a if ba is None else b} has no results"
        else:
            row.update(a_rps=ba["rps"], b_rps=bb["rps"], a_p99_ms=ba["p99_ms"],
                       b_p99_ms=bb["p99_ms"],
                       rps_ratio=round(bb["rps"] / ba["rps"], 3) if ba["rps"] else None)
            if b == "2d":
                rep = by_name[b].get("reports") or {}
                if rep.get("verdict") == "not available":
                    row["note"] = "the report half: " + "; ".join(rep.get("reasons", []))
        out.append(row)
    return out


def _endurance(by_name: dict[str, dict[str, Any]], plan: Plan) -> Optional[dict[str, Any]]:
    """The fixed-rate tests' RSS and latency slopes per node, with a leak
    verdict (the memory climb threshold of the red flags)."""
    from beastnet.loadgen.plan.runner import _fit
    tests = [t for t in by_name.values() if "run" in t]
    if not tests:
        return None
    t = tests[-1]
    nodes: dict[str, Any] = {}
    for row in t.get("timeline", []):
        for name, info in (row.get("nodes") or {}).items():
            if "rss_bytes" in info:
                nodes.setdefault(name, []).append((row["t"], info["rss_bytes"] / 2**20))
    per_node = {}
    for name, pts in nodes.items():
        growth = 100.0 * (pts[-1][1] - pts[0][1]) / pts[0][1] if pts[0][1] else 0.0
        slope = _fit(pts)
        leak = growth > plan.red_flags.memory_climb_max_pct and (slope or 0) > 0
        per_node[name] = {"rss_mib_first": round(pts[0][1], 1),
                          "rss_mib_last": round(pts[-1][1], 1),
                          "rss_growth_pct": round(growth, 1), "rss_mib_per_min": slope,
                          "verdict": "leak suspected" if leak else "no leak seen"}
    return {"test": t["name"], "duration_s": t["test"].get("duration_s"),
            "latency": t.get("endurance"), "nodes": per_node,
            "note": None if per_node else "RSS not measured: the nodes' PIDs are not known "
                                          "(remote targets)"}


def _overhead(body: dict[str, Any], tests: list[dict[str, Any]]) -> dict[str, Any]:
    poll = sum(t.get("poller_cpu_s", 0.0) for t in tests)
    load_s = sum(sum(r.get("duration_s", 0.0) for r in _runs(t)) for t in tests)
    return {"poller_cpu_s": round(poll, 4), "load_s": round(load_s, 1),
            "poller_core_pct": round(100.0 * poll / load_s, 3) if load_s else None}


def _runs(test: dict[str, Any]) -> list[dict[str, Any]]:
    if "ramp" in test:
        return [lv["result"] for lv in test["ramp"]["levels"]]
    return [test["run"]] if "run" in test else []


# -- text -----------------------------------------------------------------------------


def format_plan(report: dict[str, Any]) -> str:
    """The terminal summary: one line per test, the comparisons, the verdict."""
    lines = [f"plan {report['name']!r} at scale {report['scale']}"
             + (" (interrupted)" if report.get("interrupted") else "")]
    for t in report["tests"]:
        best = _best(t)
        figures = (f"  best {best['rps']:,.0f} req/s, p99 {best['p99_ms']} ms" if best else "")
        why = f"  ({t['reasons'][0]})" if t.get("reasons") else ""
        lines.append(f"  {t['name']:<3} {t['verdict'].upper():<5} {t['title']}{figures}{why}")
    for c in report["comparisons"]:
        if "rps_ratio" in c:
            lines.append(f"  {c['b']}/{c['a']} ({c['what']}): {c['rps_ratio']}x the req/s")
        if c.get("note"):
            lines.append(f"  {c['b']}/{c['a']}: {c['note']}")
    db = report.get("database")
    if db:
        lines.append(f"  database: {_database_line(db)}")
    lines.append(f"verdict: {report['verdict'].upper()}")
    return "\n".join(lines)


def _database_line(db: dict[str, Any]) -> str:
    if db.get("kind") == "postgresql":
        return f"PostgreSQL {db.get('dsn')} ({db.get('version')}), shared by every node"
    return "SQLite key stores, one per node (--no-postgres)"


# -- HTML -----------------------------------------------------------------------------


def plan_page(report: dict[str, Any]) -> str:
    body = [_summary(report), _comparison_section(report), _endurance_section(report)]
    for t in report["tests"]:
        body.append(_test_section(t))
    body.append(_setup_section(report))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.get("started_at", 0)))
    return _page(f"beastnet plan: {report['name']}",
                 f"scale {report['scale']} · {len(report['tests'])} tests · {when} · "
                 f"{report['duration_s']} s", body)


def _badge(v: str) -> str:
    cls = v if v in ("pass", "warn", "fail") else "warn"
    return f'<span class="verdict {cls}">{_e(v.upper())}</span>'


def _summary(report: dict[str, Any]) -> str:
    rows = []
    for t in report["tests"]:
        spec = t["test"]
        best = _best(t)
        cells = [_e(t["name"]), _badge(t["verdict"]), _e(t["title"]),
                 _e(f"{spec['protocol']} {spec['access']}, {spec['tier']}, {spec['profile']}, "
                    f"governor {'on' if spec['governor'] else 'off'}"),
                 _e(f"{best['rps']:,.0f} req/s, p99 {best['p99_ms']} ms" if best else "-")]
        reasons = "<br>".join(_e(r) for r in t.get("reasons", [])[:4])
        rows.append("<tr>" + "".join(f'<td class="l" style="{_WRAP}">{c}</td>' for c in cells)
                    + f'<td class="l" style="{_WRAP}">{reasons}</td></tr>')
    head = "".join(f'<th class="l">{h}</th>' for h in
                   ("test", "verdict", "what", "how", "best level", "reasons"))
    note = " (interrupted: production restored)" if report.get("interrupted") else ""
    return (f"<section><h2>The tests against their criteria</h2>{_badge(report['verdict'])}"
            f"{_e(note)}<table><tr>{head}</tr>{''.join(rows)}</table></section>")


def _comparison_section(report: dict[str, Any]) -> str:
    rows = []
    for c in report["comparisons"]:
        rows.append([f"{c['b']} vs {c['a']}", c["what"],
                     f"{c['a_rps']:,.0f}" if "a_rps" in c else "-",
                     f"{c['b_rps']:,.0f}" if "b_rps" in c else "-",
                     c.get("rps_ratio", "-"), c.get("a_p99_ms", "-"), c.get("b_p99_ms", "-")])
    notes = "".join(f"<p>{_e(c['b'])} vs {_e(c['a'])}: {_e(c['note'])}</p>"
                    for c in report["comparisons"] if c.get("note"))
    return ("<section><h2>Comparisons</h2>" + html_table(
        rows, ["pair", "the cost of", "A req/s", "B req/s", "B/A", "A p99 ms", "B p99 ms"],
        left=2) + notes + "</section>")


def _endurance_section(report: dict[str, Any]) -> str:
    e = report.get("endurance")
    if not e:
        return ""
    rows = [[n, v["rss_mib_first"], v["rss_mib_last"], v["rss_growth_pct"],
             v["rss_mib_per_min"], v["verdict"]] for n, v in e["nodes"].items()]
    lat = e.get("latency") or {}
    return (f"<section><h2>Endurance ({_e(e['test'])}, {_e(e['duration_s'])} s)</h2>"
            + (html_table(rows, ["node", "RSS MiB first", "last", "growth %", "MiB/min",
                                 "leak verdict"]) if rows else f"<p>{_e(e['note'])}</p>")
            + f"<p>Latency slope: p50 {_e(lat.get('p50_ms_per_min'))} ms/min, "
              f"p99 {_e(lat.get('p99_ms_per_min'))} ms/min.</p></section>")


def _test_section(t: dict[str, Any]) -> str:
    parts = [f"<section><h2>{_e(t['name'])}: {_e(t['title'])} {_badge(t['verdict'])}</h2>"]
    pre = t.get("preflight")
    if pre:
        parts.append("<p>Pre-flight: " + _e("; ".join(
            f"{s['node']} {'ok' if s['ok'] else s.get('reason')}" for s in pre["nodes"]))
            + (f" · governor: {_e(_governor_text(pre['governor']))}"
               if pre.get("governor") else "")
            + "</p>")
    charts = []
    if "ramp" in t:
        levels = t["ramp"]["levels"]
        parts.append(html_table(
            [[lv["level"], f"{lv['requests']:,}", f"{lv['concurrency']:,}",
              f"{lv['result']['rps']:,.0f}", _ms(lv["result"], "p50"), _ms(lv["result"], "p99"),
              lv["verdict"].upper(), "; ".join(lv["reasons"][:2])] for lv in levels],
            ["level", "requests", "in flight", "req/s", "p50 ms", "p99 ms", "verdict",
             "reasons"]))
        charts.append(svg_xy("Ramp: throughput by level",
                             [("req/s", [(lv["level"], lv["result"]["rps"]) for lv in levels], {})],
                             "level", "requests / s"))
        charts.append(nines_chart("Latency by percentile, per level",
                                  [(f"level {lv['level']}", lv["result"].get("histogram"))
                                   for lv in levels]))
    elif "run" in t:
        charts.append(nines_chart(f"Latency by percentile at {t.get('rate', 0):,.0f} req/s",
                                  [("run", t["run"].get("histogram"))]))
    if t.get("reports"):
        rep = t["reports"]
        parts.append(f"<p>Report load: {_badge(rep['verdict'])}"
                     + _e("; ".join(rep.get("reasons", []))) + "</p>")
    charts.append(_timeline_chart(t))
    parts.append('<div class="charts">' + "".join(charts) + "</div>")
    return "".join(parts) + "</section>"


def _governor_text(states: dict[str, str]) -> str:
    """"on" when every node says so, else each node's state."""
    if len(set(states.values())) == 1:
        return next(iter(states.values()))
    return ", ".join(f"{node} {state}" for node, state in states.items())


def _timeline_chart(t: dict[str, Any]) -> str:
    """The cluster-stats timeline: requests per poll over the nodes, the red
    flags as marks."""
    rows = [r for r in t.get("timeline", []) if "delta" in r]
    series: list[tuple[str, list[tuple[float, Optional[float]]], dict]] = []
    for name in ("udp_rx_packets", "http_requests", "udp_kernel_drops", "http_queue_drops"):
        pts: list[tuple[float, Optional[float]]] = [
            (float(r["t"]), float(r["delta"].get(name, 0))) for r in rows]
        if any(y for _, y in pts):
            series.append((name, pts, {}))
    marks = [(f["t"], f"{f['flag']} {f['scope']}") for f in t.get("flags", [])]
    return svg_xy("Cluster stats per poll (red flags marked)", series, "seconds",
                  "count per poll", marks=marks)


def _setup_section(report: dict[str, Any]) -> str:
    procs = report.get("processes") or []
    parts = ["<section><h2>Machine, versions, profiles, processes</h2><div class='grid'>",
             kv_table(report["machine"]), kv_table(report["versions"])]
    profiles = {n: (p.get("profile"), p.get("live")) for n, p in
                report["original_profiles"].items() if isinstance(p, dict)}
    parts.append(html_table([[n, p, _e(live)] for n, (p, live) in profiles.items()],
                            ["node", "profile before the plan", "its live values"]))
    parts.append("</div>")
    if report.get("database"):
        parts.append(f"<p>Database: {_e(_database_line(report['database']))}</p>")
    if procs:
        parts.append(html_table([[p["name"], p["pid"], p["ports"], p["log"]] for p in procs],
                                ["process", "PID", "ports", "log"]))
    parts.append(html_table([[r["when"], r["node"], r["profile"],
                              "ok" if r["ok"] else r.get("reason")]
                             for r in report["restores"]],
                            ["restore", "node", "profile", "result"]))
    parts.append(f"<h2>Plan file (scale {_e(report['scale'])})</h2><pre>"
                 f"{_e(report['plan']['source'])}</pre></section>")
    return "".join(parts)
