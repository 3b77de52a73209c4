"""The exchange feeds' native WebSocket client (serve/feeds/exchanges/wsclient.py,
on the engine's WSClientReader) against a raw TCP peer that writes exactly
the bytes each test chooses: frames split across reads, several frames in
one read, fragmented messages, ping/pong/close, and a hostile peer
(oversized length, bad opcode, a wrong handshake) that is counted, dropped
and redialled.

Every wait waits on a state (a message, the peer's record, a counter); the
assertions after it decide the result.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any, Awaitable, Callable, Optional

import orjson
import pytest

from beastnet import ResponseTable, ws_accept_key
from beastnet._core import ws_frame, ws_parse
from beastnet.serve.feeds import PricePublisher
from beastnet.serve.feeds.exchanges import EXCHANGES, ExchangeConnection, ExchangeFeed
from beastnet.serve.feeds.exchanges.wsclient import WsProtocolError, open_stream
from fake_exchange import ticker
from support import until
from tls_support import tls_certs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(60)

Script = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


class RawPeer:
    """A WebSocket server in name only: it answers the opening handshake
    (or a wrong one), then runs `script(writer, n)` for its n-th connection
    (from 0) and records every frame the client sends (parsed natively)."""

    def __init__(self, script: Script, accept: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.script = script
        self.tls = tls                        # serve wss:// with this context
        self.accept = accept                  # a Sec-WebSocket-Accept to answer instead
        self.connections = 0
        self.client_frames: list[list[tuple[str, int, bytes]]] = []   # per connection
        self.ended = 0                        # connections the client ended
        self.server: Any = None

    async def start(self) -> "RawPeer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def url(self) -> str:
        port = self.server.sockets[0].getsockname()[1]
        return f"wss://localhost:{port}/ws" if self.tls else f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        frames: list[tuple[str, int, bytes]] = []
        self.client_frames.append(frames)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip().decode()
                       for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " +
                         (self.accept or ws_accept_key(key)).encode() + b"\r\n\r\n")
            script = asyncio.ensure_future(self.script(writer, n))
            buf = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                events, used = ws_parse(buf)
                frames.extend(events)
                buf = buf[used:]
            script.cancel()
            await asyncio.gather(script, return_exceptions=True)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.ended += 1
            writer.close()


def text(payload: bytes, fin: bool = True, opcode: int = 1) -> bytes:
    """A server frame (unmasked); fin=False for a fragment."""
    frame = bytearray(ws_frame(opcode, payload))
    if not fin:
        frame[0] &= 0x7F
    return bytes(frame)


async def drip(writer: asyncio.StreamWriter, data: bytes, pieces: list[int]) -> None:
    """Write `data` cut at `pieces` (byte counts), each piece on its own."""
    at = 0
    for size in pieces + [len(data)]:
        writer.write(data[at:at + size])
        await writer.drain()
        await asyncio.sleep(0.005)            # separate reads on the client's side
        at += size
        if at >= len(data):
            return


async def read_all(url: str) -> tuple[list[bytes], Optional[BaseException]]:
    """What open_stream('native').read() gives until the end, and how it ended."""
    ws = await open_stream(url, "native", 5.0)
    out: list[bytes] = []
    try:
        while True:
            raw = await ws.read()
            if raw is None:
                return out, None
            out.append(bytes(raw))
    except WsProtocolError as exc:
        return out, exc
    finally:
        ws.abort()


async def against(script: Script) -> tuple[list[bytes], Optional[BaseException], RawPeer]:
    """read_all() against a RawPeer running `script`, once the peer saw the
    connection end; the peer's record comes back with the result."""
    peer = await RawPeer(script).start()
    try:
        out, exc = await read_all(peer.url)
        assert await until(lambda: peer.ended >= 1)
        return out, exc, peer
    finally:
        await peer.stop()


