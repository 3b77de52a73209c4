/* The kernel-crossing floor of a UDP request/response server, today's batch
 * calls against io_uring: one thread, one socket, every request answered with
 * the same body behind the request's tag, in beastnet's protocol
 * ("@TAG KEY..." -> "@TAG BODY", the tag being everything up to and including
 * the first space).  No table, no parsing past the tag: what is left is the
 * I/O loop, so the modes' CPU per request bounds what io_uring could save
 * beastnet's UDP readers.
 *
 *   cc -O2 -o udp_io_floor udp_io_floor.c -luring
 *   ./udp_io_floor MODE PORT BODY          (PORT 0: any; the port is printed first)
 *
 * MODE is
 *   mmsg      what beastnet's reader does: block in recvmmsg(MSG_WAITFORONE)
 *             for up to 32 datagrams, answer them with one sendmmsg
 *   uring+... one multishot recvmsg into a provided buffer ring; each answer a
 *             send (to the request's address) queued as an SQE and submitted
 *             in the same io_uring_enter as the next wait.  Options, joined
 *             with '+': defer (SINGLE_ISSUER|DEFER_TASKRUN) or coop
 *             (SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG), exactly one;
 *             regring (io_uring_register_ring_fd); fixed (the socket as a
 *             registered file).
 * On SIGTERM it prints one JSON line of counters (answered, dropped).
 *
 * Benchmark code only (benchmarks/bench_udp_io.py builds and drives it). */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32                /* datagrams per recvmmsg/sendmmsg, beastnet's default */
#define DGRAM_BYTES 512         /* a request or an answer; longer requests are dropped */
#define TAG_MAX 18              /* '@' + 16 hex digits + ' ' */
#define NBUFS 1024              /* provided receive buffers, power of two */
#define RX_BYTES 1024           /* io_uring_recvmsg_out + address + datagram */
#define RING_ENTRIES 4096
#define SLOTS 8192              /* answers in flight (queued or sent, not yet completed) */

static const char* body;
static size_t body_len;
static volatile sig_atomic_t stopping;
static unsigned long long answered, dropped;

static void on_term(int sig) { (void)sig; stopping = 1; }

static void die(const char* what) { perror(what); exit(1); }

static void uring_die(const char* what, int rc)
{
    fprintf(stderr, "%s: %s\n", what, strerror(-rc));
    exit(1);
}

/* Length of the request's tag ("@...' '"), 0 when it has none: not answered. */
static size_t tag_len(const char* p, size_t n)
{
    if (n < 3 || p[0] != '@')
        return 0;
    for (size_t i = 1; i < n && i < TAG_MAX; i++)
        if (p[i] == ' ')
            return i + 1;
    return 0;
}

static void serve_mmsg(int fd)
{
    static char rx[BATCH][DGRAM_BYTES];
    static struct sockaddr_in from[BATCH];
    static struct mmsghdr rmsg[BATCH], tmsg[BATCH];
    static struct iovec riov[BATCH], tiov[BATCH][2];
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rx[i];
        riov[i].iov_len = DGRAM_BYTES;
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
        rmsg[i].msg_hdr.msg_name = &from[i];
        tmsg[i].msg_hdr.msg_iov = tiov[i];
        tmsg[i].msg_hdr.msg_iovlen = 2;
        tiov[i][1].iov_base = (void*)body;
        tiov[i][1].iov_len = body_len;
    }
    while (!stopping) {
        for (int i = 0; i < BATCH; i++)
            rmsg[i].msg_hdr.msg_namelen = sizeof(from[i]);
        int n = recvmmsg(fd, rmsg, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recvmmsg");
        }
        int out = 0;
        for (int i = 0; i < n; i++) {
            size_t t = tag_len(rx[i], rmsg[i].msg_len);
            if (t == 0 || (rmsg[i].msg_hdr.msg_flags & MSG_TRUNC)) { dropped++; continue; }
            tiov[out][0].iov_base = rx[i];     /* the tag, read in place */
            tiov[out][0].iov_len = t;
            tmsg[out].msg_hdr.msg_name = &from[i];
            tmsg[out].msg_hdr.msg_namelen = rmsg[i].msg_hdr.msg_namelen;
            out++;
        }
        for (int sent = 0; sent < out;) {
            int m = sendmmsg(fd, tmsg + sent, (unsigned)(out - sent), 0);
            if (m < 0) {
                if (errno == EINTR) continue;
                /* A full send buffer or a refused address: that datagram is
                 * lost, counted, as beastnet's reader counts it. */
                if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED) {
                    dropped++;
                    sent++;
                    continue;
                }
                die("sendmmsg");
            }
            sent += m;
            answered += (unsigned long long)m;
        }
    }
}

