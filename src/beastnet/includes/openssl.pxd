# cdef extern declarations of the system's OpenSSL (libssl, libcrypto >= 1.1.1;
# kTLS needs 3.0), one list for both extensions: the engine's TLS server
# (_tls.pxi) and the load generator's TLS client (loadgen/_tls.pxi).  Only
# what one of them calls is declared.  Several of these are macros over
# SSL_ctrl/BIO_ctrl in the headers; Cython calls them like functions.
from libc.stdint cimport uint64_t

cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct BIO
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
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_SENT_SHUTDOWN
        SSL_RECEIVED_SHUTDOWN
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_R_WRONG_VERSION_NUMBER
        SSL_R_PACKET_LENGTH_TOO_LONG
        X509_V_OK

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
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_up_ref(SSL_CTX* ctx)
    uint64_t SSL_CTX_set_options(SSL_CTX* ctx, uint64_t op)     # unsigned long before 3.0: the same 64 bits here
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
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    int SSL_CTX_set_default_verify_paths(SSL_CTX* ctx)
    int SSL_CTX_load_verify_locations(SSL_CTX* ctx, const char* cafile, const char* capath)
    int SSL_CTX_set_alpn_protos(SSL_CTX* ctx, const unsigned char* protos, unsigned int len)
    void SSL_CTX_sess_set_new_cb(SSL_CTX* ctx, int (*new_session_cb)(SSL*, SSL_SESSION*) noexcept nogil)
    X509_VERIFY_PARAM* SSL_CTX_get0_param(SSL_CTX* ctx)
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
    long SSL_set_tlsext_host_name(SSL* ssl, const char* name)
    int SSL_set_session(SSL* ssl, SSL_SESSION* session)
    int SSL_connect(SSL* ssl)
    int SSL_read(SSL* ssl, void* buf, int num)
    int SSL_write(SSL* ssl, const void* buf, int num)
    int SSL_pending(const SSL* ssl)
    void SSL_set_shutdown(SSL* ssl, int mode)
    long SSL_get_verify_result(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* cipher)
    void SSL_get0_alpn_selected(const SSL* ssl, const unsigned char** data, unsigned int* len)
    void SSL_SESSION_free(SSL_SESSION* session)

    long BIO_get_ktls_send(BIO* b)


cdef extern from "<openssl/pem.h>" nogil:
    # Certificates and keys parsed from memory (TLSContext reads each file once).
    ctypedef struct X509
    ctypedef struct EVP_PKEY
    BIO* BIO_new_mem_buf(const void* buf, int len)
    int BIO_free(BIO* b)
    X509* PEM_read_bio_X509_AUX(BIO* bp, X509** x, void* cb, void* u)
    X509* PEM_read_bio_X509(BIO* bp, X509** x, void* cb, void* u)
    EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bp, EVP_PKEY** x, void* cb, void* u)
    void X509_free(X509* x)
    void EVP_PKEY_free(EVP_PKEY* key)
    int SSL_CTX_use_certificate(SSL_CTX* ctx, X509* x)
    int SSL_CTX_use_PrivateKey(SSL_CTX* ctx, EVP_PKEY* key)
    long SSL_CTX_add0_chain_cert(SSL_CTX* ctx, X509* x)     # a macro: takes ownership of x


cdef extern from "<openssl/x509_vfy.h>" nogil:
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM* param, const char* name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM* param, const char* ipasc)
    const char* X509_verify_cert_error_string(long n)


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    int ERR_GET_REASON(unsigned long e)
    const char* ERR_reason_error_string(unsigned long e)

