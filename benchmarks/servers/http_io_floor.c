/* The kernel-crossing floor of a keep-alive HTTP server, on epoll and on
 * io_uring: one thread, one listening socket, every request answered with the
 * same canned response.  No parsing beyond counting "\r\n\r\n", no table, no
 * timers: what is left is the I/O loop, so the two modes' CPU per request
 * bounds what an io_uring backend could save the real engine.
 *
 *   cc -O2 -o http_io_floor http_io_floor.c -luring
 *   ./http_io_floor MODE PORT BODY
 *
 * MODE is "epoll", or "uring" followed by options joined with '+':
 *   defer     IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN (completions run only
 *             when this thread enters the kernel to wait)
 *   coop      IORING_SETUP_SINGLE_ISSUER|COOP_TASKRUN|TASKRUN_FLAG (no IPI to
 *             run completions; the loop enters the kernel on every pass anyway)
 *   regring   io_uring_register_ring_fd: io_uring_enter without an fdget
 *   direct    accepted sockets as direct (registered) files: multishot accept
 *             into a sparse file table, recv/send/close with IOSQE_FIXED_FILE
 *   coalesce  one send per connection per wake-up, however many receive
 *             completions that connection had in it
 *   skipcqe   sends with IOSQE_CQE_SKIP_SUCCESS: no completion unless it failed
 * e.g. "uring+defer" (the first experiment) or
 * "uring+coop+regring+direct+coalesce+skipcqe".
 * TCP_NODELAY is set on the listening socket; Linux copies it to every
 * accepted one, so no mode pays a setsockopt per connection.
 *
 * Benchmark code only (benchmarks/bench_http_io.py builds and drives it). */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_BATCH 64            /* answers one read may ask for (pipelining) */
#define READ_BYTES 4096
#define NBUFS 1024              /* provided buffers, power of two */
#define RING_ENTRIES 4096
#define MAX_FDS 65536
#define DIRECT_FILES 8192      /* sparse registered-file table (direct mode) */

static char answers[MAX_BATCH * 512];
static size_t answer_len;
static volatile sig_atomic_t stopping;
static unsigned char tail[MAX_FDS][3];  /* last bytes of the previous read, per fd */

static void on_term(int sig) { (void)sig; stopping = 1; }

static void die(const char* what) { perror(what); exit(1); }

/* Requests completed in this read: "\r\n\r\n" occurrences, also across reads. */
static int count_heads(int fd, const unsigned char* p, size_t n)
{
    uint32_t window = ((uint32_t)tail[fd][0] << 16) | ((uint32_t)tail[fd][1] << 8) | tail[fd][2];
    int heads = 0;
    for (size_t i = 0; i < n; i++) {
        window = (window << 8) | p[i];
        if (window == 0x0d0a0d0aU)
            heads++;
    }
    tail[fd][0] = (unsigned char)(window >> 16);
    tail[fd][1] = (unsigned char)(window >> 8);
    tail[fd][2] = (unsigned char)window;
    return heads > MAX_BATCH ? MAX_BATCH : heads;
}

static int listen_on(int port)
{
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) die("SO_REUSEADDR");
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))) die("TCP_NODELAY");
    if (bind(fd, (struct sockaddr*)&a, sizeof(a))) die("bind");
    if (listen(fd, 1024)) die("listen");
    return fd;
}

static void serve_epoll(int lfd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
    unsigned char buf[READ_BYTES];
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev)) die("epoll_ctl");
    while (!stopping) {
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FDS) {
                        if (close(c)) die("close");
                        continue;
                    }
                    memset(tail[c], 0, 3);
                    ev.events = EPOLLIN;
                    ev.data.fd = c;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev)) die("epoll_ctl conn");
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED
                    && errno != EINTR)
                    die("accept4");
                continue;
            }
            ssize_t got = recv(fd, buf, sizeof(buf), 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                if (close(fd)) die("close");    /* also leaves the epoll set */
                continue;
            }
            int heads = count_heads(fd, buf, (size_t)got);
            /* A short send is not retried: the canned answer is tiny next to
             * the socket buffer, and wrk would report the missing bytes. */
            if (heads && send(fd, answers, answer_len * heads, MSG_NOSIGNAL) < 0
                && errno != EAGAIN && close(fd))
                die("close");
        }
    }
}

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_CLOSE = 4 };
#define UD(op, fd) (((uint64_t)(op) << 32) | (uint32_t)(fd))

