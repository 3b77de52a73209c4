"""The usage log as a component: the native key table's per-route counts
harvested every interval into aggregate rows (key x minute x protocol x
route), queued, and written to the usage log store in micro-batches.

The engines count each request once, natively (`APIKeyTable.usage_counts`:
one relaxed atomic add in the key's cell for its route and verdict).  Here a
thread, every `interval_s`:

1. harvests: the deltas since the last harvest become rows of the current
   minute (a delta is credited to the minute it was harvested in, so a
   count may land in the next minute by at most one interval);
2. queues them: a row for a (minute, key, protocol, route) already queued is
   merged into it, so a database that is down fills the queue by one row per
   cell and minute, not per harvest; a new cell past `queue_rows` is dropped
   and counted (`bg_drop`); serving never waits for the queue;
3. writes batches of at most `batch_rows` rows, numbered 1, 2, 3... under a
   writer ID of this process's own; a batch that fails is kept as it is
   (`batch_flush_errors`) and tried again, under its number, before any
   other: the store skips a number it applied already (its COMMIT went
   through but the answer was lost), so a retry never counts twice.

With a backlog (more than one batch queued) and a store that can write
several batches at once (`write_many`: PostgreSQL, one connection each),
up to `lanes` batches are in flight together.  Each lane numbers its own
batches under a writer ID of its own (the process's ID, then ".1", ".2"...
for the lanes past the first), so the rule above holds per lane: lanes
commit in any order, and a number is still only ever compared with the
same lane's last.  Counts add, so the order of batches never matters.

With a mirror (`live`: the cluster's Redis, stores/usage_redis.py), the
cells whose pending counts changed in a round are pushed there after it, so
a report on any node sees this node's counts before they are stored; the
thread then harvests at least once a second (LIVE_EVERY_S), whatever the
flush interval, and writes batches only every interval.  The pushes run on
a thread of their own: a Redis that hangs never delays the writes.

A clean stop (SIGTERM drains the engines first) harvests and writes once
more, so nothing admitted is lost; a kill -9 loses what was harvested but
not yet written, plus what was not yet harvested: about one interval.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from beastnet import USAGE_ROUTE_NAMES, APIKeyTable, ClusterError
from beastnet.counters import USAGE_LOG_COUNTERS
from beastnet.metrics import MetricFamily
from beastnet.serve.component import Component
from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.usage_log import (UNKNOWN_KEY, UsageLogStore, UsageRow,
                                             open_usage_log)
from beastnet.serve.stores.usage_redis import LIVE_TTL_S, RedisLiveUsage

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService

__all__ = ["UsageLog", "UsageLogComponent"]

log = logging.getLogger("beastnet.serve.usage_log")

VERDICTS = 4                    # a route's cells: admitted, refused, rate_limited, over_quota
STOP_WRITE_S = 10.0             # a stop keeps trying to write the queue this long
TRIM_EVERY_S = 3600.0           # with a retention, rows past it are trimmed this often
LIVE_EVERY_S = 1.0              # with a mirror, harvested and pushed at least this often
LIVE_RETRY_S = 1.0              # a mirror that failed is left alone this long

Cell = tuple[int, str, str, str]        # (minute, key, protocol, route)


def _minute(now_s: float) -> int:
    return int(now_s) // 60 * 60


class _Lane:
    """One of a usage log's batch writers (UsageLog.write_batch)."""

    __slots__ = ("writer", "batch", "batch_seq", "seq")

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.batch: list[tuple[Cell, list[int]]] = []   # in flight, or failed and kept
        self.batch_seq = 0              # its number
        self.seq = 0                    # the last number this lane gave


