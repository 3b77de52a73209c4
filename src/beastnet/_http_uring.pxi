# The HTTP worker loop on io_uring (HTTPServer(io="uring")).
#
# Same worker, same connection slots, same state machine as the epoll loop
# (_http_worker.pxi, _http_conn.pxi): parse, route, output queue, keep-alive,
# pipelining, slow readers served from references, timeouts.  Only the I/O
# differs, each piece a small function here:
# - accept: one multishot accept on the listening socket; each completion is
#   a socket that http_worker_adopt() makes a connection;
# - "bytes arrived on conn c": one multishot receive per connection into a
#   provided buffer ring shared by the worker's connections; a completion
#   hands its buffer to conn_on_bytes() (as epoll hands the scratch buffer)
#   and the buffer goes back to the ring at once;
# - the interest (conn_watch): reading paused = the receive cancelled, resumed
#   = re-armed; output backlogged = a one-shot POLLOUT whose completion runs
#   conn_on_writable(); neither (waiting for the control plane) = a poll on
#   nothing but errors and hang-ups, which epoll reports whatever the interest:
#   a client that resets meanwhile is closed at once, as under epoll.
# - a TLS connection reads through OpenSSL, which reads the socket itself
#   (SSL_set_fd) and may need several reads per record, or a write during a
#   read: its "readable" is a one-shot POLLIN poll, re-armed while reading is
#   wanted, whose completion runs the epoll loop's handler (conn_on_event).
#   Its writes go through SSL_write at once, not through the deferred sends.
# - the WebSocket feed: the publication ring's eventfd is a multishot poll
#   (ws_worker_on_publish); an upgraded plain connection keeps its multishot
#   receive, whose bytes go to the frame reader (conn_on_bytes); output is
#   written once per wake-up after the completions (ws_flush_dirty, one
#   sendmsg per connection), and a short write arms the POLLOUT poll.
# - writes (conn_flush_iov): a step's responses become one SENDMSG SQE
#   submitted with the next io_uring_enter, every connection's in the same
#   call, instead of a sendmsg each (uring_send_defer).  Their iovecs are
#   copied into the worker's send set, entries referenced; the Date tails and
#   CORS lines they point to are rewritten only after that call returns, and
#   MSG_DONTWAIT makes the kernel finish or refuse (-EAGAIN) each send within
#   it.  The completion queues what was not taken, as a partial write under
#   epoll.  Responses pointing into a buffer the step reuses (a batch answer,
#   a control-plane reply, the stalled /healthz) are written at once, as
#   under epoll.
#
# The ring is IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions run only
# inside this thread's io_uring_enter, and every request queued during a
# wake-up (re-arms, cancels, polls) goes to the kernel in the one
# io_uring_enter that waits for the next completions.  Every completion's
# result is checked: -ENOBUFS (buffer ring empty), -EAGAIN and -EINTR are
# counted and the request re-armed, -ECONNRESET counted and the connection
# closed; a multishot request that ends (no IORING_CQE_F_MORE) is re-armed
# while it is still wanted (counted).
#
# Not built: TLS records through the multishot receive and the deferred
# sends (memory BIOs); they cross the kernel in OpenSSL's own read()/write().

# user_data: kind << 60 | (generation & 0x0FFFFFFF) << 32 | slot for a
# connection's requests; kind << 60 | index for the worker's own.
cdef uint64_t UR_RECV = 0
cdef uint64_t UR_POLLOUT = 1
cdef uint64_t UR_ACCEPT = 2
cdef uint64_t UR_STOP = 3
cdef uint64_t UR_REPLY = 4
cdef uint64_t UR_LINGER = 5
cdef uint64_t UR_CANCEL = 6             # a cancel's own completion: nothing to do
cdef uint64_t UR_ERRWATCH = 7           # a connection that reads nothing and writes nothing
cdef uint64_t UR_SEND = 8               # a deferred send: set << 16 | record
cdef uint64_t UR_POLLIN = 9             # a TLS connection's one-shot "readable"
cdef uint64_t UR_WS = 10                # the worker's WebSocket publication ring (eventfd)

