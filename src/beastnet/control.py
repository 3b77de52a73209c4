"""The Python control plane: a uvloop event loop on its own thread.

It serves what the native data plane cannot: table misses (the user's
handler, plain or async), and later admin routes and feeds.  Nothing here runs
per hit; the native readers never wait for this thread.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union

import orjson
import uvloop

from beastnet._core import ERROR_BODIES, ERROR_STATUS
from beastnet.errors import ServerError, TableFullError

__all__ = ["Answer", "ControlPlane", "MissRequest", "MissHandler", "error_answer"]

log = logging.getLogger("beastnet")


def decode_sockaddr(raw: bytes) -> Optional[tuple[str, int]]:
    """(host, port) of a raw struct sockaddr_in / sockaddr_in6, else None."""
    if len(raw) >= 8 and struct.unpack_from("=H", raw)[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    if len(raw) >= 24 and struct.unpack_from("=H", raw)[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
    return None


def is_loopback_client(request: "MissRequest") -> bool:
    """Whether the request came from 127.0.0.0/8 or ::1 (IPv4-mapped included)."""
    client = request.client
    if client is None:
        return False
    address = ipaddress.ip_address(client[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def sum_counters(per_thread: list[dict[str, int]]) -> dict[str, int]:
    """Totals of per-thread counter snapshots."""
    totals: dict[str, int] = {}
    for counters in per_thread:
        for name, value in counters.items():
            totals[name] = totals.get(name, 0) + value
    return totals


def start_control_plane(shared: Optional["ControlPlane"], name: str) -> "ControlPlane":
    """The control plane a server runs on: `shared` (already running, owned by
    the caller), else a new one of its own, started here."""
    if shared is not None:
        if not shared.running:
            raise ServerError("the control plane given to a server must be started first")
        return shared
    control = ControlPlane(name)
    control.start()
    return control


def stop_control_plane(control: Optional["ControlPlane"],
                       dispatcher: Optional["MissDispatcher"], *, owned: bool = True) -> None:
    """Detach `dispatcher` from its engine's eventfd (on the loop's thread),
    then stop the loop unless another owner shares it.  Before an engine
    closes that eventfd."""
    if control is None:
        return
    if dispatcher is not None:
        try:
            control.run(dispatcher.detach, timeout=0.5)
        except Exception:               # loop already gone: nothing to detach
            pass
    if owned:
        control.stop()


class MissRequest:
    """A request the table could not answer (or an HTTP control route), as the
    handler sees it.  The same class for both protocols: `protocol` says which."""

    __slots__ = ("key", "api_key", "tag", "protocol", "method", "path", "query", "_addr",
                 "_reader", "_conn")

    def __init__(self, key: Optional[str], api_key: Optional[str], tag: Optional[str],
                 protocol: str, addr: bytes, reader: int, *, method: Optional[str] = None,
                 path: Optional[str] = None, query: str = "",
                 conn: Optional[tuple[int, int]] = None) -> None:
        self.key = key              #: the KEY asked for; None for an HTTP route (/admin/..., ...)
        self.api_key = api_key      #: the APIKEY (UDP) or X-API-Key / ?api_key= (HTTP), or None
        self.tag = tag              #: the TAG (without '@'), or None; UDP only
        self.protocol = protocol    #: "udp" or "http"
        self.method = method        #: HTTP method ("GET", "HEAD", ...); None for UDP
        self.path = path            #: HTTP path without the query, e.g. "/v1/BTC"; None for UDP
        self.query = query          #: HTTP query string without '?', "" when none
        self._addr = addr
        self._reader = reader
        self._conn = conn           # HTTP: (connection slot, generation) in worker `_reader`

    @property
    def client(self) -> Optional[tuple[str, int]]:
        """The client's (host, port), decoded from its socket address."""
        return decode_sockaddr(self._addr)

    def __repr__(self) -> str:
        if self.protocol == "http":
            return (f"MissRequest(key={self.key!r}, protocol='http', method={self.method!r},"
                    f" path={self.path!r})")
        return f"MissRequest(key={self.key!r}, protocol={self.protocol!r}, tag={self.tag!r})"


@dataclass(frozen=True)
class Answer:
    """A handler's answer with options.  `cache=True` publishes it to the table,
    so the next request for the key is a native hit."""

    body: Union[bytes, str, dict, list]
    cache: bool = False
    content_type: str = "application/json"
    status: int = 200           #: HTTP status (UDP sends the body only); 429/503 add Retry-After
    allow: Optional[str] = None     #: with status 405, the methods the path takes ("GET, HEAD")