enum { OP_RECV = 1, OP_SEND = 2 };

static struct {
    int defer, coop, regring, fixed;
} opt;

static struct io_uring ring;

/* An answer in flight: its bytes and its address live here until its send
 * completes (a send the socket cannot take at once waits in the kernel). */
struct slot {
    struct sockaddr_in to;
    char data[TAG_MAX + DGRAM_BYTES];
};
static struct slot* slots;
static unsigned free_slots[SLOTS];
static unsigned nfree;

static struct io_uring_sqe* sqe_get(void)
{
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == NULL) {
        int rc = io_uring_submit(&ring);
        if (rc < 0) uring_die("io_uring_submit", rc);
        sqe = io_uring_get_sqe(&ring);
        if (sqe == NULL) die("io_uring_get_sqe");
    }
    return sqe;
}

static void arm_recv(int fd, struct msghdr* mh)
{
    struct io_uring_sqe* sqe = sqe_get();
    io_uring_prep_recvmsg_multishot(sqe, fd, mh, 0);
    if (opt.fixed)
        sqe->flags |= IOSQE_FIXED_FILE;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, OP_RECV);
}

static void parse_options(const char* mode)
{
    char copy[256], *save = NULL;
    if (strlen(mode) >= sizeof(copy)) { fprintf(stderr, "mode too long\n"); exit(2); }
    strcpy(copy, mode);
    char* word = strtok_r(copy, "+", &save);           /* "uring" */
    while ((word = strtok_r(NULL, "+", &save)) != NULL) {
        if (!strcmp(word, "defer")) opt.defer = 1;
        else if (!strcmp(word, "coop")) opt.coop = 1;
        else if (!strcmp(word, "regring")) opt.regring = 1;
        else if (!strcmp(word, "fixed")) opt.fixed = 1;
        else { fprintf(stderr, "unknown uring option %s\n", word); exit(2); }
    }
    if (opt.defer == opt.coop) {
        fprintf(stderr, "uring needs exactly one of +defer and +coop\n");
        exit(2);
    }
}

