# cdef extern declarations for the TCP/HTTP engine (_http.pxi): accept4,
# stream send/recv, TCP options, clocks and calendar time (epoll: system.pxd).
# Only the fields and functions we call are declared.
from libc.stdint cimport uint32_t, uint64_t
from posix.time cimport timespec, time_t
from posix.uio cimport iovec


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    int accept4(int fd, void* addr, socklen_t* addrlen, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)

    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        MSG_DONTWAIT


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/uio.h>" nogil:
    ssize_t writev(int fd, const iovec* iov, int iovcnt)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen)


cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
        int tm_wday
    int clock_gettime(clockid_t clk, timespec* ts)
    time_t time(time_t* t)
    tm* gmtime_r(const time_t* t, tm* out)
    enum:
        CLOCK_MONOTONIC_COARSE


cdef extern from "<errno.h>" nogil:
    enum:
        EAGAIN
        EINTR
        EPIPE
        ECONNRESET
        ECONNABORTED
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        EBADF
        EINVAL
        ENOTSOCK
        EPROTO
        EPERM
        ETIMEDOUT
