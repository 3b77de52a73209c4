"""API keys and their usage as a component: the native `APIKeyTable` the
engines check, filled from the key store, its usage flushed back by the
`UsageFlusher`, and the /admin/keys route."""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Mapping, Optional

from beastnet import Answer, APIKeyTable, MissRequest, error_answer
from beastnet.counters import DATABASE_COUNTERS
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute, query_args
from beastnet.serve.component import Component
from beastnet.serve.keycache import KeyCache, KeyMisses, set_key_row
from beastnet.serve.keys import KeyStoreError, UsageFlusher, key_prefix, stored_key_id
from beastnet.serve.metrics import key_families

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService
    from beastnet.serve.stores import Keys

__all__ = ["ApiKeys"]

log = logging.getLogger("beastnet.serve.apikeys")


class ApiKeys(Component):
    """Registered before the engines: they are given `host.api_keys` at start."""

    name = "api_keys"
    off_paths = ("/admin/keys",)
    off_hint = "keys are off (no --keystore or --database)"

    def __init__(self, host: "PriceService", store: "Keys", created: bool = False) -> None:
        self.host = host
        self.store = store
        self.created = created          # the store's file is new
        self.api_keys = APIKeyTable()
        self.flusher: Optional[UsageFlusher] = None
        self.misses: Optional[KeyMisses] = None     # the miss path (PostgreSQL only)
        # Each key's tier for /metrics, read again only when the store's
        # version moves: a scrape of 10k keys re-reading them cost ~70 ms.
        self._tiers: dict[str, str] = {}
        self._tiers_version: Optional[tuple] = None
        self.tier_reads = 0             # how often the tiers were read (tests count them)

    @classmethod
    def build(cls, host: "PriceService") -> Optional["ApiKeys"]:
        keys = host.stores.keys
        return cls(host, keys, host.stores.created) if keys is not None else None

    async def start(self) -> None:
        store, path, cfg = self.store, self.store.path, self.host.cfg
        db: Any = getattr(store, "db", None)
        on_postgres = hasattr(store, "lookup")
        if on_postgres and db.down is not None:
            active = self._start_from_cache(db.down)
        else:
            active = store.sync_into(self.api_keys)
            self._save_cache()
        self.host.api_keys = self.api_keys
        self.flusher = UsageFlusher(store, self.api_keys, interval_s=cfg.usage_flush_interval_s,
                                    after_sync=self._save_cache if on_postgres else None).start()
        if on_postgres:
            self._listen(db)
            self.misses = KeyMisses(self.api_keys, store,  # type: ignore[arg-type]
                                    self._cluster_node, interval_s=cfg.key_miss_interval_s,
                                    negative_ttl_s=cfg.negative_key_ttl_s).start()
        if self.created:
            log.warning("created key store %s", os.path.abspath(path),
                        extra={"fields": {"event": "keystore_created"}})
        log.info("key store %s: %d active keys", path, active)
        try:
            unknown = store.unknown_tiers()
        except KeyStoreError:               # the database is down: started from the cache
            unknown = {}
        for tier, count in sorted(unknown.items()):
            log.warning("key store %s: %d active key(s) of unknown tier %r are refused; "
                        "define [tiers.%s] in the config", path, count, tier, tier,
                        extra={"fields": {"event": "unknown_tier", "tier": tier, "keys": count}})

    async def stop(self) -> None:
        if self.misses is not None:
            await self.misses.stop()
        if self.flusher is not None:
            self.flusher.stop()                 # the last flush: a clean stop loses no count

    # -- PostgreSQL: the key cache, change notices, the miss path (serve/keycache.py) ----

    def _key_cache(self) -> Optional[KeyCache]:
        path = self.host.cfg.key_cache
        return KeyCache(path) if path and hasattr(self.store, "lookup") else None

    def _save_cache(self) -> None:
        """The keys just read from the database, for a start while it is down."""
        cache = self._key_cache()
        if cache is None:
            return
        try:
            cache.save(self.store.list())
        except KeyStoreError as exc:
            log.warning("key cache not saved: %s", exc)
        db: Any = getattr(self.store, "db")
        if self.flusher is not None and not db.listening():    # back after an outage
            self._listen(db)

    def _start_from_cache(self, down: KeyStoreError) -> int:
        """The database is out of reach: the keys cached by the last run, or
        a refusal to start (one line; `serve` exits 1)."""
        cache = self._key_cache()
        cached = cache.load() if cache is not None else None
        if cache is None or cached is None:
            where = f"no key cache at {os.path.abspath(cache.path)}" if cache else \
                "the key cache is off (key_cache = \"\")"
            raise KeyStoreError(f"{down}; {where}: nothing to serve keys from")
        saved_at, rows = cached
        active = sum(set_key_row(self.api_keys, self.store.tiers, *row) for row in rows)
        log.warning("%s; serving the %d active keys cached in %s at %s until it answers",
                    down, active, os.path.abspath(cache.path),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved_at)),
                    extra={"fields": {"event": "keys_from_cache", "active_keys": active,
                                      "key_cache": os.path.abspath(cache.path)}})
        return active

    def _listen(self, db: Any) -> None:
        """Key changes NOTIFYed by the database reach this node at once (the
        version poll stays: a notice lost with its connection is caught
        within resync_s)."""
        from beastnet.serve.stores.postgres import KEYS_CHANNEL
        flusher = self.flusher
        assert flusher is not None
        try:
            db.listen(KEYS_CHANNEL, lambda payload: flusher.changed())
        except KeyStoreError as exc:
            log.warning("key change notices off (the version poll goes on): %s", exc)

    def _cluster_node(self) -> Any:
        cluster: Any = self.host.component("cluster")
        return cluster.node if cluster is not None else None

    def active_keys(self) -> int:
        return sum(1 for v in self.api_keys.usage().values() if not v[3])

    def database(self) -> dict[str, int]:
        """The DATABASE_COUNTERS (counters.py): the pool's and the miss
        path's; empty on SQLite."""
        db: Any = getattr(self.store, "db", None)
        if self.misses is None or db is None:
            return {}
        out = dict(db.pool_stats())
        out.update({f"key_{name}" if name not in ("noted", "dropped") else f"key_misses_{name}":
                    value for name, value in self.misses.counts.items()})
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals (for the cluster snapshot)."""
        if self.flusher is None:
            return {}
        return {"keys": {"flushes": self.flusher.flushes,
                         "flush_errors": self.flusher.flush_errors, **self.database()}}

    def stats(self) -> dict[str, Any]:
        if self.flusher is None:
            return {}
        usage = self.api_keys.usage()
        out: dict[str, Any] = {"keys": len(usage), "flushes": self.flusher.flushes,
               "flush_errors": self.flusher.flush_errors,
               "admitted": sum(v[0] for v in usage.values()),
               "rate_limited": sum(v[1] for v in usage.values()),
               "over_quota": sum(v[2] for v in usage.values())}
        database = self.database()
        if database:
            db: Any = self.store.db  # type: ignore[attr-defined]
            out["database"] = {"url": db.path, "reachable": db.reachable, **database}
        return {"api_keys": out}

    def key_tiers(self) -> dict[str, str]:
        """Key ID -> tier, read from the store when its version changed since
        the last read (one small query, not the whole key list, per scrape).
        The store down: the last tiers read (none yet: totals under "unknown")."""
        try:
            version = self.store.version()
            if version != self._tiers_version:
                self._tiers = {row["key"]: row["tier"] for row in self.store.list()}
                self._tiers_version = version
                self.tier_reads += 1
        except KeyStoreError:
            pass
        return self._tiers

    def families(self) -> list[MetricFamily]:
        families = key_families(self.api_keys.usage(), self.key_tiers())
        database = self.database()
        for counter in DATABASE_COUNTERS if database else ():
            families.append(MetricFamily(f"beastnet_keys_{counter.name}", counter.kind,
                                         counter.help)
                            .add(database.get(counter.name, 0)))
        return families

    def routes(self) -> list[AdminRoute]:
        return [AdminRoute("/admin/keys", ("POST",), self._key_change)]

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        if "usage_flush_interval_s" in changes:
            self.set_flush_interval(self.host.cfg.usage_flush_interval_s)

    def set_flush_interval(self, seconds: float) -> None:
        """The usage flusher's interval from its next round on (the governor's
        hook for background drops)."""
        if self.flusher is not None:
            self.flusher.interval_s = seconds

    async def _key_change(self, request: MissRequest) -> Answer:
        """POST /admin/keys?op=add|revoke|tier&key=K[&tier=T]: with --redis the
        change goes to the shared store and every node (this one included)
        applies it from pub/sub; alone, to the local store and table."""
        query = query_args(request)
        op, key, tier = query.get("op"), query.get("key"), query.get("tier")
        if op not in ("add", "revoke", "tier") or not key or (op != "revoke" and not tier):
            return error_answer("bad_request",
                                "op=add|revoke|tier and key=K (and tier=T but for revoke)")
        if tier is not None and tier not in self.store.tiers:
            return error_answer("bad_request", f"unknown tier {tier!r}")
        try:        # the table, the stores and Redis know a key by its ID only
            key_id = stored_key_id(key)
        except KeyStoreError as exc:
            return error_answer("bad_request", str(exc))
        prefix = "" if key == key_id else key_prefix(key)
        cluster: Any = self.host.component("cluster")
        if cluster is not None:
            nodes = await cluster.node.publish_key(op, key_id, tier, prefix=prefix)
            if nodes is None:
                return cluster.unavailable()
            return Answer({"op": op, "key": key, "scope": "cluster", "nodes_notified": nodes})
        from beastnet.serve.cluster import apply_key_change
        apply_key_change(self.api_keys, self.store, op, key_id, tier, prefix=prefix)
        return Answer({"op": op, "key": key, "scope": "node"})