static struct {
    int defer, coop, regring, direct, coalesce, skipcqe;
} opt;

static struct io_uring ring;
static struct io_uring_buf_ring* bufring;
static unsigned char* bufs;
static unsigned pending[MAX_FDS];       /* coalesce: answers owed per connection this pass */
static int owed[MAX_FDS];               /* coalesce: connections with pending[] > 0 */
static int nowed;

static void uring_die(const char* what, int rc)
{
    fprintf(stderr, "%s: %s\n", what, strerror(-rc));
    exit(1);
}

static struct io_uring_sqe* sqe_get(void)
{
    struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == NULL) {                          /* queue full: hand it over, then retry */
        int rc = io_uring_submit(&ring);
        if (rc < 0) uring_die("io_uring_submit", rc);
        sqe = io_uring_get_sqe(&ring);
        if (sqe == NULL) die("io_uring_get_sqe");
    }
    return sqe;
}

/* A connection's descriptor in an SQE: a direct-file index or a plain fd. */
static void conn_sqe(struct io_uring_sqe* sqe)
{
    if (opt.direct)
        sqe->flags |= IOSQE_FIXED_FILE;
}

static void arm_recv(int fd)
{
    struct io_uring_sqe* sqe = sqe_get();
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    conn_sqe(sqe);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, UD(OP_RECV, fd));
}

static void arm_accept(int lfd)
{
    struct io_uring_sqe* sqe = sqe_get();
    if (opt.direct)
        io_uring_prep_multishot_accept_direct(sqe, lfd, NULL, NULL, 0);
    else
        io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, UD(OP_ACCEPT, lfd));
}

static void queue_send(int fd, unsigned heads)
{
    struct io_uring_sqe* sqe = sqe_get();
    if (heads > MAX_BATCH)
        heads = MAX_BATCH;
    io_uring_prep_send(sqe, fd, answers, answer_len * heads, MSG_NOSIGNAL);
    conn_sqe(sqe);
    if (opt.skipcqe)
        sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, UD(OP_SEND, fd));
}

static void close_conn(int fd)
{
    if (opt.direct) {
        struct io_uring_sqe* sqe = sqe_get();
        io_uring_prep_close_direct(sqe, (unsigned)fd);
        io_uring_sqe_set_data64(sqe, UD(OP_CLOSE, fd));
    } else if (close(fd)) {
        die("close");
    }
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
        else if (!strcmp(word, "direct")) opt.direct = 1;
        else if (!strcmp(word, "coalesce")) opt.coalesce = 1;
        else if (!strcmp(word, "skipcqe")) opt.skipcqe = 1;
        else { fprintf(stderr, "unknown uring option %s\n", word); exit(2); }
    }
    if (opt.defer == opt.coop) {
        fprintf(stderr, "uring needs exactly one of +defer and +coop\n");
        exit(2);
    }
}

