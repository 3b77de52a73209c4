# Protocol and engine limits, shared by every piece of the core.

cdef enum:
    KEY_MAX_BYTES = 64              # longest KEY (docs/protocol.md)
    TABLE_MIN_CAPACITY = 16         # slots of the smallest index
    TAG_MAX_BYTES = 16              # longest TAG, without the '@'
    APIKEY_MAX_BYTES = 64           # longest APIKEY
    APIKEY_DIGEST_BYTES = 32        # SHA-256 of an APIKEY: what the key table keeps
    KEYED_DIGEST_BYTES = 16         # a keyed reply's table key: this much of the digest, in hex,
                                    # then "/" and the request's key (http_keyed_lookup)
    TAG_PREFIX_MAX_BYTES = 18       # '@' + TAG + ' '
    CONTENT_TYPE_MAX_BYTES = 127    # longest Content-Type an entry may carry
    BODY_MAX_BYTES = 16777216       # 16 MiB: the largest body an entry may hold
    UDP_PAYLOAD_MAX_BYTES = 65507   # IPv4 UDP payload limit; bigger replies fail with EMSGSIZE
    UDP6_PAYLOAD_MAX_BYTES = 65527  # IPv6 limit (65535 - 8-byte UDP header), not for v4-mapped peers
    UDP_BODY_FITS_BYTES = 65489     # UDP_PAYLOAD_MAX_BYTES - TAG_PREFIX_MAX_BYTES: fits any tag, any family
    ADDR_MAX_BYTES = 32             # room for a sockaddr_in6 (28 bytes)
    CMSG_BUF_BYTES = 64             # control buffer for SO_RXQ_OVFL (CMSG_SPACE(4) = 20)
    QSBR_MAX_THREADS = 512          # native reader threads alive at once, process-wide
    ERROR_SCRATCH_BYTES = 64        # per-datagram room for an error body formatted per request
    SEND_TIMEOUT_MS = 50            # SO_SNDTIMEO: bounds how long stop() can wait on a full send buffer

# Character classes of the request grammar, indexed by byte value.
cdef enum:
    CHAR_KEY = 1                    # [A-Za-z0-9._:/-]
    CHAR_PRINT = 2                  # printable, not space: 0x21..0x7e

# Outcome of parsing one UDP request.
cdef enum:
    PARSE_OK = 0                    # KEY (and maybe TAG, APIKEY) found
    PARSE_BAD = 1                   # malformed: answer bad_request
    PARSE_EMPTY = 2                 # zero bytes after stripping the line ending

# Response-rate limiting of UDP error replies (_rrl.pxi).
cdef enum:
    RRL_BUCKET_BITS = 12            # log2 of the buckets per engine
    RRL_BUCKETS = 4096              # one 64-bit GCRA word each: 32 KiB per engine
    RRL_SEND = 0                    # send the error reply
    RRL_SLIP = 1                    # limited: send the bare tag prefix instead (never larger than the request)
    RRL_DROP = 2                    # limited: send nothing

# Verdict of an API-key check.
cdef enum:
    ADMIT_OK = 0                    # serve it
    ADMIT_UNAUTHORIZED = 1          # missing, unknown or revoked key
    ADMIT_RATE_LIMITED = 2          # GCRA says too soon
    ADMIT_OVER_QUOTA = 3            # monthly cap reached
    LEASE_RETRY_NS = 100000000      # Retry-After for a spent cluster lease: one renewal round
    ADMIT_VERDICTS = 4              # the ADMIT_* values above: a usage cell per verdict

# Where a request was admitted, for the usage log: (protocol, route) pairs,
# named in that order by _limits.pxi USAGE_ROUTE_NAMES.
cdef enum:
    USAGE_UDP_PRICE = 0             # a UDP datagram asking for one key
    USAGE_HTTP_PRICE = 1            # GET <prefix><KEY>
    USAGE_HTTP_SNAPSHOT = 2         # GET <prefix><batch key>?... (many keys in one answer)
    USAGE_HTTP_REPORT = 3           # GET <prefix>reports/... (the usage reports)
    USAGE_WS_STREAM = 4             # a WebSocket stream's admission
    USAGE_ROUTES = 5                # how many of the above

# The ring of unknown keys an APIKeyTable notes for the control plane (_limits.pxi).
cdef enum:
    KEYMISS_SLOTS = 1024            # digests awaiting a sweep; a power of two
    KEYMISS_FREE = 0                # slot: empty, a reader may claim it
    KEYMISS_WRITING = 1             # slot: a reader is copying its digest in
    KEYMISS_READY = 2               # slot: a digest the control plane has not swept yet
