"""HTTPServer: the TCP engine (HTTP/1.1), its listening sockets and its control plane."""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import orjson

from beastnet import _core
from beastnet._base import EngineServer, bind_member, require_at_least, resolve
from beastnet._core import APIKeyTable, ResponseTable
from beastnet.control import (Answer, ControlPlane, MissDispatcher, MissHandler, MissRequest,
                              error_answer, is_loopback_client, start_control_plane,
                              stop_control_plane,
                              sum_counters)
from beastnet.errors import ServerError, TLSConfigError
from beastnet.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, http_families, render

__all__ = ["HTTPServer", "TLSConfig", "WebSocketOptions", "keyed_reply_key"]

log = logging.getLogger("beastnet")

HTTP_IO_BACKENDS = ("epoll", "uring", "auto")
#: Whether "auto" picks io_uring where it can serve.  Only a win of >= 5 % in
#: work per server CPU-second, measured side by side, would make it so
#: (benchmarks/README.md "HTTP on io_uring"); until then "auto" means epoll.
URING_AUTO = False
URING_NOT_AUTO = ("epoll is the default: io_uring did not beat it by >= 5 % in work per "
                  "CPU-second (benchmarks/README.md)")


def uring_unavailable() -> Optional[str]:
    """Why the workers cannot run on io_uring here (one line), or None."""
    return _core.uring_unavailable_reason()


def choose_http_io(io: str) -> tuple[str, Optional[str]]:
    """(backend the workers run, why "auto" did not pick io_uring or None).

    ``"uring"`` where io_uring is unavailable raises `ServerError` naming the
    reason; ``"auto"`` falls back to epoll and says why."""
    if io not in HTTP_IO_BACKENDS:
        raise ValueError(f"io must be one of {', '.join(HTTP_IO_BACKENDS)}, got {io!r}")
    if io == "epoll":
        return "epoll", None
    reason = uring_unavailable()
    if reason is not None:
        if io == "uring":
            raise ServerError(f'HTTPServer(io="uring"): io_uring unavailable: {reason}')
        return "epoll", f"io_uring unavailable: {reason}"
    if io == "uring" or URING_AUTO:
        return "uring", None
    return "epoll", URING_NOT_AUTO


@dataclass(frozen=True)
class TLSConfig:
    """TLS on an HTTPServer's port (HTTPS, and WSS for its WebSocket feed).

    OpenSSL runs in the native workers: the handshake is non-blocking inside
    their epoll loops, bounded by ``handshake_timeout_s``.  TLS 1.2 and 1.3
    (``min_version`` may raise it to ``"TLSv1.3"``), ALPN ``http/1.1``,
    session tickets (resumption without a shared cache) unless
    ``session_tickets`` is False, renegotiation refused.  ``cert_file`` is a
    PEM chain (leaf first), ``key_file`` its PEM private key; both are read
    again by `HTTPServer.reload_tls()`.  ``ciphers`` (TLS 1.2, OpenSSL's
    cipher-list syntax) and ``ciphersuites`` (TLS 1.3) default to OpenSSL's.
    See docs/tls.md.
    """

    cert_file: str                      #: PEM certificate chain, leaf first
    key_file: str                       #: PEM private key (unencrypted)
    ciphers: Optional[str] = None       #: TLS 1.2 cipher list, e.g. "ECDHE+AESGCM"
    ciphersuites: Optional[str] = None  #: TLS 1.3 suites, e.g. "TLS_AES_128_GCM_SHA256"
    min_version: str = "TLSv1.2"        #: "TLSv1.2" or "TLSv1.3"
    session_tickets: bool = True        #: resumption by session ticket
    handshake_timeout_s: float = 10.0   #: a handshake unfinished after this is closed (counted)

    def context(self) -> _core.TLSContext:
        """Build the OpenSSL context from the files (TLSConfigError when they cannot be used)."""
        if not self.handshake_timeout_s > 0:
            raise TLSConfigError("handshake_timeout_s must be positive")
        return _core.TLSContext(os.fspath(self.cert_file), os.fspath(self.key_file),
                                ciphers=self.ciphers, ciphersuites=self.ciphersuites,
                                min_version=self.min_version,
                                session_tickets=self.session_tickets)


