# WebSocket framing (RFC 6455) as pure functions of bytes: client frames in
# (parsed, unmasked in place, validated), server frame heads out.  No socket
# and no table here: the HTTP worker owns the connection and calls these.
#
# Reading works on whole frames: ws_next() reports WS_EV_NEED_MORE until the
# frame's head and payload are both buffered, so a connection's input buffer
# must hold max_frame_bytes + WS_CLIENT_HEAD_MAX_BYTES.  Client frames are
# small (subscribe requests, pings), and the frame-size check runs on the
# head alone, so an oversized frame is refused before its payload arrives.

cdef struct bn_ws_reader:
    uint64_t max_frame_bytes            # largest data-frame payload; larger closes 1009
    uint64_t max_message_bytes          # largest message over all its fragments; larger closes 1009
    char* msg                           # fragments of the open message (malloc), NULL until needed
    uint64_t msg_len                    # bytes in msg
    uint64_t msg_cap                    # bytes allocated at msg
    uint32_t utf8_state                 # streaming UTF-8 check of the open text message
    uint8_t msg_opcode                  # TEXT or BINARY while a fragmented message is open, else 0
    uint8_t deflate                     # permessage-deflate negotiated: RSV1 may mark a message
    uint8_t msg_compressed              # the open fragmented message has RSV1
    uint8_t server_frames               # reading a server's frames (a client's reader):
                                        # unmasked, so read in place and never written to
    uint64_t* pool                      # the engine's reassembly bytes (atomic), NULL = no cap
    uint64_t pool_cap                   # ... past which a growing message closes 1013

cdef struct bn_ws_event:
    const char* data                    # payload: in the caller's buffer or in reader.msg; valid
                                        # until the next ws_next() or the buffer is compacted
    uint64_t len                        # bytes at data
    int kind                            # WS_EV_*
    int opcode                          # WS_OP_TEXT / WS_OP_BINARY for a message
    int code                            # WS_EV_CLOSE: the peer's code (1005 = none);
                                        # WS_EV_ERROR: the code to close with
    int compressed                      # WS_EV_MESSAGE: RSV1, to inflate (not UTF-8 checked yet)


cdef void ws_reader_init(bn_ws_reader* r, uint64_t max_frame_bytes,
                         uint64_t max_message_bytes) noexcept nogil:
    memset(r, 0, sizeof(bn_ws_reader))
    r.max_frame_bytes = max_frame_bytes
    r.max_message_bytes = max_message_bytes


cdef void ws_reader_free(bn_ws_reader* r) noexcept nogil:
    if r.pool != NULL and r.msg_cap:
        bn_add_u64(r.pool, <uint64_t>0 - r.msg_cap)
    free(r.msg)
    r.msg = NULL
    r.msg_len = 0
    r.msg_cap = 0