# The HTTP engine's io_uring workers (_http_uring.pxi).
cdef enum:
    URING_ENTRIES = 4096            # submission queue entries (completion queue: 4x)
    URING_NBUFS = 1024              # provided buffers per worker, a power of two
    URING_BUF_BYTES = 4096          # bytes per provided buffer
    URING_CQES_MAX = 256            # completions handled per reap
    URING_SENDS_MAX = 1024          # sends deferred to the next io_uring_enter, per set (two sets)
    URING_SEND_IOV_MAX = 8192       # their iovecs, per set
# TCP/HTTP engine (_http.pxi).
cdef enum:
    HTTP_SCRATCH_BYTES = 65536      # per-worker read buffer; a connection's own buffer only holds leftovers
    HTTP_READ_MIN_BYTES = 4096      # least room offered to a read into a connection's own buffer
    WS_IN_UNCHARGED_BYTES = 16384   # a WebSocket input buffer's share not counted against the reassembly cap
    HTTP_IOV_MAX = 510              # iovecs per gather write (3-4 a response; Linux allows 1024)
    HTTP_EVENTS_MAX = 256           # epoll events per epoll_wait
    HTTP_ACCEPT_BATCH = 64          # accept4 calls per readable listening socket
    HTTP_METHOD_MAX_BYTES = 15      # longest method token; longer is a 400
    HTTP_TARGET_MAX_BYTES = 255     # longest target a miss/route carries to Python
    HTTP_PREFIX_MAX_BYTES = 64      # longest key prefix ("/v1/")
    HTTP_TAIL_MAX_BYTES = 96        # "Date: ...\r\n" + "Connection: keep-alive\r\n" + "\r\n"
    HTTP_TICK_MS = 100              # timer granularity: timeouts, Date refresh, accept resume
    HTTP_DRAIN_TICK_MS = 10         # timer granularity while stop() drains connections
    HTTP_ACCEPT_PAUSE_MS = 100      # accepting pauses this long after EMFILE/ENFILE
    HTTP_OUTQ_MIN_SEGS = 16         # segments first allocated for a connection's output queue
    HTTP_WRITE_MIN_PROGRESS_BYTES = 1024    # bytes a peer must accept per write_timeout_s window
    HTTP_LINGER_SLOTS = 64          # per worker: sockets refused at max_connections, read until closed
    HTTP_LINGER_MS = 2000           # ... for at most this long
    HTTP_ROUTES_MAX = 16            # extra exact paths a server may route to the control plane
    TLS_RECORD_BYTES = 16384        # largest TLS record plaintext: one staged SSL_write, least read room
    CORS_ORIGINS_MAX = 16           # allowed origins a server may list (beyond: use "*")
    CORS_ORIGIN_MAX_BYTES = 128     # longest allowed origin, "https://host:port"
    CORS_SEG_MAX_BYTES = 192        # one pre-built CORS header segment
    HTTP_KQ_SAMPLE_MS = 1000        # how often a worker sums its connections' kernel send queues
    BATCH_SYMBOLS_MAX = 64          # symbols one batch query may ask for (beyond: 400)
    HEALTH_OUT_BYTES = 256          # the native /healthz 503 of a stalled control plane, all
    BATCH_OUT_BYTES = 5120          # a batch answer's formatted head, or its 404 naming the unknown

# CORS header segments a worker pre-builds (bn_hworker.cors_segs); a
# connection's `cors` is one of these plus 1, 0 = no CORS header.
cdef enum:
    CORS_SEG_VARY = 0               # "Vary: Origin" alone: a listed-origins server, origin not listed
    CORS_SEG_ANY = 1                # "Access-Control-Allow-Origin: *"
    CORS_SEG_ORIGIN0 = 2            # + i: allowed origin i echoed, with "Vary: Origin"

# Response tails: what a worker appends to a pre-built head.
cdef enum:
    TAIL_KEEP = 0                   # Date, blank line (HTTP/1.1 keep-alive is the default)
    TAIL_KEEP10 = 1                 # Date, "Connection: keep-alive", blank line (HTTP/1.0 client)
    TAIL_CLOSE = 2                  # Date, "Connection: close", blank line