static void serve_uring(int lfd, const char* mode)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    int rc;
    parse_options(mode);
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER
              | (opt.defer ? IORING_SETUP_DEFER_TASKRUN
                           : IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    if ((rc = io_uring_queue_init_params(RING_ENTRIES, &ring, &p)) < 0)
        uring_die("io_uring_queue_init_params", rc);
    /* register_ring_fd returns how many it registered (1), or -errno. */
    if (opt.regring && (rc = io_uring_register_ring_fd(&ring)) != 1)
        uring_die("io_uring_register_ring_fd", rc < 0 ? rc : -EINVAL);
    if (opt.direct && (rc = io_uring_register_files_sparse(&ring, DIRECT_FILES)) < 0)
        uring_die("io_uring_register_files_sparse", rc);
    bufring = mmap(NULL, NBUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    bufs = malloc((size_t)NBUFS * READ_BYTES);
    if (bufring == MAP_FAILED || bufs == NULL) die("buffers");
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)bufring;
    reg.ring_entries = NBUFS;
    reg.bgid = 0;
    if ((rc = io_uring_register_buf_ring(&ring, &reg, 0)) < 0)
        uring_die("io_uring_register_buf_ring", rc);
    io_uring_buf_ring_init(bufring);
    for (int i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(bufring, bufs + (size_t)i * READ_BYTES, READ_BYTES, i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(bufring, NBUFS);
    arm_accept(lfd);
    while (!stopping) {
        struct io_uring_cqe* cqe;
        unsigned head, seen = 0, returned = 0;
        /* Sends queued while reaping go in with this wait: one io_uring_enter. */
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -ETIME)
            uring_die("io_uring_submit_and_wait", rc);
        io_uring_for_each_cqe(&ring, head, cqe) {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int op = (int)(ud >> 32), fd = (int)(uint32_t)ud, res = cqe->res;
            seen++;
            if (op == OP_ACCEPT) {
                if (res >= 0 && res < MAX_FDS) {
                    memset(tail[res], 0, 3);
                    arm_recv(res);
                } else if (res >= 0) {
                    close_conn(res);
                } else if (res != -ENFILE && res != -EMFILE && res != -ECONNABORTED
                           && res != -EINTR) {
                    uring_die("accept", res);           /* table full is survivable */
                }
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    arm_accept(lfd);
            } else if (op == OP_RECV) {
                if (res > 0) {
                    if (!(cqe->flags & IORING_CQE_F_BUFFER)) {
                        fprintf(stderr, "recv completion without a buffer\n");
                        exit(1);
                    }
                    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                    unsigned char* b = bufs + (size_t)bid * READ_BYTES;
                    int heads = count_heads(fd, b, (size_t)res);
                    io_uring_buf_ring_add(bufring, b, READ_BYTES, bid,
                                          io_uring_buf_ring_mask(NBUFS), returned++);
                    if (heads && opt.coalesce) {
                        if (pending[fd] == 0)
                            owed[nowed++] = fd;
                        pending[fd] += (unsigned)heads;
                    } else if (heads) {
                        queue_send(fd, (unsigned)heads);
                    }
                    if (!(cqe->flags & IORING_CQE_F_MORE))
                        arm_recv(fd);
                } else if (res == -ENOBUFS) {
                    arm_recv(fd);              /* all buffers out: try again */
                } else {
                    if (opt.coalesce && pending[fd])
                        pending[fd] = 0;       /* its slot in owed[] sends nothing */
                    close_conn(fd);            /* EOF (0) or a reset */
                }
            } else if (op == OP_SEND) {
                /* Only failures reach here with skipcqe.  A failed send means
                 * the peer went away; its recv reports that and closes. */
                if (res < 0 && res != -EPIPE && res != -ECONNRESET && res != -EBADF
                    && res != -EAGAIN)
                    uring_die("send", res);
            } else if (op == OP_CLOSE) {
                if (res < 0)
                    uring_die("close_direct", res);
            }
        }
        io_uring_buf_ring_advance(bufring, returned);
        io_uring_cq_advance(&ring, seen);
        /* One send per connection that has output, all entering the kernel
         * together with the next wait. */
        for (int i = 0; i < nowed; i++) {
            int fd = owed[i];
            if (pending[fd]) {
                queue_send(fd, pending[fd]);
                pending[fd] = 0;
            }
        }
        nowed = 0;
    }
    io_uring_queue_exit(&ring);
}

int main(int argc, char** argv)
{
    char one[512];
    int n;
    if (argc != 4) {
        fprintf(stderr, "usage: %s epoll|uring+OPTIONS PORT BODY\n", argv[0]);
        return 2;
    }
    n = snprintf(one, sizeof(one), "HTTP/1.1 200 OK\r\nServer: floor\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(argv[3]), argv[3]);
    if (n <= 0 || n >= (int)sizeof(one)) { fprintf(stderr, "body too long\n"); return 2; }
    answer_len = (size_t)n;
    for (int i = 0; i < MAX_BATCH; i++)
        memcpy(answers + (size_t)i * answer_len, one, answer_len);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;            /* no SA_RESTART: the wait returns EINTR */
    if (sigaction(SIGTERM, &sa, NULL) || signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signals");
    int lfd = listen_on(atoi(argv[2]));
    if (strcmp(argv[1], "epoll") == 0)
        serve_epoll(lfd);
    else if (strncmp(argv[1], "uring", 5) == 0 && (argv[1][5] == '+' || argv[1][5] == 0))
        serve_uring(lfd, argv[1]);
    else { fprintf(stderr, "mode must be epoll or uring+OPTIONS\n"); return 2; }
    if (close(lfd)) die("close");
    return 0;
}