def test_frames_split_across_reads_and_several_in_one_read():
    messages = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i * 40)) for i in range(12)]
    stream = b"".join(text(m) for m in messages) + ws_frame(8, (1000).to_bytes(2, "big"))

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        # 1-byte pieces through the first heads, then a cut inside a 16-bit
        # length, then everything left in one write.
        await drip(writer, stream, [1] * 6 + [3, 2, 150])

    out, exc, peer = asyncio.run(against(script))
    assert out == messages and exc is None
    # The peer's close echoed with its code (RFC 6455 5.5.1), then nothing.
    assert [f for f in peer.client_frames[0] if f[0] == "close"] == [("close", 1000, b"")]


def test_a_fragmented_message_with_a_ping_between_its_fragments():
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(text(b'{"a":', fin=False) + ws_frame(9, b"are you there") +
                     text(b'"bc', fin=False, opcode=0))
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(text(b'"}', opcode=0) + text(b"[1]") + ws_frame(10, b"unsolicited") +
                     ws_frame(8, (4001).to_bytes(2, "big") + b"bye"))
        await writer.drain()

    out, exc, peer = asyncio.run(against(script))
    assert out == [b'{"a":"bc"}', b"[1]"] and exc is None
    frames = peer.client_frames[0]
    assert ("pong", 0, b"are you there") in frames        # the ping's payload, at once
    assert frames[-1] == ("close", 4001, b"")              # the close echoed


@pytest.mark.parametrize("bad, code", [
    # a 64-bit length of 1 TiB: refused from the head, before any payload
    (b"\x81\x7f" + (1 << 40).to_bytes(8, "big"), 1009),
    (b"\x83\x00", 1002),                                   # opcode 3: reserved
    (b"\x81\x85\x01\x02\x03\x04abcde", 1002),              # a masked server frame
    (b"\x81\x02\xc3\x28", 1007),                           # a text frame that is not UTF-8
], ids=["oversized-length", "bad-opcode", "masked", "bad-utf8"])
def test_a_hostile_peer_is_refused_with_the_right_close(bad, code):
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(text(b'{"ok":1}') + bad + text(b'{"never":1}'))
        await writer.drain()

    out, exc, peer = asyncio.run(against(script))
    assert out == [b'{"ok":1}']                            # what came before, then nothing
    assert isinstance(exc, WsProtocolError) and f"closed {code}" in str(exc)
    assert peer.client_frames[0][-1] == ("close", code, b"")


def test_a_wrong_handshake_is_refused():
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(text(b"{}"))
        await writer.drain()

    async def scenario() -> BaseException:
        peer = await RawPeer(script, accept="dGhlIHNhbXBsZSBub25jZQ==").start()
        try:
            with pytest.raises(WsProtocolError) as info:
                await open_stream(peer.url, "native", 5.0)
            assert await until(lambda: peer.ended >= 1)
            return info.value
        finally:
            await peer.stop()

    assert "Sec-WebSocket-Accept" in str(asyncio.run(scenario()))


