"""The usage log: per key, minute, protocol and route, counted natively and
written in micro-batches to SQLite (the key store's file) and to a real
PostgreSQL (COPY into monthly partitions).  Counts equal what the clients
saw; a PostgreSQL restart mid-run loses nothing (the queue carries); a full
queue is counted, never blocks; kill -9 loses at most about one interval."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import threading
import time
from typing import Any, Iterator, Optional

import orjson
import pytest

from beastnet import USAGE_ROUTE_NAMES, APIKeyTable, api_key_id
from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.usage_log import UNKNOWN_KEY, UsageLogStore, UsageRow
from beastnet.serve.stores.usage_sqlite import SQLiteUsageLog
from beastnet.serve.usage_log import UsageLog
from pg_support import postgres  # noqa: F401  (fixture)
from test_cluster import redis_server  # noqa: F401  (fixture)
from support import requires, wait_for
from test_serve import add_key, serve  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

ROUTE = {name: i for i, name in enumerate(USAGE_ROUTE_NAMES)}
VERDICT = {"ok": 0, "unauthorized": 1, "rate_limited": 2, "over_quota": 3}


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-unnest"])
def store(request, tmp_path) -> Iterator[Any]:
    """The usage log's stores: SQLite, PostgreSQL's default (COPY appended,
    folded in the background) and its one-statement upsert."""
    if request.param == "sqlite":
        out: Any = SQLiteUsageLog(str(tmp_path / "usage.db"))
        out.server = None
    else:
        from beastnet.serve.stores.postgres import migrate
        from beastnet.serve.stores.usage_postgres import PostgresUsageLog
        server = request.getfixturevalue("postgres")
        migrate(server.dsn)
        method = "unnest" if request.param == "postgresql-unnest" else "append"
        # The default 5 s: 2 s ran out once for a write on a 6-worker run
        out = PostgresUsageLog(server.dsn, method=method)
        out.server = server
    try:
        yield out
    finally:
        out.close()


def stored(store: UsageLogStore) -> dict[tuple[str, str, str], list[int]]:
    """Every stored count by (key, protocol, route), minutes summed."""
    out: dict[tuple[str, str, str], list[int]] = {}
    after = None
    while True:
        rows = store.detail(None, 0, 4_000_000_000, after, 1000)
        for r in rows:
            sums = out.setdefault((r.key, r.protocol, r.route), [0, 0, 0, 0])
            for i, v in enumerate((r.admitted, r.refused, r.rate_limited, r.over_quota)):
                sums[i] += v
        if len(rows) < 1000:
            return out
        last = rows[-1]
        after = (last.minute, last.protocol, last.route, last.key)


def admit(table: APIKeyTable, key: str, route: tuple[str, str], times: int,
          seen: dict[tuple[str, str, str], list[int]]) -> None:
    """`times` admissions on `route`, each verdict tallied as a client sees it."""
    for _ in range(times):
        verdict, _ = table.admit(key, usage_route=ROUTE[route])
        who = api_key_id(key) if key in table else UNKNOWN_KEY
        seen.setdefault((who, *route), [0, 0, 0, 0])[VERDICT[verdict]] += 1


def test_native_counts_become_rows_per_route_and_verdict(store):
    table = APIKeyTable()
    table.set(api_key_id("alpha"), qps=1.0, burst=5)
    table.set(api_key_id("beta"))
    table.set(api_key_id("capped"), monthly_cap=3)
    seen: dict[tuple[str, str, str], list[int]] = {}
    usage = UsageLog(store, table, interval_s=0.05, batch_rows=2)
    admit(table, "alpha", ("udp", "price"), 9, seen)            # 5 admitted, 4 rate limited
    admit(table, "beta", ("http", "snapshot"), 7, seen)
    admit(table, "beta", ("ws", "stream"), 2, seen)
    admit(table, "capped", ("http", "report"), 5, seen)         # 3 admitted, 2 over quota
    admit(table, "nobody", ("http", "price"), 4, seen)          # refused: unknown key
    assert usage.harvest() == 5
    assert usage.write_all() and usage.queued() == 0
    assert usage.rows_written == 5 and usage.batch_flush_errors == 0
    assert stored(store) == seen
    assert seen[(api_key_id("alpha"), "udp", "price")] == [5, 0, 4, 0]
    one, _ = table.usage_counts("alpha")                # one key: a lookup, by key or ID
    assert list(one) == ["alpha"] and one["alpha"][:4] == (5, 0, 4, 0)
    assert table.usage_counts("nobody")[0] == {}
    # A second harvest adds only what moved since the first.
    admit(table, "beta", ("ws", "stream"), 3, seen)
    usage.harvest()
    usage.write_all()
    assert stored(store) == seen


def test_pending_counts_are_reported_before_they_are_written(store):
    table = APIKeyTable()
    table.set(api_key_id("alpha"))
    usage = UsageLog(store, table)
    seen: dict[tuple[str, str, str], list[int]] = {}
    admit(table, "alpha", ("http", "price"), 6, seen)
    usage.harvest()
    admit(table, "alpha", ("http", "price"), 4, seen)          # not harvested yet
    pending = usage.pending(api_key_id("alpha"))
    assert sum(r.admitted for r in pending) == 10 and stored(store) == {}


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_a_failed_batch_stays_queued_and_a_full_queue_counts_bg_drop(store, tmp_path):
    table = APIKeyTable()
    for i in range(5):
        table.set(api_key_id(f"key{i}"))
    # One minute for every harvest: stopping PostgreSQL between the first two
    # took a minute boundary once (two cells, not one merged).
    minute = time.time() // 60 * 60
    usage = UsageLog(store, table, queue_rows=3, clock=lambda: minute + 1.0)
    seen: dict[tuple[str, str, str], list[int]] = {}
    admit(table, "key0", ("udp", "price"), 2, seen)
    usage.harvest()
    down = _take_down(store, tmp_path)
    admit(table, "key0", ("udp", "price"), 3, seen)             # merged into the queued cell
    usage.harvest()
    assert usage.write_batch() == -1 and usage.batch_flush_errors == 1 and usage.queued() == 1
    for i in range(1, 5):
        admit(table, f"key{i}", ("http", "price"), 1, seen)
    usage.harvest()                                            # 2 new cells fit, 2 do not
    assert usage.bg_drop == 2 and usage.queued() == 3
    down()                                                     # the store is back
    assert usage.write_all() and usage.queued() == 0
    got = stored(store)
    assert got[(api_key_id("key0"), "udp", "price")] == [5, 0, 0, 0]
    assert len(got) == 3 and usage.rows_written == 3


def test_a_batch_is_applied_once_under_its_number(store):
    """The store's half of the retry rule: a writer's batch at or below its
    last applied number is skipped (False), in the same transaction."""
    row = UsageRow(api_key_id("alpha"), 1_796_000_040, "http", "price", 2, 1, 0, 0)
    assert store.write([row], ("writer-a", 1)) is True
    assert store.write([row], ("writer-a", 1)) is False        # the same batch again
    assert store.write([row], ("writer-b", 1)) is True         # another writer's first
    assert store.write([row], ("writer-a", 2)) is True
    assert store.write([row], ("writer-a", 1)) is False        # an old one, later
    assert store.write([row]) is True                          # unnumbered: always applied
    assert stored(store) == {(api_key_id("alpha"), "http", "price"): [8, 4, 0, 0]}
    if store.server is not None:        # PostgreSQL's row-by-row writer claims alike
        from beastnet.serve.stores.usage_postgres import PostgresUsageLog
        rowwise = PostgresUsageLog(store.server.dsn, method="executemany")
        try:
            assert rowwise.write([row], ("writer-a", 2)) is False
            assert rowwise.write([row], ("writer-a", 3)) is True
        finally:
            rowwise.close()
        assert stored(store) == {(api_key_id("alpha"), "http", "price"): [10, 5, 0, 0]}


def test_a_batch_may_repeat_a_cell(store):
    """Two rows of one cell in one batch add up (PostgreSQL's one-statement
    upsert merges them first: ON CONFLICT cannot touch a row twice)."""
    row = UsageRow(api_key_id("alpha"), 1_796_000_040, "http", "price", 2, 1, 0, 0)
    other = row._replace(route="snapshot")
    assert store.write([row, other, row], ("writer-a", 1)) is True
    assert stored(store) == {(api_key_id("alpha"), "http", "price"): [4, 2, 0, 0],
                             (api_key_id("alpha"), "http", "snapshot"): [2, 1, 0, 0]}


def test_appended_rows_fold_once_however_many_stores_fold_them(postgres):  # noqa: F811
    """The default PostgreSQL write appends (COPY into usage_log_fresh);
    reads sum usage_log and usage_log_fresh, so a fold (delete from the one,
    add to the other, one statement) changes no report, and two stores
    folding at once take each row once."""
    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    a = PostgresUsageLog(postgres.dsn, compact_every_s=None)
    b = PostgresUsageLog(postgres.dsn, compact_every_s=None)
    try:
        keys = [api_key_id(f"k{i}") for i in range(50)]
        for seq in range(1, 41):    # 40 batches of 50 cells, each cell 20 times a store
            batch = [UsageRow(k, 1_796_000_040 + 60 * (seq % 2), "http", "price", 1, 0, 0, 0)
                     for k in keys]
            assert a.write(batch, ("a", seq)) and b.write(batch, ("b", seq))
        assert postgres.psql("SELECT count(*) FROM usage_log_fresh") == 4000
        before = stored(a)
        totals = a.totals(None, 0, 4_000_000_000, 60)
        assert before == {(k, "http", "price"): [80, 0, 0, 0] for k in keys}
        folded: list[int] = []
        threads = [threading.Thread(target=lambda s=s: folded.append(s.compact()))
                   for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert postgres.psql("SELECT count(*) FROM usage_log_fresh") == 0
        # 100 cells (50 keys, 2 minutes), folded by the one store that took
        # the lock (the other found it taken, or failed whole: 0).
        assert sorted(folded) == [0, 100]
        assert postgres.psql("SELECT count(*) FROM usage_log") == 100
        assert stored(a) == before and a.totals(None, 0, 4_000_000_000, 60) == totals
        # A cell in both tables reads as one row, summed.
        assert a.write([UsageRow(keys[0], 1_796_000_040, "http", "price", 1, 0, 0, 0)])
        page = a.detail(keys[0], 0, 4_000_000_000, None, 10)
        assert [(r.minute, r.admitted) for r in page] == [(1_796_000_040, 41),
                                                          (1_796_000_100, 40)]
    finally:
        a.close()
        b.close()


def test_a_fold_whose_snapshot_another_fold_overtook_fails_whole(postgres):  # noqa: F811
    """The race the advisory lock leaves: fold B's snapshot is taken, fold
    A folds and commits, B gets the lock and sums the rows A folded.  Its
    DELETE of them fails (REPEATABLE READ: deleted after its snapshot), so
    B's sums roll back with it: every count once."""
    import asyncpg

    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import _COMPACT, FOLD_LOCK, PostgresUsageLog
    migrate(postgres.dsn)
    store = PostgresUsageLog(postgres.dsn, compact_every_s=None)
    row = UsageRow(api_key_id("alpha"), 1_796_000_040, "http", "price", 3, 0, 0, 0)

    async def late_fold() -> None:
        conn = await asyncpg.connect(postgres.dsn)
        try:
            async with conn.transaction(isolation="repeatable_read"):
                await conn.fetchval("SELECT 1")                 # B's snapshot
                await asyncio.get_running_loop().run_in_executor(None, store.compact)  # A
                assert await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FOLD_LOCK)
                assert await conn.execute(_COMPACT) == "INSERT 0 1"   # A's rows, again
                await conn.execute("DELETE FROM usage_log_fresh")
        finally:
            await conn.close()
    try:
        assert store.write([row], ("w", 1)) and store.write([row], ("w", 2))
        with pytest.raises(asyncpg.SerializationError):
            asyncio.run(late_fold())
        assert store.rows_compacted == 1
        assert postgres.psql("SELECT admitted FROM usage_log") == 6
        assert stored(store) == {(api_key_id("alpha"), "http", "price"): [6, 0, 0, 0]}
    finally:
        store.close()


