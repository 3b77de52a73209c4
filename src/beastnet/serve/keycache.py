"""Keys in three layers (`serve --database`): the native `APIKeyTable`
first, then the cluster's Redis (with `--redis`), then PostgreSQL.

* **The miss path.**  A request whose key the native table lacks is answered
  401 at once, and its key's digest is noted in the table's ring
  (`APIKeyTable.note_unknown`, _limits.pxi): no native thread ever waits for
  a lookup.  Every `interval_s` the control plane sweeps the ring and looks
  the whole batch up, Redis first (one pipeline), then PostgreSQL for what
  Redis lacks (one query, `PostgresKeyStore.lookup`); a key found is set in
  the native table (so its next request passes) and written through to
  Redis.  A key found nowhere is remembered as unknown for
  `negative_ttl_s`: a flood of one unknown key costs nothing past the
  first lookup, and a flood of ever-new keys costs one query a sweep, never
  one a request.
* **The key cache file.**  After each full read of the database the node
  writes the keys' IDs, tiers and states (never a key: only its SHA-256 ID)
  to `key_cache`; a node that starts while the database is down serves
  from that file, and refuses to start without one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from beastnet import APIKeyTable
from beastnet.serve.keys import KeyStoreError, Tier

if TYPE_CHECKING:
    from beastnet.serve.stores.postgres import PostgresKeyStore

__all__ = ["KeyCache", "KeyMisses", "set_key_row"]

log = logging.getLogger("beastnet.serve.keycache")

# Unknown keys remembered at once; past this the oldest are forgotten first
# (a flood of ever-new keys is bounded by the sweep, not by this memory).
NEGATIVE_MAX_KEYS = 100_000


def set_key_row(api_keys: APIKeyTable, tiers: Mapping[str, Tier], key_id: str, tier_name: str,
                revoked: bool, month_count: int) -> bool:
    """One stored key into the native table; True when it is active.  A
    revoked key, or one of a tier this node does not know (fail closed), is
    revoked if the table has it and never added (an added record would be
    live, unlimited, until the revoke that follows)."""
    tier = tiers.get(tier_name)
    if revoked or tier is None:
        api_keys.revoke(key_id)
        return False
    api_keys.set(key_id, qps=tier.qps, burst=tier.burst, monthly_cap=tier.monthly_cap,
                 month_used=month_count, ws_allowed=tier.stream,
                 ws_max_connections=tier.stream_connections,
                 ws_max_subscriptions=tier.stream_symbols)
    return True


class KeyCache:
    """The keys a node last read from the database, in a JSON file of its
    own (mode 0600, replaced atomically): IDs, tiers, states and this
    month's counts, never a key."""

    def __init__(self, path: str) -> None:
        self.path = path

    def save(self, rows: list[dict[str, Any]]) -> None:
        doc = {"saved_at": time.time(),
               "keys": [[r["key"], r["tier"], bool(r["revoked"]), int(r["month_count"])]
                        for r in rows]}
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".key-cache-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise KeyStoreError(f"key cache {self.path}: {exc.strerror}") from None

    def load(self) -> Optional[tuple[float, list[tuple[str, str, bool, int]]]]:
        """(saved_at, rows), or None when there is no usable file."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
            rows = [(str(k), str(t), bool(r), int(n)) for k, t, r, n in doc["keys"]]
            return float(doc["saved_at"]), rows
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("key cache %s is unusable (%s): not used", self.path, exc)
            return None


class KeyMisses:
    """The miss path (the module docstring): sweeps `api_keys`' unknown keys
    every `interval_s` on the control plane; `redis` returns the cluster
    node (or None) when asked, so a node without --redis goes straight to
    the database."""

    def __init__(self, api_keys: APIKeyTable, store: "PostgresKeyStore",
                 redis: Callable[[], Any], *, interval_s: float = 0.05,
                 negative_ttl_s: float = 5.0) -> None:
        self.api_keys = api_keys
        self.store = store
        self.redis = redis
        self.interval_s = interval_s
        self.negative_ttl_s = negative_ttl_s
        self._negative: dict[str, float] = {}     # key ID -> when to ask again (monotonic)
        self._task: Optional[asyncio.Task[None]] = None
        self.counts = {"noted": 0, "dropped": 0, "lookups": 0, "negative_hits": 0,
                       "redis_hits": 0, "db_hits": 0, "not_found": 0, "lookup_errors": 0}

    def start(self) -> "KeyMisses":
        self.api_keys.note_unknown(True)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self.api_keys.note_unknown(False)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except Exception as exc:        # noqa: BLE001 - the sweep must go on
                self.counts["lookup_errors"] += 1
                log.warning("key lookup: %s", exc)

    async def sweep(self) -> int:
        """Look up the unknown keys noted since the last sweep; how many
        were found (and are now in the native table)."""
        ids, noted, dropped = self.api_keys.unknown_keys()
        self.counts["noted"], self.counts["dropped"] = noted, dropped
        now = time.monotonic()
        wanted = []
        for key_id in ids:
            until = self._negative.get(key_id)
            if until is not None and until > now:
                self.counts["negative_hits"] += 1
            else:
                wanted.append(key_id)
        if not wanted:
            return 0
        self.counts["lookups"] += 1
        found: dict[str, tuple[str, bool, int]] = {}
        node = self.redis()
        if node is not None:
            shared = await node.read_key_records(wanted) or {}
            for key_id, fields in shared.items():
                found[key_id] = (fields.get("tier", ""), fields.get("revoked") == "1", 0)
            self.counts["redis_hits"] += len(found)
        rest = [k for k in wanted if k not in found]
        if rest:
            loop = asyncio.get_running_loop()
            try:
                from_db = await loop.run_in_executor(None, self.store.lookup, rest)
            except KeyStoreError as exc:
                self.counts["lookup_errors"] += 1
                log.debug("key lookup: %s", exc)
                return 0            # not cached as unknown: asked again when seen again
            found.update(from_db)
            self.counts["db_hits"] += len(from_db)
            if node is not None and from_db:
                await node.write_key_records([(k, t, r) for k, (t, r, _) in from_db.items()])
        until = time.monotonic() + self.negative_ttl_s
        for key_id in wanted:
            row = found.get(key_id)
            if row is None or not set_key_row(self.api_keys, self.store.tiers, key_id, *row):
                self.counts["not_found"] += 1
                self._negative.pop(key_id, None)
                self._negative[key_id] = until
                while len(self._negative) > NEGATIVE_MAX_KEYS:
                    del self._negative[next(iter(self._negative))]
        return len(found)
