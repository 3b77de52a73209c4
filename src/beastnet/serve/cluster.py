"""Many `beastnet serve` nodes sharing one Redis or Valkey (`serve --redis URL`).

Redis is the engine; this module only talks to it, on the control plane's
loop with redis-py's asyncio client (hiredis parses the replies), so nothing
here blocks a native thread or the loop:

* **snapshots**: every `snapshot_interval_s` a node writes its counters, rates
  and profile as one JSON string with a TTL, and keeps itself in the nodes
  hash (one pipeline a write).  `/admin/cluster-stats` reads every node with
  one script call (`READ_NODES`): totals, rows, stale and missing nodes;
* **shared limits**: rate-limited keys are *leased* (`APIKeyTable.lease`):
  the native path takes a local token per request and the control plane tops
  the tokens up, for all keys at once, from a GCRA kept in Redis
  (`LEASE_GCRA`, one EVALSHA a renewal) every `lease_interval_s`, sooner when
  the table reports hungry keys;
* **usage**: each key's new admitted count goes out as HINCRBY on the
  month's hash in one pipeline per flush; the cluster's totals come back in
  the same round trip and set each key's monthly cap base.  While Redis is
  down the deltas are carried, never dropped;
* **changes**: key changes and cluster-wide profiles arrive by pub/sub.

When Redis cannot be reached the node keeps serving: `local-share` gives each
key limit/N locally (N = the nodes seen last), `fail-closed` refuses leased
keys until Redis is back.  docs/cluster.md has the accuracy bound.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import orjson

from beastnet import Answer, APIKeyTable, ClusterError, MissRequest, api_key_id, error_answer
from beastnet.counters import (DATABASE_COUNTERS, HTTP_COUNTERS, UDP_COUNTERS,
                               USAGE_LOG_COUNTERS)
from beastnet.metrics import MetricFamily
from beastnet.serve.admin import AdminRoute
from beastnet.serve.component import Component
from beastnet.serve.keys import KeyStoreError, Tier, current_month, key_prefix

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService
    from beastnet.serve.stores import Keys

try:
    import redis
    import redis.asyncio as aioredis
    RedisUnavailable: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
    # Redis answers, but not to us: a wrong password, an ACL user lacking a
    # command or channel.  Waiting does not mend these, so they never count
    # as an outage (which would flip the mode every probe).
    RedisMisconfigured: tuple[type[BaseException], ...] = (
        redis.AuthenticationError, redis.exceptions.NoPermissionError)
except ImportError:                     # pragma: no cover - the `cluster` extra is not installed
    redis = None                        # type: ignore[assignment]
    aioredis = None                     # type: ignore[assignment]
    RedisUnavailable = (OSError,)
    RedisMisconfigured = ()


def misconfiguration(exc: BaseException) -> bool:
    """Whether `exc` says Redis refuses this user something (RedisMisconfigured,
    or a command a script called that the ACL denies, which Redis reports as
    a plain error) rather than that Redis is down."""
    return isinstance(exc, RedisMisconfigured) or (
        redis is not None and isinstance(exc, redis.ResponseError)
        and "can't run this command" in str(exc))


__all__ = ["RedisMisconfigured", "RedisUnavailable", "SNAPSHOT_COUNTERS", "Cluster",
           "ClusterConfigError", "ClusterNode", "aggregate", "apply_key_change",
           "default_node_id", "key_record", "misconfiguration", "queue_profile", "red_flags",
           "redacted_url", "table_change"]

log = logging.getLogger("beastnet.serve.cluster")

# Every key lives in one hash slot ({bn}), so the scripts may touch them all,
# on a Redis Cluster too.
PREFIX = "{bn}:"
NODES = PREFIX + "nodes"                # hash: node id -> registration JSON
SNAPSHOT = PREFIX + "node:"             # + node id: the node's snapshot JSON, with a TTL
GCRA = PREFIX + "gcra:"                 # + API key: the shared GCRA's tat, microseconds
USAGE = PREFIX + "usage:"               # + YYYY-MM: hash key ID -> admitted count
KEY = PREFIX + "key:"                   # + key ID (sha256:…): hash tier, label, revoked, prefix
KEYS_CHANNEL = PREFIX + "keys"          # pub/sub: key added, revoked, re-tiered
CONTROL_CHANNEL = PREFIX + "control"    # pub/sub: cluster-wide profile switches
PROFILE = PREFIX + "profile"            # string: the last cluster-wide profile (joiners read it)

# A node's snapshot, (name, group, counter): the UDP, HTTP and WebSocket
# counters tagged "snapshot" in beastnet.counters (named group_counter, the
# ws_ ones as they are), plus usage flushing and the usage log's counters.  Gauges are summed over nodes
# but have no rate.
_ENGINE_GROUPS = (("udp", UDP_COUNTERS), ("http", HTTP_COUNTERS))
SNAPSHOT_COUNTERS: tuple[tuple[str, str, str], ...] = tuple(
    [(c.name if c.name.startswith("ws_") else f"{group}_{c.name}", group, c.name)
     for group, counters in _ENGINE_GROUPS for c in counters if "snapshot" in c.tags]
    + [("usage_flushes", "keys", "flushes"), ("usage_flush_errors", "keys", "flush_errors")]
    + [(c.name, "usage_log", c.name) for c in USAGE_LOG_COUNTERS if "snapshot" in c.tags]
    + [(c.name, "keys", c.name) for c in DATABASE_COUNTERS if "snapshot" in c.tags]
    + [("governor_enabled", "governor", "enabled"), ("governor_limit", "governor", "limit"),
       ("governor_inflight", "governor", "inflight"),
       ("governor_actions", "governor", "actions")])
GAUGES = frozenset([name for name, group, field in SNAPSHOT_COUNTERS
                    for g, counters in _ENGINE_GROUPS if g == group
                    for c in counters if c.name == field and c.kind == "gauge"]
                   + [c.name for c in DATABASE_COUNTERS
                      if "snapshot" in c.tags and c.kind == "gauge"]
                   + ["governor_enabled", "governor_limit", "governor_inflight"])

# Red flags of the tuning loop: UDP drop % over 1, background (miss queue) drop
# % over 5, any usage flush error.
RED_UDP_DROP_PCT = 1.0
RED_BACKGROUND_DROP_PCT = 5.0

# One round trip for the whole cluster: the registered ids, and per id its
# snapshot (nil once its TTL ran out) and the TTL left, from which its age
# follows without trusting any node's clock.
READ_NODES = """
local ids = redis.call('HKEYS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', key) or false
  out[#out + 1] = redis.call('PTTL', key)
end
return out
"""

# GCRA for many keys in one call.  ARGV[1]: a deadline on Redis's clock (us,
# 0: none); then per key: emission T (us), tolerance T*(burst-1) (us), tokens
# wanted.  Grants as many as the GCRA admits now, up to the want, moving tat
# by T per token granted; returns the grants, then Redis's time (us).  Run
# past its deadline (a stalled Redis working off its backlog), it grants
# nothing: the node gave up on that answer, and tokens taken for it would
# hold the key back after the stall for requests no node admitted.
LEASE_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[1])
local out = {}
if deadline > 0 and now > deadline then
  for i = 1, #KEYS do out[i] = 0 end
  out[#KEYS + 1] = now
  return out
end
for i, key in ipairs(KEYS) do
  local j = (i - 1) * 3 + 1
  local T = tonumber(ARGV[j + 1])
  local tol = tonumber(ARGV[j + 2])
  local want = tonumber(ARGV[j + 3])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local grant = 0
  if want > 0 and tat - now <= tol then
    grant = math.floor((now + tol - tat) / T) + 1
    if grant > want then grant = want end
  end
  if grant > 0 then
    tat = tat + grant * T
    redis.call('SET', key, string.format('%.0f', tat), 'PX',
               math.floor((tat - now + tol) / 1000) + 1000)
  end
  out[i] = grant
end
out[#KEYS + 1] = now
return out
"""


# A renewal pending this long while a key is below its low mark (half its
# slice, which lasts 50 ms at the full rate) degrades before the tokens run
# out; an idle node waits degrade_after_s.  Loopback answers in ~0.2 ms.
DRAINING_AFTER_S = 0.05
STOP_GRACE_S = 3.0          # stop(): how long the loops have to end on their own
LISTEN_POLL_S = 0.25        # the pub/sub read's timeout: how soon the listener sees a stop


def _task_name(task: "asyncio.Task[Any]") -> str:
    """The loop a task runs (its coroutine's name), for the log."""
    return str(getattr(task.get_coro(), "__qualname__", task.get_name()))


class ClusterConfigError(ClusterError):
    """Redis refused this node at start: a wrong password, or an ACL user
    lacking a command or channel the cluster needs (`serve` exits 2)."""


def redacted_url(url: str) -> str:
    """`url` with its password, if any, replaced by `***` (for messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def default_node_id() -> str:
    """host:pid, unique among live nodes."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_client() -> None:
    if aioredis is None:
        raise ClusterError("--redis needs the redis client: pip install 'beastnet[cluster]'")


def _pct(part: float, whole: float) -> Optional[float]:
    return round(100.0 * part / whole, 3) if whole else None


def red_flags(counters: dict[str, Any]) -> dict[str, Any]:
    """The tuning loop's ratios and which of them are red."""
    udp_drop = _pct(counters.get("udp_kernel_drops", 0),
                    counters.get("udp_rx_packets", 0) + counters.get("udp_kernel_drops", 0))
    background = _pct(counters.get("udp_queue_drops", 0) + counters.get("http_queue_drops", 0),
                      counters.get("udp_misses", 0) + counters.get("http_misses", 0))
    errors = counters.get("usage_flush_errors", 0)
    red = [name for name, bad in (("udp_drop_pct", (udp_drop or 0) > RED_UDP_DROP_PCT),
                                  ("background_drop_pct",
                                   (background or 0) > RED_BACKGROUND_DROP_PCT),
                                  ("usage_flush_errors", errors > 0)) if bad]
    return {"udp_drop_pct": udp_drop, "background_drop_pct": background,
            "usage_flush_errors": errors, "red": red}


def aggregate(raw: list[Any], interval_s: float, ttl_s: float) -> dict[str, Any]:
    """/admin/cluster-stats from READ_NODES' reply: totals and rates over the
    live nodes, a row per node, stale (older than two intervals) and missing
    (registered, TTL run out) nodes flagged."""
    rows: list[dict[str, Any]] = []
    totals: dict[str, int] = {name: 0 for name, _, _ in SNAPSHOT_COUNTERS}
    rates: dict[str, float] = {}
    for i in range(0, len(raw), 3):
        node_id = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
        body, pttl_ms = raw[i + 1], raw[i + 2]
        if not body:
            rows.append({"node": node_id, "state": "missing"})
            continue
        snap = orjson.loads(body)
        age_s = max(0.0, (ttl_s * 1000.0 - pttl_ms) / 1000.0) if pttl_ms >= 0 else None
        stale = age_s is not None and age_s > 2 * snap.get("interval_s", interval_s)
        row = {"node": node_id, "state": "stale" if stale else "live", "age_s": age_s}
        row.update({k: v for k, v in snap.items() if k != "interval_s"})
        row["flags"] = red_flags(snap["counters"])
        rows.append(row)
        for name, value in snap["counters"].items():
            totals[name] = totals.get(name, 0) + value
        for name, value in snap.get("rates_per_s", {}).items():
            rates[name] = round(rates.get(name, 0.0) + value, 1)
    rows.sort(key=lambda r: r["node"])
    counts = {state: sum(1 for r in rows if r["state"] == state)
              for state in ("live", "stale", "missing")}
    return {"nodes": counts, "totals": totals, "rates_per_s": rates, "flags": red_flags(totals),
            "per_node": rows}


@dataclass
class _Limit:
    """A leased key's shared limit, from its tier."""

    emission_us: float                  # T = 1e6 / qps
    tolerance_us: float                 # T * (burst - 1)
    qps: float
    burst: int
    slice: int                          # tokens a node tops up to each round


class ClusterNode:
    """One node's link to Redis, run on the service's control loop.

    `snapshot()` gives the counters to publish; `api_keys` and `store` are
    the node's native key table and SQLite copy (None when keys are off);
    `tiers` their limits; `switch_profile(name)` applies a cluster-wide
    profile switch.
    """

    def __init__(self, url: str, node_id: str, *, snapshot: Callable[[], dict[str, Any]],
                 profile: Callable[[], str], switch_profile: Callable[[str], Any],
                 api_keys: Optional[APIKeyTable] = None, store: Optional["Keys"] = None,
                 tiers: Optional[dict[str, Tier]] = None, interval_s: float = 3.0,
                 ttl_s: float = 30.0, fallback: str = "local-share",
                 lease_interval_s: float = 0.1, usage_interval_s: float = 0.1,
                 degrade_after_s: float = 0.15) -> None:
        _check_client()
        self.url = url
        self.node_id = node_id
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.fallback = fallback
        self.lease_interval_s = lease_interval_s
        self.usage_interval_s = usage_interval_s
        # A lease renewal still unanswered after this long puts the node on
        # its fallback at once: a slice lasts one lease interval at the full
        # rate, so waiting for the socket timeout (1 s) would refuse requests
        # the limit allows.
        self.degrade_after_s = degrade_after_s
        self._snapshot_fn = snapshot
        self._profile_fn = profile
        self._switch_profile = switch_profile
        self.api_keys = api_keys
        self.store = store
        self.tiers = dict(tiers or {})
        self.redis: Any = None
        self.reachable = False
        self.mode = "redis"             # or the fallback in force
        self.last_error: Optional[str] = None
        self.nodes_seen = 1             # nodes registered at the last snapshot: the local share's N
        self.counts = {"snapshots": 0, "renewals": 0, "tokens_granted": 0, "usage_pushes": 0,
                       "redis_errors": 0, "key_changes": 0, "profiles_applied": 0,
                       "slow_renewals": 0, "tokens_discarded": 0, "config_errors": 0}
        self._config_errors_seen: set[str] = set()     # each logged once
        self._step: Optional[str] = None    # the access check's step under way
        self._limits: dict[str, _Limit] = {}
        self._caps: frozenset[str] = frozenset()  # keys with a monthly cap, held cluster-wide
        # Leased keys still on their local share after Redis came back: each
        # returns to leases with its first renewal that grants enough (_renew).
        self._sharing: set[str] = set()
        self._next_probe = 0.0
        self._renew_now = False
        self._pushed: dict[str, int] = {}     # admitted counts already in Redis, per key
        self._month = current_month()
        self._previous: Optional[tuple[float, dict[str, int]]] = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Set by stop(): the loops end on their own at their next pause or
        # pub/sub poll.  Not cancelled first: a cancel that lands inside
        # redis-py's pub/sub read can be swallowed there and leave the task
        # waiting forever (seen: a node's stop() hung on `get_message`).
        self._stopping = asyncio.Event()
        self._read_sha: Optional[str] = None
        self._lease_sha: Optional[str] = None
        self._redis_offset_us: Optional[float] = None  # Redis TIME - our monotonic clock

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, register, take the first leases, then run the loops.  A
        Redis that is down here is a fallback like any later outage."""
        self._stopping = asyncio.Event()
        self.redis = aioredis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                       health_check_interval=5)
        if self.api_keys is not None:
            self._pushed = {k: v[0] for k, v in self.api_keys.usage().items()}
            await self._reload_limits()
        try:
            await self._check_access()
            await self._write_snapshot()
            # Reachable first: the switch to leases starts every key at zero
            # tokens, which this first renewal then fills before we serve.
            self._set_reachable(True)
            await self._renew()
        except RedisUnavailable as exc:
            if not misconfiguration(exc):
                self._set_reachable(False, exc)
            else:
                await self.redis.aclose()
                self.redis = None
                raise ClusterConfigError(self._config_message(exc)) from None
        loop = asyncio.get_running_loop()
        for loop_fn in (self._snapshot_loop, self._lease_loop, self._usage_loop,
                        self._listen_loop):
            self._tasks.append(loop.create_task(loop_fn()))

    async def stop(self) -> None:
        """End the loops, push the last usage, leave the nodes hash, close.
        Bounded: a loop that has not ended after STOP_GRACE_S is cancelled,
        and one that ignores that too is left behind, logged."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=1.0)
                for task in stuck:
                    log.warning("cluster: %s did not end at stop; left behind", _task_name(task))
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.warning("cluster: %s ended on %r", _task_name(task), task.exception())
        if self.redis is None:
            return
        try:
            await self._push_usage()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(NODES, self.node_id)
                pipe.delete(SNAPSHOT + self.node_id)
                await pipe.execute()
        except RedisUnavailable as exc:
            log.warning("redis at stop: %s%s", exc, " (the usage not pushed stays in the local "
                        "store only)" if self._pending_usage() else "")
        await self.redis.aclose()

    async def _check_access(self) -> None:
        """Use once every kind of command the node needs, so a password or an
        ACL that refuses one stops the node at start (one line, exit 2) rather
        than after it has served on a half-working link.  Each step is named,
        and the name is what the error reports as missing."""
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("AUTH / PING", self.redis.ping),
            ("SCRIPT LOAD", self._load_scripts),
            ("EVALSHA (cluster stats: HKEYS, GET, PTTL)",
             lambda: self.redis.evalsha(self._read_sha, 1, NODES, SNAPSHOT)),
            # A grant of one token on the key of the empty API key (no key
            # is empty), expiring within a second and a half: GET, SET, TIME.
            ("EVALSHA (leases: TIME, GET, SET)",
             lambda: self.redis.evalsha(self._lease_sha, 1, GCRA, 0, 1, 0, 1)),
            ("SCAN", lambda: self.redis.scan(0, match=KEY + "*", count=1)),
            ("HMGET (usage)", lambda: self.redis.hmget(USAGE + current_month(), ["-"])),
            (f"PUBLISH / SUBSCRIBE on channel {CONTROL_CHANNEL}",
             lambda: self.redis.publish(CONTROL_CHANNEL, orjson.dumps(
                 {"op": "hello", "node": self.node_id}))),
        ]
        for name, step in steps:
            self._step = name
            await step()
        self._step = None

    def _config_message(self, exc: BaseException) -> str:
        """One line for a password or permission Redis refused."""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"redis {redacted_url(self.url)}"
        if isinstance(exc, redis.AuthenticationError):
            return f"{where}: authentication refused ({detail}); check the user and password"
        if self._step is None:
            return (f"{where}: a command was refused ({detail}); grant it "
                    f"(docs/cluster.md lists what a node needs)")
        return (f"{where}: the user may not run {self._step} ({detail}); "
                f"grant it (docs/cluster.md lists what a node needs)")

    def _misconfigured(self, exc: BaseException) -> None:
        """A password or permission refused after start (an ACL changed):
        counted, each distinct error logged once; the mode is left to the
        lease renewal, so it does not flap with each probe."""
        self.counts["config_errors"] += 1
        message = self._config_message(exc)
        self.last_error = message
        if message not in self._config_errors_seen:
            self._config_errors_seen.add(message)
            log.error("%s", message, extra={"fields": {"event": "redis_misconfigured"}})

    def status(self) -> dict[str, Any]:
        """What stats() shows: the mode in force and whether Redis answers."""
        return {"node_id": self.node_id, "redis_reachable": self.reachable, "mode": self.mode,
                "fallback": self.fallback, "nodes_seen": self.nodes_seen,
                "leased_keys": len(self._limits), "keys_on_share": len(self._sharing),
                "last_error": self.last_error,
                "usage_pending": self._pending_usage(), **self.counts}

    def _set_reachable(self, ok: bool, exc: Optional[BaseException] = None) -> None:
        if ok and not self.reachable:
            self.reachable, self.last_error = True, None
            self._renew_now = True
            if self.mode != "redis" and not self._limits:
                self._leave_fallback()      # nothing leased: nothing to wait for
            # Otherwise the fallback stays in force until a renewal answers in
            # time: switching to leases now would start every key at zero
            # tokens and refuse until the renewal lands.
        elif not ok:
            self.counts["redis_errors"] += 1
            self.last_error = str(exc)
            if self.reachable or self.mode == "redis":
                log.warning("redis unreachable (%s): %s", exc, self.fallback,
                            extra={"fields": {"event": "redis_fallback", "mode": self.fallback}})
                self.reachable, self.mode = False, self.fallback
                self._apply_mode()

    def _degrade(self, reason: str, error: Optional[str] = None) -> None:
        """Redis answers too slowly (or refuses the renewal): the fallback at
        once, without waiting for the socket timeout."""
        self.last_error = error or reason
        if self.mode != "redis":
            return
        log.warning("redis degraded (%s): %s", reason, self.fallback,
                    extra={"fields": {"event": "redis_fallback", "mode": self.fallback}})
        self.mode = self.fallback
        self._apply_mode()

    def _leave_fallback(self) -> None:
        """Back to leases, key by key: each stays on its local share until a
        renewal grants it tokens to start on (_renew), so recovery never
        opens a window in which a key has no tokens and no share."""
        log.warning("redis answering in time again: shared limits back",
                    extra={"fields": {"event": "redis_recovered"}})
        self.mode = "redis"
        self._sharing = set(self._limits) if self.fallback == "local-share" else set()

    def _apply_mode(self, only: Optional[set[str]] = None) -> None:
        """Make the native limits match the mode: leases (redis), a local
        share of each limit, or leased keys with no tokens (fail-closed).
        `only`: just these newly leased keys, leaving the others' tokens."""
        keys = self.api_keys
        if keys is None:
            return
        share = max(1, self.nodes_seen)
        for key in (only if only is not None else self._limits):
            limit = self._limits[key]
            try:
                if self.mode == "local-share":
                    keys.lease(key, on=False)
                    keys.set_rate(key, qps=limit.qps / share, burst=max(1, limit.burst // share))
                    continue
                keys.set_rate(key, qps=limit.qps, burst=limit.burst)
                if only is None:
                    keys.lease(key, on=False)       # drop tokens granted before the outage
                keys.lease(key, on=True, low=limit.slice // 2)
            except KeyError:
                pass

    async def _load_scripts(self) -> None:
        self._read_sha = await self.redis.script_load(READ_NODES)
        self._lease_sha = await self.redis.script_load(LEASE_GCRA)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run a Redis step; on failure switch to the fallback and return None.
        A script the server forgot (a restart) is loaded again."""
        try:
            try:
                result = await fn()
            except redis.exceptions.NoScriptError:
                await self._load_scripts()
                result = await fn()
        except RedisUnavailable as exc:
            if misconfiguration(exc):
                self._misconfigured(exc)
            else:
                self._set_reachable(False, exc)
            return None
        self._set_reachable(True)
        return result

    # -- snapshots -----------------------------------------------------------------

    def _counters(self) -> dict[str, Any]:
        now = time.monotonic()
        raw = self._snapshot_fn()
        counters = {name: int(raw.get(group, {}).get(field, 0))
                    for name, group, field in SNAPSHOT_COUNTERS}
        counters["usage_flush_errors"] += self.counts["redis_errors"]
        rates: dict[str, float] = {}
        if self._previous is not None:
            then, old = self._previous
            dt = max(now - then, 1e-9)
            rates = {k: round((v - old.get(k, 0)) / dt, 1) for k, v in counters.items()
                     if k not in GAUGES}
        self._previous = (now, counters)
        return {"counters": counters, "rates_per_s": rates, "profile": self._profile_fn(),
                "mode": self.mode, "interval_s": self.interval_s, "pid": os.getpid()}

    async def _write_snapshot(self) -> None:
        body = orjson.dumps(self._counters())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(SNAPSHOT + self.node_id, body, px=int(self.ttl_s * 1000))
            pipe.hset(NODES, self.node_id, orjson.dumps({"interval_s": self.interval_s,
                                                         "ttl_s": self.ttl_s}))
            pipe.hlen(NODES)
            replies = await pipe.execute()
        self.counts["snapshots"] += 1
        self.nodes_seen = max(1, int(replies[-1]))

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds`; True (at once) when stop() began."""
        if not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except asyncio.TimeoutError:
                return False
        return True

    async def _snapshot_loop(self) -> None:
        while not await self._pause(self.interval_s):
            await self._call(self._write_snapshot)

    async def cluster_stats(self) -> Optional[dict[str, Any]]:
        """Every registered node, read in one round trip; None when Redis is
        unreachable."""
        started = time.perf_counter()
        raw = await self._call(lambda: self.redis.evalsha(self._read_sha, 1, NODES, SNAPSHOT))
        if raw is None:
            return None
        out = aggregate(raw, self.interval_s, self.ttl_s)
        out["read_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        out["reader"] = self.node_id
        return out

    # -- shared limits -------------------------------------------------------------

    async def _reload_limits(self) -> None:
        """Lease every active rate-limited key of the store; keys that lost
        their limit (re-tiered to partner, revoked) stop being leased."""
        if self.store is None or self.api_keys is None:
            return
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(None, self.store.list)
        except KeyStoreError as exc:
            log.warning("cluster: key store: %s", exc)
            return
        wanted: dict[str, _Limit] = {}
        caps = set()
        for row in rows:
            tier = self.tiers.get(row["tier"])
            if row["revoked"] or tier is None:
                continue
            if tier.monthly_cap > 0:
                caps.add(row["key"])
            if tier.qps <= 0:
                continue
            emission = 1e6 / tier.qps
            wanted[row["key"]] = _Limit(emission, emission * (tier.burst - 1), tier.qps,
                                        tier.burst,
                                        max(1, math.ceil(tier.qps * self.lease_interval_s)))
        for key in set(self._limits) - set(wanted):
            try:
                self.api_keys.lease(key, on=False)
                tier_row = next((r for r in rows if r["key"] == key), None)
                tier = self.tiers.get(tier_row["tier"]) if tier_row else None
                if tier is not None:
                    self.api_keys.set_rate(key, qps=tier.qps, burst=tier.burst)
            except KeyError:
                pass
        added = set(wanted) - set(self._limits)
        self._limits = wanted
        self._sharing &= set(wanted)
        self._caps = frozenset(caps)
        if added:
            self._apply_mode(added)

    async def _renew(self) -> bool:
        """Top every leased key up to its slice, one script call for all;
        True when done.  On the fallback, a renewal answered within
        degrade_after_s brings the leases back with its grants; a slower one
        leaves the fallback in force and its grants unused (counted)."""
        if self.api_keys is None or self.mode == "fail-closed" and not self.reachable:
            return True
        left = self.api_keys.leases() if self.mode == "redis" else {}
        keys, args = [], []
        for key, limit in self._limits.items():
            want = limit.slice - (0 if key in self._sharing else left.get(key, 0))
            if want > 0:
                keys.append(GCRA + key)
                args += [f"{limit.emission_us:.3f}", f"{limit.tolerance_us:.3f}", want]
        if not keys:
            return True
        started = time.monotonic()
        deadline_us = 0 if self._redis_offset_us is None else \
            int((started + self.degrade_after_s) * 1e6 + self._redis_offset_us)
        reply = await self.redis.evalsha(self._lease_sha, len(keys), *keys, deadline_us, *args)
        answered = time.monotonic()
        grants, redis_now_us = reply[:-1], int(reply[-1])
        self.counts["renewals"] += 1
        if answered - started <= self.degrade_after_s:
            # Redis's clock against ours, to within half this round trip.
            self._redis_offset_us = redis_now_us - (started + answered) / 2 * 1e6
        if self.mode != "redis":
            if answered - started > self.degrade_after_s:
                self.counts["tokens_discarded"] += sum(int(g or 0) for g in grants)
                return True
            self._leave_fallback()
        for redis_key, grant in zip(keys, grants):
            key, grant = redis_key[len(GCRA):], int(grant or 0)
            held = self._limits.get(key)
            if held is None:
                continue
            limit = held
            if key in self._sharing:
                # Still on its local share: leased again only with tokens to
                # start on.  The shared GCRA may be ahead by tokens a renewal
                # took after its caller gave up on it (a stall), tokens no
                # node ever used; until they pass, the share is the limit.
                if grant < max(1, limit.slice // 2):
                    self.counts["tokens_discarded"] += grant
                    continue
                self._sharing.discard(key)
                self._lease_from_share(key, limit, grant)
            elif grant:
                try:
                    self.api_keys.lease(key, on=True, add=grant, low=limit.slice // 2)
                except KeyError:
                    continue
            self.counts["tokens_granted"] += grant
        return True

    def _lease_from_share(self, key: str, limit: _Limit, grant: int) -> None:
        """One key from its local share back to leases, starting with `grant` tokens."""
        assert self.api_keys is not None
        try:
            self.api_keys.lease(key, on=False)       # tokens from before the fallback
            self.api_keys.lease(key, on=True, add=grant, low=limit.slice // 2)
            self.api_keys.set_rate(key, qps=limit.qps, burst=limit.burst)
        except KeyError:
            pass

    async def _renew_watched(self) -> None:
        """One renewal, watched: pending past degrade_after_s, the node goes
        to its fallback at once (and comes back when one answers in time);
        refused (a permission), it goes there and stays until one works."""
        task = asyncio.ensure_future(self._call(self._renew))
        started = time.monotonic()
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.01)
                waited = time.monotonic() - started
                if task.done() or not (
                        waited >= self.degrade_after_s
                        or waited >= min(DRAINING_AFTER_S, self.degrade_after_s)
                        and self._draining()):
                    continue
                self.counts["slow_renewals"] += 1
                self._degrade(f"lease renewal unanswered after {waited * 1000:.0f} ms")
                break
            ok = await task
        finally:
            if not task.done():
                task.cancel()
        if ok is None and self.reachable:
            self._degrade("lease renewal refused", self.last_error)

    def _draining(self) -> bool:
        """Whether a leased key is below its low mark: in use, and its tokens
        last less than the renewal has been pending."""
        assert self.api_keys is not None
        left = self.api_keys.leases()
        return any(left.get(key, 0) < limit.slice // 2 for key, limit in self._limits.items())

    async def _lease_loop(self) -> None:
        """Renew every lease_interval_s, or as soon as a key runs low (the
        native hungry count moved), polling that count every 10 ms."""
        poll_s = min(0.01, self.lease_interval_s)
        next_round = time.monotonic()
        next_reload = time.monotonic() + 1.0
        if self.api_keys is None:
            return                      # keys off: nothing to lease (snapshots probe Redis)
        hungry = self.api_keys.hungry
        while not self._stopping.is_set():
            await asyncio.sleep(poll_s)     # 100 times a second: no timer task each
            now = time.monotonic()
            if now >= next_reload:
                next_reload = now + 1.0
                await self._reload_limits()
            seen = self.api_keys.hungry
            if seen == hungry and now < next_round and not self._renew_now:
                continue
            hungry, next_round = seen, now + self.lease_interval_s
            self._renew_now = False
            if self.reachable:
                # On the fallback too: the renewal is the probe that brings
                # the leases back once Redis answers in time.
                await self._renew_watched()
            elif now >= self._next_probe:
                # Down: probe once a second rather than every round.
                self._next_probe = now + 1.0
                if await self._call(self.redis.ping):
                    await self._renew_watched()

    # -- usage -----------------------------------------------------------------------

    def _pending_usage(self) -> int:
        if self.api_keys is None:
            return 0
        return sum(v[0] - self._pushed.get(k, 0) for k, v in self.api_keys.usage().items())

    async def _push_usage(self) -> None:
        """HINCRBY each key's new count on the month's hash; the same round
        trip reads the cluster's totals of the capped keys back."""
        if self.api_keys is None:
            return
        usage = self.api_keys.usage()
        deltas = {k: v[0] - self._pushed.get(k, 0) for k, v in usage.items()}
        month = current_month()
        hash_key = USAGE + month
        capped = [k for k in usage if k in self._caps]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, delta in deltas.items():
                if delta:
                    pipe.hincrby(hash_key, key, delta)
            if capped:
                pipe.hmget(hash_key, capped)
            replies = await pipe.execute()
        for key, value in usage.items():
            self._pushed[key] = value[0]
        if any(deltas.values()):
            self.counts["usage_pushes"] += 1
        if capped:
            for key, total in zip(capped, replies[-1]):
                # The cluster's count so far: this node's later admissions are
                # in `admitted` already and not yet in Redis (at most one flush).
                used = int(total or 0) + (self.api_keys.usage()[key][0] - usage[key][0])
                self.api_keys.set_month_used(key, used)
        self._month = month

    async def _usage_loop(self) -> None:
        while not await self._pause(self.usage_interval_s):
            if self.reachable:
                await self._call(self._push_usage)

    async def publish_profile(self, name: str) -> Optional[int]:
        """Announce a cluster-wide profile; the subscribers that heard it, or
        None when Redis is unreachable."""
        async def publish() -> Any:
            async with self.redis.pipeline(transaction=True) as pipe:
                queue_profile(pipe, name)
                return (await pipe.execute())[-1]
        result = await self._call(publish)
        return None if result is None else int(result)

    # -- pub/sub -----------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        """Key changes and profile switches; resubscribes after an outage."""
        while not self._stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(KEYS_CHANNEL, CONTROL_CHANNEL)
                try:
                    # A reconnect may have missed changes: read the shared store.
                    await self._load_shared_keys()
                    while not self._stopping.is_set():
                        # Short polls: stop() waits for this loop to see it.
                        message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                        if message is not None:
                            await self._on_message(message["channel"], message["data"])
                finally:
                    await pubsub.aclose()
            except RedisUnavailable as exc:
                if misconfiguration(exc):
                    self._misconfigured(exc)
                else:
                    self._set_reachable(False, exc)
                await self._pause(1.0)

    async def _on_message(self, channel: bytes, data: bytes) -> None:
        try:
            change = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("cluster: unreadable message on %s", channel.decode(errors="replace"))
            return
        if channel.decode() == CONTROL_CHANNEL:
            if change.get("op") == "profile":
                try:
                    self._switch_profile(str(change["name"]))
                    self.counts["profiles_applied"] += 1
                except (KeyError, ValueError) as exc:
                    log.warning("cluster: profile %r not applied: %s", change.get("name"), exc)
            return
        await self._apply_key(change)

    async def _apply_key(self, change: dict[str, Any]) -> None:
        """One key change into the native table at once (a revocation stops
        the key before anything else), then into the local SQLite copy."""
        keys, store = self.api_keys, self.store
        key, op, tier = change.get("key"), change.get("op"), change.get("tier")
        if keys is None or store is None or not isinstance(key, str):
            return
        if not key.startswith("sha256:"):
            # A record from before keys were hashed: the table, the store
            # and the usage rows know the key by its ID only.
            try:
                change = dict(change, key=api_key_id(key), prefix=key_prefix(key))
            except (ValueError, UnicodeEncodeError):
                log.warning("cluster: key change for an invalid key not applied")
                return
            key = change["key"]
        self.counts["key_changes"] += 1
        if not table_change(keys, self.tiers, str(op), key, tier):
            log.warning("cluster: key change %r not applied (unknown op or tier)", change)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _store_change, store, str(op), key, tier,
                                   str(change.get("label", "")), str(change.get("prefix", "")))
        await self._reload_limits()

    async def sync_keys(self) -> None:
        """Apply the shared store's keys this node lacks or has otherwise (as
        after a reconnect); an unreachable Redis is the fallback."""
        await self._call(self._load_shared_keys)

    async def publish_key(self, op: str, key: str, tier: Optional[str],
                          label: str = "", prefix: str = "") -> Optional[int]:
        """Record a change to the key with ID `key` in the shared store and
        announce it; the nodes that heard it, or None when Redis is unreachable."""
        fields, message = key_record(op, key, tier, label, prefix)

        async def send() -> Any:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(KEY + key, items=fields)
                pipe.publish(KEYS_CHANNEL, message)
                return (await pipe.execute())[-1]
        result = await self._call(send)
        return None if result is None else int(result)

    async def read_key_records(self, key_ids: list[str]) -> Optional[dict[str, dict[str, str]]]:
        """The shared records of `key_ids` that exist (ID -> fields), in one
        pipeline; None when Redis is unreachable (the miss path then asks
        the database)."""
        async def read() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id in key_ids:
                    pipe.hgetall(KEY + key_id)
                return await pipe.execute()
        records = await self._call(read)
        if records is None:
            return None
        return {key_id: {k.decode(): v.decode() for k, v in record.items()}
                for key_id, record in zip(key_ids, records) if record}

    async def write_key_records(self, records: list[tuple[str, str, bool]]) -> bool:
        """(key ID, tier, revoked) the database had and Redis lacked, written
        through (no PUBLISH: nothing changed, a node only learned it)."""
        async def write() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id, tier, revoked in records:
                    fields, _ = key_record("revoke" if revoked else "add", key_id, tier, "")
                    pipe.hset(KEY + key_id, items=fields)
                return await pipe.execute()
        return await self._call(write) is not None

    async def _load_shared_keys(self) -> None:
        """Apply every key of the shared store (a hash per key) this node's
        copy lacks or has otherwise."""
        if self.store is None or self.api_keys is None:
            return
        loop = asyncio.get_running_loop()
        local = {r["key"]: r for r in await loop.run_in_executor(None, self.store.list)}
        names = [k async for k in self.redis.scan_iter(match=KEY + "*", count=500)]
        if not names:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(name)
            records = await pipe.execute()
        for name, record in zip(names, records):
            key = name.decode()[len(KEY):]
            fields = {k.decode(): v.decode() for k, v in record.items()}
            try:        # a record from before keys were hashed is named by the key
                mine = local.get(api_key_id(key))
            except (ValueError, UnicodeEncodeError):
                continue
            revoked = fields.get("revoked") == "1"
            if revoked and mine is not None and not mine["revoked"]:
                await self._apply_key({"op": "revoke", "key": key})
            elif not revoked and (mine is None or mine["tier"] != fields.get("tier")):
                await self._apply_key({"op": "add" if mine is None else "tier", "key": key,
                                       "tier": fields.get("tier"),
                                       "label": fields.get("label", ""),
                                       "prefix": fields.get("prefix", "")})


def key_record(op: str, key: str, tier: Optional[str], label: str,
               prefix: str = "") -> tuple[list[str | int], bytes]:
    """A key change as the shared store keeps it (HSET items of the key's
    hash) and as the nodes hear it (the pub/sub message).  `key` is the key's
    ID (`api_key_id`): Redis never holds a key itself."""
    fields: list[str | int] = ["revoked", 1 if op == "revoke" else 0]
    if tier is not None:
        fields += ["tier", tier]
    if label:
        fields += ["label", label]
    if prefix:
        fields += ["prefix", prefix]
    return fields, orjson.dumps({"op": op, "key": key, "tier": tier, "label": label,
                                 "prefix": prefix})


def queue_profile(pipe: Any, name: str) -> None:
    """A cluster-wide profile switch on a MULTI pipeline (sync or asyncio):
    kept for the nodes that start later, told to those running; the
    pipeline's last reply is the number of nodes that heard it."""
    pipe.set(PROFILE, name)
    pipe.publish(CONTROL_CHANNEL, orjson.dumps({"op": "profile", "name": name}))


def table_change(keys: APIKeyTable, tiers: dict[str, Tier], op: str, key: str,
                 tier_name: Any) -> bool:
    """A key change into the native table; False when it names no known tier."""
    tier = tiers.get(tier_name) if isinstance(tier_name, str) else None
    if op == "revoke":
        keys.revoke(key)
    elif op in ("add", "tier") and tier is not None:
        keys.set(key, qps=tier.qps, burst=tier.burst, monthly_cap=tier.monthly_cap,
                 ws_allowed=tier.stream, ws_max_connections=tier.stream_connections,
                 ws_max_subscriptions=tier.stream_symbols, shed_last=tier.shed_last)
    else:
        return False
    return True


def apply_key_change(keys: APIKeyTable, store: "Keys", op: str, key: str,
                     tier: Optional[str], label: str = "", prefix: str = "") -> None:
    """A node alone: the change into its table, then its store."""
    if table_change(keys, store.tiers, op, key, tier):
        _store_change(store, op, key, tier, label, prefix)


def _store_change(store: "Keys", op: str, key: str, tier: Optional[str], label: str,
                  prefix: str = "") -> None:
    """A key change into the local SQLite copy; one already there is fine."""
    try:
        if op == "revoke":
            store.revoke(key)
        elif op == "add" and tier is not None:
            store.add(tier, key=key, label=label, prefix=prefix or None)
        elif tier is not None:
            store.set_tier(key, tier)
    except KeyStoreError as exc:
        log.debug("cluster: local copy: %s", exc)


class Cluster(Component):
    """The node's link to the cluster's Redis (`serve --redis`), registered
    after the API keys (it leases their limits) and before the engines."""

    name = "cluster"
    off_paths = ("/admin/cluster-stats",)
    off_hint = "this server runs alone: start it with --redis URL"

    @classmethod
    def build(cls, host: "PriceService") -> Optional["Cluster"]:
        return cls(host, host.cfg.redis) if host.cfg.redis else None

    def __init__(self, host: "PriceService", url: str) -> None:
        cfg = host.cfg
        keys: Any = host.component("api_keys")
        store = keys.store if keys is not None else None
        self.node = ClusterNode(
            url, cfg.node_id or default_node_id(), snapshot=host.counters,
            profile=lambda: cfg.profile, switch_profile=host.switch_profile,
            api_keys=keys.api_keys if keys is not None else None, store=store,
            tiers=store.tiers if store is not None else None,
            interval_s=cfg.snapshot_interval_s, ttl_s=cfg.snapshot_ttl_s,
            fallback=cfg.redis_fallback, usage_interval_s=cfg.usage_flush_interval_s)

    async def start(self) -> None:
        node = self.node
        await node.start()
        if node.reachable:
            # The shared keys before serving: a node joining a cluster serves
            # (and reports) the keys the others hold from its first request.
            await node.sync_keys()
        log.info("cluster node %s on %s: %s", node.node_id, redacted_url(node.url), node.mode,
                 extra={"fields": {"event": "cluster_joined", "node_id": node.node_id,
                                   "mode": node.mode}})

    async def stop(self) -> None:
        try:        # the last usage push and leaving the nodes hash; Redis may be gone
            await asyncio.wait_for(self.node.stop(), 5.0)
        except Exception as exc:       # a stop must finish whatever Redis does
            log.warning("cluster stop: %s", exc)

    def stats(self) -> dict[str, Any]:
        return {"cluster": self.node.status()}

    def families(self) -> list[MetricFamily]:
        status = self.node.status()
        return [MetricFamily("beastnet_cluster_redis_reachable", "gauge",
                             "1 while Redis answers (shared limits leased), 0 in the fallback.")
                .add(1 if status["redis_reachable"] else 0, mode=status["mode"])]

    def routes(self) -> list[AdminRoute]:
        return [AdminRoute("/admin/cluster-stats", ("GET", "HEAD"), self._cluster_stats)]

    def unavailable(self) -> Answer:
        """The answer while Redis cannot be reached (503)."""
        return error_answer("unavailable", f"redis unreachable: {self.node.last_error}",
                            node=self.node.status())

    async def _cluster_stats(self, request: MissRequest) -> Answer:
        stats = await self.node.cluster_stats()
        if stats is None:
            return self.unavailable()
        return Answer(orjson.dumps(stats, default=str))

    async def publish_profile(self, name: str) -> Answer:
        """Publish a profile switch; every node (this one too) applies it on receipt."""
        nodes = await self.node.publish_profile(name)
        if nodes is None:
            return self.unavailable()
        return Answer({"profile": name, "scope": "cluster", "nodes_notified": nodes})
