"""`beastnet serve`: run the bundled price server."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from beastnet.cli._common import EXIT_FAIL, EXIT_USAGE


SERVE_EPILOG = """\
profiles: production (keys enforced, the default), stress-udp-direct,
          stress-tcp-direct, dev.  Precedence: profile < --config file < flags.
routes:   UDP  [@TAG ]KEY[ APIKEY]            HTTP GET /v1/KEY (X-API-Key or ?api_key=)
          GET /healthz, /metrics, /admin/stats; POST /admin/reset, /admin/profile?name=P
signals:  SIGTERM or SIGINT drain (finish in-flight HTTP, flush usage) and exit 0.
exit status: 0 after a clean drain, 2 for a bad configuration."""


def add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the price server for 150 assets (UDP + HTTP)",
                       description="The bundled price server.", epilog=SERVE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--profile", help="named profile (see below)")
    g = p.add_argument_group("UDP")
    g.add_argument("--udp-host")
    g.add_argument("--udp-port", type=int)
    g.add_argument("--sockets", dest="udp_sockets", type=int, help="UDP sockets/threads (default: CPUs)")
    g.add_argument("--batch", type=int, help="datagrams per recvmmsg (default 32)")
    g.add_argument("--recv-buffer-bytes", type=int)
    g.add_argument("--send-buffer-bytes", type=int)
    g.add_argument("--no-steering", dest="cpu_steering", action="store_const", const=False)
    g = p.add_argument_group("HTTP")
    g.add_argument("--http-host")
    g.add_argument("--http-port", type=int)
    g.add_argument("--http-threads", type=int, help="HTTP worker threads (default: CPUs)")
    g.add_argument("--backlog", type=int)
    g.add_argument("--max-connections", type=int)
    g = p.add_argument_group("keys, feed, admin")
    g.add_argument("--keystore", help="SQLite key store (keys enforced)")
    g.add_argument("--no-keys", action="store_true", help="serve without API keys")
    g.add_argument("--feed", choices=("sim", "replay"))
    g.add_argument("--replay", dest="feed_path", help="replay this JSON-lines/CSV tick file")
    g.add_argument("--replay-speed", type=float, help="1 = recorded pace, 0 = as fast as possible")
    g.add_argument("--feed-rounds-per-s", type=float, help="simulated feed rounds per second")
    g.add_argument("--admin-token", help="token for admin routes (needed off loopback)")
    g.add_argument("--admin-remote", action="store_const", const=True,
                   help="serve admin routes to non-loopback clients (needs --admin-token)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)


class _JSONLogFormatter:
    """One JSON object a line: what log shippers parse without rules."""

    def format(self, record: Any) -> str:
        import orjson
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            import traceback
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return orjson.dumps(entry).decode()


def _setup_logging(level: str) -> None:
    import logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONLogFormatter())  # type: ignore[arg-type]
    root = logging.getLogger("beastnet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


SERVE_FLAGS = ("udp_host", "udp_port", "udp_sockets", "batch", "recv_buffer_bytes",
               "send_buffer_bytes", "cpu_steering", "http_host", "http_port", "http_threads",
               "backlog", "max_connections", "keystore", "feed", "feed_path", "replay_speed",
               "feed_rounds_per_s", "admin_token", "admin_remote", "log_level")


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from beastnet.serve.config import ConfigError, load_config

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS}
    if args.feed_path and not args.feed:
        overrides["feed"] = "replay"
    try:
        cfg = load_config(args.config, args.profile, overrides)
        if args.no_keys:
            cfg.keystore = None
    except ConfigError as exc:
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from beastnet.errors import ServerError
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.service import PriceService

    _setup_logging(cfg.log_level)
    log = logging.getLogger("beastnet.serve")
    service = PriceService(cfg)
    try:
        service.start()
    except (KeyStoreError, ServerError, OSError) as exc:
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    assert service.udp is not None and service.http is not None
    udp_host, udp_port = service.udp.address[:2]
    http_host, http_port = service.http.address[:2]
    log.info("serving %d assets: udp://%s:%d %s, profile %s, keys %s, CPU steering %s",
             len(service.table), udp_host, udp_port, service.http.url, cfg.profile,
             cfg.keystore or "off", service.udp.stats()["steering"]["reason"],
             extra={"fields": {"event": "ready", "udp_host": udp_host, "udp_port": udp_port,
                               "http_host": http_host, "http_port": http_port,
                               "pid": os.getpid()}})
    status = service.serve_forever()
    log.info("stopped cleanly")
    return status
