"""API keys, tiers and usage in SQLite: the embedded key store.

The native `APIKeyTable` enforces limits and counts requests; this module
persists keys and usage and keeps the two in step:

* `KeyStore` owns the SQLite file (keys, tiers, usage per key and month);
* `UsageFlusher` moves each key's new `admitted` count into SQLite in one
  transaction every interval (100 ms by default) and once more on stop, and
  picks up keys added, re-tiered or revoked by other processes (the CLI).

A clean stop loses no count; a crash loses at most one interval.
"""
from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from beastnet import APIKeyTable, BeastnetError

__all__ = ["DEFAULT_TIERS", "MIN_SECRET_KEY_CHARS", "KeyStore", "KeyStoreError", "Tier",
           "UsageFlusher", "configured_tiers", "current_month"]

log = logging.getLogger("beastnet.serve.keys")

# A key chosen by hand (`beastnet keys add --key`) must be at least this long:
# a short one can be guessed.  Generated keys have 32 random URL-safe characters.
MIN_SECRET_KEY_CHARS = 16


class KeyStoreError(BeastnetError):
    """The key store file is unreadable, corrupt, locked, or a request to it is invalid."""


@dataclass(frozen=True)
class Tier:
    """Limits shared by every key of a tier.  qps=0: no rate limit; monthly_cap=0: no cap.
    The WebSocket feed: `stream` says whether the tier's keys may open it;
    `stream_connections` caps streams open at once per key (0: no cap) and
    `stream_symbols` symbols per stream (0: the server's default)."""

    name: str
    qps: float
    burst: int
    monthly_cap: int
    stream: bool = False
    stream_connections: int = 0
    stream_symbols: int = 0


