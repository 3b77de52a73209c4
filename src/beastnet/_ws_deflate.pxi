# permessage-deflate (RFC 7692) on the WebSocket feed, compressed once per
# publication.
#
# The server always takes server_no_context_takeover: every message is a
# deflate stream of its own, so one compressed frame is right for every
# subscriber that negotiated the extension, and a table's writer deflates a
# publication once, when it builds the entry (zlib raw deflate, sync flush,
# the trailing 00 00 ff ff stripped), beside the plain frame.  The writer
# runs it with the GIL released (the table lock is held anyway: writes are
# serialised), so it is off the workers, off every subscriber's path and off
# the GIL; a worker only chooses which of the entry's two frames a
# connection gets.  Uncompressed messages stay legal on a compressing
# connection (RSV1 clear), which is how a body under the threshold, or one
# larger than a client's server_max_window_bits allows, goes out.
#
# The server also asks client_no_context_takeover (RFC 7692 7.1.1.2 lets it
# ask even when the client did not offer it), so every client message is a
# stream of its own too: one inflate state per worker serves all its
# connections, reset per message, and no connection owns a 32 KiB window.
# The output limit (max_message_bytes) is fixed before inflating; a message
# that would pass it closes 1009 with at most that much inflated.

cdef extern from "<time.h>" nogil:
    enum:
        CLOCK_THREAD_CPUTIME_ID


cdef struct bn_deflater:                # a table's: one writer at a time (the table lock)
    z_stream zs
    char* out                           # cap bytes: the last publication, deflated
    size_t cap