def test_a_feed_counts_a_broken_stream_drops_it_and_redials():
    """Coinbase's connection: the first stream sends a ticker, then a frame
    with a reserved opcode; the feed counts a protocol error, drops the
    connection, redials, and the second stream's prices (three frames in
    one write, handed over as one batch) are published."""
    symbol = EXCHANGES["coinbase"].symbol_of("BTC")

    def tick(price: str) -> bytes:
        return text(orjson.dumps(ticker("coinbase", symbol, price, 1.7e9)))

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            writer.write(tick("97000.10") + b"\x8b\x00")   # opcode 0xB: reserved control
        else:
            writer.write(tick("97000.20") + tick("97000.30") + tick("97000.40"))
        await writer.drain()
        await asyncio.sleep(30)                           # then silent (cancelled at the end)

    async def scenario() -> tuple[dict, dict, list[bytes]]:
        peer = await RawPeer(script).start()
        table = ResponseTable()
        publisher = PricePublisher(table, stale_after_s=5.0)
        conn = ExchangeConnection(EXCHANGES["coinbase"], ["BTC"], publisher.on_tick,
                                  ws_url=peer.url, rest_url="http://127.0.0.1:9",
                                  rest_interval_s=3600.0, backoff_base_s=0.01,
                                  backoff_max_s=0.05, connect_delay_s=0.0, ws_client="native")
        task = asyncio.ensure_future(conn.run())
        try:
            assert await until(lambda: conn.protocol_errors >= 1 and conn.ticks >= 4)
            return conn.health(), orjson.loads(table["BTC"]), peer.client_frames[0]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await peer.stop()

    health, published, first = asyncio.run(scenario())
    assert health["protocol_errors"] == 1 and health["reconnects"] >= 1
    assert health["messages"] == 4 and health["bad_messages"] == 0
    assert published["price"] == 97000.40 and published["source"] == "coinbase"
    assert first[-1] == ("close", 1002, b"")              # the first stream was told why
    assert "protocol error" in health["last_error"]


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "self-signed"])
def test_wss_verifies_the_exchanges_certificate(tls_certs, monkeypatch, trusted):  # noqa: F811
    """wss:// (every exchange's scheme): TLS with the system's trust store
    (here the test CA, through SSL_CERT_FILE, which OpenSSL reads when the
    default paths load); a certificate no CA signed is refused."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certs.ca))
    pair = tls_certs.server if trusted else tls_certs.self_signed
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(str(pair.cert), str(pair.key))

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(text(b'{"over":"tls"}') + ws_frame(8, (1000).to_bytes(2, "big")))
        await writer.drain()

    async def scenario() -> tuple[list[bytes], Optional[BaseException]]:
        peer = await RawPeer(script, tls=server_tls).start()
        try:
            return await read_all(peer.url)
        finally:
            await peer.stop()

    if trusted:
        assert asyncio.run(scenario()) == ([b'{"over":"tls"}'], None)
    else:
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(scenario())


def test_a_reads_ticks_are_each_checked_and_the_table_written_once_per_asset():
    """What the native client hands over per socket read goes through
    ExchangeConnection.on_batch between the publisher's begin_batch and
    end_batch: every tick is checked (a zero price refused, a jump refused,
    an older one out of order), and each asset's answer is written once,
    with the last accepted price; the replaced ones are counted."""
    feed = ExchangeFeed(routes={"BTC": ["coinbase"], "ETH": ["coinbase"]}, assets=["BTC", "ETH"])
    table = ResponseTable()
    publisher = PricePublisher(table, max_jump=0.2)
    writes: list[str] = []
    table_set, table_update = table.set, table.update
    publisher.table = type("Spy", (), {
        "set": lambda self, key, body: (writes.append(key), table_set(key, body)),
        "update": lambda self, bodies: (writes.extend(bodies), table_update(bodies))})()
    feed._sink = publisher.on_tick                # what deliver_to sets, without sockets
    feed._batch_hooks = (publisher.begin_batch, publisher.end_batch)
    conn = feed.connections["coinbase"]

    def msg(asset: str, price: str, ts: float) -> bytes:
        return orjson.dumps(ticker("coinbase", f"{asset}-USD", price, ts))

    conn.on_message(msg("BTC", "97000.00", 100.0))     # one message: written at once
    assert writes == ["BTC"]
    conn.on_batch([msg("BTC", "97000.50", 101.0), msg("ETH", "3500.10", 101.0),
                   msg("BTC", "0.0000", 102.0),         # not a price: refused
                   msg("BTC", "150000.00", 103.0),      # past max_jump: refused
                   msg("BTC", "96999.00", 90.0),        # older than the last: out of order
                   msg("BTC", "97001.25", 104.0), msg("ETH", "3500.20", 104.0)])
    health = publisher.health()
    assert sorted(writes[1:]) == ["BTC", "ETH"]        # once each for the read
    assert orjson.loads(table["BTC"])["price"] == 97001.25
    assert orjson.loads(table["ETH"])["price"] == 3500.20
    assert health["refused"] == 1 and health["refused_jumps"] == 1
    assert conn.out_of_order == 1 and conn.messages == 8
    assert health["conflated"] == 2 and health["published"] == 3
    assert publisher._pending is None                  # the batch was closed