@dataclass(frozen=True)
class WebSocketOptions:
    """The WebSocket feed on an HTTPServer's port (RFC 6455, served natively).

    A client upgrades ``GET <path>`` and sends ``{"op":"subscribe",
    "symbols":[...]}``; from then on every answer published to the table for
    those keys is pushed to it as it is (a text frame when the body is UTF-8),
    framed once per publication and written without a copy.  A client that
    does not keep up is sent only the newest frame per symbol (conflation),
    and is closed with 1008 once its output has made no progress for
    ``stall_timeout_s``.  See docs/websocket.md.
    """

    path: str = "/v1/stream"            #: the stream's path
    max_subscriptions: int = 1000       #: symbols per connection (0 = no limit); API keys may say otherwise
    max_frame_bytes: int = 65536        #: largest client frame; larger closes 1009
    max_message_bytes: int = 65536      #: largest client message (all fragments); larger closes 1009
    max_symbols: int = 1024             #: symbols in one request
    stall_timeout_s: float = 10.0       #: output without progress this long closes the connection (1008)
    #: a client frame or fragmented message unfinished this long closes the connection
    message_timeout_s: float = 10.0
    #: bytes all connections' unfinished fragmented messages may hold; past it, closes 1013
    max_reassembly_bytes: int = 64 << 20
    echo_path: Optional[str] = None     #: an echo endpoint (conformance suites, round-trip probes)
    #: permessage-deflate (RFC 7692), negotiated when a client offers it: bodies this
    #: long or longer are deflated once per publication (0 = never negotiated)
    compress_min_bytes: int = 1024
    #: where API keys are enforced, an upgrade without a key must send
    #: ``{"op":"auth","api_key":...}`` first, within this (0 = refuse it 401 instead)
    auth_timeout_s: float = 5.0


def keyed_reply_key(api_key: str, key: str) -> str:
    """The `HTTPServer.keyed_replies` key of the answer to ``GET
    <prefix><key>`` (no query string) for `api_key` (the key or its ID,
    `api_key_id`): the first 32 hex digits of the key's SHA-256, "/", `key`;
    the workers build the same from the record they admitted.  Raises
    ValueError when the result could not be a table key (too long: such
    requests always go to the handler)."""
    out = _core.api_key_id(api_key)[-64:-32] + "/" + key
    if _KEYED_KEY.fullmatch(out) is None:
        raise ValueError(f"keyed reply key {out!r}: not a table key (at most 64 bytes "
                         "of [A-Za-z0-9._:/-])")
    return out


_KEYED_KEY = re.compile(r"[A-Za-z0-9._:/-]{1,64}")


