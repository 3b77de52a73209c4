"""Where `beastnet serve` and every CLI command get their stores: one
`open_stores(...)`, which picks the implementations from the settings.

`serve/stores/base.py` has the interfaces, `sqlite.py` and `redis.py` the
implementations.  A new backend is one file here and one branch below.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from beastnet.serve.keys import KeyStoreError
from beastnet.serve.stores.base import Keys, Parameters, Subscriptions, Usage

__all__ = ["Keys", "Parameters", "Stores", "Subscriptions", "Usage", "open_stores"]


@dataclass
class Stores:
    """What `open_stores` opened; None where not asked for.  close() closes
    them all (the shared database last)."""

    keys: Optional[Keys] = None
    webhooks: Optional[Subscriptions] = None
    parameters: Optional[Parameters] = None     #: the live profile (the cluster's with Redis)
    key_changes: Any = None             #: a RedisKeyChanges: keys' changes told to a cluster
    created: bool = False               #: the key store file did not exist before
    _db: Any = None

    def close(self) -> None:
        for store in (self.key_changes, self.parameters, self.webhooks, self.keys, self._db):
            if store is not None:
                store.close()
        self.key_changes = self.parameters = self.keys = self.webhooks = self._db = None

    def __enter__(self) -> "Stores":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stores(path: Optional[str], *, tiers: Optional[Mapping[str, Any]] = None,
                keys: bool = True, webhooks: bool = False,
                webhook_tiers: Optional[Mapping[str, Any]] = None, assets: Any = (),
                allow_private: bool = False, redis: Optional[str] = None,
                webhook_log: bool = True, key_changes: bool = False,
                database: Optional[str] = None, parameters: bool = False,
                database_may_be_down: bool = False) -> Stores:
    """Open the stores asked for.  `path`: the SQLite key store file (None:
    no local file; then only Redis subscriptions, without a log).  `redis`:
    subscriptions shared in that Redis, the delivery log still in `path`
    (`webhook_log=False`: not even that); with `key_changes` also the
    writer of the cluster's shared key records.  `database`: a postgresql://
    URL; keys, webhook subscriptions with their delivery log, and the live
    profile all live there instead (every node on it shares them; `path` is
    not used); `database_may_be_down`: a database out of reach is not an
    error yet (`serve` then starts from its key cache, apikeys.py).
    `parameters`: the live profile, the cluster's shared one
    with `redis`, else in `path`.  On failure what was opened is
    closed and the error (KeyStoreError, WebhookError, ClusterError) raised."""
    from beastnet.serve.stores.sqlite import Database, KeyStore, ParameterStore, WebhookStore
    out = Stores(created=path is not None and database is None and not os.path.exists(path))
    try:
        if key_changes and redis is not None:
            from beastnet.serve.stores.redis import RedisKeyChanges
            out.key_changes = RedisKeyChanges(redis)    # reads the URL; connects on first use
        if database is not None:
            _open_postgres(out, database, tiers, keys, webhooks, webhook_tiers, assets,
                           allow_private, parameters, redis, database_may_be_down)
            return out
        local_hooks = webhooks and path is not None and (redis is None or webhook_log)
        local_parameters = parameters and redis is None
        if path is not None and (keys or local_hooks or local_parameters):
            out._db = Database(path)
        if keys and out._db is not None:
            out.keys = KeyStore(out._db, tiers)
        if parameters and redis is not None:
            from beastnet.serve.stores.redis import RedisParameters
            out.parameters = RedisParameters(redis)
        elif local_parameters and out._db is not None:
            out.parameters = ParameterStore(out._db)
        if not webhooks:
            return out
        local = WebhookStore(out._db, webhook_tiers, assets, allow_private) \
            if local_hooks else None
        if redis is None:
            out.webhooks = local
        else:
            from beastnet.serve.stores.redis import RedisWebhookStore
            out.webhooks = RedisWebhookStore(redis, webhook_tiers, assets, allow_private,
                                             log_store=local)
    except BaseException:
        out.close()
        raise
    return out


def _open_postgres(out: Stores, dsn: str, tiers: Optional[Mapping[str, Any]], keys: bool,
                   webhooks: bool, webhook_tiers: Optional[Mapping[str, Any]], assets: Any,
                   allow_private: bool, parameters: bool, redis: Optional[str],
                   may_be_down: bool) -> None:
    """open_stores on PostgreSQL: one database (one pool) under every store."""
    from beastnet.serve.stores.postgres import (PostgresDatabase, PostgresKeyStore,
                                                PostgresParameterStore, PostgresWebhookStore)
    try:
        out._db = PostgresDatabase(dsn, wait_for_it=may_be_down)
    except KeyStoreError as exc:
        if keys:
            raise
        from beastnet.serve.webhooks import WebhookError
        raise WebhookError(str(exc)) from None
    if keys:
        out.keys = PostgresKeyStore(out._db, tiers)
    if webhooks:
        out.webhooks = PostgresWebhookStore(out._db, webhook_tiers, assets, allow_private)
    if parameters and redis is not None:       # the cluster's shared profile, as without it
        from beastnet.serve.stores.redis import RedisParameters
        out.parameters = RedisParameters(redis)
    elif parameters:
        out.parameters = PostgresParameterStore(out._db)
