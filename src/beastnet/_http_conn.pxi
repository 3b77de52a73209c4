# HTTP connections: input leftovers, the output queue and gathered writes.
#
# A worker answers a connection's requests by queueing iovecs
# [pre-built head, worker's Date/Connection tail, body] and writes them with
# one sendmsg at the end of the step: the body is never copied.
#
# What the kernel does not take goes to the connection's output queue, a
# list of segments sent in order when the socket is writable.  A segment
# points into one of:
# - a table entry, on which it holds a reference (entry_ref): the entry is
#   immutable, so a slow reader of a 16 MiB body costs a reference, not a
#   copy, and the entry outlives its replacement until the last segment
#   pointing into it is sent;
# - static bytes (the pre-built error responses);
# - a copy the segment owns: of the worker's Date/Connection tail (rewritten
#   every second), or of what the kernel did not take of a control-plane
#   reply (freed at the end of the step that delivered it).
# Only copies (and the segment array) are memory a connection adds: they
# count in out_owned_bytes and, across the engine, against
# max_copied_output_bytes.  Answering (and reading) pauses while
# max_output_bytes are queued, copies and references alike: a reference
# keeps a replaced entry alive, so a client pipelining requests it does not
# read must not pin one version per request.  A WebSocket push can queue
# [entry.ws_head, entry.body] the same way: two SEG_ENTRY segments.
#
# QSBR contract: an entry pointer in the worker's iovec array lives only
# until the end of conn_run, which always flushes it; a pointer that must
# wait longer is turned into a segment holding a reference there and then,
# so a worker's quiescent point never leaves an unreferenced entry behind.

cdef struct bn_seg:
    const char* data                    # next byte to send
    size_t len                          # bytes left
    bn_entry* entry                     # reference held on the entry data points into, or NULL
    char* owned                         # copy freed once this segment is sent, or NULL
    size_t owned_bytes                  # bytes of `owned` (counted while queued)

cdef struct bn_conn:
    int fd                              # -1 = free slot
    uint32_t gen                        # bumped on close; miss replies carry it
    uint32_t flags                      # CONN_*
    uint32_t events                     # current epoll interest
    uint8_t wait_tail                   # TAIL_* for the reply to the waiting request
    uint8_t cors                        # CORS_SEG_* + 1 for the current request's answer, 0 = none
    char* inb                           # unparsed input, NULL when none (most of the time)
    size_t in_len                       # bytes
    size_t in_cap                       # bytes
    size_t in_scanned                   # bytes of inb already searched for the head's end
    bn_seg* outq                        # output queue, NULL when none (most of the time)
    uint32_t outq_head                  # first unsent segment
    uint32_t outq_tail                  # one past the last queued segment
    uint32_t outq_cap                   # segments allocated at outq
    size_t out_bytes                    # bytes queued, not yet taken by the kernel
    size_t out_owned_bytes              # of the connection's memory: owned blocks + segment array
    uint64_t sent_bytes                 # bytes the kernel took over the connection's life
    uint64_t win_acked_bytes            # bytes the peer had accepted when the window began
    int64_t win_start_ns                # start of the current write-progress window
    uint32_t peer_len                   # bytes of `peer`
    char peer[ADDR_MAX_BYTES]           # the client's address, from accept4
    int64_t last_active_ns              # last read (or accept)
    int64_t head_start_ns               # when the incomplete head in inb began arriving
    uint64_t requests                   # requests answered on this connection
    uint64_t wait_start_ns              # CLOCK_MONOTONIC ns the waiting request was queued; 0 = none
    bn_ws_conn* ws                      # after a WebSocket upgrade, else NULL
    openssl.SSL* ssl                    # TLS session (_tls.pxi), NULL = plain TCP
    char* tls_pend                      # plaintext an SSL_write committed to but did not finish, or NULL
    uint32_t tls_pend_off               # bytes of tls_pend written
    uint32_t tls_pend_len               # bytes of tls_pend
    uint32_t tls_pend_cap               # bytes allocated at tls_pend (counted in out_owned_bytes)


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


cdef inline int conn_out_pending(bn_conn* c) noexcept nogil:
    return c.out_bytes > 0 or c.tls_pend != NULL or (c.flags & CONN_SEND_INFLIGHT) != 0


