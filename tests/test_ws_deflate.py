"""permessage-deflate (RFC 7692) on the WebSocket feed: the negotiation, one
deflate per publication served to every compressing subscriber, compressed
client messages, and what a bad compressed frame closes with."""
from __future__ import annotations

import asyncio
import struct
import zlib

import orjson
import pytest
import websockets

from beastnet import HTTPServer, ResponseTable, WebSocketOptions
from support import wait_for
from test_websocket import RawClient
from ws_reference import CLOSE, PING, TEXT, build_frame

pytestmark = pytest.mark.timeout(90)

OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
ACCEPTED = (b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover;"
            b" client_no_context_takeover")
SUBSCRIBE = b'{"op":"subscribe","symbols":["BIG"]}'


def big_body(version: int, n: int = 4096) -> bytes:
    """Compressible JSON of about n bytes (prices repeat, as a feed's do)."""
    rows = ",".join(f'{{"p":{97000 + i % 7}.5,"q":{i % 11}}}' for i in range(n // 20))
    return f'{{"v":{version},"rows":[{rows}]}}'.encode()[:n - 1] + b"}"


def deflate(data: bytes) -> bytes:
    """A message as a permessage-deflate client sends it: raw deflate, sync flush,
    the trailing 00 00 ff ff removed."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


class DeflateClient(RawClient):
    """The raw client, with each frame's first byte (RSV1 = compressed)."""

    def next_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n, at = self.buf[1] & 0x7F, 2
                if n == 126:
                    n, at = struct.unpack_from("!H", self.buf, 2)[0], 4
                elif n == 127:
                    n, at = struct.unpack_from("!Q", self.buf, 2)[0], 10
                if len(self.buf) >= at + n:
                    b0, payload = self.buf[0], self.buf[at:at + n]
                    self.buf = self.buf[at + n:]
                    return b0, payload
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return -1, b""
            self.buf += chunk

    def subscribed(self) -> None:
        self.send(build_frame(TEXT, SUBSCRIBE))
        b0, payload = self.next_frame()         # the ack
        assert b0 == 0x80 | TEXT and orjson.loads(payload)["op"] == "subscribed"
        b0, payload = self.next_frame()         # the current value
        assert b0 & 0x0F == TEXT


@pytest.fixture
def table() -> ResponseTable:
    return ResponseTable({"BIG": big_body(0), "SMALL": b'{"p":1}'})


@pytest.fixture
def feed(table):
    options = WebSocketOptions(echo_path="/echo", max_message_bytes=65536)
    with HTTPServer(table, threads=2, websocket=options) as server:
        yield server


def totals(server) -> dict:
    return server.stats()["totals"]


def handshake_head(server, headers: str) -> bytes:
    client = DeflateClient(server, headers=headers)
    head = client.handshake().lower()
    client.close()
    assert head.startswith(b"http/1.1 101")
    return head


# -- the negotiation ----------------------------------------------------------------------

@pytest.mark.parametrize("offer, answer", [
    ("permessage-deflate", ACCEPTED + b"\r\n"),
    ("permessage-deflate; client_max_window_bits", ACCEPTED + b"\r\n"),
    ("permessage-deflate; server_max_window_bits=10",
     ACCEPTED + b"; server_max_window_bits=10\r\n"),
    ('permessage-deflate; server_max_window_bits="9"', ACCEPTED + b"; server_max_window_bits=9\r\n"),
    # Declined offers (RFC 7692 7.1): the next acceptable one is taken.
    ("permessage-deflate; server_max_window_bits=16, permessage-deflate",
     ACCEPTED + b"\r\n"),
    ("x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
     ACCEPTED + b"\r\n"),
    ("permessage-deflate; mystery=1", None),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; server_max_window_bits=08", None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("x-webkit-deflate-frame", None),
], ids=["plain", "client-bits", "server-bits", "quoted-bits", "bad-then-good", "other-then-good",
        "unknown-param", "bits-without-value", "leading-zero", "repeated", "value-on-flag",
        "other-extension"])
def test_the_offer_is_accepted_or_declined_as_rfc_7692_says(feed, offer, answer):
    head = handshake_head(feed, f"Sec-WebSocket-Extensions: {offer}\r\n")
    if answer is None:
        assert b"sec-websocket-extensions" not in head
    else:
        assert answer.rstrip(b"\r\n") in head.split(b"\r\n")


def test_no_offer_and_compression_off_negotiate_nothing(table, feed):
    assert b"sec-websocket-extensions" not in handshake_head(feed, "")
    with HTTPServer(table, websocket=WebSocketOptions(compress_min_bytes=0)) as off:
        assert b"sec-websocket-extensions" not in handshake_head(off, OFFER)
        assert "ws_deflated" not in totals(off)


# -- publications: deflated once, sent in the form each subscriber negotiated ---------------

def test_one_deflate_per_publication_serves_every_compressing_subscriber(feed, table):
    compressing = [DeflateClient(feed, headers=OFFER) for _ in range(3)]
    plain = DeflateClient(feed)
    for client in compressing + [plain]:
        client.handshake()
        client.subscribed()
    before = totals(feed)
    table.set("BIG", big_body(1))
    for client in compressing:
        b0, payload = client.next_frame()
        assert b0 == 0x80 | 0x40 | TEXT                 # FIN, RSV1, text
        assert inflate(payload) == big_body(1)
        assert len(payload) < len(big_body(1)) // 2
    b0, payload = plain.next_frame()
    assert b0 == 0x80 | TEXT and payload == big_body(1)
    wait_for(lambda: totals(feed)["ws_frames_compressed"] - before["ws_frames_compressed"] == 3)
    after = totals(feed)
    assert after["ws_deflated"] - before["ws_deflated"] == 1      # once, not per subscriber
    saved = after["ws_bytes_saved"] - before["ws_bytes_saved"]
    zlen = after["ws_deflate_bytes_out"] - before["ws_deflate_bytes_out"]
    assert after["ws_deflate_bytes_in"] - before["ws_deflate_bytes_in"] == len(big_body(1))
    assert saved >= 3 * (len(big_body(1)) - zlen) - 3 * 8  # frame heads differ by a few bytes
    assert after["ws_deflate_cpu_ns"] > before["ws_deflate_cpu_ns"]
    # Under the threshold: plain for everyone, nothing deflated.
    table.set("BIG", b'{"p":2}')
    for client in compressing + [plain]:
        assert client.next_frame() == (0x80 | TEXT, b'{"p":2}')
        client.close()
    assert totals(feed)["ws_deflated"] == after["ws_deflated"]


def test_a_window_smaller_than_the_body_gets_the_plain_frame(feed, table):
    small_window = DeflateClient(
        feed, headers="Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n")
    assert b"server_max_window_bits=9" in small_window.handshake()
    small_window.subscribed()
    table.set("BIG", big_body(2))                  # 4 KiB: past a 512-byte window
    assert small_window.next_frame() == (0x80 | TEXT, big_body(2))
    small_window.close()


def test_websockets_library_reads_the_compressed_feed(feed, table):
    async def run():
        async with websockets.connect(f"ws://{feed.address[0]}:{feed.address[1]}/v1/stream",
                                      compression="deflate") as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            await ws.send(SUBSCRIBE.decode())
            assert orjson.loads(await ws.recv())["op"] == "subscribed"
            await ws.recv()
            for version in range(3, 8):
                table.set("BIG", big_body(version))
                assert (await asyncio.wait_for(ws.recv(), 5)).encode() == big_body(version)
    asyncio.run(run())


# -- client messages --------------------------------------------------------------------------

def test_compressed_client_messages_are_inflated(feed):
    client = DeflateClient(feed, path="/echo", headers=OFFER)
    client.handshake()
    message = b"hello " * 2000
    client.send(build_frame(TEXT, deflate(message), rsv=4))
    b0, payload = client.next_frame()       # the echo answers compressed with compressed
    assert b0 == 0x80 | 0x40 | TEXT and inflate(payload) == message
    # Fragmented: RSV1 on the first frame only.
    z = deflate(b"fragments " * 300)
    client.send(build_frame(TEXT, z[:10], fin=False, rsv=4) + build_frame(0, z[10:]))
    b0, payload = client.next_frame()
    assert b0 == 0x80 | 0x40 | TEXT and inflate(payload) == b"fragments " * 300
    client.send(build_frame(TEXT, b"plain"))
    assert client.next_frame() == (0x80 | TEXT, b"plain")
    # The feed takes a compressed request as it takes a plain one.
    feed_client = DeflateClient(feed, headers=OFFER)
    feed_client.handshake()
    feed_client.send(build_frame(TEXT, deflate(SUBSCRIBE), rsv=4))
    b0, payload = feed_client.next_frame()
    assert orjson.loads(payload)["op"] == "subscribed"
    assert totals(feed)["ws_messages_inflated"] >= 3
    client.close()
    feed_client.close()


# -- bad input: each closes with its code, and a neighbour is served after it ----------------

@pytest.mark.parametrize("offer, frames, code", [
    (OFFER, build_frame(PING, deflate(b"ping"), rsv=4), 1002),
    ("", build_frame(TEXT, deflate(b"not negotiated"), rsv=4), 1002),
    (OFFER, build_frame(TEXT, deflate(b"a" * 200_000), rsv=4), 1009),
    (OFFER, build_frame(TEXT, deflate(b"truncated " * 500)[:-40], rsv=4), 1007),
    (OFFER, build_frame(TEXT, b"\xff\xff\xff\xff not deflate", rsv=4), 1007),
    (OFFER, build_frame(TEXT, deflate(b"\xff\xfe invalid utf-8"), rsv=4), 1007),
    (OFFER, build_frame(TEXT, b"a", fin=False) + build_frame(0, b"b", rsv=4), 1002),
], ids=["compressed-ping", "rsv1-not-negotiated", "bomb", "truncated", "not-deflate",
        "inflated-bad-utf8", "rsv1-on-continuation"])
def test_bad_compressed_input_closes_with_its_code(feed, table, offer, frames, code):
    neighbour = DeflateClient(feed, headers=OFFER)
    neighbour.handshake()
    neighbour.subscribed()
    bad = DeflateClient(feed, path="/echo", headers=offer)
    bad.handshake()
    bad.send(frames)
    assert bad.close_code() == code
    bad.close()
    table.set("BIG", big_body(9))
    b0, payload = neighbour.next_frame()
    assert b0 & 0x40 and inflate(payload) == big_body(9)
    neighbour.send(build_frame(PING, b"still"))
    assert neighbour.next_frame() == (0x80 | 0xA, b"still")
    neighbour.close()


def test_a_bomb_is_refused_with_at_most_the_limit_inflated(feed):
    """16 MiB of zeros deflate to 16 KiB: the limit (64 KiB) stops inflating."""
    bad = DeflateClient(feed, path="/echo", headers=OFFER)
    bad.handshake()
    bad.send(build_frame(TEXT, deflate(b"\x00" * (16 << 20)), rsv=4))
    assert bad.close_code() == 1009
    bad.close()
    assert totals(feed)["ws_close_too_big"] >= 1


def test_close_frame_after_compressed_messages_still_echoes(feed):
    client = DeflateClient(feed, path="/echo", headers=OFFER)
    client.handshake()
    client.send(build_frame(TEXT, deflate(b"x" * 3000), rsv=4))
    b0, payload = client.next_frame()
    assert b0 & 0x40 and inflate(payload) == b"x" * 3000
    client.send(build_frame(CLOSE, struct.pack("!H", 1000)))
    assert client.close_code() == 1000
    client.close()
