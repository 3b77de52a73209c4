"""Usage reports (LRS): a client's own usage on the public port, any key's on
the admin listener, current to the second (stored rows plus pending counts),
equal to an independent count from the clients; bad input is a 400 with the
reason, a store that is down a 503."""
from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from beastnet import APIKeyTable, api_key_id
from beastnet.serve.reports import BadReport, Reports, parse_report_query
from beastnet.serve.usage_log import UsageLog
from pg_support import postgres  # noqa: F401  (fixture)
from support import requires, wait_for
from test_serve import add_key, serve  # noqa: F401  (fixture)
from test_cluster import redis_server  # noqa: F401  (fixture)
from test_usage_log import ROUTE, TIERS, admit, store  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

NOW = 1_780_000_000          # 2026-05-28, a fixed "now" for the parser's defaults

BAD = [
    ("usage", "from=2026-05-02&to=2026-05-01", "from: must be before to"),
    ("usage", "from=2024-01-01&to=2026-01-01", "at most 366 days"),
    ("usage", "granularity=second", "granularity: minute, hour or day"),
    ("usage", "from=2026-01-01&to=2026-03-01&granularity=minute", "more than 10080 points"),
    ("usage", "from=yesterday", "from: not a time"),
    ("usage", "from=2026-02-30", "from: no such date"),
    ("usage", "to=1'%20OR%20'1'='1", "to: not a time"),
    ("summary", "granularity=hour", "unknown parameter 'granularity'"),
    ("summary", "from=1&from=2", "from: given twice"),
    ("detail", "limit=0", "limit: a whole number"),
    ("detail", "limit=5;DROP%20TABLE%20usage_log", "limit: a whole number"),
    ("detail", "cursor=not-a-cursor", "cursor: not a cursor"),
    ("detail", "cursor=abc'--", "cursor: not a cursor"),
    ("usage", "x=1", "unknown parameter 'x'"),
]


