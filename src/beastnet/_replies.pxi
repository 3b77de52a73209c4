# One vocabulary of error replies and response heads, for both engines and
# the control plane.
#
# Every error a client can be answered is named once, in ERRORS.  The bodies
# are serialized once at import (as redis's createSharedObjects builds its
# fixed replies), and everything points into those same bytes: the UDP
# readers' BODY_* statics, the HTTP workers' pre-built responses (HTTP_ERR)
# and, through ERROR_BODIES, the Python control plane.  An error answer costs
# no formatting, and no two places can spell one differently.

import types as _types

# (name, HTTP status, when): the body is {"error":"<name>"}.
ERRORS = (
    ("bad_request", 400, "malformed request"),
    ("unauthorized", 401, "missing, unknown or revoked API key"),
    ("forbidden", 403, "an /admin/ path asked from off loopback, or a key refused the WebSocket feed"),
    ("not_found", 404, "no answer for the key (or no such path)"),
    ("method_not_allowed", 405, "a method other than GET or HEAD"),
    ("payload_too_large", 413, "a request body where none is allowed"),
    ("uri_too_long", 414, "request target over the limit"),
    ("headers_too_large", 431, "request head over the limit"),
    ("rate_limited", 429, "the API key's rate limit says too soon"),
    ("over_quota", 429, "the API key's monthly cap is reached"),
    ("internal_error", 500, "the miss handler raised or answered something unsendable"),
    ("too_large", 500, "UDP only: the answer does not fit in one datagram"),
    ("busy", 503, "the miss queue (or the connection table) is full"),
    ("overloaded", 503, "the governor shed the request: the server is past its adaptive limit"),
    ("unavailable", 503, "a store the control plane needs (Redis) cannot be reached"),
    ("upgrade_required", 426, "a WebSocket upgrade for a version other than 13"),
    ("connection_limit", 429, "the API key holds its maximum of WebSocket connections"),
)

cdef dict _error_bodies = {name: b'{"error":"' + name.encode("ascii") + b'"}'
                           for name, _status, _when in ERRORS}
#: name -> serialized body; read-only, and the bytes the engines point into.
ERROR_BODIES = _types.MappingProxyType(_error_bodies)
#: name -> HTTP status.
ERROR_STATUS = _types.MappingProxyType({name: status for name, status, _when in ERRORS})

cdef struct bn_static_body:
    const char* data
    size_t len

cdef struct bn_static_resp:
    const char* head                    # status line + headers, without the final CRLF
    size_t head_len
    const char* body
    size_t body_len
    int status

# UDP: bodies sent as they are (after the echoed tag).
cdef bn_static_body BODY_BAD_REQUEST
cdef bn_static_body BODY_NOT_FOUND
cdef bn_static_body BODY_BUSY
cdef bn_static_body BODY_OVERLOADED
cdef bn_static_body BODY_UNAUTHORIZED
cdef bn_static_body BODY_OVER_QUOTA
cdef bn_static_body BODY_TOO_LARGE
cdef bn_static_body BODY_RATE_LIMITED_MS   # {"error":"rate_limited","retry_after_ms": (N} follows)

# HTTP: whole responses, indexed by ERR_*.
cdef bn_static_resp HTTP_ERR[ERR_COUNT]
# The answer to a CORS preflight (OPTIONS under the prefix on a server with
# cors_origins): 204, no body; the worker adds the origin's CORS segment.
# Max-Age 7200 s: Chromium's cap (Firefox allows a day).
cdef bn_static_resp HTTP_PREFLIGHT
cdef list http_static_keep = []         # owns the heads HTTP_ERR points into

HTTP_REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    409: "Conflict", 413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    422: "Unprocessable Content", 426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


cdef bytes http_build_head(int status, str content_type, size_t body_len, str extra=""):
    """Status line and headers up to (not including) the worker's Date tail."""
    reason = HTTP_REASONS.get(status, "Unknown")
    return (f"HTTP/1.1 {status} {reason}\r\nServer: beastnet\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {body_len}\r\n{extra}").encode("latin-1")