cdef inline uint64_t ws_load_u64(const uint8_t* p) noexcept nogil:
    # memcpy: the compiler emits one unaligned load, without UB.
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef int utf8_check(uint32_t* state, const uint8_t* p, size_t n) noexcept nogil:
    """Advance a streaming UTF-8 check over `n` bytes; 0, or -1 at the first
    byte that no valid UTF-8 text can contain.  `state` carries a sequence
    split across calls: bits 16+ = continuation bytes still due, bits 8-15 and
    0-7 = the range the next one must fall in (RFC 3629 section 4: no
    overlongs, no surrogates, nothing past U+10FFFF).  The text is complete
    when (state >> 16) == 0."""
    cdef uint32_t st = state[0]
    cdef uint32_t need = st >> 16
    cdef uint32_t lo = (st >> 8) & 0xFF
    cdef uint32_t hi = st & 0xFF
    cdef size_t i = 0
    cdef uint8_t c
    while i < n:
        if need == 0:
            # ASCII runs, eight bytes at a time: most JSON is all ASCII.
            while i + 8 <= n and (ws_load_u64(p + i) & 0x8080808080808080ULL) == 0:
                i += 8
            if i == n:
                break
            c = p[i]
            i += 1
            if c < 0x80:
                continue
            if c < 0xC2:                # continuation byte, or overlong 2-byte lead
                return -1
            if c < 0xE0:
                need = 1
                lo = 0x80
                hi = 0xBF
            elif c < 0xF0:
                need = 2
                lo = 0xA0 if c == 0xE0 else 0x80    # E0: no overlong 3-byte forms
                hi = 0x9F if c == 0xED else 0xBF    # ED: no UTF-16 surrogates
            elif c < 0xF5:
                need = 3
                lo = 0x90 if c == 0xF0 else 0x80    # F0: no overlong 4-byte forms
                hi = 0x8F if c == 0xF4 else 0xBF    # F4: nothing past U+10FFFF
            else:
                return -1
        else:
            c = p[i]
            i += 1
            if c < lo or c > hi:
                return -1
            need -= 1
            lo = 0x80
            hi = 0xBF
    state[0] = (need << 16) | (lo << 8) | hi
    return 0


cdef void ws_unmask(uint8_t* p, size_t n, const uint8_t* mask) noexcept nogil:
    """XOR `n` payload bytes with the frame's 4-byte masking key, in place."""
    cdef uint32_t m4
    cdef uint64_t m8
    cdef uint64_t w
    cdef size_t i = 0
    memcpy(&m4, mask, 4)
    # The key repeated twice in memory order, whatever the byte order.
    m8 = (<uint64_t>m4 << 32) | m4
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        w ^= m8
        memcpy(p + i, &w, 8)
        i += 8
    while i < n:
        p[i] ^= mask[i & 3]
        i += 1


cdef inline bint ws_close_code_valid(uint32_t code) noexcept nogil:
    # RFC 6455 section 7.4 and the IANA registry: what may appear on the wire.
    # 1004-1006 and 1015 are reserved, 1016-2999 unassigned, 3000-4999 for
    # libraries and applications.
    return ((1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999))


cdef inline int ws_fail(bn_ws_event* ev, int code) noexcept nogil:
    ev.kind = WS_EV_ERROR
    ev.code = code
    return 0


cdef int ws_msg_append(bn_ws_reader* r, const uint8_t* p, uint64_t n) noexcept nogil:
    """Append a fragment to the open message; 0, -1 out of memory, or -2
    past the engine's reassembly cap (all connections' open messages)."""
    cdef uint64_t need = r.msg_len + n
    cdef uint64_t cap
    cdef char* grown
    if need > r.msg_cap:
        cap = r.msg_cap * 2 if r.msg_cap else 256
        while cap < need:
            cap *= 2
        if cap > r.max_message_bytes:
            cap = r.max_message_bytes
        if r.pool != NULL and bn_add_u64(r.pool, cap - r.msg_cap) > r.pool_cap:
            bn_add_u64(r.pool, <uint64_t>0 - (cap - r.msg_cap))
            return -2
        grown = <char*>realloc(r.msg, cap)
        if grown == NULL:
            if r.pool != NULL:
                bn_add_u64(r.pool, <uint64_t>0 - (cap - r.msg_cap))
            return -1
        r.msg = grown
        r.msg_cap = cap
    if n:
        memcpy(r.msg + r.msg_len, p, n)
    r.msg_len = need
    return 0