# Bits of bn_conn.events on an io_uring worker, beside the wanted EPOLLIN/EPOLLOUT.
cdef uint32_t UR_RECV_ARMED = 1 << 16        # a multishot receive is in the kernel
cdef uint32_t UR_RECV_CANCELLING = 1 << 17   # ... and its cancel has been queued
cdef uint32_t UR_OUT_ARMED = 1 << 18         # a POLLOUT poll is in the kernel
cdef uint32_t UR_ERR_ARMED = 1 << 19         # an error/hang-up poll is in the kernel
cdef uint32_t UR_IN_ARMED = 1 << 20          # a TLS connection's POLLIN poll is in the kernel

cdef inline uint64_t ur_conn_ud(uint64_t kind, bn_hworker* w, bn_conn* c) noexcept nogil:
    return (kind << 60) | ((<uint64_t>c.gen & 0x0FFFFFFF) << 32) | <uint64_t>(c - w.conns)


cdef inline uint64_t ur_ud(uint64_t kind, uint64_t index) noexcept nogil:
    return (kind << 60) | index


cdef int uring_conn_watch(bn_hworker* w, bn_conn* c, uint32_t want) noexcept nogil:
    """conn_watch on an io_uring worker: arm the receive when reading is
    wanted and none is armed, cancel it when reading pauses, arm a POLLOUT
    when output waits.  0, or -1 with io_errors counted."""
    cdef uint32_t ev = c.events
    if c.ssl != NULL:
        # OpenSSL reads the socket itself: a readiness poll, never a receive.
        # One left armed while reading pauses completes unheeded (uring_on_pollin).
        if (want & EPOLLIN) and not (ev & UR_IN_ARMED):
            if bn_uring_poll(w.uring, c.fd, POLLIN, 0, ur_conn_ud(UR_POLLIN, w, c)) < 0:
                bn_count(&w.counters.io_errors, 1)
                return -1
            ev |= UR_IN_ARMED
    elif want & EPOLLIN:
        if not (ev & UR_RECV_ARMED):
            if bn_uring_recv(w.uring, c.fd, ur_conn_ud(UR_RECV, w, c)) < 0:
                bn_count(&w.counters.io_errors, 1)
                return -1
            ev |= UR_RECV_ARMED
        # Armed and being cancelled: re-armed when the cancel's completion ends it.
    elif (ev & UR_RECV_ARMED) and not (ev & UR_RECV_CANCELLING):
        if bn_uring_cancel(w.uring, ur_conn_ud(UR_RECV, w, c), ur_ud(UR_CANCEL, 0)) < 0:
            bn_count(&w.counters.io_errors, 1)
            return -1
        ev |= UR_RECV_CANCELLING
    if (want & EPOLLOUT) and not (ev & UR_OUT_ARMED):
        if bn_uring_poll(w.uring, c.fd, POLLOUT, 0, ur_conn_ud(UR_POLLOUT, w, c)) < 0:
            bn_count(&w.counters.io_errors, 1)
            return -1
        ev |= UR_OUT_ARMED
    if want == 0 and not (ev & UR_ERR_ARMED):
        # The kernel adds POLLERR | POLLHUP (and POLLRDHUP) to every poll.
        if bn_uring_poll(w.uring, c.fd, 0, 0, ur_conn_ud(UR_ERRWATCH, w, c)) < 0:
            bn_count(&w.counters.io_errors, 1)
            return -1
        ev |= UR_ERR_ARMED
    c.events = (ev & ~(<uint32_t>(EPOLLIN | EPOLLOUT))) | want
    return 0


