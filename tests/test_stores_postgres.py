"""The PostgreSQL key store against a real PostgreSQL (pg_support): the
same contract as the SQLite store, run against both; the schema migration
(versioned, idempotent, all or nothing) and `beastnet db`."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from beastnet import APIKeyTable, api_key_id
from beastnet.serve.keys import KeyStoreError, Tier
from beastnet.serve.stores.postgres import (MIGRATIONS, PostgresDatabase, PostgresKeyStore,
                                            migrate, schema_version)
from beastnet.serve.stores.sqlite import KeyStore
from pg_support import SharedDatabase, postgres  # noqa: F401  (the fixture)
from support import free_port, requires

pytestmark = [pytest.mark.timeout(120), requires("initdb", "pg_ctl")]

TIERS = {"public": Tier("public", 10.0, 5, 0), "pro": Tier("pro", 100.0, 20, 1000)}
MONTH = "2026-12"


@pytest.fixture(params=["sqlite", "postgres"])
def keys_store(request, tmp_path):
    """A fresh key store of each kind."""
    if request.param == "sqlite":
        store = KeyStore(str(tmp_path / "keys.db"), TIERS)
    else:
        server = request.getfixturevalue("postgres")
        migrate(server.dsn)
        store = PostgresKeyStore(server.dsn, TIERS)
    try:
        yield store
    finally:
        store.close()


def test_keys_contract(keys_store):
    store = keys_store
    v0 = store.version()
    a = store.add("public", label="first")
    b = store.add("pro", key="pro-key-0123456789")
    assert a.startswith("bk_") and store.version() != v0
    with pytest.raises(KeyStoreError, match="exists already"):
        store.add("pro", key="pro-key-0123456789")
    with pytest.raises(KeyStoreError, match="unknown tier"):
        store.add("gold")
    with pytest.raises(KeyStoreError, match="printable"):
        store.add("public", key="has space")
    v1 = store.version()
    store.set_tier(a, "pro")
    assert store.version() != v1
    # Usage and listings name keys by ID: the store keeps no key.
    store.add_usage({api_key_id(b): 5, api_key_id(a): 0}, MONTH)
    store.add_usage({api_key_id(b): 3}, MONTH)
    assert store.usage(b, MONTH) == 8 and store.usage(a, MONTH) == 0
    listed = {r["key"]: r for r in store.list(MONTH)}
    assert listed[api_key_id(a)]["tier"] == "pro" and listed[api_key_id(a)]["label"] == "first"
    assert listed[api_key_id(b)]["month_count"] == 8 and not listed[api_key_id(b)]["revoked"]
    assert listed[api_key_id(b)]["prefix"] == "pro-key-01…"
    store.revoke(a)
    with pytest.raises(KeyStoreError, match="no active key"):
        store.revoke(a)
    with pytest.raises(KeyStoreError, match="no key"):
        store.set_tier("nope", "pro")
    table = APIKeyTable()
    assert store.sync_into(table, MONTH) == 1
    assert table.admit(a)[0] == "unauthorized" and table.admit(b)[0] == "ok"
    assert store.unknown_tiers() == {}


def test_usage_from_many_threads_adds_up(keys_store):
    """Concurrent flushes (a usage flusher per process) lose no count."""
    store = keys_store
    key = store.add("public")

    def flush() -> None:
        for _ in range(50):
            store.add_usage({api_key_id(key): 1}, MONTH)

    threads = [threading.Thread(target=flush) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.usage(key, MONTH) == 200


def schema(server) -> str:
    return server.psql(
        "SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' "
        "ORDER BY table_name, column_name) FROM information_schema.columns "
        "WHERE table_schema = 'public'")


def test_migrate_is_versioned_idempotent_and_all_or_nothing(postgres):  # noqa: F811
    assert schema_version(postgres.dsn) == 0
    assert migrate(postgres.dsn) == [v for v, _ in MIGRATIONS]
    once = schema(postgres)
    assert migrate(postgres.dsn) == [], "a second run applies nothing"
    assert schema(postgres) == once and schema_version(postgres.dsn) == MIGRATIONS[-1][0]
    assert postgres.psql("SELECT count(*) FROM beastnet_migrations") == len(MIGRATIONS)


def test_a_failing_migration_applies_nothing(postgres, monkeypatch):  # noqa: F811
    import beastnet.serve.stores.postgres as pg
    monkeypatch.setattr(pg, "MIGRATIONS", MIGRATIONS + [(99, "CREATE TABLE t99 (x int); "
                                                              "SELECT no_such_function();")])
    with pytest.raises(KeyStoreError, match="migration failed, nothing applied"):
        pg.migrate(postgres.dsn)
    assert schema_version(postgres.dsn) == 0, "version 1 rolled back with 99"
    assert postgres.psql("SELECT to_regclass('api_keys') IS NULL")


def test_migration_2_hashes_the_keys_of_a_version_1_database(postgres,  # noqa: F811
                                                             monkeypatch):
    """A database from before keys were hashed: after `migrate`, every key
    still admits with its tier, state and usage, and no table holds a key."""
    import beastnet.serve.stores.postgres as pg
    monkeypatch.setattr(pg, "MIGRATIONS", MIGRATIONS[:1])
    assert pg.migrate(postgres.dsn) == [1]
    postgres.psql("INSERT INTO api_keys (key, tier, label, created_at, revoked_at) VALUES "
                  "('old-public-key-0123', 'public', 'a', 1, NULL), "
                  "('old-revoked-key-456', 'pro', 'b', 2, 3)")
    postgres.psql(f"INSERT INTO usage VALUES ('old-public-key-0123', '{MONTH}', 41)")
    monkeypatch.undo()
    assert migrate(postgres.dsn) == [v for v, _ in MIGRATIONS if v >= 2]
    with PostgresKeyStore(postgres.dsn, TIERS) as store:
        rows = {r["prefix"]: (r["key"], r["tier"], r["revoked"], r["month_count"])
                for r in store.list(MONTH)}
        assert rows == {"old-public…": (api_key_id("old-public-key-0123"), "public", False, 41),
                        "old-revoke…": (api_key_id("old-revoked-key-456"), "pro", True, 0)}
        table = APIKeyTable()
        assert store.sync_into(table, MONTH) == 1
        assert table.admit("old-public-key-0123")[0] == "ok"
        assert table.admit("old-revoked-key-456")[0] == "unauthorized"
    assert postgres.psql("SELECT count(*) FROM api_keys a JOIN usage u ON u.key = a.key "
                         "WHERE a.key LIKE 'sha256:%'") == 1
    assert postgres.psql("SELECT count(*) FROM api_keys WHERE key LIKE 'old-%'") == 0


def test_a_store_on_an_unmigrated_database_names_the_command(postgres):  # noqa: F811
    with pytest.raises(KeyStoreError, match="schema version 0.*beastnet db migrate") as info:
        PostgresKeyStore(postgres.dsn)
    assert "\n" not in str(info.value)


def test_a_test_database_is_its_own_and_cannot_stop_the_shared_cluster(
        postgres, postgres_cluster):  # noqa: F811
    """pg_support: what one test leaves in its database no other sees, and
    stopping the cluster every test shares is refused, naming the marker."""
    postgres.psql("CREATE TABLE left_behind (x int)")
    other = SharedDatabase(postgres_cluster)
    try:
        assert other.dsn != postgres.dsn
        assert other.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'left_behind'") == 0
    finally:
        other.drop()
    assert postgres_cluster.psql(f"SELECT count(*) FROM pg_database "
                                 f"WHERE datname = '{other.name}'") == 0
    with pytest.raises(AssertionError, match="postgres_own"):
        postgres.stop()
    assert postgres_cluster.running()


def test_unreachable_database_is_one_line():
    dsn = f"postgresql://beastnet:secret-pw@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(KeyStoreError, match="cannot connect") as info:
        PostgresKeyStore(dsn, timeout_s=2.0)
    assert "\n" not in str(info.value) and "secret-pw" not in str(info.value)


def beastnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beastnet", *args], capture_output=True,
                          text=True, timeout=60)


def test_db_migrate_command(postgres):  # noqa: F811
    first = beastnet("db", "migrate", "--database", postgres.dsn)
    assert first.returncode == 0 and "applied migration(s) 1" in first.stdout, first.stderr
    again = beastnet("db", "migrate", "--database", postgres.dsn)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    version = beastnet("db", "version", "--database", postgres.dsn)
    assert version.returncode == 0 and f"schema version {MIGRATIONS[-1][0]}" in version.stdout
    down = beastnet("db", "migrate", "--database", f"postgresql://x:pw@127.0.0.1:{free_port()}/x")
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "cannot connect" in down.stderr and ":pw@" not in down.stderr


def test_keys_command_on_postgres(postgres):  # noqa: F811
    """`beastnet keys --database URL`: the same actions on PostgreSQL."""
    migrate(postgres.dsn)
    db = ("--database", postgres.dsn)
    added = beastnet("keys", *db, "add", "--tier", "pro", "--key", "pro-key-0123456789abc")
    assert added.returncode == 0 and added.stdout.strip() == "pro-key-0123456789abc", added.stderr
    listed = json.loads(beastnet("keys", *db, "list", "--json").stdout)
    assert [(r["tier"], r["revoked"]) for r in listed] == [("pro", False)]
    assert beastnet("keys", *db, "revoke", "pro-key-0123456789abc").returncode == 0
    with PostgresKeyStore(postgres.dsn) as store:
        assert store.list()[0]["revoked"]
    both = beastnet("keys", "--db", "x.db", *db, "list")
    assert both.returncode == 2 and "give one" in both.stderr


class _ConnectionMidShutdown:
    """A pooled connection that has read the server's FATAL (57P01) but not
    yet its EOF: not closed, so the pool lends it, and asyncpg refuses its
    next statement with InternalClientError (seen under load, when PostgreSQL
    stopped while the connection sat idle)."""

    async def fetch(self, *args, **kwargs):
        import asyncpg
        raise asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress")

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class _PoolLendingIt:
    def get_idle_size(self) -> int:
        return 1

    def acquire(self, timeout=None):
        return _ConnectionMidShutdown()


def test_a_connection_caught_mid_shutdown_is_the_database_down(postgres):  # noqa: F811
    migrate(postgres.dsn)
    with PostgresDatabase(postgres.dsn) as db:
        assert db.run("SELECT 1")[0][0] == 1 and db.reachable
        real_pool, db._pool = db._pool, _PoolLendingIt()
        try:
            with pytest.raises(KeyStoreError, match="another operation"):
                db.run("SELECT 1", what="probe")
            assert not db.reachable
        finally:
            db._pool = real_pool
        assert db.run("SELECT 2")[0][0] == 2 and db.reachable


def test_monthly_usage_flush_retried_after_a_lost_commit_answer_counts_once(postgres):  # noqa: F811
    """The flusher keeps a failed flush as it is, under its number; the
    store's one statement claims the number in usage_writers first, so the
    retry of a flush that was applied (its answer lost) adds nothing."""
    from beastnet.serve.keys import UsageFlusher
    migrate(postgres.dsn)
    with PostgresKeyStore(postgres.dsn, TIERS) as store:
        key = store.add("pro", key="monthly-key-0123456789")      # burst 20: all admitted
        store.add_usage({api_key_id(key): 5}, MONTH, ("writer-a", 1))
        store.add_usage({api_key_id(key): 5}, MONTH, ("writer-a", 1))     # the same batch
        store.add_usage({api_key_id(key): 2}, MONTH, ("writer-a", 2))
        assert store.usage(key, MONTH) == 7
        table = APIKeyTable()
        store.sync_into(table)
        real_add_usage, lost = store.add_usage, [1]

        def add_usage(deltas, month, batch=None):
            real_add_usage(deltas, month, batch)
            if lost:                        # applied, then the answer is lost
                lost.pop()
                raise KeyStoreError("database: usage flush failed: connection was closed "
                                    "in the middle of operation")
        store.add_usage = add_usage  # type: ignore[method-assign]
        flusher = UsageFlusher(store, table, interval_s=3600)       # flushed by hand here
        before = store.usage(key)
        for _ in range(6):
            table.admit(key)
        assert flusher.flush() == 0 and flusher.flush_errors == 1
        for _ in range(4):
            table.admit(key)                # after the failure: the next batch's
        assert flusher.flush() == 6         # the kept batch, skipped by the store
        assert store.usage(key) == before + 6
        assert flusher.flush() == 4 and store.usage(key) == before + 10


def test_a_call_that_timed_out_ends_on_the_loop_before_it_stops():
    """A call past its time (an opening slow to connect) is cancelled; close()
    lets it run its cleanup on the loop before stopping it.  Stopped first,
    the task was destroyed pending and its sockets left open until a garbage
    collection (two of a pool's connections, at load 8)."""
    import asyncio
    import socket

    from beastnet.serve.stores.postgres import PoolOnLoop

    held: list[socket.socket] = []
    started = threading.Event()

    async def slow_open() -> None:
        a, b = socket.socketpair()
        held.extend((a, b))
        try:
            started.set()
            await asyncio.sleep(3600)           # a connect that never answers
        finally:
            await asyncio.sleep(0)              # cleanup that needs the loop to run
            a.close()
            b.close()

    pool = PoolOnLoop()
    pool._start_loop("postgresql://u@127.0.0.1:1/db", 0.2, "test-pool-loop")
    with pytest.raises(KeyStoreError, match="no answer in 0.4 s"):
        pool.call(slow_open())
    assert started.is_set()
    pool.close()
    assert [s.fileno() for s in held] == [-1, -1], "the cancelled call's sockets were closed"
    assert not pool._thread.is_alive() and pool._loop.is_closed()
