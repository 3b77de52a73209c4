"""Configuration of `beastnet serve`: defaults < profile < TOML file < flags.

A profile is a named set of parameters (`production`, `stress-udp-direct`,
`stress-tcp-direct`, `dev`).  Every value is validated here, so a bad one
stops the server before it binds anything, with one clear line.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional

from beastnet import BeastnetError, HTTPServer

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ADMIN_TOKEN_ENV", "ConfigError", "PROFILES", "PROFILE_PURPOSES", "LIVE_PARAMETERS",
           "REDIS_FALLBACKS", "ServeConfig", "describe_profiles", "is_loopback_host", "load_config",
           "read_token_file"]

MIB = 1024 * 1024

#: The environment variable that may carry the admin token (a command line shows in `ps`).
ADMIN_TOKEN_ENV = "BEASTNET_ADMIN_TOKEN"


class ConfigError(BeastnetError, ValueError):
    """A configuration value, file or profile name is invalid."""


@dataclass
class ServeConfig:
    """Every parameter of the bundled server.  Units are in the names."""

    profile: str = "production"
    # UDP engine
    udp_host: str = "127.0.0.1"
    udp_port: int = 9000
    udp_sockets: Optional[int] = None           # None: one per CPU
    batch: int = 32
    max_datagram: int = 512
    recv_buffer_bytes: int = 32 * MIB
    send_buffer_bytes: int = 32 * MIB
    cpu_steering: bool = True
    share_ports: bool = False                   # join servers already on our ports (SO_REUSEPORT)
    # HTTP engine
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_threads: Optional[int] = None          # None: one per CPU
    http_prefix: str = "/v1/"
    http_io: str = "epoll"                      # the workers' I/O backend: epoll, uring, auto
    backlog: int = 1024
    max_connections: int = 10_000
    idle_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    cors_origins: list[str] = field(default_factory=list)  # ["*"] or origins browsers may read from
    tls_cert: Optional[str] = None              # PEM chain: TLS (https://, wss://) on the HTTP port
    tls_key: Optional[str] = None               # its PEM private key; both or neither
    # admin listener (/admin/*, /metrics, /healthz), apart from the public HTTP port
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_max_connections: int = 64             # its own, so a flood of the public port leaves room
    admin_token: Optional[str] = None           # required when admin_host is not loopback
    admin_token_file: Optional[str] = None      # a file holding the token (or BEASTNET_ADMIN_TOKEN)
    # API keys
    keystore: Optional[str] = None              # SQLite path; None: keys not enforced
    usage_flush_interval_s: float = 0.1
    # PostgreSQL (docs/postgres.md): keys, webhook subscriptions and the live
    # profile there instead of the keystore file
    database: Optional[str] = None              # postgresql://USER[:PASSWORD]@HOST[:PORT]/DB
    key_cache: str = "beastnet-key-cache.json"  # with database: the keys last read (IDs, tiers),
                                                # served from when the database is down at start
    negative_key_ttl_s: float = 5.0             # an unknown key is not asked for again this long
    key_miss_interval_s: float = 0.05           # unknown keys are looked up in batches this often
    usage_batch_rows: int = 300                 # usage log rows a write at most
    usage_queue_rows: int = 100_000             # usage log rows queued at most (then bg_drop)
    usage_retention_days: int = 0               # usage log rows older are trimmed; 0: kept
    report_max_age_s: float = 1.0               # a report without a query string is answered
                                                # by the workers this long (0: every one by Python)
    tiers: dict[str, dict[str, float]] = field(default_factory=dict)  # overrides of DEFAULT_TIERS
    # the WebSocket price stream and the live page, on the public HTTP port
    stream: bool = True
    stream_path: str = "/v1/stream"
    stream_compress_min_bytes: int = 1024       # permessage-deflate for bodies this long (0: off)
    dashboard: bool = True                      # GET / and /dashboard: the live page
    # feed
    feed: str = "sim"                           # a registered feed: exchanges, sim, replay
    feed_path: Optional[str] = None             # replay file (JSON lines or CSV)
    feed_rounds_per_s: float = 10.0
    feed_sources: list[str] = field(default_factory=lambda: ["sim-a", "sim-b"])
    feed_stale_after_s: float = 2.0
    control_stall_s: float = 2.0                # a control loop silent this long: prices served
                                                # "stale":true, /healthz 503 (natively); 0 = off
    replay_speed: float = 1.0
    feed_max_jump: float = 0.2                  # refuse a price this far (fraction) off its
                                                # other sources or its own last minute
    # the exchanges feed ([feeds] in a config file: docs/feeds.md)
    feed_assets: dict[str, list[str]] = field(default_factory=dict)  # asset -> exchanges
    feed_exchanges: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides
    feed_exchange_names: list[str] = field(default_factory=list)  # only these ([]: all mapped)
    # miss path and logs
    miss_queue_size: int = 4096
    max_inflight: int = 1024
    log_level: str = "info"
    # many nodes on one Redis/Valkey (docs/cluster.md); None: this process alone
    redis: Optional[str] = None                 # redis://HOST:PORT/DB or rediss://
    node_id: Optional[str] = None               # None: host:pid
    snapshot_interval_s: float = 3.0            # how often the node writes its snapshot
    snapshot_ttl_s: float = 30.0                # a snapshot not renewed this long is gone
    redis_fallback: str = "local-share"         # or "fail-closed", while Redis is unreachable
    # webhook push to associates (docs/webhooks.md); subscriptions live in the keystore
    webhooks: bool = False                      # push from this process
    webhooks_allow_private: bool = False        # allow loopback/private endpoints (tests, LANs)
    webhook_tiers: dict[str, dict[str, float]] = field(default_factory=dict)
    webhook_timeout_s: float = 5.0              # per HTTPS attempt
    webhook_max_attempts: int = 3
    webhook_backoff_base_ms: float = 1000.0     # full jitter: uniform(0, base * 2**(attempt-1))
    webhook_retry_after_max_s: float = 60.0     # a longer Retry-After is cut to this
    webhook_disable_after_s: float = 3600.0     # an endpoint failing this long is disabled
    webhook_ca_file: Optional[str] = None       # CA bundle for HTTPS endpoints; None: the system's
    webhook_log_batch_rows: int = 300
    webhook_log_interval_s: float = 0.1
    webhook_log_retention_s: float = 7 * 86400.0
    webhook_response_max_bytes: int = 4096     # of a receiver's answer read; the rest is cut
    webhook_warn_after_failures: int = 5        # failed cycles in a row before one warning
    # the governor (docs/governor.md): an adaptive limit on the HTTP work waiting for the
    # control plane (public keys shed before partners), and bounded reactions to red flags
    adaptive_enabled: bool = False
    adaptive_min_limit: int = 4                 # requests in flight the limit never goes under
    adaptive_max_limit: int = 1000              # ... nor over; partner keys are shed only here
    adaptive_target_ms: float = 50.0            # mean latency past which the limit shrinks
    adaptive_tolerance: float = 1.5             # latency may grow this much over its long-term
                                                # level before the limit shrinks (Gradient2)
    adaptive_max_batch: int = 256               # UDP drops: readers' batch grows up to this
    adaptive_max_flush_interval_s: float = 1.0  # background drops: usage flushes slow to this

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# [feeds] keys -> settings (others map to feed_<key>).
FEEDS_TABLE = {"exchanges": "feed_exchanges", "assets": "feed_assets", "only": "feed_exchange_names",
               "feed": "feed", "path": "feed_path"}

# Parameters /admin/profile may change on a running server.
LIVE_PARAMETERS = frozenset({
    "feed_rounds_per_s", "feed_stale_after_s", "usage_flush_interval_s", "max_inflight",
    "log_level", "replay_speed", "adaptive_enabled", "adaptive_min_limit", "adaptive_max_limit",
    "adaptive_target_ms", "adaptive_tolerance", "adaptive_max_batch",
    "adaptive_max_flush_interval_s",
})

PROFILES: dict[str, dict[str, Any]] = {
    "production": {"keystore": "beastnet-keys.db", "feed": "exchanges"},
    "stress-udp-direct": {"batch": 64, "recv_buffer_bytes": 64 * MIB, "send_buffer_bytes": 64 * MIB,
                          "feed_rounds_per_s": 1.0, "http_threads": 1},
    "stress-tcp-direct": {"udp_sockets": 1, "cpu_steering": False, "backlog": 4096,
                          "max_connections": 100_000, "feed_rounds_per_s": 1.0},
    "dev": {"udp_sockets": 1, "http_threads": 1, "cpu_steering": False,
            "recv_buffer_bytes": 4 * MIB, "send_buffer_bytes": 4 * MIB, "log_level": "debug"},
}

# What each profile is for; `beastnet serve --help` shows these with the settings above.
PROFILE_PURPOSES: dict[str, str] = {
    "production": "everything on: API keys enforced, usage persisted, both protocols on every "
                  "CPU, prices from the six exchanges",
    "stress-udp-direct": "maximum UDP throughput: bigger batches and buffers, a quiet feed, "
                         "one HTTP thread, no API keys",
    "stress-tcp-direct": "maximum HTTP throughput: one UDP socket, deep backlog, many "
                         "connections, no API keys",
    "dev": "trying it out: no API keys, one thread each, small buffers, debug logs",
}


def describe_profiles() -> str:
    """One line per profile: its purpose and the settings it changes."""
    def show(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, int) and value >= MIB and value % MIB == 0:
            return f"{value // MIB}MiB"
        return str(value)
    lines = []
    for name, settings in PROFILES.items():
        sets = ", ".join(f"{k}={show(v)}" for k, v in settings.items())
        lines.append(f"{name}: {PROFILE_PURPOSES[name]} ({sets})")
    return "\n".join(lines)


_LOG_LEVELS = ("debug", "info", "warning", "error")
#: What shared limits do while Redis is unreachable (docs/cluster.md).
REDIS_FALLBACKS = ("local-share", "fail-closed")


def _check(cfg: ServeConfig, label: Callable[[str], str] = str) -> None:
    """Raise ConfigError for the first invalid value.  `label(setting)` is how
    the message names a setting: the flag the user typed, else its name."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    def value(name: str) -> Any:
        return getattr(cfg, name)

    for name in ("udp_port", "http_port", "admin_port"):
        need(0 <= value(name) <= 65535, f"{label(name)} must be 0..65535, got {value(name)}")
    for name in ("udp_sockets", "http_threads"):
        need(value(name) is None or 1 <= value(name) <= 256,
             f"{label(name)} must be 1..256, got {value(name)}")
    need(1 <= cfg.batch <= 1024, f"{label('batch')} must be 1..1024, got {cfg.batch}")
    need(64 <= cfg.max_datagram <= 65536,
         f"{label('max_datagram')} must be 64..65536, got {cfg.max_datagram}")
    for name in ("recv_buffer_bytes", "send_buffer_bytes"):
        need(4096 <= value(name) <= 1024 * MIB,
             f"{label(name)} must be 4096..1 GiB, got {value(name)}")
    need(cfg.http_io in HTTPServer.IO_BACKENDS, f"{label('http_io')} must be one of "
         f"{', '.join(HTTPServer.IO_BACKENDS)}, got {cfg.http_io!r}")
    if cfg.http_io == "uring":          # refused before anything binds
        reason = HTTPServer.uring_unavailable()
        if reason is not None:
            raise ConfigError(f"{label('http_io')} uring: io_uring unavailable: {reason}")
    need(cfg.http_prefix.startswith("/") and cfg.http_prefix.endswith("/"),
         f"http_prefix must start and end with '/', got {cfg.http_prefix!r}")
    need(1 <= cfg.backlog <= 65535, f"{label('backlog')} must be 1..65535, got {cfg.backlog}")
    need(1 <= cfg.max_connections <= 10_000_000,
         f"{label('max_connections')} must be 1..10000000, got {cfg.max_connections}")
    for name in ("idle_timeout_s", "header_timeout_s", "usage_flush_interval_s",
                 "feed_rounds_per_s", "feed_stale_after_s"):
        need(value(name) > 0, f"{label(name)} must be > 0, got {value(name)}")
    need(cfg.control_stall_s >= 0,
         f"{label('control_stall_s')} must be >= 0 (0 = off), got {cfg.control_stall_s}")
    need(1 <= cfg.usage_batch_rows <= 100_000,
         f"{label('usage_batch_rows')} must be 1..100000, got {cfg.usage_batch_rows}")
    need(cfg.usage_batch_rows <= cfg.usage_queue_rows,
         f"{label('usage_queue_rows')} must be >= usage_batch_rows, got {cfg.usage_queue_rows}")
    need(0 <= cfg.report_max_age_s <= 60,
         f"{label('report_max_age_s')} must be 0 (off)..60, got {cfg.report_max_age_s}")
    need(cfg.usage_retention_days >= 0,
         f"{label('usage_retention_days')} must be >= 0 (0: kept), got {cfg.usage_retention_days}")
    need(cfg.replay_speed >= 0,
         f"{label('replay_speed')} must be >= 0 (0 = as fast as possible), got {cfg.replay_speed}")
    from beastnet.serve.feeds import feed_names     # the feeds import this module's type
    need(cfg.feed in feed_names(),
         f"{label('feed')} must be one of {', '.join(feed_names())}, got {cfg.feed!r}")
    need(cfg.feed != "replay" or bool(cfg.feed_path),
         f"feed 'replay' needs {label('feed_path')}")
    need(cfg.feed_path is None or os.path.isfile(cfg.feed_path),
         f"{label('feed_path')} {cfg.feed_path!r} is not a file")
    need(len(cfg.feed_sources) >= 1, "feed_sources needs at least one source")
    _check_feeds(cfg)
    need(all(o == "*" or "://" in o for o in cfg.cors_origins) and len(cfg.cors_origins) <= 16,
         'cors_origins: "*" or up to 16 origins like "https://app.example"')
    need(1 <= cfg.miss_queue_size <= 1 << 20, "miss_queue_size must be 1..1048576")
    need(cfg.max_inflight >= 1, "max_inflight must be >= 1")
    need(cfg.log_level in _LOG_LEVELS,
         f"{label('log_level')} must be one of {', '.join(_LOG_LEVELS)}")
    need(1 <= cfg.admin_max_connections <= 65536,
         f"{label('admin_max_connections')} must be 1..65536, got {cfg.admin_max_connections}")
    need(cfg.admin_token is None or len(cfg.admin_token) >= 16,
         "the admin token must be at least 16 characters")
    need(cfg.admin_token is not None or is_loopback_host(cfg.admin_host) is not False,
         f"{label('admin_host')} {cfg.admin_host} is not a loopback address: the admin routes "
         f"need a token there (--admin-token-file, admin_token_file in the config file, "
         f"or {ADMIN_TOKEN_ENV})")
    need(cfg.stream_path.startswith("/") and "?" not in cfg.stream_path
         and len(cfg.stream_path) < 64,
         f"{label('stream_path')} must be a path of under 64 bytes, got {cfg.stream_path!r}")
    need(0 <= cfg.stream_compress_min_bytes <= 16 * MIB,
         f"{label('stream_compress_min_bytes')} must be 0 (off)..16 MiB, "
         f"got {cfg.stream_compress_min_bytes}")
    for tier, limits in cfg.tiers.items():
        _check_tier(tier, limits)
    need((cfg.tls_cert is None) == (cfg.tls_key is None),
         "TLS needs both --tls-cert and --tls-key (tls_cert and tls_key in a config file), "
         "or neither")
    for name in ("tls_cert", "tls_key"):
        if value(name) is not None:
            try:
                with open(value(name), "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{label(name)} {value(name)}: {exc.strerror}") from None
    _check_cluster(cfg, label)
    _check_database(cfg, label)
    _check_webhooks(cfg, label)
    _check_governor(cfg, label)


