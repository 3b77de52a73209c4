"""Prometheus text exposition (format 0.0.4) of beastnet's counters.

No client library on the serving path: `/metrics` is rendered from the same
snapshots `stats()` returns, on the control plane, when scraped.  The one
renderer for every server: names, types and HELP text of the engine counters
come from `beastnet.counters`; running totals end in `_total`, per-thread
counters carry a `thread` label.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from beastnet.counters import PUSH_COUNTERS
from beastnet.counters import (HTTP_COUNTERS, HTTP_SERVER_GAUGES, MISS_PATH_COUNTERS, UDP_COUNTERS,
                               UDP_SERVER_GAUGES, WS_DEFLATE_COUNTERS, Counter)

__all__ = ["MetricFamily", "render", "udp_families", "http_families", "push_families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricFamily:
    """One metric name with its HELP, TYPE and labelled samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(kind)
        if kind == "counter" and name.endswith("_total"):
            # render() appends the suffix; given twice it came out as
            # beastnet_usage_log_rows_written_total_total once.
            raise ValueError(f"counter {name!r}: name it without _total, render() adds it")
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: Any) -> "MetricFamily":
        self.samples.append(({k: str(v) for k, v in labels.items()}, value))
        return self


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[MetricFamily]) -> bytes:
    lines = []
    for fam in families:
        sample_name = fam.name + "_total" if fam.kind == "counter" else fam.name
        lines.append(f"# HELP {sample_name} {fam.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {sample_name} {fam.kind}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{sample_name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{sample_name} {_number(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _engine_families(stats: Mapping[str, Any], per_thread: Sequence[Mapping[str, int]],
                     counters: Sequence[Counter], prefix: str) -> list[MetricFamily]:
    """Every native counter of an engine, one sample per thread (`thread`
    label), then the control plane's miss-path totals."""
    out = []
    for counter in counters:
        fam = MetricFamily(f"{prefix}_{counter.name}", counter.kind, counter.help)
        for i, values in enumerate(per_thread):
            fam.add(values.get(counter.name, 0), thread=i)
        out.append(fam)
    totals = stats.get("totals", {})
    for counter in MISS_PATH_COUNTERS:
        if counter.name in totals:
            out.append(MetricFamily(f"{prefix}_{counter.name}", counter.kind, counter.help)
                       .add(totals[counter.name]))
    return out


def _gauges(gauges: Sequence[Counter], values: Mapping[str, float],
            prefix: str) -> list[MetricFamily]:
    return [MetricFamily(f"{prefix}_{g.name}", g.kind, g.help).add(values[g.name]) for g in gauges]


def udp_families(stats: Mapping[str, Any], prefix: str = "beastnet_udp") -> list[MetricFamily]:
    """Families for a `UDPServer.stats()` snapshot."""
    out = _engine_families(stats, stats.get("per_socket", []), UDP_COUNTERS, prefix)
    return out + _gauges(UDP_SERVER_GAUGES, {
        "sockets": stats.get("sockets", 0),
        "cpu_steering": bool(stats.get("steering", {}).get("enabled")),
        "avg_batch_fill": float(stats.get("avg_batch_fill", 0.0)),
    }, prefix)


def http_families(stats: Mapping[str, Any], prefix: str = "beastnet_http") -> list[MetricFamily]:
    """Families for an `HTTPServer.stats()` snapshot: every worker counter,
    labelled by worker thread, plus the control plane's totals."""
    out = _engine_families(stats, stats.get("per_thread", []), HTTP_COUNTERS, prefix)
    totals = stats.get("totals", {})
    out += [MetricFamily(f"{prefix}_{c.name}", c.kind, c.help).add(totals[c.name])
            for c in WS_DEFLATE_COUNTERS if c.name in totals]
    return out + _gauges(HTTP_SERVER_GAUGES, {"threads": stats.get("threads", 0)}, prefix)


def push_families(stats: Mapping[str, int],
                  prefix: str = "beastnet_webhook_udp") -> list[MetricFamily]:
    """Families for a `UDPPusher.stats()` snapshot, named and described by
    `beastnet.counters.PUSH_COUNTERS`."""
    return [MetricFamily(f"{prefix}_{c.name}", c.kind, c.help).add(stats[c.name])
            for c in PUSH_COUNTERS]
