"""`beastnet serve`: run the bundled price server."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from typing import TYPE_CHECKING, Any, NoReturn

from beastnet.cli._common import EXIT_FAIL, EXIT_USAGE
from beastnet.serve.config import (ADMIN_TOKEN_ENV, REDIS_FALLBACKS, ServeConfig,
                                   describe_profiles)

SERVE_EPILOG = """\
profiles (precedence: built-in defaults < profile < --config file < flags):
{profiles}

routes:   UDP  [@TAG ]KEY[ APIKEY]            HTTP GET /v1/KEY (X-API-Key or ?api_key=)
          WebSocket stream /v1/stream, live page GET / (the HTTP port)
          admin listener (--admin-host/--admin-port): GET /healthz, /metrics,
          /admin/stats, /admin/cluster-stats (--redis); POST /admin/reset,
          /admin/profile?name=P[&scope=cluster]
          (the public port serves /healthz only)
admin:    loopback only unless a token is set; the token comes from
          --admin-token-file, the --config file or {token_env}, and
          requests send it as Authorization: Bearer TOKEN (never ?token=)
try it:   beastnet serve --profile dev
          curl http://127.0.0.1:8080/v1/BTC
          beastnet stats
signals:  SIGTERM or SIGINT drain (finish in-flight HTTP, flush usage) and exit 0;
          SIGHUP reloads --tls-cert/--tls-key (open connections keep the old ones).
config:   every setting, flags or not, with its default: examples/beastnet.toml
          in the source tree; a systemd unit, backups and sizing: docs/deploy.md
exit status:{statuses}"""

SERVE_STATUSES = {
    0: "clean drain after SIGTERM/SIGINT",
    1: "could not start: a port in use or another bind failure, an unusable key store, or "
       "a database out of reach with no key cache to start from",
    2: "bad flag, config file or setting",
}

if TYPE_CHECKING:
    import logging

    from beastnet.serve.service import PriceService

_DEFAULTS = ServeConfig()


def _default(name: str) -> str:
    """How --help shows a setting's built-in default (a profile may change it)."""
    value = getattr(_DEFAULTS, name)
    if value is None:
        return {"udp_sockets": "one per CPU", "http_threads": "one per CPU",
                "keystore": "none; the production profile uses beastnet-keys.db",
                "feed_path": "none", "redis": "none: this process alone",
                "node_id": "HOST:PID"}.get(name, "none")
    if name.endswith("_bytes") and value >= 1 << 20:
        return f"{value} = {value >> 20} MiB"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _add(group: Any, flag: str, dest: str, help_text: str, **kwargs: Any) -> None:
    group.add_argument(flag, dest=dest, help=f"{help_text} (default: {_default(dest)})", **kwargs)


