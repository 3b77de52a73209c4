# The HTTP/1.1 request parser: bytes in, a request out.
#
# Pure: it reads one complete request head (the caller has found its CRLF
# CRLF) and fills a bn_hreq whose pointers point into that head.  No worker,
# no connection, no syscall, no allocation; the connection layer frames the
# byte stream and the routing layer decides what to answer.

cdef struct bn_hreq:
    const char* method
    uint32_t method_len
    int method_code                     # METHOD_*
    const char* target                  # origin-form: path [ "?" query ] (of an absolute-form
                                        # target, the part after the authority)
    uint32_t target_len
    uint32_t path_len                   # bytes of target before '?'
    const char* apikey                  # X-API-Key, else ?api_key=, else NULL
    uint32_t apikey_len
    int keepalive                       # 1 = keep the connection after the answer
    int http10                          # 1 = HTTP/1.0 client
    int has_body                        # Content-Length > 0 or Transfer-Encoding present
    int upgrade_ws                      # Upgrade: websocket and Connection: upgrade
    const char* ws_key                  # Sec-WebSocket-Key, or NULL
    uint32_t ws_key_len
    int ws_version                      # Sec-WebSocket-Version, -1 = absent or not a number
    int ws_deflate                      # 1 = an acceptable permessage-deflate offer came
    int ws_deflate_bits                 # ... asking this server_max_window_bits (0 = none)
    const char* origin                  # Origin (a browser's cross-origin request), or NULL
    uint32_t origin_len


cdef uint8_t HTTP_TCHAR[256]            # RFC 9110 token characters


cdef void http_parse_init() noexcept:
    cdef int c
    for c in range(256):
        HTTP_TCHAR[c] = 1 if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                              or c in b"!#$%&'*+-.^_`|~") else 0


cdef inline int ascii_ieq(const char* a, const char* lower, size_t n) noexcept nogil:
    """a[0:n] equals `lower` (lower case) ignoring ASCII case."""
    cdef size_t i
    cdef uint8_t c
    for i in range(n):
        c = <uint8_t>a[i]
        if 65 <= c <= 90:
            c += 32
        if c != <uint8_t>lower[i]:
            return 0
    return 1


cdef int http_connection_tokens(const char* v, size_t n, int* close, int* keep,
                                int* upgrade) noexcept nogil:
    # Connection: a comma-separated token list, e.g. "keep-alive, Upgrade".
    cdef size_t i = 0
    cdef size_t start
    cdef size_t end
    while i < n:
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        start = i
        while i < n and v[i] != 44:
            i += 1
        end = i
        while end > start and (v[end - 1] == 32 or v[end - 1] == 9):
            end -= 1
        if end - start == 5 and ascii_ieq(v + start, b"close", 5):
            close[0] = 1
        elif end - start == 10 and ascii_ieq(v + start, b"keep-alive", 10):
            keep[0] = 1
        elif end - start == 7 and ascii_ieq(v + start, b"upgrade", 7):
            upgrade[0] = 1
    return 0


cdef inline int http_query_apikey(bn_hreq* req) noexcept nogil:
    # ?api_key=VALUE among &-separated parameters.  Returns 0, or -1 when the
    # request already carries a key (a header, or an earlier api_key=): two
    # credentials are ambiguous, and which one wins must not depend on where
    # a proxy or a client library put them.
    cdef const char* q = req.target + req.path_len + 1
    cdef size_t n
    cdef size_t i = 0
    cdef size_t start
    if req.path_len >= req.target_len:
        return 0
    n = req.target_len - req.path_len - 1
    while i + 8 <= n:
        if memcmp(q + i, b"api_key=", 8) == 0 and (i == 0 or q[i - 1] == 38):   # '&'
            if req.apikey != NULL:
                return -1
            start = i + 8
            i = start
            while i < n and q[i] != 38:
                i += 1
            req.apikey = q + start
            req.apikey_len = <uint32_t>(i - start)
            continue
        i += 1
    if req.apikey != NULL and req.apikey_len == 0:      # "?api_key=" with nothing
        req.apikey = NULL
    return 0


cdef const char* HTTP_ROOT = b"/"


cdef int http_absolute_target(const char* t, size_t n, bn_hreq* req) noexcept nogil:
    """absolute-form (RFC 9112 section 3.2.2): "http://" authority path-abempty
    [ "?" query ], which a server must accept.  The request is served as its
    origin-form part (the authority names this server; Host is still
    required of HTTP/1.1).  An empty path is "/"; an empty path with a query
    has no origin-form without a copy: 0, or -1 (a 400)."""
    cdef size_t i
    if n > 7 and ascii_ieq(t, b"http://", 7):
        i = 7
    elif n > 8 and ascii_ieq(t, b"https://", 8):
        i = 8
    else:
        return -1
    if t[i] == 47 or t[i] == 63:                                  # no authority
        return -1
    while i < n and t[i] != 47 and t[i] != 63:
        i += 1
    if i == n:
        req.target = HTTP_ROOT
        req.target_len = 1
        return 0
    if t[i] != 47:
        return -1
    req.target = t + i
    req.target_len = <uint32_t>(n - i)
    return 0


