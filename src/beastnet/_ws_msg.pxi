# The WebSocket feed's client requests, read natively:
#     {"op": "subscribe" | "unsubscribe" | "snapshot", "symbols": ["BTC", ...]}
#     {"op": "auth", "api_key": "..."}
# Strict JSON (RFC 8259) for the whole message; fields other than "op",
# "symbols" and "api_key" are skipped whatever their value.  Symbols land back to back in
# a caller's buffer, unescaped, so the worker never builds a Python object.

cdef struct bn_ws_request:
    int op                              # WS_REQ_*
    int error                           # WS_REQERR_*: why the message was refused
    uint32_t nsymbols                   # symbols kept (valid keys), in order
    uint32_t invalid_symbols            # strings that can never be keys (length, characters)
    uint32_t keys_len                   # bytes used at the caller's keys buffer
    char apikey[APIKEY_MAX_BYTES]       # auth: the key (apikey_len bytes of it)
    uint32_t apikey_len                 # 0 = none; past APIKEY_MAX_BYTES = too long (no key is)

cdef struct bn_json_cursor:
    const uint8_t* p                    # next byte
    const uint8_t* end                  # one past the last byte


cdef inline void json_ws(bn_json_cursor* c) noexcept nogil:
    while c.p < c.end and (c.p[0] == 32 or c.p[0] == 9 or c.p[0] == 10 or c.p[0] == 13):
        c.p += 1


cdef inline int json_hex4(const uint8_t* p) noexcept nogil:
    cdef int v = 0
    cdef int i
    cdef uint8_t ch
    for i in range(4):
        ch = p[i]
        v <<= 4
        if 48 <= ch <= 57:
            v |= ch - 48
        elif 97 <= ch <= 102:
            v |= ch - 87
        elif 65 <= ch <= 70:
            v |= ch - 55
        else:
            return -1
    return v


cdef int json_string(bn_json_cursor* c, char* out, size_t cap, size_t* out_len) noexcept nogil:
    """Read a string at c.p (at its opening quote).  Its unescaped bytes go to
    `out` while they fit in `cap`; *out_len is their full length (so a caller
    can tell it was longer), or cap + 1 past that.  0, or -1 for bad JSON.
    Non-ASCII escapes count as length only: keys are ASCII."""
    cdef size_t n = 0
    cdef uint8_t ch
    cdef int u
    if c.p >= c.end or c.p[0] != 34:    # '"'
        return -1
    c.p += 1
    while c.p < c.end:
        ch = c.p[0]
        c.p += 1
        if ch == 34:                    # closing '"'
            out_len[0] = n
            return 0
        if ch < 0x20:                   # control characters must be escaped
            return -1
        if ch == 92:                    # '\\'
            if c.p >= c.end:
                return -1
            ch = c.p[0]
            c.p += 1
            if ch == 117:               # \uXXXX
                if c.end - c.p < 4:
                    return -1
                u = json_hex4(c.p)
                if u < 0:
                    return -1
                c.p += 4
                ch = <uint8_t>u if u < 0x80 else 0xFF   # 0xFF: no key has it
            elif ch == 110:
                ch = 10                 # \n
            elif ch == 116:
                ch = 9                  # \t
            elif ch == 114:
                ch = 13                 # \r
            elif ch == 98:
                ch = 8                  # \b
            elif ch == 102:
                ch = 12                 # \f
            elif ch != 34 and ch != 92 and ch != 47:    # \" \\ \/
                return -1
        if n < cap:
            out[n] = <char>ch
        if n <= cap:
            n += 1
    return -1


cdef int json_skip(bn_json_cursor* c, int depth) noexcept nogil:
    """Skip one JSON value; 0, or -1 for bad JSON or nesting past 32."""
    cdef size_t ignored
    cdef uint8_t ch
    cdef bint first
    json_ws(c)
    if c.p >= c.end or depth > 32:
        return -1
    ch = c.p[0]
    if ch == 34:
        return json_string(c, NULL, 0, &ignored)
    if ch == 123 or ch == 91:           # '{' or '['
        c.p += 1
        first = True
        while True:
            json_ws(c)
            if c.p >= c.end:
                return -1
            if c.p[0] == (125 if ch == 123 else 93):
                c.p += 1
                return 0
            if not first:
                if c.p[0] != 44:        # ','
                    return -1
                c.p += 1
                json_ws(c)
            first = False
            if ch == 123:
                if json_string(c, NULL, 0, &ignored) != 0:
                    return -1
                json_ws(c)
                if c.p >= c.end or c.p[0] != 58:   # ':'
                    return -1
                c.p += 1
            if json_skip(c, depth + 1) != 0:
                return -1
    if ch == 116 and c.end - c.p >= 4 and memcmp(c.p, b"true", 4) == 0:
        c.p += 4
        return 0
    if ch == 102 and c.end - c.p >= 5 and memcmp(c.p, b"false", 5) == 0:
        c.p += 5
        return 0
    if ch == 110 and c.end - c.p >= 4 and memcmp(c.p, b"null", 4) == 0:
        c.p += 4
        return 0
    return json_skip_number(c)


