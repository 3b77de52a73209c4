# TLS in the HTTP workers: OpenSSL over the connection's own socket.
#
# A TLS connection starts in CONN_TLS_HANDSHAKE: SSL_do_handshake, driven by
# epoll like the rest (WANT_READ -> EPOLLIN, WANT_WRITE -> EPOLLOUT) and
# bounded by the handshake timeout.  Plain HTTP sent to the TLS port is
# recognised by OpenSSL (SSL_R_HTTP_REQUEST) and answered 400 at once, as
# nginx does.  After it, conn_recv and conn_sendmsg are the only two
# I/O calls the HTTP and WebSocket paths make, and they go through SSL here.
#
# The write path.  A flush hands conn_sendmsg the same iovecs a plain
# connection would writev: [entry head, Date tail, entry body]...  One
# SSL_write per iovec would make one record (and one header, one MAC, one
# syscall) per piece.  Instead the pieces are copied into the worker's
# 16 KiB staging buffer and written with one SSL_write per full record: the
# plaintext is copied once (OpenSSL then encrypts from it into its own
# buffer, a copy it makes anyway); a run of 16 KiB or more inside one piece
# (a big body) is written straight from the entry, not staged.
# When SSL_write cannot finish (WANT_WRITE), OpenSSL keeps the part of the
# record it encrypted and the retry must offer the same bytes again.  Those
# bytes are then copied into the connection's `tls_pend` block
# (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets the retry come from another
# address) and count as taken: the entry references and queued segments they
# came from are released as on a plain write, and nothing later (a newer
# WebSocket frame conflating an older one) can change bytes OpenSSL has
# already committed to.  A connection with `tls_pend` has output pending.
#
# The read path.  OpenSSL reads ahead (one read() for a record's header and
# body, and whatever follows), so it may hold whole records the socket will
# never signal again (epoll is level-triggered on the socket, not on
# OpenSSL's buffers).  A session left holding some goes on the worker's
# tls_ready list and is read after the batch, or when its reading resumes
# (conn_set_events).  Every read offers at least a record's room (16 KiB).
#
# kTLS.  SSL_OP_ENABLE_KTLS (set when the kernel lists the "tls" ULP) asks
# OpenSSL to hand the record layer to the kernel; whether it did is read after the
# handshake (BIO_get_ktls_send) and counted.  With kTLS, SSL_write is a
# plain write the kernel encrypts; the writev-of-entry-buffers path for kTLS
# is not built (it cannot be tested on a kernel without the ULP).
#
# Contexts.  The engine holds one SSL_CTX (and a reference on it); a worker
# loads the pointer at accept and SSL_new() takes its own reference.  A
# reload swaps the pointer and retires the old context through QSBR: a
# worker between the load and SSL_new() is inside a batch, so the context
# lives until every worker has passed a quiescent point; connections made
# from it keep it alive after that through their SSL's reference.

cdef const unsigned char* TLS_ALPN_HTTP11 = b"\x08http/1.1"

# Plain HTTP on the TLS port (nginx answers the same way).
cdef const char* TLS_PLAIN_HTTP_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 46\r\n"
    b"Connection: close\r\n\r\nThe plain HTTP request was sent to HTTPS port\n")


cdef int tls_on_alpn(openssl.SSL* s, const unsigned char** out, unsigned char* outlen,
                     const unsigned char* inp, unsigned int inlen, void* arg) noexcept nogil:
    # http/1.1 is all we speak.  A client that offers only others (h2) gets
    # no ALPN answer rather than a fatal alert: it may still speak HTTP/1.1.
    if openssl.SSL_select_next_proto(<unsigned char**>out, outlen, TLS_ALPN_HTTP11, 9,
                                 inp, inlen) != openssl.OPENSSL_NPN_NEGOTIATED:
        return openssl.SSL_TLSEXT_ERR_NOACK
    return openssl.SSL_TLSEXT_ERR_OK


