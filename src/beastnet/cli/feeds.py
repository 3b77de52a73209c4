"""`beastnet feeds`: record what the exchanges send, or check them from this host."""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

from beastnet.cli._common import EXIT_FAIL, EXIT_PASS, EXIT_USAGE

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def duration_s(text: str) -> float:
    """'10m' -> 600.0; '90s', '1.5h', '250ms' and plain seconds too."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 1h)")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) * scale


def add_feeds_command(sub: Any) -> None:
    p = sub.add_parser("feeds", help="record the exchanges' messages, or check them",
                       description="The exchange feeds from this host: `check` connects to "
                                   "each exchange once; `record` keeps what they send for "
                                   "`beastnet serve --feed replay --replay FILE`.",
                       epilog="exit status: 0 done (check: every exchange reachable); 1 an "
                              "exchange unreachable (check) or the file cannot be written; "
                              "2 bad flag or config")
    fsub = p.add_subparsers(dest="feeds_command", metavar="ACTION")
    fsub.required = True
    c = fsub.add_parser("check", help="connect to each exchange once: latency, symbols "
                                      "found and missing")
    c.add_argument("--timeout", type=duration_s, default=10.0, metavar="DURATION",
                   help="how long to wait for each exchange's prices (default: 10s)")
    r = fsub.add_parser("record", help="record raw messages with their receive times")
    r.add_argument("--duration", type=duration_s, default=600.0, metavar="DURATION",
                   help="how long to record, e.g. 90s, 10m, 1h (default: 10m)")
    r.add_argument("file", metavar="FILE", help="the JSON-lines file to write")
    for q in (c, r):
        q.add_argument("--config", help="TOML config file of the server, for [feeds] "
                                        "(exchange URLs, the asset map) (default: none, the "
                                        "built-in map)")
        q.add_argument("--exchange", action="append", metavar="NAME",
                       help="only this exchange (repeatable) (default: every exchange the "
                            "asset map names)")
    p.set_defaults(func=cmd_feeds)


def _plan(args: argparse.Namespace) -> tuple[Any, dict]:
    from beastnet.serve.config import load_config
    from beastnet.serve.feeds.exchanges.feed import settings_from
    cfg = load_config(args.config, profile="dev")
    kwargs = settings_from(cfg)
    if args.exchange:
        kwargs["exchanges"] = args.exchange
    return cfg, kwargs


def cmd_feeds(args: argparse.Namespace) -> int:
    from beastnet.errors import BeastnetError
    from beastnet.serve.feeds.exchanges import EXCHANGES
    for name in args.exchange or ():
        if name not in EXCHANGES:
            print(f"beastnet feeds: error: unknown exchange {name!r} (known: "
                  f"{', '.join(EXCHANGES)})", file=sys.stderr)
            return EXIT_USAGE
    try:
        _, kwargs = _plan(args)
    except (BeastnetError, ValueError) as exc:
        print(f"beastnet feeds: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.feeds_command == "check":
        return _check(kwargs, args.timeout)
    return _record(kwargs, args.file, args.duration)


def _check(kwargs: dict, timeout_s: float) -> int:
    from beastnet.serve.feeds.exchanges import EXCHANGES
    from beastnet.serve.feeds.exchanges.check import check_exchanges
    from beastnet.serve.feeds.exchanges.feed import CONNECTION_SETTINGS, exchange_assets
    per = exchange_assets(kwargs["routes"], only=kwargs.get("exchanges"))
    plan = [(EXCHANGES[name], assets, {k: v for k, v in kwargs["settings"].get(name, {}).items()
                                       if k in CONNECTION_SETTINGS})
            for name, assets in per.items()]
    results = asyncio.run(check_exchanges(plan, timeout_s))
    for r in results:
        if r.error:
            print(f"{r.exchange:<10} DOWN  {r.url}: {r.error}")
            continue
        first = "-" if r.first_price_ms is None else f"{r.first_price_ms:.0f} ms"
        line = (f"{r.exchange:<10} ok    connect {r.connect_ms:.0f} ms  first price {first}  "
                f"symbols {len(r.found)}/{len(r.found) + len(r.missing)} found")
        if r.missing:
            line += "  missing: " + " ".join(r.missing)
        print(line)
    return EXIT_PASS if all(r.ok for r in results) else EXIT_FAIL


def _record(kwargs: dict, path: str, duration: float) -> int:
    from beastnet.serve.feeds.exchanges.feed import ExchangeFeed, JSONLRecorder
    try:
        fh = open(path, "wb")
    except OSError as exc:
        print(f"beastnet feeds: error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAIL
    with fh:
        recorder = JSONLRecorder(fh)

        async def run() -> None:
            feed = ExchangeFeed(recorder=recorder, **kwargs)
            end = time.monotonic() + duration

            async def drain() -> None:
                async for _ in feed:
                    pass
            task = asyncio.ensure_future(drain())
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, end - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            for name, health in feed.health().items():
                print(f"{name:<10} {health['state']:<10} {health['messages']:,} messages  "
                      f"{health['rest_polls']:,} REST polls  symbols "
                      f"{health['symbols_seen']}/{health['symbols']}")
        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            pass
        print(f"recorded {recorder.lines:,} messages to {path}")
    return EXIT_PASS
