/* The io_uring side of the HTTP worker loop (_http_uring.pxi): one ring per
 * worker thread in the SINGLE_ISSUER | DEFER_TASKRUN shape, one provided
 * buffer ring that every connection's multishot receive draws from, and thin
 * wrappers that queue one SQE each.  The SQEs queued during a wake-up go to
 * the kernel in the io_uring_enter that waits for the next completions.
 *
 * Built without liburing, every function fails with -ENOSYS (the Python side
 * refuses io="uring" before a worker would call them). */
#ifndef BEASTNET_BN_URING_LOOP_H
#define BEASTNET_BN_URING_LOOP_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bn_uring.h"

/* One completion as the worker handles it (copied out of the CQ ring). */
typedef struct bn_ucqe {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
} bn_ucqe;

#define BN_UCQE_MORE 1u             /* IORING_CQE_F_MORE: the multishot request goes on */
#define BN_UCQE_BUFFER 2u           /* IORING_CQE_F_BUFFER: data landed in buffer `bid` */

#if BEASTNET_HAVE_LIBURING

typedef struct bn_uring {
    struct io_uring ring;
    struct io_uring_buf_ring* br;
    char* bufs;                     /* nbufs * buf_size bytes */
    unsigned nbufs;
    unsigned buf_size;
    unsigned bgid;
    uint64_t sq_full;               /* SQ full: submitted early to make room */
} bn_uring;

/* A ring of `entries` SQEs, created disabled: the worker thread enables it
 * (bn_uring_enable) and so becomes its single issuer.  And and a provided buffer ring of `nbufs` buffers of
 * `buf_size` bytes (nbufs a power of two).  NULL with *err = -errno. */
