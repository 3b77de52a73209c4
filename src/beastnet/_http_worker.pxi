# The TCP engine: HTTP/1.1 served from the response table by native workers.
#
# One worker thread per SO_REUSEPORT listening socket, each with its own epoll
# instance (level-triggered), connection slots and counters; workers share
# nothing but the table, the miss queue and the stop eventfd.  A worker loops:
# epoll_wait (QSBR-offline while it sleeps), then for each ready connection
# one recv into a per-worker scratch buffer, frame and parse every complete
# request in it (_http_parse.pxi), route each (_http_route.pxi) and answer
# with one gather write (_http_conn.pxi).  Then a quiescent point.
#
# The control plane answers a queued request by pushing a reply onto the
# worker's lock-free reply stack and waking it through its eventfd.  A reply
# for a slot whose generation moved on (the connection closed, the slot was
# reused) is dropped and counted.

cdef struct bn_hreply:
    bn_hreply* next
    uint32_t conn                       # slot
    uint32_t gen                        # generation of the slot at request time
    uint32_t status                     # HTTP status
    uint32_t head_len                   # bytes of the head (no final CRLF) at data
    uint32_t body_len                   # bytes of the body after the head

cdef struct bn_usend:
    msghdr msg                          # what the SENDMSG SQE points to (its iovecs in the set's array)
    uint32_t slot                       # connection slot
    uint32_t gen                        # its generation when the send was deferred
    uint32_t first                      # first iovec in the set's arrays
    uint32_t niov                       # iovecs; 0 = done (its references dropped)

cdef struct bn_hworker:
    int index                           # position among the engine's workers
    int listen_fd                       # SO_REUSEPORT listening socket (owned by Python)
    int epfd                            # this worker's epoll instance
    int stop_fd                         # engine's eventfd, readable once stop() is called
    int reply_fd                        # eventfd: the control plane pushed replies
    int miss_fd                         # eventfd to wake the control plane, -1 = no miss queue
    int cpu                             # CPU to pin to, -1 = no pinning
    int pin_error                       # errno from pinning
    int fatal_errno                     # errno that made the worker quit, 0 = none
    int* stop_flag                      # engine's stop flag
    int draining                        # stop() seen: finish or close connections, accept none
    int accept_paused                   # listening socket out of epoll after EMFILE
    int misses_to_python                # 1 = table misses go to the queue, 0 = answered 404
    int require_apikey                  # 1 = 401 without X-API-Key / ?api_key=
    bn_keyindex** keys_ref              # &api_keys.index, NULL = API keys not enforced
    bn_control_beat* control            # &engine.control: the control plane's liveness
    int control_stalled                 # control_stalled() at this wake-up: stale variants, 503
    char health_out[HEALTH_OUT_BYTES]   # the stalled /healthz answer, formatted per request
    int miss_signal                     # requests queued this batch: wake the control plane once
    uint32_t max_conns                  # connection slots
    uint32_t free_top                   # entries in free_slots
    uint32_t high_water                 # slots [0, high_water) have been used
    uint32_t active                     # connections open
    uint32_t* free_slots                # stack of free slot indexes
    bn_conn* conns                      # max_conns
    size_t max_header_bytes             # request head limit (431 beyond)
    size_t max_target_bytes             # request target limit (414 beyond)
    size_t max_output_bytes             # unsent output past which reading pauses
    size_t owned_bytes                  # owned output bytes of this worker's connections (gauge)
    uint64_t* owned_total               # the engine's owned output bytes, all workers (atomic)
    uint64_t max_owned_total            # cap on *owned_total (max_copied_output_bytes)
    int64_t header_timeout_ns
    int64_t idle_timeout_ns
    int64_t write_timeout_ns
    int64_t grace_ns                    # set by stop() before the stop flag
    int64_t drain_deadline_ns
    int64_t now_ns                      # CLOCK_MONOTONIC_COARSE, refreshed after each epoll_wait
    uint64_t admit_ns                   # CLOCK_MONOTONIC (as the UDP readers' GCRA), same cadence
    int64_t next_tick_ns
    int64_t accept_resume_ns
    time_t date_second                  # second the Date tails were built for
    bn_missq* missq                     # NULL: no queue (misses 404, routes 404)
    bn_governor* gov                    # the engine's governor (_governor.pxi), shared by workers
    bn_index** index_ref                # &table.index, loaded once per request
    bn_index** keyed_ref                # &keyed_replies.index (answers per API key), or NULL
    bn_qsbr_slot* qsbr
    bn_http_counters* counters
    void* replies                       # bn_hreply stack, pushed by the control plane (CAS)
    char prefix[HTTP_PREFIX_MAX_BYTES]  # key prefix, e.g. "/v1/"
    size_t prefix_len
    char* scratch                       # HTTP_SCRATCH_BYTES
    iovec* iov                          # HTTP_IOV_MAX, one connection's pending responses
    uint8_t* iov_kind                   # HTTP_IOV_MAX: SEG_* of each iovec, if it must wait
    bn_entry** iov_entry                # HTTP_IOV_MAX: the entry of a SEG_ENTRY iovec
    int niov
    size_t iov_bytes                    # bytes the pending iovecs carry (bounded by max_output_bytes)
    epoll_event* events          # HTTP_EVENTS_MAX
    char tails[3][HTTP_TAIL_MAX_BYTES]  # TAIL_*: Date [+ Connection] + blank line
    size_t tail_len[3]
    int notsent_lowat                   # TCP_NOTSENT_LOWAT of accepted sockets (bytes), 0 = the kernel's
    int sndbuf                          # SO_SNDBUF of accepted sockets (bytes), 0 = autotuned
    int64_t next_kq_ns                  # next kernel_queued sample
    char batch_key[KEY_MAX_BYTES]       # "<prefix><batch_key>?symbols=A,B": the batch query
    size_t batch_key_len                # 0 = no batch query
    char miss_prefix[KEY_MAX_BYTES]     # table misses whose key starts so go to Python ...
    size_t miss_prefix_len              # ... 0 = every miss (with misses_to_python)
    char* batch_out                     # BATCH_OUT_BYTES: a batch answer's formatted head or 404
    int cors_any                        # CORS: 1 = any origin ("*"), 0 = the listed ones
    uint32_t cors_n                     # allowed origins listed; 0 and not cors_any = CORS off
    uint32_t cors_origin_lens[CORS_ORIGINS_MAX]
    char cors_origins[CORS_ORIGINS_MAX][CORS_ORIGIN_MAX_BYTES]
    size_t cors_seg_lens[CORS_SEG_ORIGIN0 + CORS_ORIGINS_MAX]
    char cors_segs[CORS_SEG_ORIGIN0 + CORS_ORIGINS_MAX][CORS_SEG_MAX_BYTES]   # CORS_SEG_*
    bn_ws_worker* ws                    # WebSocket state, NULL = no WebSocket on this engine
    uint32_t nroutes                    # extra exact paths for the control plane
    uint32_t route_lens[HTTP_ROUTES_MAX]
    char routes[HTTP_ROUTES_MAX][HTTP_PREFIX_MAX_BYTES]
    int linger_fd[HTTP_LINGER_SLOTS]    # refused at max_connections: read until EOF, -1 = free
    void** tls_ctx_ref                  # &engine.tls_ctx (an SSL_CTX*, loaded at accept), NULL = plain TCP
    int64_t tls_handshake_timeout_ns    # a TLS handshake must finish within this
    char* tls_stage                     # TLS_RECORD_BYTES: a flush's pieces coalesced into one record
    uint64_t tls_active                 # connections holding an SSL now (gauge)
    uint32_t* tls_ready                 # max_conns slots whose SSL holds records read ahead
    uint32_t tls_nready                 # entries in tls_ready
    bn_uring* uring                     # io="uring": this worker's ring (_http_uring.pxi), NULL = epoll
    bn_ucqe* cqes                       # io="uring": URING_CQES_MAX completions reaped per wake-up
    # io="uring": sends deferred to the next io_uring_enter, in two sets: one
    # filling during a wake-up, the other's completions still due.
    bn_usend* usends[2]                 # URING_SENDS_MAX each
    iovec* usend_iov[2]                 # URING_SEND_IOV_MAX each
    uint8_t* usend_kind[2]              # SEG_* of each iovec
    bn_entry** usend_entry[2]           # the entry a SEG_ENTRY iovec holds a reference on
    uint32_t usend_n[2]                 # records in each set
    uint32_t usend_niov[2]              # iovecs in each set
    uint32_t usend_out[2]               # submitted records whose completion is still due
    int usend_cur                       # the set filling now
    int usend_now                       # 1 = conn_flush_iov writes at once (an upgrade, which
                                        # must see the answers before it out first)
    int64_t linger_until_ns[HTTP_LINGER_SLOTS]