def test_appended_rows_fold_in_the_background(postgres):  # noqa: F811
    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    store = PostgresUsageLog(postgres.dsn, compact_every_s=0.05)
    try:
        row = UsageRow(api_key_id("alpha"), 1_796_000_040, "udp", "price", 3, 0, 0, 0)
        seq = 0

        def folded() -> bool:
            nonlocal seq
            seq += 1                # a write starts the fold once its interval passed
            store.write([row], ("w", seq))
            return store.rows_compacted > 0
        wait_for(folded, message="a background fold")
        assert store.compact_errors == 0
        assert postgres.psql("SELECT admitted FROM usage_log") >= 3
        store.compact()
        assert postgres.psql("SELECT admitted FROM usage_log") == 3 * seq
        # what /admin/stats, /metrics and the snapshot show of the fold
        assert store.fold_counters() == {"usage_folds": store.compactions,
                                         "usage_rows_folded": store.rows_compacted,
                                         "usage_fold_errors": 0}
        # Every fold moved the one cell (a fold counts the cells it wrote);
        # the explicit compact() finds nothing left when a background fold
        # came after the last write (once in a quiet six-worker run).
        assert store.compactions >= 1 and store.rows_compacted == store.compactions
        assert postgres.psql("SELECT count(*) FROM usage_log_fresh") == 0
    finally:
        store.close()


