"""The usage log in PostgreSQL: `usage_log` (schema version 3, stores/
postgres.py MIGRATIONS), partitioned by month on `minute`.

A batch is appended (`method="append"`, the default): COPY (asyncpg's
copy_records_to_table, the binary protocol) of the rows as the usage log
has them into `usage_log_fresh` (migration 6), a heap with no key and no
index, in a transaction whose first statement claims the batch's number in
`usage_writers` (sent with BEGIN as one message: three round trips, BEGIN
and the claim, the COPY, COMMIT), so a batch retried after a COMMIT whose
answer was lost is skipped.  The upsert into usage_log's primary key, most
of PostgreSQL's cost a row, is not paid on the write: once a second
(COMPACT_EVERY_S) a write starts a fold in the background, which adds the
appended rows' sums to usage_log (ON CONFLICT) and deletes them, in one
REPEATABLE READ transaction (_COMPACT says why), so a cell written by every
batch of its minute is upserted once a fold, not once a batch.  Every read
(totals, detail) goes through the view `usage_log_all` (both tables) and
sums, so a report is the same before and after a fold; one node folds at a
time (an advisory lock), and a fold that overlaps another anyway fails
whole, never doubles.  Rows/s, this against the others: benchmarks/README.md, "Usage log and reports".

`method="unnest"` writes a batch as one statement: its
columns bound as eight arrays, expanded by unnest() into an INSERT ... ON
CONFLICT that adds to the stored counts, with the batch's claim in
`usage_writers` (migration 5) in a data-modifying CTE of the same statement,
so a batch retried after a COMMIT whose answer was lost is skipped.  One
statement is one implicit transaction (all or nothing) and one round trip,
prepared once per connection.  `method="copy"` writes the batch with COPY
(asyncpg's copy_records_to_table, the binary protocol) into a temporary
staging table and then upserts from it: COPY alone cannot add to a row that
exists, and a minute's row is written again by every batch of that minute,
so it costs BEGIN, COPY, the upsert and COMMIT, four round trips; at the
default batch of 300 rows those round trips, not the transfer, are the time
(benchmarks/README.md, "Usage log and reports").  `method="executemany"`
writes the same upsert row by row (what the benchmark compares them with).

The pool's connections are not reset when returned (asyncpg's default runs
`RESET ALL; UNLISTEN *; ...`, one more round trip a batch): nothing here
changes a session's state.  `write_many` writes several batches at once,
each on a connection of its own (the usage log's lanes, serve/usage_log.py).

Partitions are created ahead: the month of every write and the next
PARTITIONS_AHEAD months exist before a row needs them (a DEFAULT partition
catches anything else, such as a clock far off).
"""
from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timezone
from typing import Any, Optional

from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.postgres import (PoolOnLoop, _driver, _driver_errors, _failed,
                                            _keep_session_kw)
from beastnet.serve.stores.usage_log import Totals, UsageRow

__all__ = ["PARTITIONS_AHEAD", "USAGE_LOG_SCHEMA", "PostgresUsageLog"]

log = logging.getLogger("beastnet.serve.usage_log")

USAGE_LOG_SCHEMA = 6            #: the schema version that added usage_log_fresh
USAGE_LOG_VERSIONS = {3, 5, 6}  #: the migrations the usage log needs
PARTITIONS_AHEAD = 2            #: months created beyond the current one
COMPACT_EVERY_S = 1.0           #: append: usage_log_fresh folded into usage_log this often
FOLD_LOCK = 0x626E_666F         #: the advisory lock of a fold ("bnfo"): one node folds at a time

# append: a batch's claim opens its transaction, in the same simple-protocol
# message as BEGIN (one round trip); "INSERT 0 0": the number was applied
# already.  The writer ID is spliced in as a literal (a simple query has no
# parameters): _literal lets through only what usage logs make (hex, dots,
# dashes), anything else takes the parameterised claim of its own.
_BEGIN_CLAIM = """BEGIN;
INSERT INTO usage_writers AS w (writer, seq) VALUES ('{writer}', {seq})
ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = now()
WHERE w.seq < excluded.seq"""

