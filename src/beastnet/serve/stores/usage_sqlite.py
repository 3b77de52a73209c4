"""The usage log in SQLite (the embedded default): one table in the key
store's file, written with executemany in one transaction per batch (with
the batch's claim in `usage_writers`: UsageLogStore.write says why)."""
from __future__ import annotations

import sqlite3
import time
from typing import Optional

from beastnet.serve.stores.sqlite import Database, _OnDatabase
from beastnet.serve.stores.usage_log import Totals, UsageRow

__all__ = ["SQLiteUsageLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_log (
    key          TEXT NOT NULL,     -- key ID, or '(unknown)'
    minute       INTEGER NOT NULL,  -- the minute's start, Unix seconds (UTC)
    protocol     TEXT NOT NULL,     -- udp, http, ws
    route        TEXT NOT NULL,     -- price, snapshot, report, stream
    admitted     INTEGER NOT NULL,
    refused      INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    over_quota   INTEGER NOT NULL,
    PRIMARY KEY (minute, key, protocol, route)
) WITHOUT ROWID;
-- The last batch each writer applied (UsageLogStore.write): a retried batch
-- at or below it is skipped.
CREATE TABLE IF NOT EXISTS usage_writers (
    writer  TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    seen_at INTEGER NOT NULL            -- Unix seconds; trimmed with the usage log
) WITHOUT ROWID;
"""

_CLAIM = """
INSERT INTO usage_writers (writer, seq, seen_at) VALUES (?, ?, ?)
ON CONFLICT (writer) DO UPDATE SET seq = excluded.seq, seen_at = excluded.seen_at
WHERE seq < excluded.seq
"""

_UPSERT = """
INSERT INTO usage_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute, key, protocol, route) DO UPDATE SET
    admitted = admitted + excluded.admitted, refused = refused + excluded.refused,
    rate_limited = rate_limited + excluded.rate_limited,
    over_quota = over_quota + excluded.over_quota
"""

_SUMS = "sum(admitted), sum(refused), sum(rate_limited), sum(over_quota)"


class SQLiteUsageLog(_OnDatabase):
    """`UsageLogStore` on a SQLite file (its own connection to it)."""

    def __init__(self, db: "Database | str", timeout_s: float = 5.0) -> None:
        self._use_tables(db, timeout_s, _SCHEMA)

    def write(self, rows: list[UsageRow], batch: Optional[tuple[str, int]] = None) -> bool:
        if not rows:
            return True

        def work(conn: sqlite3.Connection) -> bool:
            # changes() after the claim: 0 when the writer's last is at or above it.
            if batch is not None and conn.execute(
                    _CLAIM, (batch[0], batch[1], int(time.time()))).rowcount == 0:
                return False
            conn.executemany(_UPSERT, [tuple(r) for r in rows])
            return True
        return self.db.run_in_transaction(work, "usage log write failed")

    def totals(self, key: Optional[str], start: int, end: int,
               bucket_s: Optional[int]) -> Totals:
        bucket = f"(minute / {int(bucket_s)}) * {int(bucket_s)}" if bucket_s else "NULL"
        where, args = _where(key, start, end)
        rows = self.db.run(f"SELECT {bucket}, protocol, route, {_SUMS} FROM usage_log "
                           f"WHERE {where} GROUP BY 1, 2, 3", args)
        return {(r[0], r[1], r[2]): [int(v) for v in r[3:]] for r in rows}

    def detail(self, key: Optional[str], start: int, end: int,
               after: Optional[tuple[int, str, str, str]], limit: int) -> list[UsageRow]:
        where, args = _where(key, start, end)
        if after is not None:
            where += " AND (minute, protocol, route, key) > (?, ?, ?, ?)"
            args += list(after)
        rows = self.db.run("SELECT key, minute, protocol, route, admitted, refused, rate_limited, "
                           f"over_quota FROM usage_log WHERE {where} "
                           "ORDER BY minute, protocol, route, key LIMIT ?", args + [limit])
        return [UsageRow(*r) for r in rows]

    def trim(self, before: int) -> int:
        rows = self.db.run("DELETE FROM usage_log WHERE minute < ? RETURNING 1", (before,))
        self.db.run("DELETE FROM usage_writers WHERE seen_at < ?", (before,))
        return len(rows)


def _where(key: Optional[str], start: int, end: int) -> tuple[str, list]:
    if key is None:
        return "minute >= ? AND minute < ?", [start, end]
    return "minute >= ? AND minute < ? AND key = ?", [start, end, key]
