# The TLS client layer the HTTP and WebSocket load loops share: one SSL_CTX
# per run (TLSClientContext: verification, ALPN, session cache), and per
# generator thread a bn_tls_client holding the server name, the session kept
# for resumption and the first failure seen.  Everything here is non-blocking:
# a loop calls tls_handshake / tls_recv / tls_send on readiness and learns
# from `want` which epoll event OpenSSL waits for.
#
# OpenSSL's error queue is per thread and must be empty before an SSL_* I/O
# call for SSL_get_error to mean anything; every failure path here drains it
# (ERR_clear_error), so the success path never pays for clearing it.

cdef enum:
    TLSF_NONE = 0                   # no failure
    TLSF_VERIFY = 1                 # the certificate did not verify
    TLSF_NOT_TLS = 2                # the server answered the ClientHello with something not TLS
    TLSF_HANDSHAKE = 3              # an alert or protocol error in the handshake
    TLSF_CLOSED = 4                 # the server closed or reset the connection mid-handshake
    TLSF_TIMEOUT = 5                # the handshake did not finish within the connect timeout
    TLSF_SETUP = 6                  # SSL_new / SSL_set_fd failed (out of memory)

# The ALPN list we offer: one protocol, length-prefixed.
cdef const unsigned char* TLS_ALPN_HTTP11 = <const unsigned char*>b"\x08http/1.1"


cdef struct bn_tls_client:
    SSL_CTX* ctx                        # NULL = plain TCP; shared by the run's threads, owned by the run
    const char* sni                     # server name sent (NUL-terminated), NULL for an IP literal
    SSL_SESSION* session                # last session the server issued (resume only), owned
    int resume                          # offer `session` on new connections
    int fail_kind                       # first failure (TLSF_*), for the one-line error
    long verify_result                  # ... its X509_V_* code when TLSF_VERIFY
    unsigned long error                 # ... its ERR_* code when TLSF_HANDSHAKE / TLSF_NOT_TLS
    const char* version                 # negotiated by the first handshake (static strings in libssl)
    const char* cipher


cdef int tls_on_new_session(SSL* ssl, SSL_SESSION* session) noexcept nogil:
    """OpenSSL hands over each session the server issues (TLS 1.3 tickets
    arrive after the handshake, inside a later SSL_read).  Keep the newest
    per thread: returning 1 keeps our reference."""
    cdef bn_tls_client* tc = <bn_tls_client*>SSL_get_app_data(ssl)
    if tc == NULL or not tc.resume:
        return 0
    if tc.session != NULL:
        SSL_SESSION_free(tc.session)
    tc.session = session
    return 1


cdef SSL* tls_new(bn_tls_client* tc, int fd) noexcept nogil:
    """A client SSL over the connected `fd`, with SNI and the kept session;
    NULL when OpenSSL is out of memory (recorded as TLSF_SETUP)."""
    cdef SSL* ssl = SSL_new(tc.ctx)
    if ssl == NULL:
        tls_note_failure(tc, TLSF_SETUP, 0, 0)
        return NULL
    if (SSL_set_fd(ssl, fd) != 1 or SSL_set_app_data(ssl, tc) != 1
            or (tc.sni != NULL and SSL_set_tlsext_host_name(ssl, tc.sni) != 1)):
        SSL_free(ssl)
        tls_note_failure(tc, TLSF_SETUP, 0, 0)
        return NULL
    if tc.resume and tc.session != NULL:
        # A session that cannot be resumed only means a full handshake.
        SSL_set_session(ssl, tc.session)
    return ssl


cdef void tls_free(SSL* ssl, int clean) noexcept nogil:
    """Free `ssl` without a close_notify round trip.  `clean`: no TLS error
    ended it (a reset or a close without close_notify is not one, RFC 5246
    7.2.1), so it is marked shut down; else OpenSSL would mark its session
    not resumable."""
    if ssl == NULL:
        return
    if clean:
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
    SSL_free(ssl)


cdef void tls_note_failure(bn_tls_client* tc, int kind, long verify, unsigned long error) noexcept nogil:
    if tc.fail_kind == TLSF_NONE:
        tc.fail_kind = kind
        tc.verify_result = verify
        tc.error = error
    ERR_clear_error()


