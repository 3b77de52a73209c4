"""The usage log and reports on a real PostgreSQL (pg_support) as a
deployment runs them: SQL metacharacters in key names and labels stored and
reported as they are (hypothesis at the store, and through `beastnet
serve`); three nodes on one database whose stored usage and reports equal
what the clients were served; a node killed with SIGKILL loses at most the
requests of about one interval; PostgreSQL stopped with SIGTERM mid-run."""
from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from beastnet import api_key_id
from beastnet.serve.stores.postgres import PostgresKeyStore
from beastnet.serve.stores.usage_log import UsageRow
from pg_support import postgres  # noqa: F401  (the fixture)
from support import requires, wait_for
from test_cluster import redis_server  # noqa: F401  (the fixture)
from test_serve import serve  # noqa: F401  (the fixture)
from test_serve_postgres import UNLIMITED, admin_stats, database  # noqa: F401  (fixtures)
from test_usage_log import store  # noqa: F401  (the fixture: SQLite and PostgreSQL)

pytestmark = [pytest.mark.timeout(180), requires("initdb", "pg_ctl")]

METACHARS = "'\";\\%()*<>|&`$-/#\n\t"
KEY = "o'neil\";DROP_TABLE-usage_log;--/*x*/\\%_0123"    # printable, no space: a valid API key
LABEL = "'); DROP TABLE api_keys; --"
PLAIN = "plain-key-0123456789"                          # for UDP: "SYMBOL KEY" in a datagram
_MINUTES = itertools.count(1_800_000_000 // 60 * 60, 60)  # a fresh minute for each example


# -- at the store --------------------------------------------------------------------------

@settings(deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=30),
       meta=st.sampled_from(METACHARS), counts=st.lists(st.integers(0, 10**9), min_size=4,
                                                         max_size=4))
def test_metacharacters_in_key_names_are_stored_and_reported_as_they_are(store, text, meta,
                                                                        counts):  # noqa: F811
    """Keys are parameters, never SQL: a key full of metacharacters gets its
    own rows back, exactly, and no one else's (a neighbour in the same minute)."""
    key = text[: len(text) // 2] + meta + text[len(text) // 2:]
    minute = next(_MINUTES)
    store.write([UsageRow(key, minute, "http", "report", *counts),
                 UsageRow(key + "x", minute, "http", "report", 1, 1, 1, 1)])
    assert store.totals(key, minute, minute + 60, None) == {(None, "http", "report"): counts}
    assert store.totals(key, minute, minute + 60, 60) == {(minute, "http", "report"): counts}
    assert store.detail(key, minute, minute + 60, None, 10) == [
        UsageRow(key, minute, "http", "report", *counts)]


# -- through `beastnet serve --database` ------------------------------------------------------

def report(node, path: str, key: str) -> tuple[int, dict]:
    status, _, raw = node.http("GET", path, {"X-API-Key": key})
    return status, orjson.loads(raw) if raw else {}


def stored_admitted(server, key: str, route: str = "price") -> int:
    return int(server.psql(f"SELECT coalesce(sum(admitted), 0) FROM usage_log_all "
                           f"WHERE key = '{api_key_id(key)}' AND route = '{route}'"))


def test_a_key_and_label_full_of_metacharacters_through_reports(database, serve,  # noqa: F811
                                                               tmp_path):
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=KEY, label=LABEL)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"),
                 config=UNLIMITED)
    served = sum(node.http("GET", "/v1/BTC", {"X-API-Key": KEY})[0] == 200 for _ in range(9))
    assert served == 9
    status, summary = report(node, "/v1/reports/usage/summary", KEY)
    assert status == 200, summary
    by = {(r["protocol"], r["route"]): r["admitted"] for r in summary["by_route"]}
    assert by == {("http", "price"): 9, ("http", "report"): 1}
    # The admin listener: the key itself is refused (not a key's form), its ID answers.
    status, _, raw = node.admin("GET", f"/admin/reports/usage/summary?key={quote(KEY)}")
    assert status == 400 and "key:" in orjson.loads(raw)["detail"]
    status, _, raw = node.admin("GET", "/admin/reports/usage/summary?key="
                                + quote(api_key_id(KEY)))
    assert status == 200 and orjson.loads(raw)["total"]["admitted"] >= 9 + 1
    assert node.terminate() == 0
    assert stored_admitted(database, KEY) == 9
    with PostgresKeyStore(database.dsn) as keys:
        assert [r["label"] for r in keys.list()] == [LABEL]
        assert database.psql("SELECT count(*) FROM api_keys") == 1


