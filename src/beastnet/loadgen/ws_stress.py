"""The WebSocket stress ladder: eight levels of connections (10 to 99,000),
every connection following the same symbols, one `run_ws_load` per level.
Each level is judged per metric against pass / warn / fail thresholds
(`StressThresholds`), and the ladder gets a degradation analysis: for each
dimension, 1 - best/worst across the levels that ran, and the dimension
that degraded most is named.

A level this machine cannot open (file descriptors, ephemeral ports) is
`skipped` with the reason; it is never counted as passed, and a ladder with
a skipped level is at best `warn`.  Of the seed's metrics, connection
establishment, broadcast delivery and throughput are measured; message round
trip, subscribe/unsubscribe rate, permission checks and compression are not
(yet), and the report lists them under ``not_measured``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from beastnet.loadgen.ws_config import WSLoadConfig
from beastnet.loadgen.ws_knee import reach_problem

__all__ = ["LEVELS", "NOT_MEASURED", "QUICK_MAX_LEVEL", "StressThresholds", "run_stress"]

#: Connections of each level, 1 to 8.
LEVELS = (10, 100, 500, 1000, 5000, 10000, 50000, 99000)
QUICK_MAX_LEVEL = 4
NOT_MEASURED = ("message round trip", "subscribe/unsubscribe rate", "permission checks",
                "compression")
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class StressThresholds:
    """(warn, fail) limits per metric; a value past `fail` fails the level."""

    upgrade_p95_ms: tuple[float, float] = (100.0, 1000.0)
    delivery_p95_ms: tuple[float, float] = (50.0, 200.0)
    delivery_p99_ms: tuple[float, float] = (100.0, 500.0)
    #: Share of connections upgraded; below warn warns, below fail fails.
    connected: tuple[float, float] = (1.0, 0.99)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _judge(metrics: dict[str, Optional[float]], th: StressThresholds) -> tuple[str, list[str]]:
    verdict, reasons = "pass", []
    for name in ("upgrade_p95_ms", "delivery_p95_ms", "delivery_p99_ms"):
        warn, fail = getattr(th, name)
        v = metrics[name]
        if v is None:
            verdict = max(verdict, "warn", key=_ORDER.__getitem__)
            reasons.append(f"{name}: not measured")
        elif v > fail:
            verdict = "fail"
            reasons.append(f"{name} {v:.2f} > {fail:g}")
        elif v > warn:
            verdict = max(verdict, "warn", key=_ORDER.__getitem__)
            reasons.append(f"{name} {v:.2f} > {warn:g} (warn)")
    warn, fail = th.connected
    share = metrics["connected"] or 0.0
    if share < fail:
        verdict = "fail"
        reasons.append(f"connected {share:.2%} < {fail:.0%}")
    elif share < warn:
        verdict = max(verdict, "warn", key=_ORDER.__getitem__)
        reasons.append(f"connected {share:.2%} < {warn:.0%} (warn)")
    return verdict, reasons


def degradation(levels: Sequence[dict]) -> dict[str, Any]:
    """1 - best/worst per dimension over the levels that ran (0 = flat,
    near 1 = collapsed), and the dimension that degraded most."""
    ran = [lv for lv in levels if lv["verdict"] != "skipped"]
    dims: dict[str, Optional[float]] = {}
    # Higher is better for throughput per connection, lower for latencies.
    for name, higher_better in (("messages_per_s_per_connection", True),
                                ("upgrade_p95_ms", False), ("delivery_p95_ms", False)):
        values = [lv["metrics"][name] for lv in ran if lv["metrics"][name]]
        if len(values) < 2:
            dims[name] = None
            continue
        best, worst = (max(values), min(values)) if higher_better else (min(values),
                                                                        max(values))
        dims[name] = 1.0 - (worst / best if higher_better else best / worst)
    known = {k: v for k, v in dims.items() if v is not None}
    return {"by_dimension": dims,
            "most_degraded": max(known, key=known.__getitem__) if known else None}


def run_stress(cfg: WSLoadConfig, levels: Sequence[int] = LEVELS,
               thresholds: Optional[StressThresholds] = None,
               progress: Optional[Callable[[dict], None]] = None,
               on_level: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Report body (kind ``ws-stress``): per level its connections, metrics,
    verdict and reasons (``skipped`` with the reason when out of reach), the
    degradation analysis, ``not_measured``, and the overall verdict."""
    from beastnet.loadgen.ws import run_ws_load
    th = thresholds or StressThresholds()
    out: list[dict[str, Any]] = []
    for number, n in enumerate(levels, 1):
        problem = reach_problem(n)
        if problem is not None:
            out.append({"level": number, "connections": n, "verdict": "skipped",
                        "reasons": [problem], "metrics": {}})
            continue
        r = run_ws_load(dataclasses.replace(cfg, connections=n), progress=progress)
        e = r.extra
        p95, p99 = r.percentile(95), r.percentile(99)
        metrics: dict[str, Optional[float]] = {
            "connected": e["upgrades"] and min(1.0, (e["upgrades"] - e["reconnects"]) / n),
            "upgrade_p95_ms": e["upgrade_ms"]["p95"],
            "connect_p95_ms": e["connect_ms"]["p95"],
            "delivery_p95_ms": None if p95 != p95 else p95 / 1e6,
            "delivery_p99_ms": None if p99 != p99 else p99 / 1e6,
            "messages_per_s": e["messages_per_s"],
            "messages_per_s_per_connection": e["messages_per_s"] / n,
            "reconnects": e["reconnects"],
            "errors": r.errors,
        }
        verdict, reasons = _judge(metrics, th)
        level = {"level": number, "connections": n, "verdict": verdict, "reasons": reasons,
                 "metrics": metrics, "result": r.to_dict(histogram=False)}
        out.append(level)
        if on_level is not None:
            on_level(level)
        if r.interrupted:
            break
    ran = [lv["verdict"] for lv in out if lv["verdict"] != "skipped"]
    verdict = max(ran, key=_ORDER.__getitem__) if ran else "fail"
    if verdict == "pass" and any(lv["verdict"] == "skipped" for lv in out):
        verdict = "warn"
    counts = {v: sum(lv["verdict"] == v for lv in out) for v in ("pass", "warn", "fail",
                                                                "skipped")}
    return {"kind": "ws-stress", "verdict": verdict, "thresholds": th.to_dict(),
            "levels": out, "counts": counts, "degradation": degradation(out),
            "not_measured": list(NOT_MEASURED)}