# Connection flags.
cdef enum:
    CONN_WAITING = 1                # a miss/route is with the control plane; later requests wait
    CONN_CLOSE_AFTER = 2            # close once the output is flushed; read no more
    CONN_EOF = 4                    # the peer shut its side; finish, then close
    CONN_DEAD = 8                   # an I/O error or OOM: close at the end of this step
    CONN_WAIT_HEAD = 16             # the waiting request was HEAD: reply without a body
    CONN_TLS_HANDSHAKE = 32         # TLS: the handshake is not finished
    CONN_TLS_QUEUED = 64            # TLS: on the worker's list of sessions with records read ahead (kept across close)
    CONN_TLS_RENEG = 128            # TLS: the client asked to renegotiate (refused; counted once read returns)
    CONN_TLS_READ_WANTS_WRITE = 256 # TLS: SSL_read needs the socket writable before it can go on
    CONN_SEND_INFLIGHT = 512        # io_uring: a send is queued for the next io_uring_enter; later output waits behind it

# Methods the engine tells apart.
cdef enum:
    METHOD_GET = 1                  # GET
    METHOD_HEAD = 2                 # HEAD
    METHOD_OTHER = 3                # any other token: 405 under the prefix, passed on for routes
    METHOD_OPTIONS = 4              # OPTIONS: a CORS preflight under the prefix (else as OTHER)

# Where the bytes of a queued response piece live (bn_hworker.iov_kind).
cdef enum:
    SEG_STATIC = 0                  # pre-built, lives as long as the process: pointed to
    SEG_ENTRY = 1                   # in a table entry: a reference is taken if it must wait
    SEG_COPY = 2                    # rewritten after this step (the Date tail): copied if it must wait

# Pre-built error responses, indexed by these values.
cdef enum:
    ERR_400 = 0                     # bad_request: malformed request
    ERR_401 = 1                     # unauthorized: no API key where one is required
    ERR_404 = 2                     # not_found
    ERR_405 = 3                     # method_not_allowed (+ Allow: GET, HEAD)
    ERR_413 = 4                     # payload_too_large: a body where none is allowed
    ERR_414 = 5                     # uri_too_long
    ERR_431 = 6                     # headers_too_large
    ERR_503 = 7                     # busy: miss queue full (+ Retry-After: 1)
    ERR_503_CONNS = 8               # busy: over max_connections (+ Connection: close)
    ERR_429_QUOTA = 9               # over_quota: the key's monthly cap is reached
    ERR_429_1S = 10                 # rate_limited + Retry-After: 1; ERR_429_1S + n - 1 says n s
    RETRY_AFTER_MAX_S = 60          # longer waits are announced as 60 s (the client asks again)
    ERR_426 = 70                    # upgrade_required: a WebSocket version other than 13
    ERR_429_CONNS = 71              # connection_limit: the key holds its WebSocket connections
    ERR_403 = 72                    # forbidden: an API key not allowed the WebSocket feed
    ERR_503_OVERLOADED = 73         # overloaded: shed by the governor (+ Retry-After: 1)
    ERR_COUNT = 74                  # one past the last

# WebSocket (RFC 6455) opcodes, close codes and limits (_ws.pxi).
cdef enum:
    WS_OP_CONTINUATION = 0x0        # continuation of a fragmented message
    WS_OP_TEXT = 0x1                # text message: UTF-8
    WS_OP_BINARY = 0x2              # binary message
    WS_OP_CLOSE = 0x8               # close: [2-byte code [UTF-8 reason]]
    WS_OP_PING = 0x9                # ping: answered with a pong carrying its payload
    WS_OP_PONG = 0xA                # pong
    WS_CONTROL_MAX_BYTES = 125      # largest control-frame payload
    WS_CLIENT_HEAD_MAX_BYTES = 14   # 2 + 8 (64-bit length) + 4 (mask)
    WS_SERVER_HEAD_MAX_BYTES = 10   # 2 + 8: server frames are never masked
    WS_ACCEPT_BYTES = 28            # base64 of a SHA-1 digest
    WS_RSV1 = 0x40                  # frame head bit: "Per-Message Compressed" (RFC 7692)

