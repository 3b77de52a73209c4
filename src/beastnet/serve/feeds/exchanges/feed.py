"""The exchanges feed: every configured exchange's connection, merged into one
stream of ticks for the publisher, and the replay of a recording of them."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import (IO, TYPE_CHECKING, Any, AsyncIterator, Callable, Mapping, Optional, Sequence,
                    Union)

import orjson

from beastnet.serve.assets import ASSETS
from beastnet.serve.feeds.base import Feed, SourceAlive, Tick
from beastnet.serve.feeds.exchanges.connection import ExchangeConnection, Recorder, run_together
from beastnet.serve.feeds.exchanges.routes import DEFAULT_ROUTES
from beastnet.serve.feeds.exchanges.spec import EXCHANGES
from beastnet.serve.feeds.registry import register_feed

if TYPE_CHECKING:
    from beastnet.serve.config import ServeConfig

__all__ = ["ExchangeFeed", "ExchangeReplayFeed", "JSONLRecorder", "exchange_assets"]

log = logging.getLogger("beastnet.serve.feeds.exchanges")

# Settings of one exchange a config may override ([feeds.exchanges.NAME]).
CONNECTION_SETTINGS = ("ws_url", "rest_url", "stale_after_s", "rest_interval_s", "rest_gap_s",
                       "rest_timeout_s", "backoff_base_s", "backoff_max_s", "open_timeout_s",
                       "ping_interval_s", "connect_delay_s", "rest_max_bytes")
Item = Union[Tick, SourceAlive]
Sink = Callable[[Item], None]
# (begin, end): called around the items of one socket read (see deliver_to)
Batch = tuple[Callable[[], None], Callable[[], None]]


def exchange_assets(routes: Mapping[str, Sequence[str]], assets: Sequence[str] = ASSETS,
                    only: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """exchange -> the assets it is asked for (as primary or fallback)."""
    out: dict[str, list[str]] = {}
    for asset in assets:
        for name in routes.get(asset, ()):
            if only is None or name in only:
                out.setdefault(name, []).append(asset)
    return out


class ExchangeFeed(Feed):
    """Ticks from the exchanges' public streams, one `ExchangeConnection` each.

    `routes` maps asset -> exchanges (primary first); `settings` maps an
    exchange to overrides of its connection (`CONNECTION_SETTINGS`).
    `source_stale_after_s` and `asset_priority` tell the publisher how long
    each exchange's price stays fresh and which exchange an asset prefers.
    `ws_client` picks the WebSocket client (`wsclient.CLIENTS`)."""

    name = "exchanges"

    def __init__(self, routes: Mapping[str, Sequence[str]] = DEFAULT_ROUTES,
                 assets: Sequence[str] = ASSETS, exchanges: Optional[Sequence[str]] = None,
                 settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 recorder: Optional[Recorder] = None, queue_size: int = 100_000,
                 ws_client: str = "native") -> None:
        settings = settings or {}
        unknown = sorted(set(settings) - set(EXCHANGES))
        if unknown:
            raise ValueError(f"unknown exchange {unknown[0]!r}: one of {', '.join(EXCHANGES)}")
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        self.dropped = 0
        # deliver_to's sink, called in the reader task of each connection;
        # None: items go through `queue` to whoever iterates the feed.
        self._sink: Optional[Sink] = None
        self._batch_hooks: Optional[Batch] = None
        self.sink_errors = 0
        self._sink_error_logged = 0.0
        self.connections: dict[str, ExchangeConnection] = {}
        for name, names in exchange_assets(routes, assets, exchanges).items():
            if name not in EXCHANGES:
                raise ValueError(f"unknown exchange {name!r} in the asset map")
            options = {k: v for k, v in settings.get(name, {}).items() if k in CONNECTION_SETTINGS}
            self.connections[name] = ExchangeConnection(EXCHANGES[name], names, self._emit,
                                                        recorder=recorder, ws_client=ws_client,
                                                        **options)
            self.connections[name].batch = self._batch
        self.source_stale_after_s = {n: c.fresh_for_s for n, c in self.connections.items()}
        self.asset_priority = {a: list(v) for a, v in routes.items()}

    def _emit(self, item: Item) -> None:
        sink = self._sink
        if sink is not None:
            try:
                sink(item)
            except Exception as exc:          # the sink's bug: counted, the stream reads on
                self._sink_failed(exc)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:             # the publisher fell behind: count, never block
            self.dropped += 1

    def _sink_failed(self, exc: BaseException) -> None:
        self.sink_errors += 1
        now = time.monotonic()
        if now - self._sink_error_logged >= 10.0:   # one line per 10 s, the count says the rest
            self._sink_error_logged = now
            log.error("feed %s: the sink refused an item (%d so far): %s: %s", self.name,
                      self.sink_errors, type(exc).__name__, exc)

    async def deliver_to(self, sink: Sink, batch: Optional[Batch] = None) -> None:
        """Run the feed, handing every item to `sink` in the task that read
        it (until cancelled).  The publisher's `on_tick` is synchronous, so a
        message goes from the socket to the table with no queue and no task
        switch; an exception from `sink` is counted in `sink_errors`.  With
        `batch` (begin, end), the items of one socket read come between a
        call of begin and one of end (the publisher writes the table once
        per read)."""
        self._sink = sink
        self._batch_hooks = batch
        try:
            await self._run_connections()
        finally:
            self._sink = None
            self._batch_hooks = None

    def _batch(self, begin: bool) -> None:
        hooks = self._batch_hooks
        if hooks is not None:
            try:
                hooks[0 if begin else 1]()
            except Exception as exc:          # the sink's bug: counted, the stream reads on
                self._sink_failed(exc)

    async def _run_connections(self) -> None:
        await run_together([c.run() for c in self.connections.values()])

    async def __aiter__(self) -> AsyncIterator[Item]:  # type: ignore[override]
        """The items through `queue` (one task switch each); the publisher
        uses `deliver_to` instead."""
        runner = asyncio.ensure_future(self._run_connections())
        try:
            while True:
                yield await self.queue.get()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        """Per-exchange state and counters."""
        return {name: conn.health() for name, conn in self.connections.items()}


class JSONLRecorder:
    """Writes what the exchanges send, one JSON line a message:
    ``{"t": receive time s, "x": exchange, "k": "ws"|"rest", "s": REST symbol, "m": raw}``."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.lines = 0

    def __call__(self, exchange: str, kind: str, symbol: Optional[str], raw: str,
                 received: float) -> None:
        self.fh.write(orjson.dumps({"t": received, "x": exchange, "k": kind, "s": symbol,
                                    "m": raw}) + b"\n")
        self.lines += 1