cdef size_t ws_next(bn_ws_reader* r, char* buf, size_t n, bn_ws_event* ev) noexcept nogil:
    """Parse the next client frame at `buf` (n bytes buffered); return the
    bytes it used (0 when ev.kind is WS_EV_NEED_MORE or WS_EV_ERROR).

    The payload is unmasked in place (a client's frames; a server's, with
    r.server_frames, are unmasked already and `buf` is only read).  A whole unfragmented message is handed
    out where it lies (ev.data points into `buf`: no copy); fragments are
    collected in the reader and the last one hands out the whole message."""
    cdef uint8_t* p = <uint8_t*>buf
    cdef uint8_t b0
    cdef uint8_t b1
    cdef int opcode
    cdef bint fin
    cdef bint control
    cdef bint text
    cdef bint compressed
    cdef uint64_t plen
    cdef size_t head
    cdef uint8_t* payload
    cdef uint32_t code
    cdef uint32_t reason_state = 0
    cdef int i
    cdef int rc
    ev.kind = WS_EV_NEED_MORE
    ev.data = NULL
    ev.len = 0
    ev.opcode = 0
    ev.code = 0
    ev.compressed = 0
    if n < 2:
        return 0
    b0 = p[0]                           # FIN, RSV1-3, opcode
    b1 = p[1]                           # MASK, payload length (7 bits)
    fin = (b0 & 0x80) != 0
    opcode = b0 & 0x0F
    control = (opcode & 0x08) != 0
    # What the first two bytes decide is refused before the payload arrives.
    # RSV1 marks a compressed message, on its first frame only, and only
    # once permessage-deflate was negotiated (RFC 7692 6); RSV2/3: never.
    compressed = (b0 & WS_RSV1) != 0
    if b0 & 0x30:
        return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    if compressed and (not r.deflate or control or opcode == WS_OP_CONTINUATION):
        return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    if (3 <= opcode <= 7) or opcode >= 0xB:
        return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    # A client masks every frame, a server none (section 5.1).
    if ((b1 & 0x80) != 0) == (r.server_frames != 0):
        return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    if control:
        if not fin or (b1 & 0x7F) > WS_CONTROL_MAX_BYTES:
            return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    elif opcode == WS_OP_CONTINUATION:
        if r.msg_opcode == 0:           # nothing to continue
            return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    elif r.msg_opcode != 0:             # a new message inside a fragmented one
        return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
    plen = b1 & 0x7F
    head = 2
    if plen == 126:                     # 16-bit extended payload length
        if n < 4:
            return 0
        plen = (<uint64_t>p[2] << 8) | p[3]
        head = 4
    elif plen == 127:                   # 64-bit extended payload length
        if n < 10:
            return 0
        plen = 0
        for i in range(8):
            plen = (plen << 8) | p[2 + i]
        if plen >> 63:                  # the most significant bit MUST be 0
            return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
        head = 10
    if not r.server_frames:
        head += 4                       # masking key
    if not control:
        if plen > r.max_frame_bytes or r.msg_len + plen > r.max_message_bytes:
            return ws_fail(ev, WS_CLOSE_TOO_BIG)
    if n < head or n - head < plen:
        return 0
    payload = p + head
    if not r.server_frames:
        ws_unmask(payload, plen, p + head - 4)
    if control:
        if opcode == WS_OP_PING:
            ev.kind = WS_EV_PING
        elif opcode == WS_OP_PONG:
            ev.kind = WS_EV_PONG
        else:                           # close: [code (2 bytes, network order) [reason]]
            if plen == 0:
                ev.code = WS_CLOSE_NO_STATUS
            elif plen == 1:
                return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
            else:
                code = (<uint32_t>payload[0] << 8) | payload[1]
                if not ws_close_code_valid(code):
                    return ws_fail(ev, WS_CLOSE_PROTOCOL_ERROR)
                if utf8_check(&reason_state, payload + 2, plen - 2) != 0 or (reason_state >> 16):
                    return ws_fail(ev, WS_CLOSE_INVALID_DATA)
                ev.code = <int>code
                payload += 2
                plen -= 2
            ev.kind = WS_EV_CLOSE
        ev.data = <const char*>payload
        ev.len = plen
        return head + <size_t>(payload - (p + head)) + plen
    if opcode == WS_OP_CONTINUATION:
        compressed = r.msg_compressed
    text = opcode == WS_OP_TEXT or (opcode == WS_OP_CONTINUATION and r.msg_opcode == WS_OP_TEXT)
    # A compressed message is checked as UTF-8 once inflated (_ws_deflate.pxi).
    if text and not compressed:
        if utf8_check(&r.utf8_state, payload, plen) != 0:
            return ws_fail(ev, WS_CLOSE_INVALID_DATA)
        if fin and (r.utf8_state >> 16):    # the message ends inside a character
            return ws_fail(ev, WS_CLOSE_INVALID_DATA)
    if fin and opcode != WS_OP_CONTINUATION:
        ev.kind = WS_EV_MESSAGE
        ev.opcode = opcode
        ev.compressed = compressed
        ev.data = <const char*>payload
        ev.len = plen
        r.utf8_state = 0
        return head + plen
    rc = ws_msg_append(r, payload, plen)
    if rc != 0:
        return ws_fail(ev, WS_CLOSE_TRY_AGAIN if rc == -2 else WS_CLOSE_INTERNAL)
    if opcode != WS_OP_CONTINUATION:
        r.msg_opcode = <uint8_t>opcode
        r.msg_compressed = compressed
    if not fin:
        ev.kind = WS_EV_FRAGMENT
        return head + plen
    ev.kind = WS_EV_MESSAGE
    ev.opcode = r.msg_opcode
    ev.compressed = r.msg_compressed
    ev.data = r.msg
    ev.len = r.msg_len
    # The message stays readable at r.msg until the next fragment arrives.
    r.msg_opcode = 0
    r.msg_compressed = 0
    r.msg_len = 0
    r.utf8_state = 0
    return head + plen


