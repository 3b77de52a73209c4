# WebSocket push, part 2: a worker's topics and subscriptions (the fan-out).
# Publications arrive through the rings of _ws_ring.pxi; frames leave
# through the connections of _ws_conn.pxi.
#
# Fan-out.  A worker keeps its own map key -> topic, and per topic the
# subscriptions of its connections; no lock anywhere, the worker is the only
# thread that touches them.  Offering an entry to a subscription takes a
# reference and replaces the frame it has pending, if any (conflation: a
# price feed wants the newest value, and a slow reader costs one pointer per
# symbol, never a backlog).  A connection's pending frames are written with
# one sendmsg of [ws_head, body] iovecs pointing into the entries themselves:
# an update is framed once, when it is published, and never copied.
#
# Lifetimes.  The worker holds entry references across quiescent points; the
# table's own reference is dropped by QSBR, the last reference frees the
# entry (entry_unref).  A frame the kernel took in part stays the
# connection's `inflight` frame until written, so frames never interleave.

# -- a worker's topics and subscriptions ---------------------------------------------

cdef struct bn_ws_topic:
    bn_ws_topic* next                   # hash chain
    bn_ws_topic* next_due               # this drain's topics with a newer entry
    bn_entry* due                       # the newest entry drained for it (a reference), or NULL
    uint64_t hash
    uint64_t last_version               # newest version offered (per table; 0 = none yet)
    uint32_t key_len
    uint32_t nsubs                      # subscriptions
    uint32_t cap                        # room at subs
    bn_ws_sub** subs                    # unordered; a subscription knows its index
    char key[KEY_MAX_BYTES]

cdef struct bn_ws_sub:                  # one connection's subscription to one topic
    bn_ws_conn* conn
    bn_ws_topic* topic
    bn_entry* pending                   # newest frame not yet written (a reference), or NULL
    bn_ws_sub* next_pending             # the connection's FIFO of pending subscriptions
    uint32_t topic_index                # position in topic.subs
    uint32_t conn_index                 # position in conn.subs

cdef struct bn_ws_worker:               # a worker's WebSocket state
    bn_ws_ring* ring                    # publications for this worker
    bn_index** extra_ref                # &topics_table.index (HTTPServer.publish), or NULL
    bn_ws_topic** buckets               # topic map: chains by hash
    uint32_t nbuckets                   # power of two
    uint32_t ntopics
    bn_ws_conn* dirty                   # connections with output to flush this step
    char* keys                          # scratch for a request's symbols
    uint8_t* key_lens
    char path[HTTP_PREFIX_MAX_BYTES]    # the stream's path, e.g. "/v1/stream"
    uint32_t path_len
    char echo_path[HTTP_PREFIX_MAX_BYTES]   # echo endpoint (conformance, round trips), "" = off
    uint32_t echo_path_len
    uint32_t max_subs                   # subscriptions per connection, 0 = no limit
    uint32_t max_symbols                # symbols per request
    uint64_t max_frame_bytes
    uint64_t max_message_bytes
    int64_t stall_timeout_ns            # output without progress this long: close 1008
    int64_t auth_timeout_ns             # first-message auth due within this; 0 = no such auth
    int64_t message_timeout_ns          # an unfinished client frame or message: closed after this
    uint64_t* reassembly_pool           # &engine.ws_reassembly_bytes: open messages' buffers (atomic)
    uint64_t reassembly_cap             # bytes all open messages may hold; past it, 1013
    uint32_t active                     # WebSocket connections open on this worker
    uint32_t subscriptions              # live subscriptions on this worker
    uint32_t compress_min               # permessage-deflate: negotiated when > 0; bodies this
                                        # long or longer go out compressed
    z_stream* inflater                  # client messages: one stream for all connections (they
                                        # reset per message), allocated at the first one
    char* zin                           # zin_cap bytes: the last message inflated
    size_t zin_cap
    bn_deflater* deflater               # the echo endpoint's replies to compressed messages