cdef bn_static_body static_body(bytes body):
    # `body` must live as long as the module: one of _error_bodies' values,
    # or a bytes object kept in http_static_keep.
    cdef bn_static_body out
    out.data = body
    out.len = len(body)
    return out


cdef void replies_init() except *:
    global BODY_BAD_REQUEST, BODY_NOT_FOUND, BODY_BUSY, BODY_OVERLOADED, BODY_UNAUTHORIZED
    global BODY_OVER_QUOTA
    global BODY_RATE_LIMITED_MS, BODY_TOO_LARGE, HTTP_PREFLIGHT
    BODY_BAD_REQUEST = static_body(_error_bodies["bad_request"])
    BODY_NOT_FOUND = static_body(_error_bodies["not_found"])
    BODY_BUSY = static_body(_error_bodies["busy"])
    BODY_OVERLOADED = static_body(_error_bodies["overloaded"])
    BODY_UNAUTHORIZED = static_body(_error_bodies["unauthorized"])
    BODY_OVER_QUOTA = static_body(_error_bodies["over_quota"])
    BODY_TOO_LARGE = static_body(_error_bodies["too_large"])
    rate_limited = _error_bodies["rate_limited"]
    rate_limited_ms = rate_limited[:len(rate_limited) - 1] + b',"retry_after_ms":'
    http_static_keep.append(rate_limited_ms)
    BODY_RATE_LIMITED_MS = static_body(rate_limited_ms)
    specs = [
        (ERR_400, "bad_request", ""),
        (ERR_401, "unauthorized", ""),
        (ERR_404, "not_found", ""),
        (ERR_405, "method_not_allowed", "Allow: GET, HEAD\r\n"),
        (ERR_413, "payload_too_large", ""),
        (ERR_414, "uri_too_long", ""),
        (ERR_431, "headers_too_large", ""),
        (ERR_503, "busy", "Retry-After: 1\r\n"),
        (ERR_503_CONNS, "busy", "Retry-After: 1\r\nConnection: close\r\n\r\n"),
        (ERR_429_QUOTA, "over_quota", ""),
        (ERR_426, "upgrade_required", "Sec-WebSocket-Version: 13\r\n"),
        (ERR_429_CONNS, "connection_limit", ""),
        (ERR_403, "forbidden", ""),
        (ERR_503_OVERLOADED, "overloaded", "Retry-After: 1\r\n"),
    ]
    # One canned 429 per whole second of Retry-After (RFC 9110 takes seconds),
    # so a rate-limited request costs no formatting.
    for secs in range(1, RETRY_AFTER_MAX_S + 1):
        specs.append((ERR_429_1S + secs - 1, "rate_limited", f"Retry-After: {secs}\r\n"))
    cdef bytes head
    cdef bytes body
    cdef int status
    # RFC 9110 section 8.6: no Content-Length in a 204.
    head = (b"HTTP/1.1 204 No Content\r\nServer: beastnet\r\nAllow: GET, HEAD, OPTIONS\r\n"
            b"Access-Control-Allow-Methods: GET, HEAD\r\n"
            b"Access-Control-Allow-Headers: X-API-Key, Authorization\r\n"
            b"Access-Control-Max-Age: 7200\r\n")
    http_static_keep.append(head)
    HTTP_PREFLIGHT.head = head
    HTTP_PREFLIGHT.head_len = len(head)
    HTTP_PREFLIGHT.body = b""
    HTTP_PREFLIGHT.body_len = 0
    HTTP_PREFLIGHT.status = 204
    for idx, name, extra in specs:
        body = _error_bodies[name]
        status = ERROR_STATUS[name]
        head = http_build_head(status, "application/json", len(body), extra)
        if idx == ERR_503_CONNS:        # sent whole, before any request: head + blank line + body
            head = head + body
        http_static_keep.append(head)
        HTTP_ERR[idx].head = head
        HTTP_ERR[idx].head_len = len(head)
        HTTP_ERR[idx].body = body
        HTTP_ERR[idx].body_len = len(body)
        HTTP_ERR[idx].status = status
