"""Usage reports (LRS): what a key used, per protocol and route, from the
usage log plus the counts not yet written (this node's, and with --redis
every other node's, from Redis: stores/usage_redis.py), so a report is
current to the second.  Reports across every key add every node's too.

On the public HTTP port, for the caller's own key (the same admission as a
price request: key, rate limit, monthly cap, and counted as route "report"):

* ``GET /v1/reports/usage?from=&to=&granularity=minute|hour|day``: a time series;
* ``GET /v1/reports/usage/summary?from=&to=``: totals per protocol and route;
* ``GET /v1/reports/usage/detail?from=&to=&limit=&cursor=``: the minute rows,
  a page at a time; ``next_cursor`` is opaque and bound to the key.

On the admin listener, the same under ``/admin/reports/usage...`` with
``key=`` (a key or its ID) for any key, or without it across every key.

Every parameter is checked against a strict form before use (the queries
are parameterised anyway): a bad one is a 400 that says which and why; a
store that cannot answer is a 503.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Optional
from urllib.parse import parse_qsl

import orjson

from beastnet import (Answer, MissRequest, ResponseTable, api_key_id, error_answer,
                      keyed_reply_key)
from beastnet.serve.admin import AdminRoute
from beastnet.serve.component import Component
from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.usage_log import Totals, UsageRow

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService
    from beastnet.serve.usage_log import UsageLogComponent

__all__ = ["BadReport", "ReportQuery", "Reports", "parse_report_query"]

GRANULARITY_S = {"minute": 60, "hour": 3600, "day": 86400}
MAX_RANGE_S = 366 * 86400           # a report covers at most a year (a leap one)
MAX_BUCKETS = 10_080                # a time series has at most a week of minutes
DEFAULT_RANGE_S = 86400             # without from=, the last day
DETAIL_LIMIT = 100                  # detail rows a page by default ...
DETAIL_LIMIT_MAX = 1000             # ... and at most
REPORT_KINDS = ("usage", "summary", "detail")
# A report adds this node's pending counts to the stored rows; a batch
# stored between the two reads would count twice, so the report reads again
# (up to REPORT_READS times, REPORT_REREAD_S apart while a batch is being
# written).  A flush takes milliseconds every 100 ms: a second read is rare.
REPORT_READS = 5
REPORT_REREAD_S = 0.005
# A report's stored part (the store's answer) is kept for the next report of
# the same query while nothing can have changed it: no batch stored by this
# node since (the usage log's token), and with --redis no push by any node
# (the mirror's generation: a node pushes after it stores).  Without a
# mirror another node's batches (a shared PostgreSQL) are not seen, so an
# entry is also dropped after REPORT_CACHE_S.  1,000 reports a second of
# one key read the store about once per flush interval, not 1,000 times.
REPORT_CACHE_S = 1.0
REPORT_CACHE_ENTRIES = 4096         # emptied when full (a flood of distinct queries)
# A report without a query string is also put, rendered, in the HTTP
# engine's keyed replies (HTTPServer(keyed_replies=True)) under its API key
# for report_max_age_s (1 s): until then the worker answers that key's same
# request itself, after the same admission and counting, with no hand-over
# to this thread and back (what a report cost the most: docs/serve.md).
COUNTS = ("admitted", "refused", "rate_limited", "over_quota")

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?Z?)?")
_KEY = re.compile(r"[A-Za-z0-9_.:~+=-]{1,80}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,400}")
_PARAMS = {"usage": {"from", "to", "granularity"}, "summary": {"from", "to"},
           "detail": {"from", "to", "limit", "cursor"}}


class BadReport(ValueError):
    """A report request that cannot be answered: the 400's reason."""


@dataclass(frozen=True)
class ReportQuery:
    """One report, checked: `key` None means every key (admin only)."""

    kind: str                       #: usage, summary or detail
    key: Optional[str]              #: the key ID
    start: int                      #: Unix seconds, a minute's start
    end: int                        #: Unix seconds, exclusive, a minute's start
    bucket_s: Optional[int] = None  #: usage: the granularity in seconds
    limit: int = DETAIL_LIMIT       #: detail: rows a page
    after: Optional[tuple[int, str, str, str]] = None     #: detail: the cursor's position