cdef inline int json_digits(bn_json_cursor* c) noexcept nogil:
    """Skip [0-9]+: 0, or -1 when there is no digit."""
    cdef const uint8_t* start = c.p
    while c.p < c.end and 48 <= c.p[0] <= 57:
        c.p += 1
    return 0 if c.p != start else -1


cdef int json_skip_number(bn_json_cursor* c) noexcept nogil:
    # -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    if c.p < c.end and c.p[0] == 45:
        c.p += 1
    if c.p >= c.end:
        return -1
    if c.p[0] == 48:
        c.p += 1
    elif json_digits(c) != 0:           # [1-9][0-9]*: a leading '0' went above
        return -1
    if c.p < c.end and c.p[0] == 46:
        c.p += 1
        if json_digits(c) != 0:
            return -1
    if c.p < c.end and (c.p[0] == 101 or c.p[0] == 69):
        c.p += 1
        if c.p < c.end and (c.p[0] == 43 or c.p[0] == 45):
            c.p += 1
        if json_digits(c) != 0:
            return -1
    return 0


cdef int ws_symbols(bn_json_cursor* c, bn_ws_request* req, char* keys, uint32_t keys_cap,
                    uint8_t* key_lens, uint32_t max_symbols) noexcept nogil:
    """Read the "symbols" array into keys/key_lens; 0, or -1 for bad JSON."""
    cdef size_t n
    cdef size_t i
    cdef bint first = True
    cdef bint valid
    cdef char one[KEY_MAX_BYTES]
    json_ws(c)
    if c.p >= c.end or c.p[0] != 91:    # '['
        return -1
    c.p += 1
    while True:
        json_ws(c)
        if c.p >= c.end:
            return -1
        if c.p[0] == 93:                # ']'
            c.p += 1
            return 0
        if not first:
            if c.p[0] != 44:
                return -1
            c.p += 1
            json_ws(c)
        first = False
        if c.p < c.end and c.p[0] != 34:
            # A non-string element is a request error, not a symbol.
            if json_skip(c, 1) != 0:
                return -1
            req.invalid_symbols += 1
            continue
        if json_string(c, one, KEY_MAX_BYTES, &n) != 0:
            return -1
        valid = 1 <= n <= KEY_MAX_BYTES
        if valid:
            for i in range(n):
                if not (CHAR_CLASS[<uint8_t>one[i]] & CHAR_KEY):
                    valid = False
                    break
        if not valid:
            req.invalid_symbols += 1
        elif req.nsymbols >= max_symbols or req.keys_len + n > keys_cap:
            req.error = WS_REQERR_TOO_MANY
        else:
            memcpy(keys + req.keys_len, one, n)
            key_lens[req.nsymbols] = <uint8_t>n
            req.keys_len += <uint32_t>n
            req.nsymbols += 1