cdef void tls_on_info(const openssl.SSL* s, int where, int ret) noexcept nogil:
    # Renegotiation is refused by SSL_OP_NO_RENEGOTIATION, which answers a
    # TLS 1.2 ClientHello after the handshake with a no_renegotiation
    # warning alert; seeing that alert go out marks the connection, and the
    # worker counts it when SSL_read returns (this runs inside it).
    cdef bn_conn* c
    if (where & openssl.SSL_CB_WRITE_ALERT) and (ret & 0xFF) == openssl.SSL_AD_NO_RENEGOTIATION:
        c = <bn_conn*>openssl.SSL_get_app_data(s)
        if c != NULL:
            c.flags |= CONN_TLS_RENEG
    elif ((where & openssl.SSL_CB_HANDSHAKE_START) and openssl.SSL_is_init_finished(s)
            and openssl.SSL_version(s) < openssl.TLS1_3_VERSION):
        c = <bn_conn*>openssl.SSL_get_app_data(s)
        if c != NULL:
            c.flags |= CONN_TLS_RENEG


cdef str tls_error_text():
    """OpenSSL's queued errors as one line (and the queue emptied)."""
    cdef char buf[256]
    cdef unsigned long e
    cdef list parts = []
    while True:
        e = openssl.ERR_get_error()
        if e == 0:
            break
        openssl.ERR_error_string_n(e, buf, sizeof(buf))
        parts.append(buf.decode("ascii", "replace"))
    return "; ".join(parts) or "unknown error"


cdef Py_ssize_t TLS_PEM_MAX_BYTES = 1 << 20    # a certificate chain or key file past this is refused