def add_serve_command(sub: Any) -> None:
    profiles = [textwrap.fill(line, 79, initial_indent="  ", subsequent_indent="      ")
                for line in describe_profiles().splitlines()]
    epilog = SERVE_EPILOG.format(
        profiles="\n".join(profiles),
        statuses="".join(f"\n  {code}  {what}" for code, what in SERVE_STATUSES.items()),
        token_env=ADMIN_TOKEN_ENV)
    p = sub.add_parser("serve",
                       help="run the price server for 150 assets (UDP, HTTP, WebSocket stream)",
                       description="The bundled price server: 150 assets over UDP, HTTP and a "
                                   "WebSocket stream with a live page, API keys, usage, "
                                   "metrics and admin routes.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: none)")
    p.add_argument("--profile", metavar="NAME",
                   help="named set of settings: production, stress-udp-direct, "
                        "stress-tcp-direct, dev; each is described below (default: production)")
    g = p.add_argument_group("UDP")
    _add(g, "--udp-host", "udp_host", "address to bind, a name, IPv4 or IPv6", metavar="HOST")
    _add(g, "--udp-port", "udp_port", "port to bind; 0 picks a free one", type=int, metavar="PORT")
    _add(g, "--sockets", "udp_sockets", "UDP sockets, one reader thread each", type=int,
         metavar="N")
    _add(g, "--batch", "batch", "datagrams per recvmmsg/sendmmsg", type=int, metavar="N")
    _add(g, "--recv-buffer-bytes", "recv_buffer_bytes", "SO_RCVBUF asked for each socket",
         type=int, metavar="BYTES")
    _add(g, "--send-buffer-bytes", "send_buffer_bytes", "SO_SNDBUF asked for each socket",
         type=int, metavar="BYTES")
    g.add_argument("--no-steering", dest="cpu_steering", action="store_const", const=False,
                   help="turn off CPU steering (reader i pinned to CPU i, datagrams handed to "
                        "the reader of the CPU that received them) (default: on when there is "
                        "one socket per CPU)")
    g = p.add_argument_group("HTTP")
    _add(g, "--http-host", "http_host", "address to bind, a name, IPv4 or IPv6", metavar="HOST")
    _add(g, "--http-port", "http_port", "port to bind; 0 picks a free one", type=int,
         metavar="PORT")
    _add(g, "--http-threads", "http_threads", "HTTP worker threads", type=int, metavar="N")
    _add(g, "--http-io", "http_io", "the HTTP workers' I/O backend: epoll, uring (io_uring, "
                                    "HTTP, TLS and the WebSocket stream; refused with the "
                                    "reason where the kernel has none) or auto (epoll until "
                                    "io_uring is measured to win)",
         metavar="BACKEND")
    _add(g, "--backlog", "backlog", "listen() backlog of each worker's socket", type=int,
         metavar="N")
    _add(g, "--max-connections", "max_connections", "open connections accepted at once",
         type=int, metavar="N")
    _add(g, "--tls-cert", "tls_cert", "PEM certificate chain: TLS (https://, wss://) on the HTTP "
                                      "port; needs --tls-key", metavar="PATH")
    _add(g, "--tls-key", "tls_key", "PEM private key of --tls-cert", metavar="PATH")
    _add(g, "--stream-compress-min-bytes", "stream_compress_min_bytes",
         "WebSocket stream: a price body this long or longer is deflated once per publication "
         "for clients that offer permessage-deflate; 0 = never negotiated", type=int,
         metavar="BYTES")
    g = p.add_argument_group("both")
    g.add_argument("--share-ports", dest="share_ports", action="store_const", const=True,
                   help="join the SO_REUSEPORT group of a server already bound to these ports "
                        "(it then gets part of the traffic) instead of refusing to start "
                        "(default: refuse)")
    g = p.add_argument_group("keys, feed, admin")
    _add(g, "--keystore", "keystore", "SQLite key store; keys are enforced when set (created "
                                      "if missing)", metavar="PATH")
    _add(g, "--database", "database", "keep keys, webhook subscriptions and the live profile in "
                                      "this PostgreSQL database, shared by every node on it "
                                      "(postgresql://USER[:PASSWORD]@HOST[:PORT]/DB; run "
                                      "`beastnet db migrate` first; docs/postgres.md)",
         metavar="URL")
    _add(g, "--key-cache", "key_cache", "with --database: the file the keys last read are "
                                        "cached in, to start from while the database is down "
                                        "(\"\": none)", metavar="PATH")
    g.add_argument("--no-keys", action="store_true",
                   help="serve without API keys, whatever the profile says (default: off)")
    _add(g, "--feed", "feed", "price feed: exchanges (the six exchanges' public streams; "
                              "the production profile's), sim (a random walk from real "
                              "prices) or replay (a file)",
         choices=("exchanges", "sim", "replay"))
    _add(g, "--replay", "feed_path", "replay this JSON-lines or CSV tick file, or a `beastnet "
                                     "feeds record` file through the exchange adapters "
                                     "(implies --feed replay)", metavar="FILE")
    _add(g, "--replay-speed", "replay_speed", "1 = recorded pace, 0 = as fast as possible",
         type=float, metavar="X")
    _add(g, "--feed-rounds-per-s", "feed_rounds_per_s",
         "simulated feed: every price re-published this many times a second", type=float,
         metavar="N")
    g = p.add_argument_group("admin listener (/admin/*, /metrics, /healthz)")
    _add(g, "--admin-host", "admin_host", "address of the admin listener; anything but loopback "
                                          "needs a token", metavar="HOST")
    _add(g, "--admin-port", "admin_port", "port of the admin listener; 0 picks a free one",
         type=int, metavar="PORT")
    _add(g, "--admin-token-file", "admin_token_file",
         f"file holding the admin token, 16+ characters (or set {ADMIN_TOKEN_ENV}; a token on "
         f"the command line would show in ps)", metavar="FILE")
    _add(g, "--log-level", "log_level", "JSON log lines on stderr at this level and above",
         choices=("debug", "info", "warning", "error"))
    g = p.add_argument_group("many nodes on one Redis/Valkey (docs/cluster.md)")
    _add(g, "--redis", "redis", "share stats, rate limits, monthly caps, key changes and "
                                "profiles with the other nodes on this Redis or Valkey",
         metavar="URL")
    _add(g, "--node-id", "node_id", "this node's name in cluster stats", metavar="ID")
    _add(g, "--snapshot-interval", "snapshot_interval_s",
         "seconds between this node's snapshots in Redis", type=float, metavar="S")
    _add(g, "--snapshot-ttl", "snapshot_ttl_s",
         "seconds a snapshot lives unless renewed (a node silent this long is missing)",
         type=float, metavar="S")
    _add(g, "--redis-fallback", "redis_fallback",
         "while Redis is unreachable: local-share (each node allows limit/N, N = the nodes "
         "seen last) or fail-closed (rate-limited keys are refused)",
         choices=REDIS_FALLBACKS)
    g = p.add_argument_group("webhook push (beastnet webhooks manages the subscriptions)")
    g.add_argument("--webhooks", dest="webhooks", action="store_const", const=True,
                   help="push the keystore's webhook subscriptions from this process "
                        "(default: off)")
    g.add_argument("--webhooks-allow-private", dest="webhooks_allow_private",
                   action="store_const", const=True,
                   help="allow endpoints on loopback and private addresses, for tests and "
                        "private deployments (default: refused)")
    _add(g, "--webhook-ca-file", "webhook_ca_file", "CA bundle for HTTPS endpoints "
                                                    "(the system's when none)", metavar="FILE")
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    p.set_defaults(func=cmd_serve, flag_names=flags)


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
               "http_io", "backlog", "max_connections", "share_ports", "keystore", "feed",
               "feed_path", "replay_speed", "feed_rounds_per_s", "admin_host", "admin_port",
               "admin_token_file", "log_level", "redis", "node_id", "snapshot_interval_s",
               "snapshot_ttl_s", "redis_fallback", "tls_cert", "tls_key",
               "stream_compress_min_bytes", "database", "key_cache")


