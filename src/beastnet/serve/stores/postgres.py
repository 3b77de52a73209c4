"""`beastnet serve --database`: API keys and monthly usage (the `Keys` and
`Usage` interfaces), webhook subscriptions and their delivery log
(`Subscriptions`) and the live profile (`Parameters`) in PostgreSQL, on one
`PostgresDatabase` (one pool); and the versioned schema `beastnet db
migrate` applies.

The driver is asyncpg (the `postgres` extra): the control plane is asyncio,
asyncpg speaks PostgreSQL's binary protocol from Cython without libpq, and
its prepared-statement cache makes the short key queries cheap; measured
here against psycopg 3 in docs/postgres.md.  The store's callers are blocking
(base.py says why), so the store runs a loop of its own on a daemon thread
and each call waits for its coroutine there: no caller's loop is blocked,
and a slow database holds up only the thread that asked.

The schema is never created implicitly: a store opened on a database whose
schema is older than this code refuses with one line naming `beastnet db
migrate`, so two versions of beastnet never guess at each other's tables.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from typing import Any, Callable, Coroutine, Iterable, List, Mapping, Optional, TypeVar

# The SQLite store's columns, in its order: rows read back the same way.
from beastnet.serve.stores.sqlite import _COLUMNS as _SUB_COLUMNS
from beastnet.serve.stores.sqlite import DeliveryLogSQL, KeySQL, _OnDatabase, subscription_row
from beastnet.serve.keys import DEFAULT_TIERS, KeyStoreError, Tier, current_month
from beastnet.serve.webhooks import SubscriptionRules, WebhookError, WebhookTier

__all__ = ["KEYS_CHANNEL", "MIGRATIONS", "PoolOnLoop", "PostgresDatabase", "PostgresKeyStore",
           "PostgresParameterStore", "PostgresWebhookStore", "migrate", "schema_version"]

T = TypeVar("T")


def _version_counter(name: str, table: str) -> str:
    """SQL of ``<name>_version``: one row that every statement changing
    `table` bumps, whichever client runs it (a trigger), so that a node
    polling it sees a change made elsewhere.  Released migrations (1 and 4)
    are built from it: editing it edits them, so a new kind of counter
    gets SQL of its own."""
    return f"""