@pytest.mark.parametrize("writer", ["w-1.2", "w'; DROP TABLE usage_log; --"])
def test_an_append_whose_commit_answer_was_lost_counts_once_when_retried(
        postgres, monkeypatch, writer):  # noqa: F811
    """The COMMIT reached PostgreSQL, its answer did not (the connection
    dropped): the write fails, the rows are stored, the claim with them; the
    retry of the same batch is skipped.  A writer ID that is not plain takes
    the parameterised claim, with the same outcome."""
    import asyncpg

    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    store = PostgresUsageLog(postgres.dsn, compact_every_s=None)
    real_with_conn = store._with_conn
    lost = [1]

    class AnswerLost:
        def __init__(self, conn: Any) -> None:
            self.conn = conn

        def __getattr__(self, name: str) -> Any:
            return getattr(self.conn, name)

        async def execute(self, sql: str, *args: Any, **kw: Any) -> Any:
            status = await self.conn.execute(sql, *args, **kw)
            if sql == "COMMIT" and lost:
                lost.pop()
                raise asyncpg.ConnectionDoesNotExistError("connection was closed in the "
                                                          "middle of operation")
            return status

    async def with_conn(work: Any, what: str) -> Any:
        return await real_with_conn(lambda conn: work(AnswerLost(conn)), what)
    monkeypatch.setattr(store, "_with_conn", with_conn)
    row = UsageRow(api_key_id("alpha"), 1_796_000_040, "http", "price", 7, 1, 0, 0)
    try:
        with pytest.raises(KeyStoreError, match="usage log write failed"):
            store.write([row], (writer, 1))
        assert not lost, "the COMMIT was sent"
        assert store.write([row], (writer, 1)) is False     # the retry: stored already
        assert store.write([row], (writer, 2)) is True
        assert stored(store) == {(api_key_id("alpha"), "http", "price"): [14, 2, 0, 0]}
        assert postgres.psql("SELECT to_regclass('usage_log') IS NOT NULL")
        assert postgres.psql(f"SELECT seq FROM usage_writers WHERE writer = "
                             f"'{writer.replace(chr(39), chr(39) * 2)}'") == 2
    finally:
        store.close()


