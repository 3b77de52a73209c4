/* ws_fanout_client: hold N WebSocket feed connections and count what arrives.
 *
 *   ws_fanout_client --port P [--host 127.0.0.1] [--sources K] --conns N [--conn-offset I]
 *                    --symbols S [--universe U] [--path /v1/stream] [--connect-timeout-s C]
 *                    [--start-ns T0 --end-ns T1] [--deflate-every K] [--no-inflate 1]
 *
 * Every connection upgrades GET <path>, sends
 *   {"op":"subscribe","symbols":["S000",...]}    (S symbols from a rotating start)
 * and then reads server frames.  A feed body carries "s":"Sddd", the publisher's
 * round "n" and its publish time "t" (CLOCK_MONOTONIC ns, which every process on
 * the machine shares); the client records publish-to-receive latency per body.
 *
 * Why C: a fan-out server is measured by what it delivers, and on two shared
 * cores a Python client (even picows on uvloop) spends several µs of its own CPU
 * per message and would saturate before the native servers do.  Here a message
 * costs a frame-header decode and a short scan; one epoll thread, no allocation
 * after the connections are set up.
 *
 * Measurement rules (the same for every server):
 * - the receive time is read once per read() that returned data, after it
 *   returned; every body in that buffer gets that time.  So latency includes the
 *   client's own scheduling delay, equally for all servers;
 * - only bodies received in [T0, T1) (CLOCK_MONOTONIC) are counted; the
 *   harness reads the server's CPU over the same window;
 * - gaps: per connection and symbol, a round number that skips k rounds counts
 *   k (a conflated or dropped update); a repeated or older round counts as
 *   "stale".  The first body of a symbol after subscribing is not a gap.
 * Latency histogram: 64 sub-buckets per power of two of ns (<= 1.6 % error),
 * printed as [bucket floor ns, count] pairs so processes merge exactly.
 *
 * Without --start-ns, the window comes later as one line "T0 T1" on stdin, so a
 * harness can start the clock once every client is connected.  Sources: with
 * K > 1, connections bind 127.0.0.2 .. 127.0.0.(K+1) in turn, each address with
 * its own ephemeral port range.
 *
 * --deflate-every K: connection i (counting --conn-offset) with i % K == 0 offers
 * permessage-deflate (RFC 7692); where the server agrees, a frame with RSV1 set
 * is inflated (zlib, one raw inflate stream per connection, kept across
 * messages, so it is right with or without the server's context takeover) and
 * the inflated body is handled as any other.  Counted apart: compressed frames,
 * their bytes on the wire and inflated, and the connections that negotiated.
 * --no-inflate 1: a deflated frame is counted as a delivered body (and its wire
 * bytes) without inflating it, so the client's inflate CPU cannot slow the
 * reading; such bodies give no latency, round or inflated size.
 *
 * --assets A,B,...: every connection subscribes to these names instead (beastnet
 * serve's price stream), and with --price-base-ns B a body of serve's form
 * {"asset":"BTC","price":P,...} counts as a feed body whose publish time is
 * B + (integer part of P) * 1000 ns: benchmarks/bench_feeds_ws.py's fake
 * exchange writes its send time in microseconds since B into each price, so
 * the histogram is exchange send -> subscriber receive.  No round numbers there:
 * gaps and stale are not counted.  The first frame of an asset is the price the
 * table held at the subscription (its age, not a path): open the window after
 * "ready".  --dump FILE: also one line "P T" per such body in the window (P the
 * price's integer part, T the receive time in ns), so a harness that stamped
 * its own table writes can match each frame to its write.
 *
 * Output: "ready <n>" once every connection has its subscribe acknowledged, or
 * at T0 / after --connect-timeout-s with fewer; then one JSON line at T1.  Exit
 * 0, or 2 on bad arguments / setup failure with one line on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum {
    ST_CONNECTING,      /* connect() in progress */
    ST_UPGRADING,       /* request sent, waiting for the 101 head */
    ST_OPEN,            /* frames flowing */
    ST_CLOSED,          /* gone: counted in `failed` or `closed` */
};

#define RBUF_BYTES 65536
#define HIST_SUB 64
#define HIST_BUCKETS (64 * HIST_SUB)
#define MAX_UNIVERSE 1000

