"""The usage log's real-time counters in the cluster's Redis (`serve
--redis`): each node's counts not yet in the usage log store, so a report on
any node is current to the second for every node's traffic, not only its own.

A node's usage log (serve/usage_log.py) holds counts between the engines and
the store: queued, in a batch in flight, or kept after a failed write.  Each
round it mirrors those of its cells that changed into Redis, in one pipeline:

    {bn}:ulive:<key ID>:<minute>   hash, one per key and minute
        field  <node>|<protocol>|<route>
        value  "<admitted> <refused> <rate_limited> <over_quota>"

    {bn}:ulive-all:<minute>        hash, one per minute, every key's
        field  <node>|<key ID>|<protocol>|<route>
        value  the same

The second is what reports across every key (the admin listener without
key=) read: one hash a minute, whatever the keys.  Every push also bumps
`{bn}:ulive-gen`, read in the same pipeline as the hashes: a node stores a
batch, then pushes, so a report's stored part read at one generation still
holds while the generation is the same (reports.py caches it so).  Both are set and deleted
in the same pipeline.  The value is the node's whole pending count for that cell, not an increment,
so a push that fails is simply sent again (the cells stay marked) and a
retried one cannot count twice; a cell written to the store is deleted from
the hash.  Every hash touched gets an expiry of `LIVE_TTL_S`, so the fields
of a node killed with SIGKILL (whose pending counts are lost, apart from
what it served) go within that; a node refreshes all it holds every third of
it.  A report reads the hashes of its key for the minutes of its range that
can still hold pending counts (the last `LIVE_TTL_S`), one HGETALL each, in
one pipelined call, and adds the other nodes' fields to the stored rows and
its own node's pending counts (read locally: they are fresher).

A count is in the store or in the mirror, give or take one round: between a
batch's COMMIT and the push that deletes its cells a report may count it
twice; a report on one node never misses another's counts for longer than
one push (the node pushes at least once a second, whatever the flush
interval).
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping, Optional

from beastnet import ClusterError
from beastnet.serve.cluster import PREFIX, aioredis, redacted_url, redis
from beastnet.serve.stores.usage_log import UsageRow

__all__ = ["LIVE", "LIVE_TTL_S", "RedisLiveUsage"]

LIVE = PREFIX + "ulive:"        # + key ID + ":" + minute: a key's pending counts that minute
LIVE_ALL = PREFIX + "ulive-all:"    # + minute: every key's pending counts that minute
GENERATION = PREFIX + "ulive-gen"   # bumped by every push: what a report's cache checks
LIVE_TTL_S = 300                # a hash's expiry, refreshed by every push that touches it

Cell = tuple[int, str, str, str]        # (minute, key, protocol, route), as the usage log has it


def live_hash(key: Optional[str], minute: int) -> str:
    """A key's hash of `minute`; key None: every key's."""
    return f"{LIVE}{key}:{minute}" if key is not None else f"{LIVE_ALL}{minute}"


class RedisLiveUsage:
    """One node's mirror of its pending usage counts, and the reader of
    every node's; `node` names this node's fields.  Calls block (the usage
    log's thread pushes, a report's executor thread reads) and raise
    ClusterError (one line, never the password) when Redis fails."""

    def __init__(self, url: str, node: str, ttl_s: int = LIVE_TTL_S,
                 timeout_s: float = 0.5) -> None:
        if redis is None:
            raise ClusterError("--redis needs the redis client: pip install 'beastnet[cluster]'")
        if "|" in node:
            raise ValueError("a node's name for the usage mirror may not hold '|'")
        self.url = redacted_url(url)
        self._url = url                 # with its password: for the asyncio client only
        self.node = node
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._async: Optional[tuple[Any, Any]] = None  # (loop, its asyncio client): read_here
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                               socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise ClusterError(f"--redis {self.url!r}: {exc}") from None

    def _failed(self, exc: BaseException, what: str) -> ClusterError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ClusterError(f"redis {self.url}: usage {what} failed: {detail}")

    def push(self, cells: Mapping[Cell, Optional[Iterable[int]]]) -> None:
        """Set each cell's pending counts (None: nothing pending, deleted),
        in one pipelined call."""
        if not cells:
            return
        touched: set[str] = set()
        pipe = self.client.pipeline(transaction=False)
        for (minute, key, protocol, route), counts in cells.items():
            name, field = live_hash(key, minute), f"{self.node}|{protocol}|{route}"
            every, every_field = live_hash(None, minute), f"{self.node}|{key}|{protocol}|{route}"
            if counts is None:
                pipe.hdel(name, field)
                pipe.hdel(every, every_field)
            else:
                value = " ".join(str(int(c)) for c in counts)
                pipe.hset(name, field, value)
                pipe.hset(every, every_field, value)
                touched.add(name)
                touched.add(every)
        for name in touched:
            pipe.expire(name, self.ttl_s)
        pipe.incr(GENERATION)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise self._failed(exc, "push") from None

    def _minutes(self, start: int, end: int, now: float) -> list[int]:
        """The minutes of [start, end) that can still hold pending counts."""
        first = max(start, (int(now) - self.ttl_s) // 60 * 60)
        last = min(end, int(now) // 60 * 60 + 60)
        return list(range(first - first % 60, last, 60))

    def read(self, key: Optional[str], start: int, end: int, now: float
             ) -> tuple[list[UsageRow], int]:
        """The other nodes' pending counts of `key` (None: of every key) for
        minutes in [start, end) that can still hold any, and the generation
        (GENERATION), in one pipelined call."""
        minutes = self._minutes(start, end, now)
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(live_hash(key, minute))
        pipe.get(GENERATION)
        try:
            answers: list[Any] = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise self._failed(exc, "read") from None
        return self._rows(key, start, end, minutes, answers)

    async def read_here(self, key: Optional[str], start: int, end: int,
                        now: float) -> tuple[list[UsageRow], int]:
        """`read`, awaited on the calling loop (a report on the control
        plane's) with an asyncio client of that loop's own."""
        minutes = self._minutes(start, end, now)
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, aioredis.from_url(self._url, socket_timeout=self.timeout_s,
                                                   socket_connect_timeout=self.timeout_s))
        try:
            async with self._async[1].pipeline(transaction=False) as pipe:
                for minute in minutes:
                    pipe.hgetall(live_hash(key, minute))
                pipe.get(GENERATION)
                answers: list[Any] = await pipe.execute()
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise self._failed(exc, "read") from None
        return self._rows(key, start, end, minutes, answers)

    def _rows(self, key: Optional[str], start: int, end: int, minutes: list[int],
              answers: list[Any]) -> tuple[list[UsageRow], int]:
        """The rows of the hashes' answers and the generation (the last)."""
        generation = int(answers[-1] or 0)
        own = self.node.encode() + b"|"
        width = 3 if key is not None else 4     # node|protocol|route, or node|key|protocol|route
        rows = []
        for minute, fields in zip(minutes, answers):
            for field, value in fields.items():
                if field.startswith(own) or not start <= minute < end:
                    continue
                parts, counts = field.split(b"|"), value.split()
                if len(parts) != width or len(counts) != 4 \
                        or not all(c.isdigit() for c in counts):
                    continue            # not a field this code writes: not ours to count
                who = key if key is not None else parts[1].decode()
                rows.append(UsageRow(who, minute, parts[-2].decode(), parts[-1].decode(),
                                     *(int(c) for c in counts)))
        return rows, generation

    async def aclose_here(self) -> None:
        """Close read_here's client (on its loop)."""
        held, self._async = self._async, None
        if held is not None:
            await held[1].aclose()

    def close(self) -> None:
        self.client.close()
