# HTTP routing: what a parsed request gets.
#
# Under the key prefix: API-key admission, then the response table (a hit is
# answered zero-copy), else the miss queue.  /admin/, /metrics and /healthz go
# to the control plane through the same queue.  Everything else, and every
# refusal, is a pre-built error response.  Misses and routes are tagged with
# (worker, slot, generation); the connection stops parsing (later pipelined
# requests wait in its input buffer, keeping answers in order) until the
# control plane's reply arrives.

cdef inline int http_key_valid(const char* k, size_t n) noexcept nogil:
    cdef size_t i
    if n == 0 or n > KEY_MAX_BYTES:
        return 0
    for i in range(n):
        if not (CHAR_CLASS[<uint8_t>k[i]] & CHAR_KEY):
            return 0
    return 1


cdef inline int http_is_route(bn_hworker* w, const char* path, size_t n) noexcept nogil:
    # Paths the control plane serves: the built-in ones and the server's
    # extra routes (exact paths, e.g. a service's "/" or "/dashboard").
    cdef uint32_t i
    if n >= 7 and memcmp(path, b"/admin/", 7) == 0:
        return 1
    if n == 8 and (memcmp(path, b"/metrics", 8) == 0 or memcmp(path, b"/healthz", 8) == 0):
        return 1
    for i in range(w.nroutes):
        if n == w.route_lens[i] and memcmp(path, w.routes[i], n) == 0:
            return 1
    return 0


cdef inline bn_entry* http_lookup(bn_hworker* w, const char* key, size_t n) noexcept nogil:
    # The key as asked, else its upper-case spelling (/v1/btc answers as
    # /v1/BTC); the second lookup is paid by misses only.
    cdef char upper[KEY_MAX_BYTES]
    cdef size_t i
    cdef int changed = 0
    cdef bn_entry* e = table_lookup(w.index_ref, key, n)
    if e != NULL or n > KEY_MAX_BYTES:
        return e
    for i in range(n):
        upper[i] = key[i]
        if 97 <= <uint8_t>key[i] <= 122:
            upper[i] = <char>(<uint8_t>key[i] - 32)
            changed = 1
    return table_lookup(w.index_ref, upper, n) if changed else NULL


cdef inline bn_entry* http_keyed_lookup(bn_hworker* w, bn_apikey* rec, const char* key,
                                        size_t n) noexcept nogil:
    """The keyed reply of an admitted key's request for `key`, or NULL.  The
    table key is the first KEYED_DIGEST_BYTES of the API key's SHA-256 in
    lower-case hex, "/", then `key` (HTTPServer.keyed_reply_key builds the
    same); a key too long for that is never kept there."""
    cdef char buf[KEY_MAX_BYTES]
    cdef const char* digits = b"0123456789abcdef"
    cdef size_t i
    cdef size_t at = 2 * KEYED_DIGEST_BYTES + 1
    if n > KEY_MAX_BYTES - at:
        return NULL
    for i in range(KEYED_DIGEST_BYTES):
        buf[2 * i] = digits[rec.digest[i] >> 4]
        buf[2 * i + 1] = digits[rec.digest[i] & 15]
    buf[at - 1] = b'/'
    memcpy(buf + at, key, n)
    return table_lookup(w.keyed_ref, buf, at + n)


cdef inline const char* entry_served_body(bn_hworker* w, bn_entry* e) noexcept nogil:
    # The body a hit sends: its "stale":true variant while the control plane
    # is stalled (same length: the pre-built head stays right).
    if w.control_stalled and e.has_stale:
        bn_count(&w.counters.stale_served, 1)
        return entry_stale_body(e)
    return e.body


cdef inline size_t batch_put(char* out, size_t at, const char* s, size_t n) noexcept nogil:
    # Append to a batch_out buffer; the callers bound what they write.
    memcpy(out + at, s, n)
    return at + n


cdef size_t batch_put_uint(char* out, size_t at, size_t v) noexcept nogil:
    cdef char digits[20]
    cdef int nd = 0
    while True:
        digits[nd] = <char>(48 + v % 10)
        nd += 1
        v //= 10
        if v == 0:
            break
    while nd > 0:
        nd -= 1
        out[at] = digits[nd]
        at += 1
    return at


