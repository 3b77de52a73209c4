"""Prometheus families of the bundled price server: feed health per source
and API-key totals per tier, rendered with the engine's `beastnet.metrics`."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from beastnet.metrics import MetricFamily

__all__ = ["feed_families", "key_families"]


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