cdef inline int conn_out_full(bn_hworker* w, bn_conn* c) noexcept nogil:
    # Answering stops (reads pause) while this much is queued: it bounds both
    # what a connection copies and how many replaced entries it keeps alive.
    return c.out_bytes >= w.max_output_bytes


cdef inline void conn_owned_add(bn_hworker* w, bn_conn* c, size_t n) noexcept nogil:
    c.out_owned_bytes += n
    w.owned_bytes += n
    bn_store_u64(&w.counters.output_copied, w.owned_bytes)


cdef inline void conn_owned_sub(bn_hworker* w, bn_conn* c, size_t n) noexcept nogil:
    c.out_owned_bytes -= n
    w.owned_bytes -= n
    bn_store_u64(&w.counters.output_copied, w.owned_bytes)
    bn_add_u64(w.owned_total, <uint64_t>0 - <uint64_t>n)


cdef int conn_owned_claim(bn_hworker* w, size_t n) noexcept nogil:
    """Reserve `n` owned bytes against the engine-wide cap; -1 = over it (counted)."""
    if bn_add_u64(w.owned_total, n) > w.max_owned_total:
        bn_add_u64(w.owned_total, <uint64_t>0 - <uint64_t>n)
        bn_count(&w.counters.output_cap_closes, 1)
        return -1
    return 0


