"""Helpers shared by the HTTP engine tests: a raw-socket client and a minimal
response splitter (for pipelining checks the stdlib clients cannot do)."""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

import orjson

from beastnet.serve.assets import price_body

BODIES = {a: price_body(a, p, 1700000000000) for a, p in (("BTC", 64000.5), ("ETH", 3100.25),
                                                          ("SOL", 150.0))}


def rss_kb() -> int:
    """This process's resident set size (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def connect(server, timeout: float = 5.0) -> socket.socket:
    host, port = server.address[:2]
    return socket.create_connection((host, port), timeout=timeout)


def get(key: str, *, extra: str = "", version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} /v1/{key} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """All bytes until the peer closes: (data, how) with how in eof/reset/timeout."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        except socket.timeout:
            return data, "timeout"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "timeout"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:60]!r})"


def split_responses(data: bytes, head_only: Optional[list[bool]] = None) -> tuple[list[Response], bytes]:
    """Split a byte stream into complete responses; returns (responses, rest)."""
    out = []
    i = 0
    while True:
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            break
        lines = data[i:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if head_only is not None and len(out) < len(head_only) and head_only[len(out)]:
            length = 0
        if end + 4 + length > len(data):
            break
        out.append(Response(status, headers, data[end + 4:end + 4 + length]))
        i = end + 4 + length
    return out, data[i:]


def exchange(server, payload: bytes, expect: int, timeout: float = 5.0,
             head_only: Optional[list[bool]] = None) -> list[Response]:
    """Send `payload` on a new connection and read `expect` responses."""
    with connect(server, timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            responses, _ = split_responses(data, head_only)
            if len(responses) >= expect:
                return responses
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return split_responses(data, head_only)[0]
