"""A/B of two reports: the metrics compared, their deltas (B - A), which
results are paired (ramps level by level), and what makes two reports not
comparable as a like-for-like A/B (another protocol, another target).

Shared by the terminal (`format_compare`) and the HTML page
(`htmlreport.compare_page`); needs neither NumPy nor the native generator.
"""
from __future__ import annotations

from typing import Optional

from beastnet.loadgen.report import first_result, report_results, text_table
from beastnet.loadgen.targets import describe

__all__ = ["compare_pairs", "compare_rows", "format_compare", "unlike"]

# (name, lower is better, format) of each compared metric.
_COUNT, _MS, _PCT = ",.0f", ",.3f", ".3f"


def _delta_cell(a: Optional[float], b: Optional[float], lower_is_better: bool,
                spec: str) -> tuple[str, str]:
    """The change B - A in the metric's own format, with its relative size."""
    if a is None or b is None:
        return "-", ""
    d = b - a
    pct = f" ({d / a:+.1%})" if a and d else ""
    cls = "" if d == 0 else ("better" if (d < 0) == lower_is_better else "worse")
    return f"{d:+{spec}}{pct}", cls


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
    ra, rb = report_results(a), report_results(b)
    return [("", ra[0], rb[0])] if ra and rb else []


def _protocol(result: dict) -> str:
    """"UDP", "HTTP", "HTTPS", "WS" or "WSS" of a result dict."""
    tls = bool(result.get("config", {}).get("tls"))
    return str(result.get("mode", "?")).upper() + ("S" if tls else "")


def unlike(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Why two reports are not a like-for-like A/B (empty: they are):
    another protocol, another target, another kind of report.  The deltas
    are still shown; these lines say what they compare."""
    ra, rb = first_result(a), first_result(b)
    notes: list[str] = []
    if ra is None or rb is None:
        return notes
    pa, pb = _protocol(ra), _protocol(rb)
    if pa != pb:
        notes.append(f"these reports compare two protocols: {names[0]} is {pa}, {names[1]} is "
                     f"{pb} -- the deltas measure the protocols (and their servers), not a "
                     "change to one of them")
    else:
        ta, tb = describe(ra), describe(rb)
        if ta != tb:
            notes.append(f"the targets differ: {names[0]} {ta}; {names[1]} {tb}")
    if a.get("kind") != b.get("kind"):
        notes.append(f"the reports are of different kinds ({names[0]} {a.get('kind')}, "
                     f"{names[1]} {b.get('kind')}): only the first result of each is compared")
    return notes


def format_compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two reports' key numbers side by side with deltas (B - A), after
    what makes them unlike (`unlike`), if anything."""
    blocks = ["\n".join(f"note: {n}" for n in unlike(a, b, names))]
    for label, x, y in compare_pairs(a, b):
        rows = [[name, va, vb, delta] for name, va, vb, delta, _ in compare_rows(x, y)]
        blocks.append((label + "\n" if label else "")
                      + text_table(rows, ["metric", names[0], names[1], "delta"], "lrrr"))
    if len(blocks) == 1:
        blocks.append("nothing to compare: the reports share no run or level")
    return "\n\n".join(b for b in blocks if b)
