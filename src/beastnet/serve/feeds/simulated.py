"""The simulated feed: a random walk per asset, quoted by several sources."""
from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, AsyncIterator, Optional, Sequence

from beastnet.serve.assets import ASSETS, snapshot_prices
from beastnet.serve.feeds.registry import register_feed
from beastnet.serve.feeds.base import Feed, Tick

if TYPE_CHECKING:
    from beastnet.serve.config import ServeConfig

__all__ = ["SimulatedFeed"]


class SimulatedFeed(Feed):
    """A random walk per asset, quoted by `sources` with small disagreements.

    The walk starts from the shipped snapshot of real prices (see
    `beastnet.serve.assets.snapshot_prices`), so BTC looks like BTC.  Every
    ``1/rounds_per_s`` seconds each source quotes every asset.  ``outages``
    maps a source to (start_s, duration_s) after the feed starts during
    which it sends nothing: a stale source for the fallback to handle.
    """

    name = "sim"

    def __init__(self, assets: Sequence[str] = ASSETS, sources: Sequence[str] = ("sim-a", "sim-b"),
                 rounds_per_s: float = 10.0, volatility: float = 0.001, seed: int = 1,
                 outages: Optional[dict[str, tuple[float, float]]] = None,
                 max_rounds: Optional[int] = None) -> None:
        if rounds_per_s <= 0:
            raise ValueError("rounds_per_s must be > 0")
        if not sources:
            raise ValueError("at least one source is needed")
        self.assets = list(assets)
        self.sources = list(sources)
        self.rounds_per_s = rounds_per_s
        self.volatility = volatility
        self.seed = seed
        self.outages = dict(outages or {})
        self.max_rounds = max_rounds

    async def __aiter__(self) -> AsyncIterator[Tick]:  # type: ignore[override]
        rng = random.Random(self.seed)
        start_prices = snapshot_prices()
        prices = {a: start_prices.get(a) or 10 ** rng.uniform(-2, 4.5) for a in self.assets}
        start = time.monotonic()
        period = 1.0 / self.rounds_per_s
        rounds = 0
        while self.max_rounds is None or rounds < self.max_rounds:
            rounds += 1
            now = time.time()
            elapsed = time.monotonic() - start
            live = [s for s in self.sources if not self._out(s, elapsed)]
            for asset in self.assets:
                prices[asset] *= 1.0 + rng.gauss(0.0, self.volatility)
                for source in live:
                    quote = prices[asset] * (1.0 + rng.gauss(0.0, self.volatility / 10))
                    # Six significant digits, as an exchange would quote.
                    yield Tick(asset, float(f"{quote:.6g}"), source, now)
            # Sleep to the next round's slot, not for a fixed period: work
            # done in the round must not slow the feed down.
            await asyncio.sleep(max(0.0, start + rounds * period - time.monotonic()))

    def _out(self, source: str, elapsed: float) -> bool:
        window = self.outages.get(source)
        return window is not None and window[0] <= elapsed < window[0] + window[1]


@register_feed("sim")
def _open_simulated(cfg: "ServeConfig") -> Feed:
    return SimulatedFeed(ASSETS, sources=cfg.feed_sources, rounds_per_s=cfg.feed_rounds_per_s)