class _AnswerLost:
    """The store commits the first batch, then the answer is lost (the
    connection dropped after COMMIT, or the wait for it timed out): the
    writer sees a failure for a batch that is stored."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.lost = 1

    def write(self, rows, batch=None):
        applied = self.store.write(rows, batch)
        if self.lost:
            self.lost -= 1
            raise KeyStoreError("database: usage log write failed: connection was closed in "
                                "the middle of operation")
        return applied


def test_a_retried_batch_whose_commit_went_through_is_not_counted_twice(store):
    table = APIKeyTable()
    table.set(api_key_id("alpha"))
    usage = UsageLog(_AnswerLost(store), table)
    seen: dict[tuple[str, str, str], list[int]] = {}
    admit(table, "alpha", ("udp", "price"), 5, seen)
    usage.harvest()
    assert usage.write_batch() == -1 and usage.batch_flush_errors == 1
    admit(table, "alpha", ("udp", "price"), 4, seen)           # a new cell: not in the batch
    usage.harvest()
    assert usage.queued() == 2 and sum(r.admitted for r in usage.pending()) == 9
    assert usage.write_all() and usage.queued() == 0
    assert usage.batches_skipped == 1 and usage.rows_written == 2
    assert stored(store) == seen == {(api_key_id("alpha"), "udp", "price"): [9, 0, 0, 0]}


def writers(store: Any) -> dict[str, int]:
    """usage_writers: each writer's last applied batch number."""
    if store.server is not None:
        import asyncpg

        async def read() -> dict[str, int]:
            conn = await asyncpg.connect(store.server.dsn)
            try:
                return {r[0]: r[1] for r in await conn.fetch(
                    "SELECT writer, seq FROM usage_writers")}
            finally:
                await conn.close()
        return asyncio.run(read())
    conn = sqlite3.connect(store.path)
    try:
        return dict(conn.execute("SELECT writer, seq FROM usage_writers").fetchall())
    finally:
        conn.close()