# epoll data: (generation << 32) | slot for connections; these for the rest.
cdef uint64_t EV_LISTEN = 0xFFFFFFFF00000001ULL
cdef uint64_t EV_STOP = 0xFFFFFFFF00000002ULL
cdef uint64_t EV_REPLY = 0xFFFFFFFF00000003ULL
cdef uint64_t EV_WS = 0xFFFFFFFF00000004ULL       # the worker's publication ring
cdef uint64_t EV_LINGER = 0xFFFFFFFE00000000ULL     # | linger slot


cdef inline int64_t http_now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef size_t conn_parse_all(bn_hworker* w, bn_conn* c, const char* data, size_t n,
                           size_t scanned, int* head_incomplete) noexcept nogil:
    """Answer every complete request in data[0:n] until one must wait.
    Returns the bytes consumed; the rest is an incomplete head or waits.
    *head_incomplete says which: only an incomplete head has been searched
    to its end (a backlog or a pending miss may leave complete requests)."""
    cdef size_t pos = 0
    cdef size_t from_
    cdef const char* end
    cdef size_t head_len
    cdef size_t avail
    cdef int status
    cdef int rc
    cdef bn_hreq req
    head_incomplete[0] = 0
    while pos < n:
        if c.flags & (CONN_WAITING | CONN_CLOSE_AFTER | CONN_DEAD):
            break
        if conn_out_full(w, c):
            break                       # the client is not reading: stop answering
        # RFC 9112 section 2.2: empty lines (CRLF) before a request line are ignored.
        while n - pos >= 2 and data[pos] == 13 and data[pos + 1] == 10:
            pos += 2
            scanned = 0
        if pos == n:
            break
        avail = n - pos
        from_ = scanned - 3 if scanned > 3 and pos == 0 else 0
        scanned = 0
        end = <const char*>memmem(data + pos + from_, avail - from_, b"\r\n\r\n", 4)
        if end == NULL:
            # Incomplete head.  Refuse early when it can no longer fit, or
            # can no longer be a request (junk, bare LF: no timeout to wait).
            if http_head_prefix_bad(data + pos, avail, w.max_target_bytes):
                status = ERR_400
                if c.requests == 0 and pos == 0 and tls_is_client_hello(data, avail):
                    # A TLS client on the plain port: the 400 goes out now
                    # (its client reports "wrong version number").
                    bn_count(&w.counters.tls_on_plain_port, 1)
            elif avail > w.max_header_bytes:
                status = ERR_431
                if memmem(data + pos, avail, b"\r\n", 2) == NULL:
                    status = ERR_414
            elif (avail > w.max_target_bytes + 32
                    and memmem(data + pos, avail, b"\r\n", 2) == NULL):
                status = ERR_414
            else:
                head_incomplete[0] = 1
                break
            bn_count(&w.counters.requests, 1)
            bn_count(&w.counters.parse_errors, 1)
            c.flags |= CONN_CLOSE_AFTER
            conn_emit_error(w, c, status, TAIL_CLOSE, 0)
            return n
        head_len = <size_t>(end - (data + pos)) + 4
        bn_count(&w.counters.requests, 1)
        if head_len > w.max_header_bytes:
            status = 431
        else:
            status = http_parse_head(data + pos, head_len, &req, w.max_target_bytes)
        if status != 0:
            bn_count(&w.counters.parse_errors, 1)
            c.flags |= CONN_CLOSE_AFTER
            conn_emit_error(w, c, ERR_400 if status == 400 else (ERR_414 if status == 414 else ERR_431),
                            TAIL_CLOSE, 0)
            return n
        pos += head_len
        rc = conn_request(w, c, &req)
        if rc != 0:
            break
    if c.flags & CONN_CLOSE_AFTER:
        return n                        # nothing after a closing answer is read
    return pos