class UsageLog:
    """Harvests `api_keys` into `store` on a thread of its own (start/stop)."""

    def __init__(self, store: UsageLogStore, api_keys: APIKeyTable, *, interval_s: float = 0.1,
                 batch_rows: int = 300, queue_rows: int = 100_000, retention_s: float = 0.0,
                 clock: Callable[[], float] = time.time, writer: Optional[str] = None,
                 lanes: Optional[int] = None, live: Optional[RedisLiveUsage] = None) -> None:
        """`lanes`: batches in flight at once with a backlog; by default the
        store's `write_lanes` if it has `write_many`, else 1.  `live`: the
        mirror of the pending counts (its `node` is this log's `writer`)."""
        self.store = store
        self.writer = writer or uuid.uuid4().hex     # the batches' writer ID (store.write)
        if lanes is None:
            lanes = getattr(store, "write_lanes", 1) if hasattr(store, "write_many") else 1
        if lanes < 1:
            raise ValueError("lanes must be >= 1")
        self.api_keys = api_keys
        self.interval_s = interval_s
        self.batch_rows = batch_rows
        self.queue_rows = queue_rows
        self.retention_s = retention_s  # 0: rows are kept
        self.clock = clock
        self._next_trim = 0.0           # monotonic time of the next trim
        self.rows_queued = 0            # cells queued (a merge into a queued cell is not one)
        self.rows_written = 0           # rows the store took
        self.batch_flush_errors = 0     # batches the store refused (their rows re-queued)
        self.bg_drop = 0                # new cells dropped: the queue was full
        self.batches_skipped = 0        # retried batches the store had applied already
        self.last_error: Optional[BaseException] = None
        self._lock = threading.Lock()   # the queue, the in-flight batch and the last counts
        # A report adds the pending counts to the stored rows; a batch stored
        # between its two reads would count twice (or, read the other way
        # round, not at all).  Writes in flight and writes ended since
        # (pending_for_report / unchanged_since) let a report read again.
        self._writes_in_flight = 0
        self._writes_ended = 0
        self.report_rereads = 0         # reports that read again: a batch was stored meanwhile
        self.report_cache_hits = 0      # reports whose stored part was the last one's (reports.py)
        self._queue: "OrderedDict[Cell, list[int]]" = OrderedDict()
        # Per lane: its writer ID, the batch being written (a failed one is
        # kept, under its number), that number, and the lane's last number.
        self._lanes = [_Lane(self.writer if i == 0 else f"{self.writer}.{i}")
                       for i in range(lanes)]
        counts, unknown = api_keys.usage_counts()
        self._last: dict[str, tuple[int, ...]] = counts
        self._last_unknown: tuple[int, ...] = unknown
        # The mirror: cells whose pending counts may differ from what it was
        # last sent, and what it was sent (absent: nothing there).
        self.live = live
        self.live_pushes = 0            # pushes to the mirror that went through ...
        self.live_errors = 0            # ... that failed (the cells are sent again), and reads
        self._dirty: set[Cell] = set()
        self._mirrored: dict[Cell, tuple[int, ...]] = {}
        self._live_retry_at = 0.0       # monotonic: no push before (after a failure)
        self._live_refresh_at = time.monotonic() + LIVE_TTL_S / 3
        self._next_flush = time.monotonic() + interval_s    # the next writes (with a mirror)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beastnet-usage-log", daemon=True)
        # Pushes to the mirror on a thread of their own: a Redis that hangs
        # (up to its timeout a push) must not delay the writes, or a kill -9
        # could lose more than one interval.
        self._pushing: set[Cell] = set()        # cells of the push under way
        self._live_wake = threading.Event()
        self._live_thread = threading.Thread(target=self._run_live, daemon=True,
                                             name="beastnet-usage-live")

    def start(self) -> "UsageLog":
        self._thread.start()
        if self.live is not None:
            self._live_thread.start()
        return self

    def stop(self, write_s: float = STOP_WRITE_S) -> None:
        """The last harvest and writes: everything counted so far is stored,
        unless the store keeps failing for `write_s` (then it is logged)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._live_wake.set()
        if self._live_thread.is_alive():
            self._live_thread.join()
        self.harvest()
        deadline = time.monotonic() + write_s
        while self.queued() and time.monotonic() < deadline:
            if not self.write_all():
                time.sleep(min(self.interval_s, 0.5))
        self.push_live(force=True)      # what was written leaves the mirror
        if self.queued():
            log.error("usage log: %d rows not written at stop: %s", self.queued(),
                      self.last_error, extra={"fields": {"event": "usage_log_lost",
                                                         "rows": self.queued()}})

    # -- harvest and queue ------------------------------------------------------------

    def _deltas(self, counts: Mapping[str, tuple[int, ...]], unknown: tuple[int, ...],
                minute: int) -> list[tuple[Cell, list[int]]]:
        """Rows of what moved since `_last`/`_last_unknown` (not updated here)."""
        out: list[tuple[Cell, list[int]]] = []
        zero = (0,) * (len(USAGE_ROUTE_NAMES) * VERDICTS)
        for key, now in counts.items():
            before = self._last.get(key, zero)
            if now == before:
                continue
            for route, (protocol, name) in enumerate(USAGE_ROUTE_NAMES):
                base = route * VERDICTS
                delta = [now[base + v] - before[base + v] for v in range(VERDICTS)]
                if any(delta):
                    out.append(((minute, key, protocol, name), delta))
        for route, (protocol, name) in enumerate(USAGE_ROUTE_NAMES):
            moved = unknown[route] - self._last_unknown[route]
            if moved:
                out.append(((minute, UNKNOWN_KEY, protocol, name), [0, moved, 0, 0]))
        return out

    def harvest(self) -> int:
        """Queue what the engines counted since the last harvest; the rows queued."""
        counts, unknown = self.api_keys.usage_counts()
        with self._lock:
            rows = self._deltas(counts, unknown, _minute(self.clock()))
            self._last, self._last_unknown = counts, unknown
            return self._enqueue(rows)

    def _enqueue(self, rows: list[tuple[Cell, list[int]]]) -> int:
        added = 0
        for cell, delta in rows:
            if self.live is not None and cell[1] != UNKNOWN_KEY:    # no report has those
                self._dirty.add(cell)
            queued = self._queue.get(cell)
            if queued is not None:
                for v in range(VERDICTS):
                    queued[v] += delta[v]
            elif len(self._queue) + self._inflight_rows() >= self.queue_rows:
                self.bg_drop += 1
            else:
                self._queue[cell] = list(delta)
                added += 1
        self.rows_queued += added
        return added

    def _inflight_rows(self) -> int:
        return sum(len(lane.batch) for lane in self._lanes)

    def queued(self) -> int:
        """Rows waiting to be written (the in-flight batches included)."""
        with self._lock:
            return len(self._queue) + self._inflight_rows()

    # -- writing ----------------------------------------------------------------------

    def write_batch(self) -> int:
        """Write what failed last time, each lane's batch again, and new
        batches of the oldest `batch_rows` rows for the lanes left free
        (one lane unless more than one batch is queued); how many rows were
        written (0 when nothing was queued); -1 when the store failed a
        batch (it is kept, unchanged and under its number, for the next try)."""
        with self._lock:
            for lane in self._lanes:
                if not lane.batch and self._queue:
                    while self._queue and len(lane.batch) < self.batch_rows:
                        lane.batch.append(self._queue.popitem(last=False))
                    lane.seq += 1
                    lane.batch_seq = lane.seq
            busy = [(lane, list(lane.batch), lane.batch_seq) for lane in self._lanes
                    if lane.batch]
            if not busy:
                return 0
            self._writes_in_flight += 1
        try:
            return self._write_busy(busy)
        finally:
            with self._lock:
                self._writes_in_flight -= 1
                self._writes_ended += 1

    def _write_busy(self, busy: list[tuple["_Lane", list[tuple[Cell, list[int]]], int]]) -> int:
        row = tuple.__new__     # UsageRow's fields without its __new__: 0.3 us a row, not 0.5
        work = [([row(UsageRow, (cell[1], cell[0], cell[2], cell[3], *counts))
                  for cell, counts in batch], (lane.writer, seq)) for lane, batch, seq in busy]
        if len(work) > 1 and hasattr(self.store, "write_many"):
            results = self.store.write_many(work)
        else:                           # one batch, or a store that writes one at a time
            results = []
            for rows, batch in work:
                try:
                    results.append(self.store.write(rows, batch))
                except KeyStoreError as exc:
                    results.append(exc)
        written, failed = 0, False
        with self._lock:
            for (lane, _, seq), (rows, _), applied in zip(busy, work, results):
                if isinstance(applied, KeyStoreError):
                    failed = True
                    self.batch_flush_errors += 1
                    if self.last_error is None or str(applied) != str(self.last_error):
                        log.warning("usage log: %s (rows stay queued)", applied,
                                    extra={"fields": {"event": "usage_flush_error"}})
                    self.last_error = applied
                    continue
                if self.live is not None:       # stored: out of the mirror, if it is there
                    self._dirty.update(cell for cell, _ in lane.batch
                                       if cell in self._mirrored or cell in self._pushing)
                lane.batch = []
                self.rows_written += len(rows)
                written += len(rows)
                if applied is False:
                    self.batches_skipped += 1
                    log.info("usage log: batch %d of writer %s was stored already (its "
                             "commit's answer was lost); not counted again", seq, lane.writer,
                             extra={"fields": {"event": "usage_batch_skipped", "batch": seq}})
        return -1 if failed else written

    def write_all(self) -> bool:
        """Write every queued row, batch after batch; False when a batch failed."""
        while True:
            done = self.write_batch()
            if done <= 0:
                return done == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            tick = self.interval_s if self.live is None else min(self.interval_s, LIVE_EVERY_S)
            self._wake.wait(tick)
            if self._stop.is_set():
                return
            try:
                self.harvest()
                if self.live is None or time.monotonic() >= self._next_flush:
                    self._next_flush = time.monotonic() + self.interval_s - tick / 2
                    self.write_all()
                if self.live is not None:
                    self._live_wake.set()       # _run_live pushes what changed
                if self.retention_s and time.monotonic() >= self._next_trim:
                    self._next_trim = time.monotonic() + TRIM_EVERY_S
                    self.trim()
            except Exception as exc:        # the thread must outlive any one failure
                self.batch_flush_errors += 1
                log.exception("usage log: %s", exc)

    def _run_live(self) -> None:
        while not self._stop.is_set():
            self._live_wake.wait()
            self._live_wake.clear()
            if self._stop.is_set():
                return
            try:
                self.push_live()
            except Exception as exc:        # the thread must outlive any one failure
                self.live_errors += 1
                log.exception("usage log: mirror: %s", exc)

    def push_live(self, force: bool = False) -> bool:
        """Send the mirror the pending counts of the cells that changed since
        the last push that went through (nothing pending: deleted); False
        when it failed (they are sent next time).  After a failure, pushes
        wait LIVE_RETRY_S unless `force`."""
        if self.live is None:
            return True
        now = time.monotonic()
        if not force and now < self._live_retry_at:
            return False
        with self._lock:
            # Every pending cell is dirty or mirrored (a push mirrors what
            # it sends): a refresh sends all the mirrored ones again, so the
            # hashes' expiry is renewed.
            refresh = now >= self._live_refresh_at
            if refresh:
                self._live_refresh_at = now + LIVE_TTL_S / 3
                self._dirty.update(self._mirrored)
            if not self._dirty:
                return True
            flying: dict[Cell, list[int]] = {}
            for lane in self._lanes:
                for cell, counts in lane.batch:
                    flying[cell] = counts
            changes: dict[Cell, Optional[tuple[int, ...]]] = {}
            for cell in self._dirty:
                queued, batch = self._queue.get(cell), flying.get(cell)
                if queued is None and batch is None:
                    if cell in self._mirrored:
                        changes[cell] = None
                    continue
                pending = tuple(a + b for a, b in zip(queued or (0,) * VERDICTS,
                                                      batch or (0,) * VERDICTS))
                if refresh or self._mirrored.get(cell) != pending:
                    changes[cell] = pending
            dirty, self._dirty = self._dirty, set()
            if not changes:
                return True
            # A batch stored while this push is under way marks its cells
            # dirty again (write_batch), so a value sent here for a cell
            # that is stored by then is corrected by the next push.
            self._pushing = set(changes)
        try:
            self.live.push(changes)
        except ClusterError as exc:
            with self._lock:
                self._pushing = set()
                self._dirty |= dirty
                self.live_errors += 1
            self._live_retry_at = time.monotonic() + LIVE_RETRY_S
            log.warning("usage log: %s (sent again later)", exc,
                        extra={"fields": {"event": "usage_live_error"}})
            return False
        with self._lock:
            self._pushing = set()
            for cell, sent in changes.items():
                if sent is None:
                    self._mirrored.pop(cell, None)
                else:
                    self._mirrored[cell] = sent
            self.live_pushes += 1
        self._live_retry_at = 0.0
        return True

    def live_others(self, key: Optional[str], start: int, end: int
                    ) -> tuple[list[UsageRow], Optional[int]]:
        """The other nodes' pending counts of `key` (None: every key's) in
        [start, end), from the mirror, and the mirror's generation (bumped by
        every node's every push: a report's stored part read at one
        generation holds at the same one, reports.py); ([], 0) without a
        mirror, ([], None) when it cannot be read (counted)."""
        if self.live is None:
            return [], 0
        try:
            return self.live.read(key, start, end, self.clock())
        except ClusterError as exc:
            self._live_read_failed(exc)
            return [], None

    async def live_others_here(self, key: Optional[str], start: int,
                               end: int) -> tuple[list[UsageRow], Optional[int]]:
        """`live_others`, awaited on the calling loop (read_here)."""
        if self.live is None:
            return [], 0
        try:
            return await self.live.read_here(key, start, end, self.clock())
        except ClusterError as exc:
            self._live_read_failed(exc)
            return [], None

    def _live_read_failed(self, exc: ClusterError) -> None:
        self.live_errors += 1
        log.warning("usage log: %s (reports show this node's pending counts only)", exc,
                    extra={"fields": {"event": "usage_live_error"}})

    def trim(self) -> int:
        """Drop the stored rows older than the retention; how many went."""
        before = int(self.clock() - self.retention_s) // 60 * 60
        try:
            removed = self.store.trim(before)
        except KeyStoreError as exc:
            log.warning("usage log: trim failed: %s", exc)
            return 0
        if removed:
            log.info("usage log: %d rows older than %g days trimmed", removed,
                     self.retention_s / 86400,
                     extra={"fields": {"event": "usage_log_trimmed", "rows": removed}})
        return removed

    # -- what reports add to the stored rows --------------------------------------------

    def pending_for_report(self, key: Optional[str] = None
                           ) -> Optional[tuple[list[UsageRow], int]]:
        """`pending(key)` and a token for `unchanged_since`, or None while a
        batch is being written (it may be stored before the report reads the
        store, and would count twice)."""
        with self._lock:
            if self._writes_in_flight:
                return None
            token = self._writes_ended
        return self.pending(key), token

    def unchanged_since(self, token: int) -> bool:
        """No batch was written (or is being written) since `token`: the
        stored rows a report read since then and its pending counts do not
        overlap."""
        with self._lock:
            return not self._writes_in_flight and self._writes_ended == token

    def pending(self, key: Optional[str] = None) -> list[UsageRow]:
        """Every count not yet stored (queued, in flight, not yet harvested),
        as rows; only `key`'s unless None."""
        counts, unknown = self.api_keys.usage_counts(key)
        if key is not None:
            unknown = self._last_unknown        # a key's report has no unknown-key rows
        with self._lock:
            cells = list(self._queue.items())
            for lane in self._lanes:
                cells += lane.batch
            live = self._deltas(counts, unknown, _minute(self.clock()))
        return [UsageRow(cell[1], cell[0], cell[2], cell[3], *delta)
                for cell, delta in cells + live if key is None or cell[1] == key]

    def counters(self) -> dict[str, int]:
        return {"rows_queued": self.rows_queued, "rows_written": self.rows_written,
                "batch_flush_errors": self.batch_flush_errors, "bg_drop": self.bg_drop,
                "batches_skipped": self.batches_skipped, "live_pushes": self.live_pushes,
                "report_rereads": self.report_rereads,
                "report_cache_hits": self.report_cache_hits,
                "live_errors": self.live_errors, **self._fold_counters()}

    def _fold_counters(self) -> dict[str, int]:
        fold_counters = getattr(self.store, "fold_counters", None)
        if fold_counters is None:       # a store that appends nothing to fold (SQLite)
            return {"usage_folds": 0, "usage_rows_folded": 0, "usage_fold_errors": 0}
        return dict(fold_counters())


