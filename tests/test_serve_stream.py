"""`beastnet serve`'s WebSocket price stream and its live page: who may
stream (partners by default, per tier in the config), prices pushed as the
feed publishes them, the feed's health on its own topic, and the page itself
rendered by a real browser whose numbers change."""
from __future__ import annotations

import asyncio
import os

import orjson
import pytest
import websockets

import test_serve
from browser import Browser, needs_chromium
from test_serve import add_key

pytestmark = pytest.mark.timeout(90)

serve = test_serve.serve       # the fixture: `beastnet serve` processes, killed after the test


def stream_url(server, key: str = "") -> str:
    return f"ws://127.0.0.1:{server.http_port}/v1/stream" + (f"?api_key={key}" if key else "")


async def first_prices(url: str, symbols: list[str], count: int) -> list[dict]:
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "symbols": symbols}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == "subscribed"
        return [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(count)]


def test_prices_are_pushed_as_the_feed_publishes(serve):
    server = serve("--no-keys")
    try:
        prices = asyncio.run(first_prices(stream_url(server), ["BTC", "ETH"], 8))
        health = asyncio.run(first_prices(stream_url(server), ["feed.health"], 1))[0]
    finally:
        assert server.terminate() == 0
    btc = [p for p in prices if p["asset"] == "BTC"]
    assert {p["asset"] for p in prices} == {"BTC", "ETH"}
    assert len(btc) >= 3 and [p["seq"] for p in btc] == sorted(p["seq"] for p in btc)
    assert btc[-1]["seq"] > btc[0]["seq"]             # new rounds, not one snapshot repeated
    assert set(health["sources"]) == {"sim-a", "sim-b"}


def test_partners_stream_by_default_other_tiers_per_config(serve, tmp_path):
    db = tmp_path / "keys.db"
    add_key(db, "partner", "partner-key-00001")
    add_key(db, "public", "public-key-000001")
    add_key(db, "pro", "pro-key-000000001")
    config = "[tiers.pro]\nstream = true\nstream_connections = 1\nstream_symbols = 2\n"
    server = serve("--keystore", str(db), config=config)

    async def run():
        assert len(await first_prices(stream_url(server, "partner-key-00001"), ["BTC"], 1)) == 1
        for key, status in (("public-key-000001", 403), ("nobody-000000000", 401)):
            with pytest.raises(websockets.InvalidStatus) as refused:
                await first_prices(stream_url(server, key), ["BTC"], 1)
            assert refused.value.response.status_code == status, key
        # No key at the upgrade: the stream opens, and its first message must be the auth.
        async with websockets.connect(stream_url(server, "")) as ws:
            await ws.send('{"op":"subscribe","symbols":["BTC"]}')
            assert orjson.loads(await ws.recv()) == {"op": "error", "error": "auth_required"}
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008
        async with websockets.connect(stream_url(server, "pro-key-000000001")) as ws:
            await ws.send('{"op":"subscribe","symbols":["BTC","ETH","SOL"]}')
            assert orjson.loads(await ws.recv()) == {"op": "error", "error": "subscription_limit"}
            with pytest.raises(websockets.InvalidStatus) as second:
                await first_prices(stream_url(server, "pro-key-000000001"), ["BTC"], 1)
            assert second.value.response.status_code == 429
    try:
        asyncio.run(run())
    finally:
        assert server.terminate() == 0


def test_the_stream_can_be_turned_off(serve):
    server = serve("--no-keys", config="stream = false\n")
    try:
        with pytest.raises(websockets.InvalidStatus) as off:
            asyncio.run(first_prices(stream_url(server), ["BTC"], 1))
        assert off.value.response.status_code == 404
        status, headers, page = server.http("GET", "/")
        assert status == 200 and b'"path":null' in page
    finally:
        assert server.terminate() == 0


