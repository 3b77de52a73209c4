"""What a WebSocket load run does: `WSLoadConfig` and its checks.

A plain dataclass, no native code: the CLI builds and checks it before
anything heavy is imported.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

import orjson

from beastnet.errors import LoadConfigError
from beastnet.loadgen.config import TCPLoadConfig

__all__ = ["TS_UNITS", "WSLoadConfig", "json_path"]

#: Nanoseconds per unit of a message's timestamp field.
TS_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

#: beastnet's own subscribe message; `{symbols}` becomes a JSON array.
BEASTNET_SUBSCRIBE = '{"op":"subscribe","symbols":{symbols}}'

#: How latency is measured, as the report states it.
CLOCK_RULE = ("latency = CLOCK_REALTIME at receipt - the message's timestamp field; the "
              "server must stamp with CLOCK_REALTIME (time since the epoch); across hosts "
              "the clocks' offset is included, stamps from the future are counted as "
              "clock_skew and not recorded")


def _bad(msg: str) -> None:
    raise LoadConfigError(msg)


_STEP = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]')


def json_path(spec: str) -> Optional[list[Any]]:
    """The steps of a JSON path (`data.ts`, `$.data[0].ts`, `[2].seq`): key
    names and array indexes from the root.  None for a plain key (no `.`,
    `[` or leading `$`: found anywhere, as the first `"key":`).  Raises
    ValueError on a malformed path."""
    if not (spec.startswith("$") or "." in spec or "[" in spec):
        return None
    rest = spec[1:] if spec.startswith("$") else spec
    steps: list[Any] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None or (m.group(1) is not None and pos == 0 and rest[0] == "." and not
                         spec.startswith("$")):
            raise ValueError(f"bad JSON path {spec!r} at {rest[pos:]!r}")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not steps:
        raise ValueError(f"bad JSON path {spec!r}: no step")
    return steps


@dataclass
class WSLoadConfig(TCPLoadConfig):
    """What a WebSocket load run does: ``connections`` clients of
    ``ws://host:port{path}``, each sending its subscribe messages after the
    upgrade and then only reading, for ``duration_s`` after ``warmup_s``.

    ``symbols`` are subscribed on every connection, or, with
    ``symbols_per_connection=N``, N each, dealt from the list in turn (and
    repeated when N exceeds it: a server may count repeats once).
    ``subscribe_template`` is the message text, ``{symbols}`` replaced by a
    JSON array of at most ``symbols_per_message`` symbols (beastnet's
    ``{"op":"subscribe","symbols":[...]}`` by default; empty: send nothing).
    Latency comes from the number after ``"<ts_key>":`` in ``ts_unit``
    (CLOCK_REALTIME on both sides), gaps from ``"<seq_key>":`` per
    connection; either may be a JSON path instead (``data.ts``,
    ``$.data[0].ts``: see `json_path`).  ``tls``: ``wss://``, with the settings
    `HTTPLoadConfig` describes.  A lost connection is retried after a full-jitter delay in
    [0, min(backoff_cap_ms, backoff_base_ms * 2^attempt)].

    Probes: with ``probe_messages``, each connection sends them in turn after
    the upgrade, one in flight, the next as soon as the answer (the first
    message holding ``probe_answers[i]``, any message if empty) arrives or
    ``probe_timeout_ms`` passes; answers holding ``refusal_pattern`` count as
    refused.  ``deflate`` offers permessage-deflate (RFC 7692) and inflates
    what the server compresses.
    """

    port: int = 8080
    threads: int = 1
    warmup_s: float = 0.0
    path: str = "/v1/stream"
    connections: int = 1
    symbols: Sequence[str] = ("BTC",)
    symbols_per_connection: Optional[int] = None
    subscribe_template: str = BEASTNET_SUBSCRIBE
    symbols_per_message: int = 1000
    ts_key: Optional[str] = "ts"
    ts_unit: str = "ms"
    seq_key: Optional[str] = None
    connect_timeout_ms: float = 2000
    backoff_base_ms: float = 100
    backoff_cap_ms: float = 10000
    ping_interval_ms: float = 0
    pong_timeout_ms: float = 5000
    max_pending: int = 256
    read_buffer: int = 65536
    probe_messages: Sequence[str] = ()
    probe_answers: Sequence[str] = ()
    refusal_pattern: str = ""
    probe_timeout_ms: float = 1000
    deflate: bool = False

    mode: ClassVar[str] = "ws"
    COUNT_LIMITS: ClassVar[dict[str, Optional[int]]] = {
        "connections": None, "threads": None, "max_pending": None, "symbols_per_message": None,
        "read_buffer": 1 << 26}

    def validate(self) -> None:
        """Raise `LoadConfigError` naming the first bad setting."""
        super().validate()
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            _bad(f"path must start with '/' and hold no spaces, got {self.path!r}")
        if not self.symbols or any(not s or any(ord(c) < 32 for c in s) for s in self.symbols):
            _bad("symbols must be non-empty strings without control characters")
        if self.symbols_per_connection is not None and (
                not isinstance(self.symbols_per_connection, int)
                or self.symbols_per_connection < 1):
            _bad(f"symbols_per_connection must be a positive integer, "
                 f"got {self.symbols_per_connection!r}")
        if self.subscribe_template and "{symbols}" not in self.subscribe_template:
            _bad("subscribe_template must contain {symbols}")
        if self.ts_unit not in TS_UNITS:
            _bad(f"ts_unit must be one of {', '.join(TS_UNITS)}, got {self.ts_unit!r}")
        for name in ("ts_key", "seq_key"):
            key = getattr(self, name)
            if key is not None and (not key or len(key.encode()) > 60 or '"' in key):
                _bad(f"{name} must be 1-60 bytes without '\"', got {key!r}")
            try:
                steps = json_path(key) if key is not None else None
            except ValueError as exc:
                _bad(f"{name}: {exc}")
            if steps is not None and len(steps) > 8:
                _bad(f"{name}: a JSON path has at most 8 steps, got {len(steps)}")
        if self.probe_answers and len(self.probe_answers) != len(self.probe_messages):
            _bad("probe_answers needs one pattern per probe message")
        if any(not m for m in self.probe_messages):
            _bad("probe messages must not be empty")
        for name in ("connect_timeout_ms", "backoff_base_ms", "backoff_cap_ms",
                     "pong_timeout_ms", "probe_timeout_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                _bad(f"{name} must be > 0, got {value!r}")
        if not (math.isfinite(self.ping_interval_ms) and self.ping_interval_ms >= 0):
            _bad(f"ping_interval_ms must be >= 0, got {self.ping_interval_ms!r}")
        if self.read_buffer < 4096:
            _bad(f"read_buffer must be >= 4096 bytes, got {self.read_buffer}")
        if self.rate is not None or self.max_requests is not None:
            _bad("a WebSocket run has no request rate or request count: the server pushes")
        self.check_headers_and_tls()

    def connection_symbols(self) -> list[list[str]]:
        """The symbols of each connection."""
        if self.symbols_per_connection is None:
            return [list(self.symbols)] * self.connections
        n, syms = self.symbols_per_connection, list(self.symbols)
        return [[syms[(i * n + j) % len(syms)] for j in range(n)]
                for i in range(self.connections)]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[bytes]:
        """The subscribe messages of a connection following `symbols`."""
        if not self.subscribe_template:
            return []
        step = self.symbols_per_message
        return [self.subscribe_template.replace(
                    "{symbols}", orjson.dumps(list(symbols[i:i + step])).decode()).encode()
                for i in range(0, len(symbols), step)]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["symbols"] = (list(self.symbols) if len(self.symbols) <= 100
                          else f"{len(self.symbols)} symbols")
        out["clock_rule"] = CLOCK_RULE
        return out

    def _level_shape(self, concurrency: int) -> dict[str, Any]:
        return {"connections": concurrency}
