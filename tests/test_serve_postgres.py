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
UNLIMITED = "[tiers.public]\nqps = 0\nmonthly_cap = 0\n"   # every request counted, none refused


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
def test_miss_path_asks_redis_then_postgres_and_caches_unknown_keys(
        database, redis_server):  # noqa: F811
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


@requires("redis-server")
def test_a_revoked_key_is_never_revived_by_a_stale_redis_record(database,  # noqa: F811
                                                                redis_server):
    """Redis says a key is active (written through before it was revoked in
    PostgreSQL, with no --redis to tell it): a node that read the database
    refuses the key without looking it up."""
    from beastnet.serve.cluster import ClusterNode
    with PostgresKeyStore(database.dsn, TIERS) as store:
        store.add("public", key=PUBLIC)
        store.revoke(PUBLIC)
        redis_server.client().hset(KEY + api_key_id(PUBLIC),
                                   mapping={"tier": "public", "revoked": 0})
        table = APIKeyTable()
        assert store.sync_into(table) == 0

        async def run() -> None:
            node = ClusterNode(redis_server.url, "n0", snapshot=dict, profile=lambda: "dev",
                               switch_profile=lambda name: None)
            await node.start()
            misses = KeyMisses(table, store, lambda: node, interval_s=3600)
            table.note_unknown(True)
            try:
                assert table.admit(PUBLIC)[0] == "unauthorized"
                assert await misses.sweep() == 0 and misses.counts["noted"] == 0
                assert table.admit(PUBLIC)[0] == "unauthorized"
            finally:
                await node.stop()
        asyncio.run(run())


# -- serve --database ---------------------------------------------------------------------

def http_status(node, key: str) -> int:
    return node.http("GET", "/v1/BTC", {"X-API-Key": key})[0]


def admin_stats(node) -> dict:
    status, _, body = node.admin("GET", "/admin/stats")
    assert status == 200, body
    return orjson.loads(body)


def add_keys(dsn: str, *keys: str) -> None:
    with PostgresKeyStore(dsn) as store:
        for key in keys:
            store.add("public", key=key)


@requires("redis-server")
def test_three_nodes_on_one_database_agree_and_a_revocation_reaches_all(  # noqa: F811
        database, redis_server, serve, tmp_path):
    add_keys(database.dsn, PUBLIC)
    nodes = [serve("--database", database.dsn, "--redis", redis_server.url, "--node-id",
                   f"node{i}", "--key-cache", str(tmp_path / f"cache-{i}.json"))
             for i in range(3)]
    assert [http_status(n, PUBLIC) for n in nodes] == [200] * 3
    assert [http_status(n, LATER) for n in nodes] == [401] * 3
    # Added on one node: every node, and the database, has it.
    status, _, body = nodes[0].admin("POST", f"/admin/keys?op=add&key={LATER}&tier=public")
    assert status == 200, body
    # Known everywhere = no node answers 401 any more.  Not "200 from all":
    # the key's rate is shared by the nodes, and this very poll can spend it
    # (a busy run saw [429, 200, 429] for 13 s with the key on every node).
    wait_for(lambda: 401 not in [http_status(n, LATER) for n in nodes], timeout=5,
             interval=0.05, message="the added key on every node")
    assert {http_status(n, LATER) for n in nodes} <= {200, 429}
    with PostgresKeyStore(database.dsn) as store:
        assert {r["key"] for r in store.list()} == {api_key_id(PUBLIC), api_key_id(LATER)}
    # Revoked on one node: refused everywhere within a second.
    started = time.monotonic()
    status, _, body = nodes[1].admin("POST", f"/admin/keys?op=revoke&key={PUBLIC}")
    assert status == 200, body
    stopped_at = {}
    while len(stopped_at) < 3 and time.monotonic() - started < 5:
        for i, node in enumerate(nodes):
            if i not in stopped_at and http_status(node, PUBLIC) == 401:
                stopped_at[i] = time.monotonic() - started
    print(f"revocation seen by the three nodes after {sorted(stopped_at.values())} s")
    assert len(stopped_at) == 3 and max(stopped_at.values()) < 1.0, stopped_at
    # ...and after a restart, from the database.
    assert nodes[2].terminate() == 0
    again = serve("--database", database.dsn, "--redis", redis_server.url, "--node-id", "node2",
                  "--key-cache", str(tmp_path / "cache-2.json"))
    assert http_status(again, PUBLIC) == 401 and http_status(again, LATER) == 200
    snapshot = orjson.loads(nodes[0].admin("GET", "/admin/cluster-stats")[2])
    assert "db_open" in json.dumps(snapshot)