cdef inline uint32_t ws_bucket(bn_ws_worker* ws, uint64_t h) noexcept nogil:
    return <uint32_t>(h & (ws.nbuckets - 1))


cdef bn_ws_topic* ws_topic_find(bn_ws_worker* ws, const char* key, size_t n,
                                uint64_t h) noexcept nogil:
    cdef bn_ws_topic* t = ws.buckets[ws_bucket(ws, h)]
    while t != NULL:
        if t.hash == h and t.key_len == n and memcmp(t.key, key, n) == 0:
            return t
        t = t.next
    return NULL


cdef int ws_topics_grow(bn_ws_worker* ws) noexcept nogil:
    cdef uint32_t n = ws.nbuckets * 2
    cdef bn_ws_topic** grown = <bn_ws_topic**>calloc(n, sizeof(bn_ws_topic*))
    cdef bn_ws_topic* t
    cdef bn_ws_topic* nxt
    cdef uint32_t i
    cdef uint32_t b
    if grown == NULL:
        return -1
    for i in range(ws.nbuckets):
        t = ws.buckets[i]
        while t != NULL:
            nxt = t.next
            b = <uint32_t>(t.hash & (n - 1))
            t.next = grown[b]
            grown[b] = t
            t = nxt
    free(ws.buckets)
    ws.buckets = grown
    ws.nbuckets = n
    return 0


cdef bn_ws_topic* ws_topic_get(bn_ws_worker* ws, const char* key, size_t n) noexcept nogil:
    """The worker's topic for `key`, made when missing; NULL out of memory."""
    cdef uint64_t h = key_hash(key, n)
    cdef bn_ws_topic* t = ws_topic_find(ws, key, n, h)
    cdef uint32_t b
    if t != NULL:
        return t
    if ws.ntopics >= ws.nbuckets and ws_topics_grow(ws) != 0:
        return NULL
    t = <bn_ws_topic*>calloc(1, sizeof(bn_ws_topic))
    if t == NULL:
        return NULL
    t.hash = h
    t.key_len = <uint32_t>n
    memcpy(t.key, key, n)
    b = ws_bucket(ws, h)
    t.next = ws.buckets[b]
    ws.buckets[b] = t
    ws.ntopics += 1
    return t


cdef void ws_topic_drop(bn_ws_worker* ws, bn_ws_topic* t) noexcept nogil:
    # The last subscription went: a topic with nobody to send to costs nothing.
    cdef bn_ws_topic** at = &ws.buckets[ws_bucket(ws, t.hash)]
    while at[0] != t:
        at = &at[0].next
    at[0] = t.next
    ws.ntopics -= 1
    free(t.subs)
    free(t)


cdef inline bn_entry* ws_current(bn_hworker* w, const char* key, size_t n) noexcept nogil:
    """The entry published now for `key`: the served table first, then the
    engine's own topics.  The worker is QSBR-online."""
    cdef bn_entry* e = table_lookup(w.index_ref, key, n)
    if e == NULL and w.ws.extra_ref != NULL:
        e = table_lookup(w.ws.extra_ref, key, n)
    return e


cdef inline void ws_mark_dirty(bn_ws_worker* ws, bn_ws_conn* wc) noexcept nogil:
    if not (wc.flags & WSC_DIRTY):
        wc.flags |= WSC_DIRTY
        wc.next_dirty = ws.dirty
        ws.dirty = wc


cdef void ws_offer(bn_hworker* w, bn_ws_sub* s, bn_entry* e) noexcept nogil:
    """Queue entry `e` for subscription `s`, replacing a frame still pending."""
    cdef bn_ws_conn* wc = s.conn
    entry_ref(e)
    if s.pending != NULL:
        entry_unref(s.pending)
        bn_count(&w.counters.ws_conflated, 1)
    else:
        s.next_pending = NULL
        if wc.pend_tail == NULL:
            wc.pend_head = s
        else:
            wc.pend_tail.next_pending = s
        wc.pend_tail = s
    s.pending = e
    ws_mark_dirty(w.ws, wc)


