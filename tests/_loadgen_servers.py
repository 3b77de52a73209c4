"""Servers whose behaviour is known exactly, for testing the load generator.

Written in plain Python so they share no code with what they test.  Each runs
one thread around select() (microsecond timeouts: asyncio's epoll would round
a 2 ms delay to whole milliseconds) and is stopped by `close()`.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import select
import socket
import struct
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar

BODY = b'{"v":1}'
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
T = TypeVar("T", bound="_UDPServerThread")
SPIN_S = 0.0002                 # the last 200 µs of a delay are spun, not slept


def tag_of(data: bytes) -> bytes:
    """The "@TAG " prefix of a request (with its space), or b""."""
    if data.startswith(b"@"):
        space = data.find(b" ")
        if space > 0:
            return data[:space + 1]
    return b""


class _UDPServerThread:
    """A socket served by one thread until `close()`; a context manager."""

    sock: socket.socket
    _stop: threading.Event
    _thread: threading.Thread

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedUDPServer(_UDPServerThread):
    """A UDP server whose every reply follows a script.

    delay_s     every reply leaves this long after its request arrived
    drop_every  requests number n, 2n, 3n... get no reply
    stall_at_s  once, this long after the first request, stop for stall_s
    replies     function(request) -> list of datagrams to answer with
                (default: the request's tag + BODY)
    """

    def __init__(self, *, delay_s: float = 0.0, drop_every: int = 0,
                 stall_at_s: Optional[float] = None, stall_s: float = 0.0,
                 replies: Optional[Callable[[bytes], list]] = None,
                 host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        # Kernel arrival times: a delay runs from when the datagram arrived,
        # not from when this Python thread got round to reading it.
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.port = self.sock.getsockname()[1]
        self.delay_s = delay_s
        self.drop_every = drop_every
        self.stall_at_s = stall_at_s
        self.stall_s = stall_s
        self.replies = replies or (lambda data: [tag_of(data) + BODY])
        self.requests = 0
        self.dropped = 0
        self.sent = 0
        self.stalled_at: Optional[float] = None
        self.seen: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:                            # 1 ns timer slack: wake-ups on time, not 50 µs late
            ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        pending: collections.deque = collections.deque()      # (due, datagram, addr)
        first: Optional[float] = None
        while not self._stop.is_set():
            timeout = 0.05
            if pending:
                timeout = max(0.0, min(timeout, pending[0][0] - SPIN_S - time.time()))
            readable, _, _ = select.select([self.sock], [], [], timeout)
            now = time.time()
            if readable:
                while True:
                    try:
                        data, anc, _, addr = self.sock.recvmsg(65536, 64)
                    except BlockingIOError:
                        break
                    arrived = now
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", raw[:16])
                            arrived = min(now, sec + nsec * 1e-9)
                    self.requests += 1
                    if first is None:
                        first = now
                    self.seen[data.split(b" ")[1] if data.startswith(b"@") else data] += 1
                    if self.drop_every and self.requests % self.drop_every == 0:
                        self.dropped += 1
                        continue
                    for reply in self.replies(data):
                        if self.delay_s:
                            pending.append((arrived + self.delay_s, reply, addr))
                        else:
                            self._send(reply, addr)
                    if (self.stall_at_s is not None and self.stalled_at is None
                            and now - first >= self.stall_at_s):
                        self.stalled_at = now
                        time.sleep(self.stall_s)
                        break
            if pending and pending[0][0] - time.time() <= SPIN_S:
                while time.time() < pending[0][0]:
                    pass
            now = time.time()
            while pending and pending[0][0] <= now:
                _, reply, addr = pending.popleft()
                self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple) -> None:
        try:
            self.sock.sendto(reply, addr)
            self.sent += 1
        except OSError:
            pass



class WindowProbeUDPServer(_UDPServerThread):
    """Answers a source address when `depth` of its requests are outstanding,
    all of them at once, or when its oldest has waited `hold_s` (the end of a
    run leaves windows part full).  A client keeping a window of `depth` per
    socket runs at full speed; one keeping less crawls at one batch per
    `hold_s`.  `most_outstanding` records, per source address, the most
    requests it ever had waiting, `batches` the full batches answered and
    `held` the part-full ones the timer released."""

    def __init__(self, depth: int, hold_s: float = 1.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.depth = depth
        self.hold_s = hold_s
        self.waiting: dict = collections.defaultdict(list)
        self.oldest: dict = {}
        self.most_outstanding: collections.Counter = collections.Counter()
        self.batches: collections.Counter = collections.Counter()
        self.held: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.sock], [], [], 0.02)
            now = time.monotonic()
            while readable:
                try:
                    data, addr = self.sock.recvfrom(65536)
                except BlockingIOError:
                    break
                waiting = self.waiting[addr]
                if not waiting:
                    self.oldest[addr] = now
                waiting.append(tag_of(data) + BODY)
                self.most_outstanding[addr] = max(self.most_outstanding[addr], len(waiting))
                if len(waiting) == self.depth:
                    self._answer(addr)
                    self.batches[addr] += 1
            for addr, since in list(self.oldest.items()):
                if now - since >= self.hold_s:
                    self._answer(addr)
                    self.held[addr] += 1

    def _answer(self, addr: tuple) -> None:
        for reply in self.waiting[addr]:
            self.sock.sendto(reply, addr)
        self.waiting[addr].clear()
        del self.oldest[addr]



class ScriptedTCPServer:
    """A TCP server that hands every accepted connection to `handle(conn)` on
    its own thread; for HTTP behaviours no stock server would show."""

    def __init__(self, handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.accepted = 0
        self._stop = threading.Event()
        self._conns: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> "ScriptedTCPServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_requests(conn: socket.socket):
    """Yield each HTTP request head read from `conn` (as bytes) until EOF."""
    buf = b""
    conn.settimeout(5.0)
    while True:
        while b"\r\n\r\n" not in buf:
            try:
                data = conn.recv(65536)
            except (socket.timeout, OSError):
                return
            if not data:
                return
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        yield head


def precise_sleep(seconds: float) -> None:
    """Sleep, then spin the last SPIN_S: Python's sleep alone overshoots by
    tens of microseconds, which a 2 ms test would see."""
    end = time.perf_counter() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < end:
        pass


@contextlib.contextmanager
def beastnet_price_server() -> Iterator[int]:
    """The real engine answering BTC and ETH on a loopback port (yielded)."""
    from beastnet import ResponseTable, UDPServer
    table = ResponseTable()
    table["BTC"] = b'{"p":1}'
    table["ETH"] = b'{"p":2}'
    with UDPServer(table, "127.0.0.1", 0, sockets=2) as server:
        yield server.address[1]