CREATE TABLE {name}_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                             value BIGINT NOT NULL);
INSERT INTO {name}_version (value) VALUES (0);
CREATE FUNCTION bump_{name}_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {name}_version SET value = value + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION bump_{name}_version();
"""


# (version, SQL): applied in order, each once, all pending ones in one
# transaction (a failed migration leaves the schema as it was).  Never edit a
# released entry: add the next version.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE api_keys (
    key        TEXT PRIMARY KEY,
    tier       TEXT NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,       -- Unix seconds
    revoked_at DOUBLE PRECISION                 -- NULL: active
);
CREATE TABLE usage (
    key    TEXT NOT NULL,
    month  TEXT NOT NULL,                       -- 'YYYY-MM', UTC
    count  BIGINT NOT NULL,
    PRIMARY KEY (key, month)
);
-- Bumped by every change to api_keys, by any client: what a server polls to
-- pick up keys changed elsewhere (PostgresKeyStore.version).
""" + _version_counter("keys", "api_keys")),
    # Keys hashed at rest: `key` holds "sha256:" + the key's SHA-256 in hex
    # (what api_key_id computes), `prefix` what listings show; usage rows
    # follow their key.  The SET expressions all see the row's old key.
    (2, """
ALTER TABLE api_keys ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
UPDATE usage SET key = 'sha256:' || encode(sha256(convert_to(key, 'UTF8')), 'hex')
    WHERE key NOT LIKE 'sha256:%';
UPDATE api_keys SET prefix = left(key, 10) || '…',
                    key = 'sha256:' || encode(sha256(convert_to(key, 'UTF8')), 'hex')
    WHERE key NOT LIKE 'sha256:%';
"""),
    # The usage log (stores/usage_postgres.py): per key, minute, protocol and
    # route, partitioned by month; the store creates the months ahead.
    (3, """
CREATE TABLE usage_log (
    key          TEXT NOT NULL,                 -- key ID, or '(unknown)'
    minute       TIMESTAMPTZ NOT NULL,          -- the minute's start
    protocol     TEXT NOT NULL,                 -- udp, http, ws
    route        TEXT NOT NULL,                 -- price, snapshot, report, stream
    admitted     BIGINT NOT NULL,
    refused      BIGINT NOT NULL,
    rate_limited BIGINT NOT NULL,
    over_quota   BIGINT NOT NULL,
    PRIMARY KEY (minute, key, protocol, route)
) PARTITION BY RANGE (minute);
CREATE TABLE usage_log_default PARTITION OF usage_log DEFAULT;
"""),
    # Webhook subscriptions, their delivery log and the live profile, as the
    # SQLite file holds them; a NOTIFY on every key change, so the nodes
    # reload within milliseconds instead of their next version poll.
    (4, """
CREATE TABLE webhook_subscriptions (
    id           TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    method       TEXT NOT NULL,                 -- 'https' or 'udp'
    tier         TEXT NOT NULL,
    assets       TEXT NOT NULL,                 -- JSON array of asset keys
    secrets      TEXT NOT NULL,                 -- JSON array of whsec_ secrets, newest first
    style        TEXT NOT NULL DEFAULT 'standard',
    state        TEXT NOT NULL DEFAULT 'active',
    reason       TEXT NOT NULL DEFAULT '',
    label        TEXT NOT NULL DEFAULT '',
    created_at   DOUBLE PRECISION NOT NULL,     -- Unix seconds
    changed_at   DOUBLE PRECISION NOT NULL
);
""" + _version_counter("webhooks", "webhook_subscriptions") + """
CREATE TABLE webhook_log (
    seq          BIGSERIAL PRIMARY KEY,         -- insertion order (ties in ts)
    ts           DOUBLE PRECISION NOT NULL,     -- Unix seconds, when the attempt ended
    subscription TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    method       TEXT NOT NULL,
    assets       INTEGER NOT NULL,              -- assets carried (UDP: datagrams sent)
    attempt      INTEGER NOT NULL,              -- 1 = first try
    status       INTEGER NOT NULL,              -- HTTP status; 0 = none
    delivered    INTEGER NOT NULL,              -- 1 = 2xx (UDP: handed to the kernel)
    latency_ms   DOUBLE PRECISION NOT NULL,
    error        TEXT NOT NULL DEFAULT '',
    asset_list   TEXT NOT NULL DEFAULT '[]',    -- JSON array of the assets delivered
    prices       TEXT,                          -- JSON array; NULL = not recorded (UDP)
    sources      TEXT                           -- JSON array of each body's source; NULL likewise
);
CREATE INDEX webhook_log_ts ON webhook_log (ts);
CREATE INDEX webhook_log_sub ON webhook_log (subscription, ts);
CREATE TABLE live_profile (
    one        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),   -- one row: the profile in force
    name       TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL
);
CREATE FUNCTION notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('beastnet_keys', COALESCE(NEW.key, OLD.key));
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_change();
"""),
    # The usage log's batches are numbered per writer (one process's usage
    # log), and a batch is applied only if its number is above the writer's
    # last: a batch retried after its COMMIT went through unseen (the reply
    # lost with the connection, or the wait for it timed out) is skipped,
    # not counted twice (stores/usage_postgres.py).
    (5, """
CREATE TABLE usage_writers (
    writer  TEXT PRIMARY KEY,                   -- a random ID per usage log (process start)
    seq     BIGINT NOT NULL,                    -- the last batch it applied
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()  -- trimmed with the usage log
);
"""),
    # The usage log's batches appended by COPY (stores/usage_postgres.py,
    # method "append"): no key, no index, so a row costs an append, not an
    # upsert into usage_log's primary key; the store folds them into
    # usage_log in the background (compact), and every read goes through
    # usage_log_all, which holds both (reports sum).  `minute` in Unix
    # seconds: COPY sends the usage log's rows as they are.
    (6, """
CREATE TABLE usage_log_fresh (
    key          TEXT NOT NULL,
    minute       BIGINT NOT NULL,               -- the minute's start, Unix seconds
    protocol     TEXT NOT NULL,
    route        TEXT NOT NULL,
    admitted     BIGINT NOT NULL,
    refused      BIGINT NOT NULL,
    rate_limited BIGINT NOT NULL,
    over_quota   BIGINT NOT NULL
);
CREATE VIEW usage_log_all AS
    SELECT key, minute, protocol, route, admitted, refused, rate_limited, over_quota
    FROM usage_log
    UNION ALL
    SELECT key, to_timestamp(minute), protocol, route, admitted, refused, rate_limited,
           over_quota
    FROM usage_log_fresh;
"""),
]

