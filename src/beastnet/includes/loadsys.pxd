# cdef extern declarations the load generator needs beyond system.pxd:
# epoll, the clocks and helpers of loadgen.h.  Only what we call.
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)

    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC


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

    uint64_t bn_now_ns()
    uint64_t bn_thread_cpu_ns()
    int bn_log2_u64(uint64_t v)
    int bn_epoll_wait_ns(int epfd, epoll_event* events, int maxevents, uint64_t timeout_ns)
    int bn_hex_u64(char* out, uint64_t v)
    uint64_t bn_rand_u64(uint64_t* state)
