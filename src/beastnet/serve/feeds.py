"""Price feeds: where the bundled server's answers come from.

A feed is any async iterator of `Tick`s (implement `__aiter__`); two ship:

* `SimulatedFeed`: a random walk per asset from several sources, at a
  configurable rate, with optional source outages (to exercise fallback);
* `ReplayFeed`: ticks from a JSON-lines or CSV file, at recorded speed or
  accelerated; bad lines are reported by line number and skipped.

`PricePublisher` consumes a feed on the control plane, keeps per-source
health, picks one healthy source per asset (the preferred order, else the
freshest), and publishes each asset's answer to the `ResponseTable`: one
orjson serialization per accepted update, never per request.  When an
asset's source goes stale it falls back to another source; when no source is
fresh, the answer is republished with `"stale": true`.
"""
from __future__ import annotations

import asyncio
import csv
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Optional, Sequence

import orjson

from beastnet import ResponseTable
from beastnet.serve.assets import ASSETS, price_body

__all__ = ["Feed", "PricePublisher", "ReplayFeed", "SimulatedFeed", "Tick"]

log = logging.getLogger("beastnet.serve.feeds")


@dataclass(frozen=True)
class Tick:
    """One price update: `ts` is the source's time, seconds since the epoch."""

    asset: str
    price: float
    source: str
    ts: float


class Feed:
    """Base class of feeds: an async iterator of Ticks."""

    def __aiter__(self) -> AsyncIterator[Tick]:
        raise NotImplementedError


class SimulatedFeed(Feed):
    """A random walk per asset, quoted by `sources` with small disagreements.

    Every ``1/rounds_per_s`` seconds each source quotes every asset.
    ``outages`` maps a source to (start_s, duration_s) after the feed starts
    during which it sends nothing: a stale source for the fallback to handle.
    """

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
        prices = {a: 10 ** rng.uniform(-2, 4.5) for a in self.assets}
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
                    yield Tick(asset, quote, source, now)
            # Sleep to the next round's slot, not for a fixed period: work
            # done in the round must not slow the feed down.
            await asyncio.sleep(max(0.0, start + rounds * period - time.monotonic()))

    def _out(self, source: str, elapsed: float) -> bool:
        window = self.outages.get(source)
        return window is not None and window[0] <= elapsed < window[0] + window[1]