cdef int conn_outq_grow(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Room for one more segment at outq_tail; -1 = no memory or over the cap."""
    cdef uint32_t live = c.outq_tail - c.outq_head
    cdef uint32_t cap
    cdef bn_seg* grown
    if c.outq_tail < c.outq_cap:
        return 0
    if c.outq_head > 0:                 # slide the unsent segments down first
        memmove(c.outq, c.outq + c.outq_head, live * sizeof(bn_seg))
        c.outq_head = 0
        c.outq_tail = live
        if live < c.outq_cap:
            return 0
    cap = c.outq_cap * 2 if c.outq_cap else HTTP_OUTQ_MIN_SEGS
    if conn_owned_claim(w, (cap - c.outq_cap) * sizeof(bn_seg)) < 0:
        return -1
    grown = <bn_seg*>realloc(c.outq, cap * sizeof(bn_seg))
    if grown == NULL:
        bn_add_u64(w.owned_total, <uint64_t>0 - <uint64_t>((cap - c.outq_cap) * sizeof(bn_seg)))
        bn_count(&w.counters.oom_closes, 1)
        return -1
    conn_owned_add(w, c, (cap - c.outq_cap) * sizeof(bn_seg))
    c.outq = grown
    c.outq_cap = cap
    return 0


cdef int conn_outq_push(bn_hworker* w, bn_conn* c, const char* data, size_t n, int kind,
                        bn_entry* e) noexcept nogil:
    """Queue data[0:n] behind what is pending: SEG_ENTRY takes a reference on
    `e` (data points into it: a body, a head, a WebSocket frame head),
    SEG_COPY copies, SEG_STATIC points.  0, or -1 with the connection
    flagged CONN_DEAD."""
    cdef bn_seg* s
    cdef char* copy = NULL
    if n == 0:
        return 0
    if conn_outq_grow(w, c) < 0:
        c.flags |= CONN_DEAD
        return -1
    if kind == SEG_COPY:
        if conn_owned_claim(w, n) < 0:
            c.flags |= CONN_DEAD
            return -1
        copy = <char*>malloc(n)
        if copy == NULL:
            bn_add_u64(w.owned_total, <uint64_t>0 - <uint64_t>n)
            bn_count(&w.counters.oom_closes, 1)
            c.flags |= CONN_DEAD
            return -1
        memcpy(copy, data, n)
        data = copy
        conn_owned_add(w, c, n)
        e = NULL
    elif kind == SEG_ENTRY:
        entry_ref(e)
    else:
        e = NULL
    s = &c.outq[c.outq_tail]
    c.outq_tail += 1
    s.data = data
    s.len = n
    s.entry = e
    s.owned = copy
    s.owned_bytes = n if copy != NULL else 0
    if c.out_bytes == 0:
        # Output starts waiting: a write-progress window begins.
        c.win_start_ns = w.now_ns
        c.win_acked_bytes = conn_acked_bytes(c)
    c.out_bytes += n
    return 0


cdef inline void conn_seg_release(bn_hworker* w, bn_conn* c, bn_seg* s) noexcept nogil:
    if s.entry != NULL:
        entry_unref(s.entry)
        s.entry = NULL
    if s.owned != NULL:
        free(s.owned)
        s.owned = NULL
        conn_owned_sub(w, c, s.owned_bytes)


cdef void conn_outq_free(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Drop every queued segment (the connection closes) and the array."""
    while c.outq_head < c.outq_tail:
        conn_seg_release(w, c, &c.outq[c.outq_head])
        c.outq_head += 1
    if c.outq != NULL:
        conn_owned_sub(w, c, c.outq_cap * sizeof(bn_seg))
        free(c.outq)
    c.outq = NULL
    c.outq_head = 0
    c.outq_tail = 0
    c.outq_cap = 0
    c.out_bytes = 0


cdef uint64_t conn_acked_bytes(bn_conn* c) noexcept nogil:
    """Bytes the peer has accepted: what the kernel took minus what its send
    queue still holds (SIOCOUTQ: sent but not acknowledged, or not sent).
    Falls back to what the kernel took when the ioctl fails."""
    cdef int queued = 0
    if ioctl(c.fd, SIOCOUTQ, &queued) < 0 or queued < 0 or <uint64_t>queued > c.sent_bytes:
        return c.sent_bytes
    return c.sent_bytes - <uint64_t>queued


cdef inline void conn_io_error(bn_hworker* w, bn_conn* c, int err) noexcept nogil:
    if err == ECONNRESET:
        bn_count(&w.counters.econnreset, 1)
    elif err == EPIPE:
        bn_count(&w.counters.epipe, 1)
    else:
        bn_count(&w.counters.io_errors, 1)
    c.flags |= CONN_DEAD


cdef ssize_t conn_sendmsg(bn_hworker* w, bn_conn* c, iovec* iov, int niov) noexcept nogil:
    """One gather write (sendmsg = writev plus MSG_NOSIGNAL): the bytes taken,
    0 on EAGAIN, -1 = the connection failed (flagged CONN_DEAD, counted)."""
    cdef msghdr msg
    cdef ssize_t n
    cdef int err
    if c.ssl != NULL:
        n = tls_sendv(w, c, iov, niov)
        if n > 0:
            bn_count(&w.counters.bytes_out, <uint64_t>n)
            c.sent_bytes += <uint64_t>n
        return n
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = <size_t>niov
    while True:
        n = sendmsg(c.fd, &msg, MSG_NOSIGNAL)
        if n >= 0:
            bn_count(&w.counters.bytes_out, <uint64_t>n)
            c.sent_bytes += <uint64_t>n
            return n
        err = errno
        if err == EINTR:
            bn_count(&w.counters.eintr, 1)
            continue
        if err == EAGAIN:
            return 0
        conn_io_error(w, c, err)
        return -1


cdef int conn_send_out(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Write the output queue, HTTP_IOV_MAX segments per sendmsg, until it is
    empty or the socket is full: 0, or -1 = the connection failed.  Fully
    sent segments drop their reference or free their block; a partial one
    advances its pointer.  Uses the worker's iovec array, empty here."""
    cdef int niov
    cdef uint32_t i
    cdef ssize_t n
    cdef size_t sent
    cdef size_t total
    cdef bn_seg* s
    cdef int rc
    if c.flags & CONN_SEND_INFLIGHT:
        return 0                        # io_uring: after the deferred send completes
    if c.tls_pend != NULL:
        rc = tls_write_pending(w, c)
        if rc != 0:
            return -1 if rc < 0 else 0
    while c.outq_head < c.outq_tail:
        niov = 0
        total = 0
        i = c.outq_head
        while i < c.outq_tail and niov < HTTP_IOV_MAX:
            w.iov[niov].iov_base = <void*>c.outq[i].data
            w.iov[niov].iov_len = c.outq[i].len
            total += c.outq[i].len
            niov += 1
            i += 1
        n = conn_sendmsg(w, c, w.iov, niov)
        if n < 0:
            return -1
        sent = <size_t>n
        c.out_bytes -= sent
        while c.outq_head < c.outq_tail:
            s = &c.outq[c.outq_head]
            if sent < s.len:
                s.data += sent
                s.len -= sent
                break
            sent -= s.len
            conn_seg_release(w, c, s)
            c.outq_head += 1
        if <size_t>n < total:
            return 0                    # the socket is full: wait for EPOLLOUT
    conn_outq_free(w, c)                # drained: an idle connection owns no array
    return 0


cdef int conn_flush_iov(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Gather-write the worker's pending iovecs for `c`.  What the kernel does
    not take is queued before returning: a reference on an entry, a copy of
    the Date tail; the iovecs must not outlive this step (QSBR).  0 or -1."""
    cdef ssize_t n
    cdef int i = 0
    cdef size_t sent = 0
    cdef int niov = w.niov
    w.niov = 0
    w.iov_bytes = 0
    if niov == 0 or (c.flags & CONN_DEAD):
        return 0
    if w.uring != NULL and (c.flags & CONN_SEND_INFLIGHT):
        pass                            # behind a send still to be submitted: queued, in order
    elif w.uring != NULL and uring_send_defer(w, c, niov):
        return 0                        # goes with the next io_uring_enter (_http_uring.pxi)
    else:
        n = conn_sendmsg(w, c, w.iov, niov)
        if n < 0:
            return -1
        sent = <size_t>n
        while i < niov and sent >= w.iov[i].iov_len:
            sent -= w.iov[i].iov_len
            i += 1
        if i == niov:
            return 0
        # Slow path: the socket buffer is full.  Queue the rest.
        bn_count(&w.counters.partial_writes, 1)
    while i < niov:
        if conn_outq_push(w, c, <const char*>w.iov[i].iov_base + sent, w.iov[i].iov_len - sent,
                          w.iov_kind[i], w.iov_entry[i]) < 0:
            return -1
        sent = 0
        i += 1
    return 0


cdef inline void conn_count_status(bn_hworker* w, int status) noexcept nogil:
    if status < 300:
        bn_count(&w.counters.responses_2xx, 1)
    elif status < 400:
        bn_count(&w.counters.responses_3xx, 1)
    elif status < 500:
        bn_count(&w.counters.responses_4xx, 1)
    else:
        bn_count(&w.counters.responses_5xx, 1)


cdef inline void conn_iov_add(bn_hworker* w, const char* data, size_t n, int kind,
                              bn_entry* e) noexcept nogil:
    w.iov[w.niov].iov_base = <void*>data
    w.iov[w.niov].iov_len = n
    w.iov_kind[w.niov] = <uint8_t>kind
    w.iov_entry[w.niov] = e
    w.niov += 1
    w.iov_bytes += n


cdef inline int conn_emit(bn_hworker* w, bn_conn* c, const char* head, size_t head_len, int tail,
                          const char* body, size_t body_len, int status, int kind,
                          bn_entry* e) noexcept nogil:
    """Queue one response: head [+ CORS segment] + tail + body, both in entry
    `e` (SEG_ENTRY), static (SEG_STATIC) or gone after this step (SEG_COPY).
    Zero-copy into the iovecs unless output is already backlogged (then
    queued behind it, to keep the order).  0 or -1."""
    cdef int cors = c.cors
    conn_count_status(w, status)
    c.requests += 1
    c.cors = 0                          # one answer per request: the next one picks again
    # Flush by count and by bytes: pipelined hits on a big entry must not
    # pile up without bound.
    if w.niov + 4 > HTTP_IOV_MAX or w.iov_bytes >= w.max_output_bytes:
        if conn_flush_iov(w, c) < 0:
            return -1
    if conn_out_pending(c):
        if (conn_outq_push(w, c, head, head_len, kind, e) < 0
                or (cors and conn_outq_push(w, c, w.cors_segs[cors - 1], w.cors_seg_lens[cors - 1],
                                            SEG_COPY, NULL) < 0)
                or conn_outq_push(w, c, w.tails[tail], w.tail_len[tail], SEG_COPY, NULL) < 0
                or conn_outq_push(w, c, body, body_len, kind, e) < 0):
            return -1
        return 0
    conn_iov_add(w, head, head_len, kind, e)
    if cors:                            # a pre-built header line: no formatting per request
        conn_iov_add(w, w.cors_segs[cors - 1], w.cors_seg_lens[cors - 1], SEG_COPY, NULL)
    conn_iov_add(w, w.tails[tail], w.tail_len[tail], SEG_COPY, NULL)
    conn_iov_add(w, body, body_len, kind, e)    # into the entry: never copied
    return 0


cdef inline int conn_emit_piece(bn_hworker* w, bn_conn* c, const char* data, size_t n, int kind,
                                bn_entry* e) noexcept nogil:
    """One more piece of the response conn_emit began (a batch answer's
    bodies and separators), queued as conn_emit queues: 0 or -1."""
    if w.niov + 1 > HTTP_IOV_MAX or w.iov_bytes >= w.max_output_bytes:
        if conn_flush_iov(w, c) < 0:
            return -1
    if conn_out_pending(c):
        return -1 if conn_outq_push(w, c, data, n, kind, e) < 0 else 0
    conn_iov_add(w, data, n, kind, e)
    return 0


cdef inline int conn_emit_error(bn_hworker* w, bn_conn* c, int err, int tail, int head_only) noexcept nogil:
    cdef bn_static_resp* r = &HTTP_ERR[err]
    return conn_emit(w, c, r.head, r.head_len, tail, r.body, 0 if head_only else r.body_len,
                     r.status, SEG_STATIC, NULL)


cdef ssize_t conn_recv(bn_hworker* w, bn_conn* c, char* buf, size_t room) noexcept nogil:
    """One read, through TLS when the connection has it: the bytes read, 0
    at the peer's close, -2 when nothing is readable yet, -1 = failed
    (flagged CONN_DEAD, counted).  Under TLS `room` is at least a record."""
    cdef ssize_t n
    cdef int err
    if c.ssl != NULL:
        return tls_recv(w, c, buf, room)
    while True:
        n = recv(c.fd, buf, room, 0)
        if n >= 0:
            return n
        err = errno
        if err == EINTR:
            bn_count(&w.counters.eintr, 1)
            continue
        if err == EAGAIN:
            return -2
        conn_io_error(w, c, err)
        return -1


cdef int conn_watch(bn_hworker* w, bn_conn* c, uint32_t want) noexcept nogil:
    """Set `c`'s epoll interest to `want`, with epoll_ctl only when it changes
    (on an io_uring worker: arm or cancel its receive and write poll).
    0, or -1 with io_errors counted: the caller ends the connection its own
    way (closed at once, or marked dead for the end of the step)."""
    cdef epoll_event ev
    if w.uring != NULL:
        return uring_conn_watch(w, c, want)
    if want == c.events:
        return 0
    ev.events = want
    ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>(c - w.conns)
    if epoll_ctl(w.epfd, EPOLL_CTL_MOD, c.fd, &ev) < 0:
        bn_count(&w.counters.io_errors, 1)
        return -1
    c.events = want
    return 0


cdef void conn_close(bn_hworker* w, bn_conn* c) noexcept nogil:
    if c.ws != NULL:
        ws_conn_free(w, c)
    if c.ssl != NULL:
        tls_conn_free(w, c)
    # Counted before close(): a client that sees the close also sees the count.
    w.active -= 1
    bn_count(&w.counters.closed, 1)
    bn_store_u64(&w.counters.active, w.active)
    # close() also removes the fd from epoll (no other descriptor shares it);
    # io_uring requests hold the socket until they are cancelled.
    if w.uring != NULL:
        uring_conn_closing(w, c)
    close(c.fd)
    c.fd = -1
    c.gen = (c.gen + 1) & 0x7FFFFFFF
    c.flags &= CONN_TLS_QUEUED          # the slot may still be on tls_ready: listed once
    c.events = 0
    free(c.inb)
    c.inb = NULL
    c.in_len = 0
    c.in_cap = 0
    c.in_scanned = 0
    conn_outq_free(w, c)
    c.sent_bytes = 0
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