#: The channel `api_keys_notify` announces a changed key's ID on.
KEYS_CHANNEL = "beastnet_keys"

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS beastnet_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


def _driver() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise KeyStoreError("a PostgreSQL database needs asyncpg: "
                            "pip install 'beastnet[postgres]'") from None
    return asyncpg


def _driver_errors() -> tuple[type[BaseException], ...]:
    """What a statement on a pooled connection may raise when the database
    goes away or refuses: the caller turns each into a KeyStoreError.

    InternalClientError is among them: a server shutting down sends its
    FATAL (57P01) before it closes the socket, and an idle pooled connection
    that has read the one but not yet the other is not closed yet, so the
    pool lends it out, and its next statement fails with "cannot switch to
    state 11; another operation (2) is in progress".  Left out, that escaped
    every handler and killed the usage flusher's thread (the node then never
    saw the database down: the flaky test_database_down_mid_run...)."""
    asyncpg = _driver()
    return (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.InternalClientError)


async def _keep_session(conn: Any) -> None:
    """A pool's reset that leaves the connection as it is (PoolOnLoop._open_pool)."""


def _keep_session_kw(asyncpg: Any) -> dict[str, Any]:
    """create_pool's argument for a pool whose connections are not reset
    when returned (asyncpg 0.30 and later take one; older ones reset)."""
    if "reset" in inspect.signature(asyncpg.create_pool).parameters:
        return {"reset": _keep_session}
    return {}


def _failed(exc: BaseException, dsn: str, what: str = "") -> KeyStoreError:
    from beastnet.serve.cluster import redacted_url
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return KeyStoreError(f"database {redacted_url(dsn)}: {what + ': ' if what else ''}{detail}")


async def _connect(dsn: str, timeout_s: float) -> Any:
    asyncpg = _driver()
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        raise _failed(exc, dsn, "cannot connect") from None