DEFAULT_TIERS: dict[str, Tier] = {
    "public": Tier("public", qps=100.0, burst=10, monthly_cap=1_000_000),
    "pro": Tier("pro", qps=2_000.0, burst=200, monthly_cap=100_000_000),
    "partner": Tier("partner", qps=0.0, burst=1, monthly_cap=0, stream=True),
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
                           int(limits.get("stream_symbols", base.stream_symbols)))
    return tiers


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key        TEXT PRIMARY KEY,
    tier       TEXT NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS usage (
    key    TEXT NOT NULL,
    month  TEXT NOT NULL,           -- 'YYYY-MM', UTC
    count  INTEGER NOT NULL,
    PRIMARY KEY (key, month)
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def current_month(now: Optional[float] = None) -> str:
    return time.strftime("%Y-%m", time.gmtime(time.time() if now is None else now))


class KeyStore:
    """SQLite-backed API keys and usage.  One connection per KeyStore; safe to
    use from several threads (calls are serialised by a lock)."""

    def __init__(self, path: str, tiers: Optional[Mapping[str, Tier]] = None,
                 timeout_s: float = 5.0) -> None:
        self.path = path
        self.tiers = dict(tiers or DEFAULT_TIERS)
        self._lock = threading.Lock()
        self._own_changes = 0
        try:
            self._db = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise KeyStoreError(f"key store {path}: integrity check failed: {check}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise KeyStoreError(f"key store {path}: {exc}") from exc
        except KeyStoreError:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise KeyStoreError(f"key store {self.path}: {exc}") from exc

    def _tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise KeyStoreError(f"unknown tier {name!r} (known: {', '.join(self.tiers)}; define "
                                f"others under [tiers.NAME] in a --config file)") from None

    # -- tables kept beside the keys (webhook subscriptions) ----------------------

    def query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """Run one statement on this store's connection; KeyStoreError on failure."""
        return self._run(sql, args)

    def script(self, sql: str) -> None:
        """Run several statements (a schema) on this store's connection."""
        with self._lock:
            try:
                self._db.executescript(sql)
            except sqlite3.DatabaseError as exc:
                raise KeyStoreError(f"key store {self.path}: {exc}") from exc

    def insert_many(self, sql: str, rows: list[tuple]) -> None:
        """One statement for each row, all in one transaction: all or nothing."""
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(sql, rows)
            except sqlite3.DatabaseError as exc:
                raise KeyStoreError(f"key store {self.path}: {exc}") from exc

    # -- keys --------------------------------------------------------------------

    def add(self, tier: str = "public", key: Optional[str] = None, label: str = "") -> str:
        """Create a key (a random one unless given) and return it."""
        self._tier(tier)
        key = key or "bk_" + secrets.token_urlsafe(24)
        if not (1 <= len(key) <= 64 and key.isascii() and key.isprintable() and " " not in key):
            raise KeyStoreError("a key is 1-64 printable ASCII characters without spaces")
        try:
            self._run("INSERT INTO api_keys (key, tier, label, created_at) VALUES (?, ?, ?, ?)",
                      (key, tier, label, time.time()))
        except KeyStoreError as exc:
            raise KeyStoreError(f"key {key!r} exists already") if "UNIQUE" in str(exc) else exc
        self._own_changes += 1
        return key

    def revoke(self, key: str) -> None:
        if not self._run("UPDATE api_keys SET revoked_at = ? WHERE key = ? AND revoked_at IS NULL "
                         "RETURNING key", (time.time(), key)):
            raise KeyStoreError(f"no active key {key!r}")
        self._own_changes += 1

    def set_tier(self, key: str, tier: str) -> None:
        self._tier(tier)
        if not self._run("UPDATE api_keys SET tier = ? WHERE key = ? RETURNING key", (tier, key)):
            raise KeyStoreError(f"no key {key!r}")
        self._own_changes += 1

    def list(self, month: Optional[str] = None) -> list[dict]:
        """Every key with its tier, state and usage this month."""
        rows = self._run(
            "SELECT k.key, k.tier, k.label, k.created_at, k.revoked_at, COALESCE(u.count, 0) "
            "FROM api_keys k LEFT JOIN usage u ON u.key = k.key AND u.month = ? ORDER BY k.created_at",
            (month or current_month(),))
        return [{"key": r[0], "tier": r[1], "label": r[2], "created_at": r[3],
                 "revoked": r[4] is not None, "month_count": r[5]} for r in rows]

    def unknown_tiers(self) -> dict[str, int]:
        """Active keys whose tier this store does not know, counted by tier.
        Such keys are refused (fail closed) until their tier is configured."""
        counts: dict[str, int] = {}
        for (tier,) in self._run("SELECT tier FROM api_keys WHERE revoked_at IS NULL"):
            if tier not in self.tiers:
                counts[tier] = counts.get(tier, 0) + 1
        return counts

    def usage(self, key: str, month: Optional[str] = None) -> int:
        rows = self._run("SELECT count FROM usage WHERE key = ? AND month = ?",
                         (key, month or current_month()))
        return rows[0][0] if rows else 0

    def add_usage(self, deltas: Mapping[str, int], month: str) -> None:
        """Add request counts for `month`, all in one transaction."""
        rows = [(k, month, n) for k, n in deltas.items() if n]
        if not rows:
            return
        with self._lock:
            try:
                with self._db:                      # one transaction: all or nothing
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT INTO usage (key, month, count) VALUES (?, ?, ?) "
                        "ON CONFLICT (key, month) DO UPDATE SET count = count + excluded.count",
                        rows)
            except sqlite3.DatabaseError as exc:
                raise KeyStoreError(f"key store {self.path}: usage flush failed: {exc}") from exc

    def version(self) -> tuple[int, int]:
        """Changes whenever keys change: through this store, or through another
        connection's commit (PRAGMA data_version, which ignores our own)."""
        return (self._run("PRAGMA data_version")[0][0], self._own_changes)

    def sync_into(self, api_keys: APIKeyTable, month: Optional[str] = None) -> int:
        """Make `api_keys` match the store: limits per tier, revocations, and
        each key's count for the month.  Returns the number of active keys."""
        month = month or current_month()
        rows = self._run(
            "SELECT k.key, k.tier, k.revoked_at, COALESCE(u.count, 0) FROM api_keys k "
            "LEFT JOIN usage u ON u.key = k.key AND u.month = ?", (month,))
        active = 0
        for key, tier_name, revoked_at, month_count in rows:
            if revoked_at is not None:
                api_keys.revoke(key)
                continue
            tier = self.tiers.get(tier_name)
            if tier is None:                         # tier removed from config: fail closed
                api_keys.revoke(key)
                continue
            api_keys.set(key, qps=tier.qps, burst=tier.burst, monthly_cap=tier.monthly_cap,
                         month_used=month_count, ws_allowed=tier.stream,
                         ws_max_connections=tier.stream_connections,
                         ws_max_subscriptions=tier.stream_symbols)
            active += 1
        return active


class UsageFlusher:
    """Persists `api_keys`' admitted counts into `store` every `interval_s`.

    Runs on its own thread (SQLite calls block).  `stop()` flushes once more,
    so a clean stop loses nothing.  If a flush fails, its counts stay pending
    and go out with the next one.
    """

    def __init__(self, store: KeyStore, api_keys: APIKeyTable, interval_s: float = 0.1,
                 resync_s: float = 1.0) -> None:
        self.store = store
        self.api_keys = api_keys
        self.interval_s = interval_s
        self.resync_s = resync_s
        self.flushes = 0
        self.flush_errors = 0
        self.last_error: Optional[BaseException] = None
        self._flushed: dict[str, int] = {k: v[0] for k, v in api_keys.usage().items()}
        self._month = current_month()
        self._version = store.version()
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
        """Persist every count admitted since the last flush; return how many."""
        usage = self.api_keys.usage()
        deltas = {k: v[0] - self._flushed.get(k, 0) for k, v in usage.items()}
        month = current_month()
        try:
            self.store.add_usage(deltas, self._month)
        except KeyStoreError as exc:
            self.flush_errors += 1
            self.last_error = exc
            return 0
        for k, v in usage.items():
            self._flushed[k] = v[0]
        self.flushes += 1
        if month != self._month:                     # a new month: caps start again
            self._month = month
            for key in usage:
                self.api_keys.set_month_used(key, 0)
        return sum(deltas.values())

    def _run(self) -> None:
        next_sync = time.monotonic() + self.resync_s
        while not self._stop.wait(self.interval_s):
            self.flush()
            if time.monotonic() >= next_sync:
                next_sync = time.monotonic() + self.resync_s
                self._resync()

    def _resync(self) -> None:
        """Pick up keys added, re-tiered or revoked by another process."""
        try:
            version = self.store.version()
            if version != self._version:
                self._version = version
                self.flush()                          # persist first: sync reads the month's count
                active = self.store.sync_into(self.api_keys, self._month)
                log.info("key store %s changed: %d active keys", self.store.path, active,
                         extra={"fields": {"event": "keys_reloaded", "active_keys": active}})
        except KeyStoreError as exc:
            self.flush_errors += 1
            self.last_error = exc
