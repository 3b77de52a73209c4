"""API keys: tiers, and the usage flusher that keeps the native table and
the key store (`serve/stores/`) in step.

The native `APIKeyTable` enforces limits and counts requests; the key store
persists keys and usage:

* `UsageFlusher` moves each key's new `admitted` count into SQLite in one
  transaction every interval (100 ms by default) and once more on stop, and
  picks up keys added, re-tiered or revoked by other processes (the CLI).

A clean stop loses no count; a crash loses at most one interval.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from beastnet import APIKeyTable, BeastnetError, api_key_id

if TYPE_CHECKING:
    from beastnet.serve.stores.base import Keys

__all__ = ["DEFAULT_TIERS", "KEY_PREFIX_CHARS", "MIN_SECRET_KEY_CHARS", "KeyStoreError",
           "Tier", "UsageFlusher", "api_key_id", "configured_tiers", "current_month",
           "key_prefix", "new_key_row", "stored_key_id"]

log = logging.getLogger("beastnet.serve.keys")

# A key chosen by hand (`beastnet keys add --key`) must be at least this long:
# a short one can be guessed.  Generated keys have 32 random URL-safe characters.
MIN_SECRET_KEY_CHARS = 16

# What listings and confirmations show of a key: enough to tell keys apart,
# too few to use one.  Stores keep it beside the key's ID (its SHA-256).
KEY_PREFIX_CHARS = 10


def key_prefix(key: str) -> str:
    """A key's display prefix (a key ID shows its own first characters)."""
    return key[:KEY_PREFIX_CHARS] + "…"


def new_key_row(key: Optional[str], prefix: Optional[str] = None) -> tuple[str, str, str]:
    """(key as given or generated, its ID, its display prefix) for a store's
    `add`.  Given an ID (a change another node made), the ID is kept with
    the prefix that came with it: the key itself is known only to its owner."""
    key = key or "bk_" + secrets.token_urlsafe(24)
    if key.startswith("sha256:"):
        try:
            return key, api_key_id(key), prefix or key_prefix(key)
        except ValueError as exc:
            raise KeyStoreError(str(exc)) from None
    if not (1 <= len(key) <= 64 and key.isascii() and key.isprintable() and " " not in key):
        raise KeyStoreError("a key is 1-64 printable ASCII characters without spaces")
    return key, api_key_id(key), key_prefix(key)


def stored_key_id(key: str) -> str:
    """The ID a store keeps for `key` (a key or already an ID)."""
    try:
        return api_key_id(key)
    except (ValueError, UnicodeEncodeError):
        raise KeyStoreError("a key is 1-64 printable ASCII characters without spaces") from None


class KeyStoreError(BeastnetError):
    """The key store file is unreadable, corrupt, locked, or a request to it is invalid."""


@dataclass(frozen=True)
class Tier:
    """Limits shared by every key of a tier.  qps=0: no rate limit; monthly_cap=0: no cap.
    The WebSocket feed: `stream` says whether the tier's keys may open it;
    `stream_connections` caps streams open at once per key (0: no cap) and
    `stream_symbols` symbols per stream (0: the server's default).
    `shed_last`: an overloaded server's governor sheds the tier's requests
    only at its hard bound, after every other tier's (partners)."""

    name: str
    qps: float
    burst: int
    monthly_cap: int
    stream: bool = False
    stream_connections: int = 0
    stream_symbols: int = 0
    shed_last: bool = False


DEFAULT_TIERS: dict[str, Tier] = {
    "public": Tier("public", qps=100.0, burst=10, monthly_cap=1_000_000),
    "pro": Tier("pro", qps=2_000.0, burst=200, monthly_cap=100_000_000),
    "partner": Tier("partner", qps=0.0, burst=1, monthly_cap=0, stream=True, shed_last=True),
}

def configured_tiers(overrides: Mapping[str, Mapping[str, float]]) -> dict[str, Tier]:
    """DEFAULT_TIERS with a config's `[tiers.NAME]` tables applied: a known
    tier keeps the limits a table leaves out; a new tier starts unlimited."""
    tiers = dict(DEFAULT_TIERS)
    for name, limits in overrides.items():
        base = tiers.get(name, Tier(name, 0.0, 1, 0))
        tiers[name] = Tier(name, float(limits.get("qps", base.qps)),
                           int(limits.get("burst", base.burst)),
                           int(limits.get("monthly_cap", base.monthly_cap)),
                           bool(limits.get("stream", base.stream)),
                           int(limits.get("stream_connections", base.stream_connections)),
                           int(limits.get("stream_symbols", base.stream_symbols)),
                           bool(limits.get("shed_last", base.shed_last)))
    return tiers


