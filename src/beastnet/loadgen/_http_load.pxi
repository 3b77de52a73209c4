# The HTTP/1.1 load generator: native threads, each with an epoll over its
# share of the connections, non-blocking connects, pipelining, keep-alive or
# a fixed number of requests per connection (1 = a new connection per
# request, which exposes connection set-up cost).  Works against any HTTP/1.x
# server: replies are framed by Content-Length, chunked encoding, or the close.
#
# A connection keeps its requests in flight in a FIFO ring (HTTP answers in
# order).  A request ends exactly one way: a complete response (`received`,
# a latency sample), the timeout (`lost`: the connection is then closed, since
# any later bytes on it could not be matched), or a connection error
# (`failed`: reset, closed, unparsable reply).  Error *kinds* are counted once
# per incident; `failed` counts the requests each incident took with it.
#
# Times: latency runs from the intended send time (closed loop: when the
# request was queued; one-request-per-connection closed loop: when its
# connect began, so set-up cost is in the number; open loop: its schedule
# slot).  Time to first byte runs from the write to the first byte of that
# request's response.  Connect time runs from connect() to writability; over
# TLS (https://) the handshake follows it, timed apart from the first
# ClientHello write to SSL_connect's success, and requests start only after.
#
# TLS changes only the byte transport (_tcp.pxi): tcp_flush writes the whole queued
# window with one SSL_write (one or more records), hc_read takes SSL_read's
# plaintext into the same buffer and the same parser (see _tls.pxi).

cdef enum:
    HTTP_IN_BUF_BYTES = 65536       # read buffer per connection; a response head must fit
    HTTP_TICK_NS = 10000000         # 10 ms: timeout / reconnect scan over the connections
    HTTP_RETRY_NS = 10000000        # 10 ms before reconnecting after a failed connect
    HTTP_STATUS_MAX = 600           # status codes counted exactly below this
    HTTP_CHUNK_LINE_MAX = 1024      # longest chunk-size line we accept
    HTTP_READS_PER_EVENT = 4        # recv calls per readiness event
    HTTP_NHISTS = 5                 # LG_HIST_MEASURED .. LG_HIST_TLS

# Connection states.
cdef enum:
    HC_IDLE = 0                     # no socket: connect when allowed
    HC_CONNECTING = 1               # non-blocking connect in progress (EPOLLOUT)
    HC_OPEN = 2                     # established (TLS: handshake done)
    HC_HANDSHAKE = 3                # TCP established, TLS handshake in progress

# Response parser states.
cdef enum:
    RS_HEAD = 0                     # waiting for the status line and headers
    RS_BODY = 1                     # rsp_remaining bytes of a Content-Length body
    RS_CHUNK_SIZE = 2               # waiting for a chunk-size line
    RS_CHUNK_DATA = 3               # rsp_remaining bytes of chunk data + CRLF
    RS_TRAILER = 4                  # trailer lines until an empty one
    RS_UNTIL_CLOSE = 5              # no framing: the body ends when the server closes

# Connection modes.
cdef enum:
    CM_KEEPALIVE = 0                # as many requests as the connection lives
    CM_PER_CONN = 1                 # per_conn requests, the last with Connection: close

# How a connection ended.
cdef enum:
    END_CLEAN = 0                   # nothing in flight (or only what the close announced)
    END_RESET = 1                   # ECONNRESET / EPIPE
    END_CLOSED = 2                  # server closed with requests in flight
    END_CLOSED_MID = 3              # server closed in the middle of a response
    END_PARSE = 4                   # not HTTP/1.x, or bytes nobody asked for
    END_TOO_LARGE = 5               # response head larger than the read buffer
    END_IO = 6                      # other read/write error
    END_TIMEOUT = 7                 # oldest request timed out: the rest are lost too
    END_TLS = 8                     # a TLS error after the handshake (bad record, alert)


cdef struct lg_hreq:
    uint64_t intended_ns                # latency runs from here
    uint64_t sent_ns                    # time to first byte runs from here
    uint32_t measured                   # 1 if intended inside the measured window
    uint32_t reserved

cdef struct bn_hconn:
    lg_tcp s                            # socket, TLS session, output queue (_tcp.pxi)
    int state                           # HC_*
    uint64_t retry_ns                   # no connect before this
    uint32_t written                    # requests queued on this connection
    uint32_t closing                    # its last request (Connection: close) is queued
    uint32_t q_head                     # ring of `pipeline` requests in flight
    uint32_t q_len
    uint32_t in_len                     # bytes in `inb`
    uint32_t in_off                     # ... of which parsed
    int rsp_state                       # RS_*
    int rsp_status                      # status code of the response being read
    int rsp_close                       # it announced the connection closes after it
    uint64_t rsp_remaining              # bytes left in the body or chunk
    uint64_t rsp_first_ns               # first byte of the response being read, 0 = none yet
    lg_hreq* q                          # pipeline entries
    char* inb                           # HTTP_IN_BUF_BYTES

