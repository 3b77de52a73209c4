# The response table: immutable entries behind an open-addressing index that
# native readers probe without locks.
#
# Lifetimes and thread contract:
# - Only Python writers mutate, one at a time under `ResponseTable._lock`.
# - An entry never changes after it is published.  Replacing or deleting a
#   key swaps the slot's entry pointer atomically and retires the old entry.
# - A slot's key never changes once its hash is published; deleting a key
#   leaves the key in place with a NULL entry (a tombstone the same key reuses).
# - Growth builds a new index and publishes it with one pointer store; the old
#   index is retired.  A reader still probing the old index sees entries at
#   most one batch stale, never freed ones: retired memory waits for QSBR.
#   Shrinking after deletes is the same rebuild with a smaller capacity, so a
#   table that once held millions of keys gives the memory back.

cdef struct bn_entry:
    uint64_t version                    # table-wide sequence number of the write
    char* body                          # points just past this struct
    char* content_type                  # NUL-terminated, just past the body
    uint32_t body_len                   # bytes
    uint32_t content_type_len           # bytes, without the NUL
    char* http_head                     # "HTTP/1.1 200 OK\r\n...Content-Length: N\r\n", just past
                                        # content_type; a worker ends it with its Date/Connection tail
    uint32_t http_head_len              # bytes
    uint32_t refs                       # 1 for the table while published, +1 per WebSocket
                                        # frame queued on a connection; freed at 0 (atomic)
    uint8_t ws_head[WS_SERVER_HEAD_MAX_BYTES]   # the body's WebSocket frame head: text when the
                                                # body is UTF-8, else binary; the same for every subscriber
    uint8_t ws_head_len                 # bytes
    uint8_t zws_head_len                # bytes of zws_head; 0 = no compressed frame
    uint8_t zws_head[WS_SERVER_HEAD_MAX_BYTES]  # the compressed frame's head (RSV1 set)
    uint8_t has_stale                   # 1 = the body is kept again just past zbody with
                                        # STALE_FALSE as STALE_TRUE (same length, so the same
                                        # head), served while the control plane is stalled
                                        # (entry_stale_body); in padding: the entry stays its size
    uint32_t zbody_len                  # bytes
    char* zbody                         # the body deflated once (permessage-deflate,
                                        # _ws_deflate.pxi), just past http_head; NULL = none

cdef struct bn_slot:
    uint64_t hash                       # 0 = empty; stored last (release) on insert
    bn_entry* entry                     # NULL = deleted or never set
    uint32_t key_len                    # bytes
    char key[KEY_MAX_BYTES]             # immutable once `hash` is published

cdef struct bn_index:
    size_t mask                         # capacity - 1; capacity is a power of two
    size_t used                         # slots holding a key, live or deleted
    bn_slot* slots                      # capacity slots, same allocation


cdef uint8_t CHAR_CLASS[256]


cdef void char_class_init() noexcept:
    cdef int c
    for c in range(256):
        CHAR_CLASS[c] = 0
        if 0x21 <= c <= 0x7e:
            CHAR_CLASS[c] |= CHAR_PRINT
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"._:/-":
            CHAR_CLASS[c] |= CHAR_KEY


cdef inline uint64_t key_hash(const char* key, size_t n) noexcept nogil:
    # FNV-1a, finished with a fold so the low bits (the bucket) see the high ones.
    cdef uint64_t h = 14695981039346656037ULL
    cdef size_t i
    for i in range(n):
        h ^= <uint8_t>key[i]
        h *= 1099511628211ULL
    h ^= h >> 29
    return h | 1                        # never 0: 0 marks an empty slot


cdef inline bn_entry* index_lookup(bn_index* idx, const char* key, size_t n) noexcept nogil:
    """Probe `idx` for `key`.  Lock-free; the caller must be QSBR-online."""
    cdef uint64_t h = key_hash(key, n)
    cdef size_t i = h & idx.mask
    cdef bn_slot* slot
    cdef uint64_t seen
    while True:
        slot = &idx.slots[i]
        seen = bn_load_u64(&slot.hash)
        if seen == 0:
            return NULL
        if seen == h and slot.key_len == n and memcmp(slot.key, key, n) == 0:
            return <bn_entry*>bn_load_ptr(<void**>&slot.entry)
        i = (i + 1) & idx.mask


