"""read_capped, the one bounded read of upstream HTTP bodies, against a real
aiohttp server on loopback: bodies shorter than, exactly at, and one byte
past the cap, chunked ones, and one cut by the peer."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from beastnet.serve.upstream import read_capped

pytestmark = pytest.mark.timeout(60)

CAP = 1000


async def _handler(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["size"])
    if request.query.get("cut"):
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        await resp.write(b"y" * (size // 2))
        assert request.transport is not None
        request.transport.abort()
        return resp
    if request.query.get("chunked"):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, size, 300):
            await resp.write(b"x" * min(300, size - start))
        await resp.write_eof()
        return resp
    return web.Response(body=b"x" * size)


async def _fetch(path: str) -> tuple[bytes, bool]:
    app = web.Application()
    app.router.add_get("/{size}", _handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                body = await read_capped(resp, CAP)
                return body.data, body.complete
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("size, chunked", [(0, False), (1, False), (CAP - 1, False),
                                           (CAP, False), (CAP + 1, False), (10 * CAP, False),
                                           (CAP, True), (CAP + 1, True), (50 * CAP, True)])
def test_read_capped_keeps_at_most_the_cap(size, chunked):
    data, complete = asyncio.run(_fetch(f"/{size}" + ("?chunked=1" if chunked else "")))
    assert data == b"x" * min(size, CAP)
    assert complete == (size <= CAP), "complete exactly when the body fits the cap"


def test_a_body_cut_by_the_peer_raises():
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(_fetch("/400?cut=1"))


def test_a_negative_cap_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        asyncio.run(read_capped(None, -1))
