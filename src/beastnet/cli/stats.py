"""`beastnet stats`: show a running server's counters."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from beastnet.cli._common import EXIT_FAIL, EXIT_PASS, EXIT_USAGE
from beastnet.serve.config import ADMIN_TOKEN_ENV


def add_stats_command(sub: Any) -> None:
    p = sub.add_parser("stats", help="show a running server's counters",
                       description="Reads /admin/stats from a running `beastnet serve`, on "
                                   "its admin listener.",
                       epilog="exit status: 0 shown (or --watch ended by Ctrl-C or a closed "
                              "pipe); 1 the server could not be reached or refused (e.g. 401: "
                              "wrong or missing token), or with --cluster the server cannot "
                              "reach Redis (503 unavailable); 2 bad flag or unreadable "
                              "--token-file")
    p.add_argument("--url", default="http://127.0.0.1:8081",
                   help="the server's admin listener, its --admin-host and --admin-port "
                        "(default: %(default)s)")
    p.add_argument("--token", help="the server's admin token, when it has one; --token-file or "
                                   f"{ADMIN_TOKEN_ENV} keep it out of ps (default: none)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the admin token (default: none)")
    p.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECONDS",
                   help="refresh every SECONDS (1 when no value is given) until Ctrl-C "
                        "(default: print once)")
    p.add_argument("--json", action="store_true", help="print the raw JSON (default: a table)")
    p.add_argument("--cluster", action="store_true",
                   help="every node sharing the server's Redis (/admin/cluster-stats; the "
                        "server runs with --redis): totals, a row per node, red flags "
                        "(default: this server only)")
    p.set_defaults(func=cmd_stats)


def _fetch_stats(url: str, token: Optional[str], path: str = "/admin/stats") -> dict:
    import urllib.request

    import orjson
    req = urllib.request.Request(url.rstrip("/") + path)
    if token:
        # A header, never the query string: query strings end up in logs.
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return orjson.loads(resp.read())


def _refused(totals: dict) -> str:
    """Requests the API-key check turned away, for one protocol."""
    return (f"     refused: unauthorized {totals.get('unauthorized', 0):,}  "
            f"rate limited {totals.get('rate_limited', 0):,}  "
            f"over quota {totals.get('over_quota', 0):,}")


def format_stats(stats: dict) -> str:
    lines = [f"uptime {stats['uptime_s']:.0f} s   profile {stats['profile']}   "
             f"assets {stats['assets']}"]
    udp = stats.get("udp")
    if udp:
        t, r = udp["totals"], udp.get("rates_per_s", {})
        lines.append(f"UDP  {r.get('rx_packets', 0):>12,.0f} req/s  {t.get('rx_packets', 0):>14,} total  "
                     f"hit {udp['cache_hit_pct'] if udp['cache_hit_pct'] is not None else '-'} %  "
                     f"kernel drops {t.get('kernel_drops', 0):,}  queue drops {t.get('queue_drops', 0):,}  "
                     f"batch fill {udp['avg_batch_fill']:.1f}  steering {udp['steering'].get('reason')}")
        for i, sock in enumerate(udp.get("per_socket", [])):
            lines.append(f"     socket {i}: rx {sock['rx_packets']:,}  tx {sock['tx_packets']:,}  "
                         f"bad {sock['bad_requests']:,}  send errors {sock['send_errors']:,}")
        lines.append(_refused(t))
    http = stats.get("http")
    if http:
        t, r = http["totals"], http.get("rates_per_s", {})
        lines.append(f"HTTP {r.get('requests', 0):>12,.0f} req/s  {t.get('requests', 0):>14,} total  "
                     f"active {t.get('active', 0):,}  accepted {t.get('accepted', 0):,}  "
                     f"parse errors {t.get('parse_errors', 0):,}  timeouts {t.get('timeouts', 0):,}")
        lines.append(_refused(t))
    feed = stats.get("feed", {})
    for name, src in sorted(feed.get("sources", {}).items()):
        state = "STALE" if src["stale"] else "ok"
        lines.append(f"feed {name:<12} {state:<5} ticks {src['ticks']:,}  last {src['last_tick_age_s']} s ago  "
                     f"serving {src['assets_active']} assets")
    for name, ex in sorted(feed.get("exchanges", {}).items()):
        age = ex.get("message_age_s")
        lines.append(f"exchange {name:<10} {ex['state']:<10} {ex['quote']:<4} "
                     f"msg age {'-' if age is None else f'{age:.1f} s'}  "
                     f"{ex['msgs_per_s']:,.1f} msg/s  reconnects {ex['reconnects']:,}  "
                     f"REST polls {ex['rest_polls']:,} ({ex['rest_errors']:,} failed)  "
                     f"symbols {ex['symbols_seen']}/{ex['symbols']}")
    if feed:
        refused = feed.get("refused", 0) + feed.get("refused_jumps", 0)
        lines.append(f"feed fallbacks {feed.get('fallbacks', 0):,}  "
                     f"stale assets {len(feed.get('assets_stale', []))}  refused {refused:,}")
    keys = stats.get("api_keys")
    if keys:
        lines.append(f"keys {keys['keys']:,}  admitted {keys['admitted']:,}  rate limited {keys['rate_limited']:,}  "
                     f"over quota {keys['over_quota']:,}  flushes {keys['flushes']:,} ({keys['flush_errors']} failed)")
    return "\n".join(lines)


# The tuning loop's red flags, as the cluster rows show them.
_FLAG_LABELS = {"udp_drop_pct": "UDP drop % > 1", "background_drop_pct": "background drop % > 5",
                "usage_flush_errors": "flush errors"}


def _cell(value: Any, red: bool, color: bool) -> str:
    text = "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
    if not red:
        return text
    return f"\x1b[1;31m{text}!\x1b[0m" if color else f"{text}!"


def format_cluster(stats: dict, color: bool = False) -> str:
    """/admin/cluster-stats as a table: totals, then a row per node; values
    past a red flag end in ! (and are red on a terminal)."""
    if "error" in stats:
        return f"cluster: {stats['error']}: {stats.get('detail', '')}"
    n, t, r, f = stats["nodes"], stats["totals"], stats["rates_per_s"], stats["flags"]
    lines = [f"cluster: {n['live']} live, {n['stale']} stale, {n['missing']} missing   "
             f"read in {stats.get('read_ms', 0)} ms by {stats.get('reader')}",
             f"total  UDP {r.get('udp_rx_packets', 0):>10,.0f} req/s  HTTP "
             f"{r.get('http_requests', 0):>10,.0f} req/s  rate limited "
             f"{t.get('udp_rate_limited', 0) + t.get('http_rate_limited', 0):,}  "
             f"UDP drop % {_cell(f['udp_drop_pct'], 'udp_drop_pct' in f['red'], color)}  "
             f"background drop % "
             f"{_cell(f['background_drop_pct'], 'background_drop_pct' in f['red'], color)}  "
             f"flush errors "
             f"{_cell(f['usage_flush_errors'], 'usage_flush_errors' in f['red'], color)}",
             f"{'node':<24} {'state':<8} {'age s':>6} {'profile':<18} {'mode':<12} "
             f"{'UDP req/s':>10} {'HTTP req/s':>10} {'UDP drop%':>9} {'bg drop%':>9} "
             f"{'flush err':>9}"]
    for row in stats["per_node"]:
        if row["state"] == "missing":
            lines.append(f"{row['node']:<24} {_cell('MISSING', True, color)}")
            continue
        rates, flags = row.get("rates_per_s", {}), row["flags"]
        state = _cell(row["state"], row["state"] != "live", color)
        lines.append(
            f"{row['node']:<24} {state:<8} {row.get('age_s') or 0:>6.1f} "
            f"{row.get('profile', '-'):<18} {row.get('mode', '-'):<12} "
            f"{rates.get('udp_rx_packets', 0):>10,.0f} {rates.get('http_requests', 0):>10,.0f} "
            f"{_cell(flags['udp_drop_pct'], 'udp_drop_pct' in flags['red'], color):>9} "
            f"{_cell(flags['background_drop_pct'], 'background_drop_pct' in flags['red'], color):>9} "
            f"{_cell(flags['usage_flush_errors'], 'usage_flush_errors' in flags['red'], color):>9}")
    red = sorted({flag for row in stats["per_node"] for flag in row.get("flags", {}).get("red", [])}
                 | set(f["red"]))
    lines.append("red flags: " + (", ".join(_FLAG_LABELS[x] for x in red) if red else "none"))
    return "\n".join(lines)


def _why(exc: BaseException) -> str:
    """A fetch failure in a few words: the HTTP status, or the socket error."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        hint = " (wrong or missing token?)" if exc.code in (401, 403) else ""
        return f"HTTP {exc.code} {exc.reason}{hint}{_detail(exc)}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def _detail(exc: Any) -> str:
    """The error body's detail sentence (`error_answer`), as ": detail"."""
    import orjson
    try:
        detail = orjson.loads(exc.read()).get("detail")
    except (OSError, ValueError, AttributeError):
        return ""
    return f": {detail}" if isinstance(detail, str) else ""