cdef size_t ws_server_head(uint8_t* out, int opcode, uint64_t payload_len) noexcept nogil:
    """Write a final, unmasked frame head (WS_SERVER_HEAD_MAX_BYTES at most);
    return its length.  Unmasked, so every subscriber gets the same bytes."""
    cdef int i
    out[0] = <uint8_t>(0x80 | opcode)   # FIN + opcode
    if payload_len <= WS_CONTROL_MAX_BYTES:
        out[1] = <uint8_t>payload_len
        return 2
    if payload_len <= 0xFFFF:
        out[1] = 126
        out[2] = <uint8_t>(payload_len >> 8)
        out[3] = <uint8_t>payload_len
        return 4
    out[1] = 127
    for i in range(8):
        out[2 + i] = <uint8_t>(payload_len >> (56 - 8 * i))
    return 10


# -- Python entry points for tests and tools -------------------------------------

WS_EVENT_NAMES = {WS_EV_MESSAGE: "message", WS_EV_PING: "ping", WS_EV_PONG: "pong",
                  WS_EV_CLOSE: "close", WS_EV_ERROR: "error", WS_EV_FRAGMENT: "fragment"}


def ws_parse(bytes data not None, uint64_t max_frame_bytes=65536,
             uint64_t max_message_bytes=1048576):
    """Run client bytes through one connection's frame reader as a worker
    would: (events, bytes used).  An event is (kind, opcode_or_code, payload);
    reading stops at the first error or when no whole frame is left."""
    cdef bn_ws_reader r
    cdef bytearray buf = bytearray(data)
    cdef bint done = False
    cdef size_t used
    events: list = []
    ws_reader_init(&r, max_frame_bytes, max_message_bytes)
    try:
        used = ws_read_events(&r, buf, len(buf), events, &done)
    finally:
        ws_reader_free(&r)
    return events, used