def test_three_nodes_on_one_database_store_and_report_what_clients_were_served(
        database, serve, tmp_path):  # noqa: F811
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=PLAIN)
    nodes = [serve("--database", database.dsn, "--key-cache", str(tmp_path / f"cache-{i}.json"),
                   config=UNLIMITED) for i in range(3)]
    served = [0, 0, 0]
    for i, node in enumerate(nodes):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(20 * (i + 1)):
                served[i] += b'"asset"' in node.udp_ask(f"ETH {PLAIN}".encode(), sock)
        served[i] += sum(node.http("GET", "/v1/BTC", {"X-API-Key": PLAIN})[0] == 200
                         for _ in range(5))
    assert served == [25, 45, 65]
    # Two nodes stop (SIGTERM writes what they counted); the third's report
    # is the stored rows of all three plus its own counts not yet written.
    assert nodes[1].terminate() == 0 and nodes[2].terminate() == 0
    status, summary = report(nodes[0], "/v1/reports/usage/summary", PLAIN)
    assert status == 200, summary
    by = {(r["protocol"], r["route"]): r["admitted"] for r in summary["by_route"]}
    assert by[("udp", "price")] + by[("http", "price")] == sum(served) == 135
    assert by[("udp", "price")] == 120 and by[("http", "report")] == 1
    assert nodes[0].terminate() == 0
    assert stored_admitted(database, PLAIN) == 135
    assert stored_admitted(database, PLAIN, "report") == 1
    with PostgresKeyStore(database.dsn) as keys:       # the monthly counts agree
        assert keys.usage(PLAIN) == 135 + 1


def test_a_node_killed_with_sigkill_loses_at_most_about_one_interval(database, serve,  # noqa: F811
                                                                    tmp_path):
    """docs/postgres.md: kill -9 loses what was counted but not yet written,
    about one interval (100 ms).  Everything up to a point is written (the
    database says so); then requests for 50 ms; then SIGKILL: the stored
    count is at least the first part and at most all of it."""
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=PLAIN)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"),
                 config=UNLIMITED)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(300):
            sent += b'"asset"' in node.udp_ask(f"SOL {PLAIN}".encode(), sock)
        wait_for(lambda: stored_admitted(database, PLAIN) == sent, timeout=10,
                 message="the usage log to store every request so far")
        recent = 0
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            recent += b'"asset"' in node.udp_ask(f"SOL {PLAIN}".encode(), sock)
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    got = stored_admitted(database, PLAIN)
    print(f"kill -9: {sent} written before, {recent} in the last 50 ms, {got} stored")
    assert sent <= got <= sent + recent


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_postgresql_sigterm_mid_run_is_reported_and_recovered(database, serve,  # noqa: F811
                                                             tmp_path):
    """SIGTERM is PostgreSQL's smart shutdown: no new connection, the open
    ones live on.  The node serves throughout, its usage log keeps writing on
    the connections it holds; a statement that needs a new connection is
    refused (the report endpoints then answer 503, never hang).  When the
    node stops, PostgreSQL finishes its shutdown; started again, a new node
    finds every count."""
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=KEY)
    node = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"),
                 config=UNLIMITED)
    served = sum(node.http("GET", "/v1/BTC", {"X-API-Key": KEY})[0] == 200 for _ in range(10))
    wait_for(lambda: stored_admitted(database, KEY) == served, timeout=10,
             message="the first requests stored")
    postmaster = database.pid
    assert postmaster is not None
    os.kill(postmaster, signal.SIGTERM)
    wait_for(lambda: b"smart shutdown" in database.log.read_bytes(), timeout=10,
             message="PostgreSQL to log its smart shutdown")
    served += sum(node.http("GET", "/v1/BTC", {"X-API-Key": KEY})[0] == 200 for _ in range(10))
    assert served == 20, "serving goes on"
    # Reports: the stored rows (an open connection) or a 503 naming the
    # database, whichever the pool gives; never a hang or a wrong count.
    status, summary = report(node, "/v1/reports/usage/summary", KEY)
    if status == 200:
        by = {(r["protocol"], r["route"]): r["admitted"] for r in summary["by_route"]}
        assert by[("http", "price")] == 20
    else:
        assert status == 503 and "shutting down" in summary["detail"], summary
    stats = wait_for(lambda: (lambda s: s if s["usage_log"]["queue"] == 0 else None)(
        admin_stats(node)), timeout=10, message="the usage log's queue written")
    print(f"during the smart shutdown: report {status}, usage_log {stats['usage_log']}")
    assert node.terminate() == 0
    # The node's connections closed: the smart shutdown completes.
    wait_for(lambda: not database.running(), timeout=20,
             message="PostgreSQL to finish its smart shutdown once the node is gone")
    database.start()
    assert stored_admitted(database, KEY) == 20
    again = serve("--database", database.dsn, "--key-cache", str(tmp_path / "cache.json"),
                  config=UNLIMITED)
    assert again.http("GET", "/v1/BTC", {"X-API-Key": KEY})[0] == 200
    status, summary = report(again, "/v1/reports/usage/summary", KEY)
    assert status == 200
    by = {(r["protocol"], r["route"]): r["admitted"] for r in summary["by_route"]}
    assert by[("http", "price")] == 21 and by[("http", "report")] >= 2
    assert again.terminate() == 0


