"""What UDPServer and HTTPServer share: address resolution, binding the
SO_REUSEPORT group, the bound address, socket clean-up, the shared constructor
arguments and serve_forever(); the context manager comes from `StartStop`."""
from __future__ import annotations

import errno
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from beastnet._core import APIKeyTable, ResponseTable
from beastnet._lifecycle import StartStop
from beastnet.errors import ServerError

if TYPE_CHECKING:
    from beastnet.control import ControlPlane, MissDispatcher, MissHandler


def require_at_least(name: str, value: float, least: float) -> None:
    """ValueError "`name` must be >= `least`, got `value`" unless `value`
    reaches `least` (written ``not >=`` so that a NaN is refused too)."""
    if not value >= least:
        raise ValueError(f"{name} must be >= {least}, got {value}")


def resolve(host: str, port: int, socktype: int) -> tuple[int, tuple]:
    """(family, sockaddr) to bind for `host`:`port` (names, IPv4 or IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def bind_member(sock: socket.socket, sockaddr: tuple, host: str, *, first: bool,
                reuse_port: bool) -> None:
    """Bind one socket of a server's SO_REUSEPORT group to `sockaddr`.

    The engines bind several SO_REUSEPORT sockets themselves, and the kernel
    lets any socket of the same user with SO_REUSEPORT join such a port, so a
    second server on an occupied port would bind without error and silently
    take part of the traffic.  Unless `reuse_port` asks for sharing, the first
    socket is bound *without* SO_REUSEPORT: that bind fails with EADDRINUSE
    exactly when another socket holds the port (a reuseport group included;
    TCP sets SO_REUSEADDR beforehand, so connections in TIME_WAIT do not
    count).  Only then is SO_REUSEPORT turned on, for the group's other
    sockets to join (Linux forms the group as they bind, or as TCP listens).
    Unlike a probe, there is no window between the check and the bind.
    """
    exclusive = first and not reuse_port
    if not exclusive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and exclusive:
            raise ServerError(f"bind {host}:{sockaddr[1]}: address already in use by another "
                              "socket; pick another port, or pass reuse_port=True to share it "
                              "(SO_REUSEPORT: the kernel splits the traffic)") from None
        raise ServerError(f"bind {host}:{sockaddr[1]}: {exc.strerror}") from None
    if exclusive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class EngineServer(StartStop):
    """Base of the servers: subclasses implement start() and stop(), bind
    `_socks` and set `_address`.

    It keeps and checks what both servers take alike: the table, the
    address, the miss ``handler`` with its queue (``miss_queue_size``) and
    concurrency (``max_inflight``, default: the queue's size), the API keys,
    a shared ``control`` plane, ``reuse_port`` and ``control_stall_s``."""

    _address: Optional[tuple] = None
    _socks: list[socket.socket]
    _engine: Any                        # the native engine (_core.NativeEngine) once started

    def __init__(self, table: ResponseTable, host: str, port: int, *,
                 handler: Optional["MissHandler"], miss_queue_size: int,
                 max_inflight: Optional[int], api_keys: Optional[APIKeyTable],
                 control: Optional["ControlPlane"], reuse_port: bool,
                 control_stall_s: float) -> None:
        if not isinstance(table, ResponseTable):
            raise TypeError("table must be a beastnet.ResponseTable")
        require_at_least("miss_queue_size", miss_queue_size, 1)
        require_at_least("control_stall_s", control_stall_s, 0)
        self.table = table
        self.host = host
        self.port = port
        self.handler = handler                  # None: misses are answered natively
        self.miss_queue_size = miss_queue_size
        self.max_inflight = max_inflight if max_inflight is not None else miss_queue_size
        self.api_keys = api_keys
        self.reuse_port = reuse_port
        self.control_stall_s = control_stall_s
        self._shared_control = control          # started and stopped by its owner
        self._socks = []
        self._control: Optional[ControlPlane] = None        # the one the server runs on
        self._dispatcher: Optional[MissDispatcher] = None
        self._address = None
        # Set while the server is not serving; serve_forever() waits on it.
        self._stopped: Optional[threading.Event] = None
        # stop() may come from several threads at once (a timer, a signal
        # handler, serve_forever's exit): joining native threads twice at once
        # is undefined, so stops run one at a time.  Reentrant, because a
        # signal handler may call stop() on the thread already inside it.
        self._stop_lock = threading.RLock()
        self._stopping = False

    def serve_forever(self) -> None:
        """Start the server unless it runs, then block until `stop()` is
        called (from another thread or a signal handler) or Ctrl-C; the
        server is stopped on the way out, so a KeyboardInterrupt ends it
        cleanly instead of propagating."""
        if self._stopped is None or self._stopped.is_set():
            self.start()
        stopped = self._stopped
        assert stopped is not None
        try:
            # Event.wait() is interrupted by SIGINT's KeyboardInterrupt on the main thread.
            stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _mark_started(self) -> None:
        self._stopped = threading.Event()

    def _stop_serialized(self, stop: Callable[[], None]) -> None:
        """Run a subclass's `stop` once at a time; a stop() nested in it (a
        signal handler on the same thread) returns at once: the outer one
        finishes the job.  A concurrent one waits, then finds nothing to do."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
            try:
                if self._stopped is not None:
                    self._stopped.set()
                stop()
            finally:
                self._stopping = False

    def set_governor(self, enabled: bool, *, min_limit: int = 4, max_limit: int = 1000,
                     target_ms: float = 50.0, tolerance: float = 1.5) -> None:
        """Switch the governor on or off (live): an adaptive limit on the
        requests waiting for the handler (HTTP: misses and routes; UDP:
        misses), moved by their measured latency; past it, requests of
        shed-first keys are shed (HTTP: 503 ``overloaded`` with
        ``Retry-After``; UDP: ``{"error":"overloaded"}``; counted in
        ``shed_public``), those of shed-last keys (``APIKeyTable.set(...,
        shed_last=True)``, partners) only past ``max_limit``
        (``shed_partner``).  Hits are never shed.  ``target_ms``: a mean
        latency above it shrinks the limit; ``tolerance``: how far the
        latency may rise over its long-term level first (docs/governor.md).
        A UDP server without a handler queues nothing and sheds nothing."""
        if self._engine is None:
            raise ServerError("set_governor() needs a started server")
        self._engine.set_governor(enabled, min_limit=min_limit, max_limit=max_limit,
                                  target_ms=target_ms, tolerance=tolerance)

    @property
    def address(self) -> tuple:
        """The bound (host, port[, flowinfo, scope_id]) once started."""
        if self._address is None:
            raise ServerError("server not started")
        return self._address

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []
