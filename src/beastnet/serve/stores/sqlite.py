"""The SQLite stores, the embedded default: one `Database` (one file, one
connection, one lock) that the key store and the webhook store share.

The file holds the API keys and their usage per month (`KeyStore`), and the
webhook subscriptions and delivery log (`WebhookStore`), and the live
profile (`ParameterStore`), each in tables of its own, created when missing, so an older file gains new tables without a
migration step.  Calls block: the service makes them from threads of its own
(the usage flusher, the delivery log) or at start and stop, never per request.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, List, Mapping, Optional, TypeVar

from beastnet import APIKeyTable
from beastnet.serve.keycache import set_key_row
from beastnet.serve.keys import (DEFAULT_TIERS, KeyStoreError, Tier, api_key_id, current_month,
                                 key_prefix, new_key_row, stored_key_id)
from beastnet.serve.webhooks import SubscriptionRules, WebhookError, WebhookTier

__all__ = ["Database", "DeliveryLogSQL", "KeySQL", "KeyStore", "ParameterStore", "WebhookStore",
           "log_rows", "subscription_row"]


_T = TypeVar("_T")


class Database:
    """One SQLite file in WAL mode, one connection, calls serialised by a
    lock (threads may share it).  Every failure is a KeyStoreError naming
    the file."""

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=timeout_s, check_same_thread=False,
                                         isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise KeyStoreError(f"key store {path}: integrity check failed: {check}")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise KeyStoreError(f"key store {path}: {exc}") from exc
        except KeyStoreError:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failed(self, exc: sqlite3.DatabaseError, what: str = "") -> KeyStoreError:
        return KeyStoreError(f"key store {self.path}: {what + ': ' if what else ''}{exc}")

    def run(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """One statement; its rows."""
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def script(self, sql: str) -> None:
        """Several statements (a schema)."""
        with self._lock:
            try:
                self._conn.executescript(sql)
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc) from exc

    def run_many(self, sql: str, rows: list[tuple], what: str = "") -> None:
        """One statement for each row, all in one transaction: all or nothing."""
        self.run_steps([(sql, rows)], what)

    def run_in_transaction(self, work: Callable[[sqlite3.Connection], _T],
                           what: str = "") -> _T:
        """`work(connection)` in one write transaction: all or nothing."""
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    return work(self._conn)
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc, what) from exc

    def run_steps(self, steps: list[tuple[str, list[tuple]]], what: str = "") -> None:
        """Each statement for each of its rows, all in one transaction."""
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    for sql, rows in steps:
                        self._conn.executemany(sql, rows)
            except sqlite3.DatabaseError as exc:
                raise self._failed(exc, what) from exc


_Store = TypeVar("_Store", bound="_OnDatabase")


class _OnDatabase:
    """A store on a `Database`: given a path, one of its own (closed with the
    store); given a `Database`, a shared one (closed by its owner).  Another
    backend's stores name their own database class in `_DATABASE`
    (postgres.py: a URL and a `PostgresDatabase`)."""

    _DATABASE: Any = None                   # None: Database (defined above)
    db: Any                                 # a Database here; the backend's there

    def _use(self, db: Any, timeout_s: float) -> None:
        self._owns_db = isinstance(db, str)
        self.db = (self._DATABASE or Database)(db, timeout_s) if isinstance(db, str) else db
        self.path = self.db.path

    def _use_tables(self, db: Any, timeout_s: float, schema: str,
                    migrate: Optional[Callable[[], None]] = None) -> None:
        """`_use`, then create the store's tables where missing and run
        `migrate` (an older file's upgrade); on any failure, close what was
        opened before raising."""
        self._use(db, timeout_s)
        try:
            self.db.script(schema)
            if migrate is not None:
                migrate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEYS_SCHEMA = """
-- `key` holds the key's ID ("sha256:" + SHA-256 in hex), never the key;
-- `prefix` what listings show of it.
CREATE TABLE IF NOT EXISTS api_keys (
    key        TEXT PRIMARY KEY,
    prefix     TEXT NOT NULL DEFAULT '',
    tier       TEXT NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS usage (
    key    TEXT NOT NULL,
    month  TEXT NOT NULL,           -- 'YYYY-MM', UTC
    count  INTEGER NOT NULL,
    PRIMARY KEY (key, month)
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Bumped by every change to api_keys, whichever connection makes it: what a
-- server polls to pick up keys changed by the CLI (KeyStore.version).
INSERT OR IGNORE INTO meta (name, value) VALUES ('keys_version', '0');
CREATE TRIGGER IF NOT EXISTS api_keys_inserted AFTER INSERT ON api_keys BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
CREATE TRIGGER IF NOT EXISTS api_keys_updated AFTER UPDATE ON api_keys BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
CREATE TRIGGER IF NOT EXISTS api_keys_deleted AFTER DELETE ON api_keys BEGIN
    UPDATE meta SET value = value + 1 WHERE name = 'keys_version'; END;
"""



class KeySQL:
    """The key store's statements, for the SQLite and the PostgreSQL key
    stores alike (as `DeliveryLogSQL` is the delivery log's): they differ in
    the placeholder (`?` or `$N`, `_arg`), in how a duplicate key is reported
    (`_insert_new`), and in `add_usage` and `version`, which each does its
    own way.  The store gives `tiers` and `_run`."""

    tiers: dict[str, Tier]

    @staticmethod
    def _arg(n: int) -> str:
        """The n-th (1-based) statement argument."""
        return "?"

    def _run(self, sql: str, args: Iterable = ()) -> list[Any]:
        raise NotImplementedError

    def _insert_new(self, sql: str, args: tuple) -> bool:
        """Run an INSERT; False when its primary key exists already."""
        raise NotImplementedError

    def _tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise KeyStoreError(f"unknown tier {name!r} (known: {', '.join(self.tiers)}; define "
                                f"others under [tiers.NAME] in a --config file)") from None

    def _month_join(self, n: int) -> str:
        """Every key with its count for the month given as argument `n`."""
        return (f"FROM api_keys k LEFT JOIN usage u ON u.key = k.key "
                f"AND u.month = {self._arg(n)}")

    # -- keys --------------------------------------------------------------------

    def add(self, tier: str = "public", key: Optional[str] = None, label: str = "",
            prefix: Optional[str] = None) -> str:
        """Create a key (a random one unless given) and return it; only its
        ID and prefix are stored.  Given an ID, that ID (and `prefix`)."""
        self._tier(tier)
        key, kid, prefix = new_key_row(key, prefix)
        places = ", ".join(self._arg(i) for i in range(1, 6))
        if not self._insert_new("INSERT INTO api_keys (key, prefix, tier, label, created_at) "
                                f"VALUES ({places})", (kid, prefix, tier, label, time.time())):
            raise KeyStoreError(f"key {prefix} exists already")
        return key

    def revoke(self, key: str) -> None:
        """Revoke a key, named by itself or by its ID."""
        a = self._arg
        if not self._run(f"UPDATE api_keys SET revoked_at = {a(1)} WHERE key = {a(2)} "
                         "AND revoked_at IS NULL RETURNING key", (time.time(), stored_key_id(key))):
            raise KeyStoreError(f"no active key {key_prefix(key)}")

    def set_tier(self, key: str, tier: str) -> None:
        self._tier(tier)
        a = self._arg
        if not self._run(f"UPDATE api_keys SET tier = {a(1)} WHERE key = {a(2)} RETURNING key",
                         (tier, stored_key_id(key))):
            raise KeyStoreError(f"no key {key_prefix(key)}")

    def list(self, month: Optional[str] = None) -> list[dict]:
        """Every key (its ID and prefix) with its tier, state and usage this month."""
        rows = self._run("SELECT k.key, k.prefix, k.tier, k.label, k.created_at, k.revoked_at, "
                         f"COALESCE(u.count, 0) {self._month_join(1)} ORDER BY k.created_at",
                         (month or current_month(),))
        return [{"key": r[0], "prefix": r[1], "tier": r[2], "label": r[3], "created_at": r[4],
                 "revoked": r[5] is not None, "month_count": int(r[6])} for r in rows]

    def unknown_tiers(self) -> dict[str, int]:
        """Active keys whose tier this store does not know, counted by tier.
        Such keys are refused (fail closed) until their tier is configured."""
        counts: dict[str, int] = {}
        for (tier,) in self._run("SELECT tier FROM api_keys WHERE revoked_at IS NULL"):
            if tier not in self.tiers:
                counts[tier] = counts.get(tier, 0) + 1
        return counts

    def usage(self, key: str, month: Optional[str] = None) -> int:
        rows = self._run(f"SELECT count FROM usage WHERE key = {self._arg(1)} "
                         f"AND month = {self._arg(2)}",
                         (stored_key_id(key), month or current_month()))
        return int(rows[0][0]) if rows else 0

    def sync_into(self, api_keys: APIKeyTable, month: Optional[str] = None) -> int:
        """Make `api_keys` match the store: limits per tier, revocations, and
        each key's count for the month.  Returns the number of active keys."""
        rows = self._run("SELECT k.key, k.tier, k.revoked_at, COALESCE(u.count, 0) "
                         + self._month_join(1), (month or current_month(),))
        return sum(set_key_row(api_keys, self.tiers, key, tier, revoked_at is not None,
                               int(count)) for key, tier, revoked_at, count in rows)


class KeyStore(KeySQL, _OnDatabase):
    """API keys and their usage per month in SQLite (the `Keys` and `Usage`
    interfaces).  Given a path it opens a `Database` of its own; given a
    `Database` it shares it (and leaves closing it to its owner)."""

    def __init__(self, db: "Database | str", tiers: Optional[Mapping[str, Tier]] = None,
                 timeout_s: float = 5.0) -> None:
        self.tiers = dict(tiers or DEFAULT_TIERS)
        self._use_tables(db, timeout_s, _KEYS_SCHEMA, self._hash_plaintext_keys)

    def _hash_plaintext_keys(self) -> None:
        """Migrate a store from before keys were hashed: each key (and its
        usage rows) renamed to its ID, its prefix kept, in one transaction."""
        columns = [r[1] for r in self._run("PRAGMA table_info(api_keys)")]
        if "prefix" not in columns:
            self._run("ALTER TABLE api_keys ADD COLUMN prefix TEXT NOT NULL DEFAULT ''")
        rows = self._run("SELECT key FROM api_keys WHERE key NOT LIKE 'sha256:%'")
        if not rows:
            return
        renames = [(api_key_id(k), key_prefix(k), k) for (k,) in rows]
        self.db.run_steps([("UPDATE api_keys SET key = ?, prefix = ? WHERE key = ?", renames),
                           ("UPDATE usage SET key = ? WHERE key = ?",
                            [(kid, k) for kid, _, k in renames])],
                          what="hashing stored keys failed")
        # The old keys' bytes linger in free pages until rewritten: rewrite now.
        self._run("VACUUM")

    def _run(self, sql: str, args: Iterable = ()) -> list[tuple]:
        return self.db.run(sql, args)

    def _insert_new(self, sql: str, args: tuple) -> bool:
        try:
            self._run(sql, args)
        except KeyStoreError as exc:
            if "UNIQUE" in str(exc):
                return False
            raise
        return True

    def add_usage(self, deltas: Mapping[str, int], month: str,
                  batch: Optional[tuple[str, int]] = None) -> None:
        """Add request counts for `month`, all in one transaction.  `batch`
        is not needed here: a local SQLite COMMIT that raises did not happen,
        so a retry cannot count twice (PostgreSQL's answer can be lost)."""
        rows = [(k, month, n) for k, n in deltas.items() if n]
        if rows:
            self.db.run_many(
                "INSERT INTO usage (key, month, count) VALUES (?, ?, ?) "
                "ON CONFLICT (key, month) DO UPDATE SET count = count + excluded.count", rows,
                what="usage flush failed")

    def version(self) -> tuple[int, ...]:
        """Changes whenever a key is added, re-tiered or revoked, by any
        connection: a counter the api_keys table's triggers bump.  Not PRAGMA
        data_version, which every other write to the file (usage flushes of
        another process, the webhook delivery log) changes too."""
        return (int(self._run("SELECT value FROM meta WHERE name = 'keys_version'")[0][0]),)



_WEBHOOKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id           TEXT PRIMARY KEY,
    endpoint     TEXT NOT NULL,
    method       TEXT NOT NULL,          -- 'https' or 'udp'
    tier         TEXT NOT NULL,
    assets       TEXT NOT NULL,          -- JSON array of asset keys
    secrets      TEXT NOT NULL,          -- JSON array of whsec_ secrets, newest first
    style        TEXT NOT NULL DEFAULT 'standard',
    state        TEXT NOT NULL DEFAULT 'active',
    reason       TEXT NOT NULL DEFAULT '',
    label        TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    changed_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_log (
    ts           REAL NOT NULL,          -- UTC seconds, when the attempt ended
    subscription TEXT NOT NULL,
    msg_id       TEXT NOT NULL,
    method       TEXT NOT NULL,
    assets       INTEGER NOT NULL,       -- assets carried (UDP: datagrams sent)
    attempt      INTEGER NOT NULL,       -- 1 = first try
    status       INTEGER NOT NULL,       -- HTTP status; 0 = none (UDP, or no answer)
    delivered    INTEGER NOT NULL,       -- 1 = 2xx (UDP: handed to the kernel)
    latency_ms   REAL NOT NULL,
    error        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_log_ts ON webhook_log (ts);
CREATE INDEX IF NOT EXISTS webhook_log_sub ON webhook_log (subscription, ts);
"""

# Delivery-log columns added after the first release, each added by ALTER
# TABLE when an older file lacks it (additive: old rows read as the default).
_LOG_COLUMNS_ADDED = (
    ("asset_list", "TEXT NOT NULL DEFAULT '[]'"),    # JSON array of the assets delivered
    ("prices", "TEXT"),                 # JSON array beside asset_list; NULL = not recorded (UDP)
    ("sources", "TEXT"),                # JSON array of each body's feed source; NULL likewise
)
_LOG_COLUMNS = ("ts", "subscription", "msg_id", "method", "assets", "attempt", "status",
                "delivered", "latency_ms", "error") + tuple(c for c, _ in _LOG_COLUMNS_ADDED)
_LOG_JSON = frozenset(c for c, _ in _LOG_COLUMNS_ADDED)

_COLUMNS = ("id", "endpoint", "method", "tier", "assets", "secrets", "style", "state", "reason",
            "label", "created_at", "changed_at")


def subscription_row(row: Iterable[Any]) -> dict[str, Any]:
    """A subscription as stored (_COLUMNS, assets and secrets as JSON) -> its dict."""
    out = dict(zip(_COLUMNS, row))
    out["assets"] = json.loads(out["assets"])
    out["secrets"] = json.loads(out["secrets"])
    return out


def log_rows(rows: Iterable[Iterable[Any]]) -> List[dict[str, Any]]:
    """Delivery-log rows as stored (_LOG_COLUMNS) -> dicts, the JSON columns
    as lists (None where not recorded)."""
    out = []
    for r in rows:
        row = dict(zip(_LOG_COLUMNS, r))
        for name in _LOG_JSON:
            if row[name] is not None:
                row[name] = json.loads(row[name])
        out.append(row)
    return out



class DeliveryLogSQL:
    """The delivery log on a SQL store's `webhook_log` table, for the
    SQLite and the PostgreSQL webhook stores alike: they differ in the
    placeholder (`?` or `$N`) and the column that orders rows of one
    timestamp.  The store gives `db.run_many`, `_run` and those two."""

    db: Any
    _ORDER = "rowid"                        # insertion order, for rows of one ts

    @staticmethod
    def _arg(n: int) -> str:
        """The n-th (1-based) statement argument."""
        return "?"

    def _run(self, sql: str, args: Iterable = ()) -> List[Any]:
        raise NotImplementedError

    def _log_args(self, rows: List[tuple]) -> List[tuple]:
        return rows

    def write_log(self, rows: List[tuple]) -> None:
        """Append delivery-log rows (tuples in _LOG_COLUMNS order) in one
        transaction (all or nothing)."""
        places = ", ".join(self._arg(i + 1) for i in range(len(_LOG_COLUMNS)))
        try:
            self.db.run_many(f"INSERT INTO webhook_log ({', '.join(_LOG_COLUMNS)}) "
                             f"VALUES ({places})", self._log_args(rows))
        except KeyStoreError as exc:
            raise WebhookError(f"log write failed: {exc}") from None

    def prune_log(self, older_than_s: float) -> int:
        rows = self._run(f"DELETE FROM webhook_log WHERE ts < {self._arg(1)} RETURNING ts",
                         (time.time() - older_than_s,))
        return len(rows)

    def read_log(self, sub_id: Optional[str] = None, limit: int = 100) -> List[dict[str, Any]]:
        """The newest rows first; asset_list, prices and sources as lists
        (prices and sources None where not recorded)."""
        sql = f"SELECT {', '.join(_LOG_COLUMNS)} FROM webhook_log"
        args: List[Any] = []
        if sub_id:
            sql += f" WHERE subscription = {self._arg(1)}"
            args.append(sub_id)
        return log_rows(self._run(f"{sql} ORDER BY ts DESC, {self._ORDER} DESC "
                                  f"LIMIT {self._arg(len(args) + 1)}", args + [limit]))


class WebhookStore(DeliveryLogSQL, SubscriptionRules, _OnDatabase):
    """Subscriptions and the delivery log in the key store's SQLite file, in
    tables of their own (the `Subscriptions` interface).  Given a path it
    opens a `Database` of its own; given a `Database` it shares it."""

    def __init__(self, db: "Database | str", tiers: Optional[Mapping[str, WebhookTier]] = None,
                 assets: Iterable[str] = (), allow_private: bool = False,
                 timeout_s: float = 5.0) -> None:
        super().__init__(tiers, assets, allow_private)
        self._own_changes = 0
        try:
            self._use_tables(db, timeout_s, _WEBHOOKS_SCHEMA, self._add_log_columns)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None

    def _add_log_columns(self) -> None:
        """The additive migration of an older file's delivery log."""
        for name, decl in _LOG_COLUMNS_ADDED:
            have = {row[1] for row in self.db.run("PRAGMA table_info(webhook_log)")}
            if name in have:
                continue
            try:
                self.db.script(f"ALTER TABLE webhook_log ADD COLUMN {name} {decl}")
            except KeyStoreError:
                # Another process starting at the same time may have added it first.
                have = {row[1] for row in self.db.run("PRAGMA table_info(webhook_log)")}
                if name not in have:
                    raise

    def _run(self, sql: str, args: Iterable = ()) -> List[tuple]:
        try:
            return self.db.run(sql, args)
        except KeyStoreError as exc:
            raise WebhookError(str(exc)) from None

    def version(self) -> tuple:
        """Changes whenever subscriptions change, here or in another process.
        Not PRAGMA data_version: usage flushes to the same file would change
        it ten times a second."""
        row = self._run("SELECT count(*), COALESCE(max(changed_at), 0), "
                        "COALESCE(sum(length(state) + length(secrets)), 0) "
                        "FROM webhook_subscriptions")[0]
        return (*row, self._own_changes)

    # -- subscriptions -------------------------------------------------------------

    def add(self, endpoint: str, tier: str, assets: list[str], style: str = "standard",
            label: str = "", resolve: bool = True) -> dict[str, Any]:
        """Validate and store a subscription; return it (with its first secret)."""
        rec = self.new_record(endpoint, tier, assets, style, label, resolve)
        self._run("INSERT INTO webhook_subscriptions (id, endpoint, method, tier, assets, secrets, "
                  "style, label, created_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (rec["id"], rec["endpoint"], rec["method"], rec["tier"],
                   json.dumps(rec["assets"]), json.dumps(rec["secrets"]), rec["style"],
                   rec["label"], rec["created_at"], rec["changed_at"]))
        self._own_changes += 1
        return self.get(rec["id"])

    def get(self, sub_id: str) -> dict[str, Any]:
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM webhook_subscriptions WHERE id = ?",
                         (sub_id,))
        if not rows:
            raise WebhookError(f"no subscription {sub_id!r}")
        return self._row(rows[0])

    _row = staticmethod(subscription_row)

    def list(self, state: Optional[str] = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM webhook_subscriptions"
        rows = self._run(sql + " WHERE state = ? ORDER BY created_at" if state else
                         sql + " ORDER BY created_at", (state,) if state else ())
        return [self._row(r) for r in rows]

    def set_state(self, sub_id: str, state: str, reason: str = "",
                  only_from: Optional[tuple[str, ...]] = None) -> None:
        """Move a subscription to `state`; `only_from` limits the states it may leave."""
        self.check_state(state)
        sql = "UPDATE webhook_subscriptions SET state = ?, reason = ?, changed_at = ? WHERE id = ?"
        args: list[Any] = [state, reason, time.time(), sub_id]
        if only_from:
            sql += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += list(only_from)
        if not self._run(sql + " RETURNING id", args):
            self.get(sub_id)                # raises when there is no such subscription
            raise WebhookError(f"subscription {sub_id} is not {' or '.join(only_from or ())}")
        self._own_changes += 1

    def remove(self, sub_id: str) -> None:
        if not self._run("DELETE FROM webhook_subscriptions WHERE id = ? RETURNING id", (sub_id,)):
            raise WebhookError(f"no subscription {sub_id!r}")
        self._own_changes += 1

    def rotate_secret(self, sub_id: str) -> str:
        """Add a new secret in front; the newest MAX_SECRETS stay active (each
        delivery is signed with all of them); return the new one."""
        secret, kept = self.rotated(self.get(sub_id)["secrets"])
        self._run("UPDATE webhook_subscriptions SET secrets = ?, changed_at = ? WHERE id = ?",
                  (json.dumps(kept), time.time(), sub_id))
        self._own_changes += 1
        return secret

    def drop_old_secrets(self, sub_id: str) -> None:
        """End a rotation: keep only the newest secret."""
        current = self.get(sub_id)["secrets"]
        self._run("UPDATE webhook_subscriptions SET secrets = ?, changed_at = ? WHERE id = ?",
                  (json.dumps(current[:1]), time.time(), sub_id))
        self._own_changes += 1



_PARAMETERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS live_profile (
    id         INTEGER PRIMARY KEY CHECK (id = 1),     -- one row: the profile in force
    name       TEXT NOT NULL,
    changed_at REAL NOT NULL
);
"""


class ParameterStore(_OnDatabase):
    """The live profile in the key store's SQLite file (the `Parameters`
    interface): a switch on this server outlives its restart."""

    def __init__(self, db: "Database | str", timeout_s: float = 5.0) -> None:
        self._use_tables(db, timeout_s, _PARAMETERS_SCHEMA)

    def profile(self) -> Optional[str]:
        rows = self.db.run("SELECT name FROM live_profile WHERE id = 1")
        return str(rows[0][0]) if rows else None

    def set_profile(self, name: str) -> None:
        self.db.run("INSERT INTO live_profile (id, name, changed_at) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "changed_at = excluded.changed_at", (name, time.time()))
