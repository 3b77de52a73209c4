# The WebSocket load generator: native threads, each with an epoll over its
# share of the connections.  A connection is a client of any RFC 6455 server:
# non-blocking connect, the opening handshake (101 and the accept key
# checked), then its subscribe messages as masked text frames, and from then
# on it only reads.  Pings are answered with pongs, a close frame is answered
# with a close frame, fragmented messages are reassembled logically (counted
# once, at the FIN frame), and a frame larger than the read buffer is parsed
# from its prefix and the rest skipped without a copy.
#
# What a message measures, from its first bytes (only the first fragment):
#   - latency: the integer (or decimal) after `"<ts_key>":`, a time since the
#     epoch in the configured unit, against CLOCK_REALTIME read once per
#     recv() batch.  Both ends must use CLOCK_REALTIME; across hosts the
#     clocks' offset is in the number (same host: none).  A stamp from the
#     future is counted as clock skew, never recorded as a latency.
#     With a JSON path (`data.ts`, `$.data[0].ts`) instead of a key, the
#     number is the one at that path: a scanner walks the bytes once,
#     tracking the nesting depth, string bounds and, along the path only,
#     key names and array indexes (no parse tree, no allocation).
#   - sequence: the integer after `"<seq_key>":` (or at its path), per connection.  A jump
#     forward by k+1 is k lost messages (one gap event); going back is
#     counted apart.  A reconnect starts a new stream (the outage is timed,
#     not guessed as losses).
# Every byte read counts towards the connection's stall: the longest time an
# open connection went without data inside the measured window.
#
# Probes (request/answer round trips), when the run has probe steps: after
# the upgrade a connection sends step 0's message, and the first message
# whose first bytes hold that step's match pattern (any message if the
# pattern is empty) is its answer: CLOCK_REALTIME at the answer's recv()
# minus CLOCK_REALTIME just before the request was queued is the round trip.
# Then the next step goes out (the steps cycle: subscribe, unsubscribe, ...).
# One request in flight per connection; no answer within probe_timeout is
# counted and the next step sent (a late answer then matches the next step).
# An answer holding the refusal pattern counts as refused.  An upgrade
# answered 403 counts as forbidden, and every refused upgrade whose answer
# arrived is timed (upgrade request to answer).
#
# permessage-deflate (RFC 7692), when the upgrade offered it and the 101
# names it: messages with RSV1 are inflated with zlib, one stream per
# connection kept across messages (context takeover; keeping the window
# is harmless when the server resets its own), and the stamp and sequence
# are read from the inflated bytes.  The wall time around each inflate()
# call is added up: the client's cost of the compression.
#
# A connection that ends for any reason (refused, timed out, reset, closed,
# close frame, missed pong) is retried after a full-jitter exponential
# backoff: a delay drawn uniformly from [0, min(cap, base * 2^attempt)], the
# attempt count reset by a successful upgrade.
#
# wss://: after TCP connects, a non-blocking TLS handshake (state
# WC_HANDSHAKE, timed apart), then the upgrade as over ws://.  Only the byte
# transport changes: tcp_send / tcp_recv go through OpenSSL (_tcp.pxi, _tls.pxi).

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

cdef enum:
    WS_TICK_NS = 10000000           # 10 ms: connect, timeout and ping scan over the connections
    WS_READS_PER_EVENT = 4          # recv calls per readiness event
    WS_CONTROL_ROOM = 512           # out-buffer room kept for pongs, pings and a close
    WS_KEY_MAX = 64                 # bytes of a `"key":` pattern
    WS_PATH_MAX = 8                 # segments of a JSON path

# Connection states.
cdef enum:
    WC_IDLE = 0                     # no socket: connect when retry_ns has passed
    WC_CONNECTING = 1               # non-blocking connect in progress (EPOLLOUT)
    WC_UPGRADING = 2                # upgrade request written, waiting for the 101
    WC_OPEN = 3                     # frames flow
    WC_HANDSHAKE = 4                # wss://: TCP up, TLS handshake in progress

# Frame opcodes (RFC 6455 5.2).
cdef enum:
    WS_OP_CONT = 0
    WS_OP_TEXT = 1
    WS_OP_BINARY = 2
    WS_OP_CLOSE = 8
    WS_OP_PING = 9
    WS_OP_PONG = 10

# How a connection ended (which counter it feeds).
cdef enum:
    WE_CLEAN = 0                    # the run ended
    WE_REFUSED = 1                  # ECONNREFUSED on connect
    WE_CONNECT_TIMEOUT = 2          # connect not done within connect_timeout
    WE_CONNECT_OTHER = 3            # other connect failure
    WE_UPGRADE_REFUSED = 4          # answer not 101 or wrong accept key
    WE_UPGRADE_TIMEOUT = 5          # no 101 within connect_timeout of the connect
    WE_RESET = 6                    # ECONNRESET / EPIPE
    WE_CLOSED = 7                   # the server closed TCP without a close frame
    WE_CLOSE_FRAME = 8              # the server sent a close frame
    WE_PROTOCOL = 9                 # masked server frame, bad opcode, bad control frame
    WE_HEARTBEAT = 10               # our ping got no pong in time
    WE_IO = 11                      # other read/write errors
    WE_TLS_VERIFY = 12              # wss://: the certificate did not verify
    WE_TLS_NOT_TLS = 13             # ... the server answered in something not TLS
    WE_TLS_HANDSHAKE = 14           # ... alert, protocol error or close in the handshake
    WE_TLS_TIMEOUT = 15             # ... handshake longer than connect_timeout
    WE_TLS_PROTOCOL = 16            # ... TLS error after the handshake

# A WebSocket thread's histograms (0 and 1 are the base's latency pair).
cdef enum:
    WS_HIST_UPGRADE = 2             # TCP connected to 101 received
    WS_HIST_CONNECT = 3             # connect() to writable
    WS_HIST_BACKOFF = 4             # each drawn reconnect delay
    WS_HIST_OUTAGE = 5              # connection lost to the next 101 (reconnect time)
    WS_HIST_STALL = 6               # each connection's longest stall in the window
    WS_HIST_TLS = 7                 # wss://: TCP connected to TLS handshake done
    WS_HIST_PROBE = 8               # request queued to its answer received (probes)
    WS_HIST_REFUSED = 9             # upgrade request to a refusing answer (not 101)
    WS_NHISTS = 10