HandlerResult = Union[bytes, str, dict, list, Answer, None]
MissHandler = Callable[[MissRequest], Union[HandlerResult, Awaitable[HandlerResult]]]


def error_answer(name: str, detail: Optional[str] = None, *, allow: Optional[str] = None,
                 **fields: Any) -> Answer:
    """The answer for error `name` of the shared vocabulary (`ERROR_STATUS`
    lists the names): its HTTP status and, without `detail` or `fields`, the
    very bytes the engines send.  `detail`: one sentence saying why, sent as
    {"error": name, "detail": ...} (with any `fields` beside).  `allow`: the
    methods a 405 names in its Allow header.  An unknown name is a KeyError."""
    status = ERROR_STATUS[name]
    if detail is None and not fields:
        return Answer(ERROR_BODIES[name], status=status, allow=allow)
    body: dict[str, Any] = {"error": name}
    if detail is not None:
        body["detail"] = detail
    body.update(fields)
    return Answer(body, status=status, allow=allow)


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    return orjson.dumps(body)


#: How often the control loop tells its engines it is alive (seconds).
CONTROL_BEAT_S = 0.25


class ControlPlane:
    """A uvloop loop running on a daemon thread, started and stopped with a server.

    Several servers may share one: create it, ``start()`` it, pass it to each
    server as ``control=``, and ``stop()`` it after the servers.  A server
    never starts or stops a control plane it was given.

    The loop beats every `CONTROL_BEAT_S` into the engines it serves
    (`watch`): when a blocked loop misses beats past an engine's bound, the
    engine's native threads see it without asking the loop (stale answers,
    /healthz 503; docs/serve.md).
    """

    def __init__(self, name: str = "beastnet-control") -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        # Replaced, never mutated: the loop iterates it while servers watch.
        self._watched: tuple[tuple[Any, float], ...] = ()
        self._last_beat = 0.0

    def watch(self, engine: Any, stall_s: float) -> None:
        """Beat into `engine` (a native engine) until `unwatch`; its threads
        count the control plane stalled once a beat is `stall_s` old (0 = never)."""
        engine.control_watch(stall_s)
        self._watched = self._watched + ((engine, stall_s),)

    def unwatch(self, engine: Any) -> None:
        """Stop beating into `engine`; it stops judging the control plane."""
        self._watched = tuple(w for w in self._watched if w[0] is not engine)
        engine.control_watch(0.0)

    def _beat(self) -> None:
        now = time.monotonic()
        for engine, _ in self._watched:
            engine.control_beat()
        # Said once the loop runs again: the engines' 503s and stale answers
        # of the gap have their cause in the log.
        bounds = [stall_s for _, stall_s in self._watched if stall_s > 0]
        if self._last_beat and bounds and now - self._last_beat > min(bounds):
            log.warning("the control loop was blocked for %.1f s: the engines served prices"
                        " as stale and /healthz 503 past %.1f s", now - self._last_beat,
                        min(bounds))
        self._last_beat = now
        self.loop.call_later(CONTROL_BEAT_S, self._beat)

    def start(self) -> None:
        """Start the loop's thread; returns once the loop runs."""
        self._thread.start()
        self._ready.wait()

    @property
    def running(self) -> bool:
        """Whether the loop's thread runs (started and not yet stopped)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.call_soon(self._beat)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Any:
        """Run `fn(*args)` on the loop thread and return its result."""
        async def call() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending tasks are cancelled) and join its thread:
        on return the loop is closed and its file descriptors with it.  (The
        join waited 1 s: beside a CPU hog, a service's loop still ending its
        cancelled feed tasks outlived it and its fds outlived stop().)"""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("control loop: still ending its tasks %.0f s after stop()", timeout)


