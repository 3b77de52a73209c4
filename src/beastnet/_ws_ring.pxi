# WebSocket push, part 1: publication rings from a table to the workers.
# (Part 2, _ws_topics.pxi: a worker's topics and subscriptions; part 3,
# _ws_conn.pxi: a WebSocket connection's input, output and handshake.)
#
# Publication.  Each table an engine serves (and the engine's own table of
# published topics, see HTTPServer.publish) keeps a list of hubs; a hub holds
# one single-producer ring per worker.  The table's writer (Python, under the
# table lock, so one producer at a time) pushes (key, entry) onto every ring
# with a reference on the entry, then wakes the worker through its eventfd
# unless a wake is already pending.  A full ring is not waited for: the
# writer flags an overflow and the worker, once it drains, re-reads every
# topic it serves from the tables (a resync), so a publisher never blocks and
# nothing is delivered stale.

cdef struct bn_ws_pub:                  # one ring slot
    bn_entry* entry                     # a reference owned by the slot
    uint32_t key_len                    # bytes
    char key[KEY_MAX_BYTES]

cdef struct bn_ws_ring:                 # table writer -> one worker
    uint64_t head                       # next slot the writer fills (writer only)
    char pad1[56]
    uint64_t tail                       # next slot the worker drains (worker only)
    char pad2[56]
    uint64_t mask                       # capacity - 1
    int overflow                        # 1 = a publication found the ring full: resync
    int wake_pending                    # 1 = the worker was woken and has not drained yet
    int efd                             # eventfd the worker polls (EV_WS)
    bn_ws_pub* slots                    # capacity slots

cdef struct bn_ws_hub:                  # one per engine with WebSocket on
    int nrings                          # one per worker
    bn_ws_ring** rings
    uint32_t compress_min               # bodies this long or longer are deflated; 0 = off
    # permessage-deflate on the publishing side (_ws_deflate.pxi), added to
    # by the writers of every table the engine serves (atomic adds):
    uint64_t deflated                   # publications deflated (a compressed frame built)
    uint64_t deflate_no_gain            # ... tried, not smaller: sent plain
    uint64_t deflate_bytes_in           # bodies of the deflated publications
    uint64_t deflate_bytes_out          # ... once deflated
    uint64_t deflate_cpu_ns             # writer CPU time in deflate (CLOCK_THREAD_CPUTIME_ID)


cdef bn_ws_ring* ws_ring_new(uint32_t capacity) noexcept nogil:
    cdef void* mem = NULL
    cdef bn_ws_ring* r
    if posix_memalign(&mem, BN_CACHE_LINE, sizeof(bn_ws_ring)) != 0:
        return NULL
    r = <bn_ws_ring*>mem
    memset(r, 0, sizeof(bn_ws_ring))
    r.slots = <bn_ws_pub*>calloc(capacity, sizeof(bn_ws_pub))
    r.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if r.slots == NULL or r.efd < 0:
        if r.efd >= 0:
            close(r.efd)
        free(r.slots)
        free(r)
        return NULL
    r.mask = capacity - 1
    return r


cdef void ws_ring_free(bn_ws_ring* r) noexcept nogil:
    cdef uint64_t i
    if r == NULL:
        return
    # Whatever the worker never drained still holds a reference.
    i = r.tail
    while i != r.head:
        entry_unref(r.slots[i & r.mask].entry)
        i += 1
    if r.efd >= 0:
        close(r.efd)
    free(r.slots)
    free(r)


cdef void ws_hub_publish(bn_ws_hub* hub, const char* key, size_t key_len,
                         bn_entry* e) noexcept nogil:
    """Offer a new entry of `key` to every worker of the hub, without waking
    them: the writer calls ws_hub_wake once its write (one key or a batch)
    is pushed.  The caller is the table's writer (one at a time)."""
    cdef int i
    cdef bn_ws_ring* r
    cdef bn_ws_pub* slot
    cdef uint64_t head
    for i in range(hub.nrings):
        r = hub.rings[i]
        head = r.head
        if head - bn_load_u64(&r.tail) > r.mask:
            # Full: the worker will re-read every topic from the tables.
            bn_store_int(&r.overflow, 1)
        else:
            slot = &r.slots[head & r.mask]
            entry_ref(e)
            slot.entry = e
            slot.key_len = <uint32_t>key_len
            memcpy(slot.key, key, key_len)
            bn_store_u64(&r.head, head + 1)     # release: the slot is visible first


cdef void ws_hub_wake(bn_ws_hub* hub) noexcept nogil:
    """Wake every worker of the hub for what was pushed since its last drain.
    Once per table write, not per key: a worker woken by a batch's first key
    drains it while the writer pushes the next, clears wake_pending, and the
    next key woke it again, so an update of N keys cost up to N eventfd
    writes per worker (1,250 writes/s measured for ~175 updates/s)."""
    cdef int i
    cdef bn_ws_ring* r
    cdef uint64_t one = 1
    for i in range(hub.nrings):
        r = hub.rings[i]
        # One eventfd write per wake-up, not per publication: the worker
        # clears wake_pending before it drains, so nothing is missed.
        if not bn_xchg_int(&r.wake_pending, 1):
            write(r.efd, &one, sizeof(one))


cdef struct bn_ws_hubs:                 # the hubs a table publishes to
    int n
    bn_ws_hub* hubs[WS_HUBS_MAX]


cdef void ws_hubs_publish(bn_ws_hubs* hubs, const char* key, size_t key_len,
                          bn_entry* e) noexcept nogil:
    cdef int i
    for i in range(hubs.n):
        ws_hub_publish(hubs.hubs[i], key, key_len, e)


cdef void ws_hubs_wake(bn_ws_hubs* hubs) noexcept nogil:
    cdef int i
    for i in range(hubs.n):
        ws_hub_wake(hubs.hubs[i])
