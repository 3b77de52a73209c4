# API keys: lookup, GCRA rate limiting and usage counting on the native hot path.
#
# A key's record is allocated once and lives as long as its APIKeyTable, so a
# reader may keep a record pointer without QSBR; only the index that finds
# records is replaced on growth (and retired through QSBR like a table index).
# Revoking a key flips a flag; re-adding it reuses the record.  Every field a
# reader touches is read or updated atomically:
#
# - GCRA (the generic cell rate algorithm) keeps one "theoretical arrival
#   time" (tat) per key.  A request at `now` is admitted when
#   max(tat, now) - now <= tolerance, and moves tat to max(tat, now) + T,
#   T = 1/qps.  That allows a burst of `burst` requests, then one every T.
#   One CAS on one 64-bit word: every thread shares the key's limit, no lock.
# - `admitted` only grows; the control plane turns deltas into usage rows.
# - The monthly cap compares quota_base + admitted with the cap, where
#   quota_base = (count already persisted this month) - (admitted when that
#   was set), so persisted and in-memory counts add up without a lock.

cdef struct bn_apikey:
    uint64_t tat                        # GCRA theoretical arrival time, ns (CLOCK_MONOTONIC)
    uint64_t emission_ns                # T = 1e9 / qps; 0 = no rate limit
    uint64_t tolerance_ns               # T * (burst - 1): how far tat may run ahead of now
    uint64_t admitted                   # requests admitted since the record was made
    uint64_t rate_limited               # requests refused by the rate limit
    uint64_t over_quota                 # requests refused by the monthly cap
    uint64_t monthly_cap                # requests a month; 0 = no cap
    int64_t quota_base                  # month's persisted count minus `admitted` at that time
    int revoked                         # 1 = answers unauthorized
    uint32_t key_len                    # bytes
    char key[APIKEY_MAX_BYTES]

cdef struct bn_keyslot:
    uint64_t hash                       # 0 = empty; stored last (release)
    bn_apikey* rec

cdef struct bn_keyindex:
    size_t mask                         # capacity - 1
    size_t used
    bn_keyslot* slots                   # same allocation


cdef bn_keyindex* keyindex_new(size_t capacity) noexcept nogil:
    cdef bn_keyindex* idx = <bn_keyindex*>calloc(1, sizeof(bn_keyindex) + capacity * sizeof(bn_keyslot))
    if idx == NULL:
        return NULL
    idx.mask = capacity - 1
    idx.slots = <bn_keyslot*>(<char*>idx + sizeof(bn_keyindex))
    return idx


cdef inline bn_apikey* keyindex_lookup(bn_keyindex* idx, const char* key, size_t n) noexcept nogil:
    cdef uint64_t h = key_hash(key, n)
    cdef size_t i = h & idx.mask
    cdef uint64_t seen
    cdef bn_apikey* rec
    while True:
        seen = bn_load_u64(&idx.slots[i].hash)
        if seen == 0:
            return NULL
        if seen == h:
            rec = idx.slots[i].rec
            if rec.key_len == n and memcmp(rec.key, key, n) == 0:
                return rec
        i = (i + 1) & idx.mask


cdef inline int gcra_take(uint64_t* tat_ref, uint64_t emission_ns, uint64_t tolerance_ns,
                          uint64_t now_ns, uint64_t* retry_after_ns) noexcept nogil:
    """One GCRA step on the word at `tat_ref`: 1 = admitted (tat moved on),
    0 = too soon (*retry_after_ns says when the next one passes)."""
    cdef uint64_t tat
    cdef uint64_t start
    while True:
        tat = bn_load_u64_relaxed(tat_ref)
        start = tat if tat > now_ns else now_ns
        if start - now_ns > tolerance_ns:
            retry_after_ns[0] = start - now_ns - tolerance_ns
            return 0
        if bn_cas_u64_relaxed(tat_ref, tat, start + emission_ns):
            return 1


