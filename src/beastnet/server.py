"""UDPServer: the UDP engine, its sockets and its control plane."""
from __future__ import annotations

import logging
import os
import socket
import struct
import time
from typing import Any, Optional

from beastnet import _core
from beastnet._base import EngineServer, bind_member, require_at_least, resolve
from beastnet._core import APIKeyTable, ResponseTable
from beastnet.control import (ControlPlane, MissDispatcher, MissHandler, start_control_plane,
                              stop_control_plane, sum_counters)
from beastnet.errors import ServerError

__all__ = ["UDPServer"]

log = logging.getLogger("beastnet")

# Linux socket options the socket module does not name on every Python.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)

DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024
# Response-rate limiting of error replies per source (docs/protocol.md):
# NSD's default rate, a second's worth of burst, BIND's slip.
DEFAULT_RRL_RATE_PER_S = 200.0
DEFAULT_RRL_BURST = 200
DEFAULT_RRL_SLIP = 2
SEND_TIMEOUT_S = 0.05       # keep in step with SEND_TIMEOUT_MS in consts.pxi


def _set_buffer(sock: socket.socket, force_opt: int, opt: int, nbytes: int) -> int:
    """Ask for `nbytes`; past net.core.[rw]mem_max only root's *FORCE works.
    Returns what the kernel granted (it reports twice the payload room)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, nbytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, nbytes)
    return sock.getsockopt(socket.SOL_SOCKET, opt)


def _steering_plan(nsockets: int) -> tuple[Optional[list[int]], str]:
    """CPUs to pin readers to, or None with the reason steering is off."""
    if not _core.PLATFORM_LINUX:
        return None, "not Linux"
    allowed = sorted(os.sched_getaffinity(0))
    if allowed != list(range(len(allowed))):
        return None, f"process CPU set {allowed} is not 0..N-1"
    if nsockets != len(allowed):
        return None, f"{nsockets} sockets for {len(allowed)} CPUs (steering needs one per CPU)"
    return allowed, "ok"


class UDPServer(EngineServer):
    """Answers UDP requests from a `ResponseTable` on native threads.

    ``sockets`` SO_REUSEPORT sockets (default: one per CPU) are each served by
    a native thread that never takes the GIL: recvmmsg batches of ``batch``
    datagrams (``set_batch()`` changes it live, up to ``batch_capacity``),
    answers from pre-serialized bodies with sendmmsg.  A miss goes
    to ``handler`` (plain or async, run on the uvloop control plane) when one
    is given, else it is answered ``{"error":"not_found"}`` natively.  With
    ``api_keys``, every request must carry a known, unrevoked APIKEY within its
    rate limit and monthly cap (checked natively, before the table).

    Abuse: with ``silent_refusals`` (default: on when ``api_keys`` is given)
    unauthorized and malformed requests get no reply at all, so a spoofed
    request cannot be reflected.  Every other error reply is limited per
    source address (IPv4 /24, IPv6 /56) to ``rrl_rate_per_s`` a second after
    a burst of ``rrl_burst``; every ``rrl_slip``-th limited reply is sent as
    the bare tag (0: none), the rest are withheld.  ``rrl_rate_per_s=0``
    turns response-rate limiting off.  Hits are never limited, nor, unless
    ``rrl_exempt_loopback=False``, loopback clients (a loopback source cannot
    be forged from off the host).
    ``control``: a running `ControlPlane` to run ``handler`` on, shared with
    other servers (its owner starts and stops it); by default the server
    starts its own when it has a handler.  ``control_stall_s`` (default 2 s,
    0 = off): once that control plane's loop has not beaten for that long,
    the readers serve the ``"stale":true`` variant of bodies a
    ``stale_marking`` table keeps (docs/serve.md).

    A port another socket holds is refused (`ServerError`) unless
    ``reuse_port=True`` asks to share it: then the sockets join the other
    server's SO_REUSEPORT group and the kernel splits the traffic (a rolling
    restart, several processes on one host).

    Use as a context manager, call ``start()`` and ``stop()``, or
    ``serve_forever()`` to block until ``stop()`` or Ctrl-C.
    """

    def __init__(
        self,
        table: ResponseTable,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sockets: Optional[int] = None,
        batch: int = 32,
        batch_capacity: int = 0,
        max_datagram: int = 512,
        recv_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        send_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        cpu_steering: bool = True,
        handler: Optional[MissHandler] = None,
        miss_queue_size: int = 4096,
        max_inflight: Optional[int] = None,
        api_keys: Optional[APIKeyTable] = None,
        control: Optional[ControlPlane] = None,
        silent_refusals: Optional[bool] = None,
        rrl_rate_per_s: float = DEFAULT_RRL_RATE_PER_S,
        rrl_burst: int = DEFAULT_RRL_BURST,
        rrl_slip: int = DEFAULT_RRL_SLIP,
        rrl_exempt_loopback: bool = True,
        reuse_port: bool = False,
        control_stall_s: float = 2.0,
    ) -> None:
        super().__init__(table, host, port, handler=handler, miss_queue_size=miss_queue_size,
                         max_inflight=max_inflight, api_keys=api_keys, control=control,
                         reuse_port=reuse_port, control_stall_s=control_stall_s)
        nsockets = sockets if sockets is not None else len(os.sched_getaffinity(0))
        require_at_least("sockets", nsockets, 1)
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1..1024, got {batch}")
        if not 0 <= batch_capacity <= 1024:
            raise ValueError(f"batch_capacity must be 0..1024, got {batch_capacity}")
        require_at_least("rrl_rate_per_s", rrl_rate_per_s, 0)
        require_at_least("rrl_burst", rrl_burst, 1)
        require_at_least("rrl_slip", rrl_slip, 0)
        self.nsockets = nsockets
        self.batch = batch
        self.batch_capacity = max(batch, batch_capacity)
        self.max_datagram = max_datagram
        self.recv_buffer_bytes = recv_buffer_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.cpu_steering = cpu_steering
        self.silent_refusals = (api_keys is not None) if silent_refusals is None else silent_refusals
        self.rrl_rate_per_s = float(rrl_rate_per_s)
        self.rrl_burst = rrl_burst
        self.rrl_slip = rrl_slip
        self.rrl_exempt_loopback = rrl_exempt_loopback
        self._engine: Optional[_core.UDPEngine] = None
        self._watching: Optional[ControlPlane] = None   # beats into the engine
        self._steering: dict[str, Any] = {"enabled": False, "reason": "not started"}
        self._buffers: dict[str, Any] = {}
        self._started_at = 0.0
        self._running = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "UDPServer":
        """Bind the sockets and start the reader threads (and the control plane
        when there is a handler).  Returns self."""
        if self._running:
            raise ServerError("server already started")
        try:
            self._open_sockets()
            cpus = self._steer()
            self._engine = _core.UDPEngine(
                self.table, [s.fileno() for s in self._socks], batch=self.batch,
                batch_capacity=self.batch_capacity, max_datagram=self.max_datagram, cpus=cpus,
                miss_capacity=self.miss_queue_size if self.handler is not None else 0,
                api_keys=self.api_keys, silent_refusals=self.silent_refusals,
                rrl_rate_per_s=self.rrl_rate_per_s, rrl_burst=self.rrl_burst,
                rrl_slip=self.rrl_slip, rrl_exempt_loopback=self.rrl_exempt_loopback)
            if self.handler is not None:
                self._control = start_control_plane(self._shared_control, "beastnet-control")
                self._dispatcher = MissDispatcher(self._engine, self.table, self.handler, "udp",
                                                  self.max_inflight)
                self._control.run(self._dispatcher.attach, self._control.loop)
            # The readers judge the control plane they were given even without
            # a handler: it is the one publishing their prices.
            self._watching = self._control or self._shared_control
            if self._watching is not None:
                self._watching.watch(self._engine, self.control_stall_s)
            self._engine.start()
        except BaseException:
            self.stop()
            raise
        self._started_at = time.monotonic()
        self._running = True
        self._mark_started()
        oversize = self.table.memory_stats()["udp_oversize_keys"]
        if oversize:
            # Said once at start; entries set later show in stats()["abuse"].
            log.warning("%d table entries may not fit in one UDP datagram: UDP answers them"
                        ' {"error":"too_large"} where they do not (HTTP serves them whole)', oversize)
        return self

    def _open_sockets(self) -> None:
        family, sockaddr = resolve(self.host, self.port, socket.SOCK_DGRAM)
        recv_granted, send_granted = [], []
        for i in range(self.nsockets):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self._socks.append(sock)
            recv_granted.append(_set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF,
                                            self.recv_buffer_bytes))
            send_granted.append(_set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF,
                                            self.send_buffer_bytes))
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            # Bounds a reader blocked on a full send buffer, hence stop() latency.
            usec = int(SEND_TIMEOUT_S * 1e6)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, usec))
            bind_member(sock, sockaddr, self.host, first=i == 0, reuse_port=self.reuse_port)
            if sockaddr[1] == 0:        # later sockets join the port the first one got
                sockaddr = sock.getsockname()
        self._address = self._socks[0].getsockname()
        self._buffers = {
            "recv_requested": self.recv_buffer_bytes,
            "send_requested": self.send_buffer_bytes,
            "recv_granted": recv_granted,
            "send_granted": send_granted,
        }

    def _steer(self) -> Optional[list[int]]:
        if not self.cpu_steering:
            self._steering = {"enabled": False, "reason": "disabled"}
            return None
        cpus, reason = _steering_plan(self.nsockets)
        if cpus is not None:
            err = _core.attach_cpu_steering(self._socks[0].fileno(), self.nsockets)
            if err != 0:
                cpus, reason = None, f"SO_ATTACH_REUSEPORT_CBPF: {os.strerror(err)}"
        self._steering = {"enabled": cpus is not None, "reason": reason, "cpus": cpus}
        return cpus

    def stop(self) -> None:
        """Stop the readers, the control plane, and close the sockets.
        Idempotent; returns within a few tens of milliseconds.  The final
        counters stay readable through stats(); start() may be called again."""
        self._stop_serialized(self._stop_now)

    def _stop_now(self) -> None:
        self._running = False
        # The control plane goes first: the dispatcher must stop watching the
        # engine's miss eventfd before engine.stop() closes it.
        if self._watching is not None and self._engine is not None:
            self._watching.unwatch(self._engine)
            self._watching = None
        stop_control_plane(self._control, self._dispatcher,
                           owned=self._shared_control is None)
        self._control = None
        if self._engine is not None:
            self._engine.stop()
        self._close_sockets()

    def set_batch(self, batch: int) -> None:
        """Datagrams per recvmmsg from now on (live), 1..``batch_capacity``."""
        if not 1 <= batch <= self.batch_capacity:
            raise ValueError(f"batch must be 1..{self.batch_capacity}, got {batch}")
        if self._engine is not None:
            self._engine.set_batch(batch)
        self.batch = batch

    # -- introspection ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters summed over readers, per socket, and the server's set-up.

        ``avg_batch_fill`` is datagrams per recvmmsg call that returned data.
        """
        per_socket = self._engine.counters() if self._engine is not None else []
        totals = sum_counters(per_socket)
        if self._engine is not None:    # the miss handler's answers swapped for too_large
            totals["too_large"] = totals.get("too_large", 0) + self._engine.too_large_replies
        if self._dispatcher is not None:
            totals.update(self._dispatcher.counters())
        status = self._engine.reader_status() if self._engine is not None else []
        steering = dict(self._steering)
        pin_errors = [os.strerror(e) for e, _ in status if e]
        if steering.get("enabled") and pin_errors:
            steering["pin_errors"] = pin_errors
        batches = totals.get("rx_batches", 0)
        return {
            "address": self._address,
            "sockets": self.nsockets,
            "batch": self.batch,
            "uptime_s": time.monotonic() - self._started_at if self._started_at else 0.0,
            "steering": steering,
            "buffers": self._buffers,
            "totals": totals,
            "avg_batch_fill": totals.get("rx_packets", 0) / batches if batches else 0.0,
            "per_socket": per_socket,
            "reader_errors": [os.strerror(e) for _, e in status if e],
            "governor": self._engine.governor() if self._engine is not None else None,
            "abuse": {"silent_refusals": self.silent_refusals, "rrl_rate_per_s": self.rrl_rate_per_s,
                      "rrl_burst": self.rrl_burst, "rrl_slip": self.rrl_slip,
                      "rrl_exempt_loopback": self.rrl_exempt_loopback,
                      "table_udp_oversize_keys": self.table.memory_stats()["udp_oversize_keys"]},
        }