def test_a_revocation_in_the_database_reaches_a_node_without_redis(database, serve,  # noqa: F811
                                                                   tmp_path):
    add_keys(database.dsn, PUBLIC)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"))
    assert http_status(node, PUBLIC) == 200
    started = time.monotonic()
    with PostgresKeyStore(database.dsn) as store:
        store.revoke(PUBLIC)
    wait_for(lambda: http_status(node, PUBLIC) == 401, timeout=5, interval=0.01,
             message="the revocation")
    elapsed = time.monotonic() - started
    print(f"revocation (NOTIFY) seen after {elapsed:.3f} s")
    assert elapsed < 1.0


def test_unknown_key_flood_costs_the_database_few_queries(database, serve, tmp_path):  # noqa: F811
    """Unknown keys, the same few over and over and ever-new ones: all
    refused, and PostgreSQL sees well under 100 queries a second."""
    add_keys(database.dsn, PUBLIC)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"))
    before = admin_stats(node)["api_keys"]["database"]
    started = time.monotonic()
    sent = refused = 0
    while time.monotonic() - started < 2.0:
        key = f"unknown-{sent % 7}-0123456789" if sent % 2 else f"new-{sent:08d}-0123456789"
        refused += http_status(node, key) == 401
        sent += 1
    elapsed = time.monotonic() - started
    after = admin_stats(node)["api_keys"]["database"]
    queries = after["db_queries"] - before["db_queries"]
    print(f"{sent} unknown-key requests in {elapsed:.2f} s, {queries} queries "
          f"({after['key_lookups'] - before['key_lookups']} lookups)")
    assert refused == sent and sent > 200
    assert queries / elapsed < 100, (queries, elapsed)
    assert after["key_negative_hits"] > 0 and after["key_not_found"] > 0
    assert http_status(node, PUBLIC) == 200


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_database_down_at_start_serves_from_the_key_cache_or_refuses(database, serve,  # noqa: F811
                                                                    tmp_path):
    add_keys(database.dsn, PUBLIC)
    cache = tmp_path / "cache.json"
    first = serve("--database", database.dsn, "--key-cache", str(cache))
    assert first.terminate() == 0 and api_key_id(PUBLIC) in cache.read_text()
    assert PUBLIC not in cache.read_text()
    database.stop()
    node = serve("--database", database.dsn, "--key-cache", str(cache))
    assert http_status(node, PUBLIC) == 200 and http_status(node, LATER) == 401
    line = next(e for e in node.log_entries() if e.get("event") == "keys_from_cache")
    assert str(cache) in line["msg"] and line["active_keys"] == 1
    # No cache: one line, exit status 1, no password shown.
    dsn = database.dsn.replace("beastnet@", "beastnet:pw-s3cret@")
    run = subprocess.run([sys.executable, "-m", "beastnet", "serve", "--profile", "dev",
                          "--udp-port", "0", "--http-port", "0", "--admin-port", "0",
                          "--database", dsn, "--key-cache", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=60)
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert "no key cache at" in errors[0] and "pw-s3cret" not in run.stderr + run.stdout
    # The database comes back: the node started from its cache reconnects.
    database.start()
    wait_for(lambda: admin_stats(node)["api_keys"]["database"]["reachable"], timeout=10,
             message="the node to reach the database")
    add_keys(database.dsn, LATER)
    wait_for(lambda: http_status(node, LATER) == 200, timeout=5, message="a key added after")


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_database_down_mid_run_serving_goes_on_and_usage_lands_after(database, serve,  # noqa: F811
                                                                   tmp_path):
    add_keys(database.dsn, PUBLIC)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"),
                 config=UNLIMITED)
    served = sum(http_status(node, PUBLIC) == 200 for _ in range(20))
    database.stop()
    served += sum(http_status(node, PUBLIC) == 200 for _ in range(30))
    wait_for(lambda: not admin_stats(node)["api_keys"]["database"]["reachable"], timeout=10,
             message="the node to see the database down")
    served += sum(http_status(node, PUBLIC) == 200 for _ in range(30))
    assert served == 80, "serving goes on with the keys the node has"
    database.start()
    wait_for(lambda: admin_stats(node)["api_keys"]["database"]["reachable"], timeout=15,
             message="the node to reach the database again")
    served += sum(http_status(node, PUBLIC) == 200 for _ in range(10))
    assert node.terminate() == 0
    with PostgresKeyStore(database.dsn) as store:
        assert store.usage(PUBLIC) == served == 90, "the counts carried through the outage"
