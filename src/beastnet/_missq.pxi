# The miss queue: a bounded multi-producer ring (D. Vyukov's bounded queue)
# from native readers to the Python control plane.
#
# Producers are reader threads (no GIL), the single consumer is the control
# plane (GIL held).  Each cell carries its own sequence number, so a producer
# claims a cell with one CAS and publishes it with one release store; a full
# queue is detected without locks and answered `busy` by the reader.

cdef struct bn_miss:
    uint64_t seq                        # Vyukov sequence: == pos when free, pos + 1 when filled
    uint32_t reader                     # index of the reader (socket) that received the request
    uint32_t addr_len                   # bytes of `addr` in use
    uint32_t tag_len                    # bytes of `tag`: "@TAG " including '@' and space, 0 = none
    uint32_t key_len
    uint32_t apikey_len                 # 0 = no API key
    char addr[ADDR_MAX_BYTES]           # the client's sockaddr_in / sockaddr_in6
    char tag[TAG_PREFIX_MAX_BYTES]
    char key[KEY_MAX_BYTES]
    char apikey[APIKEY_MAX_BYTES]
    # HTTP: where the reply goes and what was asked (`reader` is the worker
    # index).  UDP leaves method..target zero and puts the governor's marks
    # in conn and gen (UDP_MISS_* in _udp.pxi).
    uint32_t conn                       # connection slot in the worker
    uint32_t gen                        # the slot's generation: a reply for an older one is dropped
    uint32_t method_len
    uint32_t target_len                 # path + query
    uint32_t route                      # 1 = /admin/, /metrics, /healthz (no KEY), 0 = table miss
    char method[HTTP_METHOD_MAX_BYTES + 1]
    char target[HTTP_TARGET_MAX_BYTES + 1]

cdef struct bn_missq:
    bn_miss* cells
    uint64_t mask                       # capacity - 1
    char pad0[48]
    uint64_t enqueue_pos                # producers' cursor, own cache line
    char pad1[56]
    uint64_t dequeue_pos                # consumer's cursor, touched only with the GIL


cdef bn_missq* missq_new(size_t capacity) noexcept nogil:
    # At least 2: with one cell a filled cell's sequence (pos + 1) equals the
    # "free" sequence of the next position, and the ring never reads as full.
    cdef size_t cap = 2
    while cap < capacity:
        cap <<= 1
    cdef bn_missq* q = <bn_missq*>calloc(1, sizeof(bn_missq))
    if q == NULL:
        return NULL
    q.cells = <bn_miss*>calloc(cap, sizeof(bn_miss))
    if q.cells == NULL:
        free(q)
        return NULL
    q.mask = cap - 1
    cdef size_t i
    for i in range(cap):
        q.cells[i].seq = i
    return q


cdef void missq_free(bn_missq* q) noexcept nogil:
    if q != NULL:
        free(q.cells)
        free(q)


cdef inline bn_miss* missq_claim(bn_missq* q, uint64_t* pos_out) noexcept nogil:
    """Claim a free cell (fill it, then missq_publish), or NULL when full."""
    cdef uint64_t pos = bn_load_u64_relaxed(&q.enqueue_pos)
    cdef bn_miss* cell
    cdef int64_t dif
    while True:
        cell = &q.cells[pos & q.mask]
        dif = <int64_t>(bn_load_u64(&cell.seq) - pos)
        if dif == 0:
            if bn_cas_u64(&q.enqueue_pos, pos, pos + 1):
                pos_out[0] = pos
                return cell
            pos = bn_load_u64_relaxed(&q.enqueue_pos)
        elif dif < 0:
            return NULL
        else:
            pos = bn_load_u64_relaxed(&q.enqueue_pos)


cdef inline void missq_set_request(bn_miss* cell, const char* key, size_t key_len,
                                   const char* apikey, size_t apikey_len) noexcept nogil:
    """The key and API key of a claimed cell (lengths already bounded by the
    parser).  Either may be absent (NULL, 0): memcpy from NULL is undefined
    even for 0 bytes, so absent fields are not copied."""
    cell.key_len = <uint32_t>key_len
    if key_len > 0:
        memcpy(cell.key, key, key_len)
    cell.apikey_len = <uint32_t>apikey_len
    if apikey_len > 0:
        memcpy(cell.apikey, apikey, apikey_len)


cdef inline void missq_publish(bn_miss* cell, uint64_t pos) noexcept nogil:
    bn_store_u64(&cell.seq, pos + 1)


cdef inline bn_miss* missq_peek(bn_missq* q) noexcept nogil:
    """The oldest filled cell, or NULL when empty (single consumer)."""
    cdef uint64_t pos = q.dequeue_pos
    cdef bn_miss* cell = &q.cells[pos & q.mask]
    if <int64_t>(bn_load_u64(&cell.seq) - (pos + 1)) < 0:
        return NULL
    return cell


cdef inline void missq_release(bn_missq* q, bn_miss* cell) noexcept nogil:
    cdef uint64_t pos = q.dequeue_pos
    bn_store_u64(&cell.seq, pos + q.mask + 1)
    q.dequeue_pos = pos + 1