def test_a_backlog_is_written_over_lanes_each_numbered_on_its_own(store):
    """Two batches in flight at once (PostgreSQL: write_many, a connection
    each; SQLite: one after the other), each lane's batches numbered under a
    writer ID of its own."""
    table = APIKeyTable()
    usage = UsageLog(store, table, batch_rows=2, lanes=2, writer="w")
    seen: dict[tuple[str, str, str], list[int]] = {}
    for i in range(7):
        table.set(api_key_id(f"key{i}"))
        admit(table, f"key{i}", ("http", "price"), i + 1, seen)
    assert usage.harvest() == 7
    assert usage.write_batch() == 4 and usage.queued() == 3    # two batches of 2
    assert usage.write_batch() == 3 and usage.queued() == 0    # 2 and the last 1
    assert usage.write_batch() == 0
    assert stored(store) == seen
    assert writers(store) == {"w": 2, "w.1": 2}
    # No backlog: one batch, on the first lane only.
    admit(table, "key0", ("http", "price"), 1, seen)
    usage.harvest()
    assert usage.write_batch() == 1 and writers(store) == {"w": 3, "w.1": 2}
    assert stored(store) == seen


class _SecondLaneFailsOnce:
    """write_many whose second lane's first batch fails (the store refuses
    it: nothing applied); the other lane's goes through."""

    write_lanes = 2

    def __init__(self, store: Any) -> None:
        self.store = store
        self.failures = 1

    def write(self, rows, batch=None):
        return self.store.write(rows, batch)

    def write_many(self, batches):
        out: list[Any] = []
        for rows, batch in batches:
            if self.failures and batch[0].endswith(".1"):
                self.failures -= 1
                out.append(KeyStoreError("database: usage log write failed: refused"))
            else:
                out.append(self.store.write(rows, batch))
        return out


def test_a_lane_whose_batch_failed_retries_it_while_the_other_goes_on(store):
    table = APIKeyTable()
    usage = UsageLog(_SecondLaneFailsOnce(store), table, batch_rows=2, writer="w")
    seen: dict[tuple[str, str, str], list[int]] = {}
    for i in range(6):
        table.set(api_key_id(f"key{i}"))
        admit(table, f"key{i}", ("udp", "price"), 2, seen)
    usage.harvest()
    assert usage.write_batch() == -1 and usage.batch_flush_errors == 1
    assert usage.rows_written == 2 and usage.queued() == 4     # lane 1's batch is kept
    assert writers(store) == {"w": 1}
    # The kept batch goes again under its number (1), with lane 0's next.
    assert usage.write_all() and usage.queued() == 0
    assert writers(store) == {"w": 2, "w.1": 1}
    assert stored(store) == seen and usage.batches_skipped == 0


# -- the pending counts mirrored in Redis (--redis) -------------------------------------

@requires("redis-server")
def test_another_nodes_pending_counts_come_from_redis_until_it_stores_them(
        store, redis_server):  # noqa: F811
    """Two usage logs (two nodes) on one store and one Redis: what node B
    has counted but not stored is in A's view of the others at once, in one
    pipelined read; once B has stored it, it is in the store and no longer
    in Redis (counted once); B's own view never has its own."""
    from beastnet.serve.stores.usage_redis import RedisLiveUsage
    tables = [APIKeyTable(), APIKeyTable()]
    for table in tables:
        table.set(api_key_id("alpha"))
    now = time.time() // 60 * 60 + 30         # every harvest in one minute, the current one
    nodes = [UsageLog(store, table, writer=name, live=RedisLiveUsage(redis_server.url, name),
                      clock=lambda: now)
             for name, table in zip(("node-a", "node-b"), tables)]
    a, b = nodes
    try:
        seen: dict[tuple[str, str, str], list[int]] = {}
        admit(tables[1], "alpha", ("udp", "price"), 7, seen)
        admit(tables[1], "alpha", ("http", "report"), 2, seen)
        admit(tables[0], "alpha", ("udp", "price"), 5, {})      # A's own: never from Redis
        a.harvest()
        b.harvest()
        assert a.push_live() and b.push_live() and b.live_pushes == 1
        key = api_key_id("alpha")
        others, generation = a.live_others(key, 0, 4_000_000_000)
        assert sorted((r.protocol, r.route, r.admitted) for r in others) == [
            ("http", "report", 2), ("udp", "price", 7)]
        assert generation == 2                  # a push bumps it: what a report's cache checks
        assert b.live_others(key, 0, 4_000_000_000) == ([
            UsageRow(key, others[0].minute, "udp", "price", 5, 0, 0, 0)], 2)
        # Across every key (key None): the same, from the minute's every-key hash.
        every, generation = a.live_others(None, 0, 4_000_000_000)
        assert sorted(every) == sorted(others) and generation == 2
        assert stored(store) == {}
        # More counted, then B stores everything: Redis follows each step.
        admit(tables[1], "alpha", ("udp", "price"), 3, seen)
        b.harvest()
        b.push_live()
        assert sum(r.admitted for r in a.live_others(key, 0, 4_000_000_000)[0]) == 12
        assert b.write_all() and b.push_live()
        assert a.live_others(key, 0, 4_000_000_000) == ([], 4)
        assert a.live_others(None, 0, 4_000_000_000) == ([], 4)
        assert stored(store) == seen
        client = redis_server.client()
        try:
            assert sorted(n for n in client.keys("*ulive*:*") if client.hlen(n)) == [
                f"{{bn}}:ulive-all:{others[0].minute}".encode(),
                f"{{bn}}:ulive:{key}:{others[0].minute}".encode()]   # A's cell only
            assert 0 < client.ttl(f"{{bn}}:ulive:{key}:{others[0].minute}") <= 300
        finally:
            client.close()
        # A report range that misses the minute reads nothing of it.
        assert a.live_others(key, 0, others[0].minute) == ([], 4) and a.live_errors == 0
    finally:
        for node in nodes:
            node.live.close()