cdef inline int apikey_admit(bn_keyindex** index_ref, const char* key, size_t n, uint64_t now_ns,
                             uint64_t* retry_after_ns) noexcept nogil:
    """ADMIT_OK, or why not.  On ADMIT_RATE_LIMITED, *retry_after_ns says when
    the next request would pass.  Lock-free; the caller must be QSBR-online."""
    cdef bn_apikey* rec
    cdef uint64_t cap
    cdef uint64_t emission
    if n == 0:
        return ADMIT_UNAUTHORIZED
    rec = keyindex_lookup(<bn_keyindex*>bn_load_ptr(<void**>index_ref), key, n)
    if rec == NULL or bn_load_int(&rec.revoked):
        return ADMIT_UNAUTHORIZED
    cap = bn_load_u64_relaxed(&rec.monthly_cap)
    if cap != 0 and bn_load_i64_relaxed(&rec.quota_base) + <int64_t>bn_load_u64_relaxed(&rec.admitted) >= <int64_t>cap:
        bn_add_relaxed(&rec.over_quota, 1)
        return ADMIT_OVER_QUOTA
    emission = bn_load_u64_relaxed(&rec.emission_ns)
    if emission != 0 and not gcra_take(&rec.tat, emission, bn_load_u64_relaxed(&rec.tolerance_ns),
                                       now_ns, retry_after_ns):
        bn_add_relaxed(&rec.rate_limited, 1)
        return ADMIT_RATE_LIMITED
    bn_add_relaxed(&rec.admitted, 1)
    return ADMIT_OK


cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef bytes apikey_to_bytes(object key):
    cdef bytes raw
    if isinstance(key, str):
        raw = (<str>key).encode("ascii", "strict")
    elif isinstance(key, bytes):
        raw = <bytes>key
    else:
        raise TypeError(f"API key must be str or bytes, not {type(key).__name__}")
    cdef const unsigned char* p = raw
    cdef Py_ssize_t i
    if not 1 <= len(raw) <= APIKEY_MAX_BYTES:
        raise ValueError(f"API key must be 1..{APIKEY_MAX_BYTES} bytes")
    for i in range(len(raw)):
        if not (CHAR_CLASS[p[i]] & CHAR_PRINT):
            raise ValueError("API key must be printable ASCII without spaces")
    return raw