def _in_range(cfg: ServeConfig, label: Callable[[str], str], name: str, low: float,
              high: float, unit: str = "") -> None:
    """ConfigError "NAME must be LOW..HIGH[ UNIT], got VALUE" unless low <= value <= high."""
    value = getattr(cfg, name)
    if not low <= value <= high:
        def text(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else repr(float(x))
        raise ConfigError(f"{label(name)} must be {text(low)}..{text(high)}"
                          f"{' ' + unit if unit else ''}, got {value}")


def _check_governor(cfg: ServeConfig, label: Callable[[str], str]) -> None:
    """The governor's bounds: a limit range, a target, a tolerance, and the
    reactions' ceilings (one under its starting value means no reaction)."""
    if not 1 <= cfg.adaptive_min_limit <= cfg.adaptive_max_limit <= 1_000_000:
        raise ConfigError(f"need 1 <= {label('adaptive_min_limit')} <= "
                          f"{label('adaptive_max_limit')} <= 1000000, got "
                          f"{cfg.adaptive_min_limit} and {cfg.adaptive_max_limit}")
    if not 0 < cfg.adaptive_target_ms <= 60_000:
        raise ConfigError(f"{label('adaptive_target_ms')} must be in (0, 60000], "
                          f"got {cfg.adaptive_target_ms}")
    _in_range(cfg, label, "adaptive_tolerance", 1.0, 10.0)
    _in_range(cfg, label, "adaptive_max_batch", 1, 1024)
    if not 0 < cfg.adaptive_max_flush_interval_s <= 60:
        raise ConfigError(f"{label('adaptive_max_flush_interval_s')} must be in (0, 60] s, "
                          f"got {cfg.adaptive_max_flush_interval_s}")


def _check_database(cfg: ServeConfig, label: Callable[[str], str]) -> None:
    """The PostgreSQL settings; a bad URL is named without its password."""
    if cfg.database is None:
        return
    from beastnet.serve.cluster import redacted_url
    if not cfg.database.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{label('database')} must be a postgresql:// URL, "
                          f"got {redacted_url(cfg.database)!r}")
    _in_range(cfg, label, "negative_key_ttl_s", 0, 3600, "s")
    _in_range(cfg, label, "key_miss_interval_s", 0.001, 10, "s")


