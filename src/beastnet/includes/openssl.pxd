# cdef extern declarations of the system's OpenSSL (libssl, libcrypto >= 1.1.1;
# kTLS needs 3.0) for the engine's TLS (_tls.pxi).  Only what we call is
# declared.  Several of these are macros over SSL_ctrl/BIO_ctrl in the
# headers; Cython calls them like functions.
cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct BIO

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_FILETYPE_PEM
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_NOACK
        OPENSSL_NPN_NEGOTIATED
        SSL_CB_HANDSHAKE_START
        SSL_CB_WRITE_ALERT
        SSL_AD_NO_RENEGOTIATION
        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_SERVER
        SSL_R_UNEXPECTED_EOF_WHILE_READING
        SSL_R_HTTP_REQUEST
        SSL_R_HTTPS_PROXY_REQUEST

    # Options and modes (unsigned long / uint64_t masks depending on the version).
    unsigned long SSL_OP_NO_RENEGOTIATION
    unsigned long SSL_OP_NO_TICKET
    unsigned long SSL_OP_NO_COMPRESSION
    unsigned long SSL_OP_CIPHER_SERVER_PREFERENCE
    unsigned long SSL_OP_IGNORE_UNEXPECTED_EOF
    unsigned long SSL_OP_ENABLE_KTLS
    long SSL_MODE_ENABLE_PARTIAL_WRITE
    long SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    long SSL_MODE_RELEASE_BUFFERS

    const SSL_METHOD* TLS_server_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_up_ref(SSL_CTX* ctx)
    unsigned long SSL_CTX_set_options(SSL_CTX* ctx, unsigned long op)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    int SSL_CTX_set_num_tickets(SSL_CTX* ctx, size_t num_tickets)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    int SSL_CTX_set_cipher_list(SSL_CTX* ctx, const char* str)
    int SSL_CTX_set_ciphersuites(SSL_CTX* ctx, const char* str)
    void SSL_CTX_set_info_callback(SSL_CTX* ctx,
                                   void (*cb)(const SSL* ssl, int where, int ret) noexcept nogil)
    void SSL_CTX_set_alpn_select_cb(SSL_CTX* ctx,
                                    int (*cb)(SSL* ssl, const unsigned char** out,
                                              unsigned char* outlen, const unsigned char* inp,
                                              unsigned int inlen, void* arg) noexcept nogil,
                                    void* arg)
    int SSL_select_next_proto(unsigned char** out, unsigned char* outlen,
                              const unsigned char* server, unsigned int server_len,
                              const unsigned char* client, unsigned int client_len)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    void SSL_set_accept_state(SSL* ssl)
    int SSL_set_app_data(SSL* ssl, void* arg)
    void* SSL_get_app_data(const SSL* ssl)
    int SSL_do_handshake(SSL* ssl)
    int SSL_read_ex(SSL* ssl, void* buf, size_t num, size_t* readbytes)
    int SSL_write_ex(SSL* ssl, const void* buf, size_t num, size_t* written)
    int SSL_shutdown(SSL* ssl)
    int SSL_get_error(const SSL* ssl, int ret)
    int SSL_version(const SSL* ssl)
    int SSL_session_reused(const SSL* ssl)
    int SSL_is_init_finished(const SSL* ssl)
    int SSL_has_pending(const SSL* ssl)
    void SSL_CTX_set_read_ahead(SSL_CTX* ctx, int yes)
    BIO* SSL_get_wbio(const SSL* ssl)
    const char* SSL_get_version(const SSL* ssl)

    long BIO_get_ktls_send(BIO* b)


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    int ERR_GET_REASON(unsigned long e)
