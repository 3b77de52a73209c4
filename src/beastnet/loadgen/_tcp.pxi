# The TCP client connection of the HTTP and WebSocket loops: one struct (its
# socket, its TLS session, its output queue) and one lifecycle over it --
# open (socket, TCP_NODELAY, a non-blocking connect), the TLS handshake,
# send / recv, flush, the epoll registration, close.  TLS is plugged in here
# once: with a session, send and recv go through OpenSSL (_tls.pxi), as wrk's
# struct sock swaps in its ssl_* functions (src/net.h); the loops never test
# for TLS to move bytes.
#
# What a loop counts and does after each step (states, back-off, which error
# ends a connection how) stays with the loop: these helpers return a status
# and count only the transport's own events (bytes out, EINTR), through
# pointers to the loop's counters.  Every function runs without the GIL.

cdef enum:
    TCP_OPEN_DONE = 0               # connected at once (loopback often is)
    TCP_OPEN_PENDING = 1            # connect in progress: EPOLLOUT tells the result
    # a negative value is -errno of socket() or connect()


cdef struct lg_tcp:
    int fd                          # -1 when idle
    uint32_t registered             # epoll events registered, 0 = not in the epoll
    SSL* ssl                        # the TLS session, NULL = plain TCP or not yet
    uint32_t tls_want               # epoll event OpenSSL waits for (handshake; a read that must write)
    uint32_t out_len                # bytes queued in `out`
    uint32_t out_off                # ... of which written
    uint64_t connect_start_ns       # connect() called
    uint64_t tls_start_ns           # TCP established: the handshake began
    char* out                       # the output queue (the loop sizes and frees it)


cdef int tcp_open(lg_tcp* s, int family, const char* addr, socklen_t addr_len,
                  uint64_t now) noexcept nogil:
    """A non-blocking connect to `addr`: TCP_OPEN_DONE, TCP_OPEN_PENDING,
    or -errno (no socket is left open then)."""
    cdef int one = 1
    cdef int err
    cdef int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        return -errno                   # EMFILE, ENFILE, ENOBUFS...
    s.fd = fd
    s.connect_start_ns = now
    # Requests and frames are small and written whole: never wait for Nagle.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    if connect(fd, <sockaddr*>addr, addr_len) == 0:
        return TCP_OPEN_DONE
    err = errno
    if err == EINPROGRESS or err == EINTR:
        return TCP_OPEN_PENDING
    close(fd)                           # ECONNREFUSED, EADDRNOTAVAIL...
    s.fd = -1
    return -err


cdef int tcp_connect_result(lg_tcp* s) noexcept nogil:
    """After EPOLLOUT on a pending connect: 0 if it succeeded, else its errno."""
    cdef int err = 0
    cdef socklen_t optlen = sizeof(err)
    if getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &optlen) != 0:
        return errno
    return err


cdef int tcp_tls_start(lg_tcp* s, bn_tls_client* tls, uint64_t now) noexcept nogil:
    """Attach a TLS session to the connected socket; -1 if OpenSSL could not."""
    s.ssl = tls_new(tls, s.fd)
    if s.ssl == NULL:
        return -1
    s.tls_start_ns = now
    return 0


cdef inline int tcp_handshake(lg_tcp* s, bn_tls_client* tls) noexcept nogil:
    """Advance the handshake: 1 done, 0 in progress (wait for `tls_want`),
    -TLSF_* failed (see tls_handshake)."""
    return tls_handshake(tls, s.ssl, &s.tls_want)


cdef inline ssize_t tcp_send(lg_tcp* s, const char* p, size_t n) noexcept nogil:
    """send(), or SSL_write with a session (same contract: -1 and errno)."""
    if s.ssl != NULL:
        return tls_send(s.ssl, p, n)
    return send(s.fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT)


cdef inline ssize_t tcp_recv(lg_tcp* s, char* p, size_t n) noexcept nogil:
    """recv(), or SSL_read with a session (same contract: 0 closed, -1 and errno)."""
    if s.ssl != NULL:
        return tls_recv(s.ssl, p, n, &s.tls_want)
    return recv(s.fd, p, n, MSG_DONTWAIT)


cdef inline int tcp_drained(lg_tcp* s) noexcept nogil:
    """True when no decrypted byte waits inside OpenSSL: bytes it read ahead
    are invisible to epoll, so a loop reads until this holds."""
    return s.ssl == NULL or not SSL_has_pending(s.ssl)


cdef int tcp_flush(lg_tcp* s, uint64_t* bytes_out, uint64_t* eintr) noexcept nogil:
    """Write what is queued (with TLS, the whole queue in one SSL_write): 0 when
    all is written or the socket is full (EPOLLOUT resumes), else the errno
    that broke the connection (EPIPE, ECONNRESET, EPROTO for TLS, ...)."""
    cdef ssize_t n
    cdef int err
    while s.out_off < s.out_len:
        n = tcp_send(s, s.out + s.out_off, s.out_len - s.out_off)
        if n > 0:
            s.out_off += <uint32_t>n
            bn_count(bytes_out, <uint64_t>n)
            continue
        err = errno
        if n < 0 and err == EINTR:
            bn_count(eintr, 1)
            continue
        if n < 0 and err == EAGAIN:
            return 0
        return err if err != 0 else EIO
    s.out_off = 0
    s.out_len = 0
    return 0


cdef void tcp_want(lg_tcp* s, int epfd, uint32_t want, uint32_t slot) noexcept nogil:
    """Register the events `want` for the connection numbered `slot` (the
    epoll event's data), if they changed.  A failed epoll_ctl leaves the old
    registration: the loop's timeouts end a connection that never wakes."""
    cdef epoll_event ev
    if want == s.registered or s.fd < 0:
        return
    memset(&ev, 0, sizeof(ev))
    ev.events = want
    ev.data.u32 = slot
    if epoll_ctl(epfd, EPOLL_CTL_MOD if s.registered else EPOLL_CTL_ADD, s.fd, &ev) == 0:
        s.registered = want


cdef void tcp_close(lg_tcp* s, int clean) noexcept nogil:
    """Free the TLS session (with a close_notify when `clean`), close the
    socket (which also leaves the epoll: the fd is not shared) and drop what
    was queued."""
    if s.ssl != NULL:
        tls_free(s.ssl, clean)
        s.ssl = NULL
    s.tls_want = 0
    if s.fd >= 0:
        close(s.fd)
        s.fd = -1
    s.registered = 0
    s.out_len = 0
    s.out_off = 0