def _token(args: argparse.Namespace) -> Optional[str]:
    """The admin token from --token, --token-file or the environment, in that
    order."""
    import os

    from beastnet.serve.config import read_token_file
    if args.token:
        return str(args.token)
    if args.token_file:
        return read_token_file(args.token_file, "--token-file")
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None


def cmd_stats(args: argparse.Namespace) -> int:
    import time
    import urllib.error
    from urllib.parse import urlsplit

    import orjson

    from beastnet.serve.config import ConfigError
    url = urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        print(f"beastnet stats: error: --url must look like http://HOST:PORT, got {args.url!r}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.watch is not None and args.watch <= 0:
        print(f"beastnet stats: error: --watch must be > 0 seconds, got {args.watch:g}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        token = _token(args)
    except ConfigError as exc:
        print(f"beastnet stats: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Ctrl-C is how a watch ends: wherever it lands (a fetch, a print, the
    # sleep), the watch ends cleanly.
    try:
        while True:
            try:
                stats = _fetch_stats(args.url, token,
                                     "/admin/cluster-stats" if args.cluster else "/admin/stats")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                print(f"beastnet stats: error: {args.url}: {_why(exc)}", file=sys.stderr)
                return EXIT_FAIL
            if args.json:
                sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(format_cluster(stats, sys.stdout.isatty()) if args.cluster
                      else format_stats(stats), flush=True)
            if not args.watch:
                return EXIT_PASS
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if args.watch:
            return EXIT_PASS
        raise