typedef struct {
    int fd;
    int state;
    int acked;                 /* got {"op":"subscribed"} */
    uint32_t rlen;             /* bytes held in rbuf */
    char *rbuf;                /* RBUF_BYTES, partial frame carried over */
    int32_t *last_round;       /* per symbol, -1 = none yet */
    int offer_deflate;         /* this connection offers permessage-deflate */
    int deflate;               /* ... and the server agreed: `inflater` is set up */
    z_stream inflater;         /* raw inflate, window kept across messages */
} conn_t;

static struct {
    uint64_t bodies;           /* feed bodies in the window */
    uint64_t bodies_total;     /* feed bodies ever */
    uint64_t other_msgs;       /* acks, errors: non-body messages */
    uint64_t bytes;            /* payload bytes in the window */
    uint64_t gaps;             /* rounds skipped, in the window */
    uint64_t stale;            /* repeated or older rounds, in the window */
    uint64_t reads;            /* read() calls that returned data, in the window */
    uint64_t closed;           /* connections the server closed or reset */
    uint64_t failed;           /* connections that never opened */
    uint64_t unparsed;         /* text messages with no "t" */
    uint64_t deflate_conns;    /* connections that negotiated permessage-deflate */
    uint64_t compressed;       /* frames with RSV1 (deflated), in the window */
    uint64_t wire_bytes;       /* ... their payload bytes as sent */
    uint64_t inflated_bytes;   /* ... and inflated */
    uint64_t inflate_errors;   /* bad deflate data or RSV1 without agreement: closed */
    uint64_t hist[HIST_BUCKETS];
} g;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int hist_index(uint64_t v) {
    if (v < HIST_SUB) return (int)v;
    int e = 63 - __builtin_clzll(v);            /* >= 6 */
    int sub = (int)((v >> (e - 6)) & (HIST_SUB - 1));
    return (e - 5) * HIST_SUB + sub;
}

static uint64_t hist_floor(int i) {
    if (i < HIST_SUB) return (uint64_t)i;
    int e = i / HIST_SUB + 5, sub = i % HIST_SUB;
    return ((uint64_t)1 << e) | ((uint64_t)sub << (e - 6));
}