cdef size_t ws_read_events(bn_ws_reader* r, char* p, size_t n, list events, bint* done,
                           list controls=None) except? 0:
    """Append to `events` the (kind, opcode_or_code, payload) of each whole
    frame in p[0:n] (given `controls`: a message as its payload alone, one
    object per message, and the other events to `controls`); the bytes
    used.  Stops at the first error or close (then sets *done) or when no
    whole frame is left."""
    cdef bn_ws_event ev
    cdef size_t used = 0
    cdef size_t step
    while True:
        step = ws_next(r, p + used, n - used, &ev)
        if ev.kind == WS_EV_NEED_MORE:
            return used
        used += step
        if ev.kind == WS_EV_ERROR:
            (events if controls is None else controls).append(("error", ev.code, b""))
            done[0] = True
            return used
        if ev.kind == WS_EV_FRAGMENT:
            continue
        if controls is not None:
            if ev.kind == WS_EV_MESSAGE:
                events.append(PyBytes_FromStringAndSize(ev.data, <Py_ssize_t>ev.len))
                continue
            controls.append((WS_EVENT_NAMES[ev.kind], ev.code,
                             PyBytes_FromStringAndSize(ev.data, <Py_ssize_t>ev.len)))
        else:
            events.append((WS_EVENT_NAMES[ev.kind],
                           ev.opcode if ev.kind == WS_EV_MESSAGE else ev.code,
                           PyBytes_FromStringAndSize(ev.data, <Py_ssize_t>ev.len)))
        if ev.kind == WS_EV_CLOSE:
            done[0] = True
            return used


def ws_frame(int opcode, bytes payload not None):
    """A server frame: unmasked head + payload."""
    cdef uint8_t head[WS_SERVER_HEAD_MAX_BYTES]
    cdef size_t n = ws_server_head(head, opcode, len(payload))
    return PyBytes_FromStringAndSize(<char*>head, <Py_ssize_t>n) + payload


