/* C pieces of the load generator that Cython cannot express directly:
 * aligned per-thread counters, clocks, a nanosecond epoll wait, and the
 * bit tricks behind the histogram index and the request tags. */
#ifndef BEASTNET_LOADGEN_H
#define BEASTNET_LOADGEN_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/uio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <netinet/in.h>

/* UDP generic segmentation offload (Linux 4.18): one sendmsg carries many
 * equal-size datagrams as one buffer; the stack cuts them apart late. */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define BN_GSO_MAX_SEGMENTS 64              /* UDP_MAX_SEGMENTS on older kernels */

#include "atomics.h"

/* Per generator thread.  Written only by its thread (bn_count); the Python
 * side reads them with relaxed loads for the progress line and the timeline.
 * "m_" counters cover the measured window only (requests whose intended send
 * time falls after the warm-up), "t_" counters cover the whole run by event
 * time and feed the per-second timeline. */
typedef struct bn_lg_counters {
    uint64_t m_sent;                        /* measured requests handed to the kernel */
    uint64_t m_received;                    /* ... answered within the timeout (latency recorded) */
    uint64_t m_lost;                        /* ... not answered within the timeout */
    uint64_t m_error_replies;               /* ... answered with an {"error":...} body (also in m_received) */
    uint64_t m_unsent;                      /* open loop: intended in the window, never sent (generator behind) */
    uint64_t late;                          /* replies to timed-out requests (after warm-up) */
    uint64_t unmatched;                     /* well-formed tag that matches nothing outstanding (after warm-up) */
    uint64_t bad_replies;                   /* replies without a parsable "@TAG " (after warm-up) */
    uint64_t err_refused;                   /* ECONNREFUSED on send or receive: ICMP port unreachable */
    uint64_t err_nobufs;                    /* ENOBUFS/EAGAIN on send: kernel out of room */
    uint64_t err_send;                      /* other send failures */
    uint64_t err_recv;                      /* other receive failures */
    uint64_t eintr;                         /* syscalls interrupted and retried */
    uint64_t t_sent;                        /* every request sent, warm-up included */
    uint64_t t_received;                    /* every matched reply */
    uint64_t t_lost;                        /* every timeout */
    uint64_t rx_batches;                    /* recvmmsg calls that returned data */
    uint64_t tx_batches;                    /* sendmmsg calls that sent data */
    uint64_t waits;                         /* times the thread slept in epoll */
    /* The measured error bodies by name (the rest of m_error_replies is
     * another name): counted on the error branch only, so an answered
     * request pays nothing for them. */
    uint64_t m_err_not_found;               /* {"error":"not_found"} */
    uint64_t m_err_unauthorized;            /* {"error":"unauthorized"} */
    uint64_t m_err_rate_limited;            /* {"error":"rate_limited"...} */
    uint64_t m_err_over_quota;              /* {"error":"over_quota"} */
    uint64_t m_err_busy;                    /* {"error":"busy"} */
    uint64_t m_err_bad_request;             /* {"error":"bad_request"} */
} __attribute__((aligned(BN_CACHE_LINE))) bn_lg_counters;

/* Per HTTP generator thread; same rules as bn_lg_counters.  A measured
 * request ends exactly one way: received, lost (timed out) or failed (its
 * connection broke: reset, closed, unparsable reply). */
