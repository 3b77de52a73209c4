"""A plain-Python model of what the HTTP engine owes a byte stream: the
request-head grammar it accepts (RFC 9112 with the engine's limits) and, for a
whole pipelined stream, the exact answer to each request.

Written from the protocol rules, not from the C code, so the fuzz tests can
compute the expected status per request instead of accepting a set.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

TCHAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]")
KEY_RE = re.compile(rb"\A[A-Za-z0-9._:/-]{1,64}\Z")
METHOD_MAX_BYTES = 15
APIKEY_MAX_BYTES = 64
ROUTE_PREFIXES = (b"/admin/",)
ROUTES = (b"/metrics", b"/healthz")


class Unmodelled(Exception):
    """The stream reaches the control plane (a route): not modelled here."""


@dataclass
class Head:
    status: int                 # 0 = well-formed, else 400 / 414
    method: bytes = b""
    target: bytes = b""
    path: bytes = b""
    api_key: Optional[bytes] = None
    keepalive: bool = True
    http10: bool = False
    has_body: bool = False


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip(b" \t").lower() for t in value.split(b",")}


def parse_head(head: bytes, max_target: int) -> Head:
    """One complete head (ending in CRLF CRLF), as the engine reads it."""
    line_end = head.find(b"\r\n")
    line = head[:line_end] if line_end >= 0 else head
    m = re.match(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]*)", line)
    method = m.group(1) if m else b""
    if not method or len(method) > METHOD_MAX_BYTES or line[len(method):len(method) + 1] != b" ":
        return Head(400)
    rest = line[len(method) + 1:]
    target = re.match(rb"[\x21-\x7e]*", rest).group(0)     # type: ignore[union-attr]
    if len(target) > max_target:
        return Head(414)
    if rest[len(target):len(target) + 1] != b" ":
        return Head(400)
    version_at = len(target) + 1
    if not target.startswith(b"/"):
        # absolute-form (RFC 9112 3.2.2): served as its path and query.
        m = re.fullmatch(rb"(?i:https?://)([^/?]+)(.*)", target, re.S)
        if m is None:
            return Head(400)
        rest_of = m.group(2)
        if rest_of == b"":
            target = b"/"
        elif rest_of.startswith(b"/"):
            target = rest_of
        else:
            return Head(400)                # an empty path with a query
    version = rest[version_at:]
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    else:
        return Head(400)
    fields = head[line_end + 2:-2]          # header lines, each ending in CRLF
    host = 0
    close = keep = False
    content_length: Optional[int] = None
    chunked = False
    api_key: Optional[bytes] = None
    credentials = 0
    for raw in fields.split(b"\r\n")[:-1] if fields else []:
        name = re.match(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*", raw).group(0)  # type: ignore[union-attr]
        if not name or raw[len(name):len(name) + 1] != b":":
            return Head(400)
        value = raw[len(name) + 1:].lstrip(b" \t")
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
            return Head(400)
        value = value.rstrip(b" \t")
        lname = name.lower()
        if lname == b"host":
            host += 1
            if host > 1:
                return Head(400)
        elif lname == b"connection":
            toks = _tokens(value)
            close = close or b"close" in toks
            keep = keep or b"keep-alive" in toks
        elif lname == b"content-length":
            if content_length is not None or not re.fullmatch(rb"[0-9]{1,15}", value):
                return Head(400)
            content_length = int(value)
        elif lname == b"transfer-encoding":
            chunked = True
        elif lname == b"x-api-key":
            credentials += 1
            if not 1 <= len(value) <= APIKEY_MAX_BYTES or credentials > 1:
                return Head(400)
            api_key = value
        elif lname == b"authorization" and value[:7].lower() == b"bearer " and len(value) > 7:
            token = value[7:].lstrip(b" ")
            credentials += 1
            if not 1 <= len(token) <= APIKEY_MAX_BYTES or credentials > 1:
                return Head(400)
            api_key = token
    if content_length is not None and chunked:
        return Head(400)                    # request smuggling shape
    if not http10 and not host:
        return Head(400)
    path = target.split(b"?", 1)[0]
    if b"?" in target:
        # One credential per request: a second (header and query, or two
        # api_key= parameters) is ambiguous, so refused.
        for param in target.split(b"?", 1)[1].split(b"&"):
            if param.startswith(b"api_key="):
                credentials += 1
                if credentials > 1:
                    return Head(400)
                api_key = param[8:] or None
                if api_key is not None and len(api_key) > APIKEY_MAX_BYTES:
                    return Head(400)
    return Head(0, method, target, path, api_key,
                keepalive=(keep and not close) if http10 else not close,
                http10=http10, has_body=chunked or bool(content_length))


def prefix_bad(buf: bytes, max_target: int) -> bool:
    """Whether an incomplete head can no longer begin a request the engine
    takes, so it answers 400 without waiting: a bare LF anywhere, or a
    request line that is not `token SP target SP HTTP/1.x CRLF` so far (a
    target starts with '/' or is absolute-form, "h..."; one longer than
    max_target is left to the 414 rule)."""
    if buf == b"\r":
        return False
    if re.search(rb"(?<!\r)\n", buf):
        return True
    m = re.match(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*", buf)
    method = m.group(0)                                             # type: ignore[union-attr]
    if len(method) > METHOD_MAX_BYTES:
        return True
    if len(method) == len(buf):
        return False
    if not method or buf[len(method):len(method) + 1] != b" ":
        return True
    rest = buf[len(method) + 1:]
    target = re.match(rb"[\x21-\x7e]*", rest).group(0)              # type: ignore[union-attr]
    if len(target) == len(rest) or len(target) > max_target:
        return False
    if not target or rest[len(target):len(target) + 1] != b" " or target[:1] not in (b"/", b"h", b"H"):
        return True
    version = rest[len(target) + 1:][:10]
    return not (b"HTTP/1.0\r\n".startswith(version) or b"HTTP/1.1\r\n".startswith(version))


NO_ANSWER = 0                   # the server may close without answering


@dataclass
class Answer:
    statuses: frozenset          # the status owed; more than one only when read
    head_only: bool              # boundaries decide between two refusals
    closes: bool                 # the connection ends after this answer


def _early_refusals(buf: bytes, limit_end: int, max_header: int, max_target: int) -> set[int]:
    """Statuses an incomplete head buf[:k] (any k < limit_end) can draw when
    a read ends at k: a head past max_header (431, or 414 while it has no
    CRLF) or a request line past max_target + 32 bytes without its CRLF (414)."""
    out = set()
    crlf = buf.find(b"\r\n")
    first_with_crlf = crlf + 2 if crlf >= 0 else len(buf) + 1   # shortest k holding a CRLF
    if max_target + 33 < limit_end and first_with_crlf > max_target + 33:
        out.add(414)
    if max_header + 1 < limit_end:
        if first_with_crlf > max_header + 1:
            out.add(414)
        if max(first_with_crlf, max_header + 1) < limit_end:
            out.add(431)
    return out


def expected_answers(stream: bytes, lookup: Callable[[bytes], Optional[bytes]], *,
                     prefix: bytes = b"/v1/", max_header: int = 8192,
                     max_target: int = 2048) -> list[Answer]:
    """The answers owed to `stream` sent on one connection that the client
    then shuts for writing, for a server without API keys or a miss handler."""
    out: list[Answer] = []
    pos = 0
    while pos < len(stream):
        while stream.startswith(b"\r\n", pos):    # empty lines before a request line are skipped
            pos += 2
        if pos >= len(stream):
            break
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            # An incomplete head at EOF: refused if some read saw it past a
            # limit; certain only when the whole rest is past one.
            rest = stream[pos:]
            possible = _early_refusals(rest, len(rest) + 1, max_header, max_target)
            certain = len(rest) > max_header or (len(rest) > max_target + 32
                                                  and b"\r\n" not in rest)
            if prefix_bad(rest, max_target):
                # Refused as soon as a read shows the bad byte: no later read
                # can make it a request.
                bad_at = next(k for k in range(1, len(rest) + 1) if prefix_bad(rest[:k], max_target))
                possible = _early_refusals(rest, bad_at, max_header, max_target) | {400}
                certain = True
            if possible:
                out.append(Answer(frozenset(possible if certain else possible | {NO_ANSWER}),
                                  False, True))
            return out
        head_len = end + 4 - pos
        early = _early_refusals(stream[pos:], head_len, max_header, max_target)
        bad_at = next((k for k in range(1, head_len) if prefix_bad(stream[pos:pos + k], max_target)),
                      None)
        if bad_at is not None:
            early = _early_refusals(stream[pos:], bad_at, max_header, max_target) | {400}
        if head_len > max_header:
            out.append(Answer(frozenset(early | {431}), False, True))
            return out
        head = parse_head(stream[pos:pos + head_len], max_target)
        if head.status:
            out.append(Answer(frozenset(early | {head.status}), False, True))
            return out
        if early:                           # a refusal is possible only on some reads
            raise Unmodelled("a well-formed head long enough to be refused early")
        pos += head_len
        head_only = head.method == b"HEAD"
        closes = not head.keepalive
        in_prefix = len(head.path) > len(prefix) and head.path.startswith(prefix)
        if in_prefix and head.method not in (b"GET", b"HEAD"):
            out.append(Answer(frozenset({405}), False, closes or head.has_body))
        elif head.has_body:
            out.append(Answer(frozenset({413}), head_only, True))
        elif in_prefix:
            key = head.path[len(prefix):]
            status = 200 if KEY_RE.match(key) and lookup(key) is not None else 404
            out.append(Answer(frozenset({status}), head_only, closes))
        elif head.path.startswith(ROUTE_PREFIXES) or head.path in ROUTES:
            raise Unmodelled("a control-plane route")
        else:
            out.append(Answer(frozenset({404}), head_only, closes))
        if out[-1].closes:
            return out
    return out