cdef int http_head_prefix_bad(const char* p, size_t n, size_t max_target) noexcept nogil:
    """Whether the first n bytes of an incomplete head can no longer begin a
    valid request, so the 400 need not wait for the header timeout: junk (a
    TLS ClientHello, binary) in the request line, or a bare LF anywhere
    (RFC 9112 section 2.2 lets a server take LF alone as a line end; we
    answer 400, as the framing looks for CRLF CRLF and a proxy in front may
    frame such a request differently).  Checks what http_parse_head would
    refuse, never more: 1 = answer 400 now, 0 = wait for more."""
    cdef size_t i = 0
    cdef size_t start
    cdef const char* lf = <const char*>memchr(p, 10, n)
    if n == 1 and p[0] == 13:
        return 0                                                  # maybe an empty line's CR
    while lf != NULL:
        if lf == p or (lf - 1)[0] != 13:
            return 1
        lf = <const char*>memchr(lf + 1, 10, n - <size_t>(lf + 1 - p))
    while i < n and HTTP_TCHAR[<uint8_t>p[i]]:                    # method
        i += 1
    if i > HTTP_METHOD_MAX_BYTES or (i < n and (i == 0 or p[i] != 32)):
        return 1
    if i == n:
        return 0
    i += 1
    start = i
    while i < n and 0x20 < <uint8_t>p[i] < 0x7f:                  # target
        i += 1
    if i == n or i - start > max_target:
        return 0                                                  # 414 is decided later
    if i == start or p[i] != 32 or (p[start] != 47 and p[start] != 104 and p[start] != 72):
        return 1                                                  # origin-form or "http..."
    i += 1
    start = i
    while i < n and i - start < 10:                               # "HTTP/1.x" CRLF
        if i - start < 7:
            if p[i] != (<const char*>b"HTTP/1.")[i - start]:
                return 1
        elif i - start == 7:
            if p[i] != 48 and p[i] != 49:
                return 1
        elif p[i] != (13 if i - start == 8 else 10):
            return 1
        i += 1
    return 0


