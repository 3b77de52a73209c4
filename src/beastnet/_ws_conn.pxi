# WebSocket push, part 3: a WebSocket connection (one per upgraded HTTP
# connection): its own output, corked writes of pending frames, client
# requests, input, stalls and the opening handshake.  Its subscriptions live
# in _ws_topics.pxi.

cdef struct bn_ws_conn:
    bn_ws_reader reader                 # frame parser state
    uint32_t slot                       # connection slot in the worker
    uint32_t flags                      # WSC_*
    bn_ws_sub** subs                    # this connection's subscriptions
    uint32_t nsubs
    uint32_t subs_cap
    uint32_t max_subs                   # subscriptions allowed (tier), 0 = no limit
    bn_apikey* key                      # the API key it was admitted under, or NULL
    bn_ws_sub* pend_head                # FIFO of subscriptions with a pending frame
    bn_ws_sub* pend_tail
    bn_entry* inflight                  # a frame the kernel took in part (a reference)
    uint32_t inflight_off               # bytes of [ws_head, body] already written
    char* ctl                           # own output: handshake, acks, errors, pongs, close
    uint32_t ctl_off                    # bytes of ctl already written
    uint32_t ctl_len                    # bytes in ctl
    uint32_t ctl_cap                    # bytes allocated
    char* inb                           # unparsed client bytes
    uint32_t in_len
    uint32_t in_cap
    int64_t stalled_since_ns            # first moment output was left unwritten; 0 = flowing
    int64_t unacked_since_ns            # first kernel-queue sample that found bytes queued and
                                        # the peer's acknowledgements not advancing; 0 = none
    uint64_t acked_seen                 # bytes the peer had acknowledged at the last sample
    int64_t partial_since_ns            # since when a client frame or message is unfinished; 0 = none
    bn_ws_conn* next_dirty              # on the worker's list of connections to flush
    int close_code                      # close frame sent with this code (0 = none yet)
    int64_t close_deadline_ns           # after our close: the peer's FIN is awaited until then
    uint32_t ctl_max                    # bytes ctl may hold: 1 MiB, plus room for one echoed message
    int64_t auth_deadline_ns            # WSC_AUTH_WAIT: {"op":"auth"} is due by then
    uint32_t zmax                       # permessage-deflate: largest body sent compressed
                                        # (its server_max_window_bits), 0 = not negotiated


# -- a connection's own output (handshake, acks, errors, control frames) -------------------

cdef int ws_ctl_append(bn_ws_conn* wc, const char* data, size_t n) noexcept nogil:
    cdef uint32_t need
    cdef uint32_t cap
    cdef char* grown
    if wc.ctl_off == wc.ctl_len:
        wc.ctl_off = 0
        wc.ctl_len = 0
    if wc.ctl_len + n > wc.ctl_max:
        return -1                       # a client that never reads its acks
    need = wc.ctl_len + <uint32_t>n
    if need > wc.ctl_cap:
        cap = wc.ctl_cap * 2 if wc.ctl_cap else 512
        while cap < need:
            cap *= 2
        grown = <char*>realloc(wc.ctl, cap)
        if grown == NULL:
            return -1
        wc.ctl = grown
        wc.ctl_cap = cap
    memcpy(wc.ctl + wc.ctl_len, data, n)
    wc.ctl_len = need
    return 0


cdef int ws_ctl_frame(bn_ws_conn* wc, int opcode, const char* payload, size_t n) noexcept nogil:
    cdef uint8_t head[WS_SERVER_HEAD_MAX_BYTES]
    cdef size_t hn = ws_server_head(head, opcode, n)
    if ws_ctl_append(wc, <char*>head, hn) != 0:
        return -1
    if n and ws_ctl_append(wc, payload, n) != 0:
        return -1
    return 0


cdef void ws_send_close(bn_hworker* w, bn_ws_conn* wc, int code) noexcept nogil:
    """Queue a close frame (once) and stop reading; the connection closes once
    it is written, or when the peer answers."""
    cdef char payload[2]
    if wc.close_code:
        return
    wc.close_code = code
    payload[0] = <char>(code >> 8)
    payload[1] = <char>(code & 0xFF)
    ws_ctl_frame(wc, WS_OP_CLOSE, payload, 2)
    wc.flags |= WSC_CLOSING
    ws_count_close(w, code)
    ws_mark_dirty(w.ws, wc)


cdef void ws_count_close(bn_hworker* w, int code) noexcept nogil:
    if code == WS_CLOSE_NORMAL:
        bn_count(&w.counters.ws_close_normal, 1)
    elif code == WS_CLOSE_GOING_AWAY:
        bn_count(&w.counters.ws_close_going_away, 1)
    elif code == WS_CLOSE_PROTOCOL_ERROR:
        bn_count(&w.counters.ws_close_protocol_error, 1)
    elif code == WS_CLOSE_INVALID_DATA:
        bn_count(&w.counters.ws_close_invalid_data, 1)
    elif code == WS_CLOSE_POLICY:
        bn_count(&w.counters.ws_close_policy, 1)
    elif code == WS_CLOSE_TOO_BIG:
        bn_count(&w.counters.ws_close_too_big, 1)
    else:
        bn_count(&w.counters.ws_close_other, 1)


# -- writing ------------------------------------------------------------------------------

cdef inline bint ws_sends_z(bn_ws_worker* ws, bn_ws_conn* wc, bn_entry* e) noexcept nogil:
    """Whether `wc` gets `e`'s compressed frame: it negotiated permessage-
    deflate, the entry has one, the body is past this engine's threshold and
    within the window the client allows (server_max_window_bits: with no
    context takeover no distance reaches past the message itself)."""
    return e.zws_head_len != 0 and e.body_len >= ws.compress_min and e.body_len <= wc.zmax


cdef inline size_t ws_frame_iov(bn_ws_worker* ws, bn_ws_conn* wc, bn_entry* e,
                                iovec* iov) noexcept nogil:
    """The two iovecs [head, body] of `e`'s frame for `wc`; its length."""
    if ws_sends_z(ws, wc, e):
        iov[0].iov_base = <void*>e.zws_head
        iov[0].iov_len = e.zws_head_len
        iov[1].iov_base = <void*>e.zbody
        iov[1].iov_len = e.zbody_len
    else:
        iov[0].iov_base = <void*>e.ws_head
        iov[0].iov_len = e.ws_head_len
        iov[1].iov_base = <void*>e.body
        iov[1].iov_len = e.body_len
    return iov[0].iov_len + iov[1].iov_len