cdef inline bn_entry* table_lookup(bn_index** index_ref, const char* key, size_t n) noexcept nogil:
    return index_lookup(<bn_index*>bn_load_ptr(<void**>index_ref), key, n)


cdef bn_index* index_new(size_t capacity) noexcept nogil:
    cdef size_t size = sizeof(bn_index) + capacity * sizeof(bn_slot)
    cdef bn_index* idx = <bn_index*>calloc(1, size)
    if idx == NULL:
        return NULL
    idx.mask = capacity - 1
    idx.slots = <bn_slot*>(<char*>idx + sizeof(bn_index))
    return idx


cdef inline size_t index_bytes(bn_index* idx) noexcept nogil:
    return sizeof(bn_index) + (idx.mask + 1) * sizeof(bn_slot)


cdef bn_slot* index_find_slot(bn_index* idx, const char* key, size_t n, uint64_t h) noexcept nogil:
    """The slot holding `key`, or the empty slot where it would go (writer side)."""
    cdef size_t i = h & idx.mask
    cdef bn_slot* slot
    while True:
        slot = &idx.slots[i]
        if slot.hash == 0:
            return slot
        if slot.hash == h and slot.key_len == n and memcmp(slot.key, key, n) == 0:
            return slot
        i = (i + 1) & idx.mask


cdef inline size_t dec_digits(size_t v) noexcept nogil:
    cdef size_t n = 1
    while v >= 10:
        v //= 10
        n += 1
    return n


cdef inline size_t http_head_bytes(size_t body_len, size_t ctype_len) noexcept nogil:
    # "HTTP/1.1 200 OK\r\n" + "Server: beastnet\r\n" + "Content-Type: " ctype "\r\n"
    # + "Content-Length: " digits "\r\n"; the status line is at most 3 + 1 + 32 bytes of reason.
    return 9 + 3 + 1 + 32 + 2 + 18 + 14 + ctype_len + 2 + 16 + dec_digits(body_len) + 2


