# cdef extern declarations of OpenSSL (libssl, libcrypto) for the load
# generator's TLS client: only what it calls.  Several names are macros over
# SSL_ctrl / SSL_CTX_ctrl; Cython calls them like functions.
from libc.stdint cimport uint64_t

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_SESSION
    ctypedef struct SSL_CIPHER
    ctypedef struct X509_VERIFY_PARAM

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_SENT_SHUTDOWN
        SSL_RECEIVED_SHUTDOWN
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_R_WRONG_VERSION_NUMBER
        SSL_R_PACKET_LENGTH_TOO_LONG
        SSL_R_HTTP_REQUEST
        X509_V_OK
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_OP_IGNORE_UNEXPECTED_EOF

    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)
    uint64_t SSL_CTX_set_options(SSL_CTX* ctx, uint64_t options)
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    int SSL_CTX_set_default_verify_paths(SSL_CTX* ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile, const char* capath)
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos, unsigned int len)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)
    void SSL_CTX_sess_set_new_cb(SSL_CTX* ctx, int (*new_session_cb)(SSL*, SSL_SESSION*) noexcept nogil)
    X509_VERIFY_PARAM* SSL_CTX_get0_param(SSL_CTX* ctx)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    long SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set_app_data(SSL* ssl, void* arg)
    void* SSL_get_app_data(const SSL* ssl)
    int SSL_set_session(SSL* ssl, SSL_SESSION* session)
    int SSL_session_reused(const SSL* ssl)
    int SSL_connect(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_pending(const SSL* ssl)
    int SSL_has_pending(const SSL* ssl)
    void SSL_CTX_set_read_ahead(SSL_CTX* ctx, int yes)
    int SSL_get_error(const SSL* ssl, int ret)
    void SSL_set_shutdown(SSL* ssl, int mode)
    long SSL_get_verify_result(const SSL* ssl)
    const char* SSL_get_version(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* cipher)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* len)
    void SSL_SESSION_free(SSL_SESSION* session)


cdef extern from "openssl/x509_vfy.h" nogil:
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM* param, const char* name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM* param, const char* ipasc)
    const char* X509_verify_cert_error_string(long n)


cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_peek_error()
    unsigned long ERR_get_error()
    void ERR_clear_error()
    int ERR_GET_REASON(unsigned long e)
    const char* ERR_reason_error_string(unsigned long e)
