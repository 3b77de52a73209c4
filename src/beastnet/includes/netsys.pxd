# cdef extern declarations only the TCP/HTTP engine (_http.pxi) uses: memmem,
# the coarse clock and calendar time, errno values (sockets, epoll: system.pxd).
# Only the fields and functions we call are declared.
from libc.stdint cimport uint32_t, uint64_t
from posix.time cimport timespec, time_t


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