@pytest.mark.parametrize("kind,query,reason", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_report_queries_say_why(kind, query, reason):
    with pytest.raises(BadReport, match=reason.replace("(", r"\(").replace("'", "'")):
        parse_report_query(kind, query, api_key_id("k"), now=NOW)


def test_a_cursor_of_another_key_is_refused():
    first = parse_report_query("detail", "from=2026-05-01&to=2026-05-02&limit=1",
                               api_key_id("alice"), now=NOW)
    from beastnet.serve.reports import encode_cursor
    from beastnet.serve.stores.usage_log import UsageRow
    cursor = encode_cursor(api_key_id("alice"), first,
                           UsageRow(api_key_id("alice"), first.start, "udp", "price", 1, 0, 0, 0))
    again = parse_report_query("detail", f"cursor={cursor}", api_key_id("alice"), now=NOW)
    assert again.after is not None and again.start == first.start and again.limit == 1
    with pytest.raises(BadReport, match="belongs to another key"):
        parse_report_query("detail", f"cursor={cursor}", api_key_id("mallory"), now=NOW)


def reports_on(store: Any, usage: Any) -> Reports:
    host = SimpleNamespace(cfg=SimpleNamespace(http_prefix="/v1/"))
    return Reports(host, SimpleNamespace(store=store, log=usage, lrs_requests=0))  # type: ignore


def test_reports_add_pending_counts_to_stored_rows(store):  # noqa: F811
    table = APIKeyTable()
    table.set(api_key_id("alice"), qps=1.0, burst=4)
    table.set(api_key_id("bob"))
    usage = UsageLog(store, table)
    seen: dict = {}
    admit(table, "alice", ("udp", "price"), 6, seen)           # 4 admitted, 2 limited
    admit(table, "bob", ("http", "price"), 3, seen)
    usage.harvest()
    usage.write_all()
    admit(table, "alice", ("http", "snapshot"), 0, seen)
    table.set(api_key_id("alice"), qps=0.0)
    admit(table, "alice", ("http", "snapshot"), 5, seen)       # pending, not written
    reports = reports_on(store, usage)
    summary = reports.answer(parse_report_query("summary", "", api_key_id("alice")))
    got = {(r["protocol"], r["route"]): [r[c] for c in ("admitted", "refused", "rate_limited",
                                                          "over_quota")]
           for r in summary["by_route"]}
    assert got == {(p, r): v for (k, p, r), v in seen.items() if k == api_key_id("alice")}
    assert summary["total"]["admitted"] == 9 and summary["total"]["rate_limited"] == 2
    series = reports.answer(parse_report_query("usage", "granularity=minute",
                                                api_key_id("alice")))["series"]
    assert sum(p["admitted"] for p in series) == 9
    # Detail, a row a page: the pages join up to every cell, each once.
    rows, cursor = [], None
    while True:
        query = f"limit=1&cursor={cursor}" if cursor else "limit=1"
        page = reports.answer(parse_report_query("detail", query, api_key_id("alice")))
        rows += page["rows"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(r["protocol"], r["route"], r["admitted"]) for r in rows] == \
        [("http", "snapshot", 5), ("udp", "price", 4)]
    # Across keys (admin): every key's rows, named.
    every = reports.answer(parse_report_query("summary", "", None), own=False)
    assert every["total"]["admitted"] == 12 and every["key"] is None


@pytest.mark.postgres_own        # stops PostgreSQL: a cluster of its own
def test_a_store_that_is_down_answers_503(postgres):  # noqa: F811
    from beastnet.serve.stores.postgres import migrate
    from beastnet.serve.stores.usage_postgres import PostgresUsageLog
    migrate(postgres.dsn)
    pg = PostgresUsageLog(postgres.dsn, timeout_s=1.0)
    try:
        reports = reports_on(pg, None)
        postgres.stop()
        answer = asyncio.run(reports._report("summary", "", api_key_id("alice"), own=True))
        assert answer.status == 503 and "usage log cannot be read" in answer.body["detail"]
        answer = reports._report("summary", "from=x", api_key_id("alice"), own=True)
        assert answer.status == 400         # at once: nothing to await
    finally:
        pg.close()


# -- `beastnet serve`: reports on the public port and the admin listener -------------

def report(server, path: str, key: str) -> tuple[int, Any]:
    status, _, raw = server.http("GET", path, {"X-API-Key": key})
    return status, orjson.loads(raw)


def test_serve_reports_equal_what_the_clients_counted(serve, tmp_path):  # noqa: F811
    db = tmp_path / "keys.db"
    add_key(db, "public", "alice-key")
    add_key(db, "pro", "bob-key")
    server = serve("--keystore", str(db), config=TIERS)
    counted = {"udp": 0, "http": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(40):
            counted["udp"] += b'"asset"' in server.udp_ask(b"BTC alice-key", sock)
    for _ in range(7):
        counted["http"] += server.http("GET", "/v1/ETH", {"X-API-Key": "alice-key"})[0] == 200
    limited = sum(server.http("GET", "/v1/ETH", {"X-API-Key": "bob-key"})[0] == 429
                  for _ in range(5))                               # burst 3: 2 limited
    status, summary = report(server, "/v1/reports/usage/summary", "alice-key")
    assert status == 200, summary
    by = {(r["protocol"], r["route"]): r for r in summary["by_route"]}
    assert by[("udp", "price")]["admitted"] == counted["udp"] == 40
    assert by[("http", "price")]["admitted"] == counted["http"] == 7
    assert by[("http", "report")]["admitted"] == 1, "the report counts itself"
    assert "key" not in summary, "a client's report is its own key's"
    status, series = report(server, "/v1/reports/usage?granularity=minute", "alice-key")
    assert status == 200 and sum(p["admitted"] for p in series["series"]) == 40 + 7 + 2
    assert limited == 2
    status, _ = report(server, "/v1/reports/usage/summary", "bob-key")
    assert status == 429, "a report is held to the key's rate limit like a price"
    # A cursor is bound to its key.
    status, page = report(server, "/v1/reports/usage/detail?limit=1", "alice-key")
    assert status == 200 and len(page["rows"]) == 1 and page["next_cursor"]
    add_key(db, "public", "carol-key")      # the server picks it up within a second
    wait_for(lambda: server.http("GET", "/v1/ETH", {"X-API-Key": "carol-key"})[0] == 200)
    status, refused = report(server, f"/v1/reports/usage/detail?cursor={page['next_cursor']}",
                             "carol-key")
    assert status == 400 and "another key" in refused["detail"]
    status, refused = report(server, "/v1/reports/usage?from=2026-05-02&to=2026-05-01",
                             "alice-key")
    assert status == 400 and "before" in refused["detail"]
    assert server.http("GET", "/v1/reports/usage")[0] == 401
    queued = orjson.loads(server.admin("GET", "/admin/stats")[2])["http"]["totals"]["queued"]
    assert server.http("GET", "/v1/NOPE", {"X-API-Key": "alice-key"})[0] == 404
    after = orjson.loads(server.admin("GET", "/admin/stats")[2])["http"]["totals"]["queued"]
    assert after == queued, "a price miss is a native 404: only reports/usage... is queued"
    # The admin listener: any key, and every key.
    bob = api_key_id("bob-key")
    status, _, raw = server.admin("GET", f"/admin/reports/usage/summary?key={bob}")
    assert status == 200 and orjson.loads(raw)["total"]["rate_limited"] == 2 + 1
    status, _, raw = server.admin("GET", "/admin/reports/usage/summary")
    every = orjson.loads(raw)
    assert status == 200 and every["total"]["admitted"] >= 40 + 7 + 3 + 1
    stats = orjson.loads(server.admin("GET", "/admin/stats")[2])["usage_log"]
    assert stats["lrs_requests"] == 7, "every report answered"
    assert server.terminate() == 0


def test_a_report_is_answered_by_the_worker_within_its_max_age(serve, tmp_path):  # noqa: F811
    """report_max_age_s: a report without a query string, once rendered, is
    answered by the HTTP worker for that key (no trip to the control plane)
    and counted like any report; a report with a query string, another key
    or report_max_age_s = 0 still reaches the control plane."""
    db = tmp_path / "keys.db"
    add_key(db, "public", "alice-key")
    add_key(db, "public", "bob-key")
    server = serve("--keystore", str(db), config="report_max_age_s = 30\n" + TIERS)

    def stats() -> tuple[int, int]:
        got = orjson.loads(server.admin("GET", "/admin/stats")[2])
        return got["http"]["totals"]["keyed_hits"], got["usage_log"]["lrs_requests"]
    first = server.http("GET", "/v1/reports/usage/summary", {"X-API-Key": "alice-key"})
    assert first[0] == 200
    again = [server.http("GET", "/v1/reports/usage/summary", {"X-API-Key": "alice-key"})
             for _ in range(3)]
    assert [a[0] for a in again] == [200] * 3 and {a[2] for a in again} == {first[2]}
    assert stats() == (3, 4), "lrs_requests: every report answered, by the workers too"
    status, summary = report(server, "/v1/reports/usage/summary?from=2026-01-01",
                             "alice-key")
    by = {(r["protocol"], r["route"]): r for r in summary["by_route"]}
    assert status == 200 and by[("http", "report")]["admitted"] == 5, \
        "the reports the worker answered are counted like the rest"
    status, bobs = report(server, "/v1/reports/usage/summary", "bob-key")
    assert status == 200 and bobs["total"]["admitted"] == 1, "bob's own report, not alice's"
    assert stats() == (3, 6)
    assert server.terminate() == 0
    off = serve("--keystore", str(db), config="report_max_age_s = 0\n" + TIERS)
    for _ in range(2):
        assert off.http("GET", "/v1/reports/usage/summary", {"X-API-Key": "alice-key"})[0] == 200
    got = orjson.loads(off.admin("GET", "/admin/stats")[2])
    assert got["http"]["totals"]["keyed_hits"] == 0 and got["usage_log"]["lrs_requests"] == 2
    assert off.terminate() == 0


def test_a_kept_report_is_removed_after_its_max_age(tmp_path):
    """The keyed reply is put when the report is rendered and removed
    report_max_age_s later, on the control loop (one store is enough: the
    stores' parts are tested above)."""
    from beastnet import MissRequest, ResponseTable
    from beastnet.http_server import keyed_reply_key
    from beastnet.serve.stores.usage_sqlite import SQLiteUsageLog
    store = SQLiteUsageLog(str(tmp_path / "usage.db"))
    table = APIKeyTable()
    table.set(api_key_id("alice"))
    keyed = ResponseTable()
    host = SimpleNamespace(cfg=SimpleNamespace(http_prefix="/v1/", report_max_age_s=0.05),
                           http=SimpleNamespace(keyed_replies=keyed))
    reports = Reports(host, SimpleNamespace(store=store, log=UsageLog(store, table),  # type: ignore
                                            lrs_requests=0))
    name = keyed_reply_key("alice", "reports/usage/summary")

    def ask(query: str = "") -> Any:
        return reports.on_public(MissRequest("reports/usage/summary", "alice", None, "http",
                                             b"", 0, method="GET",
                                             path="/v1/reports/usage/summary", query=query))

    async def run() -> None:
        answer = ask()
        if asyncio.iscoroutine(answer):
            answer = await answer
        assert answer.status == 200 and keyed.get(name) is not None
        assert orjson.loads(keyed[name]) == orjson.loads(answer.body)
        for _ in range(400):                # removed after 50 ms (bounded: 4 s)
            if keyed.get(name) is None:
                break
            await asyncio.sleep(0.01)
        assert keyed.get(name) is None
        with_query = ask("from=2026-01-01")
        if asyncio.iscoroutine(with_query):
            with_query = await with_query
        assert with_query.status == 200 and keyed.get(name) is None and len(keyed) == 0
    try:
        asyncio.run(run())
    finally:
        store.close()


def test_without_keys_the_admin_reports_say_how_to_turn_them_on(serve):  # noqa: F811
    server = serve("--no-keys")
    status, _, raw = server.admin("GET", "/admin/reports/usage/summary")
    assert status == 404 and "--keystore" in orjson.loads(raw)["detail"]
    assert server.http("GET", "/v1/reports/usage")[0] == 404
    assert server.terminate() == 0


class FlushFirst:
    """The usage store, but its first read of the report lets a flush in
    first: the batch the report saw pending is stored by the time the report
    reads the store (what a flush on the usage log's thread does between the
    two reads, made certain here)."""

    def __init__(self, store: Any, usage: UsageLog) -> None:
        self.store, self.usage, self.flushes = store, usage, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _flush_once(self) -> None:
        if not self.flushes:
            self.flushes += 1
            assert self.usage.write_all()

    def totals(self, *args: Any) -> Any:
        self._flush_once()
        return self.store.totals(*args)

    async def totals_here(self, *args: Any) -> Any:
        # The report's path on the control loop (reports._answer), the
        # store read through its blocking call: a pool on a loop of the
        # test's own would outlive asyncio.run.
        self._flush_once()
        return self.store.totals(*args)


def test_a_batch_stored_between_the_reports_two_reads_counts_once(store):  # noqa: F811
    table = APIKeyTable()
    table.set(api_key_id("alice"))
    usage = UsageLog(store, table)
    seen: dict = {}
    query = parse_report_query("summary", "", api_key_id("alice"))
    # Both report paths: on an executor thread (answer) and on the loop.
    for admitted, answer in ((7, lambda r: r.answer(query)),
                             (7 + 5, lambda r: asyncio.run(r._answer(query, True, here=True)))):
        admit(table, "alice", ("udp", "price"), admitted - sum(
            v[0] for v in seen.values()), seen)
        usage.harvest()                     # queued, not yet written
        flushing = FlushFirst(store, usage)
        rereads = usage.report_rereads
        summary = answer(reports_on(flushing, usage))
        assert flushing.flushes == 1 and usage.queued() == 0
        assert summary["total"]["admitted"] == admitted, summary["total"]
        assert usage.report_rereads == rereads + 1


class CountingStore:
    """A store whose reads are counted."""

    def __init__(self, store: Any) -> None:
        self.store, self.reads = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def totals(self, *args: Any) -> Any:
        self.reads += 1
        return self.store.totals(*args)

    def detail(self, *args: Any) -> Any:
        self.reads += 1
        return self.store.detail(*args)


def test_a_reports_stored_part_is_kept_until_a_batch_is_stored(store, monkeypatch):  # noqa: F811
    """The same report again reads the store again only once a batch was
    stored since (or REPORT_CACHE_S passed); the pending counts are added
    afresh each time, and a kept part is never changed by the adding."""
    import beastnet.serve.reports as reports_module
    table = APIKeyTable()
    table.set(api_key_id("alice"))
    usage = UsageLog(store, table)
    counting = CountingStore(store)
    reports = reports_on(counting, usage)
    seen: dict = {}
    summary = parse_report_query("summary", "", api_key_id("alice"))
    detail = parse_report_query("detail", "", api_key_id("alice"))

    def admitted(query: Any) -> int:
        body = reports.answer(query)
        rows = body["by_route"] if query.kind == "summary" else body["rows"]
        return sum(r["admitted"] for r in rows)
    admit(table, "alice", ("udp", "price"), 3, seen)
    usage.harvest()
    assert usage.write_all()
    assert [admitted(summary) for _ in range(3)] == [3, 3, 3]
    assert counting.reads == 1 and usage.report_cache_hits == 2
    admit(table, "alice", ("udp", "price"), 2, seen)           # pending: added to the kept part
    assert admitted(summary) == 5 and admitted(summary) == 5 and counting.reads == 1
    assert admitted(detail) == 5 and admitted(detail) == 5 and counting.reads == 2
    usage.harvest()
    assert usage.write_all()                                    # a batch stored: read again
    assert admitted(summary) == 5 and counting.reads == 3
    assert admitted(detail) == 5 and counting.reads == 4
    assert admitted(summary) == 5 and counting.reads == 4
    # On the control loop: a kept part and no mirror to read, the answer at
    # once (no task); otherwise a coroutine.
    answer = reports._report("summary", "", api_key_id("alice"), own=True)
    assert answer.status == 200 and answer.body["total"]["admitted"] == 5
    assert counting.reads == 4 and usage.report_cache_hits == 7
    monkeypatch.setattr(reports_module, "REPORT_CACHE_S", 0.0)  # kept no longer than that
    later = reports._report("summary", "", api_key_id("alice"), own=True)
    assert asyncio.iscoroutine(later)
    later.close()
    assert admitted(summary) == 5 and counting.reads == 5
    assert usage.report_cache_hits == 7


@requires("redis-server")
def test_another_nodes_push_drops_the_kept_stored_part(store, redis_server):  # noqa: F811
    """--redis: node B stores a batch and pushes; node A's next report
    reads the store again (the mirror's generation moved), so B's counts,
    out of Redis now, are in A's report from the store, once."""
    from beastnet.serve.stores.usage_redis import RedisLiveUsage
    tables = [APIKeyTable(), APIKeyTable()]
    for table in tables:
        table.set(api_key_id("alice"))
    a, b = (UsageLog(store, table, writer=name, live=RedisLiveUsage(redis_server.url, name))
            for name, table in zip(("node-a", "node-b"), tables))
    counting = CountingStore(store)
    reports = reports_on(counting, a)
    query = parse_report_query("summary", "", api_key_id("alice"))

    def admitted() -> int:
        return int(reports.answer(query)["total"]["admitted"])
    try:
        admit(tables[1], "alice", ("udp", "price"), 4, {})
        b.harvest()
        assert b.push_live()
        assert admitted() == 4 and admitted() == 4 and counting.reads == 1   # from Redis
        assert b.write_all() and b.push_live()                  # stored, out of Redis
        assert admitted() == 4 and counting.reads == 2
        assert admitted() == 4 and counting.reads == 2
    finally:
        a.live.close()
        b.live.close()
