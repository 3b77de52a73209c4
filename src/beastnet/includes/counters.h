/* The engines' counter structs: one per UDP reader (bn_counters) and one per
 * HTTP worker (bn_http_counters), nothing but uint64_t fields, written by
 * their own thread with bn_count (atomics.h).  beastnet/counters.py lists
 * the same fields in the same order (tests/test_counters.py checks it). */
#ifndef BEASTNET_COUNTERS_H
#define BEASTNET_COUNTERS_H

#include <stdint.h>

#include "atomics.h"

/* Per-reader counters: only the reader writes them (bn_count), stats()
 * reads them with relaxed loads.  Aligned so two readers never share a line. */
typedef struct bn_counters {
    uint64_t rx_packets;                    /* datagrams received */
    uint64_t rx_bytes;                      /* payload bytes received */
    uint64_t rx_batches;                    /* recvmmsg calls that returned >= 1 datagram */
    uint64_t tx_packets;                    /* datagrams sent */
    uint64_t tx_bytes;                      /* payload bytes sent */
    uint64_t tx_batches;                    /* sendmmsg calls that sent >= 1 datagram */
    uint64_t hits;                          /* answered from the table */
    uint64_t misses;                        /* key not in the table */
    uint64_t not_found;                     /* misses answered not_found (no handler) */
    uint64_t bad_requests;                  /* answered bad_request */
    uint64_t truncated;                     /* datagrams larger than the read slot (MSG_TRUNC) */
    uint64_t empty;                         /* zero-length datagrams */
    uint64_t queued;                        /* misses handed to the miss queue */
    uint64_t queue_drops;                   /* misses answered busy: queue full */
    uint64_t send_errors;                   /* datagrams sendmmsg refused (all causes) */
    uint64_t send_enobufs;                  /* ... of which ENOBUFS/EAGAIN (kernel out of room) */
    uint64_t recv_errors;                   /* recvmmsg failures other than EAGAIN/EINTR */
    uint64_t kernel_drops;                  /* SO_RXQ_OVFL: datagrams the kernel dropped, cumulative */
    uint64_t too_large;                     /* hits whose answer does not fit one datagram */
    uint64_t unanswered;                    /* unauthorized or malformed, left without a reply */
    uint64_t rrl_dropped;                   /* error replies withheld by response-rate limiting */
    uint64_t rrl_slipped;                   /* ... sent as the bare tag instead (the slip) */
    uint64_t stale_served;                  /* hits sent "stale":true: the control plane stalled */
    uint64_t shed_public;                   /* misses of shed-first keys the governor answered overloaded */
    uint64_t shed_partner;                  /* ... of shed-last keys (partners), at its hard bound */
    uint64_t eintr;                         /* syscalls interrupted and retried */
    uint64_t unauthorized;                  /* API key missing, unknown or revoked */
    uint64_t rate_limited;                  /* refused by the key's GCRA limit */
    uint64_t over_quota;                    /* refused by the key's monthly cap */
} __attribute__((aligned(BN_CACHE_LINE))) bn_counters;

/* Per-worker counters of the TCP/HTTP engine: only the worker writes them
 * (bn_count, or bn_store_u64 for the `active` gauge), stats() reads them with
 * relaxed loads.  Aligned so two workers never share a line. */