@requires("redis-server")
def test_a_push_that_fails_is_sent_again_and_a_failed_read_is_counted(
        store, redis_server):  # noqa: F811
    from beastnet.serve.stores.usage_redis import RedisLiveUsage
    table = APIKeyTable()
    table.set(api_key_id("alpha"))
    node = UsageLog(store, table, writer="node-b",
                    live=RedisLiveUsage(redis_server.url, "node-b"))
    reader = RedisLiveUsage(redis_server.url, "node-a")
    key = api_key_id("alpha")
    try:
        admit(table, "alpha", ("udp", "price"), 4, {})
        node.harvest()
        redis_server.stop()
        assert node.push_live() is False and node.live_errors == 1
        assert node.push_live() is False and node.live_errors == 1     # waits LIVE_RETRY_S
        assert node.live_others(key, 0, 4_000_000_000) == ([], None)
        assert node.live_errors == 2
        # The asyncio read (a report on the control loop) fails alike.
        async def read_down() -> tuple[list[UsageRow], Optional[int]]:
            try:
                return await node.live_others_here(key, 0, 4_000_000_000)
            finally:
                await node.live.aclose_here()
        assert asyncio.run(read_down()) == ([], None) and node.live_errors == 3
        redis_server.start()
        assert node.push_live(force=True) and node.live_pushes == 1
        rows, generation = reader.read(key, 0, 4_000_000_000, time.time())
        assert [r.admitted for r in rows] == [4] and generation == 1

        async def read_here() -> tuple[list[UsageRow], int]:
            try:
                return await reader.read_here(key, 0, 4_000_000_000, time.time())
            finally:
                await reader.aclose_here()
        assert asyncio.run(read_here()) == (rows, 1)
        # Unchanged counts are sent again every third of the expiry: the
        # hash does not expire while the counts are still pending.
        client = redis_server.client()
        try:
            name = f"{{bn}}:ulive:{key}:{rows[0].minute}"
            client.expire(name, 5)
            assert node.push_live() and client.ttl(name) == 5     # nothing changed: not sent
            node._live_refresh_at = 0.0
            assert node.push_live() and client.ttl(name) > 5 and node.live_pushes == 2
        finally:
            client.close()
    finally:
        node.live.close()
        reader.close()


class _HungMirror:
    """A mirror whose pushes hang until released (a Redis that stopped
    answering, before its timeout)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.pushes = 0

    def push(self, cells) -> None:
        self.pushes += 1
        self.release.wait(30)

    def read(self, key, start, end, now):
        return []


class _RefusesUntil:
    """A store that refuses every write until `allow` is set."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.allow = threading.Event()

    def write(self, rows, batch=None):
        if not self.allow.is_set():
            raise KeyStoreError("database: usage log write failed: refused")
        return self.store.write(rows, batch)


def test_a_hung_mirror_does_not_delay_the_writes(store):
    """Pushes run on a thread of their own: while one hangs, batches are
    still written every interval (a kill -9 still loses one interval)."""
    table = APIKeyTable()
    table.set(api_key_id("alpha"))
    mirror = _HungMirror()
    gate = _RefusesUntil(store)
    usage = UsageLog(gate, table, interval_s=0.02, live=mirror)   # type: ignore[arg-type]
    seen: dict[tuple[str, str, str], list[int]] = {}
    admit(table, "alpha", ("udp", "price"), 3, seen)
    usage.start()
    try:
        # The write fails, the rows stay pending: the push has them, and hangs.
        wait_for(lambda: mirror.pushes == 1 and usage.batch_flush_errors >= 1,
                 message="a refused write, then a push that hangs")
        gate.allow.set()
        admit(table, "alpha", ("http", "price"), 2, seen)
        # (The rows are visible from the COMMIT on; the batch leaves the
        # queue when the write returns to the usage log's thread, a moment
        # later: a busy run once read queued() == 1 in between.)
        wait_for(lambda: stored(store) == seen and usage.queued() == 0,
                 message="the writes going on meanwhile")
        assert mirror.pushes == 1
    finally:
        mirror.release.set()
        usage.stop()
    assert stored(store) == seen