class ExchangeReplayFeed(ExchangeFeed):
    """Plays a `JSONLRecorder` file back through the same adapters, at the
    recorded pace times `speed` (0: as fast as possible)."""

    name = "replay"

    def __init__(self, path: str, speed: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.path = path
        self.speed = speed
        self.bad_lines = 0

    async def deliver_to(self, sink: Sink, batch: Optional[Batch] = None) -> None:
        """Play the file, handing each item to `sink` as it is parsed (one
        message a batch: a recording keeps no socket reads)."""
        self._sink = sink
        self._batch_hooks = batch
        try:
            async for _ in self._play():
                pass
        finally:
            self._sink = None

    async def __aiter__(self) -> AsyncIterator[Item]:  # type: ignore[override]
        async for item in self._play():
            yield item

    async def _play(self) -> AsyncIterator[Item]:
        """Feed the file through the adapters; yield what lands in `queue`
        (nothing when a sink takes the items)."""
        start = time.monotonic()
        first: Optional[float] = None
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                    conn = self.connections[rec["x"]]
                    received = float(rec["t"])
                    raw = rec["m"]
                except (ValueError, KeyError, TypeError) as exc:
                    self.bad_lines += 1
                    log.warning("%s:%d: skipped: %s", self.path, n, exc)
                    continue
                if first is None:
                    first = received
                if self.speed > 0:
                    delay = start + (received - first) / self.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif n % 1024 == 0:
                    await asyncio.sleep(0)
                if rec.get("k") == "rest":
                    try:
                        conn.on_rest_body(raw.encode(), rec.get("s"), received)
                    except (ValueError, KeyError, TypeError, IndexError) as exc:
                        conn._bad(exc, raw)
                else:
                    conn.on_message(raw, received)
                while not self.queue.empty():
                    yield self.queue.get_nowait()


def settings_from(cfg: "ServeConfig") -> dict[str, Any]:
    """The ExchangeFeed keyword arguments a ServeConfig gives."""
    routes = dict(DEFAULT_ROUTES)
    routes.update({a: list(v) for a, v in cfg.feed_assets.items()})
    return {"routes": routes, "settings": cfg.feed_exchanges,
            "exchanges": cfg.feed_exchange_names or None}


@register_feed("exchanges")
def _open_exchanges(cfg: "ServeConfig") -> Feed:
    return ExchangeFeed(**settings_from(cfg))