cdef bytes tls_read_pem(str what, str path):
    """The bytes of a PEM file, read once.  Opened non-blocking and refused
    unless a regular file: a FIFO (or a device) at a key path would block
    the thread that reloads certificates, the control plane's, forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise TLSConfigError(f"TLS {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _stat.S_ISREG(info.st_mode):
            raise TLSConfigError(f"TLS {what} {path}: not a regular file")
        if info.st_size > TLS_PEM_MAX_BYTES:
            raise TLSConfigError(f"TLS {what} {path}: over {TLS_PEM_MAX_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(TLS_PEM_MAX_BYTES + 1)
    except OSError as exc:
        raise TLSConfigError(f"TLS {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


cdef int tls_use_chain(openssl.SSL_CTX* ctx, bytes pem):
    """The leaf (first PEM certificate) then its chain, from memory, as
    SSL_CTX_use_certificate_chain_file reads them from a file.  1 = done."""
    cdef openssl.BIO* bio = openssl.BIO_new_mem_buf(<const char*>pem, <int>len(pem))
    cdef openssl.X509* cert
    cdef int ok = 0
    if bio == NULL:
        return 0
    cert = openssl.PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL)
    if cert != NULL:
        ok = openssl.SSL_CTX_use_certificate(ctx, cert)
        openssl.X509_free(cert)
    while ok == 1:
        cert = openssl.PEM_read_bio_X509(bio, NULL, NULL, NULL)
        if cert == NULL:
            openssl.ERR_clear_error()   # the end of the file: no more PEM blocks
            break
        if openssl.SSL_CTX_add0_chain_cert(ctx, cert) != 1:
            openssl.X509_free(cert)
            ok = 0
    openssl.BIO_free(bio)
    return ok


cdef int tls_use_key(openssl.SSL_CTX* ctx, bytes pem):
    cdef openssl.BIO* bio = openssl.BIO_new_mem_buf(<const char*>pem, <int>len(pem))
    cdef openssl.EVP_PKEY* key
    cdef int ok = 0
    if bio == NULL:
        return 0
    key = openssl.PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
    if key != NULL:
        ok = openssl.SSL_CTX_use_PrivateKey(ctx, key)
        openssl.EVP_PKEY_free(key)
    openssl.BIO_free(bio)
    return ok


cdef class TLSContext:
    """An OpenSSL server context built from PEM files (low-level: HTTPServer
    builds it from a `TLSConfig`).  Raises TLSConfigError with OpenSSL's own
    reason when a file cannot be used."""

    cdef openssl.SSL_CTX* ctx
    cdef readonly str cert_file
    cdef readonly str key_file
    cdef readonly bint ktls_requested   # SSL_OP_ENABLE_KTLS set (the kernel offers the tls ULP)

    def __cinit__(self, str cert_file not None, str key_file not None, *, str ciphers=None,
                  str ciphersuites=None, str min_version="TLSv1.2", bint session_tickets=True):
        cdef bytes raw
        cdef int version
        self.cert_file = cert_file
        self.key_file = key_file
        if min_version == "TLSv1.2":
            version = openssl.TLS1_2_VERSION
        elif min_version == "TLSv1.3":
            version = openssl.TLS1_3_VERSION
        else:
            raise TLSConfigError(f"min_version must be 'TLSv1.2' or 'TLSv1.3', not {min_version!r}")
        cdef bytes cert_pem = tls_read_pem("certificate", cert_file)
        cdef bytes key_pem = tls_read_pem("key", key_file)
        openssl.ERR_clear_error()
        self.ctx = openssl.SSL_CTX_new(openssl.TLS_server_method())
        if self.ctx == NULL:
            raise TLSConfigError(f"SSL_CTX_new: {tls_error_text()}")
        if openssl.SSL_CTX_set_min_proto_version(self.ctx, version) != 1:
            raise TLSConfigError(f"SSL_CTX_set_min_proto_version: {tls_error_text()}")
        if tls_use_chain(self.ctx, cert_pem) != 1:
            raise TLSConfigError(f"TLS certificate {cert_file}: {tls_error_text()}")
        if tls_use_key(self.ctx, key_pem) != 1:
            raise TLSConfigError(f"TLS key {key_file}: {tls_error_text()}")
        if openssl.SSL_CTX_check_private_key(self.ctx) != 1:
            raise TLSConfigError(f"TLS key {key_file} does not match certificate {cert_file}:"
                                 f" {tls_error_text()}")
        if ciphers is not None and openssl.SSL_CTX_set_cipher_list(self.ctx, ciphers.encode("ascii")) != 1:
            raise TLSConfigError(f"TLS ciphers {ciphers!r}: {tls_error_text()}")
        if (ciphersuites is not None
                and openssl.SSL_CTX_set_ciphersuites(self.ctx, ciphersuites.encode("ascii")) != 1):
            raise TLSConfigError(f"TLS 1.3 ciphersuites {ciphersuites!r}: {tls_error_text()}")
        openssl.SSL_CTX_set_options(self.ctx, openssl.SSL_OP_NO_RENEGOTIATION | openssl.SSL_OP_NO_COMPRESSION
                                | openssl.SSL_OP_CIPHER_SERVER_PREFERENCE
                                | openssl.SSL_OP_IGNORE_UNEXPECTED_EOF)
        # kTLS only where the kernel has the ULP: elsewhere OpenSSL would try
        # (and fail) four setsockopt calls on every connection.
        self.ktls_requested = ktls_available()
        if self.ktls_requested:
            openssl.SSL_CTX_set_options(self.ctx, openssl.SSL_OP_ENABLE_KTLS)
        # Partial writes: a multi-record write returns what went out; moving
        # buffer: a retry may come from tls_pend; release buffers: an idle
        # connection does not keep OpenSSL's 16 KiB read and write buffers.
        openssl.SSL_CTX_set_mode(self.ctx, openssl.SSL_MODE_ENABLE_PARTIAL_WRITE
                             | openssl.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                             | openssl.SSL_MODE_RELEASE_BUFFERS)
        if session_tickets:
            # Stateless tickets resume without a shared cache (no lock
            # between workers, no memory per session).
            openssl.SSL_CTX_set_session_cache_mode(self.ctx, openssl.SSL_SESS_CACHE_OFF)
        else:
            openssl.SSL_CTX_set_options(self.ctx, openssl.SSL_OP_NO_TICKET)
            openssl.SSL_CTX_set_num_tickets(self.ctx, 0)
            openssl.SSL_CTX_set_session_cache_mode(self.ctx, openssl.SSL_SESS_CACHE_OFF)
        # Read ahead: one read() takes a record's header and body (and what
        # follows) instead of two per record; see tls_note_pending.
        openssl.SSL_CTX_set_read_ahead(self.ctx, 1)
        openssl.SSL_CTX_set_alpn_select_cb(self.ctx, tls_on_alpn, NULL)
        openssl.SSL_CTX_set_info_callback(self.ctx, tls_on_info)

    def __dealloc__(self):
        if self.ctx != NULL:
            openssl.SSL_CTX_free(self.ctx)
            self.ctx = NULL


cdef void tls_ctx_release(void* ctx) noexcept nogil:
    openssl.SSL_CTX_free(<openssl.SSL_CTX*>ctx)


def ktls_available():
    """True when the kernel offers the "tls" upper-layer protocol (kTLS)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
            return "tls" in f.read().split()
    except OSError:
        return False


# -- per connection (worker thread, no GIL) --------------------------------------------------