def _check_cluster(cfg: ServeConfig, label: Callable[[str], str]) -> None:
    """The Redis settings: a redis:// URL, a snapshot TTL longer than two
    intervals (else every node would look stale or missing), a known fallback."""
    if cfg.redis is None:
        return
    if not cfg.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{label('redis')} must be a redis://, rediss:// or unix:// URL, "
                          f"got {cfg.redis!r}")
    try:
        from redis.connection import parse_url
    except ImportError:
        raise ConfigError(f"{label('redis')} needs the redis client: "
                          f"pip install 'beastnet[cluster]'") from None
    try:
        parse_url(cfg.redis)            # the client's own reading of it, as it will connect
    except ValueError as exc:
        raise ConfigError(f"{label('redis')} {cfg.redis!r}: {exc}") from None
    _in_range(cfg, label, "snapshot_interval_s", 0.1, 3600, "s")
    if cfg.snapshot_ttl_s <= 2 * cfg.snapshot_interval_s:
        raise ConfigError(f"{label('snapshot_ttl_s')} ({cfg.snapshot_ttl_s} s) must exceed two "
                          f"snapshot intervals ({2 * cfg.snapshot_interval_s} s)")
    if cfg.redis_fallback not in REDIS_FALLBACKS:
        raise ConfigError(f"{label('redis_fallback')} must be local-share or fail-closed, "
                          f"got {cfg.redis_fallback!r}")
    if cfg.node_id is not None and not 1 <= len(cfg.node_id) <= 128:
        raise ConfigError(f"{label('node_id')} must be 1..128 characters")