cdef int ws_parse_request(const char* msg, size_t n, bn_ws_request* req, char* keys,
                          uint32_t keys_cap, uint8_t* key_lens,
                          uint32_t max_symbols) noexcept nogil:
    """Read one client request.  Returns req.op (WS_REQ_BAD with req.error
    set when the message is not a request we take)."""
    cdef bn_json_cursor c
    cdef char name[16]
    cdef char opname[16]
    cdef size_t name_len
    cdef size_t op_len = 0
    cdef bint first = True
    cdef bint have_op = False
    cdef bint have_symbols = False
    cdef bint have_key = False
    cdef size_t key_len = 0
    memset(req, 0, sizeof(bn_ws_request))
    req.op = WS_REQ_BAD
    c.p = <const uint8_t*>msg
    c.end = c.p + n
    json_ws(&c)
    if c.p >= c.end or c.p[0] != 123:   # '{'
        req.error = WS_REQERR_JSON
        return req.op
    c.p += 1
    while True:
        json_ws(&c)
        if c.p >= c.end:
            req.error = WS_REQERR_JSON
            return req.op
        if c.p[0] == 125:               # '}'
            c.p += 1
            break
        if not first:
            if c.p[0] != 44:
                req.error = WS_REQERR_JSON
                return req.op
            c.p += 1
            json_ws(&c)
        first = False
        if json_string(&c, name, sizeof(name), &name_len) != 0:
            req.error = WS_REQERR_JSON
            return req.op
        json_ws(&c)
        if c.p >= c.end or c.p[0] != 58:
            req.error = WS_REQERR_JSON
            return req.op
        c.p += 1
        json_ws(&c)
        if name_len == 2 and memcmp(name, b"op", 2) == 0 and c.p < c.end and c.p[0] == 34:
            if json_string(&c, opname, sizeof(opname), &op_len) != 0:
                req.error = WS_REQERR_JSON
                return req.op
            have_op = True
        elif name_len == 7 and memcmp(name, b"symbols", 7) == 0:
            if have_symbols or ws_symbols(&c, req, keys, keys_cap, key_lens, max_symbols) != 0:
                req.error = WS_REQERR_JSON
                return req.op
            have_symbols = True
        elif (name_len == 7 and memcmp(name, b"api_key", 7) == 0 and not have_key
                and c.p < c.end and c.p[0] == 34):
            if json_string(&c, req.apikey, APIKEY_MAX_BYTES, &key_len) != 0:
                req.error = WS_REQERR_JSON
                return req.op
            req.apikey_len = <uint32_t>(key_len if key_len <= APIKEY_MAX_BYTES
                                        else APIKEY_MAX_BYTES + 1)
            have_key = True
        elif json_skip(&c, 1) != 0:
            req.error = WS_REQERR_JSON
            return req.op
    json_ws(&c)
    if c.p != c.end:                    # anything after the object
        req.error = WS_REQERR_JSON
        return req.op
    if not have_op:
        req.error = WS_REQERR_OP
        return req.op
    if req.error:
        return req.op
    if op_len == 9 and memcmp(opname, b"subscribe", 9) == 0:
        req.op = WS_REQ_SUBSCRIBE
    elif op_len == 11 and memcmp(opname, b"unsubscribe", 11) == 0:
        req.op = WS_REQ_UNSUBSCRIBE
    elif op_len == 8 and memcmp(opname, b"snapshot", 8) == 0:
        req.op = WS_REQ_SNAPSHOT
    elif op_len == 4 and memcmp(opname, b"auth", 4) == 0:
        req.op = WS_REQ_AUTH
        if not have_key:
            req.error = WS_REQERR_NO_KEY
            req.op = WS_REQ_BAD
        return req.op
    else:
        req.error = WS_REQERR_OP
        return req.op
    if not have_symbols and req.op != WS_REQ_SNAPSHOT:
        req.error = WS_REQERR_SYMBOLS
        req.op = WS_REQ_BAD
    return req.op


WS_REQUEST_OPS = {WS_REQ_BAD: "bad", WS_REQ_SUBSCRIBE: "subscribe",
                  WS_REQ_UNSUBSCRIBE: "unsubscribe", WS_REQ_SNAPSHOT: "snapshot",
                  WS_REQ_AUTH: "auth"}
WS_REQUEST_ERRORS = {0: None, WS_REQERR_JSON: "bad_json", WS_REQERR_OP: "unknown_op",
                     WS_REQERR_SYMBOLS: "no_symbols", WS_REQERR_TOO_MANY: "too_many_symbols",
                     WS_REQERR_NO_KEY: "no_api_key"}


def ws_read_request(bytes message not None, uint32_t max_symbols=1024):
    """Read a client request as a worker does: (op, error, symbols, invalid).
    For tests and tools."""
    cdef bn_ws_request req
    cdef uint32_t cap = max_symbols * KEY_MAX_BYTES
    cdef char* keys = <char*>malloc(cap + 1)
    cdef uint8_t* lens = <uint8_t*>malloc(max_symbols + 1)
    cdef uint32_t i
    cdef uint32_t at = 0
    if keys == NULL or lens == NULL:
        free(keys)
        free(lens)
        raise MemoryError()
    try:
        ws_parse_request(message, len(message), &req, keys, cap, lens, max_symbols)
        symbols = []
        for i in range(req.nsymbols if req.op != WS_REQ_BAD else 0):
            symbols.append(keys[at:at + lens[i]].decode("ascii"))
            at += lens[i]
        return (WS_REQUEST_OPS[req.op], WS_REQUEST_ERRORS[req.error], symbols,
                req.invalid_symbols if req.error != WS_REQERR_JSON else 0)
    finally:
        free(keys)
        free(lens)


def ws_entry_frame(ResponseTable table not None, key):
    """The WebSocket frame a subscriber of `key` is sent: the entry's head
    built at publication, then its body; None when the key holds nothing."""
    cdef bytes raw = key_to_bytes(key)
    cdef bn_entry* e
    with table._lock:
        e = table._find(raw)
        if e == NULL:
            return None
        return (PyBytes_FromStringAndSize(<char*>e.ws_head, e.ws_head_len)
                + PyBytes_FromStringAndSize(e.body, e.body_len))