@needs_chromium()
def test_the_live_page_connects_and_its_numbers_change(serve, tmp_path):
    server = serve("--no-keys")
    try:
        status, headers, _ = server.http("GET", "/dashboard")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        with Browser() as browser:
            browser.open(f"http://127.0.0.1:{server.http_port}/")
            browser.wait_for("document.getElementById('status').textContent === 'open'")
            price = "document.querySelector('[data-asset=BTC] .price').textContent"
            first = browser.wait_for(f"{price} !== '–' && {price}")
            browser.wait_for(f"{price} !== {first!r}", timeout_s=10)
            assert browser.eval("document.querySelectorAll('.asset').length") == 150
            assert "sim-a" in browser.wait_for(
                "document.getElementById('sources').textContent.includes('sim-a') && "
                "document.getElementById('sources').textContent")
            browser.wait_for("parseInt(document.getElementById('updates').textContent) > 150")
            assert browser.errors == []
            browser.screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        assert server.terminate() == 0


@needs_chromium()
def test_the_live_page_says_why_a_keyed_stream_is_refused_and_takes_a_key(serve, tmp_path):
    """Under keys the browser only sees close code 1006 for a refused
    handshake; the page must say why in words and take a key that works."""
    db = tmp_path / "keys.db"
    add_key(db, "partner", "partner-key-00001")
    add_key(db, "public", "public-key-000001")
    server = serve("--keystore", str(db))
    problem = "document.getElementById('problem')"
    shown = f"!{problem}.hidden && {problem}.textContent"

    def enter(browser, key: str) -> None:
        browser.eval(f"document.getElementById('key').value = {key!r}; "
                     "document.querySelector('#keyform button').click()")

    try:
        with Browser() as browser:
            browser.open(f"http://127.0.0.1:{server.http_port}/")
            assert browser.eval(f"!!{problem} && !!document.getElementById('key')")
            text = browser.wait_for(f"{shown}.includes('needs an API key') && {shown}")
            assert "(partner)" in text                      # the tiers that may stream
            assert browser.eval("document.activeElement.id") == "key"
            assert browser.eval("document.getElementById('status').textContent") == "closed"
            browser.screenshot(str(tmp_path / "no-key.png"))
            enter(browser, "public-key-000001")
            browser.wait_for(f"{shown}.includes('may not open the stream')")
            enter(browser, "nobody-000000000")
            browser.wait_for(f"{shown}.includes('does not know this API key')")
            enter(browser, "partner-key-00001")
            browser.wait_for("document.getElementById('status').textContent === 'open'")
            assert browser.eval(f"{problem}.hidden")
            price = "document.querySelector('[data-asset=BTC] .price').textContent"
            browser.wait_for(f"{price} !== '–'")
            assert browser.errors == []
    finally:
        assert server.terminate() == 0
    assert (tmp_path / "no-key.png").stat().st_size > 10_000


@needs_chromium()
def test_the_live_page_says_when_the_server_goes_away(serve):
    server = serve("--no-keys")
    problem = "document.getElementById('problem')"
    try:
        with Browser() as browser:
            browser.open(f"http://127.0.0.1:{server.http_port}/")
            browser.wait_for("document.getElementById('status').textContent === 'open'")
            assert browser.eval(f"{problem}.hidden")
            assert server.terminate() == 0                  # a drain: the stream ends
            text = browser.wait_for(f"!{problem}.hidden && {problem}.textContent")
            assert text.startswith(("The stream closed.", "Cannot reach the stream.")), text
            browser.wait_for(f"{problem}.textContent.startsWith('Cannot reach the stream.')")
            # it keeps trying (status "connecting" between tries), the banner stays up
            browser.wait_for("document.getElementById('status').textContent === "
                             "'closed, retrying'")
            assert not browser.eval(f"{problem}.hidden")
            # Chromium's own temporary directory is under the browser's, not /tmp's
            assert any(n.startswith("org.chromium.") for n in
                       os.listdir(os.path.join(browser.root, "tmp"))), browser.root
        assert not os.path.exists(browser.root)    # nothing left behind
    finally:
        server.kill()
