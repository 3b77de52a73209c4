"""Prometheus families of the bundled price server: feed health per source
and API-key totals per tier, rendered with the engine's `beastnet.metrics`."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from beastnet.metrics import MetricFamily

__all__ = ["exchange_families", "feed_families", "key_families"]


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
        ticks, stale, age, active, *exchange_families(health.get("exchanges", {}), prefix),
        MetricFamily(f"{prefix}_published", "counter", "Answers published to the table.")
        .add(health.get("published", 0)),
        MetricFamily(f"{prefix}_fallbacks", "counter", "Switches of an asset to another source.")
        .add(health.get("fallbacks", 0)),
        MetricFamily(f"{prefix}_refused", "counter",
                     "Prices refused: not a positive decimal, or a jump past max_jump.")
        .add(health.get("refused", 0) + health.get("refused_jumps", 0)),
        MetricFamily(f"{prefix}_dropped", "counter",
                     "Ticks the feed dropped while the publisher was a full queue behind.")
        .add(health.get("feed_dropped", 0)),
        MetricFamily(f"{prefix}_sink_errors", "counter",
                     "Feed items the publisher raised on (counted, not published).")
        .add(health.get("feed_sink_errors", 0)),
        MetricFamily(f"{prefix}_assets_stale", "gauge", "Assets no fresh source quotes.")
        .add(len(health.get("assets_stale", []))),
    ]


EXCHANGE_STATES = ("connecting", "connected", "stale", "fallback", "down")
# health key -> (family suffix, type, help)
_EXCHANGE_COUNTERS = {
    "messages": ("messages", "counter", "WebSocket messages received."),
    "ticks": ("ticks", "counter", "Prices taken from the exchange."),
    "reconnects": ("reconnects", "counter", "WebSocket reconnects."),
    "stale_events": ("stale_events", "counter", "Times the stream went silent past its bound."),
    "protocol_errors": ("protocol_errors", "counter",
                        "Connections dropped for breaking WebSocket framing."),
    "rest_polls": ("rest_polls", "counter", "REST ticker requests (prewarm and fallback)."),
    "rest_errors": ("rest_errors", "counter", "REST ticker requests that failed."),
    "bad_messages": ("bad_messages", "counter", "Messages refused as malformed or errors."),
    "out_of_order": ("out_of_order", "counter", "Ticks older than the symbol's last one."),
    "msgs_per_s": ("messages_per_second", "gauge", "WebSocket messages per second."),
}


def exchange_families(exchanges: Mapping[str, Any],
                      prefix: str = "beastnet_feed") -> list[MetricFamily]:
    """Per-exchange families for the `exchanges` part of a publisher's health."""
    if not exchanges:
        return []
    state = MetricFamily(f"{prefix}_exchange_state", "gauge",
                         "1 for the state each exchange's feed is in.")
    age = MetricFamily(f"{prefix}_exchange_message_age_seconds", "gauge",
                       "Seconds since the exchange's last WebSocket message.")
    fams = {key: MetricFamily(f"{prefix}_exchange_{suffix}", kind, text)
            for key, (suffix, kind, text) in _EXCHANGE_COUNTERS.items()}
    for name, health in sorted(exchanges.items()):
        for value in EXCHANGE_STATES:
            state.add(int(health.get("state") == value), exchange=name, state=value)
        if health.get("message_age_s") is not None:
            age.add(float(health["message_age_s"]), exchange=name)
        for key, fam in fams.items():
            fam.add(health.get(key, 0), exchange=name)
    return [state, age, *fams.values()]


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