static void serve_uring(int sock, const char* mode)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    struct io_uring_buf_ring* bufring;
    unsigned char* bufs;
    struct msghdr mh;                   /* the layout of every received buffer */
    int rc, fd = sock;
    parse_options(mode);
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER
              | (opt.defer ? IORING_SETUP_DEFER_TASKRUN
                           : IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    if ((rc = io_uring_queue_init_params(RING_ENTRIES, &ring, &p)) < 0)
        uring_die("io_uring_queue_init_params", rc);
    if (opt.regring && (rc = io_uring_register_ring_fd(&ring)) != 1)
        uring_die("io_uring_register_ring_fd", rc < 0 ? rc : -EINVAL);
    if (opt.fixed) {
        if ((rc = io_uring_register_files(&ring, &sock, 1)) < 0)
            uring_die("io_uring_register_files", rc);
        fd = 0;                         /* its index in the table */
    }
    bufring = mmap(NULL, NBUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    bufs = malloc((size_t)NBUFS * RX_BYTES);
    slots = malloc(SLOTS * sizeof(struct slot));
    if (bufring == MAP_FAILED || bufs == NULL || slots == NULL) die("buffers");
    for (unsigned i = 0; i < SLOTS; i++)
        free_slots[nfree++] = i;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)bufring;
    reg.ring_entries = NBUFS;
    reg.bgid = 0;
    if ((rc = io_uring_register_buf_ring(&ring, &reg, 0)) < 0)
        uring_die("io_uring_register_buf_ring", rc);
    io_uring_buf_ring_init(bufring);
    for (int i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(bufring, bufs + (size_t)i * RX_BYTES, RX_BYTES, i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(bufring, NBUFS);
    memset(&mh, 0, sizeof(mh));
    mh.msg_namelen = sizeof(struct sockaddr_in);
    arm_recv(fd, &mh);
    while (!stopping) {
        struct io_uring_cqe* cqe;
        unsigned head, seen = 0, returned = 0;
        /* The answers queued while reaping go in with this wait. */
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -ETIME)
            uring_die("io_uring_submit_and_wait", rc);
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            seen++;
            if (ud >= OP_SEND) {                /* a send: its slot is free again */
                free_slots[nfree++] = (unsigned)(ud - OP_SEND);
                if (res < 0) {
                    if (res != -EAGAIN && res != -ENOBUFS && res != -ECONNREFUSED)
                        uring_die("send", res);
                    dropped++;
                    answered--;
                }
                continue;
            }
            if (res < 0) {
                if (res != -ENOBUFS)            /* all buffers out: re-arm below */
                    uring_die("recvmsg", res);
            } else {
                if (!(cqe->flags & IORING_CQE_F_BUFFER)) {
                    fprintf(stderr, "recvmsg completion without a buffer\n");
                    exit(1);
                }
                unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                unsigned char* b = bufs + (size_t)bid * RX_BYTES;
                struct io_uring_recvmsg_out* o = io_uring_recvmsg_validate(b, res, &mh);
                if (o == NULL) {
                    fprintf(stderr, "recvmsg buffer shorter than its header\n");
                    exit(1);
                }
                const char* payload = io_uring_recvmsg_payload(o, &mh);
                size_t n = io_uring_recvmsg_payload_length(o, res, &mh);
                size_t t = tag_len(payload, n);
                if (t == 0 || (o->flags & MSG_TRUNC) || o->namelen != sizeof(struct sockaddr_in)
                    || nfree == 0) {
                    dropped++;
                } else {
                    unsigned s = free_slots[--nfree];
                    struct slot* sl = &slots[s];
                    memcpy(&sl->to, io_uring_recvmsg_name(o), sizeof(sl->to));
                    memcpy(sl->data, payload, t);
                    memcpy(sl->data + t, body, body_len);
                    struct io_uring_sqe* sqe = sqe_get();
                    io_uring_prep_send(sqe, fd, sl->data, t + body_len, 0);
                    io_uring_prep_send_set_addr(sqe, (const struct sockaddr*)&sl->to,
                                                sizeof(sl->to));
                    if (opt.fixed)
                        sqe->flags |= IOSQE_FIXED_FILE;
                    io_uring_sqe_set_data64(sqe, OP_SEND + s);
                    answered++;
                }
                io_uring_buf_ring_add(bufring, b, RX_BYTES, bid, io_uring_buf_ring_mask(NBUFS),
                                      returned++);
            }
            if (!(cqe->flags & IORING_CQE_F_MORE))
                arm_recv(fd, &mh);
        }
        io_uring_buf_ring_advance(bufring, returned);
        io_uring_cq_advance(&ring, seen);
    }
    io_uring_queue_exit(&ring);
}

int main(int argc, char** argv)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    struct sigaction sa;
    if (argc != 4) {
        fprintf(stderr, "usage: %s mmsg|uring+OPTIONS PORT BODY\n", argv[0]);
        return 2;
    }
    body = argv[3];
    body_len = strlen(body);
    if (body_len > DGRAM_BYTES) { fprintf(stderr, "body too long\n"); return 2; }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;            /* no SA_RESTART: the blocked call returns EINTR */
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) die("sigaction");
    a.sin_port = htons((uint16_t)atoi(argv[2]));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    /* beastnet's UDPServer asks for 32 MiB each way (its default): 512
     * requests in flight would overflow the default buffer. */
    int bytes = 32 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes))
        && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)))
        die("SO_RCVBUF");
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes))
        && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)))
        die("SO_SNDBUF");
    if (bind(fd, (struct sockaddr*)&a, sizeof(a))) die("bind");
    if (getsockname(fd, (struct sockaddr*)&a, &alen)) die("getsockname");
    if (printf("%d\n", ntohs(a.sin_port)) < 0 || fflush(stdout)) die("stdout");
    if (strcmp(argv[1], "mmsg") == 0)
        serve_mmsg(fd);
    else if (strncmp(argv[1], "uring", 5) == 0 && (argv[1][5] == '+' || argv[1][5] == 0))
        serve_uring(fd, argv[1]);
    else { fprintf(stderr, "mode must be mmsg or uring+OPTIONS\n"); return 2; }
    if (close(fd)) die("close");
    printf("{\"answered\": %llu, \"dropped\": %llu}\n", answered, dropped);
    return 0;
}
