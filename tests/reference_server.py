"""The UDP protocol (docs/protocol.md) in plain Python: the second implementation
the live protocol tests run against (one suite, two implementations; see
docs/testing.md).  One blocking socket, one thread; replies come from
`support.expected_reply`, the reference grammar.
"""
from __future__ import annotations

import socket
import threading
from typing import Optional

from support import expected_reply


class ReferenceUDPServer:
    def __init__(self, table: dict[str, bytes], host: str = "127.0.0.1",
                 max_datagram: int = 512) -> None:
        self.table = {k.encode("ascii"): v for k, v in table.items()}
        self.host = host
        self.max_datagram = max_datagram
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def start(self) -> "ReferenceUDPServer":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.05)             # how often the loop looks at the stop flag
        self._thread = threading.Thread(target=self._serve, name="reference-udp", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> tuple:
        assert self._sock is not None
        return self._sock.getsockname()

    def stats(self) -> dict:
        return {"address": self.address}

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                # One byte more than a slot: a longer datagram is "truncated", as MSG_TRUNC says.
                data, addr = self._sock.recvfrom(self.max_datagram + 1)
            except socket.timeout:
                continue
            reply = expected_reply(data, self.table.get, self.max_datagram,
                                   payload_max=65527 if self._sock.family == socket.AF_INET6 else 65507)
            if reply is not None:               # None: owed no reply
                self._sock.sendto(reply, addr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
