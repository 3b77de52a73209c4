"""The Redis stores: webhook subscriptions a cluster shares (`serve --redis
URL --webhooks`, `beastnet webhooks --redis URL`), the shared key records
`beastnet keys --redis` writes (`RedisKeyChanges`), and the cluster's shared
profile (`RedisParameters`: `{bn}:profile`, read by a node as it starts).

A subscription is a hash `{bn}:webhook:<id>` (the fields of the SQLite row;
assets and secrets as JSON), its id in the set `{bn}:webhooks`.  Every change
bumps the counter `{bn}:webhooks:version` and is announced on the channel
`{bn}:webhook-changes` in the same MULTI, so a node hears it at once and a
node that missed the message sees the counter move at its next poll (one GET
a second).  Deliveries stay in each node's own key store (`webhook_log`):
a shared log would put a Redis write on every batch of every node for
nothing the push needs.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, List, Mapping, Optional

import orjson

from beastnet import ClusterError
from beastnet.serve.cluster import (KEY, KEYS_CHANNEL, PREFIX, PROFILE, key_record,
                                    queue_profile, redacted_url, redis)
from beastnet.serve.stores.sqlite import WebhookStore
from beastnet.serve.webhooks import SubscriptionRules, WebhookError, WebhookTier
from beastnet.serve.webhooks_cluster import live_nodes

__all__ = ["CHANGES_CHANNEL", "RedisKeyChanges", "RedisParameters", "RedisWebhookStore"]

log = logging.getLogger("beastnet.serve.stores.redis")

SUB = PREFIX + "webhook:"               # + id: hash of one subscription
SUBS = PREFIX + "webhooks"              # set: every subscription id
VERSION = PREFIX + "webhooks:version"   # counter: bumped by every change
CHANGES_CHANNEL = PREFIX + "webhook-changes"    # pub/sub: a subscription changed

# Fields kept as JSON in the hash; the rest are strings, two are floats.
_JSON_FIELDS = ("assets", "secrets")
_FLOAT_FIELDS = ("created_at", "changed_at")

# State changes are checked and made in one step: -1 no such subscription,
# 0 not in a state it may leave, 1 done (the version bumped, the change told).
SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if #ARGV > 4 then
  local cur = redis.call('HGET', KEYS[1], 'state')
  local ok = false
  for i = 5, #ARGV do if ARGV[i] == cur then ok = true end end
  if not ok then return 0 end
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'changed_at', ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""



class RedisWebhookStore(SubscriptionRules):
    """WebhookStore's interface on the cluster's Redis.  The delivery log
    goes to `log_store` (this node's SQLite key store); without one, the log
    calls say where the log is."""

    def __init__(self, url: str, tiers: Optional[Mapping[str, WebhookTier]] = None,
                 assets: Iterable[str] = (), allow_private: bool = False,
                 log_store: Optional[WebhookStore] = None, timeout_s: float = 2.0) -> None:
        super().__init__(tiers, assets, allow_private)
        if redis is None:
            raise ClusterError("--redis needs the redis client: pip install 'beastnet[cluster]'")
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                               socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise WebhookError(f"--redis {redacted_url(url)!r}: {exc}") from None
        self.url = redacted_url(url)        # for messages: never the password
        self.log_store = log_store
        self._set_state = self.client.register_script(SET_STATE)
        self._pubsub: Any = None
        self._listener: Any = None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener.join(5.0)
            self._listener = None
        if self._pubsub is not None:
            self._pubsub.close()
        self.client.close()
        if self.log_store is not None:
            self.log_store.close()

    def __enter__(self) -> "RedisWebhookStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            raise WebhookError(f"redis {self.url}: {exc}") from None

    def _changed(self, pipe: Any, sub_id: str) -> None:
        pipe.incr(VERSION)
        pipe.publish(CHANGES_CHANNEL, SUB + sub_id)

    # -- change notices --------------------------------------------------------------

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` (from a thread of its own) whenever a subscription
        changes anywhere in the cluster.  An outage is survived: the thread
        resubscribes, and the version poll catches what it missed."""
        def on_message(message: Any) -> None:
            on_change()

        def on_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
            log.debug("webhook changes: %s", exc)
            time.sleep(1.0)

        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._call(lambda: self._pubsub.subscribe(**{CHANGES_CHANNEL: on_message}))
        self._listener = self._pubsub.run_in_thread(sleep_time=0.5, daemon=True,
                                                    exception_handler=on_error)
        self._listener.name = "beastnet-webhook-changes"

    def live_nodes(self) -> list[str]:
        return self._call(lambda: live_nodes(self.client))   # type: ignore[no-any-return]

    def version(self) -> tuple:
        """Changes whenever a subscription changes on any node."""
        return (int(self._call(lambda: self.client.get(VERSION)) or 0),)

    # -- subscriptions -----------------------------------------------------------------

    def add(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
            label: str = "", resolve: bool = True) -> dict[str, Any]:
        """Validate and store a subscription; return it (with its first secret)."""
        rec = self.new_record(endpoint, tier, assets, style, label, resolve)
        fields: dict[Any, Any] = {
            k: orjson.dumps(v) if k in _JSON_FIELDS else repr(v) if k in _FLOAT_FIELDS else v
            for k, v in rec.items()}

        def write() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(SUB + rec["id"], mapping=fields)
                pipe.sadd(SUBS, rec["id"])
                self._changed(pipe, rec["id"])
                pipe.execute()
        self._call(write)
        return rec

    @staticmethod
    def _row(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in raw.items():
            name = k.decode()
            out[name] = orjson.loads(v) if name in _JSON_FIELDS else \
                float(v) if name in _FLOAT_FIELDS else v.decode()
        return out

    def get(self, sub_id: str) -> dict[str, Any]:
        raw = self._call(lambda: self.client.hgetall(SUB + sub_id))
        if not raw:
            raise WebhookError(f"no subscription {sub_id!r}")
        return self._row(raw)

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]:
        def read() -> list[Any]:
            ids = sorted(self.client.smembers(SUBS))
            with self.client.pipeline(transaction=False) as pipe:
                for sub_id in ids:
                    pipe.hgetall(SUB + (sub_id.decode() if isinstance(sub_id, bytes) else sub_id))
                return pipe.execute() if ids else []
        rows = [self._row(raw) for raw in self._call(read) if raw]
        rows.sort(key=lambda r: r["created_at"])
        return [r for r in rows if state is None or r["state"] == state]

    def set_state(self, sub_id: str, state: str, reason: str = "",
                  only_from: Optional[tuple[str, ...]] = None) -> None:
        """Move a subscription to `state`; `only_from` limits the states it may leave."""
        self.check_state(state)
        done = self._call(lambda: self._set_state(
            keys=[SUB + sub_id, VERSION],
            args=[state, reason, repr(time.time()), CHANGES_CHANNEL, *(only_from or ())]))
        if done == -1:
            raise WebhookError(f"no subscription {sub_id!r}")
        if done == 0:
            raise WebhookError(f"subscription {sub_id} is not {' or '.join(only_from or ())}")

    def remove(self, sub_id: str) -> None:
        def delete() -> Any:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(SUB + sub_id)
                pipe.srem(SUBS, sub_id)
                self._changed(pipe, sub_id)
                return pipe.execute()[0]
        if not self._call(delete):
            raise WebhookError(f"no subscription {sub_id!r}")

    def _set_secrets(self, sub_id: str, kept: List[str]) -> None:
        def write() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(SUB + sub_id, mapping={"secrets": orjson.dumps(kept),
                                                 "changed_at": repr(time.time())})
                self._changed(pipe, sub_id)
                pipe.execute()
        self._call(write)

    # -- delivery log: this node's key store ---------------------------------------------

    def _log(self) -> WebhookStore:
        if self.log_store is None:
            raise WebhookError("the delivery log is in each node's own key store: "
                               "read it with --db PATH, without --redis")
        return self.log_store

    def write_log(self, rows: List[tuple]) -> None:
        self._log().write_log(rows)

    def prune_log(self, older_than_s: float) -> int:
        return self._log().prune_log(older_than_s)

    def read_log(self, sub_id: Optional[str] = None, limit: int = 100) -> List[dict[str, Any]]:
        return self._log().read_log(sub_id, limit)


class _RedisClient:
    """A blocking client of the cluster's Redis (ClusterError when the
    client is missing or the URL is bad); connects on first use."""

    def __init__(self, url: str) -> None:
        if redis is None:
            raise ClusterError("--redis needs the redis client: pip install 'beastnet[cluster]'")
        self.url = redacted_url(url)        # for messages: never the password
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=2.0,
                                               socket_connect_timeout=2.0)
        except ValueError as exc:
            raise ClusterError(f"--redis {redacted_url(url)!r}: {exc}") from None

    def close(self) -> None:
        self.client.close()