cdef int tls_handshake(bn_tls_client* tc, SSL* ssl, uint32_t* want) noexcept nogil:
    """One step of SSL_connect.  1 done, 0 in progress (`want` = the epoll
    event to wait for), or a TLSF_* failure (negated), recorded in `tc`."""
    cdef int rc = SSL_connect(ssl)
    cdef int err
    cdef long verify
    cdef unsigned long code
    cdef int reason
    if rc == 1:
        want[0] = 0
        if tc.version == NULL:
            tc.version = SSL_get_version(ssl)
            tc.cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl))
        return 1
    err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_READ:
        want[0] = EPOLLIN
        return 0
    if err == SSL_ERROR_WANT_WRITE:
        want[0] = EPOLLOUT
        return 0
    if err == SSL_ERROR_SSL:
        verify = SSL_get_verify_result(ssl)
        code = ERR_peek_error()
        if verify != X509_V_OK:
            tls_note_failure(tc, TLSF_VERIFY, verify, code)
            return -TLSF_VERIFY
        reason = ERR_GET_REASON(code)
        # A plain HTTP server answers the ClientHello with "HTTP/1.1 400":
        # its bytes read as a record of an unknown version or absurd length.
        if (reason == SSL_R_WRONG_VERSION_NUMBER or reason == SSL_R_PACKET_LENGTH_TOO_LONG
                or reason == SSL_R_HTTP_REQUEST):
            tls_note_failure(tc, TLSF_NOT_TLS, 0, code)
            return -TLSF_NOT_TLS
        tls_note_failure(tc, TLSF_HANDSHAKE, 0, code)
        return -TLSF_HANDSHAKE
    tls_note_failure(tc, TLSF_CLOSED, 0, 0)
    return -TLSF_CLOSED


cdef ssize_t tls_recv(SSL* ssl, char* buf, size_t n, uint32_t* want) noexcept nogil:
    """SSL_read with recv's contract: bytes read, 0 at the end of the stream,
    or -1 with errno set (EAGAIN: wait for `want`; EPROTO: a TLS error)."""
    cdef int rc = SSL_read(ssl, buf, <int>n)
    cdef int saved = errno
    cdef int err
    if rc > 0:
        want[0] = 0
        return rc
    err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_READ:
        want[0] = 0
        bn_set_errno(EAGAIN)
        return -1
    if err == SSL_ERROR_WANT_WRITE:       # a key update wants to send first
        want[0] = EPOLLOUT
        bn_set_errno(EAGAIN)
        return -1
    if err == SSL_ERROR_ZERO_RETURN:
        return 0
    ERR_clear_error()
    if err == SSL_ERROR_SYSCALL and saved != 0:
        bn_set_errno(saved)
        return -1
    if err == SSL_ERROR_SYSCALL:
        return 0                        # EOF without close_notify
    bn_set_errno(EPROTO)
    return -1


cdef ssize_t tls_send(SSL* ssl, const char* buf, size_t n) noexcept nogil:
    """SSL_write with send's contract (partial writes allowed): bytes taken,
    or -1 with errno set (EAGAIN: wait; EPROTO: a TLS error)."""
    cdef int rc = SSL_write(ssl, buf, <int>n)
    cdef int saved = errno
    cdef int err
    if rc > 0:
        return rc
    err = SSL_get_error(ssl, rc)
    if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
        bn_set_errno(EAGAIN)
        return -1
    ERR_clear_error()
    bn_set_errno(saved if err == SSL_ERROR_SYSCALL and saved != 0
                 else EPROTO if err == SSL_ERROR_SSL else EPIPE)
    return -1


cdef void tls_client_free(bn_tls_client* tc) noexcept nogil:
    if tc.session != NULL:
        SSL_SESSION_free(tc.session)
        tc.session = NULL