cdef struct bn_http_thread:
    bn_lg_base b                        # first: what every load loop keeps (see _run.pxi)
    int conn_mode                       # CM_*
    int sending                         # this thread still starts requests
    int measuring                       # past the warm-up
    int blocked                         # open loop: every connection full, wait for a reply
    int family                          # AF_INET / AF_INET6
    socklen_t addr_len
    char addr[LG_ADDR_MAX_BYTES]        # the server's sockaddr
    uint32_t nconns
    uint32_t pipeline                   # requests in flight per connection
    uint32_t per_conn                   # CM_PER_CONN: requests per connection
    uint32_t out_cap                    # bytes of each connection's `out`
    uint32_t cursor                     # open loop: next connection to try
    bn_hconn* conns
    uint64_t connect_timeout_ns         # a connect fails after this
    uint64_t next_send_ns               # open loop: intended time of the next request
    const char** req_data               # per key: the keep-alive request
    uint32_t* req_len
    const char** close_data             # per key: the same with Connection: close
    uint32_t* close_len
    bn_lg_http_counters* counters
    uint64_t* status                    # HTTP_STATUS_MAX counters of measured responses
    bn_tls_client tls                   # https://: the run's SSL_CTX and this thread's session


cdef void hc_update_events(bn_http_thread* t, bn_hconn* c) noexcept nogil:
    cdef uint32_t want = 0
    if c.state == HC_CONNECTING:
        want = EPOLLOUT
    elif c.state == HC_HANDSHAKE:
        want = c.s.tls_want
    elif c.state == HC_OPEN:
        want = EPOLLIN | c.s.tls_want
        if c.s.out_off < c.s.out_len:
            want |= EPOLLOUT
    tcp_want(&c.s, t.b.epfd, want, <uint32_t>(c - t.conns))


cdef void hc_reset(bn_hconn* c) noexcept nogil:
    c.s.fd = -1
    c.state = HC_IDLE
    c.written = 0
    c.closing = 0
    c.s.registered = 0
    c.q_head = 0
    c.q_len = 0
    c.s.out_len = 0
    c.s.out_off = 0
    c.in_len = 0
    c.in_off = 0
    c.rsp_state = RS_HEAD
    c.rsp_first_ns = 0
    c.s.ssl = NULL                      # the callers freed it (tcp_close)
    c.s.tls_want = 0


cdef void hc_close(bn_http_thread* t, bn_hconn* c, int how, uint64_t now) noexcept nogil:
    """Close `c`; its requests in flight end as lost (timeout) or failed."""
    cdef uint32_t i
    cdef lg_hreq* r
    cdef uint64_t lost = 0
    cdef uint64_t m_lost = 0
    cdef uint64_t m_failed = 0
    cdef int counted = t.measuring
    for i in range(c.q_len):
        r = &c.q[(c.q_head + i) % t.pipeline]
        if how == END_TIMEOUT:
            lost += 1
            if r.measured:
                m_lost += 1
        elif r.measured:
            m_failed += 1
    if counted:
        if how == END_RESET:
            bn_count(&t.counters.err_reset, 1)
        elif how == END_CLOSED:
            bn_count(&t.counters.err_closed, 1)
        elif how == END_CLOSED_MID:
            bn_count(&t.counters.err_closed_mid_response, 1)
        elif how == END_PARSE:
            bn_count(&t.counters.err_parse, 1)
        elif how == END_TOO_LARGE:
            bn_count(&t.counters.err_too_large, 1)
        elif how == END_IO:
            bn_count(&t.counters.err_io, 1)
        elif how == END_TLS:
            bn_count(&t.counters.err_tls_protocol, 1)
    bn_count(&t.counters.t_lost, lost)
    bn_count(&t.counters.m_lost, m_lost)
    bn_count(&t.counters.m_failed, m_failed)
    t.b.outstanding -= c.q_len
    tcp_close(&c.s, how != END_TLS)
    hc_reset(c)
    # No back-off: reconnect at once.  (`now` may be later than the clock
    # the event loop compares with, which would defer it to the next tick.)
    c.retry_ns = 0
    if c.q_len == 0:
        t.blocked = 0


cdef void hc_connect_failed(bn_http_thread* t, bn_hconn* c, int err, uint64_t now) noexcept nogil:
    if t.measuring:
        if err == ECONNREFUSED:
            bn_count(&t.counters.err_connect_refused, 1)
        elif err == ETIMEDOUT:
            bn_count(&t.counters.err_connect_timeout, 1)
        else:
            bn_count(&t.counters.err_connect_other, 1)
    tcp_close(&c.s, 0)
    hc_reset(c)
    # Back off: a refusing or overloaded server must not turn us into a
    # connect() spin loop.
    c.retry_ns = now + HTTP_RETRY_NS