cdef int conn_emit_formatted(bn_hworker* w, bn_conn* c, char* out, size_t n,
                             const char* status_line, size_t status_line_len, int status,
                             int tail, int head_only) noexcept nogil:
    """Answer with the JSON body formatted in out[0:n] (batch_out or
    health_out), its head written just past it, then flushed at once: `out`
    is reused by the next such answer.  `status_line` ends with CRLF."""
    cdef size_t at = batch_put(out, n, status_line, status_line_len)
    at = batch_put(out, at, b"Server: beastnet\r\nContent-Type: application/json\r\n"
                   b"Content-Length: ", 66)
    at = batch_put_uint(out, at, n)
    at = batch_put(out, at, b"\r\n", 2)
    cdef int rc = conn_emit(w, c, out + n, at - n, tail, out, 0 if head_only else n, status,
                            SEG_COPY, NULL)
    if rc == 0:
        rc = conn_flush_iov(w, c)
    return conn_step(c, rc)


cdef int conn_batch(bn_hworker* w, bn_conn* c, bn_hreq* req, int tail,
                    int head_only) noexcept nogil:
    """GET <prefix><batch_key>?symbols=A,B,...: a JSON array of the entries'
    bodies in the order asked, written as iovecs of the bodies themselves and
    static separators; only the head (its Content-Length) is formatted.  An
    unknown symbol makes it a 404 naming every unknown one; more than
    BATCH_SYMBOLS_MAX, an empty or malformed list, a 400.  Returns as
    conn_request."""
    cdef bn_entry* found[BATCH_SYMBOLS_MAX]
    cdef const char* q = req.target + req.path_len + 1
    cdef const char* end = req.target + req.target_len
    cdef const char* v = NULL
    cdef const char* s
    cdef const char* p
    cdef size_t vlen = 0
    cdef size_t n
    cdef size_t at
    cdef size_t total = 2                       # "[" and "]"
    cdef int nsym = 0
    cdef int nunknown = 0
    cdef int i
    cdef int rc
    # symbols=<list>, the first such parameter of the query
    p = q
    while p < end:
        s = p
        while p < end and p[0] != 38:           # '&'
            p += 1
        if p - s > 8 and memcmp(s, b"symbols=", 8) == 0:
            v = s + 8
            vlen = <size_t>(p - v)
            break
        p += 1
    if v == NULL or vlen == 0:
        bn_count(&w.counters.misses, 1)
        return conn_step(c, conn_emit_error(w, c, ERR_400, tail, head_only))
    # Look every symbol up; remember the unknown ones in batch_out's tail.
    at = 0
    p = v
    while p <= v + vlen:
        s = p
        while p < v + vlen and p[0] != 44:      # ','
            p += 1
        n = <size_t>(p - s)
        if nsym == BATCH_SYMBOLS_MAX or not http_key_valid(s, n):
            bn_count(&w.counters.misses, 1)
            return conn_step(c, conn_emit_error(w, c, ERR_400, tail, head_only))
        found[nsym] = http_lookup(w, s, n)
        if found[nsym] == NULL:
            # {"error":"not_found","unknown":["A","B"]}: 64 names of 64 bytes fit.
            if nunknown == 0:
                at = batch_put(w.batch_out, 0, b'{"error":"not_found","unknown":[', 32)
            else:
                at = batch_put(w.batch_out, at, b",", 1)
            at = batch_put(w.batch_out, at, b'"', 1)
            at = batch_put(w.batch_out, at, s, n)
            at = batch_put(w.batch_out, at, b'"', 1)
            nunknown += 1
        else:
            total += found[nsym].body_len + (1 if nsym else 0)
        nsym += 1
        p += 1
    if nunknown:
        bn_count(&w.counters.misses, 1)
        n = batch_put(w.batch_out, at, b"]}", 2)          # the body: batch_out[0:n]
        return conn_emit_formatted(w, c, w.batch_out, n, b"HTTP/1.1 404 Not Found\r\n", 24,
                                   404, tail, head_only)
    bn_count(&w.counters.hits, 1)
    at = batch_put(w.batch_out, 0, b"HTTP/1.1 200 OK\r\nServer: beastnet\r\n"
                   b"Content-Type: application/json\r\nContent-Length: ", 83)
    at = batch_put_uint(w.batch_out, at, total)
    at = batch_put(w.batch_out, at, b"\r\n", 2)
    rc = conn_emit(w, c, w.batch_out, at, tail, b"[", 0 if head_only else 1, 200,
                   SEG_COPY, NULL)
    i = 0
    while rc == 0 and not head_only and i < nsym:
        if i:
            rc = conn_emit_piece(w, c, b",", 1, SEG_STATIC, NULL)
        if rc == 0:
            rc = conn_emit_piece(w, c, entry_served_body(w, found[i]), found[i].body_len,
                                 SEG_ENTRY, found[i])
        i += 1
    if rc == 0 and not head_only:
        rc = conn_emit_piece(w, c, b"]", 1, SEG_STATIC, NULL)
    if rc == 0:
        rc = conn_flush_iov(w, c)       # batch_out is reused by the next batch request
    return conn_step(c, rc)