def current_month(now: Optional[float] = None) -> str:
    return time.strftime("%Y-%m", time.gmtime(time.time() if now is None else now))


class UsageFlusher:
    """Persists `api_keys`' admitted counts into `store` every `interval_s`.

    Runs on its own thread (SQLite calls block).  `stop()` flushes once more,
    so a clean stop loses nothing.  If a flush fails, its counts are kept as
    they are, under their batch number, and sent again before anything newer:
    the store skips a number it applied already (Usage.add_usage), so a
    flush whose COMMIT went through unseen is never counted twice.
    """

    def __init__(self, store: "Keys", api_keys: APIKeyTable, interval_s: float = 0.1,
                 resync_s: float = 1.0,
                 after_sync: Optional[Callable[[], None]] = None) -> None:
        self.store = store
        self.api_keys = api_keys
        self.interval_s = interval_s
        self.resync_s = resync_s
        self.flushes = 0
        self.flush_errors = 0
        self.reloads = 0                        # key changes picked up from the store
        self.last_error: Optional[BaseException] = None
        self._flushed: dict[str, int] = {k: v[0] for k, v in api_keys.usage().items()}
        self.writer = uuid.uuid4().hex          # this process's batch numbers (add_usage)
        self._seq = 0
        self._batch: Optional[tuple[dict[str, int], int, str]] = None  # deltas, number, month
        self._month = current_month()
        self.after_sync = after_sync            # called (on this thread) after each reload
        self._version: Optional[tuple[int, ...]] = None     # None: not read yet (store down)
        try:
            self._version = store.version()
        except KeyStoreError as exc:
            self.last_error = exc
        self._changed = threading.Event()       # told of a change: resync without waiting
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beastnet-usage", daemon=True)

    def start(self) -> "UsageFlusher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def flush(self) -> int:
        """Persist every count admitted since the last flush; return how many
        (0 when the store failed: the batch is kept for the next flush)."""
        usage = self.api_keys.usage()
        month = current_month()
        if self._batch is None:
            deltas = {k: v[0] - self._flushed.get(k, 0) for k, v in usage.items()
                      if v[0] != self._flushed.get(k, 0)}
            if deltas:
                self._seq += 1
                self._batch = (deltas, self._seq, self._month)
        sent = 0
        if self._batch is not None:
            deltas, seq, batch_month = self._batch
            try:
                self.store.add_usage(deltas, batch_month, (self.writer, seq))
            except KeyStoreError as exc:
                self.flush_errors += 1
                self.last_error = exc
                return 0
            self._batch = None
            for k, n in deltas.items():
                self._flushed[k] = self._flushed.get(k, 0) + n
            sent = sum(deltas.values())
        self.flushes += 1
        if month != self._month:                     # a new month: caps start again
            self._month = month
            for key in usage:
                self.api_keys.set_month_used(key, 0)
        return sent

    def _run(self) -> None:
        next_sync = time.monotonic() + self.resync_s
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
                if self._changed.is_set() or time.monotonic() >= next_sync:
                    self._changed.clear()
                    next_sync = time.monotonic() + self.resync_s
                    self.resync()
            except Exception as exc:            # noqa: BLE001 - the thread must outlive it
                # A store's failure is a KeyStoreError, handled above; this is
                # a bug (a driver error not mapped to one, say), and a dead
                # thread would stop every flush and resync for good.
                self.flush_errors += 1
                self.last_error = exc
                log.exception("usage flush: %s", exc,
                              extra={"fields": {"event": "usage_flush_bug"}})

    def changed(self) -> None:
        """The store says its keys changed (a NOTIFY): resync at the next
        interval, not at the next poll.  Any thread may call it."""
        self._changed.set()

    def resync(self) -> bool:
        """Pick up keys added, re-tiered or revoked by another process; True
        when the store's keys had changed (and were reloaded)."""
        try:
            version = self.store.version()
            if version == self._version:
                return False
            self.flush()                          # persist first: sync reads the month's count
            active = self.store.sync_into(self.api_keys, self._month)
            self._version = version               # only now: a failed sync is tried again
        except KeyStoreError as exc:
            self.flush_errors += 1
            self.last_error = exc
            return False
        self.reloads += 1
        if self.after_sync is not None:
            self.after_sync()
        log.info("key store %s changed: %d active keys", self.store.path, active,
                 extra={"fields": {"event": "keys_reloaded", "active_keys": active}})
        return True