def _parse_time(name: str, text: str) -> int:
    if text.isdigit() and len(text) <= 12:
        return int(text)
    match = _TIME.fullmatch(text)
    if match is None:
        raise BadReport(f"{name}: not a time (Unix seconds, or YYYY-MM-DD[THH:MM[:SS]Z], UTC)")
    parts = [int(p) if p else 0 for p in match.groups()]
    try:
        stamp = time.strptime("%04d-%02d-%02d %02d:%02d:%02d" % tuple(parts), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise BadReport(f"{name}: no such date or time") from None
    return calendar.timegm(stamp)


def _minute_up(t: int) -> int:
    return -(-t // 60) * 60


def _key_tag(key: Optional[str]) -> str:
    """What a cursor carries of its key: enough to tell keys apart, not the key."""
    return hashlib.sha256((key or "*").encode()).hexdigest()[:16]


def encode_cursor(key: Optional[str], query: "ReportQuery", last: UsageRow) -> str:
    payload = {"k": _key_tag(key), "f": query.start, "t": query.end, "l": query.limit,
               "a": [last.minute, last.protocol, last.route, last.key]}
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def _decode_cursor(text: str, key: Optional[str]) -> dict[str, Any]:
    if _CURSOR.fullmatch(text) is None:
        raise BadReport("cursor: not a cursor this server gave")
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        after = payload["a"]
        ok = (isinstance(payload, dict) and isinstance(payload["k"], str)
              and all(isinstance(payload[n], int) for n in ("f", "t", "l"))
              and isinstance(after, list) and len(after) == 4 and isinstance(after[0], int)
              and all(isinstance(a, str) for a in after[1:]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise BadReport("cursor: not a cursor this server gave")
    if payload["k"] != _key_tag(key):
        raise BadReport("cursor: it belongs to another key")
    return payload  # type: ignore[no-any-return]


def parse_report_query(kind: str, query: str, key: Optional[str], *,
                       now: Optional[float] = None) -> ReportQuery:
    """Check a report's query string (`key`: the key ID it is for, None for
    every key).  Raises BadReport with the reason."""
    allowed = _PARAMS[kind]
    args: dict[str, str] = {}
    try:
        pairs = parse_qsl(query or "", keep_blank_values=True, strict_parsing=bool(query),
                          max_num_fields=10)
    except ValueError:
        raise BadReport("the query string cannot be parsed") from None
    for name, value in pairs:
        if name == "api_key" or name == "key":
            continue                    # the credential, or the admin's key=: not ours to check
        if name not in allowed:
            raise BadReport(f"unknown parameter {name[:40]!r} (this report takes "
                            f"{', '.join(sorted(allowed))})")
        if name in args:
            raise BadReport(f"{name}: given twice")
        args[name] = value
    now_s = int(time.time() if now is None else now)
    end = _minute_up(_parse_time("to", args["to"])) if "to" in args else _minute_up(now_s + 1)
    start = (_parse_time("from", args["from"]) // 60 * 60 if "from" in args
             else end - DEFAULT_RANGE_S)
    after = None
    limit = DETAIL_LIMIT
    if "limit" in args:
        if not args["limit"].isdigit() or not 1 <= int(args["limit"]) <= DETAIL_LIMIT_MAX:
            raise BadReport(f"limit: a whole number from 1 to {DETAIL_LIMIT_MAX}")
        limit = int(args["limit"])
    if "cursor" in args:
        payload = _decode_cursor(args["cursor"], key)
        start, end, limit = payload["f"], payload["t"], payload["l"]
        a = payload["a"]
        after = (a[0], a[1], a[2], a[3])
    if start >= end:
        raise BadReport("from: must be before to")
    if end - start > MAX_RANGE_S:
        raise BadReport("from/to: a report covers at most 366 days")
    bucket_s = None
    if kind == "usage":
        granularity = args.get("granularity", "hour")
        if granularity not in GRANULARITY_S:
            raise BadReport("granularity: minute, hour or day")
        bucket_s = GRANULARITY_S[granularity]
        if (end - start) // bucket_s > MAX_BUCKETS:
            raise BadReport(f"granularity: {granularity} over this range gives more than "
                            f"{MAX_BUCKETS} points; take a coarser one or a shorter range")
    return ReportQuery(kind, key, start, end, bucket_s, limit, after)


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _counts(values: Any) -> dict[str, int]:
    return dict(zip(COUNTS, (int(v) for v in values)))


def _add_pending(totals: Totals, pending: list[UsageRow], query: ReportQuery) -> None:
    for row in pending:
        if not query.start <= row.minute < query.end:
            continue
        bucket = row.minute // query.bucket_s * query.bucket_s if query.bucket_s else None
        sums = totals.setdefault((bucket, row.protocol, row.route), [0, 0, 0, 0])
        for i, v in enumerate(row[4:]):
            sums[i] += v


def _copied(query: ReportQuery, stored: Any) -> Any:
    """What _body may change of a (kept) stored part: the totals' lists."""
    if query.kind == "detail":              # rows, never changed
        return stored
    return {cell: list(counts) for cell, counts in stored.items()}


def _sort_key(row: UsageRow) -> tuple[int, str, str, str]:
    return (row.minute, row.protocol, row.route, row.key)


class _Stored(NamedTuple):
    """A report's stored part, as the store answered at `token` (the usage
    log's writes ended) and `generation` (the Redis mirror's)."""

    token: int
    generation: int
    at: float                       #: time.monotonic() of the read
    stored: Any                     #: Totals or a detail page (never changed)


class Reports(Component):
    """The report routes; built when the usage log is."""

    name = "reports"
    off_paths = ("/admin/reports/usage", "/admin/reports/usage/summary",
                 "/admin/reports/usage/detail")
    off_hint = "usage reports are off: they need keys (--keystore)"

    def __init__(self, host: "PriceService", usage: "UsageLogComponent") -> None:
        self.host = host
        self.usage = usage
        self.prefix = host.cfg.http_prefix + "reports/usage"
        # The public port sends this handler only the misses under it (the
        # engine's miss_prefix): an unknown price key is a native 404, never
        # a trip through the miss queue to a handler that would refuse it.
        self.miss_prefix = "reports/usage"
        self._cache: dict[ReportQuery, _Stored] = {}
        #: How long the workers answer a rendered report (0: never).
        self.max_age_s: float = getattr(host.cfg, "report_max_age_s", 0.0)

    @classmethod
    def build(cls, host: "PriceService") -> Optional["Reports"]:
        usage: Any = host.component("usage_log")
        return cls(host, usage) if usage is not None else None

    def routes(self) -> list[AdminRoute]:
        return [AdminRoute(path, ("GET", "HEAD"), self._on_admin_report)
                for path in self.off_paths]

    def _kind(self, path: str, base: str) -> Optional[str]:
        if not path.startswith(base):
            return None
        return {"": "usage", "/summary": "summary", "/detail": "detail"}.get(path[len(base):])

    def on_public(self, request: MissRequest) -> Any:
        """The public port's handler for misses: a report of the caller's
        key, or None (404) for anything else."""
        kind = self._kind(request.path or "", self.prefix)
        if kind is None or not request.api_key:
            return None
        if request.method not in ("GET", "HEAD"):
            return error_answer("method_not_allowed", allow="GET, HEAD")
        try:
            key = api_key_id(request.api_key)
        except ValueError:
            return error_answer("unauthorized")
        answer = self._report(kind, request.query or "", key, own=True)
        keyed = self._keyed_replies()
        if keyed is None or request.query or request.key is None:
            return answer
        try:
            name = keyed_reply_key(key, request.key)
        except ValueError:                      # too long a key for the table: not kept
            return answer
        if isinstance(answer, Answer):
            return self._keep_reply(keyed, name, answer)
        return self._kept_later(keyed, name, answer)

    def _keyed_replies(self) -> Optional[ResponseTable]:
        http = getattr(self.host, "http", None) if self.max_age_s > 0 else None
        return getattr(http, "keyed_replies", None)

    def _keep_reply(self, keyed: ResponseTable, name: str, answer: Answer) -> Answer:
        """Put a report just rendered where the workers answer the same
        request of the same key from, for max_age_s (removed then, on this
        loop; the workers skip it while this loop is stalled)."""
        if answer.status != 200:
            return answer
        body = orjson.dumps(answer.body)
        keyed.set(name, body)
        asyncio.get_running_loop().call_later(self.max_age_s, keyed.discard, name)
        return Answer(body)

    async def _kept_later(self, keyed: ResponseTable, name: str, later: Any) -> Answer:
        return self._keep_reply(keyed, name, await later)

    def _on_admin_report(self, request: MissRequest) -> Any:
        kind = self._kind(request.path or "", "/admin/reports/usage")
        assert kind is not None
        given = dict(parse_qsl(request.query or "", keep_blank_values=True)).get("key")
        key = None
        if given is not None:
            if _KEY.fullmatch(given) is None:
                return error_answer("bad_request", "key: a key or its ID (sha256:...)")
            try:
                key = api_key_id(given)
            except ValueError as exc:
                return error_answer("bad_request", f"key: {exc}")
        return self._report(kind, request.query or "", key, own=False)

    def _report(self, kind: str, query_text: str, key: Optional[str], own: bool) -> Any:
        """The Answer, now when nothing need be awaited (a bad query; a kept
        stored part without a Redis mirror to read: _answer_now), else a
        coroutine for the control loop to run (a task of its own each)."""
        self.usage.lrs_requests += 1
        try:
            query = parse_report_query(kind, query_text, key)
        except BadReport as exc:
            return error_answer("bad_request", str(exc))
        body = self._answer_now(query, own)
        if body is not None:
            return Answer(body)
        return self._report_later(query, own)

    async def _report_later(self, query: ReportQuery, own: bool) -> Answer:
        try:
            body = await self._answer(query, own, here=True)
        except KeyStoreError as exc:
            return error_answer("unavailable", f"the usage log cannot be read: {exc}")
        return Answer(body)

    def _answer_now(self, query: ReportQuery, own: bool) -> Optional[dict[str, Any]]:
        """The report without awaiting anything, or None: what _answer does
        when its stored part is kept and there is no mirror to read (one
        node, or a shared PostgreSQL without --redis)."""
        usage_log = self.usage.log
        if usage_log is None or usage_log.live is not None:
            return None
        taken = usage_log.pending_for_report(query.key)
        if taken is None:                       # a batch is being written
            return None
        pending, token = taken
        kept = self._cached(query, token, 0)    # 0: the generation without a mirror
        if kept is None:
            return None
        return self._body(query, own, pending, _copied(query, kept))

    def answer(self, query: ReportQuery, own: bool = True) -> dict[str, Any]:
        """The report's body, blocking (the store read with its blocking calls
        on a loop of this call's own); for callers off any event loop."""
        return asyncio.run(self._answer(query, own, here=False))

    async def _answer(self, query: ReportQuery, own: bool, here: bool) -> dict[str, Any]:
        """The report: this node's pending counts, the other nodes' (--redis:
        one pipelined read of the key's hashes), and the stored rows, read
        again if a batch was stored in between (REPORT_READS).  `here`: on
        the control loop, the store read without blocking it (_read_store)."""
        usage_log = self.usage.log
        for attempt in range(REPORT_READS):
            taken = self._own_pending(query, last=attempt == REPORT_READS - 1)
            if taken is None:                   # a batch is being written
                await asyncio.sleep(REPORT_REREAD_S)
                continue
            pending, token = taken
            generation: Optional[int] = None
            if usage_log is not None:           # key None: every key's (the admin's)
                others, generation = (
                    await usage_log.live_others_here(query.key, query.start, query.end)
                    if here else usage_log.live_others(query.key, query.start, query.end))
                pending += others
            kept = self._cached(query, token, generation)
            if kept is not None:
                stored = kept
                break
            stored = await self._read_store(query, here)
            if self._consistent(token, attempt):
                self._keep(query, token, generation, stored)
                break
        return self._body(query, own, pending, _copied(query, stored))

    def _cached(self, query: ReportQuery, token: Optional[int],
                generation: Optional[int]) -> Any:
        """The stored part of the last report of `query`, if no batch can
        have been stored since (see REPORT_CACHE_S); None otherwise."""
        kept = self._cache.get(query)
        usage_log = self.usage.log
        if kept is None or usage_log is None or token is None or generation is None:
            return None
        if (kept.token != token or kept.generation != generation
                or time.monotonic() - kept.at >= REPORT_CACHE_S):
            self._cache.pop(query, None)
            return None
        usage_log.report_cache_hits += 1
        return kept.stored

    def _keep(self, query: ReportQuery, token: Optional[int], generation: Optional[int],
              stored: Any) -> None:
        """Keep a store read that the pending counts taken before it do not
        overlap (token), at the mirror's generation read before it."""
        usage_log = self.usage.log
        if (usage_log is None or token is None or generation is None
                or not usage_log.unchanged_since(token)):
            return                              # (the last try answers even so: not kept)
        if len(self._cache) >= REPORT_CACHE_ENTRIES:
            self._cache.clear()
        self._cache[query] = _Stored(token, generation, time.monotonic(), stored)

    async def _read_store(self, query: ReportQuery, here: bool) -> Any:
        """A detail page or the totals.  On the control loop a PostgreSQL
        store reads on a pool of that loop's own (totals_here: an executor
        thread in between cost 250-330 us of server CPU a report,
        benchmarks/README.md), any other store on an executor thread; off
        it (`here` False), with the store's blocking calls."""
        store: Any = self.usage.store
        detail = query.kind == "detail"
        if here and hasattr(store, "totals_here"):
            if detail:
                return await store.detail_here(query.key, query.start, query.end,
                                               query.after, query.limit)
            return await store.totals_here(query.key, query.start, query.end, query.bucket_s)

        def read() -> Any:
            if detail:
                return store.detail(query.key, query.start, query.end, query.after,
                                    query.limit)
            return store.totals(query.key, query.start, query.end, query.bucket_s)
        if here:
            return await asyncio.get_running_loop().run_in_executor(None, read)
        return read()

    def _own_pending(self, query: ReportQuery, last: bool
                     ) -> Optional[tuple[list[UsageRow], Optional[int]]]:
        """This node's pending counts and the usage log's token, or None while
        a batch is being written; on the `last` try, taken whatever the writer
        does (a store too slow to answer within the tries: the report may
        count that one batch twice, rather than not answer)."""
        usage_log = self.usage.log
        if usage_log is None:
            return [], None
        taken = usage_log.pending_for_report(query.key)
        if taken is None and last:
            return usage_log.pending(query.key), None
        return taken

    def _consistent(self, token: Optional[int], attempt: int) -> bool:
        """Whether the store read just made and the pending counts taken
        before it do not overlap (no batch stored in between); a reread is
        counted."""
        usage_log = self.usage.log
        if usage_log is None or token is None or usage_log.unchanged_since(token):
            return True
        if attempt == REPORT_READS - 1:
            return True
        usage_log.report_rereads += 1
        return False

    def _body(self, query: ReportQuery, own: bool, pending: list[UsageRow],
              stored: Any) -> dict[str, Any]:
        """The report from what the store answered (a detail page, or the
        totals) and the pending counts."""
        head: dict[str, Any] = {"from": _iso(query.start), "to": _iso(query.end)}
        if not own:
            head["key"] = query.key         # None: every key
        if query.kind == "detail":
            return {**head, **self._detail(stored, query, pending, own)}
        totals: Totals = stored
        _add_pending(totals, pending, query)
        if query.kind == "summary":
            by_route = [{"protocol": p, "route": r, **_counts(v)}
                        for (_, p, r), v in sorted(totals.items(), key=lambda i: i[0][1:])]
            total = [sum(v[i] for v in totals.values()) for i in range(4)]
            return {**head, "by_route": by_route, "total": _counts(total)}
        granularity = {s: n for n, s in GRANULARITY_S.items()}[query.bucket_s or 3600]
        series = [{"start": _iso(b or 0), "protocol": p, "route": r, **_counts(v)}
                  for (b, p, r), v in sorted(totals.items(), key=lambda i: (i[0][0] or 0,
                                                                              *i[0][1:]))]
        return {**head, "granularity": granularity, "series": series}

    def _detail(self, page: list[UsageRow], query: ReportQuery, pending: list[UsageRow],
                own: bool) -> dict[str, Any]:
        cells: dict[tuple[int, str, str, str], list[int]] = {
            _sort_key(r): list(r[4:]) for r in page}
        bound = _sort_key(page[-1]) if len(page) == query.limit else None
        for row in pending:
            cell = _sort_key(row)
            if (not query.start <= row.minute < query.end
                    or (query.after is not None and cell <= query.after)
                    or (bound is not None and cell > bound)):
                continue
            sums = cells.setdefault(cell, [0, 0, 0, 0])
            for i, v in enumerate(row[4:]):
                sums[i] += v
        ordered = sorted(cells.items())
        more = len(ordered) > query.limit or bound is not None
        ordered = ordered[:query.limit]
        rows = []
        for (minute, protocol, route, key), counts in ordered:
            out: dict[str, Any] = {"minute": _iso(minute), "protocol": protocol, "route": route}
            if not own:
                out["key"] = key
            rows.append({**out, **_counts(counts)})
        next_cursor = None
        if more and ordered:
            (minute, protocol, route, key), counts = ordered[-1]
            next_cursor = encode_cursor(query.key, query,
                                        UsageRow(key, minute, protocol, route, *counts))
        return {"rows": rows, "next_cursor": next_cursor}
