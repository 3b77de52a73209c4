# cdef extern declarations of loadgen.h, the load generator's own C header:
# its counters, clocks and bit tricks.  Only what we call; the sockets and
# epoll come from beastnet/includes/system.pxd.
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from posix.uio cimport iovec
from beastnet.includes.system cimport epoll_event, sockaddr, socklen_t, ssize_t


cdef extern from "loadgen.h" nogil:
    ctypedef struct bn_lg_counters:
        uint64_t m_sent
        uint64_t m_received
        uint64_t m_lost
        uint64_t m_error_replies
        uint64_t m_unsent
        uint64_t late
        uint64_t unmatched
        uint64_t bad_replies
        uint64_t err_refused
        uint64_t err_nobufs
        uint64_t err_send
        uint64_t err_recv
        uint64_t eintr
        uint64_t t_sent
        uint64_t t_received
        uint64_t t_lost
        uint64_t rx_batches
        uint64_t tx_batches
        uint64_t waits
        uint64_t m_err_not_found
        uint64_t m_err_unauthorized
        uint64_t m_err_rate_limited
        uint64_t m_err_over_quota
        uint64_t m_err_busy
        uint64_t m_err_bad_request

    ctypedef struct bn_lg_http_counters:
        uint64_t m_sent
        uint64_t m_received
        uint64_t m_lost
        uint64_t m_failed
        uint64_t m_error_replies
        uint64_t m_unsent
        uint64_t t_sent
        uint64_t t_received
        uint64_t t_lost
        uint64_t connect_attempts
        uint64_t connects
        uint64_t m_connects
        uint64_t m_first_requests
        uint64_t err_connect_refused
        uint64_t err_connect_timeout
        uint64_t err_connect_other
        uint64_t err_reset
        uint64_t err_closed
        uint64_t err_closed_mid_response
        uint64_t err_parse
        uint64_t err_too_large
        uint64_t err_io
        uint64_t server_closes
        uint64_t bytes_out
        uint64_t bytes_in
        uint64_t eintr
        uint64_t waits
        uint64_t tls_handshakes
        uint64_t tls_resumed
        uint64_t err_tls_verify
        uint64_t err_tls_not_tls
        uint64_t err_tls_handshake
        uint64_t err_tls_timeout
        uint64_t err_tls_protocol

    uint64_t bn_now_ns()
    uint64_t bn_thread_cpu_ns()
    int bn_log2_u64(uint64_t v)
    int bn_epoll_wait_ns(int epfd, epoll_event* events, int maxevents, uint64_t timeout_ns)
    int bn_hex_u64(char* out, uint64_t v)
    uint64_t bn_rand_u64(uint64_t* state)
    void bn_set_errno(int e)
    void bn_hex_u64_width(char* out, uint64_t v, int width)
    ssize_t bn_send_gso(int fd, iovec* iov, size_t iovcnt, uint16_t seg_bytes)
    enum:
        BN_GSO_MAX_SEGMENTS