# Fold appended rows into usage_log: in a REPEATABLE READ transaction, add
# the sums of every appended row its snapshot sees, then delete those rows
# (the same snapshot: a row committed meanwhile is neither summed nor
# deleted), so a reader sees each count once, in one table or the other.
# Another fold that deleted some of them after this snapshot makes the
# DELETE fail (could not serialize): all rolled back, nothing counted twice.
# The advisory lock keeps the nodes from folding at once (the loser would
# only fail so); ordered by the key, an upsert locks its cells in the order
# any other writer of usage_log would.  A probe (benchmarks/README.md): the
# sums and the delete as two statements took 0.65-0.75x the time of one
# DELETE ... RETURNING feeding the upsert.
_COMPACT = """
INSERT INTO usage_log AS u (key, minute, protocol, route, admitted, refused, rate_limited,
                            over_quota)
SELECT key, to_timestamp(minute), protocol, route, sum(admitted), sum(refused),
       sum(rate_limited), sum(over_quota)
FROM usage_log_fresh GROUP BY minute, key, protocol, route
ORDER BY minute, key, protocol, route
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = u.admitted + excluded.admitted, refused = u.refused + excluded.refused,
    rate_limited = u.rate_limited + excluded.rate_limited,
    over_quota = u.over_quota + excluded.over_quota"""

_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS usage_stage (
    key TEXT, minute TIMESTAMPTZ, protocol TEXT, route TEXT,
    admitted BIGINT, refused BIGINT, rate_limited BIGINT, over_quota BIGINT
) ON COMMIT DELETE ROWS"""

_ADD = """
INSERT INTO usage_log AS u (key, minute, protocol, route, admitted, refused, rate_limited,
                            over_quota)
SELECT key, minute, protocol, route, sum(admitted), sum(refused), sum(rate_limited),
       sum(over_quota)
FROM {source} GROUP BY 1, 2, 3, 4
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = u.admitted + excluded.admitted, refused = u.refused + excluded.refused,
    rate_limited = u.rate_limited + excluded.rate_limited,
    over_quota = u.over_quota + excluded.over_quota"""

# The claim and the upsert in one statement (one round trip fewer a batch
# than a claim of its own: 0.86x the unnumbered rate at 300 rows otherwise,
# benchmarks/README.md).  A data-modifying CTE runs once, whatever reads it;
# a batch whose number was taken upserts nothing ("INSERT 0 0"), any other
# at least one row.
_ADD_CLAIMED = """
WITH claim AS (
    INSERT INTO usage_writers AS w (writer, seq) VALUES ($1, $2)
    ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = now()
    WHERE w.seq < excluded.seq RETURNING 1)
INSERT INTO usage_log AS u (key, minute, protocol, route, admitted, refused, rate_limited,
                            over_quota)
SELECT key, minute, protocol, route, sum(admitted), sum(refused), sum(rate_limited),
       sum(over_quota)
FROM usage_stage WHERE EXISTS (SELECT 1 FROM claim) GROUP BY 1, 2, 3, 4
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = u.admitted + excluded.admitted, refused = u.refused + excluded.refused,
    rate_limited = u.rate_limited + excluded.rate_limited,
    over_quota = u.over_quota + excluded.over_quota"""

_UNNEST = """unnest($3::text[], $4::int8[], $5::text[], $6::text[], $7::int8[], $8::int8[],
              $9::int8[], $10::int8[]) AS b(key, minute, protocol, route, admitted, refused,
                                           rate_limited, over_quota)"""

# The batch in one statement, no GROUP BY: a batch that repeats a cell fails
# (ON CONFLICT cannot touch one row twice in a statement) and is sent again
# merged (_upsert_arrays).  Minutes travel as Unix seconds (to_timestamp is exact for
# whole seconds): no datetime object built per row in Python.
_UPSERT_ARRAYS = """
WITH claim AS (
    INSERT INTO usage_writers AS w (writer, seq) SELECT $1, $2 WHERE $1::text IS NOT NULL
    ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = now()
    WHERE w.seq < excluded.seq RETURNING 1)