def _check_feeds(cfg: ServeConfig) -> None:
    """[feeds]: known exchanges and settings, assets mapped to known exchanges."""
    from beastnet.serve.assets import ASSETS
    from beastnet.serve.feeds.exchanges import EXCHANGES
    from beastnet.serve.feeds.exchanges.feed import CONNECTION_SETTINGS
    known = ", ".join(EXCHANGES)
    if not 0 < cfg.feed_max_jump <= 100:
        raise ConfigError(f"feeds.max_jump must be in (0, 100], got {cfg.feed_max_jump}")
    for name, table in cfg.feed_exchanges.items():
        if name not in EXCHANGES:
            raise ConfigError(f"[feeds.exchanges.{name}]: unknown exchange (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"[feeds.exchanges.{name}] must be a table")
        for key, value in table.items():
            if key not in CONNECTION_SETTINGS:
                raise ConfigError(f"[feeds.exchanges.{name}] {key}: unknown setting (known: "
                                  f"{', '.join(CONNECTION_SETTINGS)})")
            if key.endswith("_url"):
                if not isinstance(value, str) or not value.startswith(
                        ("wss://", "ws://") if key == "ws_url" else ("https://", "http://")):
                    raise ConfigError(f"[feeds.exchanges.{name}] {key}: not a URL: {value!r}")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                    or (value == 0 and key not in ("ping_interval_s", "connect_delay_s")):
                raise ConfigError(f"[feeds.exchanges.{name}] {key} must be > 0, got {value!r}")
    for asset, names in cfg.feed_assets.items():
        if asset not in ASSETS:
            raise ConfigError(f"[feeds.assets] {asset}: not one of the served assets")
        if not isinstance(names, list) or not names or any(n not in EXCHANGES for n in names):
            raise ConfigError(f"[feeds.assets] {asset}: a list of exchanges ({known}), "
                              f"got {names!r}")
    for name in cfg.feed_exchange_names:
        if name not in EXCHANGES:
            raise ConfigError(f"feeds.only: unknown exchange {name!r} (known: {known})")


def _check_tier(tier: str, limits: Any) -> None:
    """A [tiers.NAME] table: qps >= 0 (0: no rate limit), burst >= 1,
    monthly_cap >= 0 (0: no cap)."""
    where = f"tier {tier!r}"
    known = {"qps", "burst", "monthly_cap", "stream", "stream_connections", "stream_symbols",
             "shed_last"}
    if not isinstance(limits, dict) or not set(limits) <= known:
        raise ConfigError(f"{where}: only {', '.join(sorted(known))} may be set")
    for flag in ("stream", "shed_last"):
        if flag in limits and not isinstance(limits[flag], bool):
            raise ConfigError(f"{where}: {flag} must be true or false, got {limits[flag]!r}")
    for name, low, kinds in (("qps", 0, (int, float)), ("burst", 1, (int,)),
                             ("monthly_cap", 0, (int,)), ("stream_connections", 0, (int,)),
                             ("stream_symbols", 0, (int,))):
        if name not in limits:
            continue
        got = limits[name]
        kind = "a number" if float in kinds else "an integer"
        if isinstance(got, bool) or not isinstance(got, kinds):
            raise ConfigError(f"{where}: {name} must be {kind}, got {got!r}")
        if got < low or (isinstance(got, float) and got != got):
            raise ConfigError(f"{where}: {name} must be >= {low}, got {got!r}")


def _check_webhooks(cfg: ServeConfig, label: Callable[[str], str]) -> None:
    """The webhook settings and `[webhook_tiers.NAME]` tables."""
    for name in ("webhook_timeout_s", "webhook_backoff_base_ms", "webhook_retry_after_max_s",
                 "webhook_disable_after_s", "webhook_log_interval_s", "webhook_log_retention_s"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{label(name)} must be > 0, got {getattr(cfg, name)}")
    _in_range(cfg, label, "webhook_max_attempts", 1, 20)
    _in_range(cfg, label, "webhook_response_max_bytes", 0, 1 << 20)
    _in_range(cfg, label, "webhook_warn_after_failures", 1, 1_000_000)
    _in_range(cfg, label, "webhook_log_batch_rows", 1, 100_000)
    if cfg.webhook_ca_file is not None and not os.path.isfile(cfg.webhook_ca_file):
        raise ConfigError(f"{label('webhook_ca_file')} {cfg.webhook_ca_file!r} is not a file")
    if cfg.webhooks and not (cfg.keystore or cfg.database):
        raise ConfigError("webhooks need a keystore or a database (the subscriptions live there)")
    for tier, values in cfg.webhook_tiers.items():
        where = f"webhook tier {tier!r}"
        if not isinstance(values, dict) or not set(values) <= {"interval_s", "max_assets"}:
            raise ConfigError(f"{where}: only interval_s and max_assets may be set")
        interval = values.get("interval_s", 1.0)
        assets = values.get("max_assets", 1)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not 0.05 <= interval <= 86400:
            raise ConfigError(f"{where}: interval_s must be a number 0.05..86400, got {interval!r}")
        if isinstance(assets, bool) or not isinstance(assets, int) or not 1 <= assets <= 10_000:
            raise ConfigError(f"{where}: max_assets must be an integer 1..10000, got {assets!r}")


def is_loopback_host(host: str) -> Optional[bool]:
    """Whether every address `host` resolves to is a loopback address; None
    when it does not resolve (the bind reports that).  A wildcard ("0.0.0.0",
    "::") is not loopback: it listens on every interface."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_loopback:
            return False
    return True


def read_token_file(path: str, what: str) -> str:
    """The token a file holds, without surrounding whitespace (a trailing
    newline); ConfigError, naming `what` (the flag or setting), when it
    cannot be read or is empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{what} {path}: the file is empty")
    return token


def _admin_token(cfg: ServeConfig, label: Callable[[str], str],
                 environ: Mapping[str, str]) -> None:
    """Set cfg.admin_token from the one place that gives it: the config file's
    `admin_token`, a token file, or the environment.  Two places are an error:
    which one wins would be a guess."""
    given = [name for name, value in (("admin_token", cfg.admin_token),
                                      ("admin_token_file", cfg.admin_token_file),
                                      (ADMIN_TOKEN_ENV, environ.get(ADMIN_TOKEN_ENV)))
             if value]
    if len(given) > 1:
        raise ConfigError(f"the admin token is given {len(given)} ways "
                          f"({', '.join(label(name) for name in given)}): give it one way")
    if cfg.admin_token_file:
        cfg.admin_token = read_token_file(cfg.admin_token_file, label("admin_token_file"))
    elif environ.get(ADMIN_TOKEN_ENV):
        cfg.admin_token = environ[ADMIN_TOKEN_ENV].strip()


def _merge(cfg: ServeConfig, values: Mapping[str, Any], origin: str) -> None:
    known = {f.name: f for f in fields(ServeConfig)}
    for name, value in values.items():
        key = name.replace("-", "_")
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {name!r}")
        current = getattr(cfg, key)
        expected = type(current) if current is not None else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and value is not None and not isinstance(value, expected):
            raise ConfigError(f"{origin}: {name} must be {expected.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        setattr(cfg, key, value)


def load_config(path: Optional[str] = None, profile: Optional[str] = None,
                overrides: Optional[Mapping[str, Any]] = None,
                flags: Optional[Mapping[str, str]] = None,
                environ: Optional[Mapping[str, str]] = None) -> ServeConfig:
    """Build a validated ServeConfig.  A file may name its own `profile`; the
    `profile` argument (a command-line flag) wins over it.  `flags` maps a
    setting to the command-line flag that sets it: an error about a value from
    `overrides` names that flag (`--sockets`), not the setting (`udp_sockets`).
    The admin token may also come from `environ` (default: os.environ)."""
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        # Accept settings at top level or under a [server] table.
        if isinstance(file_values.get("server"), dict):
            server_table = file_values.pop("server")
            file_values.update(server_table)
        # [feeds] holds the exchanges feed: exchanges, assets, max_jump, ...
        if isinstance(file_values.get("feeds"), dict):
            for key, value in file_values.pop("feeds").items():
                file_values[FEEDS_TABLE.get(key, f"feed_{key}")] = value
    name = profile or file_values.pop("profile", None) or "production"
    file_values.pop("profile", None)
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    cfg = ServeConfig(profile=name)
    _merge(cfg, PROFILES[name], f"profile {name}")
    _merge(cfg, file_values, f"config file {path}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _merge(cfg, given, "command line")
    typed = {k: v for k, v in (flags or {}).items() if k in given}
    _admin_token(cfg, lambda name: typed.get(name, name),
                 os.environ if environ is None else environ)
    _check(cfg, lambda name: typed.get(name, name))
    return cfg


def live_overrides(cfg: ServeConfig, profile: str, values: Mapping[str, str]) -> dict[str, Any]:
    """What switching to `profile` with live parameters set by hand
    (`values`: name -> text, e.g. from a query string) changes: the profile's
    live parameters, then these.  ConfigError for a parameter that is not live,
    a value of the wrong type, or a combination _check refuses."""
    changes = apply_live(cfg, profile)
    kinds = {f.name: type(getattr(cfg, f.name)) for f in fields(ServeConfig)}
    for name, text in values.items():
        if name not in LIVE_PARAMETERS:
            raise ConfigError(f"{name} is not a live parameter (live: "
                              f"{', '.join(sorted(LIVE_PARAMETERS))})")
        kind = kinds[name]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(f"{name} must be {kind.__name__}, got {text!r}") from None
        changes[name] = value
    trial = dataclasses.replace(cfg, **changes)
    _check(trial)
    return {name: value for name, value in changes.items() if value != getattr(cfg, name)}


def apply_live(cfg: ServeConfig, profile: str) -> dict[str, Any]:
    """The live-tunable parameters `profile` would change, and their new values."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    target = ServeConfig(profile=profile)
    _merge(target, PROFILES[profile], f"profile {profile}")
    return {name: getattr(target, name) for name in sorted(LIVE_PARAMETERS)
            if getattr(target, name) != getattr(cfg, name)}
