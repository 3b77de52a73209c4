"""`beastnet keys`: manage API keys in the SQLite key store."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from beastnet.cli._common import EXIT_PASS, EXIT_USAGE


def add_keys_command(sub: Any) -> None:
    p = sub.add_parser("keys", help="manage API keys in the SQLite key store",
                       description="Add, list, revoke and re-tier API keys. A running server "
                                   "picks changes up within a second.")
    p.add_argument("--db", help="key store path (default: the config's keystore, "
                                "else beastnet-keys.db)")
    p.add_argument("--config", help="TOML config file (for keystore and tiers)")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    a = ksub.add_parser("add", help="create a key and print it")
    a.add_argument("--tier", default="public")
    a.add_argument("--label", default="")
    a.add_argument("--key", help="use this key instead of a random one")
    ls = ksub.add_parser("list", help="list keys with their usage this month")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    r = ksub.add_parser("revoke", help="revoke a key")
    r.add_argument("key")
    t = ksub.add_parser("set-tier", help="move a key to another tier")
    t.add_argument("key")
    t.add_argument("tier")
    p.set_defaults(func=cmd_keys)


def _keystore(args: argparse.Namespace) -> Any:
    from beastnet.serve.config import load_config
    from beastnet.serve.keys import DEFAULT_TIERS, KeyStore, Tier

    cfg = load_config(args.config) if args.config else None
    path = args.db or (cfg.keystore if cfg and cfg.keystore else "beastnet-keys.db")
    tiers = dict(DEFAULT_TIERS)
    for name, limits in (cfg.tiers if cfg else {}).items():
        base = tiers.get(name, Tier(name, 0.0, 1, 0))
        tiers[name] = Tier(name, float(limits.get("qps", base.qps)), int(limits.get("burst", base.burst)),
                           int(limits.get("monthly_cap", base.monthly_cap)))
    return KeyStore(path, tiers)


def cmd_keys(args: argparse.Namespace) -> int:
    from beastnet.serve.config import ConfigError
    from beastnet.serve.keys import KeyStoreError

    try:
        with _keystore(args) as store:
            if args.keys_command == "add":
                print(store.add(args.tier, key=args.key, label=args.label))
            elif args.keys_command == "revoke":
                store.revoke(args.key)
            elif args.keys_command == "set-tier":
                store.set_tier(args.key, args.tier)
            else:
                rows = store.list()
                if args.json:
                    import orjson
                    sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
                else:
                    print(f"{'key':<40} {'tier':<10} {'state':<8} {'this month':>12}  label")
                    for row in rows:
                        state = "revoked" if row["revoked"] else "active"
                        print(f"{row['key']:<40} {row['tier']:<10} {state:<8} "
                              f"{row['month_count']:>12,}  {row['label']}")
    except (KeyStoreError, ConfigError) as exc:
        print(f"beastnet keys: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_PASS
