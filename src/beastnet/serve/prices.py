"""The feed and its publisher as a component: prices into the table, feed
health in /admin/stats and /metrics, and /healthz."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional

from beastnet import Answer, MissRequest
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute
from beastnet.serve.assets import ASSET_LIST_KEY, ASSETS
from beastnet.serve.component import Component
from beastnet.serve.feeds import ReplayFeed, SimulatedFeed, open_feed
from beastnet.serve.metrics import feed_families

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService

__all__ = ["Prices"]

log = logging.getLogger("beastnet.serve.prices")


class Prices(Component):
    """Runs the feed through the publisher on the control loop; start()
    returns once the first prices are in the table (or after the warm-up
    timeout: a replay may start slowly)."""

    name = "feed"

    def __init__(self, host: "PriceService", warmup_timeout_s: float = 5.0) -> None:
        cfg = host.cfg
        self.host = host
        self.publisher = host.publisher
        self.feed = host.feed or open_feed(cfg)
        self.warmup_timeout_s = warmup_timeout_s
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.publisher.run(self.feed))
        deadline = time.monotonic() + self.warmup_timeout_s
        while len(self.host.table) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if len(self.host.table) == 0:
            log.warning("no prices after %.1f s: serving anyway (not_found until the feed speaks)",
                        self.warmup_timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"feed": self.publisher.health()}

    def families(self) -> list[MetricFamily]:
        return feed_families(self.publisher.health())

    def routes(self) -> list[AdminRoute]:
        return [AdminRoute("/healthz", ("GET", "HEAD"), self._health, probe=True)]

    def _health(self, request: MissRequest) -> Answer:
        # Degraded as soon as any served price is stale: a client reading a
        # stale BTC is not helped by 149 fresh others (docs/serve.md).
        served = len(self.host.table) - (ASSET_LIST_KEY in self.host.table)
        stale = len(self.publisher.stale_assets)
        ok = served > 0 and stale == 0
        return Answer({"status": "ok" if ok else "degraded", "assets": served,
                       "stale_assets": stale}, status=200 if ok else 503)

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        cfg = self.host.cfg
        if "feed_rounds_per_s" in changes and isinstance(self.feed, SimulatedFeed):
            self.feed.rounds_per_s = cfg.feed_rounds_per_s
        if "replay_speed" in changes and isinstance(self.feed, ReplayFeed):
            self.feed.speed = cfg.replay_speed
        if "feed_stale_after_s" in changes:
            self.publisher.stale_after_s = cfg.feed_stale_after_s