static void die(const char *what) {
    fprintf(stderr, "ws_fanout_client: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Parse the digits after `key` in p[0..n); -1 when absent. */
static int64_t field_int(const char *p, size_t n, const char *key, size_t klen) {
    const char *at = memmem(p, n, key, klen);
    if (!at) return -1;
    at += klen;
    const char *end = p + n;
    int64_t v = 0;
    int any = 0;
    while (at < end && *at >= '0' && *at <= '9') { v = v * 10 + (*at - '0'); at++; any = 1; }
    return any ? v : -1;
}

static int64_t price_base_ns = -1;      /* --price-base-ns: serve's price bodies, stamped */
static FILE *dump;                      /* --dump: "price receive_ns" per such body */

static void on_message(conn_t *c, const char *p, size_t n, int64_t t_rx, int in_window,
                       int universe) {
    if (price_base_ns >= 0 && n > 10 && memcmp(p, "{\"asset\":\"", 10) == 0) {
        int64_t us = field_int(p, n, "\"price\":", 8);
        g.bodies_total++;
        if (us < 0) { g.unparsed++; return; }
        if (!in_window) return;
        g.bodies++;
        g.bytes += n;
        int64_t lat = t_rx - (price_base_ns + us * 1000);
        g.hist[hist_index(lat > 0 ? (uint64_t)lat : 0)]++;
        if (dump) fprintf(dump, "%lld %lld\n", (long long)us, (long long)t_rx);
        return;
    }
    /* A feed body: {"s":"S012","p":...,"n":...,"t":...} -- the symbol first. */
    if (n > 10 && memcmp(p, "{\"s\":\"S", 7) == 0) {
        int sym = (p[7] - '0') * 100 + (p[8] - '0') * 10 + (p[9] - '0');
        int64_t round = field_int(p, n, "\"n\":", 4);
        int64_t t_pub = field_int(p, n, "\"t\":", 4);
        g.bodies_total++;
        if (t_pub < 0 || round < 0 || sym < 0 || sym >= universe) { g.unparsed++; return; }
        int32_t last = c->last_round[sym];
        c->last_round[sym] = (int32_t)round;
        if (!in_window) return;
        g.bodies++;
        g.bytes += n;
        if (last >= 0) {
            if (round > last + 1) g.gaps += (uint64_t)(round - last - 1);
            else if (round <= last) g.stale++;
        }
        int64_t lat = t_rx - t_pub;
        g.hist[hist_index(lat > 0 ? (uint64_t)lat : 0)]++;
        return;
    }
    if (n >= 17 && memcmp(p, "{\"op\":\"subscribed", 17) == 0) c->acked = 1;
    g.other_msgs++;
}

static void close_conn(conn_t *c, int epfd, int failed) {
    if (c->state == ST_CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (failed || c->state != ST_OPEN) g.failed++; else g.closed++;
    c->state = ST_CLOSED;
}

/* Inflate one message (RFC 7692: the payload plus 00 00 ff ff) into `out`;
 * the inflated length, or -1 on bad data or an overflow. */
static long inflate_message(conn_t *c, const unsigned char *p, size_t n, char *out,
                            size_t cap) {
    static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
    z_stream *z = &c->inflater;
    z->next_out = (Bytef *)out;
    z->avail_out = (uInt)cap;
    for (int part = 0; part < 2; part++) {
        z->next_in = (Bytef *)(part ? tail : p);
        z->avail_in = (uInt)(part ? sizeof tail : n);
        while (z->avail_in) {
            int rc = inflate(z, Z_SYNC_FLUSH);
            if (rc == Z_STREAM_END) {           /* a final block: the next message starts anew */
                inflateReset(z);
                return (long)(cap - z->avail_out);
            }
            if (rc != Z_OK && rc != Z_BUF_ERROR) return -1;
            if (z->avail_out == 0) return -1;
            if (rc == Z_BUF_ERROR) break;
        }
    }
    return (long)(cap - z->avail_out);
}

/* Consume whole frames from c->rbuf; keep a partial one for the next read. */
static void parse_frames(conn_t *c, int epfd, int64_t t_rx, int in_window, int universe) {
    size_t off = 0, len = c->rlen;
    const unsigned char *b = (const unsigned char *)c->rbuf;
    while (len - off >= 2) {
        unsigned op = b[off] & 0x0f;
        uint64_t plen = b[off + 1] & 0x7f;
        size_t head = 2;
        if (b[off + 1] & 0x80) { close_conn(c, epfd, 0); return; }   /* servers never mask */
        if (plen == 126) {
            if (len - off < 4) break;
            plen = ((uint64_t)b[off + 2] << 8) | b[off + 3];
            head = 4;
        } else if (plen == 127) {
            if (len - off < 10) break;
            plen = 0;
            for (size_t i = 0; i < 8; i++) plen = (plen << 8) | b[off + 2 + i];
            head = 10;
        }
        if (plen > RBUF_BYTES - 16) { close_conn(c, epfd, 0); return; }
        if (len - off < head + plen) break;
        const char *payload = (const char *)b + off + head;
        if ((op == 0x1 || op == 0x2) && (b[off] & 0x40)) {          /* RSV1: deflated */
            static char inflated[RBUF_BYTES];
            if (c->deflate == 2) {                   /* --no-inflate: counted, not read */
                g.bodies_total++;
                if (in_window) { g.bodies++; g.compressed++; g.wire_bytes += plen; }
                off += head + plen;
                continue;
            }
            long n = c->deflate ? inflate_message(c, (const unsigned char *)payload, plen,
                                                  inflated, sizeof inflated) : -1;
            if (n < 0) { g.inflate_errors++; close_conn(c, epfd, 0); return; }
            if (in_window) {
                g.compressed++;
                g.wire_bytes += plen;
                g.inflated_bytes += (uint64_t)n;
            }
            on_message(c, inflated, (size_t)n, t_rx, in_window, universe);
        }
        else if (op == 0x1 || op == 0x2) on_message(c, payload, plen, t_rx, in_window, universe);
        else if (op == 0x8) { close_conn(c, epfd, 0); return; }
        /* pings are not sent by these servers while the feed flows; ignore */
        off += head + plen;
    }
    if (off) { memmove(c->rbuf, c->rbuf + off, len - off); c->rlen = (uint32_t)(len - off); }
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }   /* EAGAIN: tiny writes on a fresh socket */
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* Client frames must be masked; a zero mask keeps the payload readable. */
static int send_text(int fd, const char *msg, size_t n) {
    char frame[16 + 8192];
    size_t h;
    if (n > 8192) return -1;
    frame[0] = (char)0x81;
    if (n < 126) { frame[1] = (char)(0x80 | n); h = 2; }
    else { frame[1] = (char)(0x80 | 126); frame[2] = (char)(n >> 8); frame[3] = (char)n; h = 4; }
    memset(frame + h, 0, 4);
    memcpy(frame + h + 4, msg, n);
    return send_all(fd, frame, h + 4 + n);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = "/v1/stream";
    double connect_timeout_s = 60.0;
    int port = 0, nconns = 0, nsyms = 10, universe = 150, sources = 1, conn_offset = 0;
    int max_pending = 256;
    int64_t t0 = 0, t1 = 0;
    int deflate_every = 0, no_inflate = 0;
    const char *assets = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--connect-timeout-s")) connect_timeout_s = atof(v);
        else if (!strcmp(k, "--sources")) sources = atoi(v);
        else if (!strcmp(k, "--conns")) nconns = atoi(v);
        else if (!strcmp(k, "--conn-offset")) conn_offset = atoi(v);
        else if (!strcmp(k, "--symbols")) nsyms = atoi(v);
        else if (!strcmp(k, "--universe")) universe = atoi(v);
        else if (!strcmp(k, "--start-ns")) t0 = atoll(v);
        else if (!strcmp(k, "--end-ns")) t1 = atoll(v);
        else if (!strcmp(k, "--path")) path = v;
        else if (!strcmp(k, "--max-pending")) max_pending = atoi(v);
        else if (!strcmp(k, "--deflate-every")) deflate_every = atoi(v);
        else if (!strcmp(k, "--no-inflate")) no_inflate = atoi(v);
        else if (!strcmp(k, "--assets")) assets = v;
        else if (!strcmp(k, "--price-base-ns")) price_base_ns = atoll(v);
        else if (!strcmp(k, "--dump")) {
            dump = fopen(v, "w");
            if (!dump) { fprintf(stderr, "ws_fanout_client: %s: %s\n", v, strerror(errno)); return 2; }
        }
        else { fprintf(stderr, "ws_fanout_client: unknown option %s\n", k); return 2; }
    }
    if (port <= 0 || nconns <= 0 || nsyms <= 0 || universe <= 0 || universe > MAX_UNIVERSE
        || nsyms > universe || (t0 && t1 <= t0) || sources < 1 || sources > 250 || max_pending < 1
        || deflate_every < 0) {
        fprintf(stderr, "ws_fanout_client: need --port, --conns, --start-ns < --end-ns (or neither), "
                        "0 < --symbols <= --universe <= %d, 1 <= --sources <= 250\n", MAX_UNIVERSE);
        return 2;
    }
    if (assets) {                       /* the names, quoted: "A","B",... */
        size_t al = strlen(assets), q = 0;
        char *list = malloc(al * 3 + 3);
        if (!list) die("malloc");
        list[q++] = '"';
        for (size_t i = 0; i < al; i++) {
            if (assets[i] == '"' || assets[i] == '\\') {
                fprintf(stderr, "ws_fanout_client: --assets holds a quote or backslash\n");
                return 2;
            }
            if (assets[i] == ',') { list[q++] = '"'; list[q++] = ','; list[q++] = '"'; }
            else list[q++] = assets[i];
        }
        list[q++] = '"';
        list[q] = 0;
        assets = list;
    }
    struct sockaddr_in dst = {0};
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) { fprintf(stderr, "ws_fanout_client: bad host %s\n", host); return 2; }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit RLIMIT_NOFILE");
    }

    /* The subscribe message and the upgrade request, the same for every connection
     * apart from the symbol rotation. */
    static char req[1024];
    int reqlen = snprintf(req, sizeof req,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path, host, port);
    static char req_deflate[1024];
    int reqlen_deflate = snprintf(req_deflate, sizeof req_deflate,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        path, host, port);

    conn_t *conns = calloc((size_t)nconns, sizeof *conns);
    int32_t *rounds = malloc((size_t)nconns * (size_t)universe * sizeof(int32_t));
    if (!conns || !rounds) die("malloc");
    memset(rounds, 0xff, (size_t)nconns * (size_t)universe * sizeof(int32_t));
    int epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");

    int next = 0, pending = 0, open_acked = 0, said_ready = 0;
    struct epoll_event evs[512];
    char *sub = malloc(40 + (size_t)nsyms * 8 + (assets ? strlen(assets) : 0));
    if (!sub) die("malloc");

    int window_from_stdin = t0 == 0;
    if (window_from_stdin) {
        t0 = t1 = INT64_MAX;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) != 0) die("epoll_ctl ADD stdin");
    }
    int64_t connect_deadline = now_ns() + (int64_t)(connect_timeout_s * 1e9);
    for (;;) {
        int64_t t = now_ns();
        if (t >= t1) break;
        /* Open connections a bounded number at a time: a burst of 10,000 SYNs
         * overflows the listen backlog and turns into 1 s SYN retries. */
        while (next < nconns && pending < max_pending) {
            conn_t *c = &conns[next];
            c->last_round = rounds + (size_t)next * (size_t)universe;
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) die("socket");
            int one = 1;
            struct linger lg = {1, 0};     /* RST on exit: no TIME_WAIT piling up across runs */
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (sources > 1) {
                struct sockaddr_in src = {0};
                src.sin_family = AF_INET;
                src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)((next + conn_offset) % sources));
                /* Port chosen at connect() against the full 4-tuple, so each
                 * source address gets its own ephemeral range. */
                setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
                if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) die("bind source address");
            }
            if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
                close(c->fd); c->state = ST_CLOSED; g.failed++; next++; continue;
            }
            c->state = ST_CONNECTING;
            c->offer_deflate = deflate_every > 0 && (next + conn_offset) % deflate_every == 0;
            c->rbuf = malloc(RBUF_BYTES);
            if (!c->rbuf) die("malloc");
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)next};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl ADD");
            next++; pending++;
        }
        if (!said_ready && (open_acked == nconns || t >= t0 || t >= connect_deadline)) {
            printf("ready %d\n", open_acked);
            fflush(stdout);
            said_ready = 1;
        }
        int64_t wait_ms = t1 == INT64_MAX ? 100 : (t1 - t) / 1000000 + 1;
        if (!said_ready && (t0 - t) / 1000000 + 1 < wait_ms) wait_ms = (t0 - t) / 1000000 + 1;
        if (wait_ms > 100) wait_ms = 100;
        int n = epoll_wait(epfd, evs, 512, (int)wait_ms);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == UINT32_MAX) {
                /* The window, "T0 T1\n", from the harness (or EOF: end now). */
                char line[128];
                ssize_t r = read(0, line, sizeof line - 1);
                long long a = 0, b = 0;
                if (r > 0) { line[r] = 0; sscanf(line, "%lld %lld", &a, &b); }
                if (r <= 0 || b <= a) { a = now_ns(); b = a; }
                t0 = a; t1 = b;
                epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                continue;
            }
            int idx = (int)evs[i].data.u32;
            conn_t *c = &conns[idx];
            if (c->state == ST_CLOSED) continue;
            if (c->state == ST_CONNECTING) {
                int err = 0; socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) { close_conn(c, epfd, 1); pending--; continue; }
                if (!(evs[i].events & EPOLLOUT)) continue;
                if (send_all(c->fd, c->offer_deflate ? req_deflate : req,
                             (size_t)(c->offer_deflate ? reqlen_deflate : reqlen)) != 0) { close_conn(c, epfd, 1); pending--; continue; }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->state = ST_UPGRADING;
                continue;
            }
            for (;;) {
                ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF_BYTES - c->rlen);
                if (r < 0) {
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN) { if (c->state == ST_UPGRADING) pending--; open_acked -= c->acked; close_conn(c, epfd, 0); }
                    break;
                }
                if (r == 0) { if (c->state == ST_UPGRADING) pending--; open_acked -= c->acked; close_conn(c, epfd, 0); break; }
                int64_t t_rx = now_ns();
                int in_window = t_rx >= t0 && t_rx < t1;
                if (in_window) g.reads++;
                c->rlen += (uint32_t)r;
                if (c->state == ST_UPGRADING) {
                    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
                    if (!end) { if (c->rlen >= RBUF_BYTES) { close_conn(c, epfd, 1); pending--; break; } continue; }
                    if (c->rlen < 12 || memcmp(c->rbuf + 9, "101", 3) != 0) { close_conn(c, epfd, 1); pending--; break; }
                    size_t hl = (size_t)(end + 4 - c->rbuf);
                    if (c->offer_deflate && memmem(c->rbuf, hl, "permessage-deflate", 18)) {
                        if (!no_inflate && inflateInit2(&c->inflater, -15) != Z_OK)
                            die("inflateInit2");
                        c->deflate = no_inflate ? 2 : 1;
                        g.deflate_conns++;
                    }
                    memmove(c->rbuf, c->rbuf + hl, c->rlen - hl);
                    c->rlen -= (uint32_t)hl;
                    c->state = ST_OPEN;
                    pending--;
                    int start = (int)(((long)(idx + conn_offset) * nsyms) % universe);
                    size_t sl = (size_t)sprintf(sub, "{\"op\":\"subscribe\",\"symbols\":[");
                    if (assets)
                        sl += (size_t)sprintf(sub + sl, "%s", assets);
                    else
                        for (int s = 0; s < nsyms; s++)
                            sl += (size_t)sprintf(sub + sl, "%s\"S%03d\"", s ? "," : "", (start + s) % universe);
                    sl += (size_t)sprintf(sub + sl, "]}");
                    if (send_text(c->fd, sub, sl) != 0) { close_conn(c, epfd, 0); break; }
                }
                int was_acked = c->acked;
                parse_frames(c, epfd, t_rx, in_window, universe);
                if (c->state == ST_CLOSED) { if (was_acked) open_acked--; break; }
                if (!was_acked && c->acked) open_acked++;
                if ((size_t)r < RBUF_BYTES / 2) break;   /* drained, most likely: back to epoll */
            }
        }
    }
    if (!said_ready) printf("ready %d\n", open_acked);
    uint64_t open = 0;
    for (int i = 0; i < nconns; i++) open += conns[i].state == ST_OPEN;
    printf("{\"conns\":%d,\"open\":%llu,\"acked\":%d,\"failed\":%llu,\"closed\":%llu,"
           "\"bodies\":%llu,\"bodies_total\":%llu,\"other_msgs\":%llu,\"bytes\":%llu,"
           "\"gaps\":%llu,\"stale\":%llu,\"reads\":%llu,\"unparsed\":%llu,"
           "\"deflate_conns\":%llu,\"compressed\":%llu,\"wire_bytes\":%llu,"
           "\"inflated_bytes\":%llu,\"inflate_errors\":%llu,"
           "\"window_ns\":[%lld,%lld],\"hist\":[",
           nconns, (unsigned long long)open, open_acked, (unsigned long long)g.failed,
           (unsigned long long)g.closed, (unsigned long long)g.bodies,
           (unsigned long long)g.bodies_total, (unsigned long long)g.other_msgs,
           (unsigned long long)g.bytes, (unsigned long long)g.gaps, (unsigned long long)g.stale,
           (unsigned long long)g.reads, (unsigned long long)g.unparsed,
           (unsigned long long)g.deflate_conns, (unsigned long long)g.compressed,
           (unsigned long long)g.wire_bytes, (unsigned long long)g.inflated_bytes,
           (unsigned long long)g.inflate_errors,
           (long long)t0, (long long)t1);
    int first = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (!g.hist[i]) continue;
        printf("%s[%llu,%llu]", first ? "" : ",", (unsigned long long)hist_floor(i),
               (unsigned long long)g.hist[i]);
        first = 0;
    }
    printf("]}\n");
    if (dump && fclose(dump) != 0) die("--dump");
    fflush(stdout);
    return 0;
}
