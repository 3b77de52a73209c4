"""A plain-Python reading of RFC 6455 client frames, written from the RFC
and independent of the native reader: the other implementation the native
one is checked against (same events, same close codes)."""
from __future__ import annotations

import codecs
import json
import struct
from typing import Optional

TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
VALID_CLOSE = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


def utf8_ok(data: bytes) -> bool:
    try:
        data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def utf8_prefix_ok(data: bytes) -> bool:
    """Whether `data` can begin a valid UTF-8 text (it may end mid-character).
    CPython's incremental decoder buffers an incomplete tail without judging
    it (it takes b"\xed\xa0", a surrogate's start), so the tail is judged by
    trying every first continuation byte: only that one has a narrowed range."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return False
    tail = decoder.getstate()[0]
    if not tail:
        return True
    for c in range(0x80, 0xC0):
        completion = tail + bytes([c]) + b"\x80" * 3
        for cut in range(len(tail) + 1, len(completion) + 1):
            try:
                completion[:cut].decode("utf-8")
                return True
            except UnicodeDecodeError:
                pass
    return False


def build_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                mask: Optional[bytes] = b"\x11\x22\x33\x44", length_form: Optional[int] = None) -> bytes:
    """A client frame; `length_form` forces the 7/16/64-bit length encoding."""
    n = len(payload)
    form = length_form if length_form is not None else (7 if n < 126 else 16 if n < 65536 else 64)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes([b0, mbit | n])
    elif form == 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse(data: bytes, max_frame: int = 65536, max_message: int = 1 << 20):
    """(events, bytes used), with the native reader's event vocabulary."""
    events: list[tuple[str, int, bytes]] = []
    pos = 0
    message_op = 0
    fragments = b""
    while True:
        if len(data) - pos < 2:
            break
        b0, b1 = data[pos], data[pos + 1]
        fin, rsv, op = b0 >> 7, (b0 >> 4) & 7, b0 & 0xF
        masked, n = b1 >> 7, b1 & 0x7F
        control = op >= 8
        if rsv or op not in (CONT, TEXT, BINARY, CLOSE, PING, PONG) or not masked:
            events.append(("error", 1002, b""))
            break
        if control and (not fin or n > 125):
            events.append(("error", 1002, b""))
            break
        if not control and ((op == CONT) != bool(message_op)):
            events.append(("error", 1002, b""))
            break
        head = 2
        if n == 126:
            if len(data) - pos < 4:
                break
            n = struct.unpack_from("!H", data, pos + 2)[0]
            head = 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            n = struct.unpack_from("!Q", data, pos + 2)[0]
            if n >> 63:
                events.append(("error", 1002, b""))
                break
            head = 10
        if not control and (n > max_frame or len(fragments) + n > max_message):
            events.append(("error", 1009, b""))
            break
        if len(data) - pos < head + 4 + n:
            break
        key = data[pos + head:pos + head + 4]
        raw = data[pos + head + 4:pos + head + 4 + n]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(raw))
        pos += head + 4 + n
        if op == PING:
            events.append(("ping", 0, payload))
        elif op == PONG:
            events.append(("pong", 0, payload))
        elif op == CLOSE:
            if len(payload) == 0:
                events.append(("close", 1005, b""))
            elif len(payload) == 1:
                events.append(("error", 1002, b""))
            else:
                code = struct.unpack("!H", payload[:2])[0]
                if code not in VALID_CLOSE:
                    events.append(("error", 1002, b""))
                elif not utf8_ok(payload[2:]):
                    events.append(("error", 1007, b""))
                else:
                    events.append(("close", code, payload[2:]))
            break
        else:
            if op != CONT:
                message_op = op
            fragments += payload
            if message_op == TEXT and not (utf8_ok(fragments) if fin else utf8_prefix_ok(fragments)):
                events.append(("error", 1007, b""))
                break
            if fin:
                events.append(("message", message_op, fragments))
                message_op, fragments = 0, b""
    return events


KEY_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-")


def read_request(message: bytes, max_symbols: int = 1024):
    """What the feed makes of a client request: (op, error, symbols, invalid),
    decided with the standard library's JSON reader (RFC 8259, with NaN and
    Infinity refused) rather than a parser of our own.  Not orjson: it refuses
    numbers past a double's range, which the grammar allows."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)
    try:
        obj = json.loads(message.decode("utf-8"), parse_constant=refuse)
    except ValueError:                  # JSONDecodeError and UnicodeDecodeError included
        return ("bad", "bad_json", [], 0)
    if not isinstance(obj, dict) or ("symbols" in obj and not isinstance(obj["symbols"], list)):
        return ("bad", "bad_json", [], 0)
    symbols, invalid = [], 0
    for s in obj.get("symbols", []):
        raw = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else None
        if raw is None or not 1 <= len(raw) <= 64 or not set(raw) <= KEY_CHARS:
            invalid += 1
        else:
            symbols.append(s)
    op = obj.get("op")
    if not isinstance(op, str):
        return ("bad", "unknown_op", [], invalid)
    if len(symbols) > max_symbols:
        return ("bad", "too_many_symbols", [], invalid)
    if op not in ("subscribe", "unsubscribe", "snapshot"):
        return ("bad", "unknown_op", [], invalid)
    if op != "snapshot" and "symbols" not in obj:
        return ("bad", "no_symbols", [], invalid)
    return (op, None, symbols, invalid)