cdef class APIKeyTable:
    """API keys with their limits, checked by native threads on every request.

    ``set(key, qps=..., burst=..., monthly_cap=...)`` adds or updates a key
    (``qps=0`` means no rate limit, ``monthly_cap=0`` no cap: a partner key is
    ``set(key)``, still counted); ``revoke(key)`` makes it answer
    unauthorized.  ``usage()`` returns cumulative counters per key; the key
    store turns their deltas into persisted usage.
    """

    def __cinit__(self, size_t capacity=64):
        cdef size_t cap = 16
        while cap < capacity * 2:
            cap <<= 1
        self.index = keyindex_new(cap)
        if self.index == NULL:
            raise MemoryError()
        self.records = []
        self._lock = _threading.Lock()

    def __dealloc__(self):
        cdef size_t i
        if self.index != NULL:
            for i in range(self.index.mask + 1):
                if self.index.slots[i].rec != NULL:
                    free(self.index.slots[i].rec)
            free(self.index)
            self.index = NULL
        retire_free_all(&self.retired)

    cdef bn_apikey* _find(self, bytes raw) noexcept:
        return keyindex_lookup(self.index, raw, len(raw))

    cdef int _grow(self) except -1:
        cdef bn_keyindex* old = self.index
        cdef bn_keyindex* idx = keyindex_new((old.mask + 1) * 2)
        cdef size_t i, j
        if idx == NULL:
            raise MemoryError()
        for i in range(old.mask + 1):
            if old.slots[i].hash != 0:
                j = old.slots[i].hash & idx.mask
                while idx.slots[j].hash != 0:
                    j = (j + 1) & idx.mask
                idx.slots[j] = old.slots[i]
                idx.used += 1
        bn_store_ptr(<void**>&self.index, idx)
        if retire_push(&self.retired, old, sizeof(bn_keyindex) + (old.mask + 1) * sizeof(bn_keyslot)) != 0:
            raise MemoryError()
        return 0

    def set(self, key, *, double qps=0.0, unsigned int burst=1, uint64_t monthly_cap=0,
            month_used=None):
        """Add `key` or change its limits; un-revokes it.  `month_used`, when
        given, is the count already persisted for the current month."""
        cdef bytes raw = apikey_to_bytes(key)
        cdef bn_apikey* rec
        cdef uint64_t h
        cdef size_t i
        cdef uint64_t emission = 0
        if qps < 0 or burst < 1:
            raise ValueError("qps must be >= 0 and burst >= 1")
        # Keep GCRA's arithmetic inside 64 bits: T = 1e9/qps ns and a tolerance
        # of T * (burst - 1) ns; tat + T must never wrap.
        if qps > 0 and not 1e-6 <= qps <= 1e9:
            raise ValueError(f"qps must be 0 (no limit) or 1e-6..1e9, got {qps}")
        if qps > 0:
            emission = <uint64_t>(1e9 / qps)
            if emission == 0:
                emission = 1
            if <double>emission * <double>(burst - 1) > 1e18:
                raise ValueError(f"burst {burst} at {qps} req/s allows more than 1e9 s of tolerance")
        with self._lock:
            rec = self._find(raw)
            if rec == NULL:
                if (self.index.used + 1) * 2 > self.index.mask + 1:
                    self._grow()
                rec = <bn_apikey*>calloc(1, sizeof(bn_apikey))
                if rec == NULL:
                    raise MemoryError()
                rec.key_len = <uint32_t>len(raw)
                memcpy(rec.key, <const char*>raw, len(raw))
                h = key_hash(raw, len(raw))
                i = h & self.index.mask
                while self.index.slots[i].hash != 0:
                    i = (i + 1) & self.index.mask
                self.index.slots[i].rec = rec
                bn_store_u64(&self.index.slots[i].hash, h)   # publishes the record
                self.index.used += 1
                self.records.append(raw)
            bn_store_u64_relaxed(&rec.emission_ns, emission)
            bn_store_u64_relaxed(&rec.tolerance_ns, emission * (burst - 1))
            bn_store_u64_relaxed(&rec.monthly_cap, monthly_cap)
            if month_used is not None:
                bn_store_i64_relaxed(&rec.quota_base,
                                     <int64_t>month_used - <int64_t>bn_load_u64_relaxed(&rec.admitted))
            bn_store_int(&rec.revoked, 0)
            retire_reclaim(&self.retired)

    def set_month_used(self, key, uint64_t month_used):
        """Tell the monthly cap how many requests are already persisted this month."""
        cdef bytes raw = apikey_to_bytes(key)
        with self._lock:
            rec = self._find(raw)
            if rec == NULL:
                raise KeyError(key)
            bn_store_i64_relaxed(&rec.quota_base,
                                 <int64_t>month_used - <int64_t>bn_load_u64_relaxed(&rec.admitted))

    def revoke(self, key):
        """Make `key` answer unauthorized; return whether it was known."""
        cdef bytes raw = apikey_to_bytes(key)
        with self._lock:
            rec = self._find(raw)
            if rec == NULL:
                return False
            bn_store_int(&rec.revoked, 1)
            return True

    def __contains__(self, key):
        cdef bn_apikey* rec
        try:
            raw = apikey_to_bytes(key)
        except (TypeError, ValueError, UnicodeEncodeError):
            return False
        with self._lock:
            rec = self._find(raw)
            return rec != NULL and not rec.revoked

    def __len__(self):
        return len(self.records)

    def usage(self):
        """{key: (admitted, rate_limited, over_quota, revoked)}: cumulative counts."""
        cdef bn_apikey* rec
        out = {}
        with self._lock:
            for raw in self.records:
                rec = self._find(raw)
                out[raw.decode("ascii")] = (bn_load_u64_relaxed(&rec.admitted),
                                            bn_load_u64_relaxed(&rec.rate_limited),
                                            bn_load_u64_relaxed(&rec.over_quota),
                                            bool(bn_load_int(&rec.revoked)))
        return out

    def admit(self, key, now_ns=None):
        """Check one request as a native thread would: ("ok" | "unauthorized" |
        "rate_limited" | "over_quota", retry_after_ns).  For tests and tools."""
        cdef bytes raw = apikey_to_bytes(key) if key else b""
        cdef uint64_t retry = 0
        cdef uint64_t now = monotonic_ns() if now_ns is None else now_ns
        cdef int verdict = ADMIT_UNAUTHORIZED
        with self._lock:
            verdict = apikey_admit(&self.index, raw, len(raw), now, &retry)
        return (("ok", "unauthorized", "rate_limited", "over_quota")[verdict], retry)
