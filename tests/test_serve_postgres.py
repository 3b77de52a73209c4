"""`beastnet serve --database` against a real PostgreSQL (pg_support) and a
real redis-server: the webhook and parameter stores, keys in three layers
(the native table, Redis, PostgreSQL) with their negative cache, several
nodes on one database, and a database that is down at start or mid-run."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from beastnet import APIKeyTable, api_key_id
from beastnet.serve.cluster import KEY
from beastnet.serve.keycache import KeyMisses
from beastnet.serve.keys import Tier
from beastnet.serve.stores.postgres import (PostgresDatabase, PostgresKeyStore,
                                            PostgresParameterStore, PostgresWebhookStore, migrate)
from beastnet.serve.stores.sqlite import WebhookStore
from beastnet.serve.webhooks import WebhookError
from pg_support import postgres  # noqa: F401  (the fixture)
from support import requires, wait_for
from test_cluster import RedisServer, redis_server  # noqa: F401  (the fixture)
from test_serve import serve  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.timeout(180), requires("initdb", "pg_ctl")]

TIERS = {"public": Tier("public", 0.0, 1, 0)}
PUBLIC = "public-key-0123456789"
LATER = "later-key-0123456789"


@pytest.fixture
def database(postgres):  # noqa: F811
    migrate(postgres.dsn)
    return postgres


# -- the stores -----------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def hooks_store(request, tmp_path):
    """A fresh webhook store of each kind: one contract."""
    if request.param == "sqlite":
        store = WebhookStore(str(tmp_path / "keys.db"), assets=["BTC", "ETH"],
                             allow_private=True)
    else:
        server = request.getfixturevalue("database")
        store = PostgresWebhookStore(server.dsn, assets=["BTC", "ETH"], allow_private=True)
    try:
        yield store
    finally:
        store.close()


def test_webhook_store_contract(hooks_store):
    store = hooks_store
    v0 = store.version()
    sub = store.add("https://127.0.0.1:9/hook", "starter", ["BTC"], label="x")
    assert store.version() != v0 and sub["secrets"][0].startswith("whsec_")
    assert store.get(sub["id"])["assets"] == ["BTC"] and len(store.list()) == 1
    store.set_state(sub["id"], "paused", "by hand")
    assert store.list("paused")[0]["reason"] == "by hand" and store.list("active") == []
    with pytest.raises(WebhookError, match="is not active"):
        store.set_state(sub["id"], "disabled", only_from=("active",))
    new = store.rotate_secret(sub["id"])
    assert store.get(sub["id"])["secrets"][:2] == [new, sub["secrets"][0]]
    store.drop_old_secrets(sub["id"])
    assert store.get(sub["id"])["secrets"] == [new]
    now = time.time()
    store.write_log([(now - 100, sub["id"], "m1", "https", 1, 1, 500, 0, 3.5, "HTTP 500",
                      '["BTC"]', "[1.5]", '["sim-a"]'),
                     (now, sub["id"], "m2", "https", 1, 2, 200, 1, 2, "", '["BTC"]', None,
                      None)])
    rows = store.read_log(sub["id"])
    assert [r["msg_id"] for r in rows] == ["m2", "m1"]
    assert rows[1]["prices"] == [1.5] and rows[0]["prices"] is None
    assert store.prune_log(50) == 1 and len(store.read_log()) == 1
    store.remove(sub["id"])
    with pytest.raises(WebhookError, match="no subscription"):
        store.get(sub["id"])


def test_parameters_and_pool_counters_on_postgres(database):
    with PostgresDatabase(database.dsn, pool_size=2) as db:
        params = PostgresParameterStore(db)
        assert params.profile() is None
        params.set_profile("stress-udp-direct")
        params.set_profile("dev")
        assert params.profile() == "dev"
        before = db.pool_stats()
        assert before["db_open"] >= 1 and before["db_in_use"] == 0

        async def hold() -> None:          # both connections lent out: a third call waits
            async with db._pool.acquire(), db._pool.acquire():
                await asyncio.sleep(0.3)
        held = threading.Thread(target=lambda: db.call(hold()))
        held.start()
        wait_for(lambda: db.pool_stats()["db_in_use"] == 2, timeout=5)
        assert params.profile() == "dev"
        held.join()
        after = db.pool_stats()
        assert after["db_wait_count"] > before["db_wait_count"]
        assert after["db_queries"] == before["db_queries"] + 1


def test_webhooks_cli_on_database(database):
    run = [sys.executable, "-m", "beastnet", "webhooks", "--database", database.dsn,
           "--allow-private"]
    added = subprocess.run(run + ["add", "udp://127.0.0.1:9", "--assets", "BTC,ETH"],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    listed = subprocess.run(run + ["list", "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["assets"] == ["BTC", "ETH"]
    bad = subprocess.run([sys.executable, "-m", "beastnet", "webhooks", "--database",
                          database.dsn.replace("beastnet@", "beastnet:s3cret@").replace(
                              str(database.port), "1"), "list"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "s3cret" not in bad.stderr + bad.stdout
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# -- keys in three layers ---------------------------------------------------------------

@requires("redis-server")
def test_miss_path_asks_redis_then_postgres_and_caches_unknown_keys(database, redis_server):  # noqa: F811
    """A key the native table lacks: 401 at once, then found in Redis (no
    query to PostgreSQL) or in PostgreSQL (and written through to Redis); a
    key found nowhere is not asked for again within the negative TTL."""
    from beastnet.serve.cluster import ClusterNode
    with PostgresKeyStore(database.dsn, TIERS) as store:
        store.add("public", key=PUBLIC)
        table = APIKeyTable()

        async def run() -> None:
            node = ClusterNode(redis_server.url, "n0", snapshot=dict, profile=lambda: "dev",
                               switch_profile=lambda name: None)
            await node.start()
            misses = KeyMisses(table, store, lambda: node, interval_s=3600, negative_ttl_s=60)
            table.note_unknown(True)
            try:
                assert table.admit(PUBLIC)[0] == "unauthorized"
                queries = store.db.queries
                assert await misses.sweep() == 1
                assert table.admit(PUBLIC)[0] == "ok" and store.db.queries == queries + 1
                shared = redis_server.client().hgetall(KEY + api_key_id(PUBLIC))
                assert shared[b"tier"] == b"public" and shared[b"revoked"] == b"0"
                # In Redis only: PostgreSQL is not asked.
                redis_server.client().hset(KEY + api_key_id(LATER),
                                           mapping={"tier": "public", "revoked": 0})
                table.admit(LATER)
                queries = store.db.queries
                assert await misses.sweep() == 1 and store.db.queries == queries
                assert table.admit(LATER)[0] == "ok"
                # Unknown everywhere: one query for the whole batch, then none.
                for i in range(500):
                    table.admit(f"flood-{i:06d}-0123456789")
                queries = store.db.queries
                assert await misses.sweep() == 0 and store.db.queries == queries + 1
                for i in range(500):
                    table.admit(f"flood-{i:06d}-0123456789")
                assert await misses.sweep() == 0 and store.db.queries == queries + 1
                assert misses.counts["negative_hits"] == 500
                assert misses.counts["not_found"] == 500
            finally:
                await node.stop()
        asyncio.run(run())
