"""Reading what an upstream HTTP server answers, within a size bound.

The server reads bodies it did not ask to be large: a webhook receiver's
answer to a delivery, an exchange's REST ticker.  Either end may be hostile
or broken, and `await resp.read()` keeps whatever arrives: four receivers
answering 500 MB each once took a node from 81 MB to 2.3 GB.  Every upstream
body read in `serve/` goes through `read_capped`, which keeps at most
`max_bytes` and closes the connection instead of draining the rest (a
drained connection could be reused, but draining a 500 MB answer costs the
time and bandwidth the bound is there to save).

aiohttp's reader buffers at most its read_bufsize (64 KiB) ahead of what we
consume and pauses the socket beyond it, so the bound holds on the wire too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_BYTES", "CappedBody", "read_capped"]

#: What a webhook receiver's answer needs (its status carries the meaning):
#: enough for an error message in the delivery log, nothing more.
DEFAULT_MAX_BYTES = 4096


@dataclass(frozen=True)
class CappedBody:
    """The first bytes of a body, and whether that was all of it."""

    data: bytes                 # at most the cap
    complete: bool              # False: the body was longer and the connection was closed


async def read_capped(resp: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> CappedBody:
    """Read at most `max_bytes` of an aiohttp ClientResponse's body.

    A longer body is cut: the connection is closed rather than returned to
    the pool, and `complete` is False.  A body cut by the peer before its
    announced end raises aiohttp.ClientPayloadError, as `resp.read()` would.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    chunks: list[bytes] = []
    got = 0
    # One byte past the cap tells "exactly the cap" from "longer".
    while got <= max_bytes:
        chunk = await resp.content.read(max_bytes + 1 - got)
        if not chunk:
            return CappedBody(b"".join(chunks), True)
        chunks.append(chunk)
        got += len(chunk)
    resp.close()
    return CappedBody(b"".join(chunks)[:max_bytes], False)