class ReplayFeed(Feed):
    """Ticks from a file: JSON lines (``{"asset","price","ts","source"}``) or CSV
    with a header naming those columns.  ``speed`` 1.0 replays at recorded
    pace, 10.0 ten times faster, 0 as fast as possible.  Lines that cannot be
    read are logged with their line number, kept in ``errors``, and skipped."""

    def __init__(self, path: str, speed: float = 1.0, default_source: str = "replay") -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.path = path
        self.speed = speed
        self.default_source = default_source
        self.errors: list[tuple[int, str]] = []
        self.ticks = 0

    def _parse(self) -> Iterable[tuple[int, Optional[Tick]]]:
        with open(self.path, "r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
            fh.seek(0)
            if first.lstrip().startswith("{"):
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        yield n, self._from_mapping(n, line, None)
            else:
                reader = csv.DictReader(fh)
                for row in reader:
                    yield reader.line_num, self._from_mapping(reader.line_num, None, row)

    def _from_mapping(self, n: int, line: Optional[str], row: Optional[dict]) -> Optional[Tick]:
        try:
            data = orjson.loads(line) if line is not None else row
            if not isinstance(data, dict):
                raise ValueError("not an object")
            price = float(data["price"])
            if not price > 0 or price == float("inf"):
                raise ValueError(f"price {price!r} is not a positive number")
            return Tick(str(data["asset"]), price, str(data.get("source") or self.default_source),
                        float(data["ts"]))
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            self.errors.append((n, reason))
            log.warning("%s:%d: skipped: %s", self.path, n, reason)
            return None

    async def __aiter__(self) -> AsyncIterator[Tick]:  # type: ignore[override]
        first_ts: Optional[float] = None
        start = time.monotonic()
        for _, tick in self._parse():
            if tick is None:
                continue
            if first_ts is None:
                first_ts = tick.ts
            if self.speed > 0:
                due = start + (tick.ts - first_ts) / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif self.ticks % 1024 == 0:
                await asyncio.sleep(0)          # as fast as possible, but let the loop breathe
            self.ticks += 1
            yield tick


@dataclass
class _SourceState:
    ticks: int = 0
    last_seen: float = 0.0                        # monotonic
    last_price: dict[str, tuple[float, float]] = field(default_factory=dict)  # asset -> (price, ts)


class PricePublisher:
    """Turns ticks into published answers, with per-source health and fallback.

    A source is *stale* once it has sent nothing for ``stale_after_s``.  Each
    asset is served from its active source; ticks from other sources are
    remembered but not published.  Every ``check_interval_s`` assets whose
    active source went stale switch to the first fresh source in
    ``source_priority`` (or the freshest), republishing its last price; an
    asset with no fresh source is republished with ``"stale": true``.
    """

    def __init__(self, table: ResponseTable, assets: Sequence[str] = ASSETS,
                 stale_after_s: float = 2.0, source_priority: Sequence[str] = (),
                 check_interval_s: float = 0.25) -> None:
        self.table = table
        self.assets = set(assets)
        self.stale_after_s = stale_after_s
        self.source_priority = list(source_priority)
        self.check_interval_s = check_interval_s
        self.sources: dict[str, _SourceState] = {}
        self.active: dict[str, str] = {}          # asset -> source
        self.stale_assets: set[str] = set()
        self.published = 0
        self.fallbacks = 0
        self.unknown_assets = 0
        self._seq = 0

    async def run(self, feed: Feed) -> None:
        """Consume `feed` until it ends or the task is cancelled."""
        checker = asyncio.ensure_future(self._check_forever())
        try:
            async for tick in feed:
                self.on_tick(tick)
        finally:
            checker.cancel()

    def on_tick(self, tick: Tick) -> None:
        if tick.asset not in self.assets:
            self.unknown_assets += 1
            return
        state = self.sources.setdefault(tick.source, _SourceState())
        state.ticks += 1
        state.last_seen = time.monotonic()
        state.last_price[tick.asset] = (tick.price, tick.ts)
        active = self.active.get(tick.asset)
        if active is None or active == tick.source or tick.asset in self.stale_assets \
                or self._is_stale(active) or self._preferred(tick.source, active):
            if active is not None and active != tick.source:
                self.fallbacks += 1
            self.active[tick.asset] = tick.source
            self.stale_assets.discard(tick.asset)
            self._publish(tick.asset, tick.price, tick.ts, tick.source, stale=False)

    def _preferred(self, source: str, active: str) -> bool:
        prio = self.source_priority
        return source in prio and (active not in prio or prio.index(source) < prio.index(active))

    def _is_stale(self, source: str, now: Optional[float] = None) -> bool:
        state = self.sources.get(source)
        now = time.monotonic() if now is None else now
        return state is None or now - state.last_seen > self.stale_after_s

    def _publish(self, asset: str, price: float, ts: float, source: str, stale: bool) -> None:
        self._seq += 1
        self.table.set(asset, price_body(asset, price, int(ts * 1000), source, self._seq, stale))
        self.published += 1

    def check(self) -> None:
        """Fall back from stale sources; flag assets no fresh source quotes."""
        now = time.monotonic()
        fresh = [s for s in self.sources if not self._is_stale(s, now)]
        ranked = [s for s in self.source_priority if s in fresh] + \
            sorted((s for s in fresh if s not in self.source_priority),
                   key=lambda s: -self.sources[s].last_seen)
        for asset, source in list(self.active.items()):
            if not self._is_stale(source, now) or asset in self.stale_assets:
                continue
            replacement = next((s for s in ranked if asset in self.sources[s].last_price), None)
            if replacement is not None:
                price, ts = self.sources[replacement].last_price[asset]
                self.active[asset] = replacement
                self.fallbacks += 1
                self._publish(asset, price, ts, replacement, stale=False)
            else:
                price, ts = self.sources[source].last_price[asset]
                self.stale_assets.add(asset)
                self._publish(asset, price, ts, source, stale=True)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            self.check()

    def health(self) -> dict:
        """Per-source and per-asset health, for stats and /admin/stats."""
        now = time.monotonic()
        return {
            "sources": {
                name: {"ticks": st.ticks,
                       "last_tick_age_s": round(now - st.last_seen, 3),
                       "stale": self._is_stale(name, now),
                       "assets_active": sum(1 for s in self.active.values() if s == name)}
                for name, st in self.sources.items()},
            "assets_published": len(self.active),
            "assets_stale": sorted(self.stale_assets),
            "fallbacks": self.fallbacks,
            "published": self.published,
            "unknown_assets": self.unknown_assets,
        }


def open_feed(cfg: Any, assets: Sequence[str] = ASSETS) -> Feed:
    """The feed `cfg.feed` names ("sim" or "replay"), built from the config."""
    if cfg.feed == "replay":
        assert cfg.feed_path is not None
        return ReplayFeed(cfg.feed_path, speed=cfg.replay_speed)
    return SimulatedFeed(assets, sources=cfg.feed_sources, rounds_per_s=cfg.feed_rounds_per_s)
