"""The publisher: ticks in, one published answer per accepted price out.

`PricePublisher` consumes a feed on the control plane, keeps per-source
health, picks one healthy source per asset (the preferred order, else the
freshest), and publishes each asset's answer to the `ResponseTable`: one
serialization per accepted update, never per request.  When an asset's
source goes stale it falls back to another source; when no source is fresh,
the answer is republished with `"stale": true`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from beastnet import ResponseTable
from beastnet.serve.assets import ASSETS, price_body
from beastnet.serve.feeds.base import Feed, SourceAlive, Tick, price_text

__all__ = ["PricePublisher"]

log = logging.getLogger("beastnet.serve.feeds")


@dataclass
class _SourceState:
    ticks: int = 0
    last_seen: float = 0.0                        # monotonic
    # asset -> (price text, source ts in s, quote currency)
    last_price: dict[str, tuple[str, float, str]] = field(default_factory=dict)


class PricePublisher:
    """Turns ticks into published answers, with per-source health and fallback.

    A source is *stale* once it has sent nothing for ``stale_after_s`` (or
    its own bound in ``source_stale_after_s``, which an exchange feed sets
    from the exchange's heartbeat).  Each
    asset is served from its active source; ticks from other sources are
    remembered but not published.  Every ``check_interval_s`` assets whose
    active source went stale switch to the first fresh source in
    ``source_priority`` (``asset_priority[asset]`` first, when the feed gives
    one), republishing its last price; an asset with no fresh source is
    republished with ``"stale": true``.  A price more than ``max_jump`` (a
    fraction) away from the asset's other fresh sources, or else from its own
    price of the last minute, is refused, counted and logged.
    """

    def __init__(self, table: ResponseTable, assets: Sequence[str] = ASSETS,
                 stale_after_s: float = 2.0, source_priority: Sequence[str] = (),
                 check_interval_s: float = 0.25, max_jump: Optional[float] = None,
                 source_stale_after_s: Optional[dict[str, float]] = None,
                 asset_priority: Optional[dict[str, list[str]]] = None) -> None:
        self.table = table
        self.max_jump = max_jump
        self.source_stale_after_s = dict(source_stale_after_s or {})
        self.asset_priority = dict(asset_priority or {})
        self.refused_jumps = 0
        self.feed: Optional[Feed] = None
        self._accepted: dict[str, tuple[float, float]] = {}  # asset -> (price, monotonic)
        self._jump_logged: dict[str, float] = {}
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
        self.refused = 0                          # ticks with a price that is not one
        self.feed_state = "running"               # running, ended, failed
        self._unknown_logged: set[str] = set()
        self._stale_published: dict[str, float] = {}  # asset -> monotonic time of last body
        self._seq = 0
        # Between begin_batch() and end_batch(): asset -> its last accepted
        # answer's fields, written to the table once at the end.
        self._pending: Optional[dict[str, tuple]] = None
        self.conflated = 0                        # accepted ticks a later one of the batch replaced

    async def run(self, feed: Feed) -> None:
        """Consume `feed`, then keep marking stale prices until cancelled.

        The stale checker belongs to the publisher, not to the feed: a feed
        that ends or raises leaves its last prices behind, and they must turn
        `"stale": true` (and /healthz degraded) when their age says so."""
        checker = asyncio.ensure_future(self._check_forever())
        try:
            await self.consume(feed)
            await checker                       # until the service stops
        finally:
            checker.cancel()

    async def consume(self, feed: Feed) -> None:
        """Publish `feed`'s ticks until it ends; log how it ended (no stale
        checking: `run` adds that)."""
        name = getattr(feed, "name", type(feed).__name__)
        self.feed = feed
        self.source_stale_after_s.update(getattr(feed, "source_stale_after_s", {}))
        self.asset_priority.update(getattr(feed, "asset_priority", {}))
        deliver_to = getattr(feed, "deliver_to", None)
        try:
            if deliver_to is not None:
                # The feed calls on_tick in its reader tasks: no queue between;
                # a socket read's ticks between begin_batch and end_batch.
                await deliver_to(self.on_tick, batch=(self.begin_batch, self.end_batch))
            else:
                async for tick in feed:
                    self.on_tick(tick)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.feed_state = "failed"
            log.error("feed %s failed: %s: %s; its prices will turn stale after %.1f s",
                      name, type(exc).__name__, exc, self.stale_after_s)
        else:
            self.feed_state = "ended"
            log.warning("feed %s ended after %d ticks; its prices will turn stale after %.1f s",
                        name, sum(st.ticks for st in self.sources.values()), self.stale_after_s)

    def on_tick(self, tick: Union[Tick, SourceAlive]) -> None:
        """Take one tick (or a source's sign of life)."""
        if isinstance(tick, SourceAlive):
            self._source(tick.source).last_seen = time.monotonic()
            return
        if tick.asset not in self.assets:
            self.unknown_assets += 1
            if tick.asset not in self._unknown_logged and len(self._unknown_logged) < 1000:
                self._unknown_logged.add(tick.asset)      # once per asset, bounded
                log.warning("source %s sent unknown asset %r: not served (counted in "
                            "unknown_assets)", tick.source, tick.asset[:64])
            return
        price = price_text(tick.price)
        if price is None:
            self.refused += 1
            return
        now = time.monotonic()
        if self.max_jump is not None and self._jumps(tick, float(price), now):
            return
        # Once per exchange message: the tick's fields and the source's state
        # read once (this path was a quarter of the control plane's CPU with
        # six exchanges at 1,500 msgs/s).
        asset, source, ts, quote = tick.asset, tick.source, tick.ts, tick.quote
        state = self.sources.get(source)
        if state is None:
            state = self._source(source)
        state.ticks += 1
        state.last_seen = now
        state.last_price[asset] = (price, ts, quote)
        active = self.active.get(asset)
        # The usual case first: the asset's own source speaks again.
        if active == source or active is None or asset in self.stale_assets \
                or self._is_stale(active, now) or self._preferred(source, active, asset):
            if active is not None and active != source:
                self.fallbacks += 1
            self.active[asset] = source
            self.stale_assets.discard(asset)
            self._publish(asset, price, ts, source, quote, stale=False)

    def _source(self, name: str) -> _SourceState:
        state = self.sources.get(name)
        if state is None:                         # once per source, not one per tick
            state = self.sources[name] = _SourceState()
        return state

    def _jumps(self, tick: Tick, value: float, now: float) -> bool:
        """True (and counted, logged once a minute per asset) when `value`
        is past `max_jump` from the reference: another fresh source's price,
        else the asset's own accepted price of the last minute."""
        reference: Optional[float] = None
        asset, source = tick.asset, tick.source
        bounds, default = self.source_stale_after_s, self.stale_after_s
        for name, state in self.sources.items():
            # _is_stale inlined: this loop runs for every tick
            if name != source:
                quoted = state.last_price.get(asset)
                if quoted is not None and now - state.last_seen <= bounds.get(name, default):
                    reference = float(quoted[0])
                    break
        if reference is None:
            last = self._accepted.get(tick.asset)
            if last is not None and now - last[1] <= 60.0:
                reference = last[0]
        assert self.max_jump is not None
        if reference is not None and abs(value - reference) > self.max_jump * reference:
            self.refused_jumps += 1
            if now - self._jump_logged.get(tick.asset, -1e9) >= 60.0:
                self._jump_logged[tick.asset] = now
                log.warning("refused %s %s from %s: more than %g %% off %s (%d refused so far)",
                            tick.asset, tick.price, tick.source, self.max_jump * 100,
                            reference, self.refused_jumps)
            return True
        self._accepted[tick.asset] = (value, now)
        return False

    def _preferred(self, source: str, active: str, asset: str = "") -> bool:
        prio = self.asset_priority.get(asset) or self.source_priority
        return source in prio and (active not in prio or prio.index(source) < prio.index(active))

    def _is_stale(self, source: str, now: Optional[float] = None) -> bool:
        state = self.sources.get(source)
        now = time.monotonic() if now is None else now
        return state is None or \
            now - state.last_seen > self.source_stale_after_s.get(source, self.stale_after_s)

    def _publish(self, asset: str, price: str, ts: float, source: str, quote: str,
                 stale: bool, age_s: Optional[float] = None) -> None:
        pending = self._pending
        if pending is not None:
            if asset in pending:
                self.conflated += 1
            pending[asset] = (price, ts, source, quote, stale, age_s)
            return
        self._seq += 1
        self.table.set(asset, price_body(asset, price, int(ts * 1000), source, self._seq, stale,
                                         quote, age_s))
        self.published += 1

    def begin_batch(self) -> None:
        """The ticks of one socket read follow: each is checked and taken as
        on_tick always does, but the table is written once per asset, with
        its last price, at end_batch() (conflation: the answer a reader gets
        is the same; a stream subscriber skips prices that lived for less
        than one read, counted in `conflated`)."""
        if self._pending is None:
            self._pending = {}

    def end_batch(self) -> None:
        """Write the batch's answers to the table in one update."""
        pending, self._pending = self._pending, None
        if not pending:
            return
        bodies = {}
        seq = self._seq
        for asset, (price, ts, source, quote, stale, age_s) in pending.items():
            seq += 1
            bodies[asset] = price_body(asset, price, int(ts * 1000), source, seq, stale, quote,
                                       age_s)
        self._seq = seq
        if len(bodies) == 1:
            self.table.set(asset, bodies[asset])
        else:
            self.table.update(bodies)
        self.published += len(bodies)

    def check(self) -> None:
        """Fall back from stale sources; flag assets no fresh source quotes.

        A stale asset's answer carries ``"stale": true`` and ``age_s``, the
        seconds since its source last spoke; it is republished about once a
        second so the age stays true."""
        now = time.monotonic()
        fresh = [s for s in self.sources if not self._is_stale(s, now)]
        ranked = [s for s in self.source_priority if s in fresh] + \
            sorted((s for s in fresh if s not in self.source_priority),
                   key=lambda s: -self.sources[s].last_seen)
        for asset, source in list(self.active.items()):
            if not self._is_stale(source, now):
                continue
            prio = self.asset_priority.get(asset, ())
            candidates = [s for s in prio if s in fresh] + [s for s in ranked if s not in prio]
            replacement = next((s for s in candidates if asset in self.sources[s].last_price),
                               None)
            if replacement is not None:
                price, ts, quote = self.sources[replacement].last_price[asset]
                self.active[asset] = replacement
                self.fallbacks += 1
                self.stale_assets.discard(asset)
                self._publish(asset, price, ts, replacement, quote, stale=False)
            elif asset not in self.stale_assets or now - self._stale_published[asset] >= 1.0:
                price, ts, quote = self.sources[source].last_price[asset]
                self.stale_assets.add(asset)
                self._stale_published[asset] = now
                self._publish(asset, price, ts, source, quote, stale=True,
                              age_s=now - self.sources[source].last_seen)

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            self.check()

    def health(self) -> dict:
        """Per-source and per-asset health, for stats and /admin/stats (with
        the feed's own, per exchange, when it keeps one)."""
        now = time.monotonic()
        out = {
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
            "unknown_asset_names": sorted(self._unknown_logged),
            "feed_state": self.feed_state,
            "refused": self.refused,
            "refused_jumps": self.refused_jumps,
            "conflated": self.conflated,
        }
        feed_health = getattr(self.feed, "health", None)
        if callable(feed_health):
            out["exchanges"] = feed_health()
            # Ticks the feed dropped because this publisher fell a queue behind.
            out["feed_dropped"] = getattr(self.feed, "dropped", 0)
            # Items the feed handed to on_tick that raised (a bug here, counted).
            out["feed_sink_errors"] = getattr(self.feed, "sink_errors", 0)
        return out
