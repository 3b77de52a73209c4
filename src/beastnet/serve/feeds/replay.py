"""The replay feed: ticks from a JSON-lines or CSV file."""
from __future__ import annotations

import asyncio
import csv
import logging
import time
from typing import TYPE_CHECKING, AsyncIterator, Iterable, Optional

import orjson

from beastnet.serve.feeds.registry import register_feed
from beastnet.serve.feeds.base import Feed, Tick, price_text

if TYPE_CHECKING:
    from beastnet.serve.config import ServeConfig

__all__ = ["ReplayFeed"]

log = logging.getLogger("beastnet.serve.feeds")


class ReplayFeed(Feed):
    """Ticks from a file: JSON lines (``{"asset","price","ts","source"}``, an
    optional ``quote``) or CSV with a header naming those columns.  ``speed``
    1.0 replays at recorded pace, 10.0 ten times faster, 0 as fast as
    possible.  Lines that cannot be read are logged with their line number,
    kept in ``errors``, and skipped.  (A recording of raw exchange messages is
    played by the exchange feed's replay, through the adapters.)"""

    name = "replay"

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
            raw = data["price"]
            price = price_text(raw)
            if price is None:
                raise ValueError(f"price {raw!r} is not a positive number")
            return Tick(str(data["asset"]), price, str(data.get("source") or self.default_source),
                        float(data["ts"]), str(data.get("quote") or "USD"))
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


def is_exchange_recording(path: str) -> bool:
    """Whether `path` is a `beastnet feeds record` file (raw exchange
    messages) rather than a file of ticks."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "x" in first and "m" in first
    return False


@register_feed("replay")
def _open_replay(cfg: "ServeConfig") -> Feed:
    """A file of ticks, or a recording of the exchanges played back through
    the same adapters (`beastnet feeds record`)."""
    if not cfg.feed_path:
        raise ValueError("feed 'replay' needs feed_path")
    if is_exchange_recording(cfg.feed_path):
        from beastnet.serve.feeds.exchanges.feed import ExchangeReplayFeed, settings_from
        return ExchangeReplayFeed(cfg.feed_path, speed=cfg.replay_speed, **settings_from(cfg))
    return ReplayFeed(cfg.feed_path, speed=cfg.replay_speed)
