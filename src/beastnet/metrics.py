"""Prometheus text exposition (format 0.0.4) of beastnet's counters.

No client library on the serving path: `/metrics` is rendered from the same
snapshots `stats()` returns, on the control plane, when scraped.  The one
renderer for every server: names, types and HELP text of the engine counters
come from `beastnet.counters`; running totals end in `_total`, per-thread
counters carry a `thread` label.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

from beastnet.counters import (HTTP_COUNTERS, HTTP_SERVER_GAUGES, MISS_PATH_COUNTERS, UDP_COUNTERS,
                               UDP_SERVER_GAUGES, Counter)

__all__ = ["MetricFamily", "render", "udp_families", "http_families", "feed_families",
           "key_families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricFamily:
    """One metric name with its HELP, TYPE and labelled samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(kind)
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
    return out + _gauges(HTTP_SERVER_GAUGES, {"threads": stats.get("threads", 0)}, prefix)


def feed_families(health: Mapping[str, Any], prefix: str = "beastnet_feed") -> list[MetricFamily]:
    """Families for a `PricePublisher.health()` snapshot."""
    ticks = MetricFamily(f"{prefix}_source_ticks", "counter", "Ticks received per source.")
    stale = MetricFamily(f"{prefix}_source_stale", "gauge", "1 while a source is stale.")
    age = MetricFamily(f"{prefix}_source_last_tick_age_seconds", "gauge", "Seconds since a source's last tick.")
    active = MetricFamily(f"{prefix}_source_assets_active", "gauge", "Assets served from a source.")
    for name, src in health.get("sources", {}).items():
        ticks.add(src["ticks"], source=name)
        stale.add(bool(src["stale"]), source=name)
        age.add(float(src["last_tick_age_s"]), source=name)
        active.add(src["assets_active"], source=name)
    return [
        ticks, stale, age, active,
        MetricFamily(f"{prefix}_published", "counter", "Answers published to the table.")
        .add(health.get("published", 0)),
        MetricFamily(f"{prefix}_fallbacks", "counter", "Switches of an asset to another source.")
        .add(health.get("fallbacks", 0)),
        MetricFamily(f"{prefix}_assets_stale", "gauge", "Assets no fresh source quotes.")
        .add(len(health.get("assets_stale", []))),
    ]


def key_families(usage: Mapping[str, tuple], tiers: Optional[Mapping[str, str]] = None,
                 prefix: str = "beastnet_api") -> list[MetricFamily]:
    """Per-tier totals of an `APIKeyTable.usage()` snapshot (per-key labels
    would make a series per customer; the key store has the per-key counts)."""
    tiers = tiers or {}
    admitted: dict[str, int] = {}
    limited: dict[str, int] = {}
    capped: dict[str, int] = {}
    active: dict[str, int] = {}
    for key, (n_ok, n_limited, n_capped, revoked) in usage.items():
        tier = tiers.get(key, "unknown")
        admitted[tier] = admitted.get(tier, 0) + n_ok
        limited[tier] = limited.get(tier, 0) + n_limited
        capped[tier] = capped.get(tier, 0) + n_capped
        active[tier] = active.get(tier, 0) + (0 if revoked else 1)
    fams = [
        MetricFamily(f"{prefix}_requests", "counter", "Requests admitted, per tier."),
        MetricFamily(f"{prefix}_rate_limited", "counter", "Requests refused by rate limits, per tier."),
        MetricFamily(f"{prefix}_over_quota", "counter", "Requests refused by monthly caps, per tier."),
        MetricFamily(f"{prefix}_keys_active", "gauge", "Active API keys, per tier."),
    ]
    for fam, values in zip(fams, (admitted, limited, capped, active)):
        for tier, value in sorted(values.items()):
            fam.add(value, tier=tier)
    return fams
