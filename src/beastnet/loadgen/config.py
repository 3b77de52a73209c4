"""What a load run does: `UDPLoadConfig` and `HTTPLoadConfig`, their checks,
and the shape of one ramp level in each protocol.

Plain dataclasses, no NumPy and no native code: the CLI builds and checks a
config before anything heavy is imported.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Optional, Sequence, TypeVar

from beastnet.errors import LoadConfigError

# Here, not in agents.py, so that `beastnet agent --help` parses without
# NumPy (the agents' merge needs it, their flags do not).
DEFAULT_LEASE_S = 3.0           # an agent or a coordinator silent this long is gone

__all__ = [
    "HTTPLoadConfig",
    "LoadConfig",
    "UDPLoadConfig",
    "http_level_config",
    "level_config",
    "udp_level_config",
]

_KEY_RE = re.compile(rb"^[A-Za-z0-9._:/-]{1,64}$")
_APIKEY_RE = re.compile(rb"^[\x21-\x7e]{1,64}$")

_C = TypeVar("_C", bound="LoadConfig")


def to_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x: Any) -> bool:
    return _finite(x) and x > 0


def _bad(msg: str) -> None:
    raise LoadConfigError(msg)


def _check_counts(cfg: Any, limits: dict[str, Optional[int]]) -> None:
    """Each named setting is a positive integer no larger than its limit."""
    for name, limit in limits.items():
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _bad(f"{name} must be a positive integer, got {value!r}")
        if limit is not None and value > limit:
            _bad(f"{name} must be <= {limit}, got {value}")


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, min(limit, n) + 1) if n % d == 0)


@dataclass
class LoadConfig:
    """What every load run has, whatever the protocol.

    Closed loop (``rate=None``): a fixed number of requests outstanding.
    Open loop (``rate=N``): N requests/s in total, evenly spaced or Poisson
    (``poisson=True``), sent whatever the replies; latency runs from each
    request's intended send time.  ``warmup_s`` is excluded from every
    result.  The run stops after ``duration_s`` of measurement, or once
    ``max_requests`` measured requests are sent and settled, whichever is first.
    """

    host: str = "127.0.0.1"
    port: int = 9000
    keys: Sequence[str] = ("BTC",)
    weights: Optional[Sequence[float]] = None
    threads: int = 2
    rate: Optional[float] = None
    poisson: bool = False
    duration_s: float = 5.0
    warmup_s: float = 1.0
    timeout_ms: float = 200
    pin_threads: bool = False
    api_key: Optional[str] = None
    max_requests: Optional[int] = None
    seed: Optional[int] = None

    #: The protocol, as reports name it.
    mode: ClassVar[str] = "load"
    #: Settings that must be positive integers, and their upper limits (None: no limit).
    COUNT_LIMITS: ClassVar[dict[str, Optional[int]]] = {"threads": None}

    def validate(self) -> None:
        """Raise `LoadConfigError` naming the first bad setting."""
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            _bad(f"port must be 1..65535, got {self.port!r}")
        if not self.keys:
            _bad("keys must name at least one key")
        for key in self.keys:
            if not _KEY_RE.match(to_bytes(key)):
                _bad(f"invalid key {key!r}: 1-64 bytes of [A-Za-z0-9._:/-]")
        if self.api_key is not None and not _APIKEY_RE.match(to_bytes(self.api_key)):
            _bad("api_key must be 1-64 printable non-space bytes")
        if self.weights is not None:
            if len(self.weights) != len(self.keys):
                _bad(f"{len(self.weights)} weights for {len(self.keys)} keys")
            if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
                _bad("weights must be finite, >= 0, and not all zero")
        _check_counts(self, self.COUNT_LIMITS)
        if not _positive(self.duration_s):
            _bad(f"duration_s must be > 0, got {self.duration_s!r}")
        if not (_finite(self.warmup_s) and self.warmup_s >= 0):
            _bad(f"warmup_s must be >= 0, got {self.warmup_s!r}")
        if not _positive(self.timeout_ms):
            _bad(f"timeout_ms must be > 0, got {self.timeout_ms!r}")
        if self.rate is not None and not _positive(self.rate):
            _bad(f"rate must be > 0 requests/s, got {self.rate!r}")
        if self.poisson and self.rate is None:
            _bad("poisson arrivals need a rate (open loop)")
        if self.max_requests is not None and (not isinstance(self.max_requests, int)
                                              or self.max_requests < 1):
            _bad(f"max_requests must be a positive integer, got {self.max_requests!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as the JSON report shows it (long key lists and the API key elided)."""
        out = asdict(self)
        out["keys"] = list(self.keys) if len(self.keys) <= 100 else f"{len(self.keys)} keys"
        out["weights"] = None if self.weights is None else (
            list(self.weights) if len(self.weights) <= 100 else "...")
        out["api_key"] = None if self.api_key is None else "***"
        out["mode"] = self.mode
        out["loop"] = (("open-poisson" if self.poisson else "open") if self.rate is not None
                       else "closed")
        return out

    def at_level(self: _C, requests: int, concurrency: int, max_seconds: float = 60.0) -> _C:
        """The closed-loop config of one ramp level: `concurrency` requests
        outstanding, `requests` measured requests, no warm-up, and at most
        `max_seconds`."""
        return dataclasses.replace(self, rate=None, poisson=False, max_requests=requests,
                                   warmup_s=0.0, duration_s=max_seconds,
                                   **self._level_shape(concurrency))

    def at_rate(self: _C, rate: float, duration_s: float) -> _C:
        """The open-loop config of one knee-finder probe: `rate` requests/s for
        `duration_s` measured seconds, after at most one second of warm-up."""
        return dataclasses.replace(self, rate=rate, duration_s=duration_s,
                                   warmup_s=min(self.warmup_s, 1.0), max_requests=None)

    def _level_shape(self, concurrency: int) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class UDPLoadConfig(LoadConfig):
    """What a UDP load run does: ``@TAG KEY[ APIKEY]`` over ``sockets``
    connected sockets.  Closed loop: every socket keeps ``window`` requests
    outstanding.  See `LoadConfig` for the rest.
    """

    sockets: int = 64
    window: int = 32
    batch: int = 32
    gso: bool = True

    mode: ClassVar[str] = "udp"
    COUNT_LIMITS: ClassVar[dict[str, Optional[int]]] = {
        "sockets": None, "threads": None, "window": 1 << 20, "batch": 1024}

    def _level_shape(self, concurrency: int) -> dict[str, Any]:
        # The most sockets up to `sockets` that divide the concurrency exactly,
        # times the window.
        sockets = _largest_divisor(concurrency, self.sockets)
        return {"sockets": sockets, "window": concurrency // sockets}


@dataclass
class TCPLoadConfig(LoadConfig):
    """What the load runs over TCP connections (`HTTPLoadConfig`,
    `ws.config.WSLoadConfig`) share: extra request ``headers`` ("Name:
    value"), a ``host_header`` to send instead of host:port, and TLS:
    ``tls``, ``insecure``, ``cacert`` and ``tls_resume`` (`HTTPLoadConfig`
    says what each does)."""

    headers: Sequence[str] = ()
    host_header: Optional[str] = None
    tls: bool = False
    insecure: bool = False
    cacert: Optional[str] = None
    tls_resume: bool = False

    def check_headers_and_tls(self) -> None:
        """`LoadConfigError` on a header that is not "Name: value", or on TLS
        settings that contradict each other or need TLS without it."""
        for h in self.headers:
            if ":" not in h or "\n" in h or "\r" in h:
                _bad(f"header {h!r}: expected 'Name: value'")
        if self.cacert is not None:
            if self.insecure:
                _bad("--cacert and --insecure contradict each other")
            if not os.path.isfile(self.cacert) or not os.access(self.cacert, os.R_OK):
                _bad(f"--cacert {self.cacert}: no such readable file")
        if not self.tls and (self.insecure or self.cacert is not None or self.tls_resume):
            _bad("--insecure, --cacert and --tls-resume need an https:// or wss:// target")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["headers"] = list(self.headers)
        return out


@dataclass
class HTTPLoadConfig(TCPLoadConfig):
    """What an HTTP/1.1 load run does: ``GET {path_prefix}{KEY}`` over
    ``connections`` connections with up to ``pipeline`` requests in flight on
    each (closed loop), or ``rate`` requests/s in total (open loop).

    ``conn_mode``: ``"keepalive"`` (default) reuses connections for as long as
    the server keeps them; ``"close"`` opens a new connection per request (the
    latency then includes the connect); an integer N sends N requests per
    connection, the last with ``Connection: close``.

    ``tls`` (an ``https://`` target): every connection speaks TLS, with SNI
    and ALPN ``http/1.1``.  The certificate is verified against the system's
    trust store (or ``cacert``, a PEM file) for ``host`` unless ``insecure``;
    ``tls_resume`` offers the last session the server issued on each new
    connection.
    """

    port: int = 8080
    timeout_ms: float = 1000
    connections: int = 64
    pipeline: int = 1
    conn_mode: Any = "keepalive"
    path_prefix: str = "/v1/"
    connect_timeout_ms: float = 1000

    mode: ClassVar[str] = "http"
    COUNT_LIMITS: ClassVar[dict[str, Optional[int]]] = {
        "connections": None, "threads": None, "pipeline": 4096}

    def validate(self) -> None:
        """Raise `LoadConfigError` naming the first bad setting."""
        super().validate()
        self.requests_per_connection()
        if not self.path_prefix.startswith("/") or any(c in self.path_prefix for c in " \r\n"):
            _bad(f"path_prefix must start with '/' and hold no spaces, got {self.path_prefix!r}")
        if not _positive(self.connect_timeout_ms):
            _bad(f"connect_timeout_ms must be > 0, got {self.connect_timeout_ms!r}")
        self.check_headers_and_tls()

    def requests_per_connection(self) -> int:
        """0 = keep-alive, 1 = a new connection per request, N = N per connection."""
        mode = self.conn_mode
        if mode in ("keepalive", "keep-alive", None):
            return 0
        if mode in ("close", "new", "per-request"):
            return 1
        try:
            n = int(mode)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise LoadConfigError(f"conn_mode must be 'keepalive', 'close' or a positive "
                                  f"number of requests per connection, got {mode!r}")
        return n

    def _level_shape(self, concurrency: int) -> dict[str, Any]:
        # Keep-alive: the most connections up to `connections` that divide the
        # concurrency, times the pipeline depth; other modes: one connection
        # per request in flight.
        if self.requests_per_connection() == 0:
            conns = _largest_divisor(concurrency, self.connections)
            return {"connections": conns, "pipeline": concurrency // conns}
        return {"connections": concurrency, "pipeline": 1}


def udp_level_config(base: UDPLoadConfig, requests: int, concurrency: int,
                     max_seconds: float = 60.0) -> UDPLoadConfig:
    """One ramp level over UDP (see `LoadConfig.at_level`)."""
    return base.at_level(requests, concurrency, max_seconds)


def http_level_config(base: HTTPLoadConfig, requests: int, concurrency: int,
                      max_seconds: float = 60.0) -> HTTPLoadConfig:
    """One ramp level over HTTP (see `LoadConfig.at_level`)."""
    return base.at_level(requests, concurrency, max_seconds)


def level_config(base: _C, requests: int, concurrency: int, max_seconds: float = 60.0) -> _C:
    """One ramp level's config for either protocol (see `LoadConfig.at_level`)."""
    return base.at_level(requests, concurrency, max_seconds)