async def _applied(conn: Any) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('beastnet_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {int(r[0]) for r in await conn.fetch("SELECT version FROM beastnet_migrations")}


async def _schema_version(conn: Any) -> int:
    return max(await _applied(conn), default=0)


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach (no connection, or a
    server shutting down: SQLSTATE classes 08 and 57), not that a statement
    was refused."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or str(sqlstate)[:2] in ("08", "57")


def _run_once(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def schema_version(dsn: str, timeout_s: float = 5.0) -> int:
    """The schema version of the database at `dsn` (0: none yet)."""
    async def read() -> int:
        conn = await _connect(dsn, timeout_s)
        try:
            return await _schema_version(conn)
        finally:
            await conn.close()
    return _run_once(read())


def migrate(dsn: str, timeout_s: float = 5.0) -> list[int]:
    """Apply the pending MIGRATIONS in one transaction; the versions applied
    ([] when up to date).  Pending means not recorded as applied, not "above
    the highest applied": versions land from parallel work in any order, and
    a lower one added later must still run.  Safe to run again, and from two
    places at once: a lock on the migrations table makes the second wait,
    then find nothing to do."""
    asyncpg = _driver()

    async def run() -> list[int]:
        conn = await _connect(dsn, timeout_s)
        try:
            async with conn.transaction():
                await conn.execute(_MIGRATIONS_TABLE)
                await conn.execute("LOCK TABLE beastnet_migrations IN EXCLUSIVE MODE")
                done = await _applied(conn)
                applied = []
                for version, sql in sorted(MIGRATIONS):
                    if version not in done:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO beastnet_migrations (version) "
                                           "VALUES ($1)", version)
                        applied.append(version)
                return applied
        except asyncpg.PostgresError as exc:
            raise _failed(exc, dsn, "migration failed, nothing applied") from None
        finally:
            await conn.close()
    return _run_once(run())


async def _finish_tasks(timeout_s: float) -> None:
    """Cancel every other task on this loop and wait (at most `timeout_s`)
    for them to end, and for the tasks their cancellation starts."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for _ in range(3):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        left = deadline - asyncio.get_running_loop().time()
        if not tasks or left <= 0:
            return
        for task in tasks:
            if not task.cancelling():   # a second cancel would cut its cleanup short
                task.cancel()
        await asyncio.wait(tasks, timeout=left)


class PoolOnLoop:
    """An asyncpg pool on an event loop in a thread of its own, for callers
    that block (base.py says why): the stores' `PostgresDatabase` and the
    usage log's `PostgresUsageLog` (usage_postgres.py) are each one.  `call`
    runs a coroutine there and waits for it."""

    def _start_loop(self, dsn: str, timeout_s: float, thread_name: str) -> None:
        from beastnet.serve.cluster import redacted_url
        self.dsn = dsn
        self.path = redacted_url(dsn)
        self.timeout_s = timeout_s
        self._pool: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name,
                                        daemon=True)
        self._thread.start()

    def _open_first(self, opening: Coroutine[Any, Any, Any],
                    wait_for_it: bool) -> Optional[KeyStoreError]:
        """Open the pool at start.  With `wait_for_it` a database out of
        reach is returned (the caller tries again later), not raised; a wrong
        schema is raised either way, the loop closed."""
        try:
            self._pool = self.call(opening)
        except KeyStoreError as exc:
            if not wait_for_it or "schema version" in str(exc):
                self.close()
                raise
            return exc
        except BaseException:
            self.close()
            raise
        return None

    async def _open_pool(self, check: Callable[[set[int]], None], pool_size: int,
                         init: Optional[Callable[[Any], Coroutine[Any, Any, None]]] = None,
                         keep_session: bool = False) -> Any:
        """The pool, once `check` (KeyStoreError if not) passes the migrations
        the database has applied, read on a connection of its own.
        `keep_session`: a connection returned to the pool is not reset
        (asyncpg's default reset is a round trip of `RESET ALL; UNLISTEN *;
        ...` per release), for callers that change no session state; asyncpg
        0.30 and later (older ones reset always)."""
        asyncpg = _driver()
        reset = _keep_session_kw(asyncpg) if keep_session else {}
        conn = await _connect(self.dsn, self.timeout_s)
        try:
            applied = await _applied(conn)
        finally:
            await conn.close()
        check(applied)
        try:
            # min_size=0: connections are opened when asked for; a floor
            # would make asyncpg reconnect in the background while the
            # database is down, logging a traceback each time.
            return await asyncpg.create_pool(self.dsn, min_size=0, max_size=pool_size,
                                             timeout=self.timeout_s, init=init, **reset)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise _failed(exc, self.dsn, "cannot connect") from None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it (timeout_s, plus the
        pool's own wait for a connection)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout_s * 2)
        except TimeoutError:
            future.cancel()
            raise KeyStoreError(f"database {self.path}: no answer in "
                                f"{self.timeout_s * 2:g} s") from None

    def close(self) -> None:
        if self._pool is not None:
            try:
                self.call(self._pool.close())
            except KeyStoreError:
                self._pool.terminate()
            self._pool = None
        if self._loop.is_running():
            # What a timed-out call left (an opening cancelled mid-connect,
            # asyncpg's cancel requests) ends on the loop before it stops:
            # stopped first, those tasks were destroyed pending and their
            # sockets left to the garbage collector (seen at load 8: two
            # connections of a pool whose opening took past its 4 s).
            try:
                asyncio.run_coroutine_threadsafe(_finish_tasks(self.timeout_s),
                                                 self._loop).result(self.timeout_s + 1.0)
            except (TimeoutError, RuntimeError):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()


class PostgresDatabase(PoolOnLoop):
    """One PostgreSQL database for the stores on it: one asyncpg pool on a
    loop thread of its own (the stores' callers block; base.py says why),
    shared as the SQLite stores share one `Database`.  Raises KeyStoreError
    (one line, the password never shown) when the database cannot be
    reached or its schema is not the one `beastnet db migrate` gives.

    The pool's state is counted for /admin/stats: `db_open` connections
    open, `db_in_use` of them lent out, `db_wait_count` acquisitions that
    found no idle connection (they waited for one to be opened or returned).
    `queries` counts statements sent: what a flood test compares with the
    requests that caused them."""

    def __init__(self, dsn: str, timeout_s: float = 5.0, pool_size: int = 4,
                 wait_for_it: bool = False) -> None:
        """`wait_for_it`: a database that cannot be reached now is not an
        error; `down` holds why, and each call tries again (at most once a
        `REOPEN_EVERY_S`) until it answers.  A wrong schema is an error
        either way."""
        self.pool_size = pool_size
        self.queries = 0
        self.wait_count = 0
        self.failing = False            # the last statement could not reach the database
        self._next_open = 0.0
        self._open_lock = threading.Lock()        # one reopen at a time, whoever calls
        self._listener: Any = None
        self._start_loop(dsn, timeout_s, "beastnet-postgres")
        #: why the database is not open yet
        self.down: Optional[KeyStoreError] = self._open_first(self._open(pool_size), wait_for_it)
        if self.down is not None:
            self._next_open = time.monotonic() + self.REOPEN_EVERY_S

    REOPEN_EVERY_S = 1.0

    def _reopen(self) -> None:
        """Open the pool a `wait_for_it` start could not (KeyStoreError while
        the database stays out of reach)."""
        with self._open_lock:
            if self._pool is not None:
                return
            if time.monotonic() < self._next_open and self.down is not None:
                raise self.down
            self._next_open = time.monotonic() + self.REOPEN_EVERY_S
            try:
                self._pool = self.call(self._open(self.pool_size))
            except KeyStoreError as exc:
                self.down = exc
                raise
            self.down = None

    async def _open(self, pool_size: int) -> Any:
        return await self._open_pool(self._check_schema, pool_size)

    def _check_schema(self, have: set[int]) -> None:
        need = {version for version, _ in MIGRATIONS}
        if not need <= have:
            raise KeyStoreError(
                f"database {self.path}: schema version {max(have, default=0)}, this beastnet "
                f"needs {max(need)}: run `beastnet db migrate --database URL`")
        if max(have, default=0) > max(need):
            raise KeyStoreError(f"database {self.path}: schema version {max(have)}, this "
                                f"beastnet knows {max(need)}: it was migrated by a newer beastnet")

    def _statement(self, work: Callable[[Any], Coroutine[Any, Any, T]], what: str,
                   unique_passes: bool = False) -> T:
        """`work(conn)` on a pooled connection, counted (queries, waits) and
        judged (`failing`); a failure becomes a KeyStoreError, except a
        UniqueViolationError when `unique_passes`."""
        asyncpg = _driver()
        if self._pool is None:
            self._reopen()
        passing = (asyncpg.UniqueViolationError,) if unique_passes else ()

        async def run() -> T:
            if self._pool.get_idle_size() == 0:
                self.wait_count += 1
            try:
                async with self._pool.acquire(timeout=self.timeout_s) as conn:
                    self.queries += 1
                    out = await work(conn)
            except passing:
                self.failing = False
                raise
            except _driver_errors() as exc:
                self.failing = _unreachable(exc)
                raise _failed(exc, self.dsn, what) from None
            self.failing = False
            return out
        return self.call(run())

    def run(self, sql: str, args: Iterable = (), what: str = "") -> list[Any]:
        """One statement; its rows.  UniqueViolationError passes through (the
        callers name what exists already); every other failure is a
        KeyStoreError."""
        async def fetch(conn: Any) -> list[Any]:
            return list(await conn.fetch(sql, *args, timeout=self.timeout_s))
        return self._statement(fetch, what, unique_passes=True)

    def run_many(self, sql: str, rows: list[tuple], what: str = "") -> None:
        """One statement for each row, in one transaction (all or nothing)."""
        async def execute(conn: Any) -> None:
            async with conn.transaction():
                await conn.executemany(sql, rows, timeout=self.timeout_s)
        self._statement(execute, what)

    @property
    def reachable(self) -> bool:
        """Whether the last statement reached the database (a node polls
        it every resync_s, so this is at most that old)."""
        return self.down is None and not self.failing

    def pool_stats(self) -> dict[str, int]:
        """db_open, db_in_use, db_wait_count (the class docstring says what
        each counts) and db_queries."""
        pool = self._pool
        open_ = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        return {"db_open": open_, "db_in_use": max(open_ - idle, 0),
                "db_wait_count": self.wait_count, "db_queries": self.queries}

    def listen(self, channel: str, on_notice: Callable[[str], None]) -> None:
        """Call `on_notice(payload)` (on the database's loop thread) for
        each NOTIFY on `channel`.  One connection of its own, outside the
        pool; when it is lost, `listening()` turns False and the caller's
        poll carries on (and may listen again)."""
        async def start() -> Any:
            conn = await _connect(self.dsn, self.timeout_s)
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_notice(payload))
            return conn
        self.stop_listening()
        self._listener = self.call(start())

    def listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def stop_listening(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                self.call(listener.close(timeout=self.timeout_s))
            except Exception:           # noqa: BLE001 - a lost connection is closed already
                listener.terminate()

    def close(self) -> None:
        if self._loop.is_running():
            self.stop_listening()
        super().close()

    def __enter__(self) -> "PostgresDatabase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dollar(n: int) -> str:
    """PostgreSQL's n-th (1-based) statement argument."""
    return f"${n}"


class _OnPostgres(_OnDatabase):
    """A store on a `PostgresDatabase`: given a URL, one of its own (closed
    with the store); given a `PostgresDatabase`, a shared one."""

    _DATABASE = PostgresDatabase
    db: PostgresDatabase


class PostgresKeyStore(KeySQL, _OnPostgres):
    """The `Keys` interface on PostgreSQL; `db` a postgresql:// URL or a
    shared `PostgresDatabase`.  The statements are the SQLite store's
    (`KeySQL`); usage is added over arrays, and a batch can be looked up."""

    def __init__(self, db: "PostgresDatabase | str", tiers: Optional[Mapping[str, Tier]] = None,
                 timeout_s: float = 5.0) -> None:
        self._use(db, timeout_s)
        self.tiers = dict(tiers or DEFAULT_TIERS)

    _arg = staticmethod(_dollar)

    def _run(self, sql: str, args: Iterable = (), what: str = "") -> list[Any]:
        return self.db.run(sql, args, what)

    def _insert_new(self, sql: str, args: tuple) -> bool:
        try:
            self._run(sql, args)
        except _driver().UniqueViolationError:
            return False
        return True

    def add_usage(self, deltas: Mapping[str, int], month: str,
                  batch: Optional[tuple[str, int]] = None) -> None:
        """Add request counts for `month`, all in one transaction (one
        statement over arrays: one round trip whatever the number of keys).
        With `batch`, the same statement first claims its number in
        usage_writers (migration 5) and adds nothing if it was taken."""
        rows = [(k, n) for k, n in deltas.items() if n]
        if not rows:
            return
        args: tuple = ([k for k, _ in rows], month, [n for _, n in rows])
        if batch is None:
            self._run(
                "INSERT INTO usage (key, month, count) "
                "SELECT k, $2, n FROM unnest($1::text[], $3::bigint[]) AS t(k, n) "
                "ON CONFLICT (key, month) DO UPDATE SET count = usage.count + excluded.count",
                args, what="usage flush failed")
            return
        self._run(
            "WITH claim AS (INSERT INTO usage_writers AS w (writer, seq) VALUES ($4, $5) "
            "ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = now() "
            "WHERE w.seq < excluded.seq RETURNING 1) "
            "INSERT INTO usage (key, month, count) "
            "SELECT k, $2, n FROM unnest($1::text[], $3::bigint[]) AS t(k, n) "
            "WHERE EXISTS (SELECT 1 FROM claim) "
            "ON CONFLICT (key, month) DO UPDATE SET count = usage.count + excluded.count",
            (*args, batch[0], batch[1]), what="usage flush failed")

    def lookup(self, key_ids: List[str], month: Optional[str] = None) -> dict[str, tuple]:
        """The keys among `key_ids` (IDs) the database has, in one query:
        ID -> (tier, revoked, this month's count).  The miss path asks for a
        whole batch at once (serve/keycache.py), so a flood of unknown keys
        costs one query a batch, never one a request."""
        rows = self._run(
            "SELECT k.key, k.tier, k.revoked_at IS NOT NULL, COALESCE(u.count, 0) "
            f"{self._month_join(2)} WHERE k.key = ANY($1::text[])",
            (key_ids, month or current_month()), what="key lookup failed")
        return {r[0]: (r[1], bool(r[2]), int(r[3])) for r in rows}

    def version(self) -> tuple[int, ...]:
        """Changes whenever a key is added, re-tiered or revoked, by any client."""
        return (int(self._run("SELECT value FROM keys_version")[0][0]),)


class PostgresWebhookStore(DeliveryLogSQL, SubscriptionRules, _OnPostgres):
    """Webhook subscriptions and the delivery log in PostgreSQL (the
    `Subscriptions` interface), the SQLite store's tables and behaviour;
    every node on the database sees the same subscriptions.  WebhookError
    on failure."""

    def __init__(self, db: "PostgresDatabase | str",
                 tiers: Optional[Mapping[str, WebhookTier]] = None, assets: Iterable[str] = (),
                 allow_private: bool = False, timeout_s: float = 5.0) -> None:
        super().__init__(tiers, assets, allow_private)
        try:
            self._use(db, timeout_s)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None

    def _run(self, sql: str, args: Iterable = ()) -> List[Any]:
        try:
            return self.db.run(sql, args)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None

    def version(self) -> tuple:
        """Changes whenever a subscription changes, from any client."""
        return (int(self._run("SELECT value FROM webhooks_version")[0][0]),)

    _row = staticmethod(subscription_row)

    def add(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
            label: str = "", resolve: bool = True) -> dict[str, Any]:
        """Validate and store a subscription; return it (with its first secret)."""
        rec = self.new_record(endpoint, tier, assets, style, label, resolve)
        self._run(f"INSERT INTO webhook_subscriptions ({', '.join(_SUB_COLUMNS)}) VALUES "
                  "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                  (rec["id"], rec["endpoint"], rec["method"], rec["tier"],
                   json.dumps(rec["assets"]), json.dumps(rec["secrets"]), rec["style"],
                   rec["state"], rec["reason"], rec["label"], rec["created_at"],
                   rec["changed_at"]))
        return self.get(rec["id"])

    def get(self, sub_id: str) -> dict[str, Any]:
        rows = self._run(f"SELECT {', '.join(_SUB_COLUMNS)} FROM webhook_subscriptions "
                         "WHERE id = $1", (sub_id,))
        if not rows:
            raise WebhookError(f"no subscription {sub_id!r}")
        return self._row(rows[0])

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_SUB_COLUMNS)} FROM webhook_subscriptions"
        rows = self._run(sql + " WHERE state = $1 ORDER BY created_at" if state else
                         sql + " ORDER BY created_at", (state,) if state else ())
        return [self._row(r) for r in rows]

    def set_state(self, sub_id: str, state: str, reason: str = "",
                  only_from: Optional[tuple[str, ...]] = None) -> None:
        """Move a subscription to `state`; `only_from` limits the states it may leave."""
        self.check_state(state)
        sql = ("UPDATE webhook_subscriptions SET state = $1, reason = $2, changed_at = $3 "
               "WHERE id = $4")
        args: list[Any] = [state, reason, time.time(), sub_id]
        if only_from:
            sql += " AND state = ANY($5::text[])"
            args.append(list(only_from))
        if not self._run(sql + " RETURNING id", args):
            self.get(sub_id)                # raises when there is no such subscription
            raise WebhookError(f"subscription {sub_id} is not {' or '.join(only_from or ())}")

    def remove(self, sub_id: str) -> None:
        if not self._run("DELETE FROM webhook_subscriptions WHERE id = $1 RETURNING id",
                         (sub_id,)):
            raise WebhookError(f"no subscription {sub_id!r}")

    def _set_secrets(self, sub_id: str, kept: List[str]) -> None:
        self._run("UPDATE webhook_subscriptions SET secrets = $1, changed_at = $2 WHERE id = $3",
                  (json.dumps(kept), time.time(), sub_id))

    # -- delivery log: DeliveryLogSQL ------------------------------------------------------

    _ORDER = "seq"
    _arg = staticmethod(_dollar)

    def _log_args(self, rows: List[tuple]) -> List[tuple]:
        # asyncpg encodes by the column's type: a 2 (not 2.0) for a float
        # column, a bool for an integer one, would be refused.
        return [(float(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), int(r[7]),
                 float(r[8]), *r[9:]) for r in rows]


class PostgresParameterStore(_OnPostgres):
    """The live profile in PostgreSQL (the `Parameters` interface): the
    profile last switched to, for every node on the database."""

    def __init__(self, db: "PostgresDatabase | str", timeout_s: float = 5.0) -> None:
        self._use(db, timeout_s)

    def profile(self) -> Optional[str]:
        rows = self.db.run("SELECT name FROM live_profile")
        return str(rows[0][0]) if rows else None

    def set_profile(self, name: str) -> None:
        self.db.run("INSERT INTO live_profile (name, changed_at) VALUES ($1, $2) "
                    "ON CONFLICT (one) DO UPDATE SET name = excluded.name, "
                    "changed_at = excluded.changed_at", (name, time.time()))