cdef inline size_t ws_frame_bytes(bn_ws_worker* ws, bn_ws_conn* wc, bn_entry* e) noexcept nogil:
    if ws_sends_z(ws, wc, e):
        return e.zws_head_len + e.zbody_len
    return e.ws_head_len + e.body_len


cdef inline void ws_frame_written(bn_hworker* w, bn_ws_conn* wc, bn_entry* e) noexcept nogil:
    """`e`'s frame went out whole: count it and drop the connection's reference."""
    bn_count(&w.counters.ws_frames_out, 1)
    if ws_sends_z(w.ws, wc, e):
        bn_count(&w.counters.ws_frames_compressed, 1)
        bn_count(&w.counters.ws_bytes_saved,
                 (e.ws_head_len + e.body_len) - (e.zws_head_len + e.zbody_len))
    entry_unref(e)


cdef int ws_conn_flush(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Write what `c` has queued with one sendmsg per call: the rest of a
    frame in flight, its own control bytes, then pending frames in order.
    Returns 0, or -1 when the connection must close."""
    cdef bn_ws_conn* wc = c.ws
    cdef iovec* iov = w.iov
    cdef int niov
    cdef bn_ws_sub* s
    cdef bn_entry* e
    cdef size_t total
    cdef size_t left
    cdef size_t n
    cdef ssize_t sent
    cdef size_t off
    cdef int rc
    if c.tls_pend != NULL:
        rc = tls_write_pending(w, c)
        if rc < 0:
            return -1
        if rc > 0:
            if wc.stalled_since_ns == 0:
                wc.stalled_since_ns = w.now_ns
            return 0
    while True:
        niov = 0
        total = 0
        # A frame in flight goes first: frames must never interleave.
        if wc.inflight != NULL:
            total += ws_frame_iov(w.ws, wc, wc.inflight, iov) - wc.inflight_off
            off = wc.inflight_off
            if off >= iov[0].iov_len:   # the head is out: only the body's rest
                off -= iov[0].iov_len
                iov[0] = iov[1]
                niov = 1
            else:
                niov = 2
            iov[0].iov_base = <void*>(<char*>iov[0].iov_base + off)
            iov[0].iov_len -= off
        if wc.ctl_len > wc.ctl_off:
            iov[niov].iov_base = <void*>(wc.ctl + wc.ctl_off)
            iov[niov].iov_len = wc.ctl_len - wc.ctl_off
            total += iov[niov].iov_len
            niov += 1
        if not (wc.flags & WSC_CLOSING):
            s = wc.pend_head
            while s != NULL and niov + 2 <= HTTP_IOV_MAX:
                total += ws_frame_iov(w.ws, wc, s.pending, iov + niov)
                niov += 2
                s = s.next_pending
        if niov == 0:
            wc.stalled_since_ns = 0
            return 0
        # Plain: one sendmsg.  TLS: the frames coalesced into records; each
        # subscriber's session encrypts its own copy (see _tls.pxi).
        sent = conn_sendmsg(w, c, iov, niov)
        if sent < 0:
            return -1
        left = <size_t>sent
        # Account for what went out, in the order it was queued.
        if wc.inflight != NULL:
            e = wc.inflight
            n = ws_frame_bytes(w.ws, wc, e) - wc.inflight_off
            if left >= n:
                left -= n
                wc.inflight = NULL
                wc.inflight_off = 0
                ws_frame_written(w, wc, e)
            else:
                wc.inflight_off += <uint32_t>left
                left = 0
        if left and wc.ctl_len > wc.ctl_off:
            n = wc.ctl_len - wc.ctl_off
            if left >= n:
                left -= n
                wc.ctl_off = 0
                wc.ctl_len = 0
            else:
                wc.ctl_off += <uint32_t>left
                left = 0
        while left and wc.pend_head != NULL and wc.inflight == NULL:
            s = wc.pend_head
            e = s.pending
            n = ws_frame_bytes(w.ws, wc, e)
            wc.pend_head = s.next_pending
            if wc.pend_head == NULL:
                wc.pend_tail = NULL
            s.pending = NULL
            s.next_pending = NULL
            if left >= n:
                left -= n
                ws_frame_written(w, wc, e)
            else:
                # The subscription is free for newer frames; this one finishes first.
                wc.inflight = e
                wc.inflight_off = <uint32_t>left
                left = 0
        if <size_t>sent < total:
            # The kernel's buffer is full: wait for EPOLLOUT.  Progress resets
            # the stall clock; only time without any progress counts.
            if sent > 0 or wc.stalled_since_ns == 0:
                wc.stalled_since_ns = w.now_ns
            bn_count(&w.counters.partial_writes, 1)
            return 0
        # Everything queued went out; more may be pending past HTTP_IOV_MAX.
        if wc.pend_head == NULL or (wc.flags & WSC_CLOSING):
            wc.stalled_since_ns = 0
            return 0


cdef inline int ws_output_pending(bn_ws_conn* wc) noexcept nogil:
    return (wc.inflight != NULL or wc.ctl_len > wc.ctl_off
            or (wc.pend_head != NULL and not (wc.flags & WSC_CLOSING)))


cdef void ws_conn_settle(bn_hworker* w, bn_conn* c) noexcept nogil:
    """After a flush: close a connection whose close frame went out, else set
    its epoll interest (EPOLLOUT only while output is pending)."""
    cdef bn_ws_conn* wc = c.ws
    cdef uint32_t want
    if ((wc.flags & WSC_CLOSING) and not ws_output_pending(wc) and c.tls_pend == NULL
            and not (wc.flags & WSC_SHUT)):
        # Our close frame is out.  A lingering close: shut our side, then read
        # (and drop) what the peer still sends until its FIN, for at most
        # WS_CLOSE_WAIT_NS.  Closing with unread input would send a reset,
        # which can destroy the close frame before the peer reads it.
        # TLS says close_notify before the TCP half-close (best effort).
        if c.ssl != NULL:
            openssl.SSL_shutdown(c.ssl)
            openssl.ERR_clear_error()
        shutdown(c.fd, SHUT_WR)
        wc.flags |= WSC_SHUT | WSC_PEER_CLOSED
        wc.close_deadline_ns = w.now_ns + WS_CLOSE_WAIT_NS
    want = EPOLLIN
    if ws_output_pending(wc) or c.tls_pend != NULL or (c.flags & CONN_TLS_READ_WANTS_WRITE):
        want |= EPOLLOUT
    if conn_watch(w, c, want) < 0:
        conn_close(w, c)


cdef void ws_flush_dirty(bn_hworker* w) noexcept nogil:
    cdef bn_ws_worker* ws = w.ws
    cdef bn_ws_conn* wc
    cdef bn_conn* c
    while ws.dirty != NULL:
        wc = ws.dirty
        ws.dirty = wc.next_dirty
        wc.flags &= ~WSC_DIRTY
        c = &w.conns[wc.slot]
        if c.fd < 0 or c.ws != wc:
            continue
        if ws_conn_flush(w, c) != 0:
            conn_close(w, c)
            continue
        ws_conn_settle(w, c)


# -- requests from the client ---------------------------------------------------------------

cdef size_t ws_write_symbols(char* out, size_t cap, const char* keys, const uint8_t* lens,
                             uint32_t n) noexcept nogil:
    """["A","B",...] into out; symbols are key characters, so nothing to escape."""
    cdef size_t o = 0
    cdef uint32_t i
    cdef size_t at = 0
    out[o] = 91                         # '['
    o += 1
    for i in range(n):
        if o + lens[i] + 4 > cap:
            break
        if i:
            out[o] = 44                 # ','
            o += 1
        out[o] = 34
        memcpy(out + o + 1, keys + at, lens[i])
        o += 1 + lens[i]
        out[o] = 34
        o += 1
        at += lens[i]
    out[o] = 93                         # ']'
    return o + 1


cdef int ws_reply_json(bn_ws_conn* wc, const char* head, size_t head_len, const char* keys,
                       const uint8_t* lens, uint32_t n, const char* tail,
                       size_t tail_len) noexcept nogil:
    """A text frame head + [symbols] + tail, built in one buffer."""
    cdef size_t cap = head_len + tail_len + 2 + <size_t>n * (KEY_MAX_BYTES + 3)
    cdef char* buf = <char*>malloc(cap)
    cdef size_t o
    cdef int rc
    if buf == NULL:
        return -1
    memcpy(buf, head, head_len)
    o = head_len
    if keys != NULL:
        o += ws_write_symbols(buf + o, cap - o - tail_len, keys, lens, n)
    memcpy(buf + o, tail, tail_len)
    o += tail_len
    rc = ws_ctl_frame(wc, WS_OP_TEXT, buf, o)
    free(buf)
    return rc


cdef int ws_reply_error(bn_hworker* w, bn_ws_conn* wc, const char* error) noexcept nogil:
    cdef char buf[128]
    cdef size_t n = strlen(error)
    bn_count(&w.counters.ws_request_errors, 1)
    memcpy(buf, b'{"op":"error","error":"', 23)
    memcpy(buf + 23, error, n)
    memcpy(buf + 23 + n, b'"}', 2)
    return ws_ctl_frame(wc, WS_OP_TEXT, buf, 25 + n)


cdef void ws_auth_refuse(bn_hworker* w, bn_ws_conn* wc, const char* error) noexcept nogil:
    """First-message auth failed: say why, then close 1008 (policy)."""
    bn_count(&w.counters.ws_auth_refused, 1)
    ws_reply_error(w, wc, error)
    ws_send_close(w, wc, WS_CLOSE_POLICY)
    wc.flags |= WSC_PEER_CLOSED         # read nothing more from it


cdef void ws_on_auth(bn_hworker* w, bn_conn* c, const char* msg, size_t n) noexcept nogil:
    """A message on a stream still waiting for {"op":"auth","api_key":K}:
    K is admitted exactly as an upgrade's X-API-Key (ws_key_check); anything
    else, a refused key, or a message past the deadline closes 1008."""
    cdef bn_ws_worker* ws = w.ws
    cdef bn_ws_conn* wc = c.ws
    cdef bn_ws_request req
    cdef bn_apikey* rec = NULL
    cdef uint64_t retry_ns = 0
    cdef int verdict
    bn_count(&w.counters.ws_messages_in, 1)
    ws_parse_request(msg, n, &req, ws.keys, ws.max_symbols * KEY_MAX_BYTES, ws.key_lens,
                     ws.max_symbols)
    if w.now_ns > wc.auth_deadline_ns:
        ws_auth_refuse(w, wc, b"auth_timeout")
        return
    if req.op != WS_REQ_AUTH:
        ws_auth_refuse(w, wc, b"auth_required")
        return
    verdict = ws_key_check(w, req.apikey,
                           req.apikey_len if req.apikey_len <= APIKEY_MAX_BYTES else 0,
                           &rec, &retry_ns)
    if verdict == ADMIT_UNAUTHORIZED:
        bn_count(&w.counters.unauthorized, 1)
        ws_auth_refuse(w, wc, b"unauthorized")
        return
    if verdict == ADMIT_RATE_LIMITED:
        bn_count(&w.counters.rate_limited, 1)
        ws_auth_refuse(w, wc, b"rate_limited")
        return
    if verdict == ADMIT_OVER_QUOTA:
        bn_count(&w.counters.over_quota, 1)
        ws_auth_refuse(w, wc, b"over_quota")
        return
    if verdict == WS_KEY_FORBIDDEN:
        ws_auth_refuse(w, wc, b"forbidden")
        return
    if verdict == WS_KEY_CONNS:
        ws_auth_refuse(w, wc, b"connection_limit")
        return
    ws_conn_take_key(w, wc, rec)
    wc.flags &= ~WSC_AUTH_WAIT
    bn_count(&w.counters.ws_auths, 1)
    ws_ctl_frame(wc, WS_OP_TEXT, b'{"op":"authenticated"}', 22)
    ws_mark_dirty(ws, wc)


cdef int ws_on_request(bn_hworker* w, bn_conn* c, const char* msg, size_t n) noexcept nogil:
    """A client's text message: subscribe, unsubscribe or snapshot.  Mistakes
    get an error message, never a close.  -1 = out of memory."""
    cdef bn_ws_worker* ws = w.ws
    cdef bn_ws_conn* wc = c.ws
    cdef bn_ws_request req
    cdef uint32_t i
    cdef uint32_t at = 0
    cdef uint32_t done = 0
    cdef uint32_t nunknown = 0
    cdef uint32_t unknown_at = 0
    cdef const char* k
    cdef bn_entry* e
    cdef bn_ws_sub* s
    cdef int rc
    cdef char* unknown = NULL
    cdef uint8_t* unknown_lens = NULL
    bn_count(&w.counters.ws_messages_in, 1)
    ws_parse_request(msg, n, &req, ws.keys, ws.max_symbols * KEY_MAX_BYTES, ws.key_lens,
                     ws.max_symbols)
    if req.op == WS_REQ_AUTH:
        # Admitted already (by the upgrade's key or a first auth): one key a stream.
        return ws_reply_error(w, wc, b"already_authenticated")
    if req.op == WS_REQ_BAD:
        if req.error == WS_REQERR_JSON:
            return ws_reply_error(w, wc, b"bad_json")
        if req.error == WS_REQERR_NO_KEY:
            return ws_reply_error(w, wc, b"no_api_key")
        if req.error == WS_REQERR_OP:
            return ws_reply_error(w, wc, b"unknown_op")
        if req.error == WS_REQERR_SYMBOLS:
            return ws_reply_error(w, wc, b"no_symbols")
        return ws_reply_error(w, wc, b"too_many_symbols")
    if req.op == WS_REQ_SNAPSHOT and req.nsymbols == 0:
        # Everything this connection follows, now: its frames are the answer.
        for i in range(wc.nsubs):
            s = wc.subs[i]
            e = ws_current(w, s.topic.key, s.topic.key_len)
            if e != NULL:
                ws_offer(w, s, e)
        ws_mark_dirty(ws, wc)
        return 0
    # Symbols the tables do not hold are reported back, not subscribed.
    unknown = <char*>malloc(req.keys_len + 1)
    unknown_lens = <uint8_t*>malloc(req.nsymbols + 1)
    if unknown == NULL or unknown_lens == NULL:
        free(unknown)
        free(unknown_lens)
        return -1
    rc = 0
    for i in range(req.nsymbols):
        k = ws.keys + at
        at += ws.key_lens[i]
        if req.op == WS_REQ_UNSUBSCRIBE:
            s = ws_conn_find_sub(wc, k, ws.key_lens[i])
            if s != NULL:
                ws_sub_remove(w, s)
                done += 1
            continue
        e = ws_current(w, k, ws.key_lens[i])
        if e == NULL:
            memcpy(unknown + unknown_at, k, ws.key_lens[i])
            unknown_lens[nunknown] = ws.key_lens[i]
            unknown_at += ws.key_lens[i]
            nunknown += 1
            continue
        if req.op == WS_REQ_SNAPSHOT:
            s = ws_conn_find_sub(wc, k, ws.key_lens[i])
            if s != NULL:
                ws_offer(w, s, e)
            else:
                # Not followed: one frame now, written with the control bytes.
                if ws_ctl_append(wc, <char*>e.ws_head, e.ws_head_len) != 0 or \
                        ws_ctl_append(wc, e.body, e.body_len) != 0:
                    rc = -1
                    break
            done += 1
            continue
        if wc.max_subs and wc.nsubs >= wc.max_subs and ws_conn_find_sub(wc, k, ws.key_lens[i]) == NULL:
            bn_count(&w.counters.ws_subscriptions_refused, 1)
            ws_reply_error(w, wc, b"subscription_limit")
            break
        rc = ws_subscribe(w, wc, k, ws.key_lens[i], e)
        if rc < 0:
            break
        if rc == 0:
            done += 1
        rc = 0
    if rc == 0:
        if req.op == WS_REQ_SUBSCRIBE:
            rc = ws_reply_json(wc, b'{"op":"subscribed","unknown":', 29, unknown, unknown_lens,
                               nunknown, b"}", 1)
        elif req.op == WS_REQ_UNSUBSCRIBE:
            rc = ws_reply_json(wc, b'{"op":"unsubscribed"}', 21, NULL, NULL, 0, b"", 0)
        elif nunknown:
            rc = ws_reply_json(wc, b'{"op":"snapshot","unknown":', 27, unknown, unknown_lens,
                               nunknown, b"}", 1)
    bn_store_u64(&w.counters.ws_subscriptions, ws.subscriptions)
    free(unknown)
    free(unknown_lens)
    ws_mark_dirty(ws, wc)
    return rc


cdef inline uint64_t ws_in_charged(size_t cap) noexcept nogil:
    # An input buffer's first WS_IN_UNCHARGED_BYTES are every connection's
    # ordinary leftovers (a frame split across reads); what it grows past
    # that holds an unfinished large frame, which pins memory as surely as a
    # fragmented message does, so it counts against the same engine-wide cap.
    return cap - WS_IN_UNCHARGED_BYTES if cap > WS_IN_UNCHARGED_BYTES else 0


cdef int ws_in_recharge(bn_ws_conn* wc, size_t old_cap, size_t new_cap) noexcept nogil:
    """Move the input buffer's charge on the reassembly pool from old_cap's
    to new_cap's.  0, or -2 when growing would pass the cap (nothing moved)."""
    cdef uint64_t was = ws_in_charged(old_cap)
    cdef uint64_t now = ws_in_charged(new_cap)
    cdef bn_ws_reader* r = &wc.reader
    if r.pool == NULL or now == was:
        return 0
    if now < was:
        bn_add_u64(r.pool, <uint64_t>0 - (was - now))
        return 0
    if bn_add_u64(r.pool, now - was) > r.pool_cap:
        bn_add_u64(r.pool, <uint64_t>0 - (now - was))
        return -2
    return 0


cdef void ws_in_free(bn_ws_conn* wc) noexcept nogil:
    ws_in_recharge(wc, wc.in_cap, 0)
    free(wc.inb)
    wc.inb = NULL
    wc.in_len = 0
    wc.in_cap = 0


cdef int ws_in_refused(bn_hworker* w, bn_ws_conn* wc) noexcept nogil:
    # Past the engine's reassembly cap: 1013 (try again later), as a growing
    # fragmented message gets, and nothing more is read from this peer.
    bn_count(&w.counters.ws_reassembly_refused, 1)
    ws_send_close(w, wc, WS_CLOSE_TRY_AGAIN)
    wc.flags |= WSC_PEER_CLOSED
    ws_in_free(wc)
    return 0


cdef int ws_conn_input(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Read what the client sent and act on each complete frame.  Returns 0,
    or -1 when the connection must close now.

    Reads land in the worker's scratch buffer; only the tail of a frame not
    yet complete is kept in the connection's own buffer, sized to what it
    holds and freed once empty.  An idle subscriber owns no input buffer."""
    cdef bn_ws_conn* wc = c.ws
    cdef ssize_t n
    cdef int rc
    cdef char* buf
    cdef size_t room
    # Under TLS a read offers room for a whole record (see _tls.pxi).
    cdef size_t least = HTTP_READ_MIN_BYTES if c.ssl == NULL else TLS_RECORD_BYTES
    if wc.flags & WSC_PEER_CLOSED:
        return ws_conn_discard(w, c)
    if wc.in_len == 0:
        buf = w.scratch
        room = HTTP_SCRATCH_BYTES
    else:
        rc = ws_in_grow(w, c, least, 0)
        if rc != 0 or (wc.flags & WSC_PEER_CLOSED):
            return rc                   # refused past the pool's cap: 1013 queued
        buf = wc.inb + wc.in_len
        room = wc.in_cap - wc.in_len
    n = conn_recv(w, c, buf, room)
    if n == -2:
        return 0
    if n < 0:
        return -1
    if n == 0:
        # The peer is gone without a close frame (1006 on its side).
        wc.flags |= WSC_PEER_CLOSED
        return -1
    bn_count(&w.counters.bytes_in, <uint64_t>n)
    c.last_active_ns = w.now_ns
    if buf == w.scratch:
        return ws_keep_input(w, c, w.scratch, <size_t>n)
    wc.in_len += <uint32_t>n
    return ws_keep_input(w, c, wc.inb, wc.in_len)


cdef int ws_in_grow(bn_hworker* w, bn_conn* c, size_t least, int pushed) noexcept nogil:
    """Room for `least` more bytes in the kept input (doubling, or by half
    for `pushed` bytes; charged to the reassembly pool), up to one frame (and, under TLS, a record: the
    buffer may pass one frame's size by a record).  0 (the room may be
    smaller at that bound; refused past the pool's cap: WSC_PEER_CLOSED set
    and 1013 queued), or -1 out of memory."""
    cdef bn_ws_conn* wc = c.ws
    cdef size_t cap
    cdef char* grown
    cdef size_t limit = <size_t>(wc.reader.max_frame_bytes + WS_CLIENT_HEAD_MAX_BYTES)
    if c.ssl != NULL:
        limit += TLS_RECORD_BYTES
    if wc.in_cap - wc.in_len >= least or wc.in_cap >= limit:
        return 0
    # io_uring pushes a frame in 4 KiB pieces where a read takes up to 64 KiB:
    # growing by half there keeps the pool's charge for one frame in the
    # making near the frame's size, not up to twice it.
    cap = wc.in_cap + wc.in_cap // 2 if pushed else wc.in_cap * 2
    if cap < wc.in_len + least:
        cap = wc.in_len + least
    if cap > limit:
        cap = limit
    if ws_in_recharge(wc, wc.in_cap, cap) != 0:
        return ws_in_refused(w, wc)
    grown = <char*>realloc(wc.inb, cap)
    if grown == NULL:
        ws_in_recharge(wc, cap, wc.in_cap)
        bn_count(&w.counters.oom_closes, 1)
        return -1
    wc.inb = grown
    wc.in_cap = <uint32_t>cap
    return 0


cdef void ws_conn_on_bytes(bn_hworker* w, bn_conn* c, const char* data, size_t n) noexcept nogil:
    """Bytes the loop read for WebSocket connection `c` (io_uring: its
    multishot receive goes on after the upgrade; a provided buffer, valid for
    this call and ours to unmask in place): acted on as ws_conn_input acts on
    what it reads, then the connection closes or its output waits for the
    wake-up's flush."""
    cdef bn_ws_conn* wc = c.ws
    cdef size_t k
    cdef int rc = 0
    bn_count(&w.counters.bytes_in, <uint64_t>n)
    c.last_active_ns = w.now_ns
    while n > 0 and rc == 0 and not (wc.flags & WSC_PEER_CLOSED):
        if wc.in_len == 0:
            # Nothing kept: act on the frames in place, keep a copy of the rest.
            rc = ws_keep_input(w, c, <char*>data, n)
            break
        rc = ws_in_grow(w, c, n, 1)
        if rc != 0 or (wc.flags & WSC_PEER_CLOSED):
            break
        k = wc.in_cap - wc.in_len
        if k == 0:                      # a frame past its bound: the reader refuses it first
            rc = -1
            break
        if k > n:
            k = n
        memcpy(wc.inb + wc.in_len, data, k)
        wc.in_len += <uint32_t>k
        data += k
        n -= k
        rc = ws_keep_input(w, c, wc.inb, wc.in_len)
    # After our close (WSC_PEER_CLOSED) what else arrives is dropped, as
    # ws_conn_discard drops it; the peer's FIN closes (uring_on_recv).
    if rc != 0:
        conn_close(w, c)
        return
    ws_mark_dirty(w.ws, wc)


cdef int ws_keep_input(bn_hworker* w, bn_conn* c, char* data, size_t n) noexcept nogil:
    """Act on the complete frames in data[0:n], then keep the rest (an
    incomplete frame) in the connection's buffer, or free it when nothing is
    left.  0, or -1 out of memory."""
    cdef bn_ws_conn* wc = c.ws
    cdef size_t used = ws_process(w, c, data, n)
    cdef size_t left = n - used
    cdef char* fresh
    if wc.reader.msg_opcode == 0 and wc.reader.msg != NULL:
        # A fragmented message was delivered: its reassembly buffer (up to
        # max_message_bytes) is not kept for a next one that may never come.
        ws_reader_free(&wc.reader)
    # The message timeout runs while a frame or a fragmented message is unfinished.
    if left == 0 and wc.reader.msg_opcode == 0:
        wc.partial_since_ns = 0
    elif wc.partial_since_ns == 0:
        wc.partial_since_ns = w.now_ns
    if left == 0 or (wc.flags & WSC_PEER_CLOSED):
        ws_in_free(wc)
        return 0
    if data == wc.inb:
        memmove(wc.inb, wc.inb + used, left)
        wc.in_len = <uint32_t>left
        return 0
    # From the scratch buffer: a copy the size of what is left (a later read
    # grows it, up to one frame).
    if ws_in_recharge(wc, wc.in_cap, left + HTTP_READ_MIN_BYTES) != 0:
        return ws_in_refused(w, wc)
    fresh = <char*>malloc(left + HTTP_READ_MIN_BYTES)
    if fresh == NULL:
        ws_in_recharge(wc, left + HTTP_READ_MIN_BYTES, wc.in_cap)
        bn_count(&w.counters.oom_closes, 1)
        return -1
    memcpy(fresh, data + used, left)
    free(wc.inb)
    wc.inb = fresh
    wc.in_len = <uint32_t>left
    wc.in_cap = <uint32_t>(left + HTTP_READ_MIN_BYTES)
    return 0


cdef int ws_conn_discard(bn_hworker* w, bn_conn* c) noexcept nogil:
    """After a close: read and drop input; -1 at the peer's FIN (close now)."""
    cdef ssize_t n
    while True:
        n = conn_recv(w, c, w.scratch, HTTP_SCRATCH_BYTES)
        if n > 0:
            bn_count(&w.counters.bytes_in, <uint64_t>n)
            continue
        if n == -2:
            return 0
        return -1


cdef size_t ws_process(bn_hworker* w, bn_conn* c, char* data, size_t n) noexcept nogil:
    """Act on every complete frame in data[0:n]; return the bytes used."""
    cdef bn_ws_conn* wc = c.ws
    cdef bn_ws_event ev
    cdef size_t used = 0
    cdef size_t step
    cdef int code
    cdef int rc
    while not (wc.flags & WSC_PEER_CLOSED):
        step = ws_next(&wc.reader, data + used, n - used, &ev)
        if ev.kind == WS_EV_NEED_MORE:
            break
        used += step
        if ev.kind == WS_EV_ERROR:
            if ev.code == WS_CLOSE_TRY_AGAIN:       # the reader's only 1013: past the cap
                bn_count(&w.counters.ws_reassembly_refused, 1)
            ws_send_close(w, wc, ev.code)
            wc.flags |= WSC_PEER_CLOSED          # read nothing more from it
            break
        if ev.kind == WS_EV_MESSAGE and ev.compressed:
            bn_count(&w.counters.ws_messages_inflated, 1)
            code = ws_message_inflate(w.ws, &ev)
            if code:
                ws_send_close(w, wc, code)
                wc.flags |= WSC_PEER_CLOSED
                break
        if ev.kind == WS_EV_MESSAGE and (wc.flags & WSC_AUTH_WAIT):
            if not (wc.flags & WSC_CLOSING):
                ws_on_auth(w, c, ev.data, ev.len)
        elif ev.kind == WS_EV_MESSAGE:
            if wc.flags & WSC_ECHO:
                bn_count(&w.counters.ws_messages_in, 1)
                if ev.compressed:
                    rc = ws_echo_compressed(w.ws, wc, &ev)
                else:
                    rc = ws_ctl_frame(wc, ev.opcode, ev.data, ev.len)
                if rc != 0:
                    ws_send_close(w, wc, WS_CLOSE_TRY_AGAIN)
                ws_mark_dirty(w.ws, wc)
            elif ev.opcode == WS_OP_TEXT and not (wc.flags & WSC_CLOSING):
                if ws_on_request(w, c, ev.data, ev.len) != 0:
                    ws_send_close(w, wc, WS_CLOSE_TRY_AGAIN)
            elif ev.opcode == WS_OP_BINARY:
                # The feed's requests are JSON text: binary is a data type we do not take.
                ws_send_close(w, wc, WS_CLOSE_UNSUPPORTED)
                wc.flags |= WSC_PEER_CLOSED
        elif ev.kind == WS_EV_PING:
            bn_count(&w.counters.ws_pings, 1)
            if not wc.close_code:
                ws_ctl_frame(wc, WS_OP_PONG, ev.data, ev.len)
                ws_mark_dirty(w.ws, wc)
        elif ev.kind == WS_EV_CLOSE:
            # Echo the peer's code (section 5.5.1), or 1000 for an empty close.
            wc.flags |= WSC_PEER_CLOSED
            ws_send_close(w, wc, WS_CLOSE_NORMAL if ev.code == WS_CLOSE_NO_STATUS else ev.code)
    return used


cdef void ws_conn_on_event(bn_hworker* w, bn_conn* c, uint32_t events) noexcept nogil:
    # Input is acted on now; output waits for the batch's one flush.
    if c.flags & CONN_TLS_READ_WANTS_WRITE:
        c.flags &= ~CONN_TLS_READ_WANTS_WRITE
        events |= EPOLLIN               # the read that waited for the socket to drain
    if events & (EPOLLIN | EPOLLERR | EPOLLHUP):
        if ws_conn_input(w, c) != 0:
            conn_close(w, c)
            return
    ws_mark_dirty(w.ws, c.ws)


cdef void ws_adopt_input(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Right after the upgrade: frames the client sent behind its request
    (already read, kept in the HTTP input buffer) become WebSocket input."""
    cdef bn_ws_conn* wc = c.ws
    cdef int rc = 0
    if c.in_len:
        if c.in_len > wc.reader.max_frame_bytes + WS_CLIENT_HEAD_MAX_BYTES:
            ws_send_close(w, wc, WS_CLOSE_TOO_BIG)
            wc.flags |= WSC_PEER_CLOSED
        else:
            rc = ws_keep_input(w, c, c.inb, c.in_len)
    free(c.inb)
    c.inb = NULL
    c.in_len = 0
    c.in_cap = 0
    c.in_scanned = 0
    if rc != 0:
        conn_close(w, c)
        return
    ws_mark_dirty(w.ws, wc)


cdef void ws_conn_free(bn_hworker* w, bn_conn* c) noexcept nogil:
    """Release a WebSocket connection's state (conn_close calls it)."""
    cdef bn_ws_conn* wc = c.ws
    if wc == NULL:
        return
    while wc.nsubs:
        ws_sub_remove(w, wc.subs[wc.nsubs - 1])
    if wc.inflight != NULL:
        entry_unref(wc.inflight)
    if wc.key != NULL:
        bn_add_relaxed(&wc.key.ws_connections, <uint64_t>-1)
    if wc.flags & WSC_DIRTY:
        # Unlink from the dirty list; it is short (this step's connections).
        ws_dirty_unlink(w.ws, wc)
    ws_reader_free(&wc.reader)
    free(wc.subs)
    free(wc.ctl)
    ws_in_free(wc)
    free(wc)
    c.ws = NULL
    w.ws.active -= 1
    bn_store_u64(&w.counters.ws_active, w.ws.active)
    bn_store_u64(&w.counters.ws_subscriptions, w.ws.subscriptions)


cdef void ws_dirty_unlink(bn_ws_worker* ws, bn_ws_conn* wc) noexcept nogil:
    cdef bn_ws_conn** at = &ws.dirty
    while at[0] != NULL:
        if at[0] == wc:
            at[0] = wc.next_dirty
            return
        at = &at[0].next_dirty


cdef inline int ws_sample_acks(bn_ws_conn* wc, uint64_t sent_bytes, uint64_t queued,
                               int64_t now_ns, int64_t stall_ns) noexcept nogil:
    """1 when the peer acknowledged nothing for stall_ns while bytes waited.
    Judged here, at the sample, not on the tick: only a sample knows whether
    the peer acknowledged anything since the last one."""
    # acked = what the kernel took minus what it still holds (SIOCOUTQ); under
    # TLS the two count different bytes, but only "did it grow" is asked.
    # The clock restarts at every sample that saw progress while bytes still
    # wait, so it runs from the last sample the peer was known to read at: a
    # non-reader is closed at most one sample later than by an exact clock.
    cdef uint64_t acked = sent_bytes - queued if queued <= sent_bytes else 0
    if queued == 0:
        wc.unacked_since_ns = 0         # nothing waits
    elif acked > wc.acked_seen or wc.unacked_since_ns == 0:
        wc.unacked_since_ns = now_ns
    if acked > wc.acked_seen:
        wc.acked_seen = acked
    return wc.unacked_since_ns != 0 and now_ns - wc.unacked_since_ns >= stall_ns


cdef void ws_close_stalled(bn_hworker* w, bn_conn* c) noexcept nogil:
    # No output progress for stall_timeout_s: 1008, counted, and a reset: its
    # buffer is full, so a close frame could not get through, and its queue
    # would linger in FIN-WAIT-1.
    bn_count(&w.counters.ws_slow_closes, 1)
    ws_count_close(w, WS_CLOSE_POLICY)
    conn_reset(w, c)
    conn_close(w, c)


cdef void ws_check_stalls(bn_hworker* w) noexcept nogil:
    """On the worker's tick: close connections whose output made no progress
    for stall_timeout (1008, counted), half-closed ones that never sent
    their close frame back, and those that did not authenticate in time."""
    cdef uint32_t j
    cdef bn_conn* c
    cdef bn_ws_conn* wc
    for j in range(w.high_water):
        c = &w.conns[j]
        if c.fd < 0 or c.ws == NULL:
            continue
        wc = c.ws
        if wc.stalled_since_ns and w.now_ns - wc.stalled_since_ns > w.ws.stall_timeout_ns:
            ws_close_stalled(w, c)
        elif (wc.flags & WSC_SHUT) and w.now_ns > wc.close_deadline_ns:
            conn_close(w, c)            # the peer never finished the closing handshake
        elif (wc.partial_since_ns and not (wc.flags & WSC_CLOSING)
                and w.now_ns - wc.partial_since_ns > w.ws.message_timeout_ns):
            # A frame or fragmented message left unfinished (slowloris on
            # frames): closed, and its buffers freed with it.
            bn_count(&w.counters.timeouts, 1)
            conn_close(w, c)
        elif ((wc.flags & WSC_AUTH_WAIT) and not (wc.flags & WSC_CLOSING)
                and w.now_ns > wc.auth_deadline_ns):
            ws_auth_refuse(w, wc, b"auth_timeout")
    if w.ws.dirty != NULL:
        ws_flush_dirty(w)               # the refusals above go out now, not a tick later


# -- the opening handshake -------------------------------------------------------------------

cdef const char* WS_101_HEAD = (b"HTTP/1.1 101 Switching Protocols\r\nServer: beastnet\r\n"
                                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                b"Sec-WebSocket-Accept: ")


cdef void ws_conn_take_key(bn_hworker* w, bn_ws_conn* wc, bn_apikey* key) noexcept nogil:
    """The stream runs under `key` (NULL = none): its stream count and limits."""
    if key == NULL:
        return
    wc.key = key
    bn_add_relaxed(&key.ws_connections, 1)
    if key.ws_max_subscriptions:
        wc.max_subs = <uint32_t>key.ws_max_subscriptions
    elif key.ws_unlimited:
        wc.max_subs = 0


cdef int ws_upgrade(bn_hworker* w, bn_conn* c, bn_hreq* req, bn_apikey* key,
                    int echo, int auth_wait) noexcept nogil:
    """Answer 101 Switching Protocols and make `c` a WebSocket connection
    (with `auth_wait`, one that must authenticate by its first message).
    Returns 0, or -1 out of memory (the caller closes)."""
    cdef bn_ws_conn* wc = <bn_ws_conn*>calloc(1, sizeof(bn_ws_conn))
    cdef char accept[WS_ACCEPT_BYTES]
    cdef char ext[160]                  # the Sec-WebSocket-Extensions line (130 bytes at most)
    cdef size_t ext_len
    if wc == NULL:
        return -1
    ws_reader_init(&wc.reader, w.ws.max_frame_bytes, w.ws.max_message_bytes)
    wc.reader.pool = w.ws.reassembly_pool
    wc.reader.pool_cap = w.ws.reassembly_cap
    wc.slot = <uint32_t>(c - w.conns)
    wc.max_subs = w.ws.max_subs
    wc.ctl_max = WS_CTL_MAX_BYTES
    if echo:
        wc.ctl_max += <uint32_t>(2 * w.ws.max_message_bytes)
    ws_conn_take_key(w, wc, key)
    if auth_wait:
        wc.flags |= WSC_AUTH_WAIT
        wc.auth_deadline_ns = w.now_ns + w.ws.auth_timeout_ns
    if echo:
        wc.flags |= WSC_ECHO
    bn_ws_accept(req.ws_key, req.ws_key_len, accept)
    ext_len = 0
    if req.ws_deflate and w.ws.compress_min:
        # RFC 7692: no context takeover either way (one frame for every
        # subscriber; one inflate state per worker); a window the client
        # asks is echoed, and bodies past it go out plain.
        wc.flags |= WSC_DEFLATE
        wc.reader.deflate = 1
        wc.zmax = 0xFFFFFFFF
        ext_len = 102
        memcpy(ext, b"\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;"
               b" client_no_context_takeover", ext_len)
        if req.ws_deflate_bits:
            wc.zmax = <uint32_t>1 << req.ws_deflate_bits
            memcpy(ext + ext_len, b"; server_max_window_bits=", 25)
            ext_len += 25
            if req.ws_deflate_bits >= 10:
                ext[ext_len] = 49
                ext_len += 1
            ext[ext_len] = <char>(48 + req.ws_deflate_bits % 10)
            ext_len += 1
    if ws_ctl_append(wc, WS_101_HEAD, strlen(WS_101_HEAD)) != 0 or \
            ws_ctl_append(wc, accept, WS_ACCEPT_BYTES) != 0 or \
            ws_ctl_append(wc, ext, ext_len) != 0 or \
            ws_ctl_append(wc, b"\r\n\r\n", 4) != 0:
        ws_reader_free(&wc.reader)
        free(wc.ctl)
        free(wc)
        return -1
    c.ws = wc
    w.ws.active += 1
    bn_count(&w.counters.ws_upgrades, 1)
    bn_store_u64(&w.counters.ws_active, w.ws.active)
    ws_mark_dirty(w.ws, wc)
    return 0


cdef int ws_path_kind(bn_ws_worker* ws, const char* path, size_t n) noexcept nogil:
    """1 = the feed's path, 2 = the echo endpoint, 0 = neither."""
    if n == ws.path_len and memcmp(path, ws.path, n) == 0:
        return 1
    if ws.echo_path_len and n == ws.echo_path_len and memcmp(path, ws.echo_path, n) == 0:
        return 2
    return 0


cdef inline int ws_refuse(bn_hworker* w, bn_conn* c, int err) noexcept nogil:
    """Refuse an upgrade with pre-built error `err` and close (counted)."""
    bn_count(&w.counters.ws_upgrade_refused, 1)
    c.flags |= CONN_CLOSE_AFTER
    return conn_step(c, conn_emit_error(w, c, err, TAIL_CLOSE, 0))


cdef int ws_key_check(bn_hworker* w, const char* key, size_t n, bn_apikey** rec,
                      uint64_t* retry_ns) noexcept nogil:
    """Admit `key` for a stream, whether it came with the upgrade or in a
    first-message auth: as a GET (rate limit, monthly cap, usage), then the
    key's stream rules.  ADMIT_OK (rec[0] = its record, or NULL without a key
    table), an ADMIT_* refusal, WS_KEY_FORBIDDEN or WS_KEY_CONNS."""
    cdef int admit
    rec[0] = NULL
    if w.keys_ref != NULL:
        admit = apikey_admit(w.keys_ref, key, n, w.admit_ns, retry_ns, rec, USAGE_WS_STREAM)
        if admit != ADMIT_OK:
            rec[0] = NULL
            return admit
        if rec[0] != NULL and bn_load_int(&rec[0].ws_denied):
            return WS_KEY_FORBIDDEN
        if (rec[0] != NULL and not bn_load_int(&rec[0].ws_unlimited)
                and bn_load_u64_relaxed(&rec[0].ws_max_connections)
                and bn_load_u64_relaxed(&rec[0].ws_connections)
                >= bn_load_u64_relaxed(&rec[0].ws_max_connections)):
            return WS_KEY_CONNS
    elif w.require_apikey and n == 0:
        return ADMIT_UNAUTHORIZED
    return ADMIT_OK


cdef int ws_route(bn_hworker* w, bn_conn* c, bn_hreq* req, int echo) noexcept nogil:
    """A request for the stream's path: check the opening handshake (RFC 6455
    4.2.1) and the API key, then upgrade.  Refusals are HTTP answers that close
    the connection.  Without a key where keys are enforced, the upgrade is
    answered and the key is due in the first message (ws_on_auth).  Returns as
    conn_request does."""
    cdef bn_apikey* rec = NULL
    cdef uint64_t retry_ns = 0
    cdef int verdict
    cdef int rc
    cdef int auth_wait = 0
    if req.method_code != METHOD_GET and req.method_code != METHOD_HEAD:
        return ws_refuse(w, c, ERR_405)     # as every other path under the prefix answers
    if (req.method_code != METHOD_GET or not req.upgrade_ws or req.ws_key == NULL
            or req.ws_key_len != 24 or req.has_body or req.http10):
        return ws_refuse(w, c, ERR_400)
    if req.ws_version != 13:
        return ws_refuse(w, c, ERR_426)
    if req.apikey_len == 0 and (w.keys_ref != NULL or w.require_apikey) and w.ws.auth_timeout_ns:
        auth_wait = 1
    else:
        verdict = ws_key_check(w, req.apikey, req.apikey_len, &rec, &retry_ns)
        if verdict == WS_KEY_FORBIDDEN:
            return ws_refuse(w, c, ERR_403)
        if verdict == WS_KEY_CONNS:
            return ws_refuse(w, c, ERR_429_CONNS)
        if verdict != ADMIT_OK:
            bn_count(&w.counters.ws_upgrade_refused, 1)
            c.flags |= CONN_CLOSE_AFTER
            return conn_refuse(w, c, verdict, retry_ns, TAIL_CLOSE, 0)
    # Answers to requests pipelined before this one go out first (on
    # io_uring now, not deferred: the 101 is written by the WebSocket side).
    w.usend_now = 1
    rc = conn_flush_iov(w, c)
    w.usend_now = 0
    if rc != 0:
        return -1
    if conn_out_pending(c) and (conn_send_out(w, c) != 0 or conn_out_pending(c)):
        c.flags |= CONN_CLOSE_AFTER
        return 1
    if ws_upgrade(w, c, req, rec, echo, auth_wait) != 0:
        bn_count(&w.counters.oom_closes, 1)
        c.flags |= CONN_DEAD
        return -1
    c.requests += 1
    return 1