cdef void hc_tls_failed(bn_http_thread* t, bn_hconn* c, int kind, uint64_t now) noexcept nogil:
    """The handshake failed (`kind`: TLSF_*): count it, back off, retry later.
    No request was queued yet: requests wait for HC_OPEN."""
    if t.measuring:
        if kind == TLSF_VERIFY:
            bn_count(&t.counters.err_tls_verify, 1)
        elif kind == TLSF_NOT_TLS:
            bn_count(&t.counters.err_tls_not_tls, 1)
        elif kind == TLSF_TIMEOUT:
            bn_count(&t.counters.err_tls_timeout, 1)
        else:
            bn_count(&t.counters.err_tls_handshake, 1)
    tcp_close(&c.s, 0)
    hc_reset(c)
    c.retry_ns = now + HTTP_RETRY_NS


cdef void hc_handshake(bn_http_thread* t, bn_hconn* c) noexcept nogil:
    """Advance the TLS handshake; on success the connection opens."""
    cdef int rc = tcp_handshake(&c.s, &t.tls)
    cdef uint64_t now = bn_now_ns()
    if rc == 0:
        hc_update_events(t, c)
        return
    if rc < 0:
        hc_tls_failed(t, c, -rc, now)
        return
    if t.measuring:
        bn_count(&t.counters.tls_handshakes, 1)
        if SSL_session_reused(c.s.ssl):
            bn_count(&t.counters.tls_resumed, 1)
        hist_record(&t.b.hists[LG_HIST_TLS],
                    now - c.s.tls_start_ns if now > c.s.tls_start_ns else 0)
    hc_open(t, c)


cdef void hc_open(bn_http_thread* t, bn_hconn* c) noexcept nogil:
    c.state = HC_OPEN
    hc_update_events(t, c)
    t.blocked = 0