def _take_down(store: Any, tmp_path) -> Any:
    """Make the store fail until the returned function is called."""
    if store.server is not None:
        store.server.stop()
        return store.server.start
    # SQLite: another connection holds the write lock (busy timeout short).
    store.db._conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        other.execute("ROLLBACK")
        other.close()
    return release


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_postgresql_restart_mid_run_loses_nothing(postgres):  # noqa: F811
    """pg_ctl restart while the writer thread runs: the queue carries the
    counts across; afterwards the stored sums equal the admissions."""
    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    store = PostgresUsageLog(postgres.dsn, timeout_s=1.0)
    table = APIKeyTable()
    table.set(api_key_id("alpha"))
    usage = UsageLog(store, table, interval_s=0.02).start()
    seen: dict[tuple[str, str, str], list[int]] = {}
    try:
        admit(table, "alpha", ("udp", "price"), 100, seen)
        wait_for(lambda: usage.rows_written >= 1)
        postgres.stop()
        admit(table, "alpha", ("udp", "price"), 50, seen)
        admit(table, "alpha", ("http", "price"), 20, seen)
        wait_for(lambda: usage.batch_flush_errors >= 1)
        postgres.start()
        admit(table, "alpha", ("udp", "price"), 30, seen)
        usage.stop()
        assert usage.queued() == 0 and usage.bg_drop == 0
        assert stored(store) == seen
        assert seen[(api_key_id("alpha"), "udp", "price")][0] == 180
    finally:
        usage.stop(write_s=0.0)
        store.close()


# -- `beastnet serve`: the clients' count against the stored one -----------------------

TIERS = '[tiers.public]\nqps = 1000\nburst = 1000\nmonthly_cap = 1000000\n' \
        '[tiers.pro]\nqps = 0.001\nburst = 3\nmonthly_cap = 1000000\n'


def log_rows(db) -> dict[tuple[str, str, str], list[int]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT key, protocol, route, sum(admitted), sum(refused), "
                            "sum(rate_limited), sum(over_quota) FROM usage_log "
                            "GROUP BY 1, 2, 3").fetchall()
    finally:
        conn.close()
    return {(r[0], r[1], r[2]): list(r[3:]) for r in rows}


def test_serve_usage_log_equals_what_clients_saw_after_sigterm(serve, tmp_path):  # noqa: F811
    db = tmp_path / "keys.db"
    add_key(db, "public", "fast-key")
    add_key(db, "pro", "slow-key")
    server = serve("--keystore", str(db), config=TIERS)
    seen: dict[tuple[str, str, str], list[int]] = {}

    def tally(key: str, protocol: str, route: str, verdict: int) -> None:
        who = UNKNOWN_KEY if key == "nobody" else api_key_id(key)
        seen.setdefault((who, protocol, route), [0, 0, 0, 0])[verdict] += 1

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(200):
            assert b'"asset"' in server.udp_ask(b"BTC fast-key", sock)
            tally("fast-key", "udp", "price", 0)
    for key in ("fast-key",) * 30 + ("slow-key",) * 5 + ("nobody",) * 4:
        status = server.http("GET", "/v1/ETH", {"X-API-Key": key})[0]
        tally(key, "http", "price", {200: 0, 401: 1, 429: 2}[status])
    for _ in range(6):
        status = server.http("GET", "/v1/prices?symbols=BTC,ETH", {"X-API-Key": "fast-key"})[0]
        assert status == 200
        tally("fast-key", "http", "snapshot", 0)
    assert seen[(api_key_id("slow-key"), "http", "price")] == [3, 0, 2, 0]
    assert server.terminate() == 0            # SIGTERM: drain, last harvest and write
    assert log_rows(db) == seen


