# cdef extern declarations of the system headers beastnet uses: the one place
# both extensions (the engine and the load generator) take them from.  Errno
# values come from Cython's libc.errno.
# Only the fields and functions we call are declared.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from posix.time cimport time_t, timespec
from posix.uio cimport iovec


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int recvmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags, timespec* tmo)
    int sendmmsg(int fd, mmsghdr* vmessages, unsigned int vlen, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    int shutdown(int fd, int how)
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t addrlen)
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    int getpeername(int fd, sockaddr* addr, socklen_t* addrlen)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int getsockopt(int fd, int level, int optname, void* optval, socklen_t* optlen)
    int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen)

    cmsghdr* CMSG_FIRSTHDR(msghdr* msg)
    cmsghdr* CMSG_NXTHDR(msghdr* msg, cmsghdr* cmsg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    size_t CMSG_SPACE(size_t length)

    enum:
        AF_INET
        AF_INET6
        SOL_SOCKET
        SO_RXQ_OVFL
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_WAITFORONE
        MSG_NOSIGNAL
        SHUT_RD
        SHUT_WR
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SO_ERROR


cdef extern from "<netinet/in.h>" nogil:
    struct sockaddr_in6:
        sa_family_t sin6_family
    enum:
        IPPROTO_TCP


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_NOTSENT_LOWAT               # unsent bytes past which the socket reads as full


cdef extern from "<sys/socket.h>" nogil:
    struct linger:
        int l_onoff
        int l_linger
    enum:
        SO_LINGER
        SO_SNDBUF


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int poll(pollfd* fds, nfds_t nfds, int timeout_ms)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t count)
    ssize_t write(int fd, const void* buf, size_t count)
    int close(int fd)


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t* thread, const pthread_attr_t* attr,
                       void* (*start_routine)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** retval)


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    enum:
        F_DUPFD_CLOEXEC


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
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout_ms)

    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP


cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen)


cdef extern from "<time.h>" nogil:
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
        int tm_wday
    time_t time(time_t* t)
    tm* gmtime_r(const time_t* t, tm* out)
    enum:
        CLOCK_MONOTONIC_COARSE              # Linux: the last tick's time, no vDSO read of the TSC


cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)


cdef extern from "<linux/sockios.h>" nogil:
    enum:
        SIOCOUTQ                        # bytes in a TCP send queue: unsent or unacknowledged