static bn_uring* bn_uring_new(unsigned entries, unsigned nbufs, unsigned buf_size, int* err)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    size_t ring_bytes = nbufs * sizeof(struct io_uring_buf);
    bn_uring* u = (bn_uring*)calloc(1, sizeof(bn_uring));
    unsigned i;
    int rc;
    if (u == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    memset(&p, 0, sizeof(p));
    /* Completions are run only inside this thread's io_uring_enter: no task
     * work interrupting the worker, no IPI per completion. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL
              | IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
    p.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, &u->ring, &p);
    if (rc < 0) {
        free(u);
        *err = rc;
        return NULL;
    }
    u->br = (struct io_uring_buf_ring*)mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
                                            MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (u->br == MAP_FAILED) {
        *err = -errno;
        io_uring_queue_exit(&u->ring);
        free(u);
        return NULL;
    }
    u->bufs = (char*)malloc((size_t)nbufs * buf_size);
    if (u->bufs == NULL) {
        *err = -ENOMEM;
        munmap(u->br, ring_bytes);
        io_uring_queue_exit(&u->ring);
        free(u);
        return NULL;
    }
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)u->br;
    reg.ring_entries = nbufs;
    reg.bgid = 0;
    rc = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (rc < 0) {
        *err = rc;
        free(u->bufs);
        munmap(u->br, ring_bytes);
        io_uring_queue_exit(&u->ring);
        free(u);
        return NULL;
    }
    u->nbufs = nbufs;
    u->buf_size = buf_size;
    u->bgid = 0;
    io_uring_buf_ring_init(u->br);
    for (i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t)i * buf_size, buf_size, (unsigned short)i,
                              io_uring_buf_ring_mask(nbufs), (int)i);
    io_uring_buf_ring_advance(u->br, (int)nbufs);
    *err = 0;
    return u;
}

/* In the worker thread, before its first SQE: 0 or -errno. */
static int bn_uring_enable(bn_uring* u)
{
    /* The raw call: Debian 12's liburing 2.3 declares io_uring_enable_rings
     * but its library does not export it. */
    long rc = syscall(__NR_io_uring_register, u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                      NULL, 0);
    return rc < 0 ? -errno : 0;
}

/* The ring (closing it cancels what is left and drops the kernel's hold on
 * the buffer ring), then the buffer ring and its buffers.  No unregister:
 * only the single issuer may register, and this runs after its thread ended. */
static void bn_uring_free(bn_uring* u)
{
    if (u == NULL)
        return;
    io_uring_queue_exit(&u->ring);
    munmap(u->br, u->nbufs * sizeof(struct io_uring_buf));
    free(u->bufs);
    free(u);
}

/* An SQE, submitting what is queued first when the SQ is full (counted). */
static struct io_uring_sqe* bn_uring_sqe(bn_uring* u)
{
    struct io_uring_sqe* sqe = io_uring_get_sqe(&u->ring);
    if (sqe == NULL) {
        u->sq_full++;
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    return sqe;
}

enum { BN_UOP_ACCEPT, BN_UOP_RECV, BN_UOP_POLL, BN_UOP_POLL_MULTI, BN_UOP_CANCEL, BN_UOP_SENDMSG };

/* Queue one request whose completions carry `ud`: 0, or -EBUSY (no SQE even
 * after a submit).  `arg`: the poll mask, for a cancel the user data of the
 * requests to cancel (every one carrying it), for a sendmsg the msghdr. */
static int bn_uring_queue(bn_uring* u, int op, int fd, uint64_t arg, uint64_t ud)
{
    struct io_uring_sqe* sqe = bn_uring_sqe(u);
    if (sqe == NULL)
        return -EBUSY;
    switch (op) {
    case BN_UOP_ACCEPT:
        /* No address: getpeername() after it (a multishot accept shares one buffer). */
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        break;
    case BN_UOP_RECV:
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = (uint16_t)u->bgid;
        break;
    case BN_UOP_POLL:
        io_uring_prep_poll_add(sqe, fd, (unsigned)arg);
        break;
    case BN_UOP_POLL_MULTI:             /* eventfds that fire many times */
        io_uring_prep_poll_multishot(sqe, fd, (unsigned)arg);
        break;
    case BN_UOP_SENDMSG:
        /* MSG_DONTWAIT: done or -EAGAIN within the io_uring_enter that
         * submits it (REQ_F_NOWAIT: never parked on a poll), so what it
         * points to need only last until that call returns. */
        io_uring_prep_sendmsg(sqe, fd, (const struct msghdr*)(uintptr_t)arg,
                              MSG_NOSIGNAL | MSG_DONTWAIT);
        break;
    default:                            /* BN_UOP_CANCEL */
        io_uring_prep_cancel64(sqe, arg, IORING_ASYNC_CANCEL_ALL);
        break;
    }
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

static int bn_uring_accept(bn_uring* u, int fd, uint64_t ud)
{
    return bn_uring_queue(u, BN_UOP_ACCEPT, fd, 0, ud);
}

static int bn_uring_recv(bn_uring* u, int fd, uint64_t ud)
{
    return bn_uring_queue(u, BN_UOP_RECV, fd, 0, ud);
}

static int bn_uring_poll(bn_uring* u, int fd, unsigned mask, int multishot, uint64_t ud)
{
    return bn_uring_queue(u, multishot ? BN_UOP_POLL_MULTI : BN_UOP_POLL, fd, mask, ud);
}

static int bn_uring_sendmsg(bn_uring* u, int fd, const struct msghdr* msg, uint64_t ud)
{
    return bn_uring_queue(u, BN_UOP_SENDMSG, fd, (uint64_t)(uintptr_t)msg, ud);
}

/* Cancel every request carrying `ud`; the cancel's own completion carries `cancel_ud`. */
static int bn_uring_cancel(bn_uring* u, uint64_t ud, uint64_t cancel_ud)
{
    return bn_uring_queue(u, BN_UOP_CANCEL, -1, ud, cancel_ud);
}

/* Submit what is queued and wait for one completion or `timeout_ns`: one
 * io_uring_enter.  0, or -errno (-ETIME: the timeout, -EINTR: a signal). */
static int bn_uring_wait(bn_uring* u, int64_t timeout_ns)
{
    struct __kernel_timespec ts;
    struct io_uring_cqe* cqe = NULL;
    int rc;
    ts.tv_sec = timeout_ns / 1000000000;
    ts.tv_nsec = timeout_ns % 1000000000;
    rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
    return rc < 0 ? rc : 0;
}

/* Submit what is queued without waiting (the stop path). */
static int bn_uring_submit(bn_uring* u)
{
    return io_uring_submit(&u->ring);
}

/* Copy up to `max` completions out and mark them seen. */
static unsigned bn_uring_reap(bn_uring* u, bn_ucqe* out, unsigned max)
{
    struct io_uring_cqe* cqe;
    unsigned head;
    unsigned n = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
        if (n == max)
            break;
        out[n].ud = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = ((cqe->flags & IORING_CQE_F_MORE) ? BN_UCQE_MORE : 0)
                       | ((cqe->flags & IORING_CQE_F_BUFFER) ? BN_UCQE_BUFFER : 0)
                       | ((cqe->flags >> IORING_CQE_BUFFER_SHIFT) << 16);
        n++;
    }
    io_uring_cq_advance(&u->ring, n);
    return n;
}

static inline char* bn_uring_buf(bn_uring* u, unsigned bid)
{
    return u->bufs + (size_t)bid * u->buf_size;
}

/* Give buffer `bid` back to the kernel. */
static inline void bn_uring_buf_return(bn_uring* u, unsigned bid)
{
    io_uring_buf_ring_add(u->br, bn_uring_buf(u, bid), u->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(u->nbufs), 0);
    io_uring_buf_ring_advance(u->br, 1);
}

static inline uint64_t bn_uring_sq_full(bn_uring* u)
{
    return u->sq_full;
}

/* SQEs queued and not yet submitted. */
static inline unsigned bn_uring_sq_ready(bn_uring* u)
{
    return io_uring_sq_ready(&u->ring);
}

#else  /* built without liburing */

typedef struct bn_uring {
    int unused;
} bn_uring;

static bn_uring* bn_uring_new(unsigned entries, unsigned nbufs, unsigned buf_size, int* err)
{
    (void)entries; (void)nbufs; (void)buf_size;
    *err = -ENOSYS;
    return NULL;
}
static int bn_uring_enable(bn_uring* u) { (void)u; return -ENOSYS; }
static void bn_uring_free(bn_uring* u) { (void)u; }
static int bn_uring_accept(bn_uring* u, int fd, uint64_t ud) { (void)u; (void)fd; (void)ud; return -ENOSYS; }
static int bn_uring_recv(bn_uring* u, int fd, uint64_t ud) { (void)u; (void)fd; (void)ud; return -ENOSYS; }
static int bn_uring_poll(bn_uring* u, int fd, unsigned mask, int multishot, uint64_t ud)
{
    (void)u; (void)fd; (void)mask; (void)multishot; (void)ud;
    return -ENOSYS;
}
static int bn_uring_cancel(bn_uring* u, uint64_t ud, uint64_t cancel_ud)
{
    (void)u; (void)ud; (void)cancel_ud;
    return -ENOSYS;
}
static int bn_uring_sendmsg(bn_uring* u, int fd, const struct msghdr* msg, uint64_t ud)
{
    (void)u; (void)fd; (void)msg; (void)ud;
    return -ENOSYS;
}
static int bn_uring_wait(bn_uring* u, int64_t timeout_ns) { (void)u; (void)timeout_ns; return -ENOSYS; }
static int bn_uring_submit(bn_uring* u) { (void)u; return -ENOSYS; }
static unsigned bn_uring_reap(bn_uring* u, bn_ucqe* out, unsigned max)
{
    (void)u; (void)out; (void)max;
    return 0;
}
static inline char* bn_uring_buf(bn_uring* u, unsigned bid) { (void)u; (void)bid; return NULL; }
static inline void bn_uring_buf_return(bn_uring* u, unsigned bid) { (void)u; (void)bid; }
static inline uint64_t bn_uring_sq_full(bn_uring* u) { (void)u; return 0; }
static inline unsigned bn_uring_sq_ready(bn_uring* u) { (void)u; return 0; }

#endif
#endif