@requires("redis-server")
def two_nodes_flushing_slowly(database, redis_server, serve, tmp_path) -> tuple:
    """Nodes A and B on one PostgreSQL and one Redis, writing their usage
    once a minute: what they count stays pending (and mirrored) meanwhile."""
    slow_flush = "usage_flush_interval_s = 60\n" + UNLIMITED
    return tuple(serve("--database", database.dsn, "--redis", redis_server.url,
                       "--node-id", f"node-{n}", "--key-cache",
                       str(tmp_path / f"cache-{n}.json"), config=slow_flush)
                 for n in ("a", "b"))


def test_a_report_on_one_node_has_another_nodes_requests_before_they_are_stored(
        database, redis_server, serve, tmp_path):  # noqa: F811
    """--redis: node B's requests of this second are in node A's report
    while the database has none of them (B's flush interval is a minute):
    they come from B's pending counts in Redis.  After B stops (SIGTERM
    stores them and takes them out of Redis), A's report counts them once."""
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=PLAIN)
    node_a, node_b = two_nodes_flushing_slowly(database, redis_server, serve, tmp_path)
    served = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(40):
            served += b'"asset"' in node_b.udp_ask(f"ETH {PLAIN}".encode(), sock)
    assert served == 40

    def udp_admitted_on_a() -> int:
        status, summary = report(node_a, "/v1/reports/usage/summary", PLAIN)
        assert status == 200, summary
        return sum(r["admitted"] for r in summary["by_route"] if r["protocol"] == "udp")
    wait_for(lambda: udp_admitted_on_a() == served, timeout=5, interval=0.05,
             message="node B's 40 requests in node A's report")
    assert stored_admitted(database, PLAIN) == 0        # none stored yet: all from Redis
    live = orjson.loads(node_b.admin("GET", "/admin/stats")[2])["usage_log"]
    assert live["live_pushes"] >= 1 and live["live_errors"] == 0
    assert node_b.terminate() == 0
    assert stored_admitted(database, PLAIN) == served
    assert udp_admitted_on_a() == served                # stored, and no longer in Redis
    assert node_a.terminate() == 0


def test_an_admin_report_across_every_key_has_another_nodes_pending_counts(
        database, redis_server, serve, tmp_path):  # noqa: F811
    """--redis, the admin listener without key=: node B's requests of two
    keys, not yet stored (a flush interval of a minute), are in node A's
    summary and detail across every key, from Redis's every-key hash of the
    minute; after B stops (stored, and out of Redis) they count once."""
    other = PLAIN + "-two"
    with PostgresKeyStore(database.dsn) as keys:
        keys.add("public", key=PLAIN)
        keys.add("public", key=other)
    node_a, node_b = two_nodes_flushing_slowly(database, redis_server, serve, tmp_path)
    served = {PLAIN: 0, other: 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for key, times in ((PLAIN, 30), (other, 12)):
            for _ in range(times):
                served[key] += b'"asset"' in node_b.udp_ask(f"ETH {key}".encode(), sock)
    assert served == {PLAIN: 30, other: 12}
    want = {api_key_id(k): n for k, n in served.items()}

    def across_keys_on_a() -> tuple[int, dict[str, int]]:
        status, _, raw = node_a.admin("GET", "/admin/reports/usage/summary")
        assert status == 200, raw
        total = sum(r["admitted"] for r in orjson.loads(raw)["by_route"]
                    if r["protocol"] == "udp")
        status, _, raw = node_a.admin("GET", "/admin/reports/usage/detail?limit=1000")
        assert status == 200, raw
        per_key: dict[str, int] = {}
        for row in orjson.loads(raw)["rows"]:
            if row["protocol"] == "udp":
                per_key[row["key"]] = per_key.get(row["key"], 0) + row["admitted"]
        return total, per_key
    import redis

    from beastnet.serve.stores.usage_redis import LIVE_ALL

    def mirrored() -> int:          # B's pending counts, as Redis holds them
        client = redis.Redis.from_url(redis_server.url)
        try:
            return sum(int(v.split()[0]) for name in client.keys(LIVE_ALL + "*")
                       for v in client.hgetall(name).values())
        finally:
            client.close()
    wait_for(lambda: mirrored() == 42, timeout=5, interval=0.05,
             message="node B's 42 requests of two keys mirrored in Redis")
    assert across_keys_on_a() == (42, want)
    assert stored_admitted(database, PLAIN) == stored_admitted(database, other) == 0
    assert node_b.terminate() == 0
    assert stored_admitted(database, PLAIN) + stored_admitted(database, other) == 42
    assert across_keys_on_a() == (42, want)            # stored, and no longer in Redis
    assert node_a.terminate() == 0
