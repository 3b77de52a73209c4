# Declarations of beastnet's own C headers (atomics.h, counters.h, compat.h, ...).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from beastnet.includes.system cimport msghdr


cdef extern from "atomics.h" nogil:
    enum:
        BN_CACHE_LINE

    uint64_t bn_load_u64(const uint64_t* p)
    uint64_t bn_load_u64_relaxed(const uint64_t* p)
    void bn_store_u64(uint64_t* p, uint64_t v)
    void bn_store_u64_sc(uint64_t* p, uint64_t v)
    uint64_t bn_add_u64(uint64_t* p, uint64_t v)
    int bn_cas_u64(uint64_t* p, uint64_t expected, uint64_t desired)
    int bn_load_int(const int* p)
    void bn_store_int(int* p, int v)
    void bn_store_int_sc(int* p, int v)
    int bn_xchg_int(int* p, int v)
    void* bn_load_ptr(void** p)
    void bn_store_ptr(void** p, void* v)
    void* bn_xchg_ptr(void** p, void* v)
    void bn_fence()
    void bn_ref_inc(uint32_t* p)
    uint32_t bn_ref_dec(uint32_t* p)
    void bn_count(uint64_t* p, uint64_t n)
    void bn_add_relaxed(uint64_t* p, uint64_t n)
    uint64_t bn_fetch_add_relaxed(uint64_t* p, uint64_t n)
    int bn_cas_u64_relaxed(uint64_t* p, uint64_t expected, uint64_t desired)
    int64_t bn_load_i64_relaxed(const int64_t* p)
    void bn_store_i64_relaxed(int64_t* p, int64_t v)
    void bn_store_u64_relaxed(uint64_t* p, uint64_t v)
    int bn_cas_ptr(void** p, void* expected, void* desired)

    ctypedef struct bn_qsbr_slot:
        uint64_t epoch
        uint64_t in_use


cdef extern from "counters.h" nogil:
    ctypedef struct bn_counters:
        uint64_t rx_packets
        uint64_t rx_bytes
        uint64_t rx_batches
        uint64_t tx_packets
        uint64_t tx_bytes
        uint64_t tx_batches
        uint64_t hits
        uint64_t misses
        uint64_t not_found
        uint64_t bad_requests
        uint64_t truncated
        uint64_t empty
        uint64_t queued
        uint64_t queue_drops
        uint64_t send_errors
        uint64_t send_enobufs
        uint64_t recv_errors
        uint64_t kernel_drops
        uint64_t too_large
        uint64_t unanswered
        uint64_t rrl_dropped
        uint64_t rrl_slipped
        uint64_t stale_served
        uint64_t shed_public
        uint64_t shed_partner
        uint64_t eintr
        uint64_t unauthorized
        uint64_t rate_limited
        uint64_t over_quota

    ctypedef struct bn_http_counters:
        uint64_t accepted
        uint64_t active
        uint64_t closed
        uint64_t rejected
        uint64_t requests
        uint64_t responses_2xx
        uint64_t responses_3xx
        uint64_t responses_4xx
        uint64_t responses_5xx
        uint64_t hits
        uint64_t misses
        uint64_t routed
        uint64_t queued
        uint64_t queue_drops
        uint64_t replies
        uint64_t replies_dropped
        uint64_t parse_errors
        uint64_t timeouts
        uint64_t header_timeouts
        uint64_t write_timeouts
        uint64_t bytes_in
        uint64_t bytes_out
        uint64_t partial_writes
        uint64_t read_pauses
        uint64_t econnreset
        uint64_t epipe
        uint64_t io_errors
        uint64_t accept_errors
        uint64_t accept_emfile
        uint64_t oom_closes
        uint64_t epoll_waits
        uint64_t output_copied
        uint64_t output_cap_closes
        uint64_t eintr
        uint64_t unauthorized
        uint64_t rate_limited
        uint64_t over_quota
        uint64_t ws_upgrades
        uint64_t ws_upgrade_refused
        uint64_t ws_active
        uint64_t ws_subscriptions
        uint64_t ws_subscriptions_refused
        uint64_t ws_messages_in
        uint64_t ws_request_errors
        uint64_t ws_pings
        uint64_t ws_publications
        uint64_t ws_resyncs
        uint64_t ws_frames_out
        uint64_t ws_superseded
        uint64_t ws_conflated
        uint64_t ws_slow_closes
        uint64_t ws_reassembly_refused
        uint64_t ws_frames_compressed
        uint64_t ws_bytes_saved
        uint64_t ws_messages_inflated
        uint64_t ws_auths
        uint64_t ws_auth_refused
        uint64_t ws_close_normal
        uint64_t ws_close_going_away
        uint64_t ws_close_protocol_error
        uint64_t ws_close_invalid_data
        uint64_t ws_close_policy
        uint64_t ws_close_too_big
        uint64_t ws_close_other
        uint64_t tls_handshakes
        uint64_t tls_resumed
        uint64_t tls_v13
        uint64_t tls_handshake_timeouts
        uint64_t tls_handshake_errors
        uint64_t tls_handshake_aborted
        uint64_t tls_plain_http
        uint64_t tls_on_plain_port
        uint64_t tls_renegotiations
        uint64_t tls_errors
        uint64_t tls_write_blocked
        uint64_t tls_ktls_send_on
        uint64_t tls_ktls_send_off
        uint64_t tls_active
        uint64_t tls_writes
        uint64_t kernel_queued
        uint64_t stall_resets
        uint64_t shed_public
        uint64_t shed_partner
        uint64_t stale_served
        uint64_t health_stalled
        uint64_t uring_waits
        uint64_t uring_enobufs
        uint64_t uring_rearms
        uint64_t uring_eagain
        uint64_t uring_sq_full
        uint64_t keyed_hits