cdef int tls_conn_new(bn_hworker* w, bn_conn* c) noexcept nogil:
    """An SSL for a just-accepted connection, from the engine's current
    context: 0, or -1 (out of memory, counted)."""
    cdef openssl.SSL* s = openssl.SSL_new(<openssl.SSL_CTX*>bn_load_ptr(w.tls_ctx_ref))
    if s == NULL:
        openssl.ERR_clear_error()
        bn_count(&w.counters.oom_closes, 1)
        return -1
    if openssl.SSL_set_fd(s, c.fd) != 1:
        openssl.ERR_clear_error()
        openssl.SSL_free(s)
        bn_count(&w.counters.oom_closes, 1)
        return -1
    openssl.SSL_set_accept_state(s)
    openssl.SSL_set_app_data(s, c)
    c.ssl = s
    w.tls_active += 1
    bn_store_u64(&w.counters.tls_active, w.tls_active)
    c.flags |= CONN_TLS_HANDSHAKE
    return 0


cdef void tls_conn_free(bn_hworker* w, bn_conn* c) noexcept nogil:
    # A finished, healthy session says close_notify first (one small record,
    # best effort: a full socket simply drops it).  OpenSSL writes with
    # write(), not send(MSG_NOSIGNAL): the SIGPIPE a reset peer raises stays
    # pending on the worker, which blocks every signal (threads.h).
    if c.ssl == NULL:
        return
    if not (c.flags & (CONN_DEAD | CONN_TLS_HANDSHAKE)):
        openssl.SSL_shutdown(c.ssl)
    openssl.ERR_clear_error()
    openssl.SSL_free(c.ssl)
    c.ssl = NULL
    w.tls_active -= 1
    bn_store_u64(&w.counters.tls_active, w.tls_active)
    if c.tls_pend != NULL:
        tls_pend_free(w, c)