typedef struct bn_http_counters {
    uint64_t accepted;                      /* connections accepted and served */
    uint64_t active;                        /* gauge: connections open now */
    uint64_t closed;                        /* served connections closed (all causes) */
    uint64_t rejected;                      /* accepted past max_connections: answered 503, closed */
    uint64_t requests;                      /* request heads parsed (well-formed or not) */
    uint64_t responses_2xx;                 /* responses by status class */
    uint64_t responses_3xx;
    uint64_t responses_4xx;
    uint64_t responses_5xx;
    uint64_t hits;                          /* answered from the table */
    uint64_t misses;                        /* key under the prefix not in the table */
    uint64_t routed;                        /* /admin/, /metrics, /healthz handed to Python */
    uint64_t queued;                        /* misses + routes put on the miss queue */
    uint64_t queue_drops;                   /* ... refused: queue full, answered 503 busy */
    uint64_t replies;                       /* control-plane replies delivered to a connection */
    uint64_t replies_dropped;               /* ... whose connection had closed or been reused */
    uint64_t parse_errors;                  /* answered 400, 414 or 431 */
    uint64_t timeouts;                      /* closed by the header, idle or write timeout */
    uint64_t header_timeouts;               /* ... of which the header timeout (slowloris) */
    uint64_t write_timeouts;                /* ... of which a client not reading its answers */
    uint64_t bytes_in;                      /* bytes read from connections */
    uint64_t bytes_out;                     /* bytes written to connections */
    uint64_t partial_writes;                /* writes the kernel took in part: the rest queued */
    uint64_t read_pauses;                   /* reads paused: unsent output over the cap */
    uint64_t econnreset;                    /* ECONNRESET on read or write */
    uint64_t epipe;                         /* EPIPE on write */
    uint64_t io_errors;                     /* other read/write errors (connection closed) */
    uint64_t accept_errors;                 /* accept4 failures other than EAGAIN/EINTR */
    uint64_t accept_emfile;                 /* ... of which EMFILE/ENFILE/ENOBUFS/ENOMEM: accepts paused */
    uint64_t oom_closes;                    /* connections closed because a buffer could not grow */
    uint64_t epoll_waits;                   /* epoll_wait calls */
    uint64_t output_copied;                 /* gauge: owned bytes of queued output (copies, segment arrays) */
    uint64_t output_cap_closes;             /* connections closed: max_copied_output_bytes reached */
    uint64_t eintr;                         /* syscalls interrupted and retried */
    uint64_t unauthorized;                  /* 401: API key missing, unknown or revoked */
    uint64_t rate_limited;                  /* 429: refused by the key's GCRA limit */
    uint64_t over_quota;                    /* 429: refused by the key's monthly cap */
    uint64_t ws_upgrades;                     /* connections upgraded to WebSocket (101) */
    uint64_t ws_upgrade_refused;              /* WebSocket upgrades refused (400, 426, 429) */
    uint64_t ws_active;                       /* gauge: WebSocket connections open now */
    uint64_t ws_subscriptions;                /* gauge: subscriptions held now */
    uint64_t ws_subscriptions_refused;        /* subscriptions refused: the connection's limit */
    uint64_t ws_messages_in;                  /* client messages read (requests, echo) */
    uint64_t ws_request_errors;               /* client requests answered with an error message */
    uint64_t ws_pings;                        /* pings answered with a pong */
    uint64_t ws_publications;                 /* table publications drained from the worker's ring */
    uint64_t ws_resyncs;                      /* ring overflows: every topic re-read from the tables */
    uint64_t ws_frames_out;                   /* update frames written whole */
    uint64_t ws_superseded;                   /* publications replaced by a newer one of the same symbol before fan-out */
    uint64_t ws_conflated;                    /* pending frames replaced by a newer one before written */
    uint64_t ws_slow_closes;                  /* connections closed: no output progress for stall_timeout_s */
    uint64_t ws_reassembly_refused;           /* connections closed 1013: unfinished frames or messages past max_reassembly_bytes */
    uint64_t ws_frames_compressed;            /* ... of ws_frames_out: permessage-deflate frames */
    uint64_t ws_bytes_saved;                  /* bytes those frames were shorter than the plain ones */
    uint64_t ws_messages_inflated;            /* compressed client messages (inflated) */
    uint64_t ws_auths;                        /* streams admitted by a first-message auth */
    uint64_t ws_auth_refused;                 /* ... refused: wrong key, limits, late, not auth */
    uint64_t ws_close_normal;                 /* closes with 1000 */
    uint64_t ws_close_going_away;             /* closes with 1001 (server stopping) */
    uint64_t ws_close_protocol_error;         /* closes with 1002 */
    uint64_t ws_close_invalid_data;           /* closes with 1007 */
    uint64_t ws_close_policy;                 /* closes with 1008 (slow consumers included) */
    uint64_t ws_close_too_big;                /* closes with 1009 */
    uint64_t ws_close_other;                  /* closes with another code (1003, 1011, 1013, peer's codes) */
    uint64_t tls_handshakes;                  /* TLS handshakes completed */
    uint64_t tls_resumed;                     /* ... that resumed a session (ticket) */
    uint64_t tls_v13;                         /* ... that negotiated TLS 1.3 */
    uint64_t tls_handshake_timeouts;          /* handshakes over handshake_timeout_s */
    uint64_t tls_handshake_errors;            /* handshakes OpenSSL refused (junk, no shared cipher) */
    uint64_t tls_handshake_aborted;           /* clients gone before the handshake finished */
    uint64_t tls_plain_http;                  /* plain HTTP on the TLS port (400) */
    uint64_t tls_on_plain_port;               /* TLS ClientHellos on a plain port (400) */
    uint64_t tls_renegotiations;              /* TLS 1.2 renegotiations refused */
    uint64_t tls_errors;                      /* connections closed by an OpenSSL error */
    uint64_t tls_write_blocked;               /* SSL_write calls that waited for EPOLLOUT */
    uint64_t tls_ktls_send_on;                /* connections the kernel encrypts (kTLS) */
    uint64_t tls_ktls_send_off;               /* connections encrypted in user space */
    uint64_t tls_active;                      /* connections holding an SSL now (gauge) */
    uint64_t tls_writes;                      /* SSL_write calls that completed at once */
    uint64_t kernel_queued;                   /* gauge: bytes in the kernel send queues (SIOCOUTQ), sampled */
    uint64_t stall_resets;                    /* stalled connections closed with a reset (SO_LINGER 0) */
    uint64_t shed_public;                     /* 503 overloaded by the governor: shed-first tiers */
    uint64_t shed_partner;                    /* ... shed-last keys (partners), at the hard bound */
    uint64_t stale_served;                    /* hits sent "stale":true: the control plane stalled */
    uint64_t health_stalled;                  /* /healthz answered 503 here: the control plane stalled */
    uint64_t uring_waits;                     /* io_uring_enter calls that submitted and waited (io="uring") */
    uint64_t uring_enobufs;                   /* receives ended -ENOBUFS: the provided buffer ring was empty */
    uint64_t uring_rearms;                    /* multishot requests re-armed after they ended (no F_MORE) */
    uint64_t uring_eagain;                    /* completions with -EAGAIN (retried by re-arming) */
    uint64_t uring_sq_full;                   /* SQEs that found the submission queue full (submitted early) */
    uint64_t keyed_hits;                      /* misses answered from the keyed replies (also in hits) */
} __attribute__((aligned(BN_CACHE_LINE))) bn_http_counters;

#endif /* BEASTNET_COUNTERS_H */