cdef extern from "compat.h" nogil:
    enum:
        PLATFORM_IS_LINUX
        BEASTNET_DEBUG
    int bn_pin_self_to_cpu(int cpu)
    int bn_attach_cpu_steering(int fd, uint32_t nsockets)


cdef extern from "threads.h" nogil:
    ctypedef struct bn_threads:
        int capacity                    # threads the group can hold
        int running                     # started and not yet joined

    int bn_threads_init(bn_threads* g, int n)
    int bn_threads_start(bn_threads* g, void* (*main_fn)(void*) noexcept nogil, void** args)
    void bn_threads_join(bn_threads* g)
    void bn_threads_free(bn_threads* g)


cdef extern from "bn_uring.h" nogil:
    enum:
        BEASTNET_HAVE_LIBURING
    int bn_uring_probe(const char* disabled_path, char* why, size_t cap)


cdef extern from "bn_uring_loop.h" nogil:
    ctypedef struct bn_uring:
        pass
    ctypedef struct bn_ucqe:
        uint64_t ud
        int32_t res
        uint32_t flags
    enum:
        BN_UCQE_MORE
        BN_UCQE_BUFFER
        ECANCELED                       # <errno.h>; not in Cython's libc.errno
    bn_uring* bn_uring_new(unsigned entries, unsigned nbufs, unsigned buf_size, int* err)
    int bn_uring_enable(bn_uring* u)
    void bn_uring_free(bn_uring* u)
    int bn_uring_accept(bn_uring* u, int fd, uint64_t ud)
    int bn_uring_recv(bn_uring* u, int fd, uint64_t ud)
    int bn_uring_poll(bn_uring* u, int fd, unsigned mask, int multishot, uint64_t ud)
    int bn_uring_cancel(bn_uring* u, uint64_t ud, uint64_t cancel_ud)
    int bn_uring_sendmsg(bn_uring* u, int fd, const msghdr* msg, uint64_t ud)
    int bn_uring_wait(bn_uring* u, int64_t timeout_ns)
    int bn_uring_submit(bn_uring* u)
    unsigned bn_uring_reap(bn_uring* u, bn_ucqe* out, unsigned max)
    char* bn_uring_buf(bn_uring* u, unsigned bid)
    void bn_uring_buf_return(bn_uring* u, unsigned bid)
    uint64_t bn_uring_sq_full(bn_uring* u)
    unsigned bn_uring_sq_ready(bn_uring* u)


cdef extern from "apikeyhash.h" nogil:
    void bn_apikey_sha256(const char* key, size_t n, unsigned char* digest)

cdef extern from "wsaccept.h" nogil:
    void bn_ws_accept(const char* key, size_t key_len, char* out)