class MissDispatcher:
    """Drains an engine's miss queue on the control loop and answers each miss.

    At most `max_inflight` handler calls run at once; past that the dispatcher
    stops draining, the native queue fills, and readers answer `busy` -- so a
    slow handler costs misses, never hits, and never unbounded memory.
    """

    def __init__(self, engine: Any, table: Any, handler: MissHandler, protocol: str,
                 max_inflight: int) -> None:
        self.engine = engine
        self.table = table
        self.handler = handler
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.inflight = 0
        self.calls = 0
        self.errors = 0
        self.replies = 0
        self.cached = 0
        self.cache_refused = 0
        self.send_errors = 0
        self.last_error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._drain_scheduled = False
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.engine.miss_fd, self._on_readable)

    def detach(self) -> None:
        # After this no queued miss is popped: the loop is about to cancel its
        # tasks, and a handler started now would be destroyed still pending.
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.engine.miss_fd)

    def counters(self) -> dict:
        return {
            "handler_calls": self.calls,
            "handler_errors": self.errors,
            "handler_inflight": self.inflight,
            "miss_replies": self.replies,
            "miss_cached": self.cached,
            "miss_cache_refused": self.cache_refused,
            "miss_send_errors": self.send_errors,
        }

    def _on_readable(self) -> None:
        self.engine.drain_eventfd()
        self._drain()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None and not self._closed:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._closed:
            return
        room = self.max_inflight - self.inflight
        if room <= 0:
            return                      # a finishing call reschedules us
        misses = self.engine.pop_misses(min(room, 256))
        for item in misses:
            request, tag = self._request(item)
            self._call(request, tag)
        if len(misses) == min(room, 256):
            self._schedule_drain()      # the eventfd is already drained: look again

    def _request(self, item: tuple) -> tuple[MissRequest, bytes]:
        """A queued record as the handler's MissRequest (and the UDP tag prefix).
        Both engines hand over one record shape (see `pop_misses`)."""
        thread, conn, gen, addr, tag, method, target, key, api_key = item
        path, _, query = target.partition("?") if target is not None else (None, "", "")
        return MissRequest(key, api_key, tag[1:-1].decode("ascii") if tag else None,
                           self.protocol, addr, thread, method=method, path=path, query=query,
                           conn=(conn, gen)), tag

    def _call(self, request: MissRequest, tag: bytes) -> None:
        self.calls += 1
        try:
            result = self.handler(request)
        except Exception as exc:
            self._failed(request, tag, exc)
            return
        if inspect.isawaitable(result):
            self.inflight += 1
            assert self._loop is not None
            task: "asyncio.Task[Any]" = self._loop.create_task(result)  # type: ignore[arg-type]
            task.add_done_callback(functools.partial(self._finished, request=request, tag=tag))
        else:
            self._reply(request, tag, result)

    def _finished(self, task: "asyncio.Task[Any]", *, request: MissRequest, tag: bytes) -> None:
        self.inflight -= 1
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._failed(request, tag, exc)
            else:
                self._reply(request, tag, task.result())
        self._schedule_drain()

    def _failed(self, request: MissRequest, tag: bytes, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = exc
        if self.errors == 1 or self.errors % 1000 == 0:
            log.error("miss handler raised for %r (%d errors so far)", request, self.errors,
                      exc_info=exc)
        self._send(request, tag, ERROR_BODIES["internal_error"], ERROR_STATUS["internal_error"])

    def _reply(self, request: MissRequest, tag: bytes, result: HandlerResult) -> None:
        if result is None:
            self._send(request, tag, ERROR_BODIES["not_found"], ERROR_STATUS["not_found"])
            return
        status, content_type, allow = 200, "application/json", None
        try:
            if isinstance(result, Answer):
                body = _encode(result.body)
                status, content_type, allow = result.status, result.content_type, result.allow
                if result.cache and request.key is not None:
                    try:
                        self.table.set(request.key, body, content_type=result.content_type)
                        self.cached += 1
                    except TableFullError:
                        # The cap protects the table from keys clients choose:
                        # the client still gets its answer, only the cache refuses.
                        self.cache_refused += 1
            else:
                body = _encode(result)
        except Exception as exc:        # unencodable result: the handler's bug
            self._failed(request, tag, exc)
            return
        self._send(request, tag, body, status, content_type, allow)

    def _send(self, request: MissRequest, tag: bytes, body: bytes, status: int = 200,
              content_type: str = "application/json", allow: Optional[str] = None) -> None:
        conn, gen = request._conn if request._conn is not None else (0, 0)
        extra = {"allow": allow} if allow and request.protocol == "http" else {}
        try:
            rc = self.engine.send_reply(request._reader, conn, gen, request._addr, tag,
                                        status, content_type, body, **extra)
        except ValueError as exc:       # a status or content type the wire cannot carry
            self.errors += 1
            self.last_error = exc
            rc = self.engine.send_reply(request._reader, conn, gen, request._addr, tag,
                                        500, "application/json", ERROR_BODIES["internal_error"])
        if rc == 0:
            self.replies += 1
        else:
            self.send_errors += 1