cdef void ws_fan_out(bn_hworker* w, bn_ws_topic* t, bn_entry* e, int always) noexcept nogil:
    cdef uint32_t i
    if not always and e.version <= t.last_version:
        return                          # seen already (a resync, or the other table's copy)
    if e.version > t.last_version:
        t.last_version = e.version
    for i in range(t.nsubs):
        ws_offer(w, t.subs[i], e)


cdef void ws_resync(bn_hworker* w) noexcept nogil:
    """After a ring overflow: offer every topic's current entry, if newer."""
    cdef bn_ws_worker* ws = w.ws
    cdef uint32_t i
    cdef bn_ws_topic* t
    cdef bn_entry* e
    bn_count(&w.counters.ws_resyncs, 1)
    for i in range(ws.nbuckets):
        t = ws.buckets[i]
        while t != NULL:
            e = ws_current(w, t.key, t.key_len)
            if e != NULL:
                ws_fan_out(w, t, e, 0)
            t = t.next


cdef void ws_worker_on_publish(bn_hworker* w) noexcept nogil:
    """Drain this worker's ring (eventfd readable), fan out, flush."""
    cdef bn_ws_ring* r = w.ws.ring
    cdef uint64_t value
    cdef uint64_t tail
    cdef uint64_t head
    cdef bn_ws_pub* p
    cdef bn_ws_topic* t
    cdef bn_ws_topic* due = NULL
    read(r.efd, &value, sizeof(value))
    # Cleared before draining: a publication after this point wakes us again.
    bn_store_int_sc(&r.wake_pending, 0)
    head = bn_load_u64(&r.head)         # acquire: slots up to head are filled
    tail = r.tail
    bn_count(&w.counters.ws_publications, head - tail)
    # Two passes: first keep only the newest entry of each topic drained, so
    # a publisher that outruns the sockets costs (topics x subscribers) per
    # wake-up, not (publications x subscribers).
    while tail != head:
        p = &r.slots[tail & r.mask]
        t = ws_topic_find(w.ws, p.key, p.key_len, key_hash(p.key, p.key_len))
        if t == NULL:
            entry_unref(p.entry)        # nobody on this worker follows it
        elif t.due == NULL:
            t.due = p.entry             # the slot's reference moves to the topic
            t.next_due = due
            due = t
        else:
            entry_unref(t.due)
            t.due = p.entry
            bn_count(&w.counters.ws_superseded, 1)
        tail += 1
    bn_store_u64(&r.tail, tail)         # release: the writer may reuse the slots
    while due != NULL:
        t = due
        due = t.next_due
        ws_fan_out(w, t, t.due, 0)
        entry_unref(t.due)
        t.due = NULL
    if bn_load_int(&r.overflow):
        bn_store_int(&r.overflow, 0)
        ws_resync(w)
    ws_flush_dirty(w)


# -- subscriptions --------------------------------------------------------------------

cdef int ws_subscribe(bn_hworker* w, bn_ws_conn* wc, const char* key, size_t n,
                      bn_entry* e) noexcept nogil:
    """Subscribe `wc` to `key` (current entry `e`) and queue `e` as its
    snapshot.  0, 1 = already subscribed, -1 out of memory."""
    cdef bn_ws_worker* ws = w.ws
    cdef bn_ws_topic* t = ws_topic_get(ws, key, n)
    cdef bn_ws_sub* s
    cdef bn_ws_sub** grown
    cdef uint32_t cap
    cdef uint32_t i
    if t == NULL:
        return -1
    for i in range(t.nsubs):
        if t.subs[i].conn == wc:
            return 1
    s = <bn_ws_sub*>calloc(1, sizeof(bn_ws_sub))
    if s == NULL:
        if t.nsubs == 0:
            ws_topic_drop(ws, t)
        return -1
    if t.nsubs == t.cap:
        cap = t.cap * 2 if t.cap else 4
        grown = <bn_ws_sub**>realloc(t.subs, cap * sizeof(bn_ws_sub*))
        if grown == NULL:
            free(s)
            if t.nsubs == 0:
                ws_topic_drop(ws, t)
            return -1
        t.subs = grown
        t.cap = cap
    if wc.nsubs == wc.subs_cap:
        cap = wc.subs_cap * 2 if wc.subs_cap else 8
        grown = <bn_ws_sub**>realloc(wc.subs, cap * sizeof(bn_ws_sub*))
        if grown == NULL:
            free(s)
            if t.nsubs == 0:
                ws_topic_drop(ws, t)
            return -1
        wc.subs = grown
        wc.subs_cap = cap
    s.conn = wc
    s.topic = t
    s.topic_index = t.nsubs
    t.subs[t.nsubs] = s
    t.nsubs += 1
    s.conn_index = wc.nsubs
    wc.subs[wc.nsubs] = s
    wc.nsubs += 1
    ws.subscriptions += 1
    if e.version > t.last_version:
        t.last_version = e.version
    ws_offer(w, s, e)
    return 0


