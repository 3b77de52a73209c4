"""The native WebSocket frame reader (RFC 6455) against the plain-Python
reference in ws_reference.py: RFC vectors, every rule of section 5 with the
close code it earns, arbitrary frame sequences (hypothesis), splits at every
byte boundary, and the streaming UTF-8 check against CPython's decoder."""
from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beastnet._core import (WSClientReader, WSFrameReader, utf8_valid, ws_accept_key,
                            ws_client_frame, ws_frame, ws_parse)
import ws_reference as ref
from support import wait_for
from ws_reference import BINARY, CLOSE, CONT, PING, PONG, TEXT, build_frame

pytestmark = pytest.mark.timeout(120)

# Pure functions of bytes: cheap, so many examples whatever the profile.
CHEAP = settings(max_examples=1000, deadline=None)


def native(data: bytes, **limits: int) -> list:
    return ws_parse(data, **limits)[0]


# -- RFC 6455 section 5.7 examples and the handshake -------------------------------

@pytest.mark.io_free
def test_rfc_masked_hello():
    frame = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert ws_parse(frame) == ([("message", TEXT, b"Hello")], len(frame))


@pytest.mark.io_free
def test_rfc_masked_ping():
    frame = bytes([0x89, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    assert native(frame) == [("ping", 0, b"Hello")]


@pytest.mark.io_free
@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
def test_every_length_encoding_roundtrips(n):
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    assert native(build_frame(BINARY, payload), max_frame_bytes=1 << 20) == \
        [("message", BINARY, payload)]


@pytest.mark.io_free
def test_rfc_accept_key_example():
    assert ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.io_free
@CHEAP
@given(st.binary(min_size=0, max_size=200))
def test_accept_key_matches_hashlib(raw):
    key = base64.b64encode(raw).decode()
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert ws_accept_key(key) == expected


@pytest.mark.io_free
@pytest.mark.parametrize("n,head", [(0, b"\x81\x00"), (125, b"\x81\x7d"),
                                    (126, b"\x81\x7e\x00\x7e"), (65535, b"\x81\x7e\xff\xff"),
                                    (65536, b"\x81\x7f" + struct.pack("!Q", 65536))])
def test_server_frames_are_unmasked_with_the_shortest_length(n, head):
    frame = ws_frame(TEXT, b"a" * n)
    assert frame[:len(head)] == head and len(frame) == len(head) + n


# -- each framing rule, with its close code -------------------------------------

RULES = [
    ("unmasked client frame", build_frame(TEXT, b"hi", mask=None), 1002),
    ("RSV1 without an extension", build_frame(TEXT, b"hi", rsv=4), 1002),
    ("RSV3", build_frame(BINARY, b"", rsv=1), 1002),
    ("reserved data opcode 3", build_frame(3, b""), 1002),
    ("reserved control opcode 0xB", build_frame(0xB, b""), 1002),
    ("fragmented ping", build_frame(PING, b"x", fin=False), 1002),
    ("ping of 126 bytes", build_frame(PING, b"x" * 126), 1002),
    ("continuation with nothing to continue", build_frame(CONT, b"x"), 1002),
    ("new message inside a fragmented one",
     build_frame(TEXT, b"a", fin=False) + build_frame(TEXT, b"b"), 1002),
    ("close with a 1-byte payload", build_frame(CLOSE, b"\x03"), 1002),
    ("close code 1005 on the wire", build_frame(CLOSE, struct.pack("!H", 1005)), 1002),
    ("close code 999", build_frame(CLOSE, struct.pack("!H", 999)), 1002),
    ("close code 2000", build_frame(CLOSE, struct.pack("!H", 2000)), 1002),
    ("close reason not UTF-8", build_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
    ("text not UTF-8", build_frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
     1007),
    ("text ending mid-character", build_frame(TEXT, b"\xe2\x82"), 1007),
    ("fragmented text with a surrogate split across fragments",
     build_frame(TEXT, b"\xed", fin=False) + build_frame(CONT, b"\xa0\x80"), 1007),
    ("64-bit length with the top bit set", b"\x82\xff" + struct.pack("!Q", 1 << 63) + b"abcd", 1002),
    ("frame over max_frame_bytes", build_frame(BINARY, b"x" * 70_000), 1009),
]


@pytest.mark.io_free
@pytest.mark.parametrize("data,code", [(d, c) for _, d, c in RULES], ids=[r[0] for r in RULES])
def test_rule_broken_gets_its_close_code(data, code):
    assert native(data)[-1] == ("error", code, b"")
    assert ref.parse(data)[-1] == ("error", code, b"")


@pytest.mark.io_free
def test_oversized_frame_refused_from_its_head_alone():
    head = build_frame(BINARY, b"x" * 70_000)[:14]
    assert native(head) == [("error", 1009, b"")]


@pytest.mark.io_free
def test_message_over_max_message_bytes_across_fragments():
    data = b"".join(build_frame(BINARY if i == 0 else CONT, b"x" * 1000, fin=False) for i in range(5))
    assert native(data, max_message_bytes=4500) == [("error", 1009, b"")]
    assert native(data, max_message_bytes=5000) == []


@pytest.mark.io_free
def test_control_frames_between_fragments_and_close():
    data = (build_frame(TEXT, "ka".encode(), fin=False) + build_frame(PING, b"1")
            + build_frame(CONT, "λ".encode(), fin=False) + build_frame(PONG, b"")
            + build_frame(CONT, b"!") + build_frame(CLOSE, struct.pack("!H", 1001) + b"bye")
            + build_frame(TEXT, b"after close"))
    events = native(data)
    assert events == [("ping", 0, b"1"), ("pong", 0, b""), ("message", TEXT, "kaλ!".encode()),
                      ("close", 1001, b"bye")]
    assert events == ref.parse(data)


@pytest.mark.io_free
def test_empty_close_reports_no_status():
    assert native(build_frame(CLOSE, b"")) == [("close", 1005, b"")]


# -- arbitrary frame sequences: native == reference -----------------------------

payloads = st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda s: s.encode()))


@st.composite
def violations(draw):
    """A frame that is valid but for exactly one rule: unmasked, an RSV bit,
    a reserved opcode, a length (control over 125, a 64-bit length with the
    top bit set, a frame over the live server's 256-byte limit) or invalid
    UTF-8 in a text frame.  Weird frames break several rules at once, and
    the reader stops at the first (RSV, opcode), so they never reach a check
    that comes later in the reader."""
    text = draw(st.text(max_size=60)).encode()
    rule = draw(st.sampled_from(["mask", "rsv", "opcode", "control-length", "length-top-bit",
                                 "too-big", "utf8"]))
    if rule == "mask":
        return build_frame(draw(st.sampled_from([TEXT, PING])), text, mask=None)
    if rule == "rsv":
        return build_frame(TEXT, text, rsv=draw(st.integers(1, 7)))
    if rule == "opcode":
        return build_frame(draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])), text)
    if rule == "control-length":
        return build_frame(draw(st.sampled_from([PING, PONG, CLOSE])),
                           b"x" * draw(st.integers(126, 300)))
    if rule == "length-top-bit":
        return (bytes([0x80 | TEXT, 0x80 | 127]) + struct.pack("!Q", (1 << 63) | len(text))
                + b"\x00\x00\x00\x00" + text)
    if rule == "too-big":
        return build_frame(TEXT, b"x" * draw(st.integers(257, 600)))
    cut = draw(st.integers(0, len(text)))
    bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]))
    return build_frame(TEXT, text[:cut] + bad + text[cut:])


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["data", "data", "control", "weird", "violation"]))
    if kind == "violation":
        return draw(violations())
    payload = draw(payloads)
    if kind == "data":
        op = draw(st.sampled_from([TEXT, BINARY, CONT]))
        return build_frame(op, payload, fin=draw(st.booleans()))
    if kind == "control":
        op = draw(st.sampled_from([PING, PONG, CLOSE]))
        if op == CLOSE and draw(st.booleans()):
            code = draw(st.sampled_from([1000, 1001, 1002, 1007, 1011, 1013, 3000, 4999,
                                         0, 999, 1004, 1005, 1006, 1015, 2999, 5000]))
            payload = struct.pack("!H", code) + payload[:50]
        return build_frame(op, payload[:125])
    return build_frame(draw(st.integers(0, 15)), payload, fin=draw(st.booleans()),
                       rsv=draw(st.integers(0, 7)),
                       mask=draw(st.one_of(st.none(), st.binary(min_size=4, max_size=4))),
                       length_form=draw(st.sampled_from([None, 16, 64])))