def ws_accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key, computed natively."""
    cdef bytes raw = key.encode("ascii") if isinstance(key, str) else key
    cdef char out[WS_ACCEPT_BYTES]
    bn_ws_accept(raw, len(raw), out)
    return out[:WS_ACCEPT_BYTES].decode("ascii")


def utf8_valid(bytes data not None, Py_ssize_t split=-1):
    """Whether `data` is complete, valid UTF-8 by the native check; with
    `split`, fed in two pieces cut there (as fragments are)."""
    cdef uint32_t state = 0
    cdef const uint8_t* p = <const uint8_t*><const char*>data
    cdef size_t n = len(data)
    cdef size_t cut = n if split < 0 or <size_t>split > n else <size_t>split
    if utf8_check(&state, p, cut) != 0:
        return False
    if utf8_check(&state, p + cut, n - cut) != 0:
        return False
    return (state >> 16) == 0


cdef class WSFrameReader:
    """One connection's frame reader fed in arbitrary pieces, with the input
    buffer a worker keeps: for tests of splits at every byte boundary."""
    cdef bn_ws_reader r
    cdef bytearray buf
    cdef bint done

    def __cinit__(self, uint64_t max_frame_bytes=65536, uint64_t max_message_bytes=1048576):
        ws_reader_init(&self.r, max_frame_bytes, max_message_bytes)
        self.buf = bytearray()
        self.done = False

    def __dealloc__(self):
        ws_reader_free(&self.r)

    def feed(self, bytes data not None):
        """Append `data`; return the events of every frame now complete, as
        ws_parse() does.  After an error or a close, input is ignored."""
        cdef bint done = False
        cdef size_t used
        events: list = []
        if self.done:
            return events
        self.buf += data
        used = ws_read_events(&self.r, self.buf, <size_t>len(self.buf), events, &done)
        self.done = done
        del self.buf[:used]
        return events


def ws_client_frame(int opcode, payload not None, bytes mask not None):
    """A client frame (FIN set): `payload` (bytes or str, sent as UTF-8)
    masked with the 4-byte `mask`, which RFC 6455 5.3 wants fresh and
    unpredictable for every frame (os.urandom(4))."""
    cdef bytes data = payload.encode() if isinstance(payload, str) else payload
    cdef size_t n = len(data)
    cdef uint8_t head[WS_CLIENT_HEAD_MAX_BYTES]
    cdef size_t hn
    cdef bytes out
    cdef char* q
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    if not 0 <= opcode <= 0xF:
        raise ValueError("opcode must be 0-15")
    hn = ws_server_head(head, opcode, n)
    head[1] |= 0x80                     # MASK
    memcpy(head + hn, <const char*>mask, 4)
    hn += 4
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(hn + n))
    q = <char*>out
    memcpy(q, head, hn)
    memcpy(q + hn, <const char*>data, n)
    ws_unmask(<uint8_t*>q + hn, n, head + hn - 4)     # XOR: masking is unmasking
    return out


cdef class WSClientReader:
    """The client side of one WebSocket connection's frame reading: a
    server's frames (unmasked) in whatever pieces the socket gives them.

    `feed(data)` takes one read and returns, in order, every message it
    completed as its payload (bytes, text messages undecoded: one object per
    message, and the list is what a feed hands its adapter as a batch).
    Every control frame or error goes to the `controls` list as a tuple
    (kind, code, payload): ("ping", 0, payload), ("pong", 0, payload),
    ("close", code, reason) or ("error", code to close with, b""); the caller
    takes them and clears the list.  One native call per read, however many
    frames it holds.  After a close or an error the reader is done and ignores
    input.  A frame longer than `max_frame_bytes` (or a message past
    `max_message_bytes`) is an error as soon as its head is read, so what is
    kept between reads stays under max_frame_bytes + 14 bytes."""
    cdef bn_ws_reader r
    cdef char* pend                     # the start of a frame not complete yet (malloc)
    cdef size_t pend_len                # bytes at pend
    cdef size_t pend_cap                # bytes allocated at pend
    cdef readonly bint done             # a close or an error was read: no more input
    cdef readonly list controls         # control frames and errors read, for the caller

    def __cinit__(self, uint64_t max_frame_bytes=4194304, uint64_t max_message_bytes=4194304):
        ws_reader_init(&self.r, max_frame_bytes, max_message_bytes)
        self.r.server_frames = 1
        self.pend = NULL
        self.pend_len = 0
        self.pend_cap = 0
        self.done = False
        self.controls = []

    def __dealloc__(self):
        ws_reader_free(&self.r)
        free(self.pend)

    @property
    def pending_bytes(self):
        """Bytes of an incomplete frame held since the last read."""
        return self.pend_len

    def feed(self, bytes data not None):
        """Read `data` (the next bytes from the server); see the class."""
        cdef size_t n = len(data)
        cdef size_t used
        cdef bint done = False
        events: list = []
        if self.done or n == 0:
            return events
        if self.pend_len == 0:
            # The usual case: frames read where they lie in `data` (server
            # frames are not unmasked, so the bytes object is never written).
            used = ws_read_events(&self.r, <char*><const char*>data, n, events, &done,
                                  self.controls)
            if used < n and not done:
                self._keep(<const char*>data + used, n - used)
        else:
            self._keep(<const char*>data, n)
            used = ws_read_events(&self.r, self.pend, self.pend_len, events, &done,
                                  self.controls)
            self.pend_len -= used
            if self.pend_len and used:
                memmove(self.pend, self.pend + used, self.pend_len)
        if done:
            self.done = True
            self.pend_len = 0
        return events

    cdef int _keep(self, const char* p, size_t n) except -1:
        cdef size_t need = self.pend_len + n
        cdef size_t cap
        cdef char* grown
        if need > self.pend_cap:
            cap = self.pend_cap * 2 if self.pend_cap else 4096
            while cap < need:
                cap *= 2
            grown = <char*>realloc(self.pend, cap)
            if grown == NULL:
                raise MemoryError()
            self.pend = grown
            self.pend_cap = cap
        memcpy(self.pend + self.pend_len, p, n)
        self.pend_len = need
        return 0