class RedisParameters(_RedisClient):
    """The cluster's shared profile (the `Parameters` interface): a switch
    with `scope=cluster` sets it and tells the running nodes in one MULTI
    (`cluster.queue_profile`, which `ClusterNode.publish_profile` also
    uses); a node that starts later reads it.  ClusterError on failure."""

    def profile(self) -> Optional[str]:
        try:
            value = self.client.get(PROFILE)
        except (redis.RedisError, OSError) as exc:
            raise ClusterError(f"redis {self.url}: {exc}") from None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def set_profile(self, name: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            queue_profile(pipe, name)
            try:
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                raise ClusterError(f"redis {self.url}: {exc}") from None


class RedisKeyChanges(_RedisClient):
    """Key changes into a cluster's shared key records, announced to its
    nodes (`beastnet keys --redis`): a hash per key, then PUBLISH, in one
    MULTI.  The nodes' own writer is `ClusterNode.publish_key` (asyncio)."""

    def publish(self, op: str, key: str, tier: Optional[str] = None, label: str = "",
                prefix: str = "") -> int:
        """Record and announce one change to the key with ID `key`; returns
        the nodes that heard it (ClusterError when Redis cannot be reached)."""
        fields, message = key_record(op, key, tier, label, prefix)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(KEY + key, items=fields)
            pipe.publish(KEYS_CHANNEL, message)
            try:
                replies = pipe.execute()
            except (redis.RedisError, OSError) as exc:
                raise ClusterError(f"redis {self.url}: {exc}") from None
        return int(replies[-1])