cdef int http_parse_head(const char* p, size_t n, bn_hreq* req, size_t max_target) noexcept nogil:
    """Parse one complete request head p[0:n] (it ends with CRLF CRLF).
    Returns 0, or the status to answer: 400 (malformed) or 414 (target too long)."""
    cdef size_t i = 0
    cdef size_t start
    cdef size_t name_len
    cdef size_t vstart
    cdef size_t vend
    cdef uint8_t c
    cdef int conn_close = 0
    cdef int conn_keep = 0
    cdef int has_host = 0
    cdef int has_cl = 0
    cdef int has_te = 0
    cdef int conn_upgrade = 0
    cdef int upgrade_ws = 0
    cdef int bits
    cdef uint64_t content_length = 0
    memset(req, 0, sizeof(bn_hreq))
    req.ws_version = -1
    # request-line = method SP request-target SP HTTP-version CRLF
    while i < n and HTTP_TCHAR[<uint8_t>p[i]]:
        i += 1
    if i == 0 or i > HTTP_METHOD_MAX_BYTES or i >= n or p[i] != 32:
        return 400
    req.method = p
    req.method_len = <uint32_t>i
    if i == 3 and memcmp(p, b"GET", 3) == 0:
        req.method_code = METHOD_GET
    elif i == 4 and memcmp(p, b"HEAD", 4) == 0:
        req.method_code = METHOD_HEAD
    elif i == 7 and memcmp(p, b"OPTIONS", 7) == 0:
        req.method_code = METHOD_OPTIONS
    else:
        req.method_code = METHOD_OTHER
    i += 1
    start = i
    while i < n and 0x20 < <uint8_t>p[i] < 0x7f:
        i += 1
    if i - start > max_target:
        return 414
    if i == start or i >= n or p[i] != 32:
        return 400
    if p[start] == 47:                                            # origin-form starts with '/'
        req.target = p + start
        req.target_len = <uint32_t>(i - start)
    elif http_absolute_target(p + start, i - start, req) != 0:
        return 400
    start = <size_t>(req.target - p) if req.target != HTTP_ROOT else i
    vstart = start
    while vstart < i and p[vstart] != 63:                         # '?'
        vstart += 1
    req.path_len = <uint32_t>(vstart - start) if req.target != HTTP_ROOT else 1
    i += 1
    # HTTP-version = "HTTP/1.0" / "HTTP/1.1", then CRLF
    if i + 10 > n or memcmp(p + i, b"HTTP/1.", 7) != 0 or p[i + 8] != 13 or p[i + 9] != 10:
        return 400
    if p[i + 7] == 49:
        req.http10 = 0
    elif p[i + 7] == 48:
        req.http10 = 1
    else:
        return 400
    i += 10
    # header-field = field-name ":" OWS field-value OWS CRLF; the head ends with CRLF
    while True:
        if i + 1 >= n:
            return 400
        if p[i] == 13:
            if p[i + 1] != 10 or i + 2 != n:
                return 400
            break
        start = i
        while i < n and HTTP_TCHAR[<uint8_t>p[i]]:
            i += 1
        name_len = i - start
        if name_len == 0 or i >= n or p[i] != 58:                 # ':'; also rejects obs-fold
            return 400
        i += 1
        while i < n and (p[i] == 32 or p[i] == 9):
            i += 1
        vstart = i
        while i < n:
            c = <uint8_t>p[i]
            if c == 13:
                break
            if (c < 0x20 and c != 9) or c == 0x7f:                # CTLs, bare LF, NUL
                return 400
            i += 1
        if i + 1 >= n or p[i + 1] != 10:
            return 400
        vend = i
        while vend > vstart and (p[vend - 1] == 32 or p[vend - 1] == 9):
            vend -= 1
        i += 2
        if name_len == 4 and ascii_ieq(p + start, b"host", 4):
            if has_host:
                return 400
            has_host = 1
        elif name_len == 10 and ascii_ieq(p + start, b"connection", 10):
            http_connection_tokens(p + vstart, vend - vstart, &conn_close, &conn_keep,
                                   &conn_upgrade)
        elif name_len == 14 and ascii_ieq(p + start, b"content-length", 14):
            if has_cl or vend == vstart or vend - vstart > 15:
                return 400
            has_cl = 1
            while vstart < vend:
                c = <uint8_t>p[vstart]
                if c < 48 or c > 57:
                    return 400
                content_length = content_length * 10 + (c - 48)
                vstart += 1
        elif name_len == 17 and ascii_ieq(p + start, b"transfer-encoding", 17):
            has_te = 1
        elif name_len == 7 and ascii_ieq(p + start, b"upgrade", 7):
            # RFC 6455 4.2.1: Upgrade: websocket (a token list; we take that one token).
            upgrade_ws = vend - vstart == 9 and ascii_ieq(p + vstart, b"websocket", 9)
        elif name_len == 17 and ascii_ieq(p + start, b"sec-websocket-key", 17):
            req.ws_key = p + vstart
            req.ws_key_len = <uint32_t>(vend - vstart)
        elif name_len == 24 and ascii_ieq(p + start, b"sec-websocket-extensions", 24):
            # The first acceptable offer wins, over all lines of the header.
            if not req.ws_deflate:
                bits = ws_deflate_offers(p + vstart, vend - vstart)
                if bits >= 0:
                    req.ws_deflate = 1
                    req.ws_deflate_bits = bits
        elif name_len == 21 and ascii_ieq(p + start, b"sec-websocket-version", 21):
            req.ws_version = 0
            while vstart < vend and req.ws_version >= 0:
                c = <uint8_t>p[vstart]
                req.ws_version = req.ws_version * 10 + (c - 48) if 48 <= c <= 57 and req.ws_version < 1000 else -1
                vstart += 1
        elif name_len == 6 and ascii_ieq(p + start, b"origin", 6):
            req.origin = p + vstart
            req.origin_len = <uint32_t>(vend - vstart)
        elif name_len == 9 and ascii_ieq(p + start, b"x-api-key", 9):
            if vend == vstart or vend - vstart > APIKEY_MAX_BYTES or req.apikey != NULL:
                return 400                                        # empty, too long, or a second key
            req.apikey = p + vstart
            req.apikey_len = <uint32_t>(vend - vstart)
        elif name_len == 13 and ascii_ieq(p + start, b"authorization", 13):
            # RFC 6750 section 2.1: "Bearer <token>" carries the API key as
            # X-API-Key does.  Other schemes are not ours: ignored.
            if vend - vstart > 7 and ascii_ieq(p + vstart, b"bearer ", 7):
                vstart += 7
                while vstart < vend and p[vstart] == 32:
                    vstart += 1
                if vend == vstart or vend - vstart > APIKEY_MAX_BYTES or req.apikey != NULL:
                    return 400
                req.apikey = p + vstart
                req.apikey_len = <uint32_t>(vend - vstart)
    if has_cl and has_te:                                         # request smuggling shape
        return 400
    if not req.http10 and not has_host:                           # RFC 9112 §3.2
        return 400
    req.has_body = has_te or content_length > 0
    req.upgrade_ws = upgrade_ws and conn_upgrade
    if req.http10:
        req.keepalive = conn_keep and not conn_close
    else:
        req.keepalive = not conn_close
    if http_query_apikey(req) != 0 or req.apikey_len > APIKEY_MAX_BYTES:
        return 400
    return 0



def http_parse(bytes head not None, size_t max_target=2048):
    """Parse one request head as a worker does (for tests): a dict with the
    status (0 = well-formed, else 400/414) and the fields found."""
    cdef bn_hreq req
    cdef int status = http_parse_head(head, len(head), &req, max_target)
    if status != 0:
        return {"status": status}
    return {
        "status": 0,
        "method": req.method[:req.method_len].decode("ascii"),
        "target": req.target[:req.target_len].decode("latin-1"),
        "path": req.target[:req.path_len].decode("latin-1"),
        "api_key": req.apikey[:req.apikey_len].decode("latin-1") if req.apikey_len else None,
        "keepalive": bool(req.keepalive),
        "http10": bool(req.http10),
        "has_body": bool(req.has_body),
    }
