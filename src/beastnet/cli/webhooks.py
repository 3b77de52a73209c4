"""`beastnet webhooks`: manage associates' webhook subscriptions in the key store."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from beastnet.cli._common import EXIT_PASS, EXIT_USAGE, add_store_arguments


def add_webhooks_command(sub: Any) -> None:
    p = sub.add_parser("webhooks", help="manage webhook subscriptions (UDP and signed HTTPS push)",
                       description="Add, list, pause, resume, remove webhook subscriptions, rotate "
                                   "their secrets and read the delivery log. A server running "
                                   "with --webhooks picks changes up within a second.",
                       epilog="tiers (interval, max assets): starter 60 s/9, standard 15 s/30, "
                              "professional 6 s/75, enterprise 3 s/150; [webhook_tiers.NAME] in "
                              "the config file changes or adds tiers. Webhook tiers belong to "
                              "the subscription and are separate from API-key tiers (public, "
                              "pro, partner): a subscription needs no API key, and its "
                              "deliveries count against no key's limits or usage. Endpoints "
                              "on loopback or private addresses are refused unless "
                              "--allow-private (or webhooks_allow_private in the config). "
                              "With --redis (or the config's redis) the subscriptions are the "
                              "cluster's, in Redis; with --database, in PostgreSQL. "
                              "exit status: 0 done; 2 bad flag or input, unknown subscription, "
                              "tier or asset, a refused endpoint, an unusable key store, or "
                              "Redis unreachable")
    add_store_arguments(p, "webhook_tiers",
                        "manage the subscriptions a cluster shares in Redis (serve --redis "
                        "--webhooks); `log` still reads this node's key store (--db) "
                        "(default: the config's redis, else the key store alone)")
    p.add_argument("--database", metavar="URL",
                   help="the subscriptions and delivery log of this PostgreSQL database "
                        "(serve --database; postgresql://...) instead of a key store file "
                        "(default: the config's database, else the key store)")
    p.add_argument("--allow-private", action="store_true", default=None,
                   help="accept endpoints on loopback and private addresses (default: refuse)")
    wsub = p.add_subparsers(dest="webhooks_command", metavar="ACTION")
    wsub.required = True
    a = wsub.add_parser("add", help="add a subscription; prints its id and secret")
    a.add_argument("endpoint", help="https://host[:port]/path, or udp://host:port")
    a.add_argument("--tier", default="starter",
                   help="a webhook tier (not an API-key tier): starter, standard, "
                        "professional, enterprise, or one the config adds (default: starter)")
    a.add_argument("--assets", required=True,
                   help="comma-separated asset keys, at most the tier's maximum (required)")
    a.add_argument("--style", default="standard", choices=("standard", "compat"),
                   help="signature headers: standard (webhook-id, webhook-timestamp, "
                        "webhook-signature, the Standard Webhooks specification) or compat "
                        "(those plus X-Webhook-Signature: sha256=<hex HMAC of the body>, for "
                        "receivers that check only that older header) (default: standard)")
    a.add_argument("--label", default="", help="a note kept with it (default: empty)")
    ls = wsub.add_parser("list", help="list subscriptions (secrets are not shown)")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table (default: a table)")
    for name, text in (("pause", "stop pushing to a subscription"),
                       ("resume", "push again to a paused or disabled subscription"),
                       ("remove", "delete a subscription")):
        s = wsub.add_parser(name, help=text)
        s.add_argument("id")
    r = wsub.add_parser("rotate-secret", help="add a new secret; deliveries are signed with it "
                                              "and the previous ones until --drop-old")
    r.add_argument("id")
    r.add_argument("--drop-old", action="store_true",
                   help="end the rotation instead: keep only the newest secret (default: off)")
    lg = wsub.add_parser("log", help="the latest delivery attempts, newest first")
    lg.add_argument("--id", help="only this subscription (default: all)")
    lg.add_argument("--limit", type=int, default=50, help="rows to show, 1..10000 (default: 50)")
    lg.add_argument("--json", action="store_true", help="JSON instead of a table (default: a table)")
    p.set_defaults(func=cmd_webhooks)


def open_store(args: argparse.Namespace) -> Any:
    from beastnet.serve.assets import ASSETS
    from beastnet.serve.config import load_config
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.stores import open_stores
    from beastnet.serve.webhooks import webhook_tiers

    cfg = load_config(args.config) if args.config else None
    path = args.db or (cfg.keystore if cfg and cfg.keystore else "beastnet-keys.db")
    allow = args.allow_private if args.allow_private is not None else \
        bool(cfg and cfg.webhooks_allow_private)
    database = args.database or (cfg.database if cfg else None)
    if database:
        if args.db:
            raise KeyStoreError("--db and --database name two stores: give one")
        return open_stores(None, keys=False, webhooks=True, database=database,
                           webhook_tiers=webhook_tiers(cfg.webhook_tiers if cfg else {}),
                           assets=ASSETS, allow_private=allow)
    # With Redis the log is each node's own: only `log` opens the key store.
    return open_stores(path, keys=False, webhooks=True,
                       webhook_tiers=webhook_tiers(cfg.webhook_tiers if cfg else {}),
                       assets=ASSETS, allow_private=allow,
                       redis=args.redis or (cfg.redis if cfg else None),
                       webhook_log=args.webhooks_command == "log")


def delivered_text(row: dict[str, Any], width: int = 48) -> str:
    """A log row's assets as `BTC=0.0743@sim-a ETH=...` (UDP rows: names
    only, their prices are not recorded), cut to `width` with an ellipsis."""
    names = row.get("asset_list") or []
    prices = row.get("prices") or [None] * len(names)
    sources = row.get("sources") or [None] * len(names)
    text = " ".join(name + (f"={price:g}" if isinstance(price, (int, float)) else "")
                    + (f"@{source}" if source else "")
                    for name, price, source in zip(names, prices, sources))
    return text if len(text) <= width else text[:width - 1] + "…"


def cmd_webhooks(args: argparse.Namespace) -> int:
    import orjson

    from beastnet import ClusterError
    from beastnet.serve.config import ConfigError
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.webhooks import WebhookError, public_view

    try:
        with open_store(args) as stores:
            store = stores.webhooks
            action = args.webhooks_command
            if action == "add":
                assets = [a.strip() for a in args.assets.split(",")]
                if any(not a for a in assets):
                    raise WebhookError("--assets: an empty asset name (a stray comma?)")
                sub = store.add(args.endpoint, args.tier, assets, style=args.style,
                                label=args.label)
                print(f"{sub['id']} {sub['secrets'][0]}")
            elif action == "list":
                rows = [public_view(s) for s in store.list()]
                if args.json:
                    sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
                else:
                    print(f"{'id':<22} {'method':<6} {'tier':<12} {'assets':>6} {'state':<9} "
                          f"endpoint")
                    for s in rows:
                        print(f"{s['id']:<22} {s['method']:<6} {s['tier']:<12} "
                              f"{len(s['assets']):>6} {s['state']:<9} {s['endpoint']}"
                              + (f"  ({s['reason']})" if s["reason"] else ""))
            elif action == "pause":
                store.set_state(args.id, "paused", only_from=("active",))
            elif action == "resume":
                store.set_state(args.id, "active", only_from=("paused", "disabled"))
            elif action == "remove":
                store.remove(args.id)
            elif action == "rotate-secret":
                if args.drop_old:
                    store.drop_old_secrets(args.id)
                else:
                    print(store.rotate_secret(args.id))
            else:
                if not 1 <= args.limit <= 10_000:
                    raise WebhookError(f"--limit must be 1..10000, got {args.limit}")
                log_rows = store.read_log(args.id, args.limit)
                if args.json:
                    sys.stdout.write(orjson.dumps(log_rows).decode() + "\n")
                else:
                    print(f"{'time (UTC)':<23} {'subscription':<22} {'method':<6} {'try':>3} "
                          f"{'status':>6} {'ok':<3} {'ms':>8} {'assets':>6}  "
                          f"{'asset=price@source':<48}  error")
                    for r in log_rows:
                        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
                        when += f".{int(r['ts'] * 1000) % 1000:03d}"
                        print(f"{when:<23} {r['subscription']:<22} {r['method']:<6} "
                              f"{r['attempt']:>3} {r['status']:>6} "
                              f"{'yes' if r['delivered'] else 'no':<3} {r['latency_ms']:>8.1f} "
                              f"{r['assets']:>6}  {delivered_text(r):<48}  {r['error']}")
    except (WebhookError, ConfigError, ClusterError, KeyStoreError) as exc:
        print(f"beastnet webhooks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_PASS
