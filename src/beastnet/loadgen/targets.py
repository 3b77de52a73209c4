"""Load targets: one registry from a target URL's scheme to everything that
depends on the kind of target -- its config class, the settings the command
line gives it, its runner, the verdict of one run and the report's title.

A new kind of target (say ``quic://``) is one `TargetKind` entry here, its
config class and its runner; the CLI, ramps, reports and verdicts look the
kind up instead of testing for it.

Light on purpose: names are "module:attribute" strings imported on first
use, so the CLI parses targets and builds its help without NumPy or the
native generator.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from beastnet.errors import LoadConfigError

__all__ = ["KINDS", "Target", "TargetKind", "describe", "kind_of", "kind_of_mode", "parse_target",
           "usage_lines"]


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TargetKind:
    """What one URL scheme means to the load generator."""

    scheme: str                         #: "udp", "http", "https", "ws", "wss"
    mode: str                           #: the native loop: "udp", "http" or "ws"
    tls: bool                           #: the scheme asks for TLS
    title: str                          #: the protocol word of the report's title
    usage: str                          #: one line of `beastnet load --help`
    default_port: Optional[int]         #: None: the URL must give a port
    default_path: str                   #: when the URL gives none ("" = no path)
    path_field: Optional[str]           #: the config field that holds the path
    config: str                         #: "module:Class" of the config
    runner: str                         #: "module:function" (config, progress, stop_when)
    judge: str                          #: "module:function": the verdict of one run
    #: (config field, argparse attribute) of the settings `beastnet load` passes on.
    options: tuple[tuple[str, str], ...] = ()
    #: A request loop: ramps, open loop and the knee finder apply.  False: the
    #: server pushes (WebSocket), and only single runs and `beastnet ws` tests do.
    requests: bool = True
    #: Answers are judged by HTTP status (else by error bodies).
    statuses: bool = False
    #: Each request's connect, TLS handshake and first byte are timed: the
    #: HTML report draws their breakdown.
    setup_timings: bool = False

    def config_class(self) -> Any:
        return _load(self.config)

    def run_function(self) -> Callable[..., Any]:
        return _load(self.runner)

    def judge_function(self) -> Callable[..., Any]:
        return _load(self.judge)


_REQUEST_JUDGE = "beastnet.loadgen.ramp:judge_run"
_WS_JUDGE = "beastnet.loadgen.ws.verdict:judge_ws"
_HTTP_OPTIONS = (("connections", "connections"), ("pipeline", "pipeline"),
                 ("conn_mode", "conn_mode"), ("headers", "header"), ("insecure", "insecure"),
                 ("cacert", "cacert"), ("tls_resume", "tls_resume"))


def _http(scheme: str, tls: bool, port: int, usage: str) -> TargetKind:
    return TargetKind(scheme, "http", tls, "HTTP", usage, port, "/v1/", "path_prefix",
                      "beastnet.loadgen.config:HTTPLoadConfig",
                      "beastnet.loadgen.http:run_http_load", _REQUEST_JUDGE, _HTTP_OPTIONS,
                      statuses=True, setup_timings=True)


def _ws(scheme: str, tls: bool, port: int, usage: str) -> TargetKind:
    return TargetKind(scheme, "ws", tls, "WS", usage, port, "/", "path",
                      "beastnet.loadgen.ws.config:WSLoadConfig",
                      "beastnet.loadgen.ws.run:run_ws_load", _WS_JUDGE, requests=False)


#: Every kind of target, by scheme; a target without a scheme is UDP.
KINDS: dict[str, TargetKind] = {k.scheme: k for k in (
    TargetKind("udp", "udp", False, "UDP",
               "HOST:PORT or udp://HOST:PORT (UDP, `@TAG KEY [APIKEY]`)", None, "", None,
               "beastnet.loadgen.config:UDPLoadConfig", "beastnet.loadgen.udp:run_udp_load",
               _REQUEST_JUDGE, (("sockets", "sockets"), ("window", "window"),
                                ("batch", "batch"))),
    _http("http", False, 80,
          "http://HOST:PORT[/PREFIX] (HTTP/1.1 GET PREFIX+KEY, default prefix /v1/)"),
    _http("https", True, 443, "https://HOST:PORT[/PREFIX] (the same over TLS; the "
                              "certificate is verified)"),
    _ws("ws", False, 80, "ws://HOST:PORT/PATH (WebSocket clients that subscribe and read)"),
    _ws("wss", True, 443, "wss://HOST:PORT/PATH (the same over TLS)"),
)}


@dataclass(frozen=True)
class Target:
    """A parsed target URL."""

    kind: TargetKind
    host: str
    port: int
    path: str                           #: with the query, if any ("" for UDP)

    def config_fields(self) -> dict[str, Any]:
        """host, port, the path field and tls, as the config class names them."""
        out: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.kind.path_field is not None:
            out[self.kind.path_field] = self.path
            out["tls"] = self.kind.tls
        return out


def parse_target(text: str) -> Target:
    """The `Target` of ``HOST:PORT`` or ``SCHEME://HOST[:PORT][/PATH]``;
    `LoadConfigError` naming what is wrong."""
    url = text if "://" in text else "udp://" + text
    u = urlsplit(url)
    kind = KINDS.get(u.scheme)
    if kind is None or not u.hostname:
        raise LoadConfigError(f"target {text!r}: expected HOST:PORT or "
                              + ", ".join(f"{s}://" for s in KINDS) + "HOST:PORT...")
    try:
        port = u.port
    except ValueError:
        raise LoadConfigError(f"target {text!r}: bad port") from None
    if port is None:
        if kind.default_port is None:
            raise LoadConfigError(f"target {text!r}: a {kind.title} target needs a port")
        port = kind.default_port
    path = ""
    if kind.path_field is not None:
        path = (u.path or kind.default_path) + (f"?{u.query}" if u.query else "")
    return Target(kind, u.hostname, port, path)


def kind_of(mode: str, tls: bool = False) -> Optional[TargetKind]:
    """The kind of a config's or result's ``mode`` and TLS (None if none is)."""
    return next((k for k in KINDS.values() if k.mode == mode and k.tls == tls), None)


def kind_of_mode(mode: str) -> TargetKind:
    """The plain (non-TLS) kind of a config's or result's ``mode``."""
    kind = kind_of(mode)
    if kind is None:
        raise LoadConfigError(f"no load target of mode {mode!r}")
    return kind


def describe(result: dict) -> str:
    """"UDP closed-loop load against 127.0.0.1:9000" from a result dict."""
    cfg = result.get("config", {})
    mode = str(result.get("mode", ""))
    kind = kind_of(mode, bool(cfg.get("tls")))
    target = f"{cfg.get('host', '?')}:{cfg.get('port', '?')}"
    if kind is None:
        return f"{mode.upper()} load against {target}"
    loop = ""
    if kind.requests:                   # a pushing server has no loop of requests
        loop = str(cfg.get("loop", "")).replace("_", " ")
        loop = f"{loop}-loop" if loop and "loop" not in loop else loop
    if kind.path_field is not None:
        target = f"{kind.scheme}://{target}{cfg.get(kind.path_field, '')}"
    return f"{kind.title} {loop} load against {target}".replace("  ", " ")


def usage_lines(indent: str = "          ") -> str:
    """The targets `beastnet load` accepts, one a line."""
    return ("\n" + indent).join(k.usage for k in KINDS.values())