cdef size_t http_head_write(char* out, int status, const char* reason, size_t reason_len,
                            const char* ctype, size_t ctype_len, size_t body_len) noexcept nogil:
    """Write an HTTP/1.1 response head without its final CRLF (a worker adds
    Date, maybe Connection, and the blank line); return its length.  `out`
    must hold http_head_bytes(body_len, ctype_len) bytes; reason <= 32 bytes."""
    cdef char* p = out
    cdef size_t n = dec_digits(body_len)
    cdef size_t i
    memcpy(p, b"HTTP/1.1 ", 9)
    p += 9
    p[0] = <char>(48 + status // 100)
    p[1] = <char>(48 + (status // 10) % 10)
    p[2] = <char>(48 + status % 10)
    p[3] = 32
    p += 4
    if reason_len > 32:
        reason_len = 32
    memcpy(p, reason, reason_len)
    p += reason_len
    memcpy(p, b"\r\nServer: beastnet\r\nContent-Type: ", 34)
    p += 34
    memcpy(p, ctype, ctype_len)
    p += ctype_len
    memcpy(p, b"\r\nContent-Length: ", 18)
    p += 18
    for i in range(n):
        p[n - 1 - i] = <char>(48 + body_len % 10)
        body_len //= 10
    p += n
    p[0] = 13                           # CR
    p[1] = 10                           # LF
    p += 2
    return <size_t>(p - out)


# A body's freshness flag as serve's prices write it, and what a stalled
# control plane serves instead: one byte of JSON whitespace keeps the length,
# hence the entry's pre-built HTTP head and Content-Length.
cdef const char* STALE_FALSE = b'"stale":false'
cdef const char* STALE_TRUE = b'"stale":true '
cdef enum:
    STALE_FLAG_BYTES = 13               # len('"stale":false') == len('"stale":true ')


cdef inline char* entry_stale_body(bn_entry* e) noexcept nogil:
    # Where entry_new keeps the stale variant (valid when e.has_stale).
    return e.http_head + e.http_head_len + e.zbody_len


cdef bn_entry* entry_new(const char* body, size_t body_len, const char* ctype, size_t ctype_len,
                         uint64_t version, const char* zbody, size_t zbody_len,
                         int stale_marking) noexcept nogil:
    # One block: struct, body, content type + NUL, then the HTTP response head,
    # pre-built here once per write so an HTTP hit costs no formatting, then
    # the deflated body when there is one (zbody_len > 0), then the stale
    # variant when the table asks for one and the body carries the flag.
    cdef size_t head_len = http_head_bytes(body_len, ctype_len)
    cdef const char* flag = NULL
    if stale_marking:
        flag = <const char*>memmem(body, body_len, STALE_FALSE, STALE_FLAG_BYTES)
    cdef size_t stale_len = body_len if flag != NULL else 0
    cdef bn_entry* e = <bn_entry*>malloc(sizeof(bn_entry) + body_len + ctype_len + 1 + head_len
                                         + zbody_len + stale_len)
    if e == NULL:
        return NULL
    e.version = version
    e.body = <char*>e + sizeof(bn_entry)
    e.body_len = <uint32_t>body_len
    e.content_type = e.body + body_len
    e.content_type_len = <uint32_t>ctype_len
    memcpy(e.body, body, body_len)
    memcpy(e.content_type, ctype, ctype_len)
    e.content_type[ctype_len] = 0
    e.http_head = e.content_type + ctype_len + 1
    e.http_head_len = <uint32_t>http_head_write(e.http_head, 200, b"OK", 2, ctype, ctype_len, body_len)
    e.refs = 1
    # Framed once here, when the answer is published: a WebSocket push is then
    # two iovecs [ws_head, body] per subscriber, nothing built or copied.
    cdef uint32_t utf8 = 0
    cdef int opcode = WS_OP_TEXT
    if utf8_check(&utf8, <const uint8_t*>body, body_len) != 0 or (utf8 >> 16):
        opcode = WS_OP_BINARY
    e.ws_head_len = <uint8_t>ws_server_head(e.ws_head, opcode, body_len)
    e.zbody = NULL
    e.zbody_len = <uint32_t>zbody_len
    e.zws_head_len = 0
    if zbody_len:
        e.zbody = e.http_head + e.http_head_len
        memcpy(e.zbody, zbody, zbody_len)
        e.zws_head_len = <uint8_t>ws_server_head(e.zws_head, opcode, zbody_len)
        e.zws_head[0] |= WS_RSV1        # "Per-Message Compressed" (RFC 7692 6)
    e.has_stale = flag != NULL
    if flag != NULL:
        memcpy(entry_stale_body(e), body, body_len)
        memcpy(entry_stale_body(e) + (flag - body), STALE_TRUE, STALE_FLAG_BYTES)
    return e


cdef inline void entry_ref(bn_entry* e) noexcept nogil:
    bn_ref_inc(&e.refs)


cdef void entry_unref(void* mem) noexcept nogil:
    """Drop one reference; the last one frees the entry.  Also the release
    function of a retired entry: QSBR ends the table's reference, a frame
    still queued on a WebSocket connection keeps the entry alive."""
    if bn_ref_dec(&(<bn_entry*>mem).refs) == 0:
        free(mem)


cdef inline size_t entry_bytes(bn_entry* e) noexcept nogil:
    return (sizeof(bn_entry) + e.body_len + e.content_type_len + 1 + e.http_head_len + e.zbody_len
            + (e.body_len if e.has_stale else 0))


cdef bytes key_to_bytes(object key):
    """Validate a key from Python and return its bytes (KEY in docs/protocol.md)."""
    cdef bytes raw
    if isinstance(key, str):
        try:
            raw = (<str>key).encode("ascii")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"key {key!r}: only [A-Za-z0-9._:/-] are allowed") from None
    elif isinstance(key, bytes):
        raw = <bytes>key
    else:
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
    cdef Py_ssize_t n = len(raw)
    cdef const unsigned char* p = raw
    cdef Py_ssize_t i
    if n == 0 or n > KEY_MAX_BYTES:
        raise InvalidKeyError(f"key {key!r}: length must be 1..{KEY_MAX_BYTES} bytes, got {n}")
    for i in range(n):
        if not (CHAR_CLASS[p[i]] & CHAR_KEY):
            raise InvalidKeyError(f"key {key!r}: only [A-Za-z0-9._:/-] are allowed")
    return raw


cdef bytes body_to_bytes(object body):
    if isinstance(body, bytes):
        return <bytes>body
    if isinstance(body, str):
        return (<str>body).encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body must be bytes, str, bytearray or memoryview, not {type(body).__name__}")


cdef bytes checked_body(object body):
    cdef bytes raw = body_to_bytes(body)
    if len(raw) > BODY_MAX_BYTES:
        raise ValueError(f"body of {len(raw)} bytes exceeds the {BODY_MAX_BYTES}-byte limit")
    return raw


cdef bytes content_type_to_bytes(str content_type):
    cdef bytes ctype = content_type.encode("ascii")
    if len(ctype) > CONTENT_TYPE_MAX_BYTES or b"\r" in ctype or b"\n" in ctype:
        raise ValueError(f"invalid content type {content_type!r}")
    return ctype


Entry = _collections.namedtuple("Entry", ["body", "content_type", "version"])
Entry.__doc__ = "A published answer: its body bytes, its Content-Type and its write version."


cdef class ResponseTable:
    """Pre-serialized answers, keyed by short ASCII keys, served by native threads.

    Writers (any number of Python threads) publish immutable entries with one
    atomic pointer store; native readers never lock and never see a torn,
    stale-pointer or freed entry.  Memory of replaced entries is reclaimed by
    QSBR once every online reader has passed a quiescent point.

    Keys are 1-64 bytes of ``[A-Za-z0-9._:/-]`` (``str`` or ``bytes``); bodies
    are ``bytes`` (``str`` is UTF-8 encoded) of at most 16 MiB.  HTTP serves
    any of them; a UDP datagram carries at most 65,507 bytes (65,527 over
    IPv6), so a body over 65,489 bytes (the IPv4 limit less the longest tag)
    is flagged at set() and counted in ``memory_stats()["udp_oversize_keys"]``,
    and UDP answers ``{"error":"too_large"}`` for it when [tag, body] does not fit.
    """

    def __cinit__(self, *args, size_t capacity=64, **kwargs):
        # Cython passes __init__'s arguments to __cinit__ too: accept (and
        # ignore) `initial` and `content_type` so ResponseTable(mapping) works.
        cdef size_t cap = TABLE_MIN_CAPACITY
        while cap < capacity * 2:
            cap <<= 1
        self.index = index_new(cap)
        if self.index == NULL:
            raise MemoryError()
        self.min_capacity = cap
        self.entry_memory = 0
        self._lock = _threading.Lock()

    def __init__(self, object initial=None, *, size_t capacity=64,
                 str content_type="application/json", object max_keys=None,
                 bint stale_marking=False):
        """Create a table, optionally filled from a mapping of key -> body.

        `capacity` sizes the index for that many keys up front (it never
        shrinks below that).  `max_keys` caps how many keys the table holds:
        adding a key past it raises `TableFullError` (replacing the answer of
        a key already present always works).  Set it when a miss handler
        caches answers for keys clients choose, so clients cannot grow the
        table without bound.  `stale_marking`: a body holding
        ``"stale":false`` is kept a second time with ``"stale":true `` in its
        place, and the engines serve that copy while the control plane is
        stalled (`control_stall_s` of the servers; docs/serve.md).
        """
        self.stale_marking = stale_marking
        if max_keys is not None and (not isinstance(max_keys, int) or max_keys < 1):
            raise ValueError(f"max_keys must be a positive int or None, not {max_keys!r}")
        self.key_cap = 0 if max_keys is None else max_keys
        if initial is not None:
            self.update(initial, content_type=content_type)

    @property
    def max_keys(self):
        """The key cap given at creation, or None."""
        return self.key_cap or None

    def __dealloc__(self):
        # No engine can be reading: every engine holds a reference to its table.
        cdef bn_index* idx = self.index
        cdef size_t i
        if idx != NULL:
            for i in range(idx.mask + 1):
                if idx.slots[i].entry != NULL:
                    entry_unref(idx.slots[i].entry)
            free(idx)
            self.index = NULL
        retire_free_all(&self.retired)
        free(self.ws_hubs)
        deflater_free(self.deflater)

    # -- writer internals (GIL held, self._lock held) ------------------------

    cdef int _retire(self, void* mem, size_t nbytes) except -1:
        if retire_push(&self.retired, mem, nbytes) != 0:
            raise MemoryError()
        return 0

    cdef int _retire_entry(self, bn_entry* e) except -1:
        if retire_push_release(&self.retired, e, entry_bytes(e), entry_unref) != 0:
            raise MemoryError()
        return 0

    cdef size_t _reclaim(self) noexcept:
        """Free every retired object no reader can still hold; return how many."""
        return retire_reclaim(&self.retired)

    cdef int _reserve(self, size_t extra_keys) except -1:
        """Make room for `extra_keys` new keys at load factor <= 1/2, rebuilding
        (and dropping tombstones) when needed.  Publishes the new index."""
        cdef bn_index* old = self.index
        if (old.used + extra_keys) * 2 <= old.mask + 1:
            return 0
        return self._rebuild(self.live + extra_keys)

    cdef int _shrink(self) except -1:
        """After deletes: once at most 1/8 of the slots hold a live key, rebuild
        for the live keys (load <= 1/4, so half the capacity or less).  The gap
        between the grow (1/2, counting tombstones) and shrink (1/8) thresholds
        keeps a table that hovers around one size from rebuilding on every
        write."""
        cdef bn_index* idx = self.index
        if idx.mask + 1 <= self.min_capacity or self.live * 8 > idx.mask + 1:
            return 0
        return self._rebuild(self.live)

    cdef int _rebuild(self, size_t keys) except -1:
        """Publish a new index sized for `keys` (load <= 1/4) holding every live
        key; deleted keys (tombstones) are left behind."""
        cdef bn_index* old = self.index
        cdef size_t cap = self.min_capacity
        while cap < keys * 4:
            cap <<= 1
        cdef bn_index* idx = index_new(cap)
        if idx == NULL:
            raise MemoryError()
        cdef size_t i
        cdef bn_slot* src
        cdef bn_slot* dst
        for i in range(old.mask + 1):
            src = &old.slots[i]
            if src.hash != 0 and src.entry != NULL:
                dst = index_find_slot(idx, src.key, src.key_len, src.hash)
                memcpy(dst.key, src.key, src.key_len)
                dst.key_len = src.key_len
                dst.entry = src.entry
                dst.hash = src.hash
                idx.used += 1
        # Readers that loaded `old` keep probing it safely until their next
        # quiescent point; the entries it points to are shared, not copied.
        bn_store_ptr(<void**>&self.index, idx)
        self._retire(old, index_bytes(old))
        return 0

    cdef int _put(self, bytes key, const char* body, size_t body_len,
                  const char* ctype, size_t ctype_len) except -1:
        cdef const char* k = key
        cdef size_t n = len(key)
        cdef uint64_t h = key_hash(k, n)
        cdef bn_slot* slot = index_find_slot(self.index, k, n, h)
        if slot.entry == NULL and self.key_cap and self.live >= self.key_cap:
            raise TableFullError(f"the table holds its maximum of {self.key_cap} keys;"
                                 f" {key.decode('ascii')!r} was not added")
        if slot.hash == 0:
            self._reserve(1)
            slot = index_find_slot(self.index, k, n, h)
        self.version += 1
        cdef size_t zlen = 0
        if self.ws_compress_min and body_len >= self.ws_compress_min and self.deflater != NULL:
            with nogil:                 # the writer's deflate: once per publication
                zlen = ws_deflate_publication(self.deflater, self.ws_hubs, body, body_len)
        cdef bn_entry* e = entry_new(body, body_len, ctype, ctype_len, self.version,
                                     self.deflater.out if zlen else NULL, zlen,
                                     self.stale_marking)
        if e == NULL:
            raise MemoryError()
        self.entry_memory += entry_bytes(e)
        cdef bn_entry* old = NULL
        self.udp_oversize += body_len > UDP_BODY_FITS_BYTES
        if slot.hash == 0:
            memcpy(slot.key, k, n)
            slot.key_len = <uint32_t>n
            slot.entry = e
            bn_store_u64(&slot.hash, h)     # publishes the key: readers may now match it
            self.index.used += 1
            self.live += 1
        else:
            old = <bn_entry*>bn_xchg_ptr(<void**>&slot.entry, e)
            if old == NULL:
                self.live += 1
            else:
                self.entry_memory -= entry_bytes(old)
                self.udp_oversize -= old.body_len > UDP_BODY_FITS_BYTES
                self._retire_entry(old)
        if self.ws_hubs != NULL:
            ws_hubs_publish(self.ws_hubs, k, n, e)
        return 0

    cdef void _wake(self) noexcept:
        """Wake the stream workers for the publications _put pushed."""
        if self.ws_hubs != NULL:
            ws_hubs_wake(self.ws_hubs)

    # -- public API ----------------------------------------------------------

    def set(self, key, body, *, str content_type="application/json"):
        """Publish `body` (bytes, or str encoded as UTF-8) as the answer for `key`."""
        cdef bytes ctype = content_type_to_bytes(content_type)
        cdef bytes raw_key = key_to_bytes(key)
        cdef bytes raw_body = checked_body(body)
        with self._lock:
            try:
                self._put(raw_key, raw_body, len(raw_body), ctype, len(ctype))
            finally:
                self._wake()
            self._reclaim()

    def set_json(self, key, obj):
        """Serialize `obj` once with orjson and publish it as `key`'s answer."""
        self.set(key, _orjson.dumps(obj), content_type="application/json")

    def update(self, items, *, str content_type="application/json"):
        """Publish many answers: a mapping or an iterable of (key, body) pairs.

        Every key and body is checked before anything is published, so a bad
        one raises with the table untouched.  The index grows at most once and
        reclamation runs once for the whole batch.  Each key flips atomically;
        readers may see some keys of the batch new and others not yet.
        """
        cdef bytes ctype = content_type_to_bytes(content_type)
        cdef list checked = [(key_to_bytes(key), checked_body(body))
                             for key, body in (items.items() if hasattr(items, "items") else items)]
        cdef bytes raw_key
        cdef bytes raw_body
        cdef Py_ssize_t new_keys
        with self._lock:
            if self.key_cap:
                new_keys = len({raw_key for raw_key, raw_body in checked
                                if self._find(raw_key) == NULL})
                if self.live + new_keys > self.key_cap:
                    raise TableFullError(
                        f"the update adds {new_keys} keys to {self.live}, past the table's"
                        f" maximum of {self.key_cap}; nothing was published")
            self._reserve(len(checked))
            try:
                for raw_key, raw_body in checked:
                    self._put(raw_key, raw_body, len(raw_body), ctype, len(ctype))
            finally:
                self._wake()                    # once for the batch: see ws_hub_wake
            self._reclaim()

    def __setitem__(self, key, body):
        self.set(key, body)

    def __delitem__(self, key):
        if not self.discard(key):
            raise KeyError(key)

    def discard(self, key):
        """Remove `key` if present; return whether it was."""
        cdef bytes raw = key_to_bytes(key)
        cdef bn_slot* slot
        cdef bn_entry* old
        with self._lock:
            slot = index_find_slot(self.index, raw, len(raw), key_hash(raw, len(raw)))
            if slot.hash == 0 or slot.entry == NULL:
                return False
            old = <bn_entry*>bn_xchg_ptr(<void**>&slot.entry, NULL)
            self.live -= 1
            self.entry_memory -= entry_bytes(old)
            self.udp_oversize -= old.body_len > UDP_BODY_FITS_BYTES
            self._retire_entry(old)
            self._shrink()
            self._reclaim()
            return True

    cdef int _attach_hub(self, void* hub) except -1:
        """Tell `hub` (a WebSocket engine's) of every write from now on."""
        with self._lock:
            if self.ws_hubs == NULL:
                self.ws_hubs = <bn_ws_hubs*>calloc(1, sizeof(bn_ws_hubs))
                if self.ws_hubs == NULL:
                    raise MemoryError()
            if self.ws_hubs.n >= WS_HUBS_MAX:
                raise RuntimeError(f"a table serves at most {WS_HUBS_MAX} WebSocket engines at once")
            if (<bn_ws_hub*>hub).compress_min and self.deflater == NULL:
                self.deflater = deflater_new()
                if self.deflater == NULL:
                    raise MemoryError()
            self.ws_hubs.hubs[self.ws_hubs.n] = <bn_ws_hub*>hub
            self.ws_hubs.n += 1
            self._compress_min_update()
        return 0

    cdef void _compress_min_update(self) noexcept:
        # The least threshold of the hubs that compress: each worker still
        # sends the compressed frame only past its own engine's threshold.
        cdef int i
        cdef size_t least = 0
        for i in range(self.ws_hubs.n):
            if self.ws_hubs.hubs[i].compress_min and (
                    least == 0 or self.ws_hubs.hubs[i].compress_min < least):
                least = self.ws_hubs.hubs[i].compress_min
        self.ws_compress_min = least

    cdef void _detach_hub(self, void* hub) noexcept:
        cdef int i
        with self._lock:
            if self.ws_hubs == NULL:
                return
            for i in range(self.ws_hubs.n):
                if self.ws_hubs.hubs[i] == hub:
                    self.ws_hubs.n -= 1
                    self.ws_hubs.hubs[i] = self.ws_hubs.hubs[self.ws_hubs.n]
                    break
            self._compress_min_update()

    cdef bn_entry* _find(self, bytes raw) noexcept:
        # Caller holds self._lock, so no writer can retire (and free) the entry.
        return index_lookup(self.index, raw, len(raw))

    cdef object _lookup(self, key, bint whole):
        """A copy of `key`'s body, its whole Entry when `whole`, or None."""
        cdef bytes raw = key_to_bytes(key)
        cdef bn_entry* e
        with self._lock:
            e = self._find(raw)
            if e == NULL:
                return None
            body = PyBytes_FromStringAndSize(e.body, e.body_len)
            if not whole:
                return body
            return Entry(body, e.content_type[:e.content_type_len].decode("ascii"), e.version)

    def get(self, key, default=None):
        """The body published for `key` (a copy), or `default`."""
        body = self._lookup(key, False)
        return default if body is None else body

    def entry(self, key):
        """The full entry for `key` as ``Entry(body, content_type, version)``, or None."""
        return self._lookup(key, True)

    def __getitem__(self, key):
        body = self.get(key)
        if body is None:
            raise KeyError(key)
        return body

    def __contains__(self, key):
        cdef bytes raw
        try:
            raw = key_to_bytes(key)
        except (InvalidKeyError, TypeError):
            return False
        with self._lock:
            return self._find(raw) != NULL

    def __len__(self):
        return self.live

    cdef list _snapshot(self, bint bodies):
        """The keys that hold an answer, as (key, body copy) pairs when `bodies`."""
        cdef bn_index* idx
        cdef bn_entry* e
        cdef size_t i
        out = []
        with self._lock:
            idx = self.index
            for i in range(idx.mask + 1):
                e = idx.slots[i].entry
                if idx.slots[i].hash != 0 and e != NULL:
                    name = idx.slots[i].key[:idx.slots[i].key_len].decode("ascii")
                    out.append((name, PyBytes_FromStringAndSize(e.body, e.body_len))
                               if bodies else name)
        return out

    def keys(self):
        """A snapshot list of the keys that hold an answer."""
        return self._snapshot(False)

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        """A snapshot list of (key, body) pairs."""
        return self._snapshot(True)

    def reclaim(self):
        """Free retired entries no reader can hold any more; return how many.

        Writes reclaim on their own; call this after a burst of writes followed
        by silence to release the last retired entries promptly.
        """
        with self._lock:
            return self._reclaim()

    def memory_stats(self):
        """Bytes held by live entries, the index, and retired-but-unfreed objects."""
        with self._lock:
            return {
                "keys": self.live,
                "capacity": self.index.mask + 1,
                "entry_bytes": self.entry_memory,
                "index_bytes": index_bytes(self.index),
                "retired_objects": self.retired.count,
                "retired_bytes": self.retired.nbytes,
                "udp_oversize_keys": self.udp_oversize,
            }

    def __repr__(self):
        return f"<ResponseTable keys={self.live}>"
