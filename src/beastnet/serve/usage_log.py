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

from beastnet import USAGE_ROUTE_NAMES, APIKeyTable
from beastnet.counters import USAGE_LOG_COUNTERS
from beastnet.metrics import MetricFamily
from beastnet.serve.component import Component
from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.usage_log import (UNKNOWN_KEY, UsageLogStore, UsageRow,
                                             open_usage_log)

if TYPE_CHECKING:
    from beastnet.serve.service import PriceService

__all__ = ["UsageLog", "UsageLogComponent"]

log = logging.getLogger("beastnet.serve.usage_log")

VERDICTS = 4                    # a route's cells: admitted, refused, rate_limited, over_quota
STOP_WRITE_S = 10.0             # a stop keeps trying to write the queue this long
TRIM_EVERY_S = 3600.0           # with a retention, rows past it are trimmed this often

Cell = tuple[int, str, str, str]        # (minute, key, protocol, route)


def _minute(now_s: float) -> int:
    return int(now_s) // 60 * 60


class UsageLog:
    """Harvests `api_keys` into `store` on a thread of its own (start/stop)."""

    def __init__(self, store: UsageLogStore, api_keys: APIKeyTable, *, interval_s: float = 0.1,
                 batch_rows: int = 300, queue_rows: int = 100_000, retention_s: float = 0.0,
                 clock: Callable[[], float] = time.time, writer: Optional[str] = None) -> None:
        self.store = store
        self.writer = writer or uuid.uuid4().hex     # the batches' writer ID (store.write)
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
        self._queue: "OrderedDict[Cell, list[int]]" = OrderedDict()
        self._inflight: list[tuple[Cell, list[int]]] = []     # the batch being written ...
        self._inflight_seq = 0          # ... its number (a failed one is kept, with it)
        self._seq = 0                   # the last batch number given
        counts, unknown = api_keys.usage_counts()
        self._last: dict[str, tuple[int, ...]] = counts
        self._last_unknown: tuple[int, ...] = unknown
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beastnet-usage-log", daemon=True)

    def start(self) -> "UsageLog":
        self._thread.start()
        return self

    def stop(self, write_s: float = STOP_WRITE_S) -> None:
        """The last harvest and writes: everything counted so far is stored,
        unless the store keeps failing for `write_s` (then it is logged)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.harvest()
        deadline = time.monotonic() + write_s
        while self.queued() and time.monotonic() < deadline:
            if not self.write_all():
                time.sleep(min(self.interval_s, 0.5))
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
            queued = self._queue.get(cell)
            if queued is not None:
                for v in range(VERDICTS):
                    queued[v] += delta[v]
            elif len(self._queue) + len(self._inflight) >= self.queue_rows:
                self.bg_drop += 1
            else:
                self._queue[cell] = list(delta)
                added += 1
        self.rows_queued += added
        return added

    def queued(self) -> int:
        """Rows waiting to be written (the in-flight batch included)."""
        with self._lock:
            return len(self._queue) + len(self._inflight)

    # -- writing ----------------------------------------------------------------------

    def write_batch(self) -> int:
        """Write the batch that failed last time, else the oldest `batch_rows`
        rows; how many (0 when empty); -1 when the store failed (the batch is
        kept, unchanged and under its number, for the next try)."""
        with self._lock:
            if not self._inflight:
                batch: list[tuple[Cell, list[int]]] = []
                while self._queue and len(batch) < self.batch_rows:
                    batch.append(self._queue.popitem(last=False))
                if batch:
                    self._seq += 1
                    self._inflight, self._inflight_seq = batch, self._seq
            batch, seq = list(self._inflight), self._inflight_seq
        if not batch:
            return 0
        rows = [UsageRow(cell[1], cell[0], cell[2], cell[3], *counts) for cell, counts in batch]
        try:
            applied = self.store.write(rows, (self.writer, seq))
        except KeyStoreError as exc:
            with self._lock:
                self.batch_flush_errors += 1
                if self.last_error is None or str(exc) != str(self.last_error):
                    log.warning("usage log: %s (rows stay queued)", exc,
                                extra={"fields": {"event": "usage_flush_error"}})
                self.last_error = exc
            return -1
        with self._lock:
            self._inflight = []
            self.rows_written += len(rows)
            if applied is False:
                self.batches_skipped += 1
                log.info("usage log: batch %d was stored already (its commit's answer was "
                         "lost); not counted again", seq,
                         extra={"fields": {"event": "usage_batch_skipped", "batch": seq}})
        return len(rows)

    def write_all(self) -> bool:
        """Write every queued row, batch after batch; False when a batch failed."""
        while True:
            done = self.write_batch()
            if done <= 0:
                return done == 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            if self._stop.is_set():
                return
            try:
                self.harvest()
                self.write_all()
                if self.retention_s and time.monotonic() >= self._next_trim:
                    self._next_trim = time.monotonic() + TRIM_EVERY_S
                    self.trim()
            except Exception as exc:        # the thread must outlive any one failure
                self.batch_flush_errors += 1
                log.exception("usage log: %s", exc)

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

    def pending(self, key: Optional[str] = None) -> list[UsageRow]:
        """Every count not yet stored (queued, in flight, not yet harvested),
        as rows; only `key`'s unless None."""
        counts, unknown = self.api_keys.usage_counts(key)
        if key is not None:
            unknown = self._last_unknown        # a key's report has no unknown-key rows
        with self._lock:
            cells = list(self._queue.items()) + list(self._inflight)
            live = self._deltas(counts, unknown, _minute(self.clock()))
        return [UsageRow(cell[1], cell[0], cell[2], cell[3], *delta)
                for cell, delta in cells + live if key is None or cell[1] == key]

    def counters(self) -> dict[str, int]:
        return {"rows_queued": self.rows_queued, "rows_written": self.rows_written,
                "batch_flush_errors": self.batch_flush_errors, "bg_drop": self.bg_drop,
                "batches_skipped": self.batches_skipped}


class UsageLogComponent(Component):
    """The usage log of `beastnet serve`: built when keys are on; its store
    is the key store's file, or the --database PostgreSQL."""

    name = "usage_log"

    def __init__(self, host: "PriceService", store: UsageLogStore) -> None:
        self.host = host
        self.store = store
        self.log: Optional[UsageLog] = None
        self.lrs_requests = 0           # report requests answered (serve/reports.py counts)

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
        self.log = UsageLog(self.store, self.host.api_keys,
                            interval_s=cfg.usage_flush_interval_s,
                            batch_rows=cfg.usage_batch_rows, queue_rows=cfg.usage_queue_rows,
                            retention_s=cfg.usage_retention_days * 86400.0).start()
        log.info("usage log in %s", self.store.path)

    async def stop(self) -> None:
        try:
            if self.log is not None:
                self.log.stop()
        finally:
            self.store.close()

    def counters(self) -> dict[str, dict[str, int]]:
        if self.log is None:
            return {}
        return {"usage_log": {**self.log.counters(), "lrs_requests": self.lrs_requests}}

    def stats(self) -> dict[str, Any]:
        if self.log is None:
            return {}
        return {"usage_log": {**self.log.counters(), "lrs_requests": self.lrs_requests,
                              "queue": self.log.queued(), "store": self.store.path}}

    def families(self) -> list[MetricFamily]:
        if self.log is None:
            return []
        values = {**self.log.counters(), "lrs_requests": self.lrs_requests,
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