@pytest.mark.io_free
@CHEAP
@given(st.lists(frames(), max_size=8), st.binary(max_size=3))
def test_native_reader_agrees_with_the_reference(seq, trailing_junk):
    data = b"".join(seq) + trailing_junk
    assert native(data, max_frame_bytes=256, max_message_bytes=600) == \
        ref.parse(data, max_frame=256, max_message=600)


@pytest.mark.io_free
@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_any_split_gives_the_same_events(seq, data):
    stream = b"".join(seq)
    whole = native(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = WSFrameReader()
    events = []
    last = 0
    for cut in cuts + [len(stream)]:
        events += reader.feed(stream[last:cut])
        last = cut
    assert events == whole


@pytest.mark.io_free
def test_every_single_byte_boundary():
    stream = (build_frame(TEXT, "prix €".encode(), fin=False) + build_frame(PING, b"p")
              + build_frame(CONT, b"x" * 300) + build_frame(BINARY, b"\x00" * 70)
              + build_frame(CLOSE, struct.pack("!H", 1000)))
    whole = native(stream)
    assert [e[0] for e in whole] == ["ping", "message", "message", "close"]
    for cut in range(len(stream) + 1):
        reader = WSFrameReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == whole, cut


# -- the client side: a server's (unmasked) frames, as an exchange feed reads them --

@st.composite
def frame_pairs(draw):
    """The same frame as a client sends it (masked) and as a server does."""
    op = draw(st.sampled_from([TEXT, BINARY, CONT, PING, PONG, CLOSE, 3, 0xB]))
    payload = draw(payloads)
    if op == CLOSE:
        payload = struct.pack("!H", draw(st.sampled_from([1000, 1002, 1005, 4000]))) + \
            payload[:60]
    elif op in (PING, PONG):
        payload = payload[:125]
    fin = op >= 8 or draw(st.booleans())
    return build_frame(op, payload, fin=fin), build_frame(op, payload, fin=fin, mask=None)


@pytest.mark.io_free
@settings(max_examples=300, deadline=None)
@given(st.lists(frame_pairs(), min_size=1, max_size=5), st.data())
def test_the_client_reader_sees_server_frames_as_the_server_sees_client_frames(pairs, data):
    """WSClientReader (the engine's reader with server_frames set) on the
    unmasked frames, cut anywhere, gives the messages and the control events
    and errors that the server-side reader gives on the masked ones."""
    whole = native(b"".join(masked for masked, _ in pairs), max_frame_bytes=4096,
                   max_message_bytes=16384)
    stream = b"".join(plain for _, plain in pairs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = WSClientReader(4096, 16384)
    messages: list = []
    last = 0
    for cut in cuts + [len(stream)]:
        messages += reader.feed(stream[last:cut])
        last = cut
    assert messages == [e[2] for e in whole if e[0] == "message"]
    assert reader.controls == [e for e in whole if e[0] != "message"]
    assert reader.done == any(e[0] in ("close", "error") for e in whole)
    # A masked frame is a server's error, as an unmasked one is a client's.
    if not reader.done:
        masked_reader = WSClientReader()
        assert masked_reader.feed(pairs[0][0]) == [] and \
            masked_reader.controls == [("error", 1002, b"")]


@pytest.mark.io_free
@CHEAP
@given(st.sampled_from([TEXT, BINARY, PING, CLOSE]), st.binary(max_size=300),
       st.binary(min_size=4, max_size=4))
def test_client_frames_are_masked_as_the_rfc_says(op, payload, mask):
    payload = payload[:125] if op >= 8 else payload
    assert ws_client_frame(op, payload, mask) == build_frame(op, payload, mask=mask)


# -- the streaming UTF-8 check ---------------------------------------------------

@pytest.mark.io_free
@CHEAP
@given(st.binary(max_size=64), st.integers(0, 64))
def test_utf8_check_matches_cpython(data, split):
    assert utf8_valid(data, split) == ref.utf8_ok(data)


@pytest.mark.io_free
@CHEAP
@given(st.text(max_size=64), st.integers(0, 300))
def test_valid_text_passes_at_any_split(text, split):
    assert utf8_valid(text.encode(), split)


@pytest.mark.parametrize("raw", [
    b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",          # overlong '/'
    b"\xed\xa0\x80", b"\xed\xbf\xbf",                            # surrogates
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",           # past U+10FFFF, never in UTF-8
    b"\x80", b"a\xbf", b"\xe2\x82",                              # stray or missing continuation
])
@pytest.mark.io_free
def test_utf8_rejects_what_rfc_3629_forbids(raw):
    assert not utf8_valid(raw) and not ref.utf8_ok(raw)


@pytest.mark.io_free
def test_utf8_every_two_byte_sequence_matches_cpython():
    for a in range(256):
        for b in range(256):
            raw = bytes([a, b])
            assert utf8_valid(raw, 1) == ref.utf8_ok(raw), raw


# -- the frame published with each entry -----------------------------------------

@pytest.mark.io_free
def test_each_entry_carries_its_frame_built_at_publication():
    from beastnet import ResponseTable
    from beastnet._core import ws_entry_frame
    t = ResponseTable({"BTC": b'{"p":1}', "BIN": b"\xff\x00", "BIG": "é" * 40_000})
    assert ws_entry_frame(t, "BTC") == ws_frame(TEXT, b'{"p":1}')
    assert ws_entry_frame(t, "BIN") == ws_frame(BINARY, b"\xff\x00")     # not UTF-8: binary
    assert ws_entry_frame(t, "BIG") == ws_frame(TEXT, "é".encode() * 40_000)
    t["BTC"] = b'{"p":2}'
    assert ws_entry_frame(t, "BTC") == ws_frame(TEXT, b'{"p":2}')
    assert ws_entry_frame(t, "none") is None


# -- a live server: arbitrary frames, split anywhere, against the reference --------------

def _expected_output(events: list) -> list:
    """What the echo endpoint sends back for the reference's events."""
    out = []
    for kind, code, payload in events:
        if kind == "message":
            out.append((code, payload))
        elif kind == "ping":
            out.append((PONG, payload))
        elif kind == "close":
            out.append((CLOSE, struct.pack("!H", 1000 if code == 1005 else code)))
            return out
        elif kind == "error":
            out.append((CLOSE, struct.pack("!H", code)))
            return out
    return out


def _read_frames(sock, want: int) -> list:
    frames, buf = [], b""
    while len(frames) < want:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            if len(buf) < at + n:
                break
            frames.append((buf[0] & 0x0F, buf[at:at + n]))
            buf = buf[at + n:]
    return frames


@pytest.fixture(scope="module")
def echo_server():
    from beastnet import HTTPServer, ResponseTable, WebSocketOptions
    options = WebSocketOptions(echo_path="/echo", max_frame_bytes=256, max_message_bytes=600)
    with HTTPServer(ResponseTable(), threads=2, websocket=options) as server:
        yield server


def read_or_closed(server, base: dict, n: int) -> bool:
    t = server.stats()["totals"]
    return bool(t["bytes_in"] - base["bytes_in"] >= n or t["closed"] > base["closed"])


def echo_connection(server):
    import socket
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock = socket.create_connection(server.address[:2], timeout=5)
    sock.sendall(f"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    return sock


SINGLE_RULE = {
    "mask": (build_frame(TEXT, b"hi", mask=None), 1002),
    "mask-ping": (build_frame(PING, b"hi", mask=None), 1002),
    "rsv": (build_frame(TEXT, b"hi", rsv=1), 1002),
    "opcode": (build_frame(0xB, b"hi"), 1002),
    "control-length": (build_frame(PING, b"x" * 126), 1002),
    "length-top-bit": (bytes([0x80 | TEXT, 0x80 | 127]) + struct.pack("!Q", (1 << 63) | 2)
                       + b"\x00\x00\x00\x00hi", 1002),
    "too-big": (build_frame(TEXT, b"x" * 257), 1009),
    "utf8": (build_frame(TEXT, "prix €".encode()[:-1]), 1007),
}


@pytest.mark.parametrize("rule", SINGLE_RULE)
def test_live_server_closes_each_single_rule_violation(echo_server, rule):
    """One rule broken, after a good message: the echo, then the close code
    the reference owes."""
    frame, code = SINGLE_RULE[rule]
    stream = build_frame(TEXT, b"good") + frame
    expected = _expected_output(ref.parse(stream, max_frame=256, max_message=600))
    assert expected == [(TEXT, b"good"), (CLOSE, struct.pack("!H", code))]
    with echo_connection(echo_server) as sock:
        sock.sendall(stream)
        assert _read_frames(sock, len(expected)) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=6), st.data())
def test_live_server_answers_as_the_reference_says(echo_server, seq, data):
    stream = b"".join(seq)
    expected = _expected_output(ref.parse(stream, max_frame=256, max_message=600))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=4))))
    with echo_connection(echo_server) as sock:
        last = 0
        base = echo_server.stats()["totals"]
        try:
            for cut in cuts + [len(stream)]:
                sock.sendall(stream[last:cut])
                last = cut
                # Each piece read on its own (or the connection closed on an
                # error): the pieces never merge into one read.
                wait_for(lambda: read_or_closed(echo_server, base, cut),
                         message=f"the server to read {cut} bytes or close")
        except (BrokenPipeError, ConnectionResetError):
            pass                    # it answered an error and closed: what it sent is checked below
        if not expected or expected[-1][0] != CLOSE:
            # The server waits for more: close cleanly ourselves and expect its echo.
            sock.sendall(build_frame(CLOSE, struct.pack("!H", 1000)))
            expected.append((CLOSE, struct.pack("!H", 1000)))
        assert _read_frames(sock, len(expected)) == expected
