"""API keys and monthly usage in PostgreSQL (the `Keys` and `Usage`
interfaces), and the versioned schema `beastnet db migrate` applies.

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
import threading
import time
from typing import Any, Coroutine, Iterable, Mapping, Optional, TypeVar

from beastnet import APIKeyTable
from beastnet.serve.keys import (DEFAULT_TIERS, KeyStoreError, Tier, current_month, key_prefix,
                                 new_key_row, stored_key_id)

__all__ = ["MIGRATIONS", "PostgresKeyStore", "migrate", "schema_version"]

T = TypeVar("T")

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
CREATE TABLE keys_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), value BIGINT NOT NULL);
INSERT INTO keys_version (value) VALUES (0);
CREATE FUNCTION bump_keys_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE keys_version SET value = value + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_keys_version();
"""),
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
]

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


async def _schema_version(conn: Any) -> int:
    exists = await conn.fetchval("SELECT to_regclass('beastnet_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(max(version), 0) FROM beastnet_migrations"))


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
    ([] when up to date).  Safe to run again, and from two places at once: a
    lock on the migrations table makes the second wait, then find nothing
    to do."""
    asyncpg = _driver()

    async def run() -> list[int]:
        conn = await _connect(dsn, timeout_s)
        try:
            async with conn.transaction():
                await conn.execute(_MIGRATIONS_TABLE)
                await conn.execute("LOCK TABLE beastnet_migrations IN EXCLUSIVE MODE")
                done = await _schema_version(conn)
                applied = []
                for version, sql in MIGRATIONS:
                    if version > done:
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


class PostgresKeyStore:
    """The `Keys` interface on PostgreSQL; `dsn` a postgresql:// URL.  Raises
    KeyStoreError (one line) when the database cannot be reached or its
    schema is not the one `beastnet db migrate` gives."""

    def __init__(self, dsn: str, tiers: Optional[Mapping[str, Tier]] = None,
                 timeout_s: float = 5.0, pool_size: int = 4) -> None:
        from beastnet.serve.cluster import redacted_url
        self.dsn = dsn
        self.path = redacted_url(dsn)
        self.tiers = dict(tiers or DEFAULT_TIERS)
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="beastnet-postgres", daemon=True)
        self._thread.start()
        self._pool: Any = None
        try:
            self._pool = self._call(self._open(pool_size))
        except BaseException:
            self.close()
            raise

    async def _open(self, pool_size: int) -> Any:
        asyncpg = _driver()
        conn = await _connect(self.dsn, self.timeout_s)
        try:
            have = await _schema_version(conn)
        finally:
            await conn.close()
        need = MIGRATIONS[-1][0]
        if have != need:
            raise KeyStoreError(
                f"database {self.path}: schema version {have}, this beastnet needs {need}: "
                + ("run `beastnet db migrate --database URL`" if have < need else
                   "it was migrated by a newer beastnet"))
        try:
            return await asyncpg.create_pool(self.dsn, min_size=1, max_size=pool_size,
                                             timeout=self.timeout_s)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise _failed(exc, self.dsn, "cannot connect") from None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the store's loop and wait for it (timeout_s, plus the
        pool's own wait for a connection)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout_s * 2)
        except TimeoutError:
            future.cancel()
            raise KeyStoreError(f"database {self.path}: no answer in "
                                f"{self.timeout_s * 2:g} s") from None

    def _run(self, sql: str, args: Iterable = (), what: str = "") -> list[Any]:
        asyncpg = _driver()

        async def run() -> list[Any]:
            try:
                async with self._pool.acquire(timeout=self.timeout_s) as conn:
                    return list(await conn.fetch(sql, *args, timeout=self.timeout_s))
            except asyncpg.UniqueViolationError:
                raise
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                raise _failed(exc, self.dsn, what) from None
        return self._call(run())

    def close(self) -> None:
        if self._pool is not None:
            try:
                self._call(self._pool.close())
            except KeyStoreError:
                self._pool.terminate()
            self._pool = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> "PostgresKeyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise KeyStoreError(f"unknown tier {name!r} (known: {', '.join(self.tiers)}; define "
                                f"others under [tiers.NAME] in a --config file)") from None

    # -- keys ------------------------------------------------------------------------

    def add(self, tier: str = "public", key: Optional[str] = None, label: str = "",
            prefix: Optional[str] = None) -> str:
        """Create a key (a random one unless given) and return it; only its
        ID and prefix are stored.  Given an ID, that ID (and `prefix`)."""
        asyncpg = _driver()
        self._tier(tier)
        key, kid, prefix = new_key_row(key, prefix)
        try:
            self._run("INSERT INTO api_keys (key, prefix, tier, label, created_at) "
                      "VALUES ($1, $2, $3, $4, $5)", (kid, prefix, tier, label, time.time()))
        except asyncpg.UniqueViolationError:
            raise KeyStoreError(f"key {prefix} exists already") from None
        return key

    def revoke(self, key: str) -> None:
        """Revoke a key, named by itself or by its ID."""
        if not self._run("UPDATE api_keys SET revoked_at = $1 WHERE key = $2 "
                         "AND revoked_at IS NULL RETURNING key", (time.time(), stored_key_id(key))):
            raise KeyStoreError(f"no active key {key_prefix(key)}")

    def set_tier(self, key: str, tier: str) -> None:
        self._tier(tier)
        if not self._run("UPDATE api_keys SET tier = $1 WHERE key = $2 RETURNING key",
                         (tier, stored_key_id(key))):
            raise KeyStoreError(f"no key {key_prefix(key)}")

    def list(self, month: Optional[str] = None) -> list[dict]:
        """Every key with its tier, state and usage this month."""
        rows = self._run(
            "SELECT k.key, k.prefix, k.tier, k.label, k.created_at, k.revoked_at, "
            "COALESCE(u.count, 0) FROM api_keys k "
            "LEFT JOIN usage u ON u.key = k.key AND u.month = $1 "
            "ORDER BY k.created_at", (month or current_month(),))
        return [{"key": r[0], "prefix": r[1], "tier": r[2], "label": r[3], "created_at": r[4],
                 "revoked": r[5] is not None, "month_count": int(r[6])} for r in rows]

    def unknown_tiers(self) -> dict[str, int]:
        """Active keys whose tier this store does not know, counted by tier."""
        counts: dict[str, int] = {}
        for (tier,) in self._run("SELECT tier FROM api_keys WHERE revoked_at IS NULL"):
            if tier not in self.tiers:
                counts[tier] = counts.get(tier, 0) + 1
        return counts

    def usage(self, key: str, month: Optional[str] = None) -> int:
        rows = self._run("SELECT count FROM usage WHERE key = $1 AND month = $2",
                         (stored_key_id(key), month or current_month()))
        return int(rows[0][0]) if rows else 0

    def add_usage(self, deltas: Mapping[str, int], month: str) -> None:
        """Add request counts for `month`, all in one transaction (one
        statement over arrays: one round trip whatever the number of keys)."""
        rows = [(k, n) for k, n in deltas.items() if n]
        if rows:
            self._run(
                "INSERT INTO usage (key, month, count) "
                "SELECT k, $2, n FROM unnest($1::text[], $3::bigint[]) AS t(k, n) "
                "ON CONFLICT (key, month) DO UPDATE SET count = usage.count + excluded.count",
                ([k for k, _ in rows], month, [n for _, n in rows]), what="usage flush failed")

    def version(self) -> tuple[int, ...]:
        """Changes whenever a key is added, re-tiered or revoked, by any client."""
        return (int(self._run("SELECT value FROM keys_version")[0][0]),)

    def sync_into(self, api_keys: APIKeyTable, month: Optional[str] = None) -> int:
        """Make `api_keys` match the store: limits per tier, revocations, and
        each key's count for the month.  Returns the number of active keys."""
        rows = self._run(
            "SELECT k.key, k.tier, k.revoked_at, COALESCE(u.count, 0) FROM api_keys k "
            "LEFT JOIN usage u ON u.key = k.key AND u.month = $1", (month or current_month(),))
        active = 0
        for key, tier_name, revoked_at, month_count in rows:
            tier = self.tiers.get(tier_name)
            if revoked_at is not None or tier is None:     # unknown tier: fail closed
                api_keys.revoke(key)
                continue
            api_keys.set(key, qps=tier.qps, burst=tier.burst, monthly_cap=tier.monthly_cap,
                         month_used=int(month_count), ws_allowed=tier.stream,
                         ws_max_connections=tier.stream_connections,
                         ws_max_subscriptions=tier.stream_symbols,
                         shed_last=tier.shed_last)
            active += 1
        return active