cdef bn_deflater* deflater_new() noexcept nogil:
    cdef bn_deflater* d = <bn_deflater*>calloc(1, sizeof(bn_deflater))
    if d == NULL:
        return NULL
    # Raw deflate (no zlib header), 32 KiB window, zlib's default level.
    if deflateInit2(&d.zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK:
        free(d)
        return NULL
    return d


cdef void deflater_free(bn_deflater* d) noexcept nogil:
    if d == NULL:
        return
    deflateEnd(&d.zs)
    free(d.out)
    free(d)


cdef inline int64_t thread_cpu_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef size_t deflater_run(bn_deflater* d, const char* data, size_t n,
                         bint smaller) noexcept nogil:
    """Deflate `data` as one message (RFC 7692 7.2.1) into d.out; return its
    length, or 0 when zlib failed or, with `smaller`, it would not be smaller."""
    cdef size_t zlen = 0
    # With `smaller`, more than the data (plus the trailer) is no saving.
    cdef size_t need = n + 4 if smaller else deflateBound(&d.zs, n) + 16
    cdef char* grown
    if d.cap < need:
        grown = <char*>realloc(d.out, need)
        if grown == NULL:
            return 0
        d.out = grown
        d.cap = need
    if deflateReset(&d.zs) != Z_OK:
        return 0
    d.zs.next_in = <unsigned char*>data
    d.zs.avail_in = <unsigned int>n
    d.zs.next_out = <unsigned char*>d.out
    d.zs.avail_out = <unsigned int>need
    if deflate(&d.zs, Z_SYNC_FLUSH) == Z_OK and d.zs.avail_in == 0 and d.zs.avail_out > 0:
        zlen = need - d.zs.avail_out
        # A sync flush ends with an empty stored block: the receiver adds it back.
        if zlen >= 4 and memcmp(d.out + zlen - 4, b"\x00\x00\xff\xff", 4) == 0:
            zlen -= 4
        else:
            zlen = 0
    return zlen if zlen < n or not smaller else 0


cdef size_t ws_deflate_publication(bn_deflater* d, bn_ws_hubs* hubs, const char* body,
                                   size_t n) noexcept nogil:
    """A publication deflated once (deflater_run), counted in every hub that
    compresses."""
    cdef int64_t t0 = thread_cpu_ns()
    cdef size_t zlen = deflater_run(d, body, n, 1)
    cdef int i
    cdef bn_ws_hub* hub
    t0 = thread_cpu_ns() - t0
    for i in range(hubs.n):
        hub = hubs.hubs[i]
        if hub.compress_min == 0:
            continue
        bn_add_relaxed(&hub.deflate_cpu_ns, <uint64_t>t0)
        if zlen:
            bn_add_relaxed(&hub.deflated, 1)
            bn_add_relaxed(&hub.deflate_bytes_in, n)
            bn_add_relaxed(&hub.deflate_bytes_out, zlen)
        else:
            bn_add_relaxed(&hub.deflate_no_gain, 1)
    return zlen


# -- the offer (Sec-WebSocket-Extensions) -------------------------------------------------

cdef inline bint ext_space(char c) noexcept nogil:
    return c == 32 or c == 9


cdef size_t ext_token(const char* p, size_t i, size_t n) noexcept nogil:
    """The end of the token starting at p[i] (i when there is none)."""
    while i < n and HTTP_TCHAR[<uint8_t>p[i]]:
        i += 1
    return i


cdef int ws_deflate_offer(const char* p, size_t n, size_t* at) noexcept nogil:
    """Read one extension offer at p[at[0]:n] and move at[0] past it (and
    its comma).  Returns -1 when it is not permessage-deflate or must be
    declined (RFC 7692 7.1: an unknown, repeated or invalid parameter),
    else the server_max_window_bits it asks (8..15), or 0 for none."""
    cdef size_t i = at[0]
    cdef size_t s
    cdef size_t e
    cdef size_t vs
    cdef size_t ve
    cdef int ok = 1
    cdef int bits = 0
    cdef int value
    cdef uint32_t seen = 0
    cdef uint32_t bit
    while i < n and ext_space(p[i]):
        i += 1
    s = i
    i = ext_token(p, i, n)
    if not (i - s == 18 and ascii_ieq(p + s, b"permessage-deflate", 18)):
        ok = 0
    while True:
        while i < n and ext_space(p[i]):
            i += 1
        if i >= n or p[i] == 44:        # ',' ends the offer
            break
        if p[i] != 59:                  # ';' before each parameter
            ok = 0
            while i < n and p[i] != 44:
                i += 1
            break
        i += 1
        while i < n and ext_space(p[i]):
            i += 1
        s = i
        e = ext_token(p, i, n)
        i = e
        while i < n and ext_space(p[i]):
            i += 1
        vs = ve = 0
        value = -1
        if i < n and p[i] == 61:        # '=' value: a token or a quoted string
            i += 1
            while i < n and ext_space(p[i]):
                i += 1
            if i < n and p[i] == 34:
                i += 1
                vs = i
                while i < n and p[i] != 34:
                    i += 1
                ve = i
                if i < n:
                    i += 1
                else:
                    ok = 0
            else:
                vs = i
                i = ext_token(p, i, n)
                ve = i
            # 8..15 in decimal, no leading zero (RFC 7692 7.1.2.1).
            if ve - vs == 1 and 56 <= <uint8_t>p[vs] <= 57:
                value = p[vs] - 48
            elif ve - vs == 2 and p[vs] == 49 and 48 <= <uint8_t>p[vs + 1] <= 53:
                value = 10 + p[vs + 1] - 48
            else:
                ok = 0
        if e - s == 26 and ascii_ieq(p + s, b"server_no_context_takeover", 26):
            bit = 1
            ok = ok and vs == ve
        elif e - s == 26 and ascii_ieq(p + s, b"client_no_context_takeover", 26):
            bit = 2
            ok = ok and vs == ve
        elif e - s == 22 and ascii_ieq(p + s, b"server_max_window_bits", 22):
            bit = 4
            ok = ok and value > 0
            bits = value
        elif e - s == 22 and ascii_ieq(p + s, b"client_max_window_bits", 22):
            bit = 8                     # a value is optional; inflate takes any window
        else:
            bit = 16
            ok = 0
        if seen & bit:
            ok = 0
        seen |= bit
    if i < n:
        i += 1                          # the comma
    at[0] = i
    return bits if ok else -1


cdef int ws_deflate_offers(const char* p, size_t n) noexcept nogil:
    """The first acceptable permessage-deflate offer in one header value:
    its server_max_window_bits (0 = none), or -1 when none is acceptable."""
    cdef size_t at = 0
    cdef int bits
    while at < n:
        bits = ws_deflate_offer(p, n, &at)
        if bits >= 0:
            return bits
    return -1


# -- client messages -------------------------------------------------------------------------

cdef int ws_inflate_message(bn_ws_worker* ws, bn_ws_event* ev) noexcept nogil:
    """Inflate the compressed message at ev.data in place of it (ev.data then
    points into the worker's buffer, valid until the next message).  Returns
    0, or the close code: 1009 past max_message_bytes, 1007 for data that is
    not deflate or ends inside a block (truncated), 1011 out of memory."""
    cdef z_stream* zs = ws.inflater
    cdef uint64_t limit = ws.max_message_bytes + 1  # one byte more tells "too big"
    cdef unsigned char tail[4]
    cdef size_t produced = 0
    cdef size_t cap
    cdef char* grown
    cdef int phase
    cdef int rc = Z_OK
    tail[0] = 0
    tail[1] = 0
    tail[2] = 0xff
    tail[3] = 0xff
    if zs == NULL:
        zs = <z_stream*>calloc(1, sizeof(z_stream))
        if zs == NULL:
            return WS_CLOSE_INTERNAL
        if inflateInit2(zs, -15) != Z_OK:
            free(zs)
            return WS_CLOSE_INTERNAL
        ws.inflater = zs
    elif inflateReset(zs) != Z_OK:
        return WS_CLOSE_INTERNAL
    for phase in range(2):
        if phase == 0:
            zs.next_in = <unsigned char*>ev.data
            zs.avail_in = <unsigned int>ev.len
        else:
            zs.next_in = tail
            zs.avail_in = 4
        while True:
            if produced == ws.zin_cap:
                if ws.zin_cap >= limit:
                    return WS_CLOSE_TOO_BIG
                cap = ws.zin_cap * 2 if ws.zin_cap else 4096
                if cap > limit:
                    cap = <size_t>limit
                grown = <char*>realloc(ws.zin, cap)
                if grown == NULL:
                    return WS_CLOSE_INTERNAL
                ws.zin = grown
                ws.zin_cap = cap
            zs.next_out = <unsigned char*>(ws.zin + produced)
            zs.avail_out = <unsigned int>(ws.zin_cap - produced)
            rc = inflate(zs, Z_SYNC_FLUSH)
            produced = ws.zin_cap - zs.avail_out
            if rc == Z_STREAM_END:
                break
            if rc == Z_MEM_ERROR:
                return WS_CLOSE_INTERNAL
            if rc != Z_OK and rc != Z_BUF_ERROR:
                return WS_CLOSE_INVALID_DATA
            if zs.avail_out == 0:
                continue                # more output may be due: room, then again
            if zs.avail_in == 0:
                break
        if produced >= limit:
            return WS_CLOSE_TOO_BIG
        if rc == Z_STREAM_END:
            break
    # A whole message leaves the inflater between blocks (the empty stored
    # block of the trailer was read); anything else was cut short.
    if rc != Z_STREAM_END and not (zs.data_type & 128):
        return WS_CLOSE_INVALID_DATA
    ev.data = ws.zin
    ev.len = produced
    return 0


cdef int ws_message_inflate(bn_ws_worker* ws, bn_ws_event* ev) noexcept nogil:
    """A compressed message as a plain one: inflated, then (text) checked as
    UTF-8.  0, or the close code."""
    cdef uint32_t utf8 = 0
    cdef int code = ws_inflate_message(ws, ev)
    if code:
        return code
    if ev.opcode == WS_OP_TEXT:
        if utf8_check(&utf8, <const uint8_t*>ev.data, ev.len) != 0 or (utf8 >> 16):
            return WS_CLOSE_INVALID_DATA
    return 0


cdef int ws_echo_compressed(bn_ws_worker* ws, bn_ws_conn* wc, bn_ws_event* ev) noexcept nogil:
    """The echo endpoint answers a compressed message compressed, even when
    that is no shorter (the worker's own deflater, no context takeover).
    0, or -1 when it did not fit."""
    cdef size_t zlen
    if ws.deflater == NULL:
        ws.deflater = deflater_new()
        if ws.deflater == NULL:
            return ws_ctl_frame(wc, ev.opcode, ev.data, ev.len)
    zlen = deflater_run(ws.deflater, ev.data, ev.len, 0)
    if zlen == 0:
        return ws_ctl_frame(wc, ev.opcode, ev.data, ev.len)
    return ws_ctl_frame(wc, ev.opcode | WS_RSV1, ws.deflater.out, zlen)
