"""The usage log's storage: per key, per minute, per protocol and route, the
requests admitted, refused (a missing, unknown or revoked key), rate-limited
and over the monthly cap.  A row is an aggregate, never a request.

`UsageLogStore` is what the usage log (serve/usage_log.py) and the reports
(serve/reports.py) ask of it; `usage_sqlite.py` (the embedded default, in the
key store's file) and `usage_postgres.py` (COPY into monthly partitions)
implement it, and `open_usage_log` picks one.  The calls block, as every
store's do (stores/base.py says why).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

__all__ = ["UNKNOWN_KEY", "UsageLogStore", "UsageRow", "open_usage_log"]

#: The key column of refusals whose key was missing or unknown: not a key ID
#: (those start "sha256:"), so no caller's report ever includes it.
UNKNOWN_KEY = "(unknown)"


class UsageRow(NamedTuple):
    """One aggregate: `minute` is the minute's start in Unix seconds (UTC)."""

    key: str
    minute: int
    protocol: str
    route: str
    admitted: int
    refused: int
    rate_limited: int
    over_quota: int


#: Sums of a report, by (bucket or None, protocol, route): the four counts.
Totals = dict[tuple[Optional[int], str, str], list[int]]


class UsageLogStore(Protocol):
    """Failures raise KeyStoreError (one line, never the password)."""

    path: str

    def write(self, rows: list[UsageRow], batch: Optional[tuple[str, int]] = None) -> bool:
        """Add the rows' counts to the stored ones, all in one transaction.

        `batch`, (writer, number): a writer numbers its batches 1, 2, 3...
        and retries a failed one, unchanged, before it writes the next; the
        store applies a batch only if its number is above the writer's last
        applied (kept in the same transaction), so a retry of a batch whose
        COMMIT went through unseen is skipped.  False: skipped so."""

    # Optional: `write_many(batches)`, a list of (rows, batch) written at
    # once (per batch: what `write` returns, or the KeyStoreError it would
    # raise), and `write_lanes`, how many it writes at a time.  The usage
    # log keeps that many batches in flight when it has a backlog
    # (PostgreSQL: a pooled connection each); without it, one.
    # Optional too: `fold_counters()`, the store's own background work as
    # counters (PostgreSQL's fold of appended rows: usage_folds,
    # usage_rows_folded, usage_fold_errors); without it, zeros.

    def totals(self, key: Optional[str], start: int, end: int,
               bucket_s: Optional[int]) -> Totals:
        """Counts of `key` (None: every key) for minutes in [start, end),
        summed per bucket of `bucket_s` seconds (60, 3600, 86400, aligned on
        UTC; None: one bucket), protocol and route."""

    def detail(self, key: Optional[str], start: int, end: int,
               after: Optional[tuple[int, str, str, str]], limit: int) -> list[UsageRow]:
        """Rows in [start, end) ordered by (minute, protocol, route, key),
        the first `limit` after `after`."""

    def trim(self, before: int) -> int:
        """Drop every row of a minute before `before`; how many went."""

    def close(self) -> None: ...


def open_usage_log(path: Optional[str], database: Optional[str] = None,
                   database_may_be_down: bool = False) -> UsageLogStore:
    """The usage log in PostgreSQL at `database`, else in the SQLite file
    `path`.  `database_may_be_down`: as open_stores takes it."""
    if database is not None:
        from beastnet.serve.stores.usage_postgres import PostgresUsageLog
        return PostgresUsageLog(database, wait_for_it=database_may_be_down)
    if path is None:
        raise ValueError("the usage log needs a key store file or a database")
    from beastnet.serve.stores.usage_sqlite import SQLiteUsageLog
    return SQLiteUsageLog(path)