cdef inline void tls_pend_free(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Give back the copy of a blocked SSL_write (tls_pend; not NULL) and
    its bytes to the worker's memory budget."""
    free(c.tls_pend)
    conn_owned_sub(w, c, c.tls_pend_cap)
    c.tls_pend = NULL
    c.tls_pend_off = 0
    c.tls_pend_len = 0
    c.tls_pend_cap = 0


cdef void tls_fail(bn_hworker* w, bn_conn* c, int err) noexcept nogil:
    """An SSL call failed for good: count it, flag the connection dead."""
    cdef int saved = errno
    if err == openssl.SSL_ERROR_SYSCALL and saved != 0:
        conn_io_error(w, c, saved)
    else:
        bn_count(&w.counters.tls_errors, 1)
        c.flags |= CONN_DEAD
    openssl.ERR_clear_error()


cdef int tls_write_pending(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Finish the SSL_write that blocked earlier: 0 = done (or nothing was
    pending), 1 = the socket is still full, -1 = failed."""
    cdef size_t done
    cdef int rc
    cdef int err
    while c.tls_pend != NULL:
        rc = openssl.SSL_write_ex(c.ssl, c.tls_pend + c.tls_pend_off, c.tls_pend_len - c.tls_pend_off,
                              &done)
        if rc == 1:
            c.tls_pend_off += <uint32_t>done
            if c.tls_pend_off >= c.tls_pend_len:
                tls_pend_free(w, c)
            continue
        err = openssl.SSL_get_error(c.ssl, rc)
        if err == openssl.SSL_ERROR_WANT_WRITE or err == openssl.SSL_ERROR_WANT_READ:
            return 1
        tls_fail(w, c, err)
        return -1
    return 0


cdef int tls_write(bn_hworker* w, bn_conn* c, const char* data, size_t n) noexcept nogil:
    """SSL_write data[0:n] (at most one record's worth).  0 = all taken;
    1 = the socket filled: the rest was copied to tls_pend (and counts as
    taken); -1 = failed."""
    cdef size_t done
    cdef int rc
    cdef int err
    while n > 0:
        rc = openssl.SSL_write_ex(c.ssl, data, n, &done)
        if rc == 1:
            bn_count(&w.counters.tls_writes, 1)
            data += done
            n -= done
            continue
        err = openssl.SSL_get_error(c.ssl, rc)
        if err != openssl.SSL_ERROR_WANT_WRITE and err != openssl.SSL_ERROR_WANT_READ:
            tls_fail(w, c, err)
            return -1
        if conn_owned_claim(w, n) < 0:
            c.flags |= CONN_DEAD
            return -1
        c.tls_pend = <char*>malloc(n)
        if c.tls_pend == NULL:
            bn_add_u64(w.owned_total, <uint64_t>0 - <uint64_t>n)
            bn_count(&w.counters.oom_closes, 1)
            c.flags |= CONN_DEAD
            return -1
        memcpy(c.tls_pend, data, n)
        c.tls_pend_off = 0
        c.tls_pend_len = <uint32_t>n
        c.tls_pend_cap = <uint32_t>n
        conn_owned_add(w, c, n)
        bn_count(&w.counters.tls_write_blocked, 1)
        if c.out_bytes == 0:
            c.win_start_ns = w.now_ns
            c.win_acked_bytes = conn_acked_bytes(c)
        return 1
    return 0


cdef ssize_t tls_sendv(bn_hworker* w, bn_conn* c, iovec* iov, int niov) noexcept nogil:
    """conn_sendmsg for a TLS connection: the bytes of iov[0:niov] taken
    (written, or committed to tls_pend), 0 when the socket is full, -1 =
    failed (flagged CONN_DEAD).  Pieces are coalesced into full records."""
    cdef size_t taken = 0
    cdef size_t fill
    cdef size_t k
    cdef size_t off = 0
    cdef int i = 0
    cdef int rc
    cdef const char* src
    rc = tls_write_pending(w, c)
    if rc != 0:
        return -1 if rc < 0 else 0
    while True:
        while i < niov and off == iov[i].iov_len:
            i += 1
            off = 0
        if i == niov:
            return <ssize_t>taken
        if iov[i].iov_len - off >= TLS_RECORD_BYTES:
            # A whole record inside one piece: straight from it, no staging.
            src = <const char*>iov[i].iov_base + off
            fill = TLS_RECORD_BYTES
            off += fill
        else:
            src = w.tls_stage
            fill = 0
            while i < niov and fill < TLS_RECORD_BYTES:
                k = iov[i].iov_len - off
                if k > TLS_RECORD_BYTES - fill:
                    k = TLS_RECORD_BYTES - fill
                memcpy(w.tls_stage + fill, <const char*>iov[i].iov_base + off, k)
                fill += k
                off += k
                if off == iov[i].iov_len:
                    i += 1
                    off = 0
        rc = tls_write(w, c, src, fill)
        if rc < 0:
            return -1
        taken += fill
        if rc > 0:
            return <ssize_t>taken


cdef ssize_t tls_recv(bn_hworker* w, bn_conn* c, char* buf, size_t room) noexcept nogil:
    """conn_recv for a TLS connection: bytes read, 0 at the peer's close,
    -2 when nothing is readable yet, -1 = failed (flagged CONN_DEAD)."""
    cdef size_t got = 0
    cdef int rc = openssl.SSL_read_ex(c.ssl, buf, room, &got)
    cdef int err
    if c.flags & CONN_TLS_RENEG:
        c.flags &= ~CONN_TLS_RENEG
        bn_count(&w.counters.tls_renegotiations, 1)
    if rc == 1:
        tls_note_pending(w, c)
        return <ssize_t>got
    err = openssl.SSL_get_error(c.ssl, rc)
    if err == openssl.SSL_ERROR_WANT_READ:
        return -2
    if err == openssl.SSL_ERROR_WANT_WRITE:
        c.flags |= CONN_TLS_READ_WANTS_WRITE
        return -2
    if err == openssl.SSL_ERROR_ZERO_RETURN:
        return 0                        # close_notify, or EOF (SSL_OP_IGNORE_UNEXPECTED_EOF)
    tls_fail(w, c, err)
    return -1


cdef int tls_handshake_done(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Count a finished handshake and what it gave; 0, or -1 (epoll failed)."""
    c.flags &= ~CONN_TLS_HANDSHAKE
    bn_count(&w.counters.tls_handshakes, 1)
    if openssl.SSL_session_reused(c.ssl):
        bn_count(&w.counters.tls_resumed, 1)
    if openssl.SSL_version(c.ssl) >= openssl.TLS1_3_VERSION:
        bn_count(&w.counters.tls_v13, 1)
    if openssl.BIO_get_ktls_send(openssl.SSL_get_wbio(c.ssl)):
        bn_count(&w.counters.tls_ktls_send_on, 1)
    else:
        bn_count(&w.counters.tls_ktls_send_off, 1)
    # The request head's clock starts now: the header timeout is the
    # client's time to send a request, not the handshake's.
    c.head_start_ns = w.now_ns
    c.last_active_ns = w.now_ns
    return conn_watch(w, c, EPOLLIN)


cdef void tls_answer_plain_http(bn_hworker* w, bn_conn* c) noexcept nogil:
    # OpenSSL saw "GET ", "POST", "HEAD", "PUT " or "CONNE" where a TLS record
    # belongs (and sent no alert).  Answer as nginx does, read what the client
    # sent (a close with unread input would reset the answer away), close.
    bn_count(&w.counters.tls_plain_http, 1)
    send(c.fd, TLS_PLAIN_HTTP_REPLY, strlen(TLS_PLAIN_HTTP_REPLY), MSG_NOSIGNAL | MSG_DONTWAIT)
    shutdown(c.fd, SHUT_WR)
    while recv(c.fd, w.scratch, HTTP_SCRATCH_BYTES, MSG_DONTWAIT) > 0:
        pass


cdef void tls_on_handshake_event(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Drive the handshake one step on an epoll event."""
    cdef int rc
    cdef int err
    cdef uint32_t want
    cdef unsigned long e
    cdef int reason
    rc = openssl.SSL_do_handshake(c.ssl)
    if rc == 1:
        if tls_handshake_done(w, c) < 0:
            conn_close(w, c)
            return
        # The client's first request usually travels with its Finished: read
        # it now rather than after another epoll_wait.
        conn_on_readable(w, c)
        return
    err = openssl.SSL_get_error(c.ssl, rc)
    if err == openssl.SSL_ERROR_WANT_READ or err == openssl.SSL_ERROR_WANT_WRITE:
        want = EPOLLIN if err == openssl.SSL_ERROR_WANT_READ else EPOLLOUT
        if conn_watch(w, c, want) < 0:
            conn_close(w, c)
        return
    # A client that goes away mid-handshake is not a protocol error.
    e = openssl.ERR_peek_error()
    reason = openssl.ERR_GET_REASON(e) if e != 0 else 0
    if reason == openssl.SSL_R_HTTP_REQUEST or reason == openssl.SSL_R_HTTPS_PROXY_REQUEST:
        tls_answer_plain_http(w, c)
    elif (err == openssl.SSL_ERROR_SYSCALL or err == openssl.SSL_ERROR_ZERO_RETURN
            or reason == openssl.SSL_R_UNEXPECTED_EOF_WHILE_READING):
        bn_count(&w.counters.tls_handshake_aborted, 1)
    else:
        bn_count(&w.counters.tls_handshake_errors, 1)
    openssl.ERR_clear_error()
    c.flags |= CONN_DEAD
    conn_close(w, c)


cdef inline void tls_note_pending(bn_hworker* w, bn_conn* c) noexcept nogil:
    # Records OpenSSL read ahead and has not handed over yet: the socket will
    # not signal them, so the worker reads them after this batch.  A slot is
    # listed at most once: CONN_TLS_QUEUED survives a close until the drain.
    if (c.ssl != NULL and not (c.flags & CONN_TLS_QUEUED)
            and openssl.SSL_has_pending(c.ssl) and w.tls_nready < w.max_conns):
        c.flags |= CONN_TLS_QUEUED
        w.tls_ready[w.tls_nready] = <uint32_t>(c - w.conns)
        w.tls_nready += 1


cdef void tls_drain_ready(bn_hworker* w) noexcept nogil:
    """After a batch: read what OpenSSL holds for the listed sessions, as
    if their sockets had been readable.  Each pass takes at least one record,
    so sessions listed again while draining end with their buffers."""
    cdef uint32_t i = 0
    cdef bn_conn* c
    while i < w.tls_nready:
        c = &w.conns[w.tls_ready[i]]
        i += 1
        if not (c.flags & CONN_TLS_QUEUED):
            continue
        c.flags &= ~CONN_TLS_QUEUED
        if c.fd < 0 or c.ssl == NULL or (c.flags & CONN_TLS_HANDSHAKE):
            continue
        if c.ws != NULL:
            ws_conn_on_event(w, c, EPOLLIN)
        elif c.events & EPOLLIN:
            conn_on_readable(w, c)
    w.tls_nready = 0


cdef inline int tls_is_client_hello(const char* data, size_t n) noexcept nogil:
    # TLS record header: handshake (0x16), version 3.x; then ClientHello (1).
    return n >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01