cdef void ws_sub_remove(bn_hworker* w, bn_ws_sub* s) noexcept nogil:
    """Drop one subscription: out of its topic, its connection and the FIFO."""
    cdef bn_ws_worker* ws = w.ws
    cdef bn_ws_topic* t = s.topic
    cdef bn_ws_conn* wc = s.conn
    cdef bn_ws_sub* last
    cdef bn_ws_sub** at
    last = t.subs[t.nsubs - 1]
    t.subs[s.topic_index] = last
    last.topic_index = s.topic_index
    t.nsubs -= 1
    last = wc.subs[wc.nsubs - 1]
    wc.subs[s.conn_index] = last
    last.conn_index = s.conn_index
    wc.nsubs -= 1
    if s.pending != NULL:
        at = &wc.pend_head
        while at[0] != s:
            at = &at[0].next_pending
        at[0] = s.next_pending
        if wc.pend_tail == s:
            wc.pend_tail = NULL
            last = wc.pend_head
            while last != NULL:
                wc.pend_tail = last
                last = last.next_pending
        entry_unref(s.pending)
    ws.subscriptions -= 1
    free(s)
    if t.nsubs == 0:
        ws_topic_drop(ws, t)


cdef bn_ws_sub* ws_conn_find_sub(bn_ws_conn* wc, const char* key, size_t n) noexcept nogil:
    cdef uint32_t i
    cdef bn_ws_topic* t
    for i in range(wc.nsubs):
        t = wc.subs[i].topic
        if t.key_len == n and memcmp(t.key, key, n) == 0:
            return wc.subs[i]
    return NULL


cdef bn_ws_worker* ws_worker_new(bn_ws_ring* ring, uint32_t max_symbols) noexcept nogil:
    cdef bn_ws_worker* ws = <bn_ws_worker*>calloc(1, sizeof(bn_ws_worker))
    if ws == NULL:
        return NULL
    ws.ring = ring
    ws.nbuckets = 64
    ws.buckets = <bn_ws_topic**>calloc(ws.nbuckets, sizeof(bn_ws_topic*))
    ws.max_symbols = max_symbols
    ws.keys = <char*>malloc(<size_t>max_symbols * KEY_MAX_BYTES + 1)
    ws.key_lens = <uint8_t*>malloc(max_symbols + 1)
    if ws.buckets == NULL or ws.keys == NULL or ws.key_lens == NULL:
        free(ws.buckets)
        free(ws.keys)
        free(ws.key_lens)
        free(ws)
        return NULL
    return ws


cdef void ws_worker_free(bn_ws_worker* ws) noexcept nogil:
    # Connections (and so subscriptions and topics) are gone by now.
    if ws == NULL:
        return
    free(ws.buckets)
    free(ws.keys)
    free(ws.key_lens)
    if ws.inflater != NULL:
        inflateEnd(ws.inflater)
        free(ws.inflater)
    free(ws.zin)
    deflater_free(ws.deflater)
    free(ws)