typedef struct bn_lg_http_counters {
    uint64_t m_sent;                        /* measured requests written */
    uint64_t m_received;                    /* ... answered with a complete response */
    uint64_t m_lost;                        /* ... not answered within the timeout */
    uint64_t m_failed;                      /* ... ended by a connection error */
    uint64_t m_error_replies;               /* ... answered with a status >= 400 (also in m_received) */
    uint64_t m_unsent;                      /* open loop: due in the window, never written */
    uint64_t t_sent;                        /* every request written, warm-up included */
    uint64_t t_received;                    /* every response */
    uint64_t t_lost;                        /* every timeout */
    uint64_t connect_attempts;              /* connect() calls */
    uint64_t connects;                      /* connections established */
    uint64_t m_connects;                    /* ... after the warm-up */
    uint64_t m_first_requests;              /* measured requests that were first on their connection */
    uint64_t err_connect_refused;           /* ECONNREFUSED on connect */
    uint64_t err_connect_timeout;           /* connect took longer than connect_timeout */
    uint64_t err_connect_other;             /* other connect failures (EADDRNOTAVAIL, EMFILE, ...) */
    uint64_t err_reset;                     /* ECONNRESET / EPIPE with requests in flight */
    uint64_t err_closed;                    /* server closed with requests in flight, no partial reply */
    uint64_t err_closed_mid_response;       /* server closed in the middle of a response */
    uint64_t err_parse;                     /* reply is not HTTP/1.x */
    uint64_t err_too_large;                 /* response head beyond the read buffer */
    uint64_t err_io;                        /* other read/write failures */
    uint64_t server_closes;                 /* connections the server closed cleanly (Connection: close, idle) */
    uint64_t bytes_out;                     /* request bytes written */
    uint64_t bytes_in;                      /* response bytes read */
    uint64_t eintr;                         /* syscalls interrupted and retried */
    uint64_t waits;                         /* times the thread slept in epoll */
    /* https:// only.  A failed handshake is one incident; the connection
     * is retried after the connect back-off. */
    uint64_t tls_handshakes;                /* handshakes completed after the warm-up */
    uint64_t tls_resumed;                   /* ... that resumed a session (--tls-resume) */
    uint64_t err_tls_verify;                /* the server's certificate did not verify */
    uint64_t err_tls_not_tls;               /* the server answered the ClientHello in something not TLS */
    uint64_t err_tls_handshake;             /* alerts, protocol errors, closes during the handshake */
    uint64_t err_tls_timeout;               /* handshake longer than connect_timeout */
    uint64_t err_tls_protocol;              /* TLS errors after the handshake (bad record, alert) */
} __attribute__((aligned(BN_CACHE_LINE))) bn_lg_http_counters;

static inline uint64_t bn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t bn_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* floor(log2(v)) for v > 0. */
static inline int bn_log2_u64(uint64_t v) { return 63 - __builtin_clzll(v); }

/* epoll_wait with a nanosecond timeout: an open-loop generator sleeping until
 * the next intended send cannot round to whole milliseconds.  epoll_pwait2
 * (Linux 5.11, glibc 2.35) does it; elsewhere fall back to milliseconds,
 * rounded up so we never spin.  Returns what epoll_wait returns. */
static inline int bn_epoll_wait_ns(int epfd, struct epoll_event *events, int maxevents,
                                   uint64_t timeout_ns)
{
#if defined(__linux__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
    struct timespec ts;
    int rc;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
    ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
    rc = epoll_pwait2(epfd, events, maxevents, &ts, NULL);
    if (rc >= 0 || errno != ENOSYS)
        return rc;
#endif
    return epoll_wait(epfd, events, maxevents, (int)((timeout_ns + 999999ull) / 1000000ull));
}

/* Write `v` as lower-case hex without leading zeros (at least one digit) into
 * `out`; returns the number of digits (1..16). */
static inline int bn_hex_u64(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    int n = v ? (bn_log2_u64(v) >> 2) + 1 : 1;
    int i;
    for (i = n - 1; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
    return n;
}

/* Write `v` as exactly `width` lower-case hex digits, zero-padded. */
static inline void bn_hex_u64_width(char *out, uint64_t v, int width)
{
    static const char digits[] = "0123456789abcdef";
    int i;
    for (i = width - 1; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
}

/* sendmsg of `iovcnt` iovecs as datagrams of `seg_bytes` each (UDP_SEGMENT).
 * Returns what sendmsg returns. */
static inline ssize_t bn_send_gso(int fd, struct iovec *iov, size_t iovcnt, uint16_t seg_bytes)
{
    char control[CMSG_SPACE(sizeof(uint16_t))];
    struct msghdr msg;
    struct cmsghdr *cm;
    memset(&msg, 0, sizeof(msg));
    memset(control, 0, sizeof(control));
    msg.msg_iov = iov;
    msg.msg_iovlen = iovcnt;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(cm), &seg_bytes, sizeof(uint16_t));
    return sendmsg(fd, &msg, MSG_DONTWAIT);
}

/* Set errno: the TLS shims report failures the way send/recv do. */
static inline void bn_set_errno(int e) { errno = e; }

/* xorshift64*: a fast per-thread generator for key choice and Poisson gaps. */
static inline uint64_t bn_rand_u64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

#endif /* BEASTNET_LOADGEN_H */