WEBHOOK_FLAGS = ("webhooks", "webhooks_allow_private", "webhook_ca_file")


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets as URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from beastnet.serve.config import ConfigError, load_config

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS + WEBHOOK_FLAGS}
    if args.feed_path and not args.feed:
        overrides["feed"] = "replay"
    try:
        cfg = load_config(args.config, args.profile, overrides, flags=args.flag_names)
        if args.no_keys:
            cfg.keystore = cfg.database = None
            if cfg.webhooks:
                raise ConfigError("--webhooks needs the key store (the subscriptions live "
                                  "there): drop --no-keys")
    except ConfigError as exc:
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from beastnet.serve.service import PriceService

    _setup_logging(cfg.log_level)
    log = logging.getLogger("beastnet.serve")
    # SIGTERM and SIGINT stay blocked from here on, in this thread and in every
    # thread the service starts (they inherit the mask), until serve_forever()
    # waits for them: one that arrives during start-up or just after the ready
    # line is then a clean drain, never the default action killing the process.
    # SIGHUP too: its default action would kill the server it asks to reload.
    drain_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, drain_signals)
    try:
        return _serve(PriceService(cfg), cfg, log)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _serve(service: PriceService, cfg: ServeConfig, log: logging.Logger) -> int:
    from beastnet import ClusterError, ServerError, TLSConfigError
    from beastnet.serve.cluster import ClusterConfigError
    from beastnet.serve.keys import KeyStoreError
    from beastnet.serve.service import PortInUseError
    from beastnet.serve.webhooks import WebhookError

    try:
        service.start()
    except PortInUseError as exc:
        flags = " and ".join(f"--{what.lower()}-port" for what in exc.protocols)
        print(f"beastnet serve: error: {exc}; stop what holds them, change {flags} "
              f"(a second server on this host needs ports of its own: docs/cluster.md), "
              f"or pass --share-ports to join it and split the traffic", file=sys.stderr)
        return EXIT_FAIL
    except ClusterConfigError as exc:   # Redis refused our password or a command
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyStoreError, ServerError, OSError, ClusterError, WebhookError) as exc:
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except TLSConfigError as exc:       # a certificate or key OpenSSL cannot use
        print(f"beastnet serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    assert service.udp is not None and service.http is not None and service.admin is not None
    udp_host, udp_port = service.udp.address[:2]
    http_host, http_port = service.http.address[:2]
    admin_host, admin_port = service.admin.address[:2]
    keys = "off"
    if cfg.keystore or cfg.database:
        store = service.stores.keys.path if service.stores.keys is not None else cfg.keystore
        keys = f"{store}, {service.active_keys} active"
        if service.active_keys == 0:
            where = "--database URL" if cfg.database else f"--db {cfg.keystore}"
            hint = (f"no API keys yet, so every request is refused: add one with "
                    f"`beastnet keys {where} add`, or try without keys with "
                    f"`beastnet serve --profile dev`")
            keys += f" ({hint})"
            log.warning(hint, extra={"fields": {"event": "no_keys"}})
    admin = "token required" if cfg.admin_token else "loopback, no token"
    http_base = service.http.url.rstrip("/")
    extras = []
    if cfg.stream:
        extras.append("stream ws" + http_base[len("http"):] + cfg.stream_path)
    if cfg.dashboard:
        extras.append(f"live page {http_base}/")
    log.info("serving %d assets: udp://%s %s%s, admin %s (%s), profile %s, keys %s, "
             "CPU steering %s",
             len(service.publisher.assets), host_port(udp_host, udp_port), service.http.url,
             "".join(", " + e for e in extras), service.admin.url, admin, cfg.profile, keys,
             service.udp.stats()["steering"]["reason"],
             extra={"fields": {"event": "ready", "udp_host": udp_host, "udp_port": udp_port,
                               "http_host": http_host, "http_port": http_port,
                               "admin_host": admin_host, "admin_port": admin_port,
                               "pid": os.getpid()}})
    from beastnet.serve.systemd import notify

    # Type=notify: systemd starts what depends on us only now, with prices in the table.
    notify("READY=1", f"STATUS=serving {len(service.publisher.assets)} assets, "
                      f"profile {cfg.profile}, "
                      f"keys {'on' if cfg.keystore or cfg.database else 'off'}",
           f"MAINPID={os.getpid()}")
    status = service.serve_forever()
    log.info("stopped cleanly")
    _exit_now(status)


def _exit_now(status: int) -> NoReturn:
    """End the process without the interpreter's teardown.  Everything that
    must outlive it is written by now: usage flushed, the key store closed,
    the native threads joined; logs and stdio are flushed here.  Teardown
    (freeing every object, unloading every module) cost 16-22 ms of CPU and
    20-140 ms of wall time on a busy 2-core machine between "stopped
    cleanly" and exit; skipping it leaves about 2 ms.  The serve command is
    the process's last act, so nothing in-process is left to return to."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe or stream: nothing left to say
            pass
    os._exit(status)
