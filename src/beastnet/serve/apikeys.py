"""API keys and their usage as a component: the native `APIKeyTable` the
engines check, filled from the key store, its usage flushed back by the
`UsageFlusher`, and the /admin/keys route."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

from beastnet import Answer, APIKeyTable, MissRequest, error_answer
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute, query_args
from beastnet.serve.component import Component
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
    off_hint = "keys are off (no --keystore)"

    def __init__(self, host: "PriceService", store: "Keys", created: bool = False) -> None:
        self.host = host
        self.store = store
        self.created = created          # the store's file is new
        self.api_keys = APIKeyTable()
        self.flusher: Optional[UsageFlusher] = None

    @classmethod
    def build(cls, host: "PriceService") -> Optional["ApiKeys"]:
        keys = host.stores.keys
        return cls(host, keys, host.stores.created) if keys is not None else None

    async def start(self) -> None:
        store, path = self.store, self.store.path
        active = store.sync_into(self.api_keys)
        self.host.api_keys = self.api_keys
        self.flusher = UsageFlusher(store, self.api_keys,
                                    interval_s=self.host.cfg.usage_flush_interval_s).start()
        if self.created:
            log.warning("created key store %s", os.path.abspath(path),
                        extra={"fields": {"event": "keystore_created"}})
        log.info("key store %s: %d active keys", path, active)
        for tier, count in sorted(store.unknown_tiers().items()):
            log.warning("key store %s: %d active key(s) of unknown tier %r are refused; "
                        "define [tiers.%s] in the config", path, count, tier, tier,
                        extra={"fields": {"event": "unknown_tier", "tier": tier, "keys": count}})

    async def stop(self) -> None:
        if self.flusher is not None:
            self.flusher.stop()                 # the last flush: a clean stop loses no count

    def active_keys(self) -> int:
        return sum(1 for v in self.api_keys.usage().values() if not v[3])

    def counters(self) -> dict[str, dict[str, int]]:
        """Monotonic totals (for the cluster snapshot)."""
        if self.flusher is None:
            return {}
        return {"keys": {"flushes": self.flusher.flushes,
                         "flush_errors": self.flusher.flush_errors}}

    def stats(self) -> dict[str, Any]:
        if self.flusher is None:
            return {}
        usage = self.api_keys.usage()
        return {"api_keys": {"keys": len(usage), "flushes": self.flusher.flushes,
                             "flush_errors": self.flusher.flush_errors,
                             "admitted": sum(v[0] for v in usage.values()),
                             "rate_limited": sum(v[1] for v in usage.values()),
                             "over_quota": sum(v[2] for v in usage.values())}}

    def families(self) -> list[MetricFamily]:
        tiers = {row["key"]: row["tier"] for row in self.store.list()}
        return key_families(self.api_keys.usage(), tiers)

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