cdef class TLSClientContext:
    """One SSL_CTX for a run's client connections: certificate verification
    (on unless `insecure`; the system's trust store or `cafile`), the
    expected host name or IP, ALPN ``http/1.1`` (`alpn`), and client-side
    session keeping for `resume`."""

    def __cinit__(self, str host not None, *, cafile=None, bint insecure=False,
                  bint resume=False, bint alpn=True, str server_name=None):
        cdef bytes name = (server_name or host).encode("idna" if server_name is None else "ascii")
        cdef bytes ca
        cdef bint is_ip = _is_ip_literal(host) and server_name is None
        self.resume = resume
        self.ctx = SSL_CTX_new(TLS_client_method())
        if self.ctx == NULL:
            raise MemoryError("SSL_CTX_new failed")
        # Partial writes: the loops write a window of requests and keep the
        # rest; the buffer may move (memmove) between retries.
        SSL_CTX_set_mode(self.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        # HTTP frames its own bodies: a TCP close without close_notify is an
        # ordinary end of stream, as wrk and curl treat it.
        SSL_CTX_set_options(self.ctx, SSL_OP_IGNORE_UNEXPECTED_EOF)
        # Read whole socket buffers, not a record header then its body: half
        # the read() calls.  The loops then ask SSL_has_pending, since bytes
        # OpenSSL holds are invisible to epoll.
        SSL_CTX_set_read_ahead(self.ctx, 1)
        if alpn and SSL_CTX_set_alpn_protos(self.ctx, TLS_ALPN_HTTP11, 9) != 0:
            raise MemoryError("SSL_CTX_set_alpn_protos failed")
        if insecure:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_NONE, NULL)
        else:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, NULL)
            if cafile is not None:
                ca = os.fsencode(cafile)
                if SSL_CTX_load_verify_locations(self.ctx, ca, NULL) != 1:
                    ERR_clear_error()
                    raise ValueError(f"--cacert {cafile}: not a readable PEM certificate file")
            elif SSL_CTX_set_default_verify_paths(self.ctx) != 1:
                ERR_clear_error()
                raise ValueError("cannot load the system's trusted certificates; use --cacert FILE")
            if is_ip:
                if X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(self.ctx), name) != 1:
                    raise ValueError(f"{host}: not an IP address")
            elif X509_VERIFY_PARAM_set1_host(SSL_CTX_get0_param(self.ctx), name, len(name)) != 1:
                raise ValueError(f"{host}: not a valid host name")
        if resume:
            # Sessions are kept by the threads themselves (tls_on_new_session),
            # not in an internal cache shared across threads.
            SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_CLIENT
                                           | SSL_SESS_CACHE_NO_INTERNAL_STORE)
            SSL_CTX_sess_set_new_cb(self.ctx, tls_on_new_session)
        self.sni = b"" if is_ip else name

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)

    cdef void attach(self, bn_tls_client* tc) noexcept:
        """Point a thread's TLS state at this context (which must outlive it)."""
        tc.ctx = self.ctx
        tc.sni = NULL
        if self.sni:
            tc.sni = self.sni
        tc.resume = self.resume


def _is_ip_literal(str host):
    import ipaddress
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def tls_failure_text(int kind, long verify_result, unsigned long error):
    """The reason of a TLS failure, as OpenSSL words it."""
    cdef const char* s
    if kind == TLSF_VERIFY:
        return X509_verify_cert_error_string(verify_result).decode("utf-8", "replace")
    if kind == TLSF_NOT_TLS:
        return "the server did not answer in TLS (a plain HTTP server?)"
    if kind == TLSF_HANDSHAKE:
        s = ERR_reason_error_string(error) if error else NULL
        return "handshake failed: " + (s.decode("utf-8", "replace") if s != NULL else "protocol error")
    if kind == TLSF_CLOSED:
        return "the server closed the connection during the handshake"
    if kind == TLSF_TIMEOUT:
        return "the handshake did not finish within the connect timeout"
    if kind == TLSF_SETUP:
        return "out of memory creating a TLS connection"
    return ""


cdef dict tls_thread_info(bn_tls_client* tc):
    """A thread's TLS facts after the join (empty over plain TCP)."""
    if tc.ctx == NULL:
        return {}
    return {
        "tls_version": tc.version.decode() if tc.version != NULL else None,
        "tls_cipher": tc.cipher.decode() if tc.cipher != NULL else None,
        "tls_fail_kind": tc.fail_kind,
        "tls_failure": tls_failure_text(tc.fail_kind, tc.verify_result, tc.error),
    }