class UsageLogComponent(Component):
    """The usage log of `beastnet serve`: built when keys are on; its store
    is the key store's file, or the --database PostgreSQL."""

    name = "usage_log"

    def __init__(self, host: "PriceService", store: UsageLogStore) -> None:
        self.host = host
        self.store = store
        self.log: Optional[UsageLog] = None
        self.lrs_requests = 0           # reports the control plane answered (serve/reports.py)

    @classmethod
    def build(cls, host: "PriceService") -> Optional["UsageLogComponent"]:
        if host.stores.keys is None:
            return None
        cfg = host.cfg
        # The --database option (serve/stores, with the key store there) when
        # the config has it; else the key store's SQLite file.
        database = getattr(cfg, "database", None)
        return cls(host, open_usage_log(None if database else cfg.keystore, database,
                                        database_may_be_down=True))

    async def start(self) -> None:
        if self.host.api_keys is None:
            raise RuntimeError("the usage log starts after the api_keys component")
        cfg = self.host.cfg
        writer = uuid.uuid4().hex
        # With --redis, the pending counts are mirrored there for the other
        # nodes' reports (stores/usage_redis.py).
        url = getattr(cfg, "redis", None)
        live = RedisLiveUsage(url, writer) if url else None
        self.log = UsageLog(self.store, self.host.api_keys,
                            interval_s=cfg.usage_flush_interval_s,
                            batch_rows=cfg.usage_batch_rows, queue_rows=cfg.usage_queue_rows,
                            retention_s=cfg.usage_retention_days * 86400.0, writer=writer,
                            live=live).start()
        log.info("usage log in %s%s", self.store.path,
                 f"; pending counts mirrored in redis {live.url}" if live else "")

    async def stop(self) -> None:
        try:
            if self.log is not None:
                self.log.stop()
                if self.log.live is not None:
                    await self.log.live.aclose_here()
                    self.log.live.close()
        finally:
            self.store.close()

    def answered(self) -> int:
        """lrs_requests: the reports the control plane answered, and those
        the HTTP workers answered from its keyed replies (keyed_hits: only
        reports are put there)."""
        http: Any = getattr(self.host, "http", None)
        if getattr(http, "keyed_replies", None) is None:
            return self.lrs_requests
        return self.lrs_requests + http.stats()["totals"]["keyed_hits"]

    def counters(self) -> dict[str, dict[str, int]]:
        if self.log is None:
            return {}
        return {"usage_log": {**self.log.counters(), "lrs_requests": self.answered()}}

    def stats(self) -> dict[str, Any]:
        if self.log is None:
            return {}
        return {"usage_log": {**self.log.counters(), "lrs_requests": self.answered(),
                              "queue": self.log.queued(), "store": self.store.path}}

    def families(self) -> list[MetricFamily]:
        if self.log is None:
            return []
        values = {**self.log.counters(), "lrs_requests": self.answered(),
                  "usage_queue": self.log.queued()}
        # No "_total" here: render() gives counters theirs.
        return [MetricFamily(f"beastnet_usage_log_{counter.name}", counter.kind, counter.help)
                .add(values[counter.name]) for counter in USAGE_LOG_COUNTERS]

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        if "usage_flush_interval_s" in changes:
            self.set_flush_interval(self.host.cfg.usage_flush_interval_s)

    # The governor's hooks (serve/governor.py): its background-drop signal
    # and the interval its reaction lengthens.

    def background_drops(self) -> tuple[int, int]:
        """(rows dropped, rows offered) since start: new cells the full queue
        refused, over every new cell."""
        if self.log is None:
            return 0, 0
        return self.log.bg_drop, self.log.rows_queued + self.log.bg_drop

    def set_flush_interval(self, seconds: float) -> None:
        if self.log is not None:
            self.log.interval_s = seconds