# Per WebSocket thread; written only by its thread (bn_count), read with
# relaxed loads.  "m_" counts the measured window (by receive time), "t_" the
# whole run (the timeline).  WS_COUNTER_NAMES lists the fields in order.
cdef struct bn_lg_ws_counters:
    uint64_t m_sent                     # client data frames (subscribe messages) written in the window
    uint64_t m_received                 # messages received in the window
    uint64_t m_lost                     # sequence numbers skipped in the window
    uint64_t m_error_replies            # messages whose first bytes hold `"error"`
    uint64_t m_unsent                   # always 0 (the mode has no schedule)
    uint64_t t_sent                     # every client data frame
    uint64_t t_received                 # every message
    uint64_t t_lost                     # every skipped sequence number
    uint64_t m_bytes                    # payload bytes of the window's messages
    uint64_t bytes_in                   # every byte read, handshakes and headers included
    uint64_t bytes_out                  # every byte written
    uint64_t m_no_timestamp             # window messages without a parsable stamp
    uint64_t m_clock_skew               # ... stamped later than our receive time
    uint64_t m_gap_events               # forward jumps of the sequence
    uint64_t m_seq_backwards            # sequence numbers not above the last one
    uint64_t m_fragments                # continuation frames
    uint64_t connect_attempts           # connect() calls
    uint64_t connects                   # TCP connections established
    uint64_t upgrades                   # 101 answers accepted
    uint64_t reconnects                 # upgrades of a connection slot after its first
    uint64_t err_connect_refused
    uint64_t err_connect_timeout
    uint64_t err_connect_other
    uint64_t err_upgrade_refused
    uint64_t err_upgrade_timeout
    uint64_t err_reset
    uint64_t err_closed
    uint64_t close_frames               # close frames from the server
    uint64_t err_protocol
    uint64_t heartbeat_failures
    uint64_t err_io
    uint64_t pings_received
    uint64_t pongs_sent
    uint64_t pings_sent
    uint64_t pongs_received
    uint64_t eintr
    uint64_t waits
    uint64_t tls_handshakes             # wss://: handshakes completed
    uint64_t tls_resumed                # ... that resumed a session
    uint64_t err_tls_verify
    uint64_t err_tls_not_tls
    uint64_t err_tls_handshake
    uint64_t err_tls_timeout
    uint64_t err_tls_protocol
    uint64_t m_probes_sent              # probe requests queued in the window
    uint64_t m_probe_answers            # ... answers matched in the window
    uint64_t m_probe_refused            # ... of which hold the refusal pattern
    uint64_t m_probe_timeouts           # probes without an answer within probe_timeout
    uint64_t m_upgrades_refused_timed   # refusing upgrade answers received (timed)
    uint64_t m_upgrade_forbidden        # ... of which 403
    uint64_t deflate_negotiated         # 101 answers naming permessage-deflate (when offered)
    uint64_t deflate_missing            # 101 answers without it (when offered)
    uint64_t m_compressed               # window messages with RSV1 (inflated)
    uint64_t m_deflated_bytes           # ... their payload bytes on the wire
    uint64_t m_inflated_bytes           # ... their bytes once inflated
    uint64_t m_inflate_ns               # ... wall time in inflate()
    uint64_t inflate_errors             # corrupt compressed data (the connection is closed)

WS_COUNTER_NAMES = (
    "m_sent", "m_received", "m_lost", "m_error_replies", "m_unsent", "t_sent", "t_received",
    "t_lost", "m_bytes", "bytes_in", "bytes_out", "m_no_timestamp", "m_clock_skew",
    "m_gap_events", "m_seq_backwards", "m_fragments", "connect_attempts", "connects",
    "upgrades", "reconnects", "err_connect_refused", "err_connect_timeout",
    "err_connect_other", "err_upgrade_refused", "err_upgrade_timeout", "err_reset",
    "err_closed", "close_frames", "err_protocol", "heartbeat_failures", "err_io",
    "pings_received", "pongs_sent", "pings_sent", "pongs_received", "eintr", "waits",
    "tls_handshakes", "tls_resumed", "err_tls_verify", "err_tls_not_tls", "err_tls_handshake",
    "err_tls_timeout", "err_tls_protocol",
    "m_probes_sent", "m_probe_answers", "m_probe_refused", "m_probe_timeouts",
    "m_upgrades_refused_timed", "m_upgrade_forbidden", "deflate_negotiated", "deflate_missing",
    "m_compressed", "m_deflated_bytes", "m_inflated_bytes", "m_inflate_ns", "inflate_errors")


# A JSON path: key names (raw bytes, compared without unescaping) and array
# indexes, from the root.
cdef struct bn_json_path:
    uint32_t n                          # segments, 0 = no path
    uint32_t is_index[WS_PATH_MAX]      # 1: an array index, 0: an object key
    uint32_t index[WS_PATH_MAX]
    uint32_t key_off[WS_PATH_MAX]       # the key's bytes in `keys`
    uint32_t key_len[WS_PATH_MAX]
    char keys[WS_KEY_MAX]


cdef struct bn_wsconn:
    lg_tcp s                            # socket, TLS session, output queue (out_cap bytes; _tcp.pxi)
    int state                           # WC_*
    uint32_t ever_open                  # an upgrade succeeded on this slot before
    uint32_t attempt                    # consecutive failures: the backoff exponent
    uint32_t sub_first                  # first subscribe payload of this connection
    uint32_t sub_count                  # ... and how many
    uint32_t in_len                     # bytes in `inb`
    uint32_t in_off                     # ... of which parsed
    uint32_t msg_open                   # inside a fragmented message
    uint32_t skip_fin                   # the frame being skipped ends its message
    uint32_t msg_has_seq
    uint32_t msg_error                  # the message being received holds `"error"` near its start
    uint32_t has_seq                    # last_seq is valid
    uint32_t probe_step                 # the probe step in flight (or next)
    uint32_t msg_probe                  # the message being received: 0, 1 answer, 2 refusing answer
    uint32_t deflate                    # permessage-deflate negotiated on this connection
    uint32_t msg_compressed             # the message being received has RSV1
    uint32_t msg_scan                   # its first inflated bytes are still to be read
    uint64_t skip_remaining             # payload bytes of an oversize frame still to discard
    uint64_t upgrade_start_ns
    uint64_t retry_ns                   # no connect before this
    uint64_t down_ns                    # when the last open connection ended, 0 = never open
    uint64_t last_data_ns               # last byte read (open connection)
    uint64_t longest_stall_ns           # in the measured window, over every life of the slot
    uint64_t ping_sent_ns               # our ping awaiting its pong, 0 = none
    uint64_t next_ping_ns
    uint64_t last_seq
    uint64_t msg_ts_ns                  # stamp of the message being received, 0 = none
    uint64_t msg_seq
    uint64_t msg_bytes                  # payload bytes so far of the message being received
    uint64_t msg_inflated               # ... once inflated (compressed messages)
    uint64_t msg_inflate_ns             # ... wall time spent inflating it
    uint64_t probe_sent_ns              # CLOCK_REALTIME the probe was queued, 0 = none in flight
    z_stream* z                         # inflate state, allocated at the first negotiation
    char* inb                           # in_cap bytes

cdef struct bn_ws_thread:
    bn_lg_base b                        # first: what every load loop keeps (see _run.pxi)
    int family                          # AF_INET / AF_INET6
    int measuring                       # past the warm-up
    socklen_t addr_len
    char addr[LG_ADDR_MAX_BYTES]        # the server's sockaddr
    uint32_t nconns
    uint32_t pending                    # connections connecting or upgrading
    uint32_t max_pending                # at most this many at once (listen backlogs are finite)
    uint32_t out_cap
    uint32_t in_cap
    uint32_t ts_key_len
    uint32_t seq_key_len
    uint32_t accept_len
    char ts_key[WS_KEY_MAX]             # `"t":`
    char seq_key[WS_KEY_MAX]            # `"seq":`
    bn_json_path ts_path                # instead of ts_key when n > 0
    bn_json_path seq_path               # instead of seq_key when n > 0
    char accept[32]                     # the expected Sec-WebSocket-Accept value
    uint64_t ts_unit_ns                 # ns per unit of the stamp (1, 1000, 1000000, 1e9)
    uint64_t connect_timeout_ns         # connect, and then the upgrade, each fail after this
    uint64_t backoff_base_ns
    uint64_t backoff_cap_ns
    uint64_t ping_interval_ns           # 0 = we send no pings
    uint64_t pong_timeout_ns
    uint64_t rt_ns                      # CLOCK_REALTIME of the current recv batch
    const char* upgrade                 # the upgrade request
    uint32_t upgrade_len
    const char** sub_data               # every subscribe payload
    uint32_t* sub_len
    bn_wsconn* conns
    bn_lg_ws_counters* counters
    uint32_t nprobes                    # probe steps, 0 = no probes
    uint32_t refusal_len
    const char** probe_data             # each step's request
    uint32_t* probe_len
    const char** match_data             # each step's answer pattern ("" = any message)
    uint32_t* match_len
    const char* refusal                 # an answer holding this is a refusal ("" = none)
    uint64_t probe_timeout_ns
    int deflate_offered                 # the upgrade offers permessage-deflate
    uint32_t zcap
    char* zbuf                          # zcap bytes: inflate output (scratch)
    bn_tls_client tls                   # wss://: the run's SSL_CTX and this thread's session


