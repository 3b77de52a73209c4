"""The governor as a component: the engines' adaptive concurrency limits
(HTTP, and UDP's for a UDP server that queues misses to a handler) switched
and bounded by the profile (`adaptive_*` parameters, live), and
bounded reactions to the tuning loop's red flags, once a second while on:

* UDP drops (kernel drops over 1 % of the datagrams offered): the readers'
  batch doubles, up to `adaptive_max_batch` (a reader then drains more of
  its socket per wake-up).
* background drops (over 5 % of the background work offered): the usage
  flush interval doubles, up to `adaptive_max_flush_interval_s` (fewer,
  larger writes).  The signal is a component's `background_drops()` --
  (dropped, offered) totals, which a usage-log queue provides -- or, without
  one, the miss queues' drops over misses, as the cluster's red flag counts
  them.  The interval reaches every component with a `set_flush_interval(s)`.

A reaction waits `COOLDOWN_S` before the same signal may move it again, so
its effect is measured first.  Each action is one structured log line
(event `governor_action`) and a count.  Switching the governor off puts the
batch and flush interval back to the profile's values.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Mapping, Optional

from beastnet.metrics import MetricFamily
from beastnet.serve.cluster import RED_BACKGROUND_DROP_PCT, RED_UDP_DROP_PCT
from beastnet.serve.component import Component

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService

__all__ = ["ACTIONS", "Governor"]

log = logging.getLogger("beastnet.serve.governor")

WATCH_INTERVAL_S = 1.0          # how often the red flags are read
COOLDOWN_S = 3.0                # after an action, the same signal waits this long
LAST_ACTIONS = 20               # actions /admin/stats lists

#: The reactions, by the name their counts and log lines use.
ACTIONS = ("udp_batch", "flush_interval", "restore")


class Governor(Component):
    """Registered after the engines: it drives `host.http` and `host.udp`."""

    name = "governor"

    def __init__(self, host: "PriceService") -> None:
        self.host = host
        self.cfg = host.cfg
        self.actions = {name: 0 for name in ACTIONS}
        self.at_bound = {name: 0 for name in ACTIONS}    # red flags with the bound reached
        self.last_actions: deque[dict[str, Any]] = deque(maxlen=LAST_ACTIONS)
        self.flush_interval_s: Optional[float] = None    # set by a reaction, None = profile's
        self._previous: Optional[dict[str, int]] = None
        self._cooldown_until = {name: 0.0 for name in ACTIONS}
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        self._apply_limit()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- the limit -------------------------------------------------------------------

    def _apply_limit(self) -> None:
        cfg = self.cfg
        # Both engines, one set of bounds: each has its own limit and count.
        for server in (self.host.http, self.host.udp):
            if server is not None:
                server.set_governor(cfg.adaptive_enabled, min_limit=cfg.adaptive_min_limit,
                                    max_limit=cfg.adaptive_max_limit,
                                    target_ms=cfg.adaptive_target_ms,
                                    tolerance=cfg.adaptive_tolerance)

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        if not any(name.startswith("adaptive_") for name in changes):
            return
        self._apply_limit()
        if "adaptive_enabled" in changes:
            log.info("governor %s", "on" if self.cfg.adaptive_enabled else "off",
                     extra={"fields": {"event": "governor_switched",
                                       "enabled": self.cfg.adaptive_enabled}})
            self._previous = None           # deltas start again from the switch
            if not self.cfg.adaptive_enabled:
                self._restore()

    # -- reactions to red flags ---------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.cfg.adaptive_enabled:
                try:
                    self.react(self._signals())
                except Exception as exc:    # a reaction must never end the loop
                    log.warning("governor: reaction failed: %s", exc)

    def _signals(self) -> dict[str, int]:
        """The totals the red flags are drawn from (monotonic)."""
        host, out = self.host, {}
        udp = host.udp.stats()["totals"] if host.udp is not None else {}
        http = host.http.stats()["totals"] if host.http is not None else {}
        out["udp_rx"] = udp.get("rx_packets", 0)
        out["udp_drops"] = udp.get("kernel_drops", 0)
        dropped = offered = 0
        sources = [part for part in host.components if hasattr(part, "background_drops")]
        for part in sources:
            part_dropped, part_offered = part.background_drops()    # type: ignore[attr-defined]
            dropped, offered = dropped + part_dropped, offered + part_offered
        if not sources:
            dropped = udp.get("queue_drops", 0) + http.get("queue_drops", 0)
            offered = udp.get("misses", 0) + http.get("misses", 0)
        out["bg_drops"], out["bg_offered"] = dropped, offered
        return out

    def react(self, totals: dict[str, int], now: Optional[float] = None) -> list[str]:
        """Compare `totals` with the previous call's and act on red flags;
        the actions taken (names of ACTIONS)."""
        now = time.monotonic() if now is None else now
        previous, self._previous = self._previous, dict(totals)
        if previous is None:
            return []
        delta = {k: v - previous.get(k, 0) for k, v in totals.items()}
        taken = []
        udp_drop = _pct(delta["udp_drops"], delta["udp_rx"] + delta["udp_drops"])
        if udp_drop > RED_UDP_DROP_PCT and self._ready("udp_batch", now):
            taken += self._grow_batch(udp_drop, now)
        bg_drop = _pct(delta["bg_drops"], delta["bg_offered"])
        if bg_drop > RED_BACKGROUND_DROP_PCT and self._ready("flush_interval", now):
            taken += self._slow_flushes(bg_drop, now)
        return taken

    def _ready(self, action: str, now: float) -> bool:
        return now >= self._cooldown_until[action]

    def _grow_batch(self, drop_pct: float, now: float) -> list[str]:
        udp = self.host.udp
        if udp is None:
            return []
        bound = min(self.cfg.adaptive_max_batch, udp.batch_capacity)
        old = udp.batch
        new = min(bound, old * 2)
        if new <= old:
            self.at_bound["udp_batch"] += 1
            return []
        udp.set_batch(new)
        self._acted("udp_batch", now, old, new, bound, "udp_drop_pct", drop_pct)
        return ["udp_batch"]

    def _slow_flushes(self, drop_pct: float, now: float) -> list[str]:
        targets = [part for part in self.host.components if hasattr(part, "set_flush_interval")]
        if not targets:
            return []
        old = self.flush_interval_s or self.cfg.usage_flush_interval_s
        bound = self.cfg.adaptive_max_flush_interval_s
        new = min(bound, old * 2)
        if new <= old:
            self.at_bound["flush_interval"] += 1
            return []
        for part in targets:
            part.set_flush_interval(new)    # type: ignore[attr-defined]
        self.flush_interval_s = new
        self._acted("flush_interval", now, old, new, bound, "background_drop_pct", drop_pct)
        return ["flush_interval"]

    def _restore(self) -> None:
        """Off: the profile's batch and flush interval again."""
        udp, cfg = self.host.udp, self.cfg
        if udp is not None and udp.batch != cfg.batch:
            old = udp.batch
            udp.set_batch(cfg.batch)
            self._acted("restore", time.monotonic(), old, cfg.batch, cfg.batch, "udp_batch", 0.0)
        if self.flush_interval_s is not None:
            for part in self.host.components:
                if hasattr(part, "set_flush_interval"):
                    part.set_flush_interval(cfg.usage_flush_interval_s)
            self._acted("restore", time.monotonic(), self.flush_interval_s,
                        cfg.usage_flush_interval_s, cfg.usage_flush_interval_s,
                        "flush_interval_s", 0.0)
            self.flush_interval_s = None

    def _acted(self, action: str, now: float, old: float, new: float, bound: float,
               signal: str, value: float) -> None:
        self.actions[action] += 1
        self._cooldown_until[action] = now + COOLDOWN_S
        record = {"action": action, "from": old, "to": new, "bound": bound, "signal": signal,
                  "value": round(value, 3), "at": round(time.time(), 3)}
        self.last_actions.append(record)
        log.info("governor: %s %s -> %s (%s %.2f, bound %s)", action, old, new, signal, value,
                 bound, extra={"fields": {"event": "governor_action", **record}})

    # -- telemetry -------------------------------------------------------------------------

    def _engine_state(self) -> dict[str, Any]:
        http = self.host.http
        if http is None:
            return {}
        stats = http.stats()
        state = dict(stats["governor"] or {})
        state["shed_public"] = stats["totals"].get("shed_public", 0)
        state["shed_partner"] = stats["totals"].get("shed_partner", 0)
        udp = self.host.udp.stats() if self.host.udp is not None else None
        if udp is not None and udp.get("governor"):
            # The UDP readers' own limit: it moves only with misses queued to
            # a handler (beastnet serve answers UDP misses natively).
            state["udp"] = {"limit": udp["governor"]["limit"],
                            "inflight": udp["governor"]["inflight"],
                            "shed_public": udp["totals"].get("shed_public", 0),
                            "shed_partner": udp["totals"].get("shed_partner", 0)}
        return state

    def stats(self) -> dict[str, Any]:
        udp = self.host.udp
        return {"governor": {**self._engine_state(),
                             "udp_batch": udp.batch if udp is not None else None,
                             "flush_interval_s": self.flush_interval_s
                             or self.cfg.usage_flush_interval_s,
                             "actions": dict(self.actions), "at_bound": dict(self.at_bound),
                             "last_actions": list(self.last_actions)}}

    def counters(self) -> dict[str, dict[str, int]]:
        state = self._engine_state()
        return {"governor": {"enabled": int(bool(state.get("enabled"))),
                             "limit": int(state.get("limit", 0)),
                             "inflight": int(state.get("inflight", 0)),
                             "actions": sum(self.actions.values())}}

    def families(self) -> list[MetricFamily]:
        state = self._engine_state()
        if not state:
            return []
        actions = MetricFamily("beastnet_governor_actions", "counter",
                               "Reactions of the governor to red flags, by action.")
        for name, count in self.actions.items():
            actions.add(count, action=name)
        return [
            MetricFamily("beastnet_governor_enabled", "gauge",
                         "1 while the governor sheds past its adaptive limit.")
            .add(bool(state["enabled"])),
            MetricFamily("beastnet_governor_limit", "gauge",
                         "The adaptive limit on HTTP requests waiting for the control plane.")
            .add(state["limit"]),
            MetricFamily("beastnet_governor_inflight", "gauge",
                         "HTTP requests waiting for the control plane now (queued or in a "
                         "handler).").add(state["inflight"]),
            MetricFamily("beastnet_governor_latency_seconds", "gauge",
                         "Mean wait of those requests in the governor's last window.")
            .add(state["latency_ms"] / 1000.0),
            actions,
        ]


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0