INSERT INTO usage_log AS u (key, minute, protocol, route, admitted, refused, rate_limited,
                            over_quota)
SELECT key, to_timestamp(minute), protocol, route, admitted, refused, rate_limited, over_quota
FROM """ + _UNNEST + """
WHERE $1::text IS NULL OR EXISTS (SELECT 1 FROM claim)
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = u.admitted + excluded.admitted, refused = u.refused + excluded.refused,
    rate_limited = u.rate_limited + excluded.rate_limited,
    over_quota = u.over_quota + excluded.over_quota"""

_ADD_ONE = """
INSERT INTO usage_log AS u VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = u.admitted + excluded.admitted, refused = u.refused + excluded.refused,
    rate_limited = u.rate_limited + excluded.rate_limited,
    over_quota = u.over_quota + excluded.over_quota"""

# The batch's number against its writer's last: a row back means apply it.
_CLAIM = """
INSERT INTO usage_writers AS w (writer, seq) VALUES ($1, $2)
ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = now() WHERE w.seq < excluded.seq
RETURNING 1"""

_SUMS = "sum(admitted), sum(refused), sum(rate_limited), sum(over_quota)"
_BUCKETS = {60: "minute", 3600: "date_trunc('hour', minute)", 86400: "date_trunc('day', minute)"}


def _stamp(unix_s: int) -> datetime:
    return datetime.fromtimestamp(unix_s, timezone.utc)


def _month_start(year: int, month: int) -> datetime:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return datetime(year, month, 1, tzinfo=timezone.utc)


class PostgresUsageLog(PoolOnLoop):
    """`UsageLogStore` on PostgreSQL; `dsn` a postgresql:// URL."""

    def __init__(self, dsn: str, timeout_s: float = 5.0, pool_size: int = 2,
                 method: str = "append", wait_for_it: bool = False,
                 compact_every_s: Optional[float] = COMPACT_EVERY_S) -> None:
        """`wait_for_it`: a database out of reach now is not an error (serve
        starts from its key cache, apikeys.py); each write tries to connect
        again, and fails like any write to a database that is down.
        `compact_every_s` (append): how often a write starts a fold of
        usage_log_fresh in the background; None: only `compact()` does."""
        if method not in ("append", "unnest", "copy", "executemany"):
            raise ValueError(f"method {method!r}: append, unnest, copy or executemany")
        self.method = method
        self.write_lanes = pool_size    # batches write_many may have in flight at once
        self.compact_every_s = compact_every_s
        self.compactions = 0            # folds of usage_log_fresh that moved rows
        self.rows_compacted = 0
        self.compact_errors = 0
        self._compacting: Optional[asyncio.Task] = None
        self._compacted_at = 0.0        # the store loop's clock
        self._months: set[tuple[int, int]] = set()     # partitions known to exist
        self._pool_size = pool_size
        self._opening = asyncio.Lock()
        self._readers: Optional[tuple[Any, Any]] = None  # (loop, task opening its pool)
        self._partitioning = asyncio.Lock()     # write_many's batches create months one at a time
        self._start_loop(dsn, timeout_s, "beastnet-usage-pg")
        self._open_first(self._open(pool_size), wait_for_it)    # else each write tries again

    async def _open(self, pool_size: int) -> Any:
        async def stage(conn: Any) -> None:     # each connection's own staging table
            await conn.execute(_STAGE)
        # One connection more than the lanes: the background fold's.
        return await self._open_pool(self._check_schema, pool_size + 1, init=stage,
                                     keep_session=True)

    def _check_schema(self, applied: set[int]) -> None:
        if not USAGE_LOG_VERSIONS <= applied:   # versions land in any order (postgres.migrate)
            raise KeyStoreError(f"database {self.path}: schema version "
                                f"{max(applied, default=0)}, the usage log needs "
                                f"{USAGE_LOG_SCHEMA}: run `beastnet db migrate --database URL`")

    async def _with_conn(self, work: Any, what: str) -> Any:
        if self._pool is None:          # down at start (wait_for_it)
            async with self._opening:   # one opener, however many calls wait
                if self._pool is None:
                    self._pool = await self._open(self._pool_size)
        try:
            async with self._pool.acquire(timeout=self.timeout_s) as conn:
                return await work(conn)
        except _driver_errors() as exc:
            raise _failed(exc, self.dsn, what) from None

    # -- partitions ------------------------------------------------------------------

    async def _ensure_partitions(self, conn: Any, minutes: set[int]) -> None:
        """Create the month of each of `minutes` and PARTITIONS_AHEAD more."""
        wanted = set()
        for minute in minutes:
            day = _stamp(minute)
            for ahead in range(PARTITIONS_AHEAD + 1):
                start = _month_start(day.year, day.month + ahead)
                wanted.add((start.year, start.month))
        for year, month in sorted(wanted - self._months):
            start, end = _month_start(year, month), _month_start(year, month + 1)
            try:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS usage_log_{year:04d}{month:02d} PARTITION OF "
                    f"usage_log FOR VALUES FROM ('{start.isoformat()}') TO "
                    f"('{end.isoformat()}')")
            except _driver_errors() as exc:
                # Another node created it between IF NOT EXISTS's look and
                # its insert (42P07, or 23505 on the catalog's unique index).
                if getattr(exc, "sqlstate", None) not in ("42P07", "23505"):
                    raise
            self._months.add((year, month))

    # -- UsageLogStore ---------------------------------------------------------------

    def write(self, rows: list[UsageRow], batch: Optional[tuple[str, int]] = None) -> bool:
        if not rows:
            return True
        return bool(self.call(self._write(rows, batch)))

    def write_many(self, batches: list[tuple[list[UsageRow], Optional[tuple[str, int]]]]
                   ) -> list[Any]:
        """Write `batches` at once, each as `write` would, on connections of
        their own (at most `write_lanes` at a time, the pool's size); per
        batch, what `write` returns, or the KeyStoreError it would raise."""
        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*(self._write(rows, batch)
                                               for rows, batch in batches),
                                             return_exceptions=True))
        out = self.call(all_of())
        for result in out:      # anything but a store failure is a bug: raise it
            if isinstance(result, BaseException) and not isinstance(result, KeyStoreError):
                raise result
        return out

    async def _write(self, rows: list[UsageRow], batch: Optional[tuple[str, int]]) -> bool:
        if self.method == "append":
            applied = await self._with_conn(lambda conn: self._append(conn, rows, batch),
                                            "usage log write failed")
            self._compact_soon()
            return bool(applied)
        if self.method == "unnest":
            return await self._with_conn(lambda conn: self._upsert_arrays(conn, rows, batch),
                                         "usage log write failed")
        records = [(r.key, _stamp(r.minute), r.protocol, r.route, r.admitted, r.refused,
                    r.rate_limited, r.over_quota) for r in rows]
        minutes = {r.minute - r.minute % 86400 for r in rows}

        async def work(conn: Any) -> bool:
            await self._partitions_for(conn, minutes)
            async with conn.transaction():
                if self.method == "copy":
                    await conn.copy_records_to_table("usage_stage", records=records,
                                                     timeout=self.timeout_s)
                    if batch is None:
                        await conn.execute(_ADD.format(source="usage_stage"),
                                           timeout=self.timeout_s)
                        return True
                    status = await conn.execute(_ADD_CLAIMED, batch[0], batch[1],
                                                timeout=self.timeout_s)
                    return bool(status != "INSERT 0 0")   # 0: applied already
                if batch is not None and await conn.fetchval(
                        _CLAIM, batch[0], batch[1], timeout=self.timeout_s) is None:
                    return False        # applied already: its COMMIT's answer was lost
                await conn.executemany(_ADD_ONE, records, timeout=self.timeout_s)
            return True
        return bool(await self._with_conn(work, "usage log write failed"))

    async def _partitions_for(self, conn: Any, days: set[int]) -> None:
        if not {(_stamp(d).year, _stamp(d).month) for d in days} <= self._months:
            async with self._partitioning:
                await self._ensure_partitions(conn, days)

    async def _append(self, conn: Any, rows: list[UsageRow],
                      batch: Optional[tuple[str, int]]) -> bool:
        """COPY the rows, as they are, into usage_log_fresh; numbered, in a
        transaction that claims the number first (BEGIN and the claim one
        round trip, the COPY one, COMMIT one)."""
        await self._partitions_for(conn, {r[1] - r[1] % 86400 for r in rows})
        if batch is None:               # one statement: all or nothing by itself
            await conn.copy_records_to_table("usage_log_fresh", records=rows,
                                             timeout=self.timeout_s)
            return True
        writer, seq = batch
        try:
            if _literal(writer):
                status = await conn.execute(_BEGIN_CLAIM.format(writer=writer, seq=int(seq)),
                                            timeout=self.timeout_s)
            else:
                await conn.execute("BEGIN", timeout=self.timeout_s)
                status = await conn.execute(_CLAIM, writer, seq, timeout=self.timeout_s)
            if status.endswith(" 0"):   # applied already: its COMMIT's answer was lost
                await conn.execute("ROLLBACK", timeout=self.timeout_s)
                return False
            await conn.copy_records_to_table("usage_log_fresh", records=rows,
                                             timeout=self.timeout_s)
            await conn.execute("COMMIT", timeout=self.timeout_s)
            return True
        except BaseException:
            # Not back to the pool in a transaction (the pool does not reset
            # it): rolled back, or closed if it cannot say.
            if not conn.is_closed() and conn.is_in_transaction():
                try:
                    await conn.execute("ROLLBACK", timeout=self.timeout_s)
                except BaseException:
                    conn.terminate()
            raise

    # -- the background fold (append) ----------------------------------------------

    def _compact_soon(self) -> None:
        if self.compact_every_s is None:
            return
        if self._compacting is not None and not self._compacting.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._compacted_at < self.compact_every_s:
            return
        self._compacted_at = loop.time()
        self._compacting = loop.create_task(self._compact_quietly())

    async def _compact_quietly(self) -> None:
        try:
            await self._compact()
        except KeyStoreError as exc:        # tried again at the next interval
            self.compact_errors += 1
            log.warning("usage log: %s (appended rows stay where reports read them; "
                        "folded later)", exc)

    async def _compact(self) -> int:
        asyncpg = _driver()

        async def work(conn: Any) -> int:
            try:
                async with conn.transaction(isolation="repeatable_read"):
                    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                               FOLD_LOCK, timeout=self.timeout_s):
                        return 0                # another node is folding
                    status = await conn.execute(_COMPACT, timeout=self.timeout_s * 4)
                    await conn.execute("DELETE FROM usage_log_fresh",
                                       timeout=self.timeout_s * 4)
                    return int(status.split()[-1])
            except asyncpg.SerializationError:
                return 0                        # a fold or trim took rows first: next time
        moved = int(await self._with_conn(work, "usage log fold failed"))
        if moved:
            self.compactions += 1
        self.rows_compacted += moved
        return moved

    def fold_counters(self) -> dict[str, int]:
        """The background fold's counts, for the usage log's counters."""
        return {"usage_folds": self.compactions, "usage_rows_folded": self.rows_compacted,
                "usage_fold_errors": self.compact_errors}

    def compact(self) -> int:
        """Fold usage_log_fresh into usage_log now, after the background
        fold under way if any (any method's store can: another node may
        append); the cells written to usage_log by this call."""
        async def now() -> int:
            if self._compacting is not None and not self._compacting.done():
                await asyncio.wait([self._compacting])
            return await self._compact()
        return int(self.call(now()))

    async def _upsert_arrays(self, conn: Any, rows: list[UsageRow],
                             batch: Optional[tuple[str, int]]) -> bool:
        columns = list(map(list, zip(*rows)))   # key, minute, protocol, route, counts
        await self._partitions_for(conn, {m - m % 86400 for m in set(columns[1])})
        writer, seq = batch if batch is not None else (None, 0)
        try:
            status = await conn.execute(_UPSERT_ARRAYS, writer, seq, *columns,
                                        timeout=self.timeout_s)
        except _driver().CardinalityViolationError:
            # A cell twice in the batch (ON CONFLICT cannot touch a row twice
            # in one statement; the statement failed whole, nothing applied):
            # merged, once more.  The usage log's batches never repeat one, so
            # they pay for no check.
            status = await conn.execute(_UPSERT_ARRAYS, writer, seq,
                                        *map(list, zip(*_merged(rows))), timeout=self.timeout_s)
        return bool(status != "INSERT 0 0")     # 0: the batch's number was applied already

    def totals(self, key: Optional[str], start: int, end: int,
               bucket_s: Optional[int]) -> Totals:
        sql, args = _totals_sql(key, start, end, bucket_s)

        async def work(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args, timeout=self.timeout_s))
        return _totals(self.call(self._with_conn(work, "usage report failed")))

    def detail(self, key: Optional[str], start: int, end: int,
               after: Optional[tuple[int, str, str, str]], limit: int) -> list[UsageRow]:
        sql, args = _detail_sql(key, start, end, after, limit)

        async def work(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args, timeout=self.timeout_s))
        return _detail(self.call(self._with_conn(work, "usage report failed")))

    # -- reports on the caller's loop --------------------------------------------------

    async def totals_here(self, key: Optional[str], start: int, end: int,
                          bucket_s: Optional[int]) -> Totals:
        """`totals`, awaited on the calling loop (the control plane's, for a
        report): on a pool of that loop's own, so no thread stands between
        the report and its query."""
        return _totals(await self._read_here(*_totals_sql(key, start, end, bucket_s)))

    async def detail_here(self, key: Optional[str], start: int, end: int,
                          after: Optional[tuple[int, str, str, str]],
                          limit: int) -> list[UsageRow]:
        """`detail`, awaited on the calling loop (totals_here says why)."""
        return _detail(await self._read_here(*_detail_sql(key, start, end, after, limit)))

    def close(self) -> None:
        compacting, self._compacting = self._compacting, None
        if compacting is not None and not compacting.done() and self._loop.is_running():
            # A fold under way is one transaction: let it end (or fail).
            try:
                self.call(asyncio.wait([compacting], timeout=self.timeout_s))
            except KeyStoreError:
                pass
        readers, self._readers = self._readers, None
        if readers is not None:
            loop, opening = readers
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                pool = opening.result()
                try:
                    running = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is loop:
                    pool.terminate()            # at stop: closing the sockets will do
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(pool.terminate)
            elif not opening.done():
                opening.cancel()
        super().close()

    async def _read_here(self, sql: str, args: list) -> list[Any]:
        asyncpg = _driver()
        loop = asyncio.get_running_loop()
        if self._readers is None or self._readers[0] is not loop:
            # One pool per loop, opened by the first report (a task, so
            # reports arriving meanwhile wait for the same one).  The usage
            # log's writes keep the store's own loop and pool.
            async def open_pool() -> Any:      # create_pool's Pool is awaitable, not a coroutine
                return await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=self._pool_size, timeout=self.timeout_s,
                    **_keep_session_kw(asyncpg))
            self._readers = (loop, loop.create_task(open_pool()))
        opening = self._readers[1]
        failures = _driver_errors() + (ValueError,)     # ValueError: a DSN create_pool refuses
        try:
            pool = await asyncio.shield(opening)
            async with pool.acquire(timeout=self.timeout_s) as conn:
                return list(await conn.fetch(sql, *args, timeout=self.timeout_s))
        except failures as exc:
            if opening.done() and opening.exception() is not None and self._readers \
                    and self._readers[1] is opening:
                self._readers = None            # not opened: the next report tries again
            raise _failed(exc, self.dsn, "usage report failed") from None

    def trim(self, before: int) -> int:
        """Drop whole monthly partitions before `before`, then delete the rows
        left in the month it falls in (and the DEFAULT partition)."""
        cut = _stamp(before)

        async def work(conn: Any) -> int:
            removed = 0
            async with conn.transaction():
                parts = await conn.fetch(
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'usage_log'::regclass")
                for name, bound in parts:
                    if not name.startswith("usage_log_") or not name[10:].isdigit():
                        continue
                    year, month = int(name[10:14]), int(name[14:16])
                    if _month_start(year, month + 1) <= cut:
                        removed += int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
                        await conn.execute(f"DROP TABLE {name}")
                        self._months.discard((year, month))
                status = await conn.execute("DELETE FROM usage_log WHERE minute < $1", cut)
                removed += int(status.split()[-1])
                status = await conn.execute("DELETE FROM usage_log_fresh WHERE minute < $1",
                                            before)
                removed += int(status.split()[-1])
                # Writers not heard from since: processes long gone.
                await conn.execute("DELETE FROM usage_writers WHERE seen_at < $1", cut)
            return removed
        return int(self.call(self._with_conn(work, "usage log trim failed")))


def _totals_sql(key: Optional[str], start: int, end: int,
                bucket_s: Optional[int]) -> tuple[str, list]:
    bucket = f"extract(epoch FROM {_BUCKETS[bucket_s]})::bigint" if bucket_s else "NULL::bigint"
    where, args = _where(key, start, end)
    return (f"SELECT {bucket}, protocol, route, {_SUMS} FROM usage_log_all WHERE {where} "
            "GROUP BY 1, 2, 3"), args


def _totals(rows: list[Any]) -> Totals:
    return {(r[0], r[1], r[2]): [int(v) for v in r[3:]] for r in rows}


def _detail_sql(key: Optional[str], start: int, end: int,
                after: Optional[tuple[int, str, str, str]], limit: int) -> tuple[str, list]:
    where, args = _where(key, start, end)
    if after is not None:
        n = len(args)
        where += f" AND (minute, protocol, route, key) > (${n + 1}, ${n + 2}, ${n + 3}, ${n + 4})"
        args += [_stamp(after[0]), after[1], after[2], after[3]]
    args.append(limit)
    # A cell may be in usage_log and in usage_log_fresh, several times: summed.
    return ("SELECT key, extract(epoch FROM minute)::bigint, protocol, route, "
            f"{_SUMS} FROM usage_log_all WHERE {where} GROUP BY minute, protocol, route, key "
            f"ORDER BY minute, protocol, route, key LIMIT ${len(args)}"), args


def _detail(rows: list[Any]) -> list[UsageRow]:
    return [UsageRow(r[0], int(r[1]), r[2], r[3], *(int(v) for v in r[4:])) for r in rows]


_WRITER = re.compile(r"[A-Za-z0-9._-]{1,80}")


def _literal(writer: str) -> bool:
    """Whether `writer` may be spliced into _BEGIN_CLAIM as it is."""
    return _WRITER.fullmatch(writer) is not None


def _merged(rows: list[UsageRow]) -> list[UsageRow]:
    """`rows` with the counts of each repeated cell summed into one row."""
    sums: dict[tuple[str, int, str, str], list[int]] = {}
    for r in rows:
        into = sums.setdefault(r[:4], [0, 0, 0, 0])
        for i, v in enumerate(r[4:]):
            into[i] += v
    return [UsageRow(*cell, *counts) for cell, counts in sums.items()]


def _where(key: Optional[str], start: int, end: int) -> tuple[str, list]:
    if key is None:
        return "minute >= $1 AND minute < $2", [_stamp(start), _stamp(end)]
    return "minute >= $1 AND minute < $2 AND key = $3", [_stamp(start), _stamp(end), key]