cdef void conn_set_events(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Read unless waiting, closing or backlogged; watch for writability only
    while output is pending.  epoll_ctl only when the interest changes."""
    cdef uint32_t want = 0
    # Not for an io_uring send still to be submitted: its completion says.
    if c.out_bytes > 0 or c.tls_pend != NULL or (c.flags & CONN_TLS_READ_WANTS_WRITE):
        want |= EPOLLOUT
    if not (c.flags & (CONN_WAITING | CONN_CLOSE_AFTER | CONN_EOF)):
        if not conn_out_full(w, c):
            want |= EPOLLIN
            if c.ssl != NULL:
                tls_note_pending(w, c)  # reading again: what OpenSSL holds has no event
        elif c.events & EPOLLIN:
            bn_count(&w.counters.read_pauses, 1)
    if conn_watch(w, c, want) < 0:
        c.flags |= CONN_DEAD



cdef void conn_finish(bn_hworker* w, bn_conn* c) noexcept nogil:
    """End of a step on `c`: flush, then close it or set its epoll interest."""
    if c.ws != NULL:
        ws_adopt_input(w, c)            # upgraded in this step: the WebSocket side takes over
        return
    if conn_flush_iov(w, c) == 0 and conn_out_pending(c):
        conn_send_out(w, c)
    if c.flags & CONN_DEAD:
        conn_close(w, c)
        return
    if (c.flags & (CONN_CLOSE_AFTER | CONN_EOF)) and not conn_out_pending(c) and not (c.flags & CONN_WAITING):
        conn_close(w, c)
        return
    if w.draining and not conn_out_pending(c) and not (c.flags & CONN_WAITING):
        conn_close(w, c)
        return
    if (c.in_len > c.in_scanned and not conn_out_full(w, c)
            and not (c.flags & (CONN_WAITING | CONN_CLOSE_AFTER | CONN_EOF))):
        # Requests were left unparsed while the output was full, and the
        # output drained within this step (under TLS a blocked record can
        # finish here): answer them now, no read will come for them.  Each
        # round answers some or stops on a flag, a full output or a head.
        conn_run(w, c, c.inb, c.in_len)
        return
    conn_set_events(w, c)


cdef void conn_run(bn_hworker* w, bn_conn* c, const char* data, size_t n) noexcept nogil:
    """Parse and answer what data[0:n] holds, keep the rest, flush."""
    cdef size_t scanned = c.in_scanned if data == c.inb else 0
    cdef int head_incomplete
    cdef size_t used = conn_parse_all(w, c, data, n, scanned, &head_incomplete)
    conn_keep_input(w, c, data, n, used, head_incomplete)
    conn_finish(w, c)


cdef void conn_on_readable(bn_hworker* w, bn_conn* c) noexcept nogil:
    cdef char* buf
    cdef char* grown
    cdef size_t room
    cdef ssize_t n
    # Under TLS a read offers room for a whole record (see _tls.pxi).
    cdef size_t least = HTTP_READ_MIN_BYTES if c.ssl == NULL else TLS_RECORD_BYTES
    if c.inb == NULL:
        buf = w.scratch
        room = HTTP_SCRATCH_BYTES
    else:
        if c.in_cap - c.in_len < least:
            grown = <char*>realloc(c.inb, c.in_len + least)
            if grown == NULL:
                bn_count(&w.counters.oom_closes, 1)
                conn_close(w, c)
                return
            c.inb = grown
            c.in_cap = c.in_len + least
        buf = c.inb + c.in_len
        room = c.in_cap - c.in_len
    n = conn_recv(w, c, buf, room)
    if n == -2:
        if c.flags & CONN_TLS_READ_WANTS_WRITE:
            conn_set_events(w, c)
        return
    if n < 0:
        conn_close(w, c)
        return
    if n == 0:
        # The peer shut its side.  Answer what is complete (already done),
        # flush what is pending, then close.
        c.flags |= CONN_EOF
        conn_finish(w, c)
        return
    if buf == w.scratch:
        conn_on_bytes(w, c, w.scratch, <size_t>n)
    else:
        bn_count(&w.counters.bytes_in, <uint64_t>n)
        c.last_active_ns = w.now_ns
        c.in_len += <size_t>n
        conn_run(w, c, c.inb, c.in_len)


cdef void conn_on_bytes(bn_hworker* w, bn_conn* c, const char* data, size_t n) noexcept nogil:
    """`n` bytes arrived on `c` in a buffer of the loop's own, valid for this
    call only (epoll: the scratch buffer; io_uring: a provided buffer): parse
    and answer them, or append them to the input kept from earlier reads.
    On an upgraded connection (io_uring's receive goes on) they are frames."""
    cdef char* grown
    if c.ws != NULL:
        ws_conn_on_bytes(w, c, data, n)
        return
    bn_count(&w.counters.bytes_in, <uint64_t>n)
    c.last_active_ns = w.now_ns
    if c.inb == NULL:
        conn_run(w, c, data, n)
        return
    if c.in_cap - c.in_len < n:
        grown = <char*>realloc(c.inb, c.in_len + n + HTTP_READ_MIN_BYTES)
        if grown == NULL:
            bn_count(&w.counters.oom_closes, 1)
            conn_close(w, c)
            return
        c.inb = grown
        c.in_cap = c.in_len + n + HTTP_READ_MIN_BYTES
    memcpy(c.inb + c.in_len, data, n)
    c.in_len += n
    conn_run(w, c, c.inb, c.in_len)


cdef void conn_on_writable(bn_hworker* w, bn_conn* c) noexcept nogil:
    cdef int was_paused = conn_out_full(w, c)
    if c.flags & CONN_TLS_READ_WANTS_WRITE:
        c.flags &= ~CONN_TLS_READ_WANTS_WRITE
        conn_on_readable(w, c)          # the read that waited for the socket to drain
        return
    if conn_send_out(w, c) < 0:
        conn_close(w, c)
        return
    if was_paused and c.in_len > 0 and not (c.flags & (CONN_WAITING | CONN_CLOSE_AFTER)) \
            and not conn_out_full(w, c):
        conn_run(w, c, c.inb, c.in_len)   # answer the requests that waited for room
        return
    conn_finish(w, c)


# -- control-plane replies ---------------------------------------------------------------

cdef void http_worker_on_replies(bn_hworker* w) noexcept nogil:
    cdef uint64_t value
    cdef bn_hreply* stack
    cdef bn_hreply* fifo = NULL
    cdef bn_hreply* r
    cdef bn_conn* c
    cdef const char* data
    cdef int tail
    # Reset the eventfd first: a push after this read writes it again.
    read(w.reply_fd, &value, sizeof(value))
    stack = <bn_hreply*>bn_xchg_ptr(&w.replies, NULL)
    while stack != NULL:                # the stack is newest-first: reverse it
        r = stack
        stack = r.next
        r.next = fifo
        fifo = r
    while fifo != NULL:
        r = fifo
        fifo = r.next
        # Every queued request gets one reply, delivered or not: it leaves
        # the governor's in-flight count here.
        bn_add_u64(&w.gov.inflight, <uint64_t>-1)
        c = &w.conns[r.conn] if r.conn < w.max_conns else NULL
        if c == NULL or c.fd < 0 or c.gen != r.gen or not (c.flags & CONN_WAITING):
            bn_count(&w.counters.replies_dropped, 1)
            free(r)
            continue
        bn_count(&w.counters.replies, 1)
        if c.wait_start_ns != 0 and w.admit_ns > c.wait_start_ns:
            governor_sample(w.gov, w.admit_ns - c.wait_start_ns)
        c.flags &= ~CONN_WAITING
        tail = c.wait_tail
        if w.draining and tail != TAIL_CLOSE:
            tail = TAIL_CLOSE
            c.flags |= CONN_CLOSE_AFTER
        data = <const char*>r + sizeof(bn_hreply)
        # SEG_COPY: the reply is freed below, so what waits is copied.
        conn_emit(w, c, data, r.head_len, tail, data + r.head_len,
                  0 if (c.flags & CONN_WAIT_HEAD) else r.body_len, <int>r.status, SEG_COPY, NULL)
        c.flags &= ~CONN_WAIT_HEAD
        # The reply is in the iovecs: flush (queueing a copy of any rest) before freeing it.
        conn_flush_iov(w, c)
        free(r)
        if c.in_len > 0 and not (c.flags & (CONN_CLOSE_AFTER | CONN_DEAD)):
            conn_run(w, c, c.inb, c.in_len)   # the pipelined requests behind it
        else:
            conn_finish(w, c)
    if governor_on(w.gov):
        governor_close_window(w.gov, w.admit_ns)


# -- accepting, timers, the loop -------------------------------------------------------------

cdef void http_worker_pause_accept(bn_hworker* w) noexcept nogil:
    # Out of descriptors: leave the pending connections in the backlog for a
    # while rather than spin on a listening socket that stays readable.
    if not w.accept_paused:
        if w.uring != NULL:
            uring_accept_off(w)
        else:
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, w.listen_fd, NULL)
        w.accept_paused = 1
    w.accept_resume_ns = w.now_ns + HTTP_ACCEPT_PAUSE_MS * 1000000


cdef void http_worker_accept(bn_hworker* w) noexcept nogil:
    cdef int i
    cdef int fd
    cdef int err
    cdef bn_conn* c
    cdef epoll_event ev
    cdef char peer[ADDR_MAX_BYTES]
    cdef socklen_t peer_len
    for i in range(HTTP_ACCEPT_BATCH):
        peer_len = ADDR_MAX_BYTES
        fd = accept4(w.listen_fd, <sockaddr*>peer, &peer_len,
                            SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            err = errno
            if err == EAGAIN:
                return
            if err == EINTR:
                bn_count(&w.counters.eintr, 1)
                continue
            bn_count(&w.counters.accept_errors, 1)
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                bn_count(&w.counters.accept_emfile, 1)
                http_worker_pause_accept(w)
                return
            if err == EBADF or err == EINVAL or err == ENOTSOCK:
                w.fatal_errno = err
                http_worker_pause_accept(w)
                return
            continue                    # ECONNABORTED, EPROTO, EPERM...: that one is gone
        c = http_worker_adopt(w, fd, peer, peer_len)
        if c == NULL:
            continue
        ev.events = EPOLLIN
        ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>(c - w.conns)
        if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            bn_count(&w.counters.io_errors, 1)
            conn_close(w, c)


cdef bn_conn* http_worker_adopt(bn_hworker* w, int fd, const char* peer,
                                socklen_t peer_len) noexcept nogil:
    """An accepted socket becomes connection slot: options set, counted, TLS
    begun.  NULL when it was refused (503 at max_connections) or closed;
    the caller then has the loop watch it (epoll_ctl ADD, or a receive)."""
    cdef int one = 1
    cdef uint32_t slot
    cdef bn_conn* c
    if w.free_top == 0:
        # Over the limit: a canned 503 with Connection: close.
        # Counted first, so a client that sees the close also sees the count.
        bn_count(&w.counters.rejected, 1)
        send(fd, HTTP_ERR[ERR_503_CONNS].head, HTTP_ERR[ERR_503_CONNS].head_len,
                    MSG_NOSIGNAL | MSG_DONTWAIT)
        http_worker_linger(w, fd)
        return NULL
    # Best effort: a socket without TCP_NODELAY is still served correctly.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    # Bound what the kernel holds for a client that does not read: past
    # notsent_lowat unsent bytes the socket reads as full (EAGAIN), so the
    # engine's own bounds (conflation, write timeouts) take over early.
    # Refused (an old kernel): counted, and served with the kernel's default.
    if w.notsent_lowat and setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &w.notsent_lowat,
                                      sizeof(int)) < 0:
        bn_count(&w.counters.io_errors, 1)
    if w.sndbuf and setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &w.sndbuf, sizeof(int)) < 0:
        bn_count(&w.counters.io_errors, 1)
    w.free_top -= 1
    slot = w.free_slots[w.free_top]
    c = &w.conns[slot]
    c.fd = fd
    c.peer_len = peer_len if peer_len <= ADDR_MAX_BYTES else 0
    memcpy(c.peer, peer, c.peer_len)
    c.flags &= CONN_TLS_QUEUED
    c.events = EPOLLIN
    c.requests = 0
    c.cors = 0
    c.last_active_ns = w.now_ns
    c.head_start_ns = w.now_ns
    if slot >= w.high_water:
        w.high_water = slot + 1
    w.active += 1
    bn_count(&w.counters.accepted, 1)
    bn_store_u64(&w.counters.active, w.active)
    if w.tls_ctx_ref != NULL and tls_conn_new(w, c) < 0:
        conn_close(w, c)
        return NULL
    return c