def test_serve_stats_show_the_usage_log_counters(serve, tmp_path):  # noqa: F811
    db = tmp_path / "keys.db"
    add_key(db, "public", "fast-key")
    server = serve("--keystore", str(db), config=TIERS)
    for _ in range(5):
        assert server.http("GET", "/v1/ETH", {"X-API-Key": "fast-key"})[0] == 200

    def written() -> dict:
        stats = orjson.loads(server.admin("GET", "/admin/stats")[2])["usage_log"]
        return stats if stats["rows_written"] >= 1 and stats["queue"] == 0 else {}
    stats = wait_for(written)
    assert stats["rows_queued"] >= 1 and stats["bg_drop"] == 0
    # SQLite upserts each batch: nothing appended, nothing to fold
    assert (stats["usage_folds"], stats["usage_rows_folded"], stats["usage_fold_errors"]) == \
        (0, 0, 0)
    metrics = server.admin("GET", "/metrics")[2].decode()
    written = [line for line in metrics.splitlines()
               if line.startswith("beastnet_usage_log_rows_written")]
    assert len(written) == 1 and written[0].startswith("beastnet_usage_log_rows_written_total ")
    assert "_total_total" not in metrics
    assert server.terminate() == 0


def test_serve_kill_9_loses_at_most_about_one_interval(serve, tmp_path):  # noqa: F811
    db = tmp_path / "keys.db"
    add_key(db, "public", "fast-key")
    server = serve("--keystore", str(db), config=TIERS)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(300):
            sent += b'"asset"' in server.udp_ask(b"SOL fast-key", sock)
        # Everything so far written (the log's own counters say so) ...
        wait_for(lambda: log_rows(db).get((api_key_id("fast-key"), "udp", "price"),
                                          [0])[0] == sent)
        recent = 0
        deadline = time.monotonic() + 0.05    # ... then requests inside one interval
        while time.monotonic() < deadline:
            recent += b'"asset"' in server.udp_ask(b"SOL fast-key", sock)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    got = log_rows(db)[(api_key_id("fast-key"), "udp", "price")][0]
    assert sent <= got <= sent + recent


# -- retention and `beastnet db trim` ------------------------------------------------

DAY = 86400
JAN_15, FEB_15, MAR_15 = 1_768_435_200, 1_771_113_600, 1_773_532_800    # 2026, 00:00 UTC


def rows_at(*minutes: int) -> list[UsageRow]:
    return [UsageRow(api_key_id("alpha"), m, "udp", "price", 1, 0, 0, 0) for m in minutes]


def test_trim_drops_the_rows_before_the_date(store):
    store.write(rows_at(JAN_15, FEB_15, FEB_15 + DAY, MAR_15))
    assert store.trim(FEB_15 + DAY) == 2               # January's month and Feb 15
    left = store.detail(None, 0, 4_000_000_000, None, 10)
    assert [r.minute for r in left] == [FEB_15 + DAY, MAR_15]
    if store.server is not None:                       # January's partition is gone whole
        assert store.server.psql("SELECT to_regclass('usage_log_202601') IS NULL")
        assert store.server.psql("SELECT to_regclass('usage_log_202603') IS NOT NULL")
    store.write(rows_at(JAN_15))                       # an old row again: still writable
    assert store.trim(FEB_15) == 1


def test_retention_trims_while_running(store):
    table = APIKeyTable()
    store.write(rows_at(JAN_15, MAR_15))
    usage = UsageLog(store, table, interval_s=0.01, retention_s=10 * DAY,
                     clock=lambda: MAR_15 + DAY).start()
    try:
        wait_for(lambda: len(store.detail(None, 0, 4_000_000_000, None, 10)) == 1)
    finally:
        usage.stop()


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_db_trim_command(tmp_path, postgres):  # noqa: F811
    import subprocess
    import sys

    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    with_pg = PostgresUsageLog(postgres.dsn)
    with_sqlite = SQLiteUsageLog(str(tmp_path / "keys.db"))
    try:
        for target in (with_pg, with_sqlite):
            target.write(rows_at(JAN_15, MAR_15))
    finally:
        with_pg.close()
        with_sqlite.close()

    def db(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "beastnet", "db", "trim", *args],
                              capture_output=True, text=True, timeout=60)
    for where in (["--database", postgres.dsn], ["--db", str(tmp_path / "keys.db")]):
        run = db(*where, "--before", "2026-02-01")
        assert run.returncode == 0 and "1 row(s) before 2026-02-01 removed" in run.stdout
    run = db("--db", str(tmp_path / "keys.db"), "--before", "2026-02-30")
    assert run.returncode == 2 and "YYYY-MM-DD" in run.stderr
    run = db("--before", "2026-02-01")
    assert run.returncode == 2 and "one of --database URL, --db PATH" in run.stderr
    postgres.stop()
    run = db("--database", postgres.dsn, "--before", "2026-02-01")
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "cannot connect" in run.stderr