cdef void uring_conn_closing(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Before close(c.fd): cancel the connection's requests, which hold the
    socket open otherwise.  Their last completions carry the old generation
    and are dropped (a buffer they carry goes back to the ring)."""
    if (c.events & UR_RECV_ARMED) and not (c.events & UR_RECV_CANCELLING):
        if bn_uring_cancel(w.uring, ur_conn_ud(UR_RECV, w, c), ur_ud(UR_CANCEL, 0)) < 0:
            bn_count(&w.counters.io_errors, 1)
    if c.events & UR_OUT_ARMED:
        if bn_uring_cancel(w.uring, ur_conn_ud(UR_POLLOUT, w, c), ur_ud(UR_CANCEL, 0)) < 0:
            bn_count(&w.counters.io_errors, 1)
    if c.events & UR_ERR_ARMED:
        if bn_uring_cancel(w.uring, ur_conn_ud(UR_ERRWATCH, w, c), ur_ud(UR_CANCEL, 0)) < 0:
            bn_count(&w.counters.io_errors, 1)
    if c.events & UR_IN_ARMED:
        if bn_uring_cancel(w.uring, ur_conn_ud(UR_POLLIN, w, c), ur_ud(UR_CANCEL, 0)) < 0:
            bn_count(&w.counters.io_errors, 1)


cdef void uring_accept_on(bn_hworker* w) noexcept nogil:
    # Accepting again after a pause (EMFILE) or at start.
    if bn_uring_accept(w.uring, w.listen_fd, ur_ud(UR_ACCEPT, 0)) == 0:
        w.accept_paused = 0
    else:
        bn_count(&w.counters.io_errors, 1)
        w.accept_resume_ns = w.now_ns + HTTP_ACCEPT_PAUSE_MS * 1000000


cdef void uring_accept_off(bn_hworker* w) noexcept nogil:
    if bn_uring_cancel(w.uring, ur_ud(UR_ACCEPT, 0), ur_ud(UR_CANCEL, 0)) < 0:
        bn_count(&w.counters.io_errors, 1)


cdef int uring_linger_watch(bn_hworker* w, int fd, int i) noexcept nogil:
    """Watch a refused socket of linger slot i for input (or its close)."""
    return bn_uring_poll(w.uring, fd, POLLIN, 0, ur_ud(UR_LINGER, <uint64_t>i))


cdef void uring_linger_closing(bn_hworker* w, int i) noexcept nogil:
    # The slot's poll holds the socket: cancel it with the close.
    if bn_uring_cancel(w.uring, ur_ud(UR_LINGER, <uint64_t>i), ur_ud(UR_CANCEL, 0)) < 0:
        bn_count(&w.counters.io_errors, 1)


cdef void uring_on_accept(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    cdef int fd = e.res
    cdef int err
    cdef bn_conn* c
    cdef char peer[ADDR_MAX_BYTES]
    cdef socklen_t peer_len = ADDR_MAX_BYTES
    if fd >= 0:
        if w.draining:
            close(fd)                   # accepted before the cancel took effect
        else:
            if getpeername(fd, <sockaddr*>peer, &peer_len) < 0:
                peer_len = 0            # the peer is gone already: its reads will say so
            c = http_worker_adopt(w, fd, peer, peer_len)
            if c != NULL:
                c.events = 0
                if uring_conn_watch(w, c, EPOLLIN) < 0:
                    conn_close(w, c)
    else:
        err = -fd
        if err == EAGAIN or err == EINTR:
            bn_count(&w.counters.uring_eagain, 1)
        elif err != ECANCELED:
            bn_count(&w.counters.accept_errors, 1)
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                bn_count(&w.counters.accept_emfile, 1)
                if not (e.flags & BN_UCQE_MORE):
                    w.accept_paused = 1     # ended: resumed by the tick
                    w.accept_resume_ns = w.now_ns + HTTP_ACCEPT_PAUSE_MS * 1000000
                else:
                    http_worker_pause_accept(w)
                return
            if err == EBADF or err == EINVAL or err == ENOTSOCK:
                w.fatal_errno = err
                if e.flags & BN_UCQE_MORE:
                    uring_accept_off(w)
                w.accept_paused = 1
                w.accept_resume_ns = 0x7FFFFFFFFFFFFFFF
                return
    if not (e.flags & BN_UCQE_MORE) and not w.draining and not w.accept_paused:
        bn_count(&w.counters.uring_rearms, 1)
        uring_accept_on(w)


cdef void uring_on_recv(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    cdef uint32_t slot = <uint32_t>(e.ud & 0xFFFFFFFFU)
    cdef bn_conn* c = &w.conns[slot] if slot < w.max_conns else NULL
    cdef int has_buf = (e.flags & BN_UCQE_BUFFER) != 0
    cdef unsigned bid = e.flags >> 16
    cdef int err
    if (c == NULL or c.fd < 0
            or (<uint64_t>c.gen & 0x0FFFFFFF) != ((e.ud >> 32) & 0x0FFFFFFF)):
        # The connection closed earlier: its receive's last words.
        if has_buf:
            bn_uring_buf_return(w.uring, bid)
        return
    if not (e.flags & BN_UCQE_MORE):
        c.events &= ~(UR_RECV_ARMED | UR_RECV_CANCELLING)
    if e.res > 0:
        if not has_buf:                 # cannot happen with buffer select; be safe
            bn_count(&w.counters.io_errors, 1)
            conn_close(w, c)
            return
        conn_on_bytes(w, c, bn_uring_buf(w.uring, bid), <size_t>e.res)
        bn_uring_buf_return(w.uring, bid)   # conn_on_bytes kept what it needs (a copy)
    elif e.res == 0:
        if has_buf:
            bn_uring_buf_return(w.uring, bid)
        if c.ws != NULL:
            # Gone without a close frame, or the FIN our close waited for:
            # closed now, as ws_conn_input does.
            conn_close(w, c)
            return
        # The peer shut its side: as under epoll, flush what is pending, then close.
        c.flags |= CONN_EOF
        conn_finish(w, c)
        return
    else:
        if has_buf:
            bn_uring_buf_return(w.uring, bid)
        err = -e.res
        if err == ENOBUFS:
            bn_count(&w.counters.uring_enobufs, 1)
        elif err == EAGAIN or err == EINTR:
            bn_count(&w.counters.uring_eagain, 1)
        elif err != ECANCELED:
            conn_io_error(w, c, err)    # ECONNRESET counted there
            conn_close(w, c)
            return
    if c.fd < 0 or (<uint64_t>c.gen & 0x0FFFFFFF) != ((e.ud >> 32) & 0x0FFFFFFF):
        return                          # closed while answering
    if not (c.events & UR_RECV_ARMED) and (c.events & EPOLLIN):
        # The multishot receive ended (no F_MORE) and reading is still wanted.
        bn_count(&w.counters.uring_rearms, 1)
        if uring_conn_watch(w, c, c.events & (EPOLLIN | EPOLLOUT)) < 0:
            conn_close(w, c)


cdef void uring_on_pollout(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    cdef uint32_t slot = <uint32_t>(e.ud & 0xFFFFFFFFU)
    cdef bn_conn* c = &w.conns[slot] if slot < w.max_conns else NULL
    if (c == NULL or c.fd < 0
            or (<uint64_t>c.gen & 0x0FFFFFFF) != ((e.ud >> 32) & 0x0FFFFFFF)):
        return
    c.events &= ~UR_OUT_ARMED
    if e.res < 0:
        if e.res == -ECANCELED:
            return
        if e.res == -EAGAIN or e.res == -EINTR:
            bn_count(&w.counters.uring_eagain, 1)
        else:
            conn_io_error(w, c, -e.res)
            conn_close(w, c)
            return
    if c.events & EPOLLOUT:
        c.events &= ~(<uint32_t>EPOLLOUT)   # the handler sets what it wants next
        conn_on_event(w, c, EPOLLOUT)       # HTTP, a TLS handshake or a WebSocket connection


cdef void uring_on_pollin(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    # A TLS connection is readable (or failed): the epoll loop's handler runs
    # with what epoll would report (the interest, plus errors and hang-ups),
    # then the poll is armed again while reading is still wanted (a read that
    # found half a record returns without touching the interest).
    cdef uint32_t slot = <uint32_t>(e.ud & 0xFFFFFFFFU)
    cdef bn_conn* c = &w.conns[slot] if slot < w.max_conns else NULL
    cdef uint32_t gen
    cdef uint32_t events = 0
    if (c == NULL or c.fd < 0
            or (<uint64_t>c.gen & 0x0FFFFFFF) != ((e.ud >> 32) & 0x0FFFFFFF)):
        return
    gen = c.gen
    c.events &= ~UR_IN_ARMED
    if e.res < 0:
        if e.res == -ECANCELED:
            return
        if e.res != -EAGAIN and e.res != -EINTR:
            conn_io_error(w, c, -e.res)
            conn_close(w, c)
            return
        bn_count(&w.counters.uring_eagain, 1)
    else:
        events = <uint32_t>e.res & ((c.events & EPOLLIN) | POLLERR | POLLHUP)
    if events:
        conn_on_event(w, c, events)
    if c.fd < 0 or c.gen != gen:
        return                          # closed while answering
    if (c.events & EPOLLIN) and not (c.events & UR_IN_ARMED):
        if uring_conn_watch(w, c, c.events & (EPOLLIN | EPOLLOUT)) < 0:
            conn_close(w, c)


cdef void uring_on_errwatch(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    cdef uint32_t slot = <uint32_t>(e.ud & 0xFFFFFFFFU)
    cdef bn_conn* c = &w.conns[slot] if slot < w.max_conns else NULL
    if (c == NULL or c.fd < 0
            or (<uint64_t>c.gen & 0x0FFFFFFF) != ((e.ud >> 32) & 0x0FFFFFFF)):
        return
    c.events &= ~UR_ERR_ARMED
    if e.res > 0 and (e.res & (POLLERR | POLLHUP)):
        bn_count(&w.counters.econnreset, 1)     # as the epoll loop's EPOLLERR | EPOLLHUP
        conn_close(w, c)
    elif e.res < 0 and e.res != -ECANCELED:
        conn_io_error(w, c, -e.res)
        conn_close(w, c)
    # A half-close alone (POLLRDHUP) is not re-watched: it would fire again at once.


cdef inline int uring_iov_stable(bn_hworker* w, int i) noexcept nogil:
    # An iovec whose bytes stay put until the next io_uring_enter returns:
    # in an entry (referenced) or static, or the worker's Date tails and
    # CORS lines (rewritten only after it).
    cdef const char* p = <const char*>w.iov[i].iov_base
    if w.iov_kind[i] != SEG_COPY:
        return 1
    return ((p >= <const char*>w.tails and p < <const char*>w.tails + sizeof(w.tails))
            or (p >= <const char*>w.cors_segs and p < <const char*>w.cors_segs + sizeof(w.cors_segs)))


cdef int uring_send_defer(bn_hworker* w, bn_conn* c, int niov) noexcept nogil:
    """Take the worker's `niov` pending iovecs for `c` into the current send
    set (one SENDMSG SQE before the next wait): 1, or 0 = write them now
    (TLS, a set full or still in the kernel, a buffer the step reuses, an
    upgrade that must see its answers out: usend_now)."""
    cdef int s = w.usend_cur
    cdef int i
    cdef uint32_t first = w.usend_niov[s]
    cdef bn_usend* rec
    if (c.ssl != NULL or w.usend_now or w.usend_out[s] != 0 or w.usend_n[s] >= URING_SENDS_MAX
            or first + <uint32_t>niov > URING_SEND_IOV_MAX):
        return 0
    for i in range(niov):
        if not uring_iov_stable(w, i):
            return 0
    for i in range(niov):
        w.usend_iov[s][first + i] = w.iov[i]
        w.usend_kind[s][first + i] = w.iov_kind[i]
        if w.iov_kind[i] == SEG_ENTRY:
            entry_ref(w.iov_entry[i])
            w.usend_entry[s][first + i] = w.iov_entry[i]
        else:
            w.usend_entry[s][first + i] = NULL
    rec = &w.usends[s][w.usend_n[s]]
    rec.slot = <uint32_t>(c - w.conns)
    rec.gen = c.gen
    rec.first = first
    rec.niov = <uint32_t>niov
    w.usend_n[s] += 1
    w.usend_niov[s] += <uint32_t>niov
    c.flags |= CONN_SEND_INFLIGHT
    return 1


cdef void uring_send_release(bn_hworker* w, int s, bn_usend* rec) noexcept nogil:
    cdef uint32_t i
    for i in range(rec.first, rec.first + rec.niov):
        if w.usend_entry[s][i] != NULL:
            entry_unref(w.usend_entry[s][i])
            w.usend_entry[s][i] = NULL
    rec.niov = 0


cdef inline bn_conn* uring_send_conn(bn_hworker* w, bn_usend* rec) noexcept nogil:
    # The connection a record was deferred for, if it is still that one and waits.
    cdef bn_conn* c = &w.conns[rec.slot]
    if c.fd < 0 or c.gen != rec.gen or not (c.flags & CONN_SEND_INFLIGHT):
        return NULL
    return c


cdef void uring_send_prep(bn_hworker* w) noexcept nogil:
    """Right before the wait: one SENDMSG SQE per deferred send of the
    current set (nothing closes a socket between here and the submission)."""
    cdef int s = w.usend_cur
    cdef uint32_t j
    cdef bn_usend* rec
    cdef bn_conn* c
    if w.usend_n[s] == 0:
        return
    for j in range(w.usend_n[s]):
        rec = &w.usends[s][j]
        c = uring_send_conn(w, rec)
        if c == NULL:                   # closed meanwhile: nothing to send
            uring_send_release(w, s, rec)
            continue
        memset(&rec.msg, 0, sizeof(rec.msg))
        rec.msg.msg_iov = &w.usend_iov[s][rec.first]
        rec.msg.msg_iovlen = rec.niov
        if bn_uring_sendmsg(w.uring, c.fd, &rec.msg, ur_ud(UR_SEND, (<uint64_t>s << 16) | j)) < 0:
            bn_count(&w.counters.io_errors, 1)
            uring_send_release(w, s, rec)
            conn_close(w, c)
            continue
        w.usend_out[s] += 1
    if w.usend_out[s] == 0:
        w.usend_n[s] = 0
        w.usend_niov[s] = 0
    w.usend_cur = 1 - s


cdef void conn_outq_rotate(bn_conn* c, uint32_t r) noexcept nogil:
    # Move the last r queued segments in front of the others (three reversals).
    cdef uint32_t lo = c.outq_head
    cdef uint32_t hi = c.outq_tail
    conn_outq_reverse(c, lo, hi)
    conn_outq_reverse(c, lo, lo + r)
    conn_outq_reverse(c, lo + r, hi)


cdef void conn_outq_reverse(bn_conn* c, uint32_t lo, uint32_t hi) noexcept nogil:
    cdef bn_seg tmp
    while hi > lo + 1:
        hi -= 1
        tmp = c.outq[lo]
        c.outq[lo] = c.outq[hi]
        c.outq[hi] = tmp
        lo += 1


cdef void uring_on_send(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    """A deferred send's completion: count what the kernel took, queue the
    rest in front of what waited behind it, then finish the step."""
    cdef int s = <int>((e.ud >> 16) & 1)
    cdef uint32_t j = <uint32_t>(e.ud & 0xFFFF)
    cdef bn_usend* rec
    cdef bn_conn* c
    cdef size_t sent
    cdef uint32_t i
    cdef uint32_t behind
    cdef uint32_t pushed = 0
    if j >= w.usend_n[s] or w.usends[s][j].niov == 0:
        return
    rec = &w.usends[s][j]
    c = uring_send_conn(w, rec)
    if c != NULL:
        c.flags &= ~CONN_SEND_INFLIGHT
        if e.res < 0 and e.res != -EAGAIN and e.res != -EINTR:
            conn_io_error(w, c, -e.res)         # ECONNRESET, EPIPE counted there
        else:
            if e.res < 0:
                bn_count(&w.counters.uring_eagain, 1)
            sent = <size_t>e.res if e.res > 0 else 0
            if sent:
                bn_count(&w.counters.bytes_out, <uint64_t>sent)
                c.sent_bytes += <uint64_t>sent
            behind = c.outq_tail - c.outq_head
            for i in range(rec.first, rec.first + rec.niov):
                if sent >= w.usend_iov[s][i].iov_len:
                    sent -= w.usend_iov[s][i].iov_len
                    continue
                if conn_outq_push(w, c, <const char*>w.usend_iov[s][i].iov_base + sent,
                                  w.usend_iov[s][i].iov_len - sent, w.usend_kind[s][i],
                                  w.usend_entry[s][i]) < 0:
                    break                       # CONN_DEAD: closed by conn_finish below
                sent = 0
                pushed += 1
            if pushed:
                bn_count(&w.counters.partial_writes, 1)
                if behind and not (c.flags & CONN_DEAD):
                    conn_outq_rotate(c, pushed)
    uring_send_release(w, s, rec)
    w.usend_out[s] -= 1
    if w.usend_out[s] == 0:
        w.usend_n[s] = 0
        w.usend_niov[s] = 0
    if c != NULL:
        conn_finish(w, c)


cdef void uring_sends_drop(bn_hworker* w) noexcept nogil:
    # At exit: the references of every send never completed.
    cdef int s
    cdef uint32_t j
    for s in range(2):
        for j in range(w.usend_n[s]):
            if w.usends[s][j].niov:
                uring_send_release(w, s, &w.usends[s][j])
        w.usend_n[s] = 0
        w.usend_niov[s] = 0
        w.usend_out[s] = 0


cdef void uring_on_event(bn_hworker* w, bn_ucqe* e) noexcept nogil:
    cdef uint64_t kind = e.ud >> 60
    cdef int rc
    if kind == UR_RECV:
        uring_on_recv(w, e)
    elif kind == UR_POLLOUT:
        uring_on_pollout(w, e)
    elif kind == UR_ERRWATCH:
        uring_on_errwatch(w, e)
    elif kind == UR_SEND:
        uring_on_send(w, e)
    elif kind == UR_ACCEPT:
        uring_on_accept(w, e)
    elif kind == UR_POLLIN:
        uring_on_pollin(w, e)
    elif kind == UR_REPLY or kind == UR_WS:
        # An eventfd: the control plane's replies, or publications to fan out.
        if e.res < 0 and e.res != -ECANCELED:
            bn_count(&w.counters.io_errors, 1)
        if e.res >= 0:
            if kind == UR_REPLY:
                http_worker_on_replies(w)
            else:
                ws_worker_on_publish(w)
        if not (e.flags & BN_UCQE_MORE) and e.res != -ECANCELED and not w.draining:
            bn_count(&w.counters.uring_rearms, 1)
            if bn_uring_poll(w.uring, w.reply_fd if kind == UR_REPLY else w.ws.ring.efd,
                             POLLIN, 1, ur_ud(kind, 0)) < 0:
                bn_count(&w.counters.io_errors, 1)
    elif kind == UR_STOP:
        if e.res < 0:
            bn_count(&w.counters.io_errors, 1)    # the stop flag is read every wake-up
        if not w.draining:
            http_worker_begin_drain(w)
    elif kind == UR_LINGER:
        rc = <int>(e.ud & 0xFFFFFFFFU)
        if rc < HTTP_LINGER_SLOTS and w.linger_fd[rc] >= 0:
            http_worker_on_linger(w, <uint32_t>rc)
            if w.linger_fd[rc] >= 0 and uring_linger_watch(w, w.linger_fd[rc], rc) < 0:
                close(w.linger_fd[rc])
                w.linger_fd[rc] = -1
    # UR_CANCEL: -ENOENT / -EALREADY are normal (the request had ended).


cdef void* http_uring_main(void* arg) noexcept nogil:
    cdef bn_hworker* w = <bn_hworker*>arg
    cdef unsigned n
    cdef unsigned i
    cdef int rc
    cdef int64_t timeout_ns
    cdef uint32_t j
    cdef int unsent = 0
    if w.cpu >= 0:
        w.pin_error = bn_pin_self_to_cpu(w.cpu)
    rc = bn_uring_enable(w.uring)       # this thread becomes the ring's single issuer
    if rc < 0:
        w.fatal_errno = -rc
        return NULL
    w.now_ns = http_now_ns()
    if (bn_uring_poll(w.uring, w.stop_fd, POLLIN, 0, ur_ud(UR_STOP, 0)) < 0
            or bn_uring_poll(w.uring, w.reply_fd, POLLIN, 1, ur_ud(UR_REPLY, 0)) < 0
            or (w.ws != NULL
                and bn_uring_poll(w.uring, w.ws.ring.efd, POLLIN, 1, ur_ud(UR_WS, 0)) < 0)):
        w.fatal_errno = EBUSY
        return NULL
    uring_accept_on(w)
    http_worker_tick(w)
    qsbr_online(w.qsbr)
    while True:
        if w.draining and (w.active == 0 or w.now_ns >= w.drain_deadline_ns):
            break
        timeout_ns = w.next_tick_ns - w.now_ns
        if timeout_ns < 0:
            timeout_ns = 0
        uring_send_prep(w)              # this wake-up's answers go in with the wait
        # Offline while asleep: an idle worker never holds reclamation back.
        qsbr_offline(w.qsbr)
        # One io_uring_enter: what this wake-up queued goes in, completions come out.
        rc = bn_uring_wait(w.uring, timeout_ns + 1000000)
        qsbr_online(w.qsbr)
        bn_count(&w.counters.uring_waits, 1)
        w.now_ns = http_now_ns()
        w.control_stalled = control_stalled(w.control, <uint64_t>w.now_ns)
        if w.keys_ref != NULL or governor_on(w.gov):
            w.admit_ns = monotonic_ns()     # as the epoll loop: the fine clock for GCRA
        if rc < 0 and rc != -ETIME:
            if rc == -EINTR or rc == -EAGAIN or rc == -EBUSY:
                # EBUSY/EAGAIN: the CQ is full or the kernel is short; reap first.
                bn_count(&w.counters.eintr if rc == -EINTR else &w.counters.uring_eagain, 1)
            else:
                w.fatal_errno = -rc
                break
        if bn_uring_sq_ready(w.uring) and bn_uring_submit(w.uring) < 0 \
                and bn_uring_sq_ready(w.uring):
            # Unsubmitted sends name sockets by number: none may close (and
            # its number be reused) before they go in.  Give up instead.
            w.fatal_errno = EBUSY
            unsent = 1
            break
        while True:
            n = bn_uring_reap(w.uring, w.cqes, URING_CQES_MAX)
            for i in range(n):
                uring_on_event(w, &w.cqes[i])
            if n < URING_CQES_MAX:
                break
        bn_store_u64(&w.counters.uring_sq_full, bn_uring_sq_full(w.uring))
        http_worker_end_step(w)
    http_worker_close_all(w)
    uring_sends_drop(w)
    w.draining = 1
    http_worker_linger_tick(w)
    if not unsent:
        bn_uring_submit(w.uring)        # the cancels: the sockets are released now
    qsbr_offline(w.qsbr)
    return NULL
