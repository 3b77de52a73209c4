# HTTP connections: input leftovers, output buffers and gathered writes.
#
# A worker answers a connection's requests by queueing iovecs
# [pre-built head, worker's Date/Connection tail, body] and writes them with
# one sendmsg at the end of the step: the body is never copied.
#
# QSBR contract: an entry pointer lives in the worker's iovec array only until
# the end of conn_run, which always flushes it.  What the kernel did not take
# is copied into the connection's own output buffer there and then (the only
# copy, and only on that slow path), so no entry is held across batches.

cdef struct bn_conn:
    int fd                              # -1 = free slot
    uint32_t gen                        # bumped on close; miss replies carry it
    uint32_t flags                      # CONN_*
    uint32_t events                     # current epoll interest
    uint8_t wait_tail                   # TAIL_* for the reply to the waiting request
    char* inb                           # unparsed input, NULL when none (most of the time)
    size_t in_len                       # bytes
    size_t in_cap                       # bytes
    size_t in_scanned                   # bytes of inb already searched for the head's end
    char* outb                          # unsent output, NULL when none
    size_t out_off                      # bytes already sent from outb
    size_t out_len                      # bytes in outb
    size_t out_cap                      # bytes
    uint32_t peer_len                   # bytes of `peer`
    char peer[ADDR_MAX_BYTES]           # the client's address, from accept4
    int64_t last_active_ns              # last read (or accept)
    int64_t head_start_ns               # when the incomplete head in inb began arriving
    int64_t last_write_ns               # last write progress while output was pending
    uint64_t requests                   # requests answered on this connection
    bn_ws_conn* ws                      # after a WebSocket upgrade, else NULL


cdef const char* HTTP_DAYS = b"SunMonTueWedThuFriSat"
cdef const char* HTTP_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"