cdef void http_worker_linger(bn_hworker* w, int fd) noexcept nogil:
    """Close a refused socket without losing its 503 (a lingering close).
    Closing with the client's request unread makes the kernel send a reset,
    which can destroy the 503 before the client reads it.  So: FIN after the
    503, then read and discard until the client closes or HTTP_LINGER_MS
    pass, in one of HTTP_LINGER_SLOTS slots (outside max_connections).
    With every slot taken, discard what has arrived and close now."""
    cdef int i
    cdef epoll_event ev
    shutdown(fd, SHUT_WR)
    for i in range(HTTP_LINGER_SLOTS):
        if w.linger_fd[i] < 0:
            if w.uring != NULL:
                if uring_linger_watch(w, fd, i) < 0:
                    break
            else:
                ev.events = EPOLLIN
                ev.data.u64 = EV_LINGER | <uint64_t>i
                if epoll_ctl(w.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
                    break
            w.linger_fd[i] = fd
            w.linger_until_ns[i] = w.now_ns + HTTP_LINGER_MS * 1000000
            return
    while recv(fd, w.scratch, HTTP_SCRATCH_BYTES, MSG_DONTWAIT) > 0:
        pass
    close(fd)


cdef void http_worker_on_linger(bn_hworker* w, uint32_t i) noexcept nogil:
    # Discard what the refused client sends; its close (or an error) ends it.
    cdef ssize_t n
    if i >= HTTP_LINGER_SLOTS or w.linger_fd[i] < 0:
        return
    while True:
        n = recv(w.linger_fd[i], w.scratch, HTTP_SCRATCH_BYTES, MSG_DONTWAIT)
        if n > 0:
            continue
        if n < 0 and (errno == EAGAIN or errno == EINTR):
            return
        close(w.linger_fd[i])
        w.linger_fd[i] = -1
        return


cdef void http_worker_linger_tick(bn_hworker* w) noexcept nogil:
    cdef int i
    for i in range(HTTP_LINGER_SLOTS):
        if w.linger_fd[i] >= 0 and (w.now_ns >= w.linger_until_ns[i] or w.draining):
            if w.uring != NULL:
                uring_linger_closing(w, i)
            close(w.linger_fd[i])
            w.linger_fd[i] = -1


cdef void http_worker_timeout(bn_hworker* w, bn_conn* c, uint64_t* which) noexcept nogil:
    bn_count(&w.counters.timeouts, 1)
    if which != NULL:
        bn_count(which, 1)
    if which == &w.counters.write_timeouts:
        conn_reset(w, c)
    conn_close(w, c)


cdef void conn_reset(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Make the coming close a reset (SO_LINGER 0): a stalled peer's unsent
    data is dropped at once instead of sitting in the kernel through
    FIN-WAIT-1 for as long as the peer keeps its window shut."""
    cdef linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    if setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0:
        bn_count(&w.counters.io_errors, 1)
        return
    bn_count(&w.counters.stall_resets, 1)


cdef void http_worker_sample_kernel_queues(bn_hworker* w) noexcept nogil:
    # kernel_queued: one ioctl per open connection, once a second.  The same
    # sample runs a WebSocket connection's second stall clock: from the last
    # sample that saw the peer acknowledge bytes while the kernel still held
    # some (ws_sample_acks).  A subscriber that stops reading is caught once
    # its receive window closes (within a sample), not only once
    # TCP_NOTSENT_LOWAT's worth is unsent: for a slow symbol, minutes.
    cdef uint32_t i
    cdef int queued
    cdef uint64_t total = 0
    cdef bn_conn* c
    for i in range(w.high_water):
        c = &w.conns[i]
        if c.fd < 0 or ioctl(c.fd, SIOCOUTQ, &queued) != 0 or queued < 0:
            continue
        total += <uint64_t>queued
        if c.ws != NULL and ws_sample_acks(c.ws, c.sent_bytes, <uint64_t>queued, w.now_ns,
                                           w.ws.stall_timeout_ns):
            ws_close_stalled(w, c)
    bn_store_u64(&w.counters.kernel_queued, total)


cdef void http_worker_write_window(bn_hworker* w, bn_conn* c) noexcept nogil:
    """A write-progress window ended with output still queued.  Progress is
    what the peer accepted (TCP-acknowledged) in the window, not whether a
    send() succeeded: a client reading 16 KB/s from a deep socket buffer
    leaves no room for a send() for many seconds, yet it is reading.
    Under HTTP_WRITE_MIN_PROGRESS_BYTES in write_timeout_s: stalled, closed."""
    cdef uint64_t acked = conn_acked_bytes(c)
    if acked - c.win_acked_bytes < HTTP_WRITE_MIN_PROGRESS_BYTES:
        http_worker_timeout(w, c, &w.counters.write_timeouts)
        return
    c.win_acked_bytes = acked
    c.win_start_ns = w.now_ns


cdef void http_worker_tick(bn_hworker* w) noexcept nogil:
    """Every HTTP_TICK_MS: Date tails, timeouts, accept resumption."""
    cdef uint32_t i
    cdef bn_conn* c
    cdef int64_t now = w.now_ns
    w.next_tick_ns = now + (HTTP_DRAIN_TICK_MS if w.draining else HTTP_TICK_MS) * 1000000
    http_worker_date(w)
    if w.accept_paused and not w.draining and now >= w.accept_resume_ns:
        http_worker_resume_accept(w)
    for i in range(w.high_water):
        c = &w.conns[i]
        if c.fd < 0 or c.ws != NULL:    # WebSocket connections: ws_check_stalls below
            continue
        if c.flags & CONN_SEND_INFLIGHT:
            continue                    # io_uring: mid-send, its completion is the next wake-up's
        if c.flags & CONN_TLS_HANDSHAKE:
            if w.draining:
                conn_close(w, c)
            elif now - c.head_start_ns > w.tls_handshake_timeout_ns:
                http_worker_timeout(w, c, &w.counters.tls_handshake_timeouts)
            continue
        if conn_out_pending(c):
            if now - c.win_start_ns >= w.write_timeout_ns:
                http_worker_write_window(w, c)
        elif c.flags & CONN_WAITING:
            if now - c.last_active_ns > w.idle_timeout_ns:
                http_worker_timeout(w, c, NULL)
        elif w.draining:
            # No complete request is waiting (one would have been answered):
            # an idle connection or a half-sent head.  Nothing to finish.
            conn_close(w, c)
        elif c.in_len > 0 or c.requests == 0:
            # An incomplete head (or nothing yet on a new connection): slowloris.
            if now - c.head_start_ns > w.header_timeout_ns:
                http_worker_timeout(w, c, &w.counters.header_timeouts)
        elif now - c.last_active_ns > w.idle_timeout_ns:
            http_worker_timeout(w, c, NULL)
    http_worker_linger_tick(w)
    if w.ws != NULL:
        ws_check_stalls(w)
    if now >= w.next_kq_ns:
        w.next_kq_ns = now + <int64_t>HTTP_KQ_SAMPLE_MS * 1000000
        http_worker_sample_kernel_queues(w)


cdef void http_worker_resume_accept(bn_hworker* w) noexcept nogil:
    cdef epoll_event ev
    if w.uring != NULL:
        uring_accept_on(w)
        return
    ev.events = EPOLLIN
    ev.data.u64 = EV_LISTEN
    if epoll_ctl(w.epfd, EPOLL_CTL_ADD, w.listen_fd, &ev) == 0:
        w.accept_paused = 0
    else:
        w.accept_resume_ns = w.now_ns + HTTP_ACCEPT_PAUSE_MS * 1000000


cdef inline void http_worker_end_step(bn_hworker* w) noexcept nogil:
    """What every wake-up ends with, on the epoll loop and the io_uring one."""
    if w.tls_nready:
        tls_drain_ready(w)              # records OpenSSL read ahead: no event will say so
    if w.ws != NULL and w.ws.dirty != NULL:
        # One sendmsg per WebSocket connection per wake-up, whatever this
        # batch queued on it (uWebSockets calls this corking).
        ws_flush_dirty(w)
    if w.miss_signal:
        w.miss_signal = 0
        udp_signal(w.miss_fd)
    if not w.draining and bn_load_int(w.stop_flag):
        http_worker_begin_drain(w)
    if w.now_ns >= w.next_tick_ns:
        http_worker_tick(w)
    # No entry pointer survives this point: conn_run flushed or copied.
    qsbr_quiescent(w.qsbr)


cdef inline void http_worker_close_all(bn_hworker* w) noexcept nogil:
    """Close every open connection (the loop has ended)."""
    cdef int j
    for j in range(w.high_water):
        if w.conns[j].fd >= 0:
            conn_close(w, &w.conns[j])


cdef void http_worker_begin_drain(bn_hworker* w) noexcept nogil:
    """stop(): accept no more, close idle connections now, let busy ones
    finish their current answer (with Connection: close) until the deadline."""
    cdef uint32_t i
    cdef bn_conn* c
    w.draining = 1
    w.drain_deadline_ns = w.now_ns + w.grace_ns
    if w.uring == NULL:                 # io_uring: the stop poll was one-shot
        epoll_ctl(w.epfd, EPOLL_CTL_DEL, w.stop_fd, NULL)
    if not w.accept_paused:
        if w.uring != NULL:
            uring_accept_off(w)
        else:
            epoll_ctl(w.epfd, EPOLL_CTL_DEL, w.listen_fd, NULL)
        w.accept_paused = 1
    for i in range(w.high_water):
        c = &w.conns[i]
        if c.fd >= 0 and c.ws != NULL:
            ws_send_close(w, c.ws, WS_CLOSE_GOING_AWAY)     # closed once it is written
        # No output queued and no request with the control plane: no answer
        # is in progress (a half-sent head is not a request yet).
        elif c.fd >= 0 and not conn_out_pending(c) and not (c.flags & CONN_WAITING):
            conn_close(w, c)
    if w.ws != NULL:
        ws_flush_dirty(w)
    w.next_tick_ns = w.now_ns


cdef void http_worker_on_event(bn_hworker* w, epoll_event* ev) noexcept nogil:
    cdef uint64_t tag = ev.data.u64
    cdef uint32_t slot
    cdef bn_conn* c
    cdef uint32_t events = ev.events
    if (tag >> 32) == 0xFFFFFFFFU:
        if tag == EV_LISTEN:
            if not w.draining:
                http_worker_accept(w)
        elif tag == EV_REPLY:
            http_worker_on_replies(w)
        elif tag == EV_STOP:
            if not w.draining:
                http_worker_begin_drain(w)
        elif tag == EV_WS:
            ws_worker_on_publish(w)
        return
    if (tag >> 32) == 0xFFFFFFFEU:
        http_worker_on_linger(w, <uint32_t>(tag & 0xFFFFFFFFU))
        return
    slot = <uint32_t>(tag & 0xFFFFFFFFU)
    c = &w.conns[slot]
    if c.fd < 0 or c.gen != <uint32_t>(tag >> 32):
        return                          # closed earlier in this batch
    conn_on_event(w, c, events)


cdef inline void conn_on_event(bn_hworker* w, bn_conn* c, uint32_t events) noexcept nogil:
    """Readiness `events` (EPOLL* bits) on open connection `c`: an epoll
    event, or on io_uring a poll's completion (a TLS connection's reads, any
    connection's room to write again)."""
    cdef uint32_t gen = c.gen
    if c.ws != NULL:
        ws_conn_on_event(w, c, events)
        return
    if c.flags & CONN_TLS_HANDSHAKE:
        tls_on_handshake_event(w, c)
        return
    if events & EPOLLOUT:
        conn_on_writable(w, c)
        if c.fd < 0 or c.gen != gen:
            return
    if events & EPOLLIN:
        conn_on_readable(w, c)
    elif events & (EPOLLERR | EPOLLHUP):
        bn_count(&w.counters.econnreset, 1)
        conn_close(w, c)


cdef void* http_worker_main(void* arg) noexcept nogil:
    cdef bn_hworker* w = <bn_hworker*>arg
    cdef int n
    cdef int i
    cdef int err
    cdef int timeout_ms
    cdef uint32_t j
    if w.cpu >= 0:
        w.pin_error = bn_pin_self_to_cpu(w.cpu)
    w.now_ns = http_now_ns()
    http_worker_tick(w)
    qsbr_online(w.qsbr)
    while True:
        if w.draining and (w.active == 0 or w.now_ns >= w.drain_deadline_ns):
            break
        timeout_ms = <int>((w.next_tick_ns - w.now_ns) // 1000000)
        if timeout_ms < 0:
            timeout_ms = 0
        # Offline while asleep: an idle worker never holds reclamation back.
        qsbr_offline(w.qsbr)
        n = epoll_wait(w.epfd, w.events, HTTP_EVENTS_MAX, timeout_ms + 1)
        err = errno
        qsbr_online(w.qsbr)
        bn_count(&w.counters.epoll_waits, 1)
        w.now_ns = http_now_ns()
        w.control_stalled = control_stalled(w.control, <uint64_t>w.now_ns)
        if w.keys_ref != NULL or governor_on(w.gov):
            # GCRA shares each key's state with the UDP readers: same fine
            # clock.  The coarse one ticks every 4 ms and refuses bursts a
            # limit allows, and would quantise the governor's latencies.
            w.admit_ns = monotonic_ns()
        if n < 0:
            if err == EINTR:
                bn_count(&w.counters.eintr, 1)
                continue
            w.fatal_errno = err
            break
        for i in range(n):
            http_worker_on_event(w, &w.events[i])
        http_worker_end_step(w)
    http_worker_close_all(w)
    w.draining = 1
    http_worker_linger_tick(w)
    qsbr_offline(w.qsbr)
    return NULL


# -- set-up and teardown (GIL held) ----------------------------------------------------------

cdef void http_worker_free(bn_hworker* w) noexcept nogil:
    cdef bn_hreply* r
    cdef uint32_t i
    cdef int j
    if w == NULL:
        return
    for j in range(HTTP_LINGER_SLOTS):
        if w.linger_fd[j] >= 0:
            close(w.linger_fd[j])
    if w.conns != NULL:
        for i in range(w.high_water):
            if w.conns[i].fd >= 0:      # a worker that never ran still owns nothing; be safe
                close(w.conns[i].fd)
            if w.conns[i].ssl != NULL:
                openssl.SSL_free(w.conns[i].ssl)
                w.conns[i].ssl = NULL
                w.tls_active -= 1
            free(w.conns[i].tls_pend)
            w.conns[i].tls_pend = NULL
            free(w.conns[i].inb)
            conn_outq_free(w, &w.conns[i])
    r = <bn_hreply*>bn_xchg_ptr(&w.replies, NULL)
    while r != NULL:
        w.replies = r.next
        free(r)
        r = <bn_hreply*>w.replies
    if w.epfd >= 0:
        close(w.epfd)
    if w.reply_fd >= 0:
        close(w.reply_fd)
    bn_uring_free(w.uring)              # NULL on an epoll worker
    free(w.cqes)
    for j in range(2):
        free(w.usends[j])
        free(w.usend_iov[j])
        free(w.usend_kind[j])
        free(w.usend_entry[j])
    ws_worker_free(w.ws)
    free(w.conns)
    free(w.free_slots)
    free(w.scratch)
    free(w.batch_out)
    free(w.iov)
    free(w.iov_kind)
    free(w.iov_entry)
    free(w.events)
    free(w.tls_stage)
    free(w.tls_ready)
    free(w)


cdef bn_hworker* http_worker_new(uint32_t max_conns) noexcept nogil:
    cdef bn_hworker* w = <bn_hworker*>calloc(1, sizeof(bn_hworker))
    cdef uint32_t i
    if w == NULL:
        return NULL
    w.epfd = -1
    w.reply_fd = -1
    w.listen_fd = -1
    w.miss_fd = -1
    w.max_conns = max_conns
    w.conns = <bn_conn*>calloc(max_conns, sizeof(bn_conn))
    w.free_slots = <uint32_t*>malloc(max_conns * sizeof(uint32_t))
    w.scratch = <char*>malloc(HTTP_SCRATCH_BYTES)
    w.iov = <iovec*>calloc(HTTP_IOV_MAX, sizeof(iovec))
    w.iov_kind = <uint8_t*>calloc(HTTP_IOV_MAX, sizeof(uint8_t))
    w.iov_entry = <bn_entry**>calloc(HTTP_IOV_MAX, sizeof(bn_entry*))
    w.events = <epoll_event*>calloc(HTTP_EVENTS_MAX, sizeof(epoll_event))
    for i in range(HTTP_LINGER_SLOTS):
        w.linger_fd[i] = -1
    if (w.conns == NULL or w.free_slots == NULL or w.scratch == NULL or w.iov == NULL
            or w.iov_kind == NULL or w.iov_entry == NULL or w.events == NULL):
        http_worker_free(w)
        return NULL
    for i in range(max_conns):
        w.conns[i].fd = -1
        w.free_slots[i] = max_conns - 1 - i     # slot 0 pops first: used slots stay dense
    w.free_top = max_conns
    return w


cdef int http_epoll_add(int epfd, int fd, uint64_t tag) except -1:
    cdef epoll_event ev
    ev.events = EPOLLIN
    ev.data.u64 = tag
    if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
        raise_errno("epoll_ctl ADD")
    return 0


cdef class HTTPEngine(NativeEngine):
    """Native HTTP/1.1 workers over already-listening SO_REUSEPORT sockets.

    Low-level: `beastnet.HTTPServer` creates the sockets, the control plane and
    this engine.  The engine owns neither the listening descriptors nor the
    table; it keeps the table alive while it exists.  One start(), one stop().
    """

    def __cinit__(self, ResponseTable table not None, fds, *, str prefix="/v1/", cpus=None,
                  size_t miss_capacity=0, bint misses_to_python=False,
                  unsigned int max_connections=10000, size_t max_header_bytes=8192,
                  size_t max_target_bytes=2048, size_t max_output_bytes=1048576,
                  double header_timeout_s=10.0, double idle_timeout_s=60.0,
                  double write_timeout_s=10.0, bint require_api_key=False,
                  APIKeyTable api_keys=None, str ws_path=None, str ws_echo_path=None,
                  ResponseTable ws_topics=None, unsigned int ws_max_subscriptions=0,
                  size_t ws_max_frame_bytes=65536, size_t ws_max_message_bytes=65536,
                  double ws_stall_timeout_s=10.0, unsigned int ws_max_symbols=1024,
                  size_t ws_compress_min_bytes=0, double ws_auth_timeout_s=5.0,
                  double ws_message_timeout_s=10.0, size_t ws_max_reassembly_bytes=64 << 20,
                  route_paths=(),
                  size_t max_copied_output_bytes=268435456,
                  TLSContext tls=None, double tls_handshake_timeout_s=10.0, cors_origins=(),
                  str batch_key=None, int notsent_lowat_bytes=131072,
                  int send_buffer_bytes=0, str miss_prefix=None, str io="epoll",
                  unsigned int uring_buffers=URING_NBUFS, ResponseTable keyed_replies=None):
        cdef int i
        cdef int uring_err
        cdef int j
        cdef int n = len(fds)
        cdef bytes raw_prefix = prefix.encode("ascii")
        cdef uint32_t per_worker
        cdef bn_hworker* w
        self.stop_efd = -1
        if io not in ("epoll", "uring"):
            raise ValueError(f"io must be 'epoll' or 'uring', got {io!r}")
        if io == "uring":
            self.use_uring = 1
            if not 1 <= uring_buffers <= 32768 or uring_buffers & (uring_buffers - 1):
                raise ValueError("uring_buffers must be a power of two, 1..32768")
        if n < 1:
            raise ValueError("at least one listening socket is needed")
        if cpus is not None and len(cpus) != n:
            raise ValueError("cpus must give one CPU (or -1) per socket")
        if not raw_prefix.startswith(b"/") or len(raw_prefix) >= HTTP_PREFIX_MAX_BYTES:
            raise ValueError(f"prefix must start with '/' and be shorter than {HTTP_PREFIX_MAX_BYTES} bytes")
        if not 256 <= max_header_bytes <= 1048576:
            raise ValueError("max_header_bytes must be 256..1048576")
        if not 16 <= max_target_bytes <= max_header_bytes:
            raise ValueError("max_target_bytes must be 16..max_header_bytes")
        if max_connections < <unsigned int>n:
            raise ValueError("max_connections must be at least one per worker")
        if (header_timeout_s <= 0 or idle_timeout_s <= 0 or write_timeout_s <= 0
                or tls_handshake_timeout_s <= 0):
            raise ValueError("timeouts must be positive")
        cdef bytes raw_ws_path = ws_path.encode("ascii") if ws_path is not None else b""
        cdef bytes raw_echo = ws_echo_path.encode("ascii") if ws_echo_path is not None else b""
        for raw in (raw_ws_path, raw_echo):
            if raw and (not raw.startswith(b"/") or len(raw) >= HTTP_PREFIX_MAX_BYTES or b"?" in raw):
                raise ValueError(f"WebSocket paths start with '/', have no query and are shorter"
                                 f" than {HTTP_PREFIX_MAX_BYTES} bytes: {raw!r}")
        if raw_echo and not raw_ws_path:
            raise ValueError("ws_echo_path needs ws_path (the WebSocket engine) too")
        if ws_path is not None:
            if not 125 <= ws_max_frame_bytes <= ws_max_message_bytes <= 16777216:
                raise ValueError("need 125 <= ws_max_frame_bytes <= ws_max_message_bytes <= 16 MiB")
            if not 1 <= ws_max_symbols <= 100000 or ws_stall_timeout_s <= 0:
                raise ValueError("ws_max_symbols must be 1..100000 and ws_stall_timeout_s positive")
            if ws_message_timeout_s <= 0:
                raise ValueError("ws_message_timeout_s must be positive")
            if ws_auth_timeout_s < 0:
                raise ValueError("ws_auth_timeout_s must be 0 (no first-message auth) or positive")
            if ws_compress_min_bytes > BODY_MAX_BYTES:
                raise ValueError(f"ws_compress_min_bytes must be 0 (off)..{BODY_MAX_BYTES}")
        cdef list raw_routes = [p.encode("ascii") for p in route_paths
                                if not p.startswith(("/admin/", "/metrics", "/healthz"))]
        if len(raw_routes) > HTTP_ROUTES_MAX:
            raise ValueError(f"at most {HTTP_ROUTES_MAX} extra route paths")
        for raw in raw_routes:
            if not raw.startswith(b"/") or len(raw) >= HTTP_PREFIX_MAX_BYTES or b"?" in raw:
                raise ValueError(f"route paths start with '/', have no query and are shorter"
                                 f" than {HTTP_PREFIX_MAX_BYTES} bytes: {raw!r}")
        cdef list raw_origins = [o.encode("ascii") for o in cors_origins]
        cdef int cors_any = b"*" in raw_origins
        if cors_any and len(raw_origins) > 1:
            raise ValueError('cors_origins: "*" allows every origin: list it alone')
        if len(raw_origins) > CORS_ORIGINS_MAX:
            raise ValueError(f'cors_origins: at most {CORS_ORIGINS_MAX} origins (or "*")')
        for raw in raw_origins:
            if raw != b"*" and (not 0 < len(raw) <= CORS_ORIGIN_MAX_BYTES or b"://" not in raw
                                or any(ch <= 32 or ch >= 127 for ch in raw)):
                raise ValueError(f"cors_origins: {raw.decode()!r} is not an origin like"
                                 f" https://example.com (at most {CORS_ORIGIN_MAX_BYTES} bytes)")
        cdef list cors_segs = [b"Vary: Origin\r\n", b"Access-Control-Allow-Origin: *\r\n"]
        cors_segs += [b"Access-Control-Allow-Origin: " + raw + b"\r\nVary: Origin\r\n"
                      for raw in raw_origins if raw != b"*"]
        if notsent_lowat_bytes < 0 or send_buffer_bytes < 0:
            raise ValueError("notsent_lowat_bytes and send_buffer_bytes must be >= 0 (0: the kernel's)")
        cdef bytes raw_batch = batch_key.encode("ascii") if batch_key else b""
        if raw_batch and not http_key_valid(raw_batch, len(raw_batch)):
            raise ValueError(f"batch_key {batch_key!r} is not a valid key")
        cdef bytes raw_miss_prefix = miss_prefix.encode("ascii") if miss_prefix else b""
        if len(raw_miss_prefix) >= KEY_MAX_BYTES:
            raise ValueError(f"miss_prefix {miss_prefix!r}: at most {KEY_MAX_BYTES - 1} bytes")
        self._setup(table, api_keys, n, sizeof(bn_http_counters), miss_capacity)
        if keyed_replies is not None and api_keys is None:
            raise ValueError("keyed_replies needs api_keys: its answers are per API key")
        self.keyed_replies = keyed_replies      # the workers read its index
        if tls is not None:
            openssl.SSL_CTX_up_ref(tls.ctx)
            self.tls_ctx = tls.ctx
            self.tls_context = tls
        self.stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_efd < 0:
            raise_errno("eventfd")
        self.workers = <bn_hworker**>calloc(n, sizeof(bn_hworker*))
        if self.workers == NULL:
            raise MemoryError()
        per_worker = max_connections // n
        for i in range(n):
            w = http_worker_new(per_worker)
            if w == NULL:
                raise MemoryError()
            self.workers[i] = w
            w.index = i
            w.listen_fd = fds[i]
            w.cpu = -1 if cpus is None else cpus[i]
            w.stop_flag = &self.stop_flag
            w.stop_fd = self.stop_efd
            w.miss_fd = self.miss_efd
            w.missq = self.missq
            w.gov = self.gov
            w.misses_to_python = misses_to_python
            w.require_apikey = require_api_key
            w.keys_ref = &api_keys.index if api_keys is not None else NULL
            w.control = &self.control
            w.index_ref = &table.index
            w.keyed_ref = &keyed_replies.index if keyed_replies is not None else NULL
            w.counters = &(<bn_http_counters*>self.counter_mem)[i]
            w.max_header_bytes = max_header_bytes
            w.max_target_bytes = max_target_bytes
            w.max_output_bytes = max_output_bytes
            w.owned_total = &self.owned_output_bytes
            w.max_owned_total = max_copied_output_bytes
            w.header_timeout_ns = <int64_t>(header_timeout_s * 1e9)
            w.idle_timeout_ns = <int64_t>(idle_timeout_s * 1e9)
            w.write_timeout_ns = <int64_t>(write_timeout_s * 1e9)
            if tls is not None:
                w.tls_ctx_ref = &self.tls_ctx
                w.tls_handshake_timeout_ns = <int64_t>(tls_handshake_timeout_s * 1e9)
                w.tls_stage = <char*>malloc(TLS_RECORD_BYTES)
                w.tls_ready = <uint32_t*>malloc(per_worker * sizeof(uint32_t))
                if w.tls_stage == NULL or w.tls_ready == NULL:
                    raise MemoryError()
            memcpy(w.prefix, <const char*>raw_prefix, len(raw_prefix))
            w.prefix_len = len(raw_prefix)
            for raw in raw_routes:
                memcpy(w.routes[w.nroutes], <const char*>raw, len(raw))
                w.route_lens[w.nroutes] = len(raw)
                w.nroutes += 1
            if raw_batch:
                memcpy(w.batch_key, <const char*>raw_batch, len(raw_batch))
                w.batch_key_len = len(raw_batch)
                w.batch_out = <char*>malloc(BATCH_OUT_BYTES)
                if w.batch_out == NULL:
                    raise MemoryError()
            if raw_miss_prefix:
                memcpy(w.miss_prefix, <const char*>raw_miss_prefix, len(raw_miss_prefix))
                w.miss_prefix_len = len(raw_miss_prefix)
            w.notsent_lowat = notsent_lowat_bytes
            w.sndbuf = send_buffer_bytes
            w.cors_any = cors_any
            for raw in raw_origins:
                if raw != b"*":
                    memcpy(w.cors_origins[w.cors_n], <const char*>raw, len(raw))
                    w.cors_origin_lens[w.cors_n] = len(raw)
                    w.cors_n += 1
            for j, seg in enumerate(cors_segs):
                memcpy(w.cors_segs[j], <const char*>seg, len(seg))
                w.cors_seg_lens[j] = len(seg)
            w.reply_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if w.reply_fd < 0:
                raise_errno("eventfd")
            if self.use_uring:
                # Created disabled: the worker thread enables it (its single issuer).
                w.uring = bn_uring_new(URING_ENTRIES, uring_buffers, URING_BUF_BYTES, &uring_err)
                if w.uring == NULL:
                    raise OSError(-uring_err, f"io_uring set-up: {os.strerror(-uring_err)}")
                w.cqes = <bn_ucqe*>malloc(URING_CQES_MAX * sizeof(bn_ucqe))
                if w.cqes == NULL:
                    raise MemoryError()
                for j in range(2):
                    w.usends[j] = <bn_usend*>calloc(URING_SENDS_MAX, sizeof(bn_usend))
                    w.usend_iov[j] = <iovec*>malloc(URING_SEND_IOV_MAX * sizeof(iovec))
                    w.usend_kind[j] = <uint8_t*>malloc(URING_SEND_IOV_MAX)
                    w.usend_entry[j] = <bn_entry**>malloc(URING_SEND_IOV_MAX * sizeof(bn_entry*))
                    if (w.usends[j] == NULL or w.usend_iov[j] == NULL or w.usend_kind[j] == NULL
                            or w.usend_entry[j] == NULL):
                        raise MemoryError()
                continue
            w.epfd = epoll_create1(EPOLL_CLOEXEC)
            if w.epfd < 0:
                raise_errno("epoll_create1")
            http_epoll_add(w.epfd, w.listen_fd, EV_LISTEN)
            http_epoll_add(w.epfd, w.stop_fd, EV_STOP)
            http_epoll_add(w.epfd, w.reply_fd, EV_REPLY)
        if ws_path is not None:
            self._ws_setup(raw_ws_path, raw_echo, ws_topics, ws_max_subscriptions,
                           ws_max_frame_bytes, ws_max_message_bytes, ws_stall_timeout_s,
                           ws_max_symbols, ws_compress_min_bytes)
            for i in range(n):
                self.workers[i].ws.auth_timeout_ns = <int64_t>(ws_auth_timeout_s * 1e9)
                self.workers[i].ws.message_timeout_ns = <int64_t>(ws_message_timeout_s * 1e9)
                self.workers[i].ws.reassembly_pool = &self.ws_reassembly_bytes
                self.workers[i].ws.reassembly_cap = ws_max_reassembly_bytes

    cdef int _ws_setup(self, bytes path, bytes echo, ResponseTable topics, unsigned int max_subs,
                       size_t max_frame, size_t max_message, double stall_s,
                       unsigned int max_symbols, size_t compress_min) except -1:
        """One publication ring and one WebSocket state per worker."""
        cdef int i
        cdef bn_hworker* w
        cdef bn_ws_ring* ring
        self.hub = <bn_ws_hub*>calloc(1, sizeof(bn_ws_hub))
        if self.hub == NULL:
            raise MemoryError()
        self.hub.rings = <bn_ws_ring**>calloc(self.nthreads, sizeof(bn_ws_ring*))
        if self.hub.rings == NULL:
            raise MemoryError()
        self.hub.compress_min = <uint32_t>compress_min
        self.ws_topics = topics
        for i in range(self.nthreads):
            ring = ws_ring_new(WS_RING_SLOTS)
            if ring == NULL:
                raise MemoryError()
            self.hub.rings[i] = ring
            self.hub.nrings += 1
            w = self.workers[i]
            w.ws = ws_worker_new(ring, max_symbols)
            if w.ws == NULL:
                raise MemoryError()
            memcpy(w.ws.path, <const char*>path, len(path))
            w.ws.path_len = len(path)
            memcpy(w.ws.echo_path, <const char*>echo, len(echo))
            w.ws.echo_path_len = len(echo)
            w.ws.extra_ref = &topics.index if topics is not None else NULL
            w.ws.max_subs = max_subs
            w.ws.max_frame_bytes = max_frame
            w.ws.max_message_bytes = max_message
            w.ws.stall_timeout_ns = <int64_t>(stall_s * 1e9)
            w.ws.compress_min = <uint32_t>compress_min
            if not self.use_uring:      # io_uring: the worker polls it (UR_WS)
                http_epoll_add(w.epfd, ring.efd, EV_WS)
        return 0

    cdef void _ws_release(self) noexcept:
        # After the workers are gone: the rings (their eventfds, and the entry
        # references of publications nobody drained).
        cdef int i
        self._ws_detach()
        if self.hub != NULL:
            for i in range(self.hub.nrings):
                ws_ring_free(self.hub.rings[i])
            free(self.hub.rings)
            free(self.hub)
            self.hub = NULL
        if self.workers != NULL:
            for i in range(self.nthreads):
                if self.workers[i] != NULL and self.workers[i].ws != NULL:
                    self.workers[i].ws.ring = NULL

    cdef void _ws_detach(self) noexcept:
        if self.hub != NULL and self.hub_attached:
            self.table._detach_hub(self.hub)
            if self.ws_topics is not None:
                self.ws_topics._detach_hub(self.hub)
            self.hub_attached = 0

    def __dealloc__(self):
        cdef int i
        if self.group.running:
            self._join(0)
        self._ws_release()
        retire_free_all(&self.tls_retired)
        if self.tls_ctx != NULL:
            openssl.SSL_CTX_free(<openssl.SSL_CTX*>self.tls_ctx)
            self.tls_ctx = NULL
        if self.workers != NULL:
            for i in range(self.nthreads):
                http_worker_free(self.workers[i])
            free(self.workers)
            self.workers = NULL
        if self.stop_efd >= 0:
            close(self.stop_efd)

    cdef void _bind_qsbr(self, int i, bn_qsbr_slot* slot) noexcept:
        self.workers[i].qsbr = slot

    cdef object _snapshot(self, int i):
        cdef bn_http_counters snap
        counters_snapshot(&(<bn_http_counters*>self.counter_mem)[i], &snap, sizeof(snap))
        return snap

    def start(self):
        """Start one native worker thread per listening socket (no GIL in them)."""
        cdef int rc
        if self.hub != NULL and not self.hub_attached and not self.stopped:
            # Tables tell the workers of every write from now on.
            self.table._attach_hub(self.hub)
            if self.ws_topics is not None:
                self.ws_topics._attach_hub(self.hub)
            self.hub_attached = 1
        rc = self._start_threads("an HTTPEngine",
                                 http_uring_main if self.use_uring else http_worker_main,
                                 <void**>self.workers)
        if rc != 0:
            self._join(0)
            raise OSError(rc, f"pthread_create: {os.strerror(rc)}")

    cdef void _join(self, int64_t grace_ns) noexcept:
        cdef int i
        cdef uint64_t one = 1
        for i in range(self.nthreads):
            self.workers[i].grace_ns = grace_ns
        bn_store_int(&self.stop_flag, 1)      # release: the grace values are visible first
        write(self.stop_efd, &one, sizeof(one))
        self._join_threads()

    cdef void _free_rings(self) noexcept:
        # After the workers are gone: each io_uring worker's ring and buffer ring.
        cdef int i
        if self.workers == NULL:
            return
        for i in range(self.nthreads):
            if self.workers[i] != NULL and self.workers[i].uring != NULL:
                bn_uring_free(self.workers[i].uring)
                self.workers[i].uring = NULL

    @property
    def io(self):
        """The workers' I/O backend: "epoll" or "uring"."""
        return "uring" if self.use_uring else "epoll"

    def stop(self, double grace_s=0.0):
        """Stop accepting, let open connections finish the answer in progress
        (sent with Connection: close) for up to `grace_s` seconds, close the
        rest, and join every worker.  Idempotent."""
        if self.group.running:
            self._join(<int64_t>(grace_s * 1e9))
        self.stopped = 1
        self._free_rings()
        self._ws_detach()
        self.table.reclaim()
        retire_free_all(&self.tls_retired)   # no worker is left to hold a retired context

    def close(self):
        """Release the engine's descriptors (epoll instances, eventfds) after
        stop(); counters stay readable.  Idempotent."""
        cdef int i
        if self.group.running:
            raise RuntimeError("stop() the engine before close()")
        self.stopped = 1
        for i in range(self.nthreads):
            if self.workers != NULL and self.workers[i] != NULL:
                if self.workers[i].epfd >= 0:
                    close(self.workers[i].epfd)
                    self.workers[i].epfd = -1
                if self.workers[i].reply_fd >= 0:
                    close(self.workers[i].reply_fd)
                    self.workers[i].reply_fd = -1
        if self.stop_efd >= 0:
            close(self.stop_efd)
            self.stop_efd = -1
        self._ws_release()
        if self.miss_efd >= 0:
            close(self.miss_efd)
            self.miss_efd = -1

    def set_tls(self, TLSContext tls not None):
        """Serve new TLS connections from `tls` (a certificate reload).
        Connections already open keep the context they were made from."""
        cdef void* old
        if self.tls_ctx == NULL:
            raise ValueError("this engine was built without TLS")
        openssl.SSL_CTX_up_ref(tls.ctx)
        old = bn_xchg_ptr(&self.tls_ctx, tls.ctx)
        self.tls_context = tls
        # A worker may have loaded `old` and not yet called SSL_new() on it:
        # it is freed once every worker has passed a quiescent point.
        if retire_push_release(&self.tls_retired, old, 0, tls_ctx_release) < 0:
            openssl.SSL_CTX_free(<openssl.SSL_CTX*>tls.ctx)
            bn_store_ptr(&self.tls_ctx, old)
            raise MemoryError()
        retire_reclaim(&self.tls_retired)

    def ws_deflate_counters(self):
        """The publishing side of permessage-deflate (counters.WS_DEFLATE_COUNTERS):
        {} without a WebSocket feed that compresses."""
        if self.hub == NULL or self.hub.compress_min == 0:
            return {}
        return {"ws_deflated": bn_load_u64_relaxed(&self.hub.deflated),
                "ws_deflate_no_gain": bn_load_u64_relaxed(&self.hub.deflate_no_gain),
                "ws_deflate_bytes_in": bn_load_u64_relaxed(&self.hub.deflate_bytes_in),
                "ws_deflate_bytes_out": bn_load_u64_relaxed(&self.hub.deflate_bytes_out),
                "ws_deflate_cpu_ns": bn_load_u64_relaxed(&self.hub.deflate_cpu_ns)}

    def worker_status(self):
        """Per worker: the pinning errno (0 = fine) and the errno that made it quit (0 = none)."""
        cdef int i
        return [(self.workers[i].pin_error, self.workers[i].fatal_errno) for i in range(self.nthreads)]

    def send_reply(self, unsigned int thread, unsigned int conn, unsigned int gen,
                   bytes addr not None, bytes tag_prefix not None, int status,
                   str content_type not None, bytes body not None, str allow=None):
        """Answer a record of pop_misses(): queue a reply for connection
        (`conn`, `gen`) of worker `thread` and wake it (addr and tag_prefix
        are UDP's).  Returns 0, or 1 when the engine is not running (the
        reply is dropped).  A reply whose connection has gone is dropped by
        the worker (counted)."""
        cdef str extra = "Retry-After: 1\r\n" if status in (429, 503) else ""
        if status == 405 and allow:
            # RFC 9110 15.5.6: a 405 names the methods the resource takes.
            if not all(part.strip().isalpha() and part.strip().isupper() for part in allow.split(",")):
                raise ValueError(f"invalid Allow value {allow!r}")
            extra += f"Allow: {allow}\r\n"
        cdef bytes head
        cdef bn_hreply* r
        cdef void* old
        cdef uint64_t one = 1
        cdef bn_hworker* w
        if thread >= <unsigned int>self.nthreads:
            raise ValueError("no such worker")
        # 1xx would read as an interim response and 204/304 carry no body: any
        # of them with our Content-Length and body would desynchronise the
        # connection.  The dispatcher answers 500 instead.
        if not 200 <= status <= 599 or status in (204, 304):
            raise ValueError(f"unsupported HTTP status {status} for a handler answer")
        if "\r" in content_type or "\n" in content_type:
            raise ValueError(f"invalid content type {content_type!r}")
        if not self.group.running or self.workers[thread].reply_fd < 0:
            return 1
        head = http_build_head(status, content_type, len(body), extra)
        r = <bn_hreply*>malloc(sizeof(bn_hreply) + len(head) + len(body))
        if r == NULL:
            raise MemoryError()
        r.conn = conn
        r.gen = gen
        r.status = <uint32_t>status
        r.head_len = <uint32_t>len(head)
        r.body_len = <uint32_t>len(body)
        memcpy(<char*>r + sizeof(bn_hreply), <const char*>head, len(head))
        memcpy(<char*>r + sizeof(bn_hreply) + len(head), <const char*>body, len(body))
        w = self.workers[thread]
        while True:                     # Treiber push; the worker takes the whole stack
            old = bn_load_ptr(&w.replies)
            r.next = <bn_hreply*>old
            if bn_cas_ptr(&w.replies, old, r):
                break
        write(w.reply_fd, &one, sizeof(one))
        return 0



def http_hit_iovecs(ResponseTable table not None, bytes request not None, str prefix="/v1/"):
    """Run one request through the worker's answer path without a socket and
    report where the response iovecs point (for the zero-copy test):
    a list of (address, length), plus the entry's head and body addresses."""
    cdef bn_hworker* w = http_worker_new(1)
    cdef bn_http_counters counters
    cdef uint64_t owned_total = 0
    cdef bn_conn* c
    cdef bytes raw_prefix = prefix.encode("ascii")
    cdef bn_entry* e
    cdef int i
    cdef int slot
    cdef int head_incomplete
    if w == NULL:
        raise MemoryError()
    memset(&counters, 0, sizeof(counters))
    w.counters = &counters
    w.index_ref = &table.index
    w.max_header_bytes = 8192
    w.max_target_bytes = 2048
    w.max_output_bytes = 1 << 20
    w.owned_total = &owned_total
    w.max_owned_total = 1 << 20
    memcpy(w.prefix, <const char*>raw_prefix, len(raw_prefix))
    w.prefix_len = len(raw_prefix)
    http_worker_date(w)
    c = &w.conns[0]
    slot = qsbr_register()
    try:
        qsbr_online(&qsbr_slots[slot])
        conn_parse_all(w, c, request, len(request), 0, &head_incomplete)
        out = [(<size_t>w.iov[i].iov_base, w.iov[i].iov_len) for i in range(w.niov)]
        with table._lock:
            key = request.split(b" ")[1][len(raw_prefix):].split(b"?")[0]
            e = table._find(key)
            entry = (<size_t>e.http_head, <size_t>e.body) if e != NULL else None
        qsbr_offline(&qsbr_slots[slot])
    finally:
        qsbr_unregister(slot)
        w.niov = 0
        w.iov_bytes = 0
        http_worker_free(w)
    return {"iovecs": out, "entry_head": entry[0] if entry else None,
            "entry_body": entry[1] if entry else None}