cdef int conn_health_stalled(bn_hworker* w, bn_conn* c, int tail, int head_only) noexcept nogil:
    """/healthz answered here, not by the control plane that serves it: 503
    and why.  The age is formatted per request (tenths of a second)."""
    cdef uint64_t age_ds = ((<uint64_t>w.now_ns - bn_load_u64_relaxed(&w.control.beat_ns))
                            // 100000000)
    cdef char* out = w.health_out
    bn_count(&w.counters.health_stalled, 1)
    cdef size_t n = batch_put(out, 0,
                              b'{"status":"stalled","reason":"control plane stalled for ', 56)
    n = batch_put_uint(out, n, age_ds // 10)
    n = batch_put(out, n, b".", 1)
    n = batch_put_uint(out, n, age_ds % 10)
    n = batch_put(out, n, b' s"}', 4)               # the body: health_out[0:n]
    return conn_emit_formatted(w, c, out, n, b"HTTP/1.1 503 Service Unavailable\r\n", 34,
                               503, tail, head_only)


cdef int conn_queue(bn_hworker* w, bn_conn* c, bn_hreq* req, const char* key, size_t key_len,
                    int route) noexcept nogil:
    """Hand a miss or route to the control plane; 0 when the queue is full."""
    cdef uint64_t pos
    cdef bn_miss* cell
    if (req.target_len > HTTP_TARGET_MAX_BYTES or req.method_len > HTTP_METHOD_MAX_BYTES
            or req.apikey_len > APIKEY_MAX_BYTES or key_len > KEY_MAX_BYTES):
        return 0                        # never reached (callers check): cells are fixed-size
    cell = missq_claim(w.missq, &pos)
    if cell == NULL:
        return 0
    cell.reader = <uint32_t>w.index
    cell.conn = <uint32_t>(c - w.conns)
    cell.gen = c.gen
    cell.route = <uint32_t>route
    cell.addr_len = c.peer_len          # routes check it: admin is loopback-only by default
    memcpy(cell.addr, c.peer, c.peer_len)
    cell.tag_len = 0
    missq_set_request(cell, key, key_len, req.apikey, req.apikey_len)   # a route has no key
    cell.method_len = req.method_len
    memcpy(cell.method, req.method, req.method_len)
    cell.target_len = req.target_len
    memcpy(cell.target, req.target, req.target_len)
    missq_publish(cell, pos)
    return 1


cdef inline int http_is_ops_path(const char* path, size_t n) noexcept nogil:
    # What operators and load balancers read: never shed by the governor.
    if n >= 7 and memcmp(path, b"/admin/", 7) == 0:
        return 1
    return n == 8 and (memcmp(path, b"/metrics", 8) == 0 or memcmp(path, b"/healthz", 8) == 0)


cdef int http_governor_sheds(bn_hworker* w, bn_hreq* req, bn_apikey* rec,
                             int route) noexcept nogil:
    """The governor is on: 1 = shed this request (counted here), 0 = queue it.
    `rec` is the admitted key of a miss; a route's key is looked up only past
    the limit (one hash, paid only while overloaded)."""
    cdef int shed_last
    if bn_load_u64_relaxed(&w.gov.inflight) < bn_load_u64_relaxed(&w.gov.limit):
        return 0                        # under the limit: one load, one compare
    if route:
        if http_is_ops_path(req.target, req.path_len):
            return 0
        if w.keys_ref != NULL and req.apikey_len > 0:
            rec = apikey_lookup(<bn_keyindex*>bn_load_ptr(<void**>w.keys_ref), req.apikey,
                                req.apikey_len)
    shed_last = rec != NULL and not bn_load_int(&rec.revoked) and bn_load_int(&rec.shed_last)
    if not governor_sheds(w.gov, shed_last):
        return 0
    if shed_last:
        bn_count(&w.counters.shed_partner, 1)
    else:
        bn_count(&w.counters.shed_public, 1)
    return 1


cdef inline int conn_step(bn_conn* c, int rc) noexcept nogil:
    # After an answer: -1 dead, 1 stop parsing (closing), 0 go on.
    if rc < 0:
        return -1
    return 1 if c.flags & CONN_CLOSE_AFTER else 0


cdef int conn_refuse(bn_hworker* w, bn_conn* c, int admit, uint64_t retry_ns, int tail,
                     int head_only) noexcept nogil:
    """Answer an API-key refusal (ADMIT_*): 401, or 429 with Retry-After."""
    cdef uint64_t retry_s
    if admit == ADMIT_UNAUTHORIZED:
        bn_count(&w.counters.unauthorized, 1)
        return conn_step(c, conn_emit_error(w, c, ERR_401, tail, head_only))
    if admit == ADMIT_OVER_QUOTA:
        bn_count(&w.counters.over_quota, 1)
        return conn_step(c, conn_emit_error(w, c, ERR_429_QUOTA, tail, head_only))
    bn_count(&w.counters.rate_limited, 1)
    retry_s = (retry_ns + 999999999) // 1000000000
    if retry_s < 1:
        retry_s = 1
    elif retry_s > RETRY_AFTER_MAX_S:
        retry_s = RETRY_AFTER_MAX_S
    return conn_step(c, conn_emit_error(w, c, ERR_429_1S + <int>retry_s - 1, tail, head_only))


cdef inline uint8_t cors_pick(bn_hworker* w, bn_hreq* req) noexcept nogil:
    # The CORS segment (CORS_SEG_* + 1) for an answer under the prefix, 0 =
    # none.  "*" needs no Vary and nothing for a request without Origin (not
    # a browser's cross-origin one); listed origins vary by Origin, so every
    # answer says so, and a listed one is echoed.  Exact bytes: browsers send
    # the serialized origin (lower-case scheme and host, no path).
    cdef uint32_t i
    if w.cors_any:
        return CORS_SEG_ANY + 1 if req.origin != NULL else 0
    if req.origin != NULL:
        for i in range(w.cors_n):
            if (req.origin_len == w.cors_origin_lens[i]
                    and memcmp(req.origin, w.cors_origins[i], req.origin_len) == 0):
                return <uint8_t>(CORS_SEG_ORIGIN0 + i + 1)
    return CORS_SEG_VARY + 1



cdef inline int http_usage_route(const char* key, size_t key_len, bint batch) noexcept nogil:
    """The USAGE_* route of a GET under the prefix, by its path after it:
    the batch key is a snapshot, "reports/..." a usage report, the rest a price."""
    if batch:
        return USAGE_HTTP_SNAPSHOT
    if key_len >= 8 and memcmp(key, b"reports/", 8) == 0:
        return USAGE_HTTP_REPORT
    return USAGE_HTTP_PRICE

cdef int conn_request(bn_hworker* w, bn_conn* c, bn_hreq* req) noexcept nogil:
    """Answer one parsed request (or queue it).  Returns 0 to go on parsing,
    1 to stop (waiting on the control plane, or closing), -1 dead."""
    cdef int tail
    cdef int head_only = req.method_code == METHOD_HEAD
    cdef const char* key = NULL
    cdef size_t key_len = 0
    cdef bn_entry* e
    cdef int route = 0
    cdef int admit
    cdef bn_apikey* rec = NULL
    cdef uint64_t retry_ns = 0
    cdef int ws_kind
    cdef bint batch
    cdef int in_prefix = (req.path_len > w.prefix_len
                          and memcmp(req.target, w.prefix, w.prefix_len) == 0)
    if not req.keepalive or w.draining:
        tail = TAIL_CLOSE
        c.flags |= CONN_CLOSE_AFTER
    elif req.http10:
        tail = TAIL_KEEP10
    else:
        tail = TAIL_KEEP
    if w.ws != NULL:
        ws_kind = ws_path_kind(w.ws, req.target, req.path_len)
        if ws_kind:
            return ws_route(w, c, req, ws_kind == 2)
    if in_prefix and (w.cors_any or w.cors_n):
        c.cors = cors_pick(w, req)
        if req.method_code == METHOD_OPTIONS and not req.has_body:     # a CORS preflight
            return conn_step(c, conn_emit(w, c, HTTP_PREFLIGHT.head, HTTP_PREFLIGHT.head_len,
                                          tail, HTTP_PREFLIGHT.body, 0, 204, SEG_STATIC, NULL))
    if in_prefix and (req.method_code == METHOD_OTHER or req.method_code == METHOD_OPTIONS):
        if req.has_body:                # its body is unread: the framing is lost
            c.flags |= CONN_CLOSE_AFTER
            tail = TAIL_CLOSE
        return conn_step(c, conn_emit_error(w, c, ERR_405, tail, 0))
    if req.has_body:                    # GET/HEAD (or a route) with a body
        c.flags |= CONN_CLOSE_AFTER
        return conn_step(c, conn_emit_error(w, c, ERR_413, TAIL_CLOSE, head_only))
    if in_prefix:
        key = req.target + w.prefix_len
        key_len = req.path_len - w.prefix_len
        batch = (w.batch_key_len and key_len == w.batch_key_len and req.target_len > req.path_len
                 and memcmp(key, w.batch_key, key_len) == 0)
        if w.keys_ref != NULL:
            admit = apikey_admit(w.keys_ref, req.apikey, req.apikey_len, w.admit_ns, &retry_ns,
                                 &rec, http_usage_route(key, key_len, batch))
            if admit != ADMIT_OK:
                return conn_refuse(w, c, admit, retry_ns, tail, head_only)
        elif w.require_apikey and req.apikey_len == 0:
            return conn_step(c, conn_emit_error(w, c, ERR_401, tail, head_only))
        if batch:
            return conn_batch(w, c, req, tail, head_only)
        if not http_key_valid(key, key_len):
            bn_count(&w.counters.misses, 1)
            return conn_step(c, conn_emit_error(w, c, ERR_404, tail, head_only))
        e = http_lookup(w, key, key_len)
        if e != NULL:
            bn_count(&w.counters.hits, 1)
            return conn_step(c, conn_emit(w, c, e.http_head, e.http_head_len, tail,
                                          entry_served_body(w, e),
                                          0 if head_only else e.body_len, 200, SEG_ENTRY, e))
        # A report rendered for this very key moments ago (serve's reports,
        # kept report_max_age_s): answered here, admitted and counted above
        # like any request.  Not while the control plane is stalled (it
        # would no longer remove what got old), nor with a query string.
        if (w.keyed_ref != NULL and rec != NULL and not w.control_stalled
                and req.target_len == req.path_len):
            e = http_keyed_lookup(w, rec, key, key_len)
            if e != NULL:
                bn_count(&w.counters.hits, 1)
                bn_count(&w.counters.keyed_hits, 1)
                return conn_step(c, conn_emit(w, c, e.http_head, e.http_head_len, tail,
                                              e.body, 0 if head_only else e.body_len, 200,
                                              SEG_ENTRY, e))
        bn_count(&w.counters.misses, 1)
        if (not w.misses_to_python or w.missq == NULL
                or (w.miss_prefix_len
                    and (key_len < w.miss_prefix_len
                         or memcmp(key, w.miss_prefix, w.miss_prefix_len) != 0))):
            # No handler, or not a miss it takes (serve: only reports/...):
            # answered here, never queued to the control plane.
            return conn_step(c, conn_emit_error(w, c, ERR_404, tail, head_only))
    elif http_is_route(w, req.target, req.path_len):
        bn_count(&w.counters.routed, 1)
        if (w.control_stalled and req.path_len == 8
                and memcmp(req.target, b"/healthz", 8) == 0):
            return conn_health_stalled(w, c, tail, head_only)
        if w.missq == NULL:
            return conn_step(c, conn_emit_error(w, c, ERR_404, tail, head_only))
        route = 1
    else:
        return conn_step(c, conn_emit_error(w, c, ERR_404, tail, head_only))
    # To the control plane: the connection waits, later requests stay buffered.
    # A queue cell holds HTTP_TARGET_MAX_BYTES of target: misses and routes alike.
    if req.target_len > HTTP_TARGET_MAX_BYTES:
        return conn_step(c, conn_emit_error(w, c, ERR_414, tail, head_only))
    if governor_on(w.gov) and http_governor_sheds(w, req, rec, route):
        return conn_step(c, conn_emit_error(w, c, ERR_503_OVERLOADED, tail, head_only))
    if conn_queue(w, c, req, key, key_len, route):
        bn_count(&w.counters.queued, 1)
        bn_add_relaxed(&w.gov.inflight, 1)
        c.wait_start_ns = w.admit_ns if governor_on(w.gov) else 0
        w.miss_signal = 1
        c.flags |= CONN_WAITING
        if head_only:
            c.flags |= CONN_WAIT_HEAD
        c.wait_tail = <uint8_t>tail
        return 1
    bn_count(&w.counters.queue_drops, 1)
    return conn_step(c, conn_emit_error(w, c, ERR_503, tail, head_only))