cdef void http_worker_date(bn_hworker* w) noexcept nogil:
    """Rebuild the three tails for the current second (RFC 9110 IMF-fixdate).
    Formatted by hand: strftime would follow the process locale."""
    cdef time_t now = time(NULL)
    cdef tm t
    cdef char date[40]
    cdef char* p = date
    cdef int i
    cdef size_t dlen
    if now == w.date_second:
        return
    w.date_second = now
    gmtime_r(&now, &t)
    memcpy(p, b"Date: ", 6)
    p += 6
    memcpy(p, HTTP_DAYS + 3 * t.tm_wday, 3)
    p[3] = 44                           # ','
    p[4] = 32
    p[5] = <char>(48 + t.tm_mday // 10)
    p[6] = <char>(48 + t.tm_mday % 10)
    p[7] = 32
    memcpy(p + 8, HTTP_MONTHS + 3 * t.tm_mon, 3)
    p[11] = 32
    i = t.tm_year + 1900
    p[12] = <char>(48 + i // 1000)
    p[13] = <char>(48 + (i // 100) % 10)
    p[14] = <char>(48 + (i // 10) % 10)
    p[15] = <char>(48 + i % 10)
    p[16] = 32
    p[17] = <char>(48 + t.tm_hour // 10)
    p[18] = <char>(48 + t.tm_hour % 10)
    p[19] = 58                          # ':'
    p[20] = <char>(48 + t.tm_min // 10)
    p[21] = <char>(48 + t.tm_min % 10)
    p[22] = 58
    p[23] = <char>(48 + t.tm_sec // 10)
    p[24] = <char>(48 + t.tm_sec % 10)
    memcpy(p + 25, b" GMT\r\n", 6)
    dlen = 6 + 31
    memcpy(w.tails[TAIL_KEEP], date, dlen)
    memcpy(w.tails[TAIL_KEEP] + dlen, b"\r\n", 2)
    w.tail_len[TAIL_KEEP] = dlen + 2
    memcpy(w.tails[TAIL_KEEP10], date, dlen)
    memcpy(w.tails[TAIL_KEEP10] + dlen, b"Connection: keep-alive\r\n\r\n", 26)
    w.tail_len[TAIL_KEEP10] = dlen + 26
    memcpy(w.tails[TAIL_CLOSE], date, dlen)
    memcpy(w.tails[TAIL_CLOSE] + dlen, b"Connection: close\r\n\r\n", 21)
    w.tail_len[TAIL_CLOSE] = dlen + 21


cdef int conn_out_append(bn_conn* c, const char* data, size_t n) noexcept nogil:
    """Copy `n` bytes to the end of the connection's output buffer; -1 = no memory."""
    cdef size_t need
    cdef size_t cap
    cdef char* grown
    if c.out_off == c.out_len:
        c.out_off = 0
        c.out_len = 0
    need = c.out_len + n
    if need > c.out_cap:
        if c.out_off > 0:               # slide the unsent part down first
            memmove(c.outb, c.outb + c.out_off, c.out_len - c.out_off)
            c.out_len -= c.out_off
            c.out_off = 0
            need = c.out_len + n
        if need > c.out_cap:
            cap = c.out_cap * 2 if c.out_cap else 4096
            while cap < need:
                cap *= 2
            grown = <char*>realloc(c.outb, cap)
            if grown == NULL:
                return -1
            c.outb = grown
            c.out_cap = cap
    memcpy(c.outb + c.out_len, data, n)
    c.out_len += n
    return 0


cdef inline int conn_out_pending(bn_conn* c) noexcept nogil:
    return c.out_len > c.out_off


cdef int conn_send_out(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Write what the output buffer holds: 0 = done or EAGAIN, -1 = the
    connection failed (flagged CONN_DEAD, counted)."""
    cdef ssize_t n
    cdef int err
    while c.out_len > c.out_off:
        n = send(c.fd, c.outb + c.out_off, c.out_len - c.out_off, MSG_NOSIGNAL)
        if n > 0:
            c.out_off += <size_t>n
            c.last_write_ns = w.now_ns
            bn_count(&w.counters.bytes_out, <uint64_t>n)
            continue
        err = errno
        if n < 0 and err == EINTR:
            bn_count(&w.counters.eintr, 1)
            continue
        if n < 0 and err == EAGAIN:
            return 0
        conn_io_error(w, c, err)
        return -1
    c.out_off = 0
    c.out_len = 0
    if c.out_cap > HTTP_OUT_FREE_BYTES:
        free(c.outb)
        c.outb = NULL
        c.out_cap = 0
    return 0


cdef inline void conn_io_error(bn_hworker* w, bn_conn* c, int err) noexcept nogil:
    if err == ECONNRESET:
        bn_count(&w.counters.econnreset, 1)
    elif err == EPIPE:
        bn_count(&w.counters.epipe, 1)
    else:
        bn_count(&w.counters.io_errors, 1)
    c.flags |= CONN_DEAD


cdef int conn_flush_iov(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Gather-write the worker's pending iovecs for `c` (sendmsg = writev plus
    MSG_NOSIGNAL).  Whatever the kernel does not take is copied into the
    connection's output buffer before returning: the iovecs may point into
    table entries, which must not outlive this batch (QSBR).  0 or -1 (dead)."""
    cdef msghdr msg
    cdef ssize_t n = 0
    cdef int err
    cdef int i
    cdef size_t sent
    cdef int niov = w.niov
    w.niov = 0
    w.iov_bytes = 0
    if niov == 0 or (c.flags & CONN_DEAD):
        return 0
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = w.iov
    msg.msg_iovlen = <size_t>niov
    while True:
        n = sendmsg(c.fd, &msg, MSG_NOSIGNAL)
        if n >= 0:
            break
        err = errno
        if err == EINTR:
            bn_count(&w.counters.eintr, 1)
            continue
        if err == EAGAIN:
            n = 0
            break
        conn_io_error(w, c, err)
        return -1
    bn_count(&w.counters.bytes_out, <uint64_t>n)
    sent = <size_t>n
    i = 0
    while i < niov and sent >= w.iov[i].iov_len:
        sent -= w.iov[i].iov_len
        i += 1
    if i == niov:
        return 0
    # Slow path: the socket buffer is full.  Copy the rest (the one copy).
    bn_count(&w.counters.partial_writes, 1)
    c.last_write_ns = w.now_ns
    while i < niov:
        if conn_out_append(c, <const char*>w.iov[i].iov_base + sent, w.iov[i].iov_len - sent) < 0:
            bn_count(&w.counters.oom_closes, 1)
            c.flags |= CONN_DEAD
            return -1
        sent = 0
        i += 1
    return 0


cdef inline int conn_emit(bn_hworker* w, bn_conn* c, const char* head, size_t head_len, int tail,
                          const char* body, size_t body_len, int status) noexcept nogil:
    """Queue one response: head + tail + body.  Zero-copy into the iovecs unless
    output is already backlogged (then appended, to keep the order).  0 or -1."""
    if status < 300:
        bn_count(&w.counters.responses_2xx, 1)
    elif status < 400:
        bn_count(&w.counters.responses_3xx, 1)
    elif status < 500:
        bn_count(&w.counters.responses_4xx, 1)
    else:
        bn_count(&w.counters.responses_5xx, 1)
    c.requests += 1
    # Flush by count and by bytes: pipelined hits on a big entry must not
    # pile up (and, on a slow reader, be copied) without bound.
    if w.niov + 3 > HTTP_IOV_MAX or w.iov_bytes >= w.max_output_bytes:
        if conn_flush_iov(w, c) < 0:
            return -1
    if conn_out_pending(c):
        if (conn_out_append(c, head, head_len) < 0
                or conn_out_append(c, w.tails[tail], w.tail_len[tail]) < 0
                or conn_out_append(c, body, body_len) < 0):
            bn_count(&w.counters.oom_closes, 1)
            c.flags |= CONN_DEAD
            return -1
        return 0
    w.iov[w.niov].iov_base = <void*>head
    w.iov[w.niov].iov_len = head_len
    w.iov[w.niov + 1].iov_base = <void*>w.tails[tail]
    w.iov[w.niov + 1].iov_len = w.tail_len[tail]
    w.iov[w.niov + 2].iov_base = <void*>body      # into the entry: never copied here
    w.iov[w.niov + 2].iov_len = body_len
    w.niov += 3
    w.iov_bytes += head_len + w.tail_len[tail] + body_len
    return 0


cdef inline int conn_emit_error(bn_hworker* w, bn_conn* c, int err, int tail, int head_only) noexcept nogil:
    cdef bn_static_resp* r = &HTTP_ERR[err]
    return conn_emit(w, c, r.head, r.head_len, tail, r.body, 0 if head_only else r.body_len, r.status)



cdef void conn_close(bn_hworker* w, bn_conn* c) noexcept nogil:
    if c.ws != NULL:
        ws_conn_free(w, c)
    # Counted before close(): a client that sees the close also sees the count.
    w.active -= 1
    bn_count(&w.counters.closed, 1)
    bn_store_u64(&w.counters.active, w.active)
    # close() also removes the fd from epoll (no other descriptor shares it).
    close(c.fd)
    c.fd = -1
    c.gen = (c.gen + 1) & 0x7FFFFFFF
    c.flags = 0
    c.events = 0
    free(c.inb)
    c.inb = NULL
    c.in_len = 0
    c.in_cap = 0
    c.in_scanned = 0
    free(c.outb)
    c.outb = NULL
    c.out_off = 0
    c.out_len = 0
    c.out_cap = 0
    w.free_slots[w.free_top] = <uint32_t>(c - w.conns)
    w.free_top += 1


cdef int conn_keep_input(bn_hworker* w, bn_conn* c, const char* data, size_t n, size_t used,
                         int head_incomplete) noexcept nogil:
    """After parsing: keep the unparsed tail data[used:n] in the connection's
    own buffer (data may be the scratch buffer or that buffer itself).  Only
    an incomplete head counts as searched: the next read looks at new bytes."""
    cdef size_t left = n - used
    cdef char* buf
    if data == c.inb:
        if left == 0:
            free(c.inb)
            c.inb = NULL
            c.in_len = 0
            c.in_cap = 0
            c.in_scanned = 0
            return 0
        if used > 0:
            memmove(c.inb, c.inb + used, left)
            c.head_start_ns = w.now_ns
        c.in_scanned = left if head_incomplete else 0
        c.in_len = left
        return 0
    if left == 0:
        return 0
    buf = <char*>malloc(left + HTTP_READ_MIN_BYTES)
    if buf == NULL:
        bn_count(&w.counters.oom_closes, 1)
        c.flags |= CONN_DEAD
        return -1
    memcpy(buf, data + used, left)
    c.inb = buf
    c.in_len = left
    c.in_cap = left + HTTP_READ_MIN_BYTES
    c.in_scanned = left if head_incomplete else 0
    c.head_start_ns = w.now_ns
    return 0
