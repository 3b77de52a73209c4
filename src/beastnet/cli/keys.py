"""`beastnet keys`: manage API keys in the SQLite key store."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from beastnet.cli._common import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, add_store_arguments

#: Characters of a key that `keys list` and the confirmations show: "bk_" and
#: 7 random characters.


def add_keys_command(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage API keys in the key store (SQLite; PostgreSQL "
                                    "with --database)",
                       description="Add, list, revoke and re-tier API keys. A running server "
                                   "picks changes up within a second.",
                       epilog="exit status: 0 done; 1 the change is in the key store but "
                              "--redis could not be reached (run it again to announce it); 2 "
                              "bad flag, unknown key or tier, or an unusable key store")
    add_store_arguments(p, "tiers",
                        "also record the change in this Redis/Valkey and announce it to every "
                        "`beastnet serve --redis` node, which applies it within a second "
                        "(default: none, the local store only)")
    p.add_argument("--database", metavar="URL",
                   help="keep the keys in this PostgreSQL database instead (postgresql://...; "
                        "its schema made by `beastnet db migrate`) (default: none, SQLite)")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    a = ksub.add_parser("add", help="create a key and print it")
    a.add_argument("--tier", default="public",
                   help="public, pro, partner, or a tier the --config file defines "
                        "(default: public)")
    a.add_argument("--label", default="", help="a note kept with the key (default: empty)")
    a.add_argument("--key", help="use this key (16 to 64 printable characters) instead of a "
                                 "random one (default: random)")
    ls = ksub.add_parser("list", help="list keys with their usage this month")
    ls.add_argument("--json", action="store_true",
                    help="JSON instead of a table (default: a table)")
    which = ("the key, its ID (sha256:...) or its prefix as `list` shows it (bk_AbCdEfG…), "
             "when only one key has that prefix")
    r = ksub.add_parser("revoke", help="revoke a key")
    r.add_argument("key", help=which)
    t = ksub.add_parser("set-tier", help="move a key to another tier")
    t.add_argument("key", help=which)
    t.add_argument("tier")
    p.set_defaults(func=cmd_keys)


def _keystore(args: argparse.Namespace) -> Any:
    from beastnet.serve.config import load_config
    from beastnet.serve.keys import KeyStoreError, configured_tiers
    from beastnet.serve.stores import open_stores

    cfg = load_config(args.config) if args.config else None
    tiers = configured_tiers(cfg.tiers if cfg else {})
    if args.database:
        if args.db:
            raise KeyStoreError("--db and --database name two key stores: give one")
        return open_stores(None, tiers=tiers, database=args.database, redis=args.redis,
                           key_changes=bool(args.redis))
    path = args.db or (cfg.keystore if cfg and cfg.keystore else "beastnet-keys.db")
    stores = open_stores(path, tiers=tiers, redis=args.redis, key_changes=bool(args.redis))
    if stores.created:
        print(f"beastnet keys: created key store {os.path.abspath(path)}", file=sys.stderr)
    return stores


def cmd_keys(args: argparse.Namespace) -> int:
    from beastnet.serve.config import ConfigError
    from beastnet.serve.keys import (MIN_SECRET_KEY_CHARS, KeyStoreError, key_prefix,
                                     stored_key_id)

    from beastnet import ClusterError

    if args.redis and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        print(f"beastnet keys: error: --redis must be a redis:// URL, got {args.redis!r}",
              file=sys.stderr)
        return EXIT_USAGE
    change = None
    try:
        with _keystore(args) as stores:
            store = stores.keys
            assert store is not None
            if args.keys_command == "add":
                if args.key is not None and len(args.key) < MIN_SECRET_KEY_CHARS:
                    raise KeyStoreError(f"--key must be at least {MIN_SECRET_KEY_CHARS} "
                                        f"characters: a shorter key can be guessed (leave "
                                        f"--key out for a random one)")
                key = store.add(args.tier, key=args.key, label=args.label)
                print(key)
                print(f"beastnet keys: added a {args.tier} key; it is shown this once, keep it",
                      file=sys.stderr)
                # The nodes hear the key's ID and prefix, never the key.
                change = ("add", stored_key_id(key), args.tier, args.label, key_prefix(key))
            elif args.keys_command == "revoke":
                key_id, shown = _which_key(store, args.key)
                store.revoke(key_id)
                print(f"beastnet keys: revoked {shown}", file=sys.stderr)
                change = ("revoke", key_id, None, "", "")
            elif args.keys_command == "set-tier":
                key_id, shown = _which_key(store, args.key)
                store.set_tier(key_id, args.tier)
                print(f"beastnet keys: {shown} is now {args.tier}", file=sys.stderr)
                change = ("tier", key_id, args.tier, "", "")
            else:
                rows = store.list()
                for row in rows:        # which key: its prefix (the store has no more)
                    row["id"] = row["key"]
                    row["key"] = row.pop("prefix") or key_prefix(row["key"])
                if args.json:
                    import orjson
                    sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
                else:
                    print(f"{'key':<14} {'tier':<10} {'state':<8} {'this month':>12}  label")
                    for row in rows:
                        state = "revoked" if row["revoked"] else "active"
                        print(f"{row['key']:<14} {row['tier']:<10} {state:<8} "
                              f"{row['month_count']:>12,}  {row['label']}")
            if change and stores.key_changes is not None:
                return _announce(stores.key_changes, *change)
    except (KeyStoreError, ConfigError, ClusterError) as exc:
        print(f"beastnet keys: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_PASS


def _which_key(store: Any, given: str) -> tuple[str, str]:
    """(ID, prefix to show) of the key `given` names: the key, its ID, or a
    prefix as listed (ends with "…", which no key contains) that only one
    key has: the store keeps no key, so a listing is all an operator may hold."""
    from beastnet.serve.keys import KeyStoreError, key_prefix, stored_key_id
    if not given.endswith("…"):
        return stored_key_id(given), key_prefix(given)
    ids = [row["key"] for row in store.list() if row["prefix"] == given]
    if len(ids) != 1:
        raise KeyStoreError(f"{len(ids)} keys have the prefix {given}: give the key or its ID"
                            if ids else f"no key has the prefix {given}")
    return ids[0], given


def _announce(announcer: Any, op: str, key: str, tier: Any, label: str, prefix: str) -> int:
    """Record the change in Redis and publish it to the nodes; the change is
    in the local store already, so an unreachable Redis is exit 1."""
    from beastnet import ClusterError
    try:
        nodes = announcer.publish(op, key, tier, label, prefix)
    except ClusterError as exc:
        print(f"beastnet keys: error: {exc} (the change is in the local store; run it again "
              f"to announce it)", file=sys.stderr)
        return EXIT_FAIL
    print(f"beastnet keys: announced to {nodes} node(s)", file=sys.stderr)
    return EXIT_PASS
