"""A/B of two reports: the metrics compared, their deltas (B - A), which
results are paired (ramps level by level), and what makes two reports not
comparable as a like-for-like A/B (another protocol, another target).

Shared by the terminal (`format_compare`) and the HTML page
(`htmlreport.compare_page`); needs neither NumPy nor the native generator.
"""
from __future__ import annotations

from typing import Optional

from beastnet.loadgen.report import report_results, text_table

__all__ = ["compare_pairs", "compare_rows", "format_compare"]

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


def format_compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two reports' key numbers side by side with deltas (B - A)."""
    blocks = []
    for label, x, y in compare_pairs(a, b):
        rows = [[name, va, vb, delta] for name, va, vb, delta, _ in compare_rows(x, y)]
        blocks.append((label + "\n" if label else "")
                      + text_table(rows, ["metric", names[0], names[1], "delta"], "lrrr"))
    return "\n\n".join(blocks) or "nothing to compare: the reports share no run or level"