cdef enum:
    WS_CLOSE_NORMAL = 1000          # normal closure
    WS_CLOSE_GOING_AWAY = 1001      # server stopping
    WS_CLOSE_PROTOCOL_ERROR = 1002  # a framing rule broken
    WS_CLOSE_UNSUPPORTED = 1003     # a data type the endpoint does not take
    WS_CLOSE_NO_STATUS = 1005       # a close frame without a code (never sent)
    WS_CLOSE_INVALID_DATA = 1007    # invalid UTF-8 in a text message or close reason
    WS_CLOSE_POLICY = 1008          # policy violation (slow consumer past its bound, auth)
    WS_CLOSE_TOO_BIG = 1009         # a frame or message over the configured limit
    WS_CLOSE_INTERNAL = 1011        # the server failed (out of memory)
    WS_CLOSE_TRY_AGAIN = 1013       # try again later: overloaded

# What ws_next() found in a connection's input.
cdef enum:
    WS_EV_NEED_MORE = 0             # no complete frame buffered yet
    WS_EV_MESSAGE = 1               # a whole text or binary message: data, len, opcode
    WS_EV_PING = 2                  # a ping: its payload is the pong's
    WS_EV_PONG = 3                  # a pong: nothing to do but count it
    WS_EV_CLOSE = 4                 # the peer's close: code (1005 when none), reason
    WS_EV_ERROR = 5                 # a protocol error: close with `code`
    WS_EV_FRAGMENT = 6              # a data fragment was stored; the message is not complete

# A WebSocket client's request (_ws_msg.pxi).
cdef enum:
    WS_REQ_BAD = 0                  # not a request we take: see the WS_REQERR_* reason
    WS_REQ_SUBSCRIBE = 1            # {"op":"subscribe","symbols":[...]}
    WS_REQ_UNSUBSCRIBE = 2          # {"op":"unsubscribe","symbols":[...]}
    WS_REQ_SNAPSHOT = 3             # {"op":"snapshot"[,"symbols":[...]]}: current bodies now
    WS_REQ_AUTH = 4                 # {"op":"auth","api_key":"..."}: first-message auth

cdef enum:
    WS_REQERR_JSON = 1              # not one JSON object (or "symbols" not an array)
    WS_REQERR_OP = 2                # "op" missing, not a string, or not one we know
    WS_REQERR_SYMBOLS = 3           # subscribe/unsubscribe without "symbols"
    WS_REQERR_TOO_MANY = 4          # more symbols than one request may carry
    WS_REQERR_NO_KEY = 5            # auth without a string "api_key"

# A stream's API key, beyond the ADMIT_* verdicts (_ws_conn.pxi ws_key_check).
cdef enum:
    WS_KEY_FORBIDDEN = 10           # the key may not open streams (ws_denied)
    WS_KEY_CONNS = 11               # the key holds its ws_max_connections

# WebSocket push (_ws_ring.pxi, _ws_topics.pxi, _ws_conn.pxi).
cdef enum:
    WS_HUBS_MAX = 8                 # engines one table can publish to at once
    WS_CTL_MAX_BYTES = 1048576      # a connection's own unsent bytes (acks, pongs) before 1013
    WS_RING_SLOTS = 8192            # publications a worker can lag before it resyncs

cdef int64_t WS_CLOSE_WAIT_NS = 2000000000     # our close frame sent: the peer's may take this long

# A WebSocket connection's flags.
cdef enum:
    WSC_DIRTY = 1                   # on the worker's list of connections to flush
    WSC_CLOSING = 2                 # our close frame is queued: send nothing else
    WSC_PEER_CLOSED = 4             # the peer's close (or an error): read nothing more
    WSC_SHUT = 8                    # our side shut down after a normal close
    WSC_ECHO = 16                   # the echo endpoint: messages come back as they are
    WSC_DEFLATE = 32                # permessage-deflate negotiated (_ws_deflate.pxi)
    WSC_AUTH_WAIT = 64              # upgraded without a key: only {"op":"auth"} is taken

# Webhook push over UDP (_push.pxi).
cdef enum:
    PUSH_BATCH_MAX = 1024           # datagrams per sendmmsg (the kernel's UIO_MAXIOV)

# The governor's limit algorithm (_governor.pxi); bounds and target come from the profile.
cdef enum:
    GOV_WINDOW_MS = 100             # latencies averaged per window (one limit update each)
    GOV_MIN_SAMPLES = 10            # a due window waits for this many (up to 10 windows' time)
    GOV_LONG_WINDOWS = 20           # the long-term latency's EWMA spans about this many windows
    GOV_SMOOTHING_PCT = 20          # a window moves the limit this far (%) toward its new value
    GOV_INITIAL_LIMIT = 20          # where a switched-on governor starts (Gradient2's default)
