"""What UDPServer and HTTPServer share: address resolution, the bound
address, socket clean-up and the context-manager protocol."""
from __future__ import annotations

import socket
from typing import Any, Optional, TypeVar

from beastnet.errors import ServerError

_S = TypeVar("_S", bound="EngineServer")


def resolve(host: str, port: int, socktype: int) -> tuple[int, tuple]:
    """(family, sockaddr) to bind for `host`:`port` (names, IPv4 or IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socktype, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class EngineServer:
    """Base of the servers: subclasses implement start() and stop(), bind
    `_socks` and set `_address`."""

    _address: Optional[tuple] = None
    _socks: list[socket.socket]

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

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