class HTTPServer(EngineServer):
    """Answers HTTP/1.1 ``GET <prefix><KEY>`` from a `ResponseTable` on native threads.

    ``threads`` SO_REUSEPORT listening sockets (default: one per CPU) are each
    served by a native thread that never takes the GIL: epoll, one read per
    ready connection, every complete (pipelined) request answered with one
    gather write of the entry's pre-built head and its body.  Keep-alive by
    default; HTTP/1.0 and ``Connection: close`` honoured.

    A key the table lacks goes to ``handler`` (plain or async, on the uvloop
    control plane; the same API as `UDPServer`) when one is given, else it is
    answered 404 natively.  ``/healthz``, ``/metrics`` (Prometheus text) and
    ``/admin/stats`` are served by the control plane; other ``/admin/...``
    paths go to ``handler``; ``/admin/...`` answers 403 to clients off
    loopback.  ``routes`` (exact path -> callable) replaces any of these, or
    adds a path of its own outside the prefix (at most 16, e.g. ``/`` for a
    page); a route's callable runs on the control plane like a handler.
    With ``api_keys``, every ``GET <prefix><KEY>`` needs a known key within
    its limits (401, or 429 with ``Retry-After``), checked natively.
    ``control``: a running `ControlPlane` to serve routes and misses on,
    shared with other servers (its owner starts and stops it); by default the
    server starts its own.  ``tls``: a `TLSConfig` serves HTTPS (and WSS) on
    the port, terminated by OpenSSL in the workers (docs/tls.md).  A port
    another socket holds is refused (`ServerError`) unless ``reuse_port=True``
    asks to share it (SO_REUSEPORT; the kernel splits the connections).
    ``cors_origins`` lets browsers on other origins read ``GET <prefix><KEY>``
    answers: ``["*"]`` any origin, or a list of up to 16 origins such as
    ``"https://app.example"`` (echoed with ``Vary: Origin``); ``OPTIONS``
    preflights under the prefix are answered 204 natively (docs/http.md).
    ``batch_key`` (e.g. ``"prices"``) turns on the batch query
    ``GET <prefix>prices?symbols=BTC,ETH``: a JSON array of those entries'
    bodies, assembled natively (at most 64 symbols; a 404 names the unknown
    ones).  Keys are looked up as asked, then upper-cased.
    ``keyed_replies=True`` (needs ``api_keys``) adds a second table,
    ``keyed_replies``, of answers per API key: a miss from an admitted key,
    with no query string, is looked up there under
    ``keyed_reply_key(key_id, key)`` and answered by the worker when found
    (counted in ``hits`` and ``keyed_hits``, never queued); whoever puts an
    answer there removes it when it is no longer current (serve's usage
    reports: after report_max_age_s).  The workers do not use it while the
    control plane is stalled.
    ``miss_prefix`` (e.g. ``"reports/"``): only misses under
    ``<prefix><miss_prefix>`` go to ``handler``; every other miss is answered
    404 by the worker, never queued to the control plane.
    ``notsent_lowat_bytes`` (TCP_NOTSENT_LOWAT, default 128 KiB) bounds the
    unsent bytes the kernel holds per connection, ``send_buffer_bytes``
    (SO_SNDBUF, 0 = autotuned) its whole send buffer; stalled connections
    are closed with a reset (docs/http.md).  ``control_stall_s`` (default
    2 s, 0 = off): a control plane whose loop has not beaten for that long
    counts as stalled, and the workers answer ``/healthz`` 503 themselves and
    serve the ``"stale":true`` variant of bodies a ``stale_marking`` table
    keeps (docs/serve.md).  ``io``: the workers' I/O backend, ``"epoll"``
    (default), ``"uring"`` (multishot accept and receive into a provided
    buffer ring, TLS and the WebSocket feed included; refused with
    `ServerError` saying why when io_uring is unavailable here) or ``"auto"`` (epoll unless io_uring is measured to win,
    the reason kept in ``io_fallback``; docs/http.md).  Use
    as a context manager, call ``start()`` and ``stop()``, or
    ``serve_forever()`` to block until ``stop()`` or Ctrl-C.
    """

    #: The values ``io`` takes.
    IO_BACKENDS = HTTP_IO_BACKENDS
    #: Why the workers cannot run on io_uring here (one line).
    uring_unavailable = staticmethod(uring_unavailable)

    def __init__(
        self,
        table: ResponseTable,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        threads: Optional[int] = None,
        backlog: int = 1024,
        prefix: str = "/v1/",
        handler: Optional[MissHandler] = None,
        miss_queue_size: int = 4096,
        max_inflight: Optional[int] = None,
        max_connections: int = 10000,
        max_header_bytes: int = 8192,
        max_target_bytes: int = 2048,
        max_output_bytes: int = 1 << 20,
        max_copied_output_bytes: int = 256 << 20,
        header_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        write_timeout_s: float = 10.0,
        grace_s: float = 5.0,
        require_api_key: bool = False,
        api_keys: Optional[APIKeyTable] = None,
        routes: Optional[Mapping[str, Callable[[MissRequest], Any]]] = None,
        cpus: Optional[list[int]] = None,
        control: Optional[ControlPlane] = None,
        websocket: Optional[WebSocketOptions] = None,
        tls: Optional[TLSConfig] = None,
        reuse_port: bool = False,
        cors_origins: Sequence[str] = (),
        batch_key: Optional[str] = None,
        miss_prefix: Optional[str] = None,
        notsent_lowat_bytes: int = 128 * 1024,
        send_buffer_bytes: int = 0,
        control_stall_s: float = 2.0,
        io: str = "epoll",
        keyed_replies: bool = False,
    ) -> None:
        super().__init__(table, host, port, handler=handler, miss_queue_size=miss_queue_size,
                         max_inflight=max_inflight, api_keys=api_keys, control=control,
                         reuse_port=reuse_port, control_stall_s=control_stall_s)
        nthreads = threads if threads is not None else len(os.sched_getaffinity(0))
        require_at_least("threads", nthreads, 1)
        require_at_least("backlog", backlog, 1)
        if max_connections < nthreads:
            raise ValueError("max_connections must be at least one per thread")
        if grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        require_at_least("max_copied_output_bytes", max_copied_output_bytes, 0)
        self.nthreads = nthreads
        self.backlog = backlog
        self.prefix = prefix
        self.grace_s = grace_s
        self.cpus = cpus
        #: The workers' I/O backend ("epoll" or "uring"); `io_fallback` says
        #: why when ``io="auto"`` did not choose io_uring.
        self.io, self.io_fallback = choose_http_io(io)
        if self.io_fallback is not None:
            log.info("HTTPServer(io=\"auto\") uses epoll: %s", self.io_fallback)
        self._engine_options: dict[str, Any] = dict(io=self.io,
            prefix=prefix, max_connections=max_connections, max_header_bytes=max_header_bytes,
            max_target_bytes=max_target_bytes, max_output_bytes=max_output_bytes,
            max_copied_output_bytes=max_copied_output_bytes,
            header_timeout_s=header_timeout_s, idle_timeout_s=idle_timeout_s,
            write_timeout_s=write_timeout_s, require_api_key=require_api_key, api_keys=api_keys,
            cors_origins=tuple(cors_origins), batch_key=batch_key, miss_prefix=miss_prefix,
            notsent_lowat_bytes=notsent_lowat_bytes, send_buffer_bytes=send_buffer_bytes)
        #: Answers per API key (``keyed_replies=True``), or None: see keyed_reply_key().
        self.keyed_replies: Optional[ResponseTable] = None
        if keyed_replies:
            if api_keys is None:
                raise ValueError("keyed_replies needs api_keys: its answers are per API key")
            self.keyed_replies = ResponseTable()
            self._engine_options.update(keyed_replies=self.keyed_replies)
        self.websocket = websocket
        #: Topics `publish()` pushes that are not table keys (their last message is kept).
        self.topics: Optional[ResponseTable] = None
        if websocket is not None:
            if not isinstance(websocket, WebSocketOptions):
                raise TypeError("websocket must be a beastnet.WebSocketOptions")
            self.topics = ResponseTable()
            self._engine_options.update(
                ws_path=websocket.path, ws_echo_path=websocket.echo_path, ws_topics=self.topics,
                ws_max_subscriptions=websocket.max_subscriptions,
                ws_max_frame_bytes=websocket.max_frame_bytes,
                ws_max_message_bytes=websocket.max_message_bytes,
                ws_stall_timeout_s=websocket.stall_timeout_s,
                ws_max_symbols=websocket.max_symbols,
                ws_compress_min_bytes=websocket.compress_min_bytes,
                ws_auth_timeout_s=websocket.auth_timeout_s,
                ws_message_timeout_s=websocket.message_timeout_s,
                ws_max_reassembly_bytes=websocket.max_reassembly_bytes)
        if isinstance(cors_origins, str):
            raise TypeError('cors_origins is a list of origins, e.g. ["*"]')
        if tls is not None and not isinstance(tls, TLSConfig):
            raise TypeError("tls must be a beastnet.TLSConfig")
        #: TLS on the port (None = plain HTTP); `reload_tls()` rereads its files.
        self.tls = tls
        self.routes = dict(routes or {})
        self._engine: Optional[_core.HTTPEngine] = None
        self._started_at = 0.0
        self._running = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "HTTPServer":
        """Bind and listen, start the control plane and the worker threads.  Returns self."""
        if self._running:
            raise ServerError("server already started")
        try:
            tls_options: dict[str, Any] = {}
            if self.tls is not None:     # before binding: a bad file fails fast
                tls_options = dict(tls=self.tls.context(),
                                   tls_handshake_timeout_s=self.tls.handshake_timeout_s)
            self._open_sockets()
            self._engine = _core.HTTPEngine(
                self.table, [s.fileno() for s in self._socks], cpus=self.cpus,
                miss_capacity=self.miss_queue_size, misses_to_python=self.handler is not None,
                route_paths=tuple(self.routes), **self._engine_options, **tls_options)
            # The control plane always runs: it serves /healthz, /metrics, /admin/.
            self._control = start_control_plane(self._shared_control, "beastnet-http-control")
            self._dispatcher = MissDispatcher(self._engine, self.table, self._on_request, "http",
                                              self.max_inflight)
            self._control.run(self._dispatcher.attach, self._control.loop)
            self._control.watch(self._engine, self.control_stall_s)
            self._engine.start()
        except BaseException:
            self.stop(grace_s=0.0)
            raise
        self._started_at = time.monotonic()
        self._running = True
        self._mark_started()
        return self

    def _open_sockets(self) -> None:
        family, sockaddr = resolve(self.host, self.port, socket.SOCK_STREAM)
        for i in range(self.nthreads):
            sock = socket.socket(family, socket.SOCK_STREAM)
            self._socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            bind_member(sock, sockaddr, self.host, first=i == 0, reuse_port=self.reuse_port)
            sock.listen(self.backlog)
            if sockaddr[1] == 0:        # later sockets join the port the first one got
                sockaddr = sock.getsockname()
        self._address = self._socks[0].getsockname()

    def stop(self, grace_s: Optional[float] = None) -> None:
        """Stop accepting; give open connections up to ``grace_s`` (default: the
        constructor's) to finish the answer in progress, sent with
        ``Connection: close``; close the rest; stop the control plane.
        Idempotent.  Final counters stay readable through stats()."""
        grace = self.grace_s if grace_s is None else grace_s
        self._stop_serialized(lambda: self._stop_now(grace))

    def _stop_now(self, grace: float) -> None:
        self._running = False
        if self._engine is not None:
            # Workers drain while the control plane still answers their misses.
            self._engine.stop(grace)
        if self._control is not None and self._engine is not None:
            self._control.unwatch(self._engine)
        stop_control_plane(self._control, self._dispatcher,
                           owned=self._shared_control is None)
        self._control = None
        if self._engine is not None:
            self._engine.close()        # its descriptors; the counters stay readable
        self._close_sockets()

    # -- the control plane's side ------------------------------------------------

    def _on_request(self, request: MissRequest) -> Any:
        """Built-in routes first, then the user's handler (on the control loop)."""
        if request.key is None:
            path = request.path
            route = self.routes.get(path or "")
            if route is not None:
                return route(request)
            if (path or "").startswith("/admin/") and not is_loopback_client(request):
                return error_answer("forbidden")
            builtin = path in ("/healthz", "/metrics", "/admin/stats")
            if builtin and request.method not in ("GET", "HEAD"):
                return error_answer("method_not_allowed", allow="GET, HEAD")
            if path == "/healthz":
                return Answer(b'{"status":"ok"}')
            if path == "/metrics":
                return Answer(self.metrics_text(), content_type=METRICS_CONTENT_TYPE)
            if path == "/admin/stats":
                return Answer(orjson.dumps(self.stats(), default=str))
        if self.handler is None:
            return None                 # -> 404 not_found
        return self.handler(request)    # plain result or awaitable: the dispatcher handles both

    def publish(self, topic: str, data: Union[bytes, str, dict, list]) -> None:
        """Push `data` to the WebSocket subscribers of `topic`, a name that is
        not a key of the table (a table key's subscribers get every
        `table.set()` already).  The message is framed once; the topic keeps
        it as its last value, sent to whoever subscribes later."""
        if self.topics is None:
            raise ServerError("publish() needs HTTPServer(websocket=WebSocketOptions(...))")
        if topic in self.table:
            raise ValueError(f"{topic!r} is a key of the table: set it there, subscribers follow")
        if isinstance(data, (dict, list)):
            self.topics.set_json(topic, data)
        else:
            self.topics.set(topic, data)

    def reload_tls(self) -> None:
        """Read the TLS certificate and key files again and serve new
        connections with them; open connections keep the old ones.  On a
        bad file, raises TLSConfigError and keeps serving the old ones."""
        if self.tls is None:
            raise ServerError("reload_tls() needs HTTPServer(tls=TLSConfig(...))")
        context = self.tls.context()
        if self._engine is not None:
            self._engine.set_tls(context)

    def set_max_inflight(self, n: int) -> None:
        """Change how many handler calls may run at once (live)."""
        if n < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = n
        if self._dispatcher is not None:
            self._dispatcher.max_inflight = n

    # -- introspection ----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS) of the first listening socket."""
        host, port = self.address[0], self.address[1]
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def stats(self) -> dict[str, Any]:
        """Counters summed over workers (``totals``), per worker, and the set-up."""
        per_thread = self._engine.counters() if self._engine is not None else []
        totals = sum_counters(per_thread)
        if self._dispatcher is not None:
            totals.update(self._dispatcher.counters())
        if self._engine is not None:
            totals.update(self._engine.ws_deflate_counters())
        status = self._engine.worker_status() if self._engine is not None else []
        return {
            "address": self._address,
            "threads": self.nthreads,
            "prefix": self.prefix,
            "uptime_s": time.monotonic() - self._started_at if self._started_at else 0.0,
            "totals": totals,
            "per_thread": per_thread,
            "worker_errors": [os.strerror(e) for _, e in status if e],
            "tls": self._tls_stats(totals),
            "governor": self._engine.governor() if self._engine is not None else None,
        }

    def _tls_stats(self, totals: Mapping[str, int]) -> Optional[dict[str, Any]]:
        if self.tls is None:
            return None
        return {
            "cert_file": os.fspath(self.tls.cert_file),
            "key_file": os.fspath(self.tls.key_file),
            # kTLS is detected per connection after its handshake, never assumed.
            "ktls_available": _core.ktls_available(),
            "ktls_send": {"on": totals.get("tls_ktls_send_on", 0),
                          "off": totals.get("tls_ktls_send_off", 0)},
        }

    def metrics_text(self) -> bytes:
        """The counters in Prometheus text exposition format (`beastnet.metrics`)."""
        return render(http_families(self.stats()))