cdef void hc_connected(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    """TCP is established: open, or begin the TLS handshake."""
    bn_count(&t.counters.connects, 1)
    if t.measuring:
        bn_count(&t.counters.m_connects, 1)
        hist_record(&t.b.hists[LG_HIST_CONNECT],
                    now - c.s.connect_start_ns if now > c.s.connect_start_ns else 0)
    if t.tls.ctx == NULL:
        hc_open(t, c)
        return
    if tcp_tls_start(&c.s, &t.tls, now) < 0:
        hc_tls_failed(t, c, TLSF_SETUP, now)
        return
    c.state = HC_HANDSHAKE
    hc_handshake(t, c)


cdef void hc_connect(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    cdef int rc
    bn_count(&t.counters.connect_attempts, 1)
    hc_reset(c)
    rc = tcp_open(&c.s, t.family, t.addr, t.addr_len, now)
    if rc == TCP_OPEN_DONE:
        hc_connected(t, c, bn_now_ns())
    elif rc == TCP_OPEN_PENDING:
        c.state = HC_CONNECTING
        hc_update_events(t, c)
    else:
        hc_connect_failed(t, c, -rc, now)       # ECONNREFUSED, EADDRNOTAVAIL, EMFILE...


cdef int hc_flush(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    """Write what `c` has queued; 0, or -1 if the connection broke (closed)."""
    cdef int err = tcp_flush(&c.s, &t.counters.bytes_out, &t.counters.eintr)
    if err:
        hc_close(t, c, END_RESET if (err == EPIPE or err == ECONNRESET)
                 else END_TLS if err == EPROTO else END_IO, now)
        return -1
    hc_update_events(t, c)
    return 0


cdef int hc_enqueue(bn_http_thread* t, bn_hconn* c, uint64_t intended, uint64_t now) noexcept nogil:
    """Queue one request on `c` (the caller checked there is room); 1 if it
    was the connection's last (Connection: close)."""
    cdef uint32_t k = lg_pick_key(&t.b)
    cdef int last = t.conn_mode == CM_PER_CONN and c.written + 1 >= t.per_conn
    cdef const char* data = t.close_data[k] if last else t.req_data[k]
    cdef uint32_t n = t.close_len[k] if last else t.req_len[k]
    cdef lg_hreq* r
    if c.s.out_off > 0:                   # keep the unwritten bytes at the front
        memmove(c.s.out, c.s.out + c.s.out_off, c.s.out_len - c.s.out_off)
        c.s.out_len -= c.s.out_off
        c.s.out_off = 0
    memcpy(c.s.out + c.s.out_len, data, n)
    c.s.out_len += n
    r = &c.q[(c.q_head + c.q_len) % t.pipeline]
    r.intended_ns = intended
    r.sent_ns = now
    r.measured = intended >= t.b.measure_ns and intended < t.b.end_ns
    c.q_len += 1
    t.b.outstanding += 1
    bn_count(&t.counters.t_sent, 1)
    if r.measured:
        bn_count(&t.counters.m_sent, 1)
        if c.written == 0:
            bn_count(&t.counters.m_first_requests, 1)
    c.written += 1
    if last:
        c.closing = 1
    return last


cdef inline int http_quota_left(bn_http_thread* t) noexcept nogil:
    return not (t.b.quota and t.measuring and t.counters.m_sent >= t.b.quota)


cdef void hc_fill(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    """Closed loop: top `c` up to `pipeline` requests in flight and write them."""
    cdef uint64_t intended
    cdef int queued = 0
    if c.state != HC_OPEN or not t.sending or now >= t.b.end_ns:
        return
    while c.q_len < t.pipeline and not c.closing and http_quota_left(t):
        # One request per connection: the request began when its connect did.
        intended = c.s.connect_start_ns if (t.conn_mode == CM_PER_CONN and t.per_conn == 1) else now
        hc_enqueue(t, c, intended, now)
        queued = 1
    if queued:
        hc_flush(t, c, now)


cdef int hc_find_head_end(const char* p, uint32_t n) noexcept nogil:
    """Offset just past the blank line ending a head (CRLF CRLF, or LF LF), or -1."""
    cdef uint32_t i
    for i in range(n):
        if p[i] == 10:                  # LF
            if i + 1 < n and p[i + 1] == 10:
                return <int>(i + 2)
            if i + 2 < n and p[i + 1] == 13 and p[i + 2] == 10:
                return <int>(i + 3)
    return -1


cdef inline int http_lower(char ch) noexcept nogil:
    return ch + 32 if 65 <= ch <= 90 else ch


cdef int http_header_is(const char* p, uint32_t n, const char* name, uint32_t name_len) noexcept nogil:
    cdef uint32_t i
    if n != name_len:
        return 0
    for i in range(n):
        if http_lower(p[i]) != name[i]:
            return 0
    return 1


cdef int http_value_has(const char* p, uint32_t n, const char* word, uint32_t wlen) noexcept nogil:
    cdef uint32_t i, j
    if wlen > n:
        return 0
    for i in range(n - wlen + 1):
        j = 0
        while j < wlen and http_lower(p[i + j]) == word[j]:
            j += 1
        if j == wlen:
            return 1
    return 0


cdef int hc_parse_head(bn_http_thread* t, bn_hconn* c, const char* p, uint32_t n) noexcept nogil:
    """Status line and headers in p[0:n]: set the framing.  END_PARSE on junk."""
    cdef uint32_t i = 0
    cdef uint32_t ls, le, colon, vs
    cdef int64_t content_length = -1
    cdef int chunked = 0
    cdef int close_conn
    cdef int status
    # Status-Line: "HTTP/1.x SSS reason"
    if n < 12 or memcmp(p, b"HTTP/1.", 7) != 0 or p[8] != 32:
        return END_PARSE
    if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
        return END_PARSE
    status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    close_conn = p[7] == 48             # HTTP/1.0: closes unless keep-alive
    while i < n and p[i] != 10:
        i += 1
    i += 1
    while i < n:
        ls = i
        while i < n and p[i] != 10:
            i += 1
        le = i
        i += 1
        if le > ls and p[le - 1] == 13:
            le -= 1
        if le == ls:
            break                       # the blank line
        colon = ls
        while colon < le and p[colon] != 58:
            colon += 1
        if colon == le:
            return END_PARSE
        vs = colon + 1
        while vs < le and (p[vs] == 32 or p[vs] == 9):
            vs += 1
        if http_header_is(p + ls, colon - ls, b"content-length", 14):
            content_length = 0
            if vs == le:
                return END_PARSE
            while vs < le and 48 <= p[vs] <= 57:
                content_length = content_length * 10 + (p[vs] - 48)
                if content_length > (<int64_t>1 << 50):
                    return END_PARSE
                vs += 1
        elif http_header_is(p + ls, colon - ls, b"transfer-encoding", 17):
            chunked = http_value_has(p + vs, le - vs, b"chunked", 7)
        elif http_header_is(p + ls, colon - ls, b"connection", 10):
            if http_value_has(p + vs, le - vs, b"close", 5):
                close_conn = 1
            elif http_value_has(p + vs, le - vs, b"keep-alive", 10):
                close_conn = 0
    c.rsp_status = status
    c.rsp_close = close_conn
    if 100 <= status < 200:
        c.rsp_state = RS_HEAD           # interim response: the real one follows
        return -1
    if status == 204 or status == 304:
        c.rsp_state = RS_BODY
        c.rsp_remaining = 0
    elif chunked:
        c.rsp_state = RS_CHUNK_SIZE
    elif content_length >= 0:
        c.rsp_state = RS_BODY
        c.rsp_remaining = <uint64_t>content_length
    else:
        c.rsp_state = RS_UNTIL_CLOSE
        c.rsp_close = 1
    return END_CLEAN


cdef void hc_complete(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    """The response at the head of `c`'s ring is complete: account it."""
    cdef lg_hreq* r = &c.q[c.q_head]
    cdef uint64_t latency = now - r.intended_ns if now > r.intended_ns else 0
    c.q_head = (c.q_head + 1) % t.pipeline
    c.q_len -= 1
    t.b.outstanding -= 1
    t.blocked = 0
    bn_count(&t.counters.t_received, 1)
    hist_record(&t.b.hists[LG_HIST_ALL], latency)
    if r.measured:
        bn_count(&t.counters.m_received, 1)
        hist_record(&t.b.hists[LG_HIST_MEASURED], latency)
        if c.rsp_first_ns >= r.sent_ns:
            hist_record(&t.b.hists[LG_HIST_TTFB], c.rsp_first_ns - r.sent_ns)
        if 0 <= c.rsp_status < HTTP_STATUS_MAX:
            bn_count(&t.status[c.rsp_status], 1)
        if c.rsp_status >= 400:
            bn_count(&t.counters.m_error_replies, 1)
        t.b.last_reply_ns = now


cdef inline uint64_t hc_consume(bn_hconn* c, uint32_t avail) noexcept nogil:
    """Take up to `avail` bytes of the body or chunk being read; the bytes
    still missing (0: it is complete)."""
    cdef uint64_t take = avail if avail < c.rsp_remaining else c.rsp_remaining
    c.in_off += <uint32_t>take
    c.rsp_remaining -= take
    return c.rsp_remaining


cdef int hc_parse(bn_http_thread* t, bn_hconn* c, uint64_t now) noexcept nogil:
    """Consume what `c` has read.  0, or -1 if the connection was closed."""
    cdef uint32_t avail
    cdef const char* p
    cdef int end
    cdef int rc
    cdef uint64_t size
    cdef uint32_t i
    cdef int digits
    while True:
        avail = c.in_len - c.in_off
        p = c.inb + c.in_off
        if c.rsp_state == RS_HEAD:
            if avail == 0:
                return 0
            if c.q_len == 0:
                hc_close(t, c, END_PARSE, now)      # bytes nobody asked for
                return -1
            end = hc_find_head_end(p, avail)
            if end < 0:
                if c.in_off == 0 and c.in_len == HTTP_IN_BUF_BYTES:
                    hc_close(t, c, END_TOO_LARGE, now)
                    return -1
                if avail >= 12 and memcmp(p, b"HTTP/1.", 7) != 0:
                    hc_close(t, c, END_PARSE, now)  # junk: no point waiting for more
                    return -1
                return 0
            rc = hc_parse_head(t, c, p, <uint32_t>end)
            c.in_off += <uint32_t>end
            if rc == -1:
                continue                # 1xx: read the final response
            if rc != END_CLEAN:
                hc_close(t, c, rc, now)
                return -1
            continue
        if c.rsp_state == RS_BODY:
            if hc_consume(c, avail):
                return 0
        elif c.rsp_state == RS_CHUNK_SIZE or c.rsp_state == RS_TRAILER:
            i = 0
            while i < avail and p[i] != 10:
                i += 1
            if i == avail:
                if avail > HTTP_CHUNK_LINE_MAX:
                    hc_close(t, c, END_PARSE, now)
                    return -1
                return 0
            c.in_off += i + 1
            if c.rsp_state == RS_TRAILER:
                if i == 0 or (i == 1 and p[0] == 13):
                    pass                # the empty line: the response is complete
                else:
                    continue
            else:
                size = 0
                digits = 0
                while digits < <int>i and digits < 16:
                    if 48 <= p[digits] <= 57:
                        size = (size << 4) | <uint64_t>(p[digits] - 48)
                    elif 97 <= http_lower(p[digits]) <= 102:
                        size = (size << 4) | <uint64_t>(http_lower(p[digits]) - 87)
                    else:
                        break
                    digits += 1
                if digits == 0:
                    hc_close(t, c, END_PARSE, now)
                    return -1
                if size == 0:
                    c.rsp_state = RS_TRAILER
                else:
                    c.rsp_state = RS_CHUNK_DATA
                    c.rsp_remaining = size + 2      # data + CRLF
                continue
        elif c.rsp_state == RS_CHUNK_DATA:
            if hc_consume(c, avail):
                return 0
            c.rsp_state = RS_CHUNK_SIZE
            continue
        else:                           # RS_UNTIL_CLOSE: completed by the EOF
            c.in_off = c.in_len
            return 0
        # A response is complete.
        hc_complete(t, c, now)
        c.rsp_state = RS_HEAD
        # Bytes already read belong to the next response: they arrived now.
        c.rsp_first_ns = now if c.in_off < c.in_len else 0
        if c.rsp_close or (c.closing and c.q_len == 0):
            if not c.closing:
                bn_count(&t.counters.server_closes, 1)
            # Requests pipelined past a close are failed (END_CLOSED) if any.
            hc_close(t, c, END_CLOSED if c.q_len else END_CLEAN, now)
            return -1


cdef int hc_read(bn_http_thread* t, bn_hconn* c) noexcept nogil:
    """Read and parse what `c` has; 0, or -1 if the connection was closed."""
    cdef ssize_t n
    cdef int err
    cdef int reads = 0
    cdef uint64_t now
    # Bytes OpenSSL already read (read-ahead) are invisible to epoll: drain them too.
    while reads < HTTP_READS_PER_EVENT or not tcp_drained(&c.s):
        if c.in_off == c.in_len:
            c.in_off = 0
            c.in_len = 0
        elif c.in_len == HTTP_IN_BUF_BYTES and c.in_off > 0:
            memmove(c.inb, c.inb + c.in_off, c.in_len - c.in_off)
            c.in_len -= c.in_off
            c.in_off = 0
        n = tcp_recv(&c.s, c.inb + c.in_len, HTTP_IN_BUF_BYTES - c.in_len)
        now = bn_now_ns()
        if n > 0:
            if c.rsp_state == RS_HEAD and c.in_off == c.in_len and c.rsp_first_ns == 0:
                c.rsp_first_ns = now
            c.in_len += <uint32_t>n
            bn_count(&t.counters.bytes_in, <uint64_t>n)
            if hc_parse(t, c, now) < 0:
                return -1
            reads += 1
            if c.in_len < HTTP_IN_BUF_BYTES and tcp_drained(&c.s):
                return 0                # a short read: the socket is drained
            continue
        if n == 0:                      # the server closed
            if c.rsp_state == RS_UNTIL_CLOSE and c.q_len:
                hc_complete(t, c, now)
                bn_count(&t.counters.server_closes, 1)
                hc_close(t, c, END_CLOSED if c.q_len else END_CLEAN, now)
            elif c.rsp_state != RS_HEAD or c.in_off < c.in_len:
                hc_close(t, c, END_CLOSED_MID, now)
            elif c.q_len:
                hc_close(t, c, END_CLOSED, now)
            else:
                bn_count(&t.counters.server_closes, 1)
                hc_close(t, c, END_CLEAN, now)
            return -1
        err = errno
        if err == EINTR:
            bn_count(&t.counters.eintr, 1)
            continue
        if err == EAGAIN:
            if c.s.tls_want:
                hc_update_events(t, c)
            return 0
        if err == ECONNRESET and c.q_len == 0 and c.rsp_state == RS_HEAD:
            bn_count(&t.counters.server_closes, 1)
            hc_close(t, c, END_CLEAN, now)
        else:
            hc_close(t, c, END_RESET if err == ECONNRESET
                     else END_TLS if err == EPROTO else END_IO, now)
        return -1
    return 0


cdef void http_on_event(bn_http_thread* t, bn_hconn* c, uint32_t events, uint64_t now) noexcept nogil:
    cdef int err
    if c.state == HC_CONNECTING:
        err = tcp_connect_result(&c.s)
        if err == 0 and not (events & (EPOLLERR | EPOLLHUP)):
            hc_connected(t, c, bn_now_ns())
        elif err != 0:
            hc_connect_failed(t, c, err, now)
        else:
            hc_connect_failed(t, c, ECONNREFUSED, now)
        return
    if c.state == HC_HANDSHAKE:
        hc_handshake(t, c)              # an error or hang-up surfaces in SSL_connect
        return
    if c.state != HC_OPEN:
        return
    if events & (EPOLLIN | EPOLLERR | EPOLLHUP) or (c.s.tls_want and events & EPOLLOUT):
        if hc_read(t, c) < 0:
            return
    if events & EPOLLOUT or (c.s.ssl != NULL and c.s.out_off < c.s.out_len):
        hc_flush(t, c, now)


cdef void http_scan(bn_http_thread* t, uint64_t now) noexcept nogil:
    """Every tick: connect timeouts, request timeouts, reconnects."""
    cdef uint32_t i
    cdef bn_hconn* c
    for i in range(t.nconns):
        c = &t.conns[i]
        if c.state == HC_CONNECTING:
            if c.s.connect_start_ns + t.connect_timeout_ns <= now:
                hc_connect_failed(t, c, ETIMEDOUT, now)
        elif c.state == HC_HANDSHAKE:
            if c.s.tls_start_ns + t.connect_timeout_ns <= now:
                tls_note_failure(&t.tls, TLSF_TIMEOUT, 0, 0)
                hc_tls_failed(t, c, TLSF_TIMEOUT, now)
        elif c.state == HC_OPEN:
            if c.q_len and c.q[c.q_head].sent_ns + t.b.timeout_ns <= now:
                hc_close(t, c, END_TIMEOUT, now)
        if c.state == HC_IDLE and t.sending and c.retry_ns <= now:
            hc_connect(t, c, now)
            if t.b.mode == LG_CLOSED:
                hc_fill(t, c, now)


cdef void http_dispatch(bn_http_thread* t, uint64_t now) noexcept nogil:
    """Open loop: hand every request that is due to a connection with room,
    round robin.  With none free the rest wait (their latency keeps running)."""
    cdef uint32_t probes
    cdef bn_hconn* c
    while (t.next_send_ns <= now and t.next_send_ns < t.b.end_ns and not t.blocked
           and http_quota_left(t)):
        probes = 0
        c = NULL
        while probes < t.nconns:
            c = &t.conns[t.cursor]
            t.cursor = (t.cursor + 1) % t.nconns
            probes += 1
            if c.state == HC_OPEN and not c.closing and c.q_len < t.pipeline:
                break
            c = NULL
        if c == NULL:
            t.blocked = 1               # cleared by a response or a new connection
            return
        hc_enqueue(t, c, t.next_send_ns, now)
        t.next_send_ns += lg_gap_ns(&t.b)
        hc_flush(t, c, now)


cdef void* http_thread_main(void* arg) noexcept nogil:
    cdef bn_http_thread* t = <bn_http_thread*>arg
    cdef uint64_t now
    cdef uint64_t next_tick
    cdef uint64_t drain_deadline = 0
    cdef uint64_t wake
    cdef uint64_t unsent
    cdef int stop
    cdef int n
    cdef int i
    cdef uint32_t j
    cdef bn_hconn* c
    if t.b.cpu >= 0:
        t.b.pin_error = bn_pin_self_to_cpu(t.b.cpu)
    now = bn_now_ns()
    t.sending = 1
    t.measuring = now >= t.b.measure_ns
    if t.measuring:
        t.b.cpu_start_ns = bn_thread_cpu_ns()
    # Spread the threads' open-loop schedules over one gap.
    t.next_send_ns = t.b.start_ns + <uint64_t>(t.b.interval_ns * t.b.index / t.b.nthreads)
    for j in range(t.nconns):
        hc_connect(t, &t.conns[j], now)
        if t.b.mode == LG_CLOSED:
            hc_fill(t, &t.conns[j], now)
    next_tick = now + HTTP_TICK_NS
    while True:
        now = bn_now_ns()
        if not t.measuring and now >= t.b.measure_ns:
            t.measuring = 1
            t.b.cpu_start_ns = bn_thread_cpu_ns()
        stop = bn_load_int(t.b.stop_flag)
        if stop == LG_ABORT:
            break
        if t.sending and stop == LG_RUN and t.b.mode != LG_CLOSED:
            http_dispatch(t, now)
        if t.sending and (now >= t.b.end_ns or stop != LG_RUN or not http_quota_left(t)):
            t.sending = 0
            t.b.send_stop_ns = now if now < t.b.end_ns else t.b.end_ns
            if t.b.mode != LG_CLOSED and stop == LG_RUN and not t.b.quota and t.b.interval_ns > 0:
                # Open loop: requests due in the window that never got a connection.
                wake = t.next_send_ns if t.next_send_ns > t.b.measure_ns else t.b.measure_ns
                if wake < t.b.end_ns:
                    unsent = <uint64_t>((t.b.end_ns - wake) / t.b.interval_ns) + 1
                    bn_count(&t.counters.m_unsent, unsent)
            drain_deadline = now + t.b.timeout_ns + HTTP_TICK_NS
        if not t.sending and (t.b.outstanding == 0 or now >= drain_deadline):
            break
        if now >= next_tick:
            http_scan(t, now)
            next_tick = now + HTTP_TICK_NS
        wake = next_tick
        if t.sending and t.b.mode != LG_CLOSED and not t.blocked and t.next_send_ns < wake:
            wake = t.next_send_ns
        if t.sending and t.b.end_ns < wake:
            wake = t.b.end_ns
        n = lg_wait(&t.b, wake, &t.counters.waits, &t.counters.eintr)
        if n < 0:
            break
        now = bn_now_ns()
        for i in range(n):
            c = &t.conns[t.b.events[i].data.u32]
            http_on_event(t, c, t.b.events[i].events, now)
            if t.sending:
                if c.state == HC_IDLE and c.retry_ns <= now:
                    hc_connect(t, c, now)
                if t.b.mode == LG_CLOSED:
                    hc_fill(t, c, now)
    now = bn_now_ns()
    for j in range(t.nconns):
        c = &t.conns[j]
        if c.s.fd >= 0:
            if c.q_len and bn_load_int(t.b.stop_flag) != LG_ABORT:
                hc_close(t, c, END_TIMEOUT, now)    # the drain deadline passed
            else:
                hc_close(t, c, END_CLEAN, now)
    lg_thread_done(&t.b)
    return NULL


cdef bn_http_thread* http_thread_new(uint32_t nconns, uint32_t pipeline,
                                     uint32_t out_cap) noexcept nogil:
    cdef bn_http_thread* t = <bn_http_thread*>calloc(1, sizeof(bn_http_thread))
    cdef uint32_t i
    if t == NULL:
        return NULL
    t.nconns = nconns
    t.pipeline = pipeline
    t.out_cap = out_cap
    t.conns = <bn_hconn*>calloc(nconns, sizeof(bn_hconn))
    if t.conns != NULL:                 # every fd -1 before any failure frees them (not fd 0)
        for i in range(nconns):
            hc_reset(&t.conns[i])
    t.status = <uint64_t*>calloc(HTTP_STATUS_MAX, sizeof(uint64_t))
    # Five histograms: latency (measured, all), time to first byte, connect
    # time, TLS handshake time.
    if lg_base_init(&t.b, HTTP_NHISTS) < 0 or t.conns == NULL or t.status == NULL:
        http_thread_free(&t.b)
        return NULL
    for i in range(nconns):
        t.conns[i].q = <lg_hreq*>calloc(pipeline, sizeof(lg_hreq))
        t.conns[i].s.out = <char*>malloc(out_cap)
        t.conns[i].inb = <char*>malloc(HTTP_IN_BUF_BYTES)
        if t.conns[i].q == NULL or t.conns[i].s.out == NULL or t.conns[i].inb == NULL:
            http_thread_free(&t.b)
            return NULL
    return t


cdef void http_thread_free(bn_lg_base* b) noexcept nogil:
    cdef bn_http_thread* t = <bn_http_thread*>b    # b is its first member
    cdef uint32_t i
    if t == NULL:
        return
    if t.conns != NULL:
        for i in range(t.nconns):
            tcp_close(&t.conns[i].s, 0)
            free(t.conns[i].q)
            free(t.conns[i].s.out)
            free(t.conns[i].inb)
        free(t.conns)
    free(t.status)
    tls_client_free(&t.tls)
    lg_base_free(&t.b)
    free(t)
cdef class HTTPLoadRun(LoadRun):
    """Native HTTP/1.1 generator threads over their own connections.

    Low-level: `beastnet.loadgen.run_http_load` resolves the address, builds
    the requests and turns the counters into a `LoadResult`.  The run owns
    its sockets (closed by the threads) and no Python object.  One start(),
    one join().
    """

    def __cinit__(self, bytes sockaddr not None, int family, list conn_counts not None,
                  list requests not None, list close_requests not None, alias=None, *,
                  int mode=LG_CLOSED, unsigned int pipeline=1, unsigned int per_conn=0,
                  double interval_ns=0.0, uint64_t timeout_ns=200000000,
                  uint64_t connect_timeout_ns=1000000000, uint64_t warmup_ns=0,
                  uint64_t duration_ns=1, list quotas=None, list cpus=None,
                  uint64_t seed=0x9E3779B97F4A7C15, TLSClientContext tls=None):
        cdef int i
        cdef bn_http_thread* t
        if len(requests) != len(close_requests):
            raise ValueError("one request and one closing request per key")
        if not 1 <= pipeline <= 4096:
            raise ValueError(f"pipeline must be 1..4096, got {pipeline}")
        if len(sockaddr) > LG_ADDR_MAX_BYTES:
            raise ValueError("sockaddr too long")
        if mode != LG_CLOSED and interval_ns <= 0:
            raise ValueError("open loop needs a positive interval")
        self.thread_main = http_thread_main
        self.thread_free = http_thread_free
        # Payloads: every key's keep-alive request, then its closing variant.
        self.tls = tls                  # the SSL_CTX outlives the threads' SSL objects
        self._setup(len(conn_counts), sizeof(bn_lg_http_counters), HTTP_NHISTS,
                    requests + close_requests, len(requests), alias, warmup_ns, duration_ns)
        for i in range(self.nthreads):
            t = http_thread_new(conn_counts[i], pipeline, pipeline * self.longest)
            if t == NULL:
                raise MemoryError()
            # Each thread sends 1/n of the rate: n times the run's gap.
            self._add_thread(i, &t.b, mode, interval_ns * self.nthreads, timeout_ns, quotas,
                             cpus, seed)
            t.conn_mode = CM_PER_CONN if per_conn else CM_KEEPALIVE
            t.per_conn = per_conn
            t.family = family
            t.addr_len = <socklen_t>len(sockaddr)
            memcpy(t.addr, <char*>sockaddr, len(sockaddr))
            t.connect_timeout_ns = connect_timeout_ns
            t.req_data = self.data
            t.req_len = self.lens
            t.close_data = self.data + self.nkeys
            t.close_len = self.lens + self.nkeys
            t.counters = <bn_lg_http_counters*>(self.counters_mem + <size_t>i * self.counter_bytes)
            if tls is not None:
                tls.attach(&t.tls)

    cdef object _counters_dict(self, const uint64_t* sums):
        cdef bn_lg_http_counters total
        memcpy(&total, sums, sizeof(bn_lg_http_counters))
        return total

    cdef dict _thread_extra(self, bn_lg_base* b):
        cdef bn_http_thread* t = <bn_http_thread*>b
        return {"connections": t.nconns, **tls_thread_info(&t.tls)}

    def status_codes(self):
        """{status: count} of measured responses."""
        cdef int i, s
        cdef uint64_t v
        out = {}
        for s in range(HTTP_STATUS_MAX):
            v = 0
            for i in range(self.nthreads):
                v += bn_load_u64_relaxed(&(<bn_http_thread*>self.threads[i]).status[s])
            if v:
                out[s] = v
        return out