cdef inline uint64_t ws_realtime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef void ws_update_events(bn_ws_thread* t, bn_wsconn* c) noexcept nogil:
    cdef uint32_t want = 0
    if c.state == WC_CONNECTING:
        want = EPOLLOUT
    elif c.state == WC_HANDSHAKE:
        want = c.s.tls_want
    elif c.state != WC_IDLE:
        want = EPOLLIN | c.s.tls_want
        if c.s.out_off < c.s.out_len:
            want |= EPOLLOUT
    tcp_want(&c.s, t.b.epfd, want, <uint32_t>(c - t.conns))


cdef void ws_note_gap(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Close the current data gap of an open connection at `now`, clipped to
    the measured window."""
    cdef uint64_t start = c.last_data_ns if c.last_data_ns > t.b.measure_ns else t.b.measure_ns
    cdef uint64_t end = now if now < t.b.end_ns else t.b.end_ns
    if end > start and end - start > c.longest_stall_ns:
        c.longest_stall_ns = end - start


cdef void ws_close(bn_ws_thread* t, bn_wsconn* c, int how, uint64_t now) noexcept nogil:
    """End `c`, count why, and draw its reconnect delay (full jitter)."""
    cdef uint64_t ceiling
    cdef uint64_t delay
    cdef uint32_t shift
    cdef bn_lg_ws_counters* k = t.counters
    if c.state == WC_CONNECTING or c.state == WC_UPGRADING or c.state == WC_HANDSHAKE:
        t.pending -= 1
    if c.state == WC_OPEN:
        ws_note_gap(t, c, now)
        c.down_ns = now
    if how == WE_REFUSED:
        bn_count(&k.err_connect_refused, 1)
    elif how == WE_CONNECT_TIMEOUT:
        bn_count(&k.err_connect_timeout, 1)
    elif how == WE_CONNECT_OTHER:
        bn_count(&k.err_connect_other, 1)
    elif how == WE_UPGRADE_REFUSED:
        bn_count(&k.err_upgrade_refused, 1)
    elif how == WE_UPGRADE_TIMEOUT:
        bn_count(&k.err_upgrade_timeout, 1)
    elif how == WE_RESET:
        bn_count(&k.err_reset, 1)
    elif how == WE_CLOSED:
        bn_count(&k.err_closed, 1)
    elif how == WE_PROTOCOL:
        bn_count(&k.err_protocol, 1)
    elif how == WE_HEARTBEAT:
        bn_count(&k.heartbeat_failures, 1)
    elif how == WE_IO:
        bn_count(&k.err_io, 1)
    elif how >= WE_TLS_VERIFY:
        ws_count_tls_error(k, how)
    tcp_close(&c.s, how < WE_TLS_VERIFY)
    c.state = WC_IDLE
    c.in_len = 0
    c.in_off = 0
    c.msg_open = 0
    c.skip_remaining = 0
    c.has_seq = 0
    c.ping_sent_ns = 0
    c.probe_sent_ns = 0
    c.msg_probe = 0
    c.deflate = 0
    if how == WE_CLEAN:
        return
    shift = c.attempt if c.attempt < 30 else 30
    ceiling = t.backoff_base_ns << shift
    if ceiling > t.backoff_cap_ns or ceiling < t.backoff_base_ns:
        ceiling = t.backoff_cap_ns
    delay = bn_rand_u64(&t.b.rng) % (ceiling + 1)
    hist_record(&t.b.hists[WS_HIST_BACKOFF], delay)
    c.attempt += 1
    c.retry_ns = now + delay


cdef void ws_count_tls_error(bn_lg_ws_counters* k, int how) noexcept nogil:
    if how == WE_TLS_VERIFY:
        bn_count(&k.err_tls_verify, 1)
    elif how == WE_TLS_NOT_TLS:
        bn_count(&k.err_tls_not_tls, 1)
    elif how == WE_TLS_TIMEOUT:
        bn_count(&k.err_tls_timeout, 1)
    elif how == WE_TLS_PROTOCOL:
        bn_count(&k.err_tls_protocol, 1)
    else:
        bn_count(&k.err_tls_handshake, 1)


cdef int ws_io_end(int err) noexcept nogil:
    """How a connection ends after a failed read or write with `err`."""
    if err == EPIPE or err == ECONNRESET:
        return WE_RESET
    return WE_TLS_PROTOCOL if err == EPROTO else WE_IO


cdef int ws_flush(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Write what `c` has queued; 0, or -1 if the connection broke (closed)."""
    cdef int err = tcp_flush(&c.s, &t.counters.bytes_out, &t.counters.eintr)
    if err:
        ws_close(t, c, ws_io_end(err), now)
        return -1
    ws_update_events(t, c)
    return 0


cdef int ws_queue_frame(bn_ws_thread* t, bn_wsconn* c, int opcode, const char* data,
                        uint32_t n) noexcept nogil:
    """Queue one masked client frame (RFC 6455 5.3: every client frame is
    masked with a fresh key); -1 when `out` has no room (the frame is dropped)."""
    cdef uint32_t head = 6 if n < 126 else (8 if n < 65536 else 14)
    cdef uint64_t r = bn_rand_u64(&t.b.rng)
    cdef unsigned char mask[4]
    cdef unsigned char* o
    cdef uint32_t i
    if c.s.out_off > 0:                   # keep the unwritten bytes at the front
        memmove(c.s.out, c.s.out + c.s.out_off, c.s.out_len - c.s.out_off)
        c.s.out_len -= c.s.out_off
        c.s.out_off = 0
    if c.s.out_len + head + n > t.out_cap:
        return -1
    o = <unsigned char*>c.s.out + c.s.out_len
    o[0] = <unsigned char>(0x80 | opcode)          # FIN, opcode
    if n < 126:
        o[1] = <unsigned char>(0x80 | n)            # MASK, payload length
        o += 2
    elif n < 65536:
        o[1] = 0x80 | 126                           # MASK, 16-bit extended length
        o[2] = <unsigned char>(n >> 8)
        o[3] = <unsigned char>n
        o += 4
    else:
        o[1] = 0x80 | 127                           # MASK, 64-bit extended length
        memset(o + 2, 0, 4)
        o[6] = <unsigned char>(n >> 24)
        o[7] = <unsigned char>(n >> 16)
        o[8] = <unsigned char>(n >> 8)
        o[9] = <unsigned char>n
        o += 10
    mask[0] = <unsigned char>r
    mask[1] = <unsigned char>(r >> 8)
    mask[2] = <unsigned char>(r >> 16)
    mask[3] = <unsigned char>(r >> 24)
    memcpy(o, mask, 4)                              # Masking-key
    o += 4
    for i in range(n):
        o[i] = (<const unsigned char*>data)[i] ^ mask[i & 3]
    c.s.out_len += head + n
    return 0


cdef void ws_connect(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    cdef int rc
    bn_count(&t.counters.connect_attempts, 1)
    rc = tcp_open(&c.s, t.family, t.addr, t.addr_len, now)
    if rc < 0:
        ws_close(t, c, WE_REFUSED if rc == -ECONNREFUSED else WE_CONNECT_OTHER, now)
        return
    c.state = WC_CONNECTING
    t.pending += 1
    if rc == TCP_OPEN_DONE:
        ws_connected(t, c, bn_now_ns())
    else:
        ws_update_events(t, c)


cdef void ws_connected(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """TCP is up: time it, then the TLS handshake (wss://) or the upgrade."""
    bn_count(&t.counters.connects, 1)
    hist_record(&t.b.hists[WS_HIST_CONNECT],
                now - c.s.connect_start_ns if now > c.s.connect_start_ns else 0)
    if t.tls.ctx == NULL:
        ws_upgrade(t, c, now)
        return
    if tcp_tls_start(&c.s, &t.tls, now) < 0:
        ws_close(t, c, WE_TLS_HANDSHAKE, now)
        return
    c.state = WC_HANDSHAKE
    ws_handshake(t, c)


cdef void ws_handshake(bn_ws_thread* t, bn_wsconn* c) noexcept nogil:
    """Advance the TLS handshake; once done, the upgrade follows."""
    cdef int rc = tcp_handshake(&c.s, &t.tls)
    cdef uint64_t now = bn_now_ns()
    if rc == 0:
        ws_update_events(t, c)
        return
    if rc < 0:
        ws_close(t, c, WE_TLS_VERIFY if rc == -TLSF_VERIFY else
                 WE_TLS_NOT_TLS if rc == -TLSF_NOT_TLS else WE_TLS_HANDSHAKE, now)
        return
    bn_count(&t.counters.tls_handshakes, 1)
    if SSL_session_reused(c.s.ssl):
        bn_count(&t.counters.tls_resumed, 1)
    hist_record(&t.b.hists[WS_HIST_TLS], now - c.s.tls_start_ns if now > c.s.tls_start_ns else 0)
    ws_upgrade(t, c, now)


cdef void ws_upgrade(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Write the upgrade request."""
    c.state = WC_UPGRADING
    c.upgrade_start_ns = now
    memcpy(c.s.out, t.upgrade, t.upgrade_len)
    c.s.out_len = t.upgrade_len
    c.s.out_off = 0
    ws_flush(t, c, now)


cdef int ws_on_upgrade(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Bytes of the handshake answer are in `inb`: 0 = wait for more, 1 = open
    (frames may follow in the buffer), -1 = refused and closed."""
    cdef const char* p = c.inb
    cdef uint32_t n = c.in_len
    cdef int end = -1
    cdef uint32_t i
    cdef uint32_t k
    for i in range(3, n):
        if p[i] == 10 and p[i - 1] == 13 and p[i - 2] == 10 and p[i - 3] == 13:   # CRLF CRLF
            end = <int>(i + 1)
            break
    if end < 0:
        if n >= t.in_cap:
            ws_close(t, c, WE_UPGRADE_REFUSED, now)
            return -1
        return 0
    # Status-Line "HTTP/1.1 101", then the accept key somewhere in the head.
    if end < 12 or memcmp(p, b"HTTP/1.1 101", 12) != 0:
        if t.measuring and now < t.b.end_ns:
            # A refusal answered (an API key not allowed the feed: 403).
            bn_count(&t.counters.m_upgrades_refused_timed, 1)
            hist_record(&t.b.hists[WS_HIST_REFUSED], now - c.upgrade_start_ns)
            if end >= 12 and memcmp(p + 8, b" 403", 4) == 0:
                bn_count(&t.counters.m_upgrade_forbidden, 1)
        ws_close(t, c, WE_UPGRADE_REFUSED, now)
        return -1
    if memmem(p, <size_t>end, t.accept, t.accept_len) == NULL:
        ws_close(t, c, WE_UPGRADE_REFUSED, now)
        return -1
    if t.deflate_offered and ws_deflate_start(t, c, p, <uint32_t>end) < 0:
        ws_close(t, c, WE_IO, now)
        return -1
    c.in_off = <uint32_t>end
    t.pending -= 1
    c.state = WC_OPEN
    c.attempt = 0
    c.last_data_ns = now
    c.next_ping_ns = now + t.ping_interval_ns
    bn_count(&t.counters.upgrades, 1)
    hist_record(&t.b.hists[WS_HIST_UPGRADE], now - c.upgrade_start_ns)
    if c.ever_open:
        bn_count(&t.counters.reconnects, 1)
        hist_record(&t.b.hists[WS_HIST_OUTAGE], now - c.down_ns if now > c.down_ns else 0)
    c.ever_open = 1
    c.down_ns = 0
    for k in range(c.sub_first, c.sub_first + c.sub_count):
        if ws_queue_frame(t, c, WS_OP_TEXT, t.sub_data[k], t.sub_len[k]) == 0:
            bn_count(&t.counters.t_sent, 1)
            if t.measuring and now < t.b.end_ns:
                bn_count(&t.counters.m_sent, 1)
    if t.nprobes:
        c.probe_step = 0
        return -1 if ws_probe_send(t, c, now) < 0 else 1
    if ws_flush(t, c, now) < 0:
        return -1
    return 1


cdef int ws_deflate_start(bn_ws_thread* t, bn_wsconn* c, const char* head,
                          uint32_t n) noexcept nogil:
    """The 101 to an offer of permessage-deflate: inflate from now on if it
    names the extension; -1 only when zlib has no memory."""
    if memmem(head, n, b"permessage-deflate", 18) == NULL:
        bn_count(&t.counters.deflate_missing, 1)
        return 0
    bn_count(&t.counters.deflate_negotiated, 1)
    if c.z == NULL:
        c.z = <z_stream*>calloc(1, sizeof(z_stream))
        if c.z == NULL:
            return -1
        # Raw deflate (no zlib header), the largest window: RFC 7692 7.2.2.
        if inflateInit2(c.z, -15) != Z_OK:
            free(c.z)
            c.z = NULL
            return -1
    elif inflateReset(c.z) != Z_OK:
        return -1
    c.deflate = 1
    return 0


cdef int ws_probe_send(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Queue probe step c.probe_step and write; -1 if the connection broke."""
    c.probe_sent_ns = ws_realtime_ns()
    if ws_queue_frame(t, c, WS_OP_TEXT, t.probe_data[c.probe_step],
                      t.probe_len[c.probe_step]) == 0:
        bn_count(&t.counters.t_sent, 1)
        if t.measuring and now < t.b.end_ns:
            bn_count(&t.counters.m_probes_sent, 1)
    return ws_flush(t, c, now)


cdef int ws_probe_next(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """The step in flight is done (answered or timed out): send the next."""
    c.probe_step = (c.probe_step + 1) % t.nprobes
    return ws_probe_send(t, c, now)


cdef int ws_find_number(const char* p, uint32_t n, const char* key, uint32_t key_len,
                        uint64_t unit_ns, uint64_t* out) noexcept nogil:
    """The number after the first `key` (`"name":`) in p[0:n], spaces
    allowed, times `unit_ns` (a decimal fraction kept to 9 digits); 1 if
    found, 0 if not."""
    cdef const char* q = <const char*>memmem(p, n, key, key_len)
    if q == NULL:
        return 0
    return ws_read_number(q + key_len, p + n, unit_ns, out)


cdef int ws_path_number(const char* p, uint32_t n, bn_json_path* jp, uint64_t unit_ns,
                        uint64_t* out) noexcept nogil:
    """The number at path `jp` in the JSON text p[0:n] (its first n bytes:
    a truncated text is read as far as it goes); 1 if found, 0 if not."""
    cdef uint32_t i = 0
    cdef uint32_t j
    cdef uint32_t depth = 0             # containers open
    cdef uint32_t on = 0                # of which, from the root, on the path
    cdef int selected = 0               # the next value at depth `on` is the path's next step
    cdef uint32_t seg
    cdef char ch
    cdef uint32_t is_obj[WS_PATH_MAX + 1]
    cdef uint32_t want_key[WS_PATH_MAX + 1]
    cdef uint32_t idx[WS_PATH_MAX + 1]
    while i < n:
        ch = p[i]
        if ch == 34:                                    # '"': a string, escapes skipped
            j = i + 1
            while j < n and p[j] != 34:
                j += 2 if p[j] == 92 else 1
            if j >= n:
                return 0
            if depth == on and depth > 0 and is_obj[depth] and want_key[depth]:
                seg = depth - 1                         # a key of an object on the path
                selected = (not jp.is_index[seg] and j - i - 1 == jp.key_len[seg]
                            and memcmp(p + i + 1, jp.keys + jp.key_off[seg],
                                       jp.key_len[seg]) == 0)
                want_key[depth] = 0
            i = j + 1
        elif ch == 123 or ch == 91:                     # '{' '[': a container opens
            if depth == on and (depth == 0 or selected):
                if depth == jp.n:
                    return 0                            # the path ends on a container
                on = depth + 1
                is_obj[on] = ch == 123
                want_key[on] = 1
                idx[on] = 0
                selected = (not is_obj[on] and jp.is_index[depth] and jp.index[depth] == 0)
            else:
                selected = 0
            depth += 1
            i += 1
        elif ch == 125 or ch == 93:                     # '}' ']': it closes
            if depth == 0:
                return 0
            if on == depth:
                on -= 1
            depth -= 1
            selected = 0
            i += 1
        elif ch == 44:                                  # ',': the next member or element
            if depth == on and depth > 0:
                if is_obj[depth]:
                    want_key[depth] = 1
                    selected = 0
                else:
                    idx[depth] += 1
                    selected = jp.is_index[depth - 1] and jp.index[depth - 1] == idx[depth]
            i += 1
        elif selected and depth == on and depth == jp.n and 48 <= ch <= 57:
            return ws_read_number(p + i, p + n, unit_ns, out)
        else:
            i += 1                                      # ':', spaces, other scalars
    return 0


cdef int ws_read_field(const char* p, uint32_t n, const char* key, uint32_t key_len,
                       bn_json_path* jp, uint64_t unit_ns, uint64_t* out) noexcept nogil:
    """A message's stamp or sequence: at its path if it has one, else after its key."""
    if jp.n:
        return ws_path_number(p, n, jp, unit_ns, out)
    return ws_find_number(p, n, key, key_len, unit_ns, out)


cdef int ws_read_number(const char* q, const char* end, uint64_t unit_ns,
                        uint64_t* out) noexcept nogil:
    """The number at q (spaces before it allowed), times `unit_ns`."""
    cdef uint64_t whole = 0
    cdef uint64_t frac = 0
    cdef uint64_t scale = 1
    cdef int digits = 0
    while q < end and (q[0] == 32 or q[0] == 9):
        q += 1
    while q < end and 48 <= q[0] <= 57 and digits < 19:
        whole = whole * 10 + <uint64_t>(q[0] - 48)
        digits += 1
        q += 1
    if digits == 0:
        return 0
    if q < end and q[0] == 46 and unit_ns > 1:        # '.'
        q += 1
        while q < end and 48 <= q[0] <= 57 and scale < 1000000000:
            frac = frac * 10 + <uint64_t>(q[0] - 48)
            scale *= 10
            q += 1
    out[0] = whole * unit_ns + frac * unit_ns / scale
    return 1


cdef void ws_message_begin(bn_ws_thread* t, bn_wsconn* c, const char* p,
                           uint32_t n) noexcept nogil:
    """First fragment of a message: its stamp and sequence, from p[0:n]
    (for a compressed message, from its first inflated bytes later)."""
    c.msg_open = 1
    c.msg_bytes = 0
    c.msg_inflated = 0
    c.msg_inflate_ns = 0
    c.msg_ts_ns = 0
    c.msg_has_seq = 0
    c.msg_probe = 0
    c.msg_error = 0
    c.msg_scan = c.msg_compressed
    if not c.msg_compressed:
        ws_message_scan(t, c, p, n)


cdef void ws_message_scan(bn_ws_thread* t, bn_wsconn* c, const char* p,
                          uint32_t n) noexcept nogil:
    """What a message's first bytes say: stamp, sequence, error, probe answer."""
    cdef uint32_t step = c.probe_step
    if c.probe_sent_ns and (t.match_len[step] == 0 or memmem(
            p, n, t.match_data[step], t.match_len[step]) != NULL):
        c.msg_probe = 1
        if t.refusal_len and memmem(p, n, t.refusal, t.refusal_len) != NULL:
            c.msg_probe = 2
    if (t.ts_key_len or t.ts_path.n) and not ws_read_field(p, n, t.ts_key, t.ts_key_len,
                                                           &t.ts_path, t.ts_unit_ns,
                                           &c.msg_ts_ns):
        c.msg_ts_ns = 0
    if t.seq_key_len or t.seq_path.n:
        c.msg_has_seq = ws_read_field(p, n, t.seq_key, t.seq_key_len, &t.seq_path, 1,
                                      &c.msg_seq)
    c.msg_error = memmem(p, n if n < 64 else 64, b"\"error\"", 7) != NULL


cdef int ws_message_end(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """FIN frame: one message received; -1 if the connection ended (a probe
    answered, the next one failed to go out)."""
    cdef bn_lg_ws_counters* k = t.counters
    cdef int measured = now >= t.b.measure_ns and now < t.b.end_ns
    cdef uint64_t ts = c.msg_ts_ns
    cdef uint64_t lat
    cdef uint64_t missing = 0
    c.msg_open = 0
    bn_count(&k.t_received, 1)
    if c.msg_has_seq:
        if c.has_seq and c.msg_seq > c.last_seq + 1:
            missing = c.msg_seq - c.last_seq - 1
            bn_count(&k.t_lost, missing)
            if measured:
                bn_count(&k.m_lost, missing)
                bn_count(&k.m_gap_events, 1)
        elif c.has_seq and c.msg_seq <= c.last_seq and measured:
            bn_count(&k.m_seq_backwards, 1)
        if not c.has_seq or c.msg_seq > c.last_seq:
            c.last_seq = c.msg_seq
        c.has_seq = 1
    if ts:
        if ts <= t.rt_ns:
            lat = t.rt_ns - ts
            hist_record(&t.b.hists[LG_HIST_ALL], lat)
            if measured:
                hist_record(&t.b.hists[LG_HIST_MEASURED], lat)
        elif measured:
            bn_count(&k.m_clock_skew, 1)
    elif measured and (t.ts_key_len or t.ts_path.n):
        bn_count(&k.m_no_timestamp, 1)
    if measured:
        bn_count(&k.m_received, 1)
        bn_count(&k.m_bytes, c.msg_bytes)
        if c.msg_error:
            bn_count(&k.m_error_replies, 1)
        if c.msg_compressed:
            bn_count(&k.m_compressed, 1)
            bn_count(&k.m_deflated_bytes, c.msg_bytes)
            bn_count(&k.m_inflated_bytes, c.msg_inflated)
            bn_count(&k.m_inflate_ns, c.msg_inflate_ns)
        t.b.last_reply_ns = now
    if c.msg_probe:
        if measured:
            hist_record(&t.b.hists[WS_HIST_PROBE],
                        t.rt_ns - c.probe_sent_ns if t.rt_ns > c.probe_sent_ns else 0)
            bn_count(&k.m_probe_answers, 1)
            if c.msg_probe == 2:
                bn_count(&k.m_probe_refused, 1)
        c.msg_probe = 0
        c.probe_sent_ns = 0
        return ws_probe_next(t, c, now)
    return 0


cdef int ws_inflate(bn_ws_thread* t, bn_wsconn* c, const char* p, uint32_t n,
                    int fin) noexcept nogil:
    """Inflate p[0:n] of a compressed message (then, at its FIN, the
    0x00 0x00 0xff 0xff tail RFC 7692 7.2.2 has the sender strip); the first
    output is scanned.  -1 on corrupt data."""
    cdef z_stream* z = c.z
    cdef uint64_t start = bn_now_ns()
    cdef unsigned char tail[4]
    cdef uint32_t made
    cdef int r
    cdef int part
    tail[0] = 0
    tail[1] = 0
    tail[2] = 0xFF
    tail[3] = 0xFF
    for part in range(2 if fin else 1):
        if part == 0:
            z.next_in = <unsigned char*>p
            z.avail_in = n
        else:
            z.next_in = tail
            z.avail_in = 4
        while True:
            z.next_out = <unsigned char*>t.zbuf
            z.avail_out = t.zcap
            r = inflate(z, Z_SYNC_FLUSH)
            made = t.zcap - z.avail_out
            if r != Z_OK and r != Z_BUF_ERROR and r != Z_STREAM_END:
                bn_count(&t.counters.inflate_errors, 1)
                return -1
            if made:
                c.msg_inflated += made
                if c.msg_scan:
                    c.msg_scan = 0
                    ws_message_scan(t, c, t.zbuf, made)
            if r == Z_STREAM_END:
                # A final block (allowed, unusual): the next message starts a new stream.
                if inflateReset(z) != Z_OK:
                    return -1
                if z.avail_in == 0:
                    break
                continue
            if z.avail_out != 0 or made == 0:
                break                   # all input taken and the output drained
    c.msg_inflate_ns += bn_now_ns() - start
    return 0


cdef int ws_on_control(bn_ws_thread* t, bn_wsconn* c, int opcode, const char* p,
                       uint32_t n, uint64_t now) noexcept nogil:
    """A complete ping, pong or close frame; -1 if the connection ended."""
    cdef char reply[2]
    if opcode == WS_OP_PING:
        bn_count(&t.counters.pings_received, 1)
        if ws_queue_frame(t, c, WS_OP_PONG, p, n) == 0:
            bn_count(&t.counters.pongs_sent, 1)
        return ws_flush(t, c, now)
    if opcode == WS_OP_PONG:
        bn_count(&t.counters.pongs_received, 1)
        c.ping_sent_ns = 0
        return 0
    if opcode == WS_OP_CLOSE:
        # Echo the status code (RFC 6455 5.5.1), then drop the TCP
        # connection: nothing more will come that we want.
        if n >= 2:
            reply[0] = p[0]
            reply[1] = p[1]
        bn_count(&t.counters.close_frames, 1)
        ws_queue_frame(t, c, WS_OP_CLOSE, reply, 2 if n >= 2 else 0)
        if ws_flush(t, c, now) == 0:    # a failed write has closed it already
            ws_close(t, c, WE_CLOSE_FRAME, now)
        return -1
    ws_close(t, c, WE_PROTOCOL, now)
    return -1


cdef int ws_parse(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    """Every complete frame in `inb`; -1 if the connection ended."""
    cdef const unsigned char* p
    cdef uint32_t avail
    cdef uint32_t head
    cdef uint64_t plen
    cdef uint64_t take
    cdef int opcode
    cdef int fin
    while True:
        avail = c.in_len - c.in_off
        p = <const unsigned char*>c.inb + c.in_off
        if c.skip_remaining:
            take = c.skip_remaining if c.skip_remaining < avail else avail
            c.in_off += <uint32_t>take
            c.skip_remaining -= take
            c.msg_bytes += take
            if c.msg_compressed and ws_inflate(t, c, <const char*>p, <uint32_t>take,
                                               c.skip_remaining == 0 and c.skip_fin) < 0:
                ws_close(t, c, WE_PROTOCOL, now)
                return -1
            if c.skip_remaining:
                return 0
            if c.skip_fin and ws_message_end(t, c, now) < 0:
                return -1
            continue
        if avail < 2:
            return 0
        fin = p[0] & 0x80
        opcode = p[0] & 0x0F
        if p[1] & 0x80:                 # MASK: a server must never mask (RFC 6455 5.1)
            ws_close(t, c, WE_PROTOCOL, now)
            return -1
        plen = p[1] & 0x7F
        head = 2
        if plen == 126:
            if avail < 4:
                return 0
            plen = (<uint64_t>p[2] << 8) | p[3]
            head = 4
        elif plen == 127:
            if avail < 10:
                return 0
            plen = ((<uint64_t>p[2] << 56) | (<uint64_t>p[3] << 48) | (<uint64_t>p[4] << 40)
                    | (<uint64_t>p[5] << 32) | (<uint64_t>p[6] << 24) | (<uint64_t>p[7] << 16)
                    | (<uint64_t>p[8] << 8) | <uint64_t>p[9])
            head = 10
        if opcode >= 8:
            if plen > 125 or not fin:
                ws_close(t, c, WE_PROTOCOL, now)
                return -1
            if avail < head + plen:
                return 0
            c.in_off += head + <uint32_t>plen
            if ws_on_control(t, c, opcode, <const char*>p + head, <uint32_t>plen, now) < 0:
                return -1
            continue
        if opcode > WS_OP_BINARY or (opcode == WS_OP_CONT) != (c.msg_open != 0):
            ws_close(t, c, WE_PROTOCOL, now)
            return -1
        # RSV1 marks a compressed message, on its first frame only, and only
        # once permessage-deflate was negotiated (RFC 7692 6.1).
        if p[0] & 0x40 and (opcode == WS_OP_CONT or not c.deflate):
            ws_close(t, c, WE_PROTOCOL, now)
            return -1
        if head + plen <= avail:
            if opcode != WS_OP_CONT:
                c.msg_compressed = (p[0] & 0x40) != 0
                ws_message_begin(t, c, <const char*>p + head, <uint32_t>plen)
            else:
                bn_count(&t.counters.m_fragments, 1)
            c.msg_bytes += plen
            c.in_off += head + <uint32_t>plen
            if c.msg_compressed and ws_inflate(t, c, <const char*>p + head, <uint32_t>plen,
                                               fin) < 0:
                ws_close(t, c, WE_PROTOCOL, now)
                return -1
            if fin and ws_message_end(t, c, now) < 0:
                return -1
            continue
        if c.in_off == 0 and c.in_len == t.in_cap:
            # Larger than the buffer: measure from its prefix, skip the rest.
            if opcode != WS_OP_CONT:
                c.msg_compressed = (p[0] & 0x40) != 0
                ws_message_begin(t, c, <const char*>p + head, avail - head)
            else:
                bn_count(&t.counters.m_fragments, 1)
            c.msg_bytes += avail - head
            c.in_off = c.in_len
            c.skip_remaining = plen - (avail - head)
            c.skip_fin = fin != 0
            if c.msg_compressed and ws_inflate(t, c, <const char*>p + head, avail - head,
                                               0) < 0:
                ws_close(t, c, WE_PROTOCOL, now)
                return -1
            return 0
        return 0


cdef void ws_read(bn_ws_thread* t, bn_wsconn* c, uint64_t now) noexcept nogil:
    cdef ssize_t n
    cdef size_t room
    cdef int err
    cdef int r
    for r in range(WS_READS_PER_EVENT):
        if c.in_off == c.in_len:
            c.in_off = 0
            c.in_len = 0
        elif c.in_off > 0:              # keep the partial frame at the front
            memmove(c.inb, c.inb + c.in_off, c.in_len - c.in_off)
            c.in_len -= c.in_off
            c.in_off = 0
        room = t.in_cap - c.in_len
        n = tcp_recv(&c.s, c.inb + c.in_len, room)
        if n > 0:
            bn_count(&t.counters.bytes_in, <uint64_t>n)
            t.rt_ns = ws_realtime_ns()
            c.in_len += <uint32_t>n
            if c.state == WC_UPGRADING:
                if ws_on_upgrade(t, c, now) <= 0:
                    return
            else:
                ws_note_gap(t, c, now)
            c.last_data_ns = now
            if ws_parse(t, c, now) < 0:
                return
            if <size_t>n < room and tcp_drained(&c.s):
                return                  # the socket is drained
            continue
        err = errno
        if n == 0:
            ws_close(t, c, WE_CLOSED, now)
            return
        if err == EINTR:
            bn_count(&t.counters.eintr, 1)
            continue
        if err == EAGAIN:
            if c.s.tls_want:
                ws_update_events(t, c)
            return
        ws_close(t, c, ws_io_end(err), now)
        return


cdef void ws_on_event(bn_ws_thread* t, bn_wsconn* c, uint32_t events, uint64_t now) noexcept nogil:
    cdef int err
    if c.s.fd < 0:
        return                          # closed earlier in this batch
    if c.state == WC_CONNECTING:
        err = tcp_connect_result(&c.s)
        if err != 0:
            ws_close(t, c, WE_REFUSED if err == ECONNREFUSED else WE_CONNECT_OTHER, now)
        elif events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            ws_connected(t, c, now)
        return
    if c.state == WC_HANDSHAKE:
        ws_handshake(t, c)              # an error or hang-up surfaces in SSL_connect
        return
    if events & (EPOLLIN | EPOLLERR | EPOLLHUP) or (c.s.tls_want and events & EPOLLOUT):
        ws_read(t, c, now)
    if c.s.fd >= 0 and events & EPOLLOUT:
        ws_flush(t, c, now)


cdef void ws_tick(bn_ws_thread* t, uint64_t now) noexcept nogil:
    """Connect idle slots whose backoff is over, time out handshakes and
    probes, ping."""
    cdef uint32_t j
    cdef bn_wsconn* c
    cdef uint64_t rt = ws_realtime_ns() if t.nprobes else 0
    for j in range(t.nconns):
        c = &t.conns[j]
        if c.state == WC_IDLE:
            if now >= c.retry_ns and t.pending < t.max_pending:
                ws_connect(t, c, now)
        elif c.state == WC_CONNECTING:
            if now - c.s.connect_start_ns > t.connect_timeout_ns:
                ws_close(t, c, WE_CONNECT_TIMEOUT, now)
        elif c.state == WC_UPGRADING:
            if now - c.upgrade_start_ns > t.connect_timeout_ns:
                ws_close(t, c, WE_UPGRADE_TIMEOUT, now)
        elif c.state == WC_HANDSHAKE:
            if now - c.s.tls_start_ns > t.connect_timeout_ns:
                tls_note_failure(&t.tls, TLSF_TIMEOUT, 0, 0)
                ws_close(t, c, WE_TLS_TIMEOUT, now)
        elif c.probe_sent_ns and rt > c.probe_sent_ns + t.probe_timeout_ns:
            if t.measuring:
                bn_count(&t.counters.m_probe_timeouts, 1)
            ws_probe_next(t, c, now)
        elif t.ping_interval_ns:
            if c.ping_sent_ns:
                if now - c.ping_sent_ns > t.pong_timeout_ns:
                    ws_close(t, c, WE_HEARTBEAT, now)
            elif now >= c.next_ping_ns:
                if ws_queue_frame(t, c, WS_OP_PING, b"bn", 2) == 0:
                    bn_count(&t.counters.pings_sent, 1)
                    c.ping_sent_ns = now
                    c.next_ping_ns = now + t.ping_interval_ns
                    ws_flush(t, c, now)


cdef void* ws_thread_main(void* arg) noexcept nogil:
    cdef bn_ws_thread* t = <bn_ws_thread*>arg
    cdef uint64_t now
    cdef uint64_t next_tick
    cdef uint64_t wake
    cdef int stop
    cdef int n
    cdef int i
    cdef uint32_t j
    cdef bn_wsconn* c
    if t.b.cpu >= 0:
        t.b.pin_error = bn_pin_self_to_cpu(t.b.cpu)
    now = bn_now_ns()
    t.measuring = now >= t.b.measure_ns
    if t.measuring:
        t.b.cpu_start_ns = bn_thread_cpu_ns()
    next_tick = now
    while True:
        now = bn_now_ns()
        if not t.measuring and now >= t.b.measure_ns:
            t.measuring = 1
            t.b.cpu_start_ns = bn_thread_cpu_ns()
        stop = bn_load_int(t.b.stop_flag)
        if stop != LG_RUN or now >= t.b.end_ns:
            break
        if now >= next_tick:
            ws_tick(t, now)
            next_tick = now + WS_TICK_NS
        wake = next_tick if next_tick < t.b.end_ns else t.b.end_ns
        if not t.measuring and t.b.measure_ns < wake:
            wake = t.b.measure_ns
        n = lg_wait(&t.b, wake, &t.counters.waits, &t.counters.eintr)
        if n < 0:
            break
        now = bn_now_ns()
        for i in range(n):
            c = &t.conns[t.b.events[i].data.u32]
            ws_on_event(t, c, t.b.events[i].events, now)
    now = bn_now_ns()
    t.b.send_stop_ns = now if now < t.b.end_ns else t.b.end_ns
    for j in range(t.nconns):
        c = &t.conns[j]
        if c.state == WC_OPEN:
            ws_note_gap(t, c, now)
        if c.ever_open:
            hist_record(&t.b.hists[WS_HIST_STALL], c.longest_stall_ns)
        if c.state == WC_OPEN:
            # Say goodbye (1000, normal closure) so the server logs no error;
            # no wait for its answer.
            ws_queue_frame(t, c, WS_OP_CLOSE, b"\x03\xe8", 2)
            if ws_flush(t, c, now) < 0:
                continue
        ws_close(t, c, WE_CLEAN, now)
    lg_thread_done(&t.b)
    return NULL


cdef bn_ws_thread* ws_thread_new(uint32_t nconns, uint32_t out_cap, uint32_t in_cap) noexcept nogil:
    cdef bn_ws_thread* t = <bn_ws_thread*>calloc(1, sizeof(bn_ws_thread))
    cdef uint32_t i
    if t == NULL:
        return NULL
    t.nconns = nconns
    t.out_cap = out_cap
    t.in_cap = in_cap
    t.conns = <bn_wsconn*>calloc(nconns, sizeof(bn_wsconn))
    if t.conns != NULL:                 # every fd -1 before any failure frees them (not fd 0)
        for i in range(nconns):
            t.conns[i].s.fd = -1
    t.zcap = in_cap
    t.zbuf = <char*>malloc(in_cap)
    if lg_base_init(&t.b, WS_NHISTS) < 0 or t.conns == NULL or t.zbuf == NULL:
        ws_thread_free(&t.b)
        return NULL
    for i in range(nconns):
        t.conns[i].s.out = <char*>malloc(out_cap)
        t.conns[i].inb = <char*>malloc(in_cap)
        if t.conns[i].s.out == NULL or t.conns[i].inb == NULL:
            ws_thread_free(&t.b)
            return NULL
    return t


cdef void ws_thread_free(bn_lg_base* b) noexcept nogil:
    cdef bn_ws_thread* t = <bn_ws_thread*>b    # b is its first member
    cdef uint32_t i
    if t == NULL:
        return
    if t.conns != NULL:
        for i in range(t.nconns):
            tcp_close(&t.conns[i].s, 0)
            free(t.conns[i].s.out)
            free(t.conns[i].inb)
            if t.conns[i].z != NULL:
                inflateEnd(t.conns[i].z)
                free(t.conns[i].z)
        free(t.conns)
    free(t.zbuf)
    tls_client_free(&t.tls)
    lg_base_free(&t.b)
    free(t)


cdef int ws_copy_path(bn_json_path* jp, list path) except -1:
    """`path`: key names (str) and indexes (int), from the root."""
    cdef uint32_t off = 0
    cdef bytes raw
    if len(path) > WS_PATH_MAX:
        raise ValueError(f"a JSON path has at most {WS_PATH_MAX} steps")
    jp.n = <uint32_t>len(path)
    for i, step in enumerate(path):
        if isinstance(step, int):
            jp.is_index[i] = 1
            jp.index[i] = <uint32_t>step
            continue
        raw = step.encode()
        if off + len(raw) > WS_KEY_MAX:
            raise ValueError(f"the keys of a JSON path hold at most {WS_KEY_MAX} bytes")
        memcpy(jp.keys + off, <char*>raw, len(raw))
        jp.key_off[i] = off
        jp.key_len[i] = <uint32_t>len(raw)
        off += <uint32_t>len(raw)
    return 0


cdef int ws_copy_key(char* dst, bytes key, uint32_t* length) except -1:
    if len(key) >= WS_KEY_MAX:
        raise ValueError(f"key pattern {key!r} longer than {WS_KEY_MAX - 1} bytes")
    memcpy(dst, <char*>key, len(key))
    length[0] = <uint32_t>len(key)
    return 0


cdef class WSLoadRun(LoadRun):
    """Native WebSocket client threads over their own connections.

    Low-level: `beastnet.loadgen.run_ws_load` resolves the address, builds
    the upgrade request and the subscribe messages, and turns the counters
    into a `LoadResult`.  `conn_subs[i]` lists the subscribe payloads (indexes
    into `subscribes`) of connection i, connections dealt to the threads in
    turn.  `probes[i]` is probe step i's request and `matches[i]` the
    pattern of its answer (b"" = the next message); `refusal` marks a
    refusing answer.  `deflate`: the upgrade offers permessage-deflate.
    `ts_path` / `seq_path` (key names and indexes) replace `ts_key` /
    `seq_key` when given.
    One start(), one join().
    """

    def __cinit__(self, bytes sockaddr not None, int family, list conn_counts not None,
                  bytes upgrade not None, bytes accept not None, list subscribes not None,
                  list conn_subs not None, *, bytes ts_key=b"", uint64_t ts_unit_ns=1,
                  bytes seq_key=b"", uint64_t connect_timeout_ns=1000000000,
                  uint64_t backoff_base_ns=100000000, uint64_t backoff_cap_ns=10000000000,
                  uint64_t ping_interval_ns=0, uint64_t pong_timeout_ns=5000000000,
                  unsigned int max_pending=256, unsigned int read_buffer=65536,
                  uint64_t warmup_ns=0, uint64_t duration_ns=1, list cpus=None,
                  uint64_t seed=0x9E3779B97F4A7C15, TLSClientContext tls=None,
                  list probes=None, list matches=None,
                  bytes refusal=b"", uint64_t probe_timeout_ns=1000000000, bint deflate=False,
                  list ts_path=None, list seq_path=None):
        cdef int i
        cdef uint32_t j, k, first
        cdef uint32_t out_cap = 0
        cdef uint32_t need
        cdef bn_ws_thread* t
        cdef list flat = []
        cdef list firsts = []
        if len(sockaddr) > LG_ADDR_MAX_BYTES:
            raise ValueError("sockaddr too long")
        if sum(conn_counts) != len(conn_subs):
            raise ValueError("one list of subscribe payloads per connection")
        if len(accept) >= 32:
            raise ValueError("accept key too long")
        if read_buffer < 4096:
            raise ValueError("read_buffer must be >= 4096 bytes")
        probes = probes or []
        matches = matches if matches is not None else [b""] * len(probes)
        if len(matches) != len(probes):
            raise ValueError("one answer pattern per probe step")
        self.thread_main = ws_thread_main
        self.thread_free = ws_thread_free
        self.tls = tls                  # the SSL_CTX outlives the threads' SSL objects
        # Payloads: the upgrade request, then every connection's subscribe
        # messages back to back (connection i's start at firsts[i]).
        for subs in conn_subs:
            firsts.append(len(flat))
            need = len(upgrade) + WS_CONTROL_ROOM
            for s in subs:
                flat.append(subscribes[s])
                need += len(<bytes>subscribes[s]) + 14
            need += max([len(<bytes>q) for q in probes], default=0) + 14
            if need > out_cap:
                out_cap = need
        # ... then the probe steps, their answer patterns, the refusal pattern.
        self._setup(len(conn_counts), (sizeof(bn_lg_ws_counters) + BN_CACHE_LINE - 1)
                    // BN_CACHE_LINE * BN_CACHE_LINE, WS_NHISTS,
                    [upgrade] + flat + probes + matches + [refusal], 1, None, warmup_ns,
                    duration_ns)
        first = 0
        for i in range(self.nthreads):
            t = ws_thread_new(conn_counts[i], out_cap, read_buffer)
            if t == NULL:
                raise MemoryError()
            self._add_thread(i, &t.b, LG_CLOSED, 0.0, connect_timeout_ns, None, cpus, seed)
            t.family = family
            t.addr_len = <socklen_t>len(sockaddr)
            memcpy(t.addr, <char*>sockaddr, len(sockaddr))
            t.upgrade = self.data[0]
            t.upgrade_len = self.lens[0]
            t.sub_data = self.data + 1
            t.sub_len = self.lens + 1
            t.nprobes = <uint32_t>len(probes)
            t.probe_data = self.data + 1 + len(flat)
            t.probe_len = self.lens + 1 + len(flat)
            t.match_data = t.probe_data + t.nprobes
            t.match_len = t.probe_len + t.nprobes
            t.refusal = self.data[1 + len(flat) + 2 * t.nprobes]
            t.refusal_len = self.lens[1 + len(flat) + 2 * t.nprobes]
            t.probe_timeout_ns = probe_timeout_ns
            t.deflate_offered = deflate
            memcpy(t.accept, <char*>accept, len(accept))
            t.accept_len = <uint32_t>len(accept)
            ws_copy_key(t.ts_key, ts_key, &t.ts_key_len)
            ws_copy_key(t.seq_key, seq_key, &t.seq_key_len)
            ws_copy_path(&t.ts_path, ts_path or [])
            ws_copy_path(&t.seq_path, seq_path or [])
            t.ts_unit_ns = ts_unit_ns
            t.connect_timeout_ns = connect_timeout_ns
            t.backoff_base_ns = backoff_base_ns
            t.backoff_cap_ns = backoff_cap_ns if backoff_cap_ns >= backoff_base_ns else backoff_base_ns
            t.ping_interval_ns = ping_interval_ns
            t.pong_timeout_ns = pong_timeout_ns
            t.max_pending = max_pending if max_pending else 1
            t.counters = <bn_lg_ws_counters*>(self.counters_mem + <size_t>i * self.counter_bytes)
            if tls is not None:
                tls.attach(&t.tls)
            for j in range(<uint32_t>conn_counts[i]):
                k = first + j
                t.conns[j].sub_first = firsts[k]
                t.conns[j].sub_count = len(conn_subs[k])
            first += conn_counts[i]

    cdef object _counters_dict(self, const uint64_t* sums):
        return {name: sums[i] for i, name in enumerate(WS_COUNTER_NAMES)}

    cdef dict _thread_extra(self, bn_lg_base* b):
        cdef bn_ws_thread* t = <bn_ws_thread*>b
        return {"connections": t.nconns, **tls_thread_info(&t.tls)}

    def longest_stalls_ns(self):
        """Each connection's longest stall in the measured window (after the join)."""
        cdef int i
        cdef uint32_t j
        cdef bn_ws_thread* t
        out = []
        for i in range(self.nthreads):
            t = <bn_ws_thread*>self.threads[i]
            for j in range(t.nconns):
                out.append(t.conns[j].longest_stall_ns)
        return out
