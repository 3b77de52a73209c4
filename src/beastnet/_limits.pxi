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
#   was set), so persisted and in-memory counts add up without a lock.  A
#   capped key counts `admitted` with a CAS bounded by the cap, so readers
#   racing for the last unit admit exactly the cap, never one more.
# - A leased key (many nodes sharing one limit, serve/cluster.py) also needs a
#   token from `lease`, a count the control plane tops up in bulk from a GCRA
#   kept in Redis.  A request takes one with a CAS (never below zero); none
#   left answers rate_limited as the local GCRA does.  When a take leaves
#   `lease_low` tokens, the table's `hungry` count grows once, so the control
#   plane renews early instead of waiting for its next round.
#
# The table never holds a key itself, only its SHA-256 digest, as the key
# stores do: a request's key is hashed (OpenSSL's SHA-256 block function, a
# single 64-byte block for keys up to 55 bytes; includes/apikeyhash.h) and
# the digest looked up.  Hashing
# every request instead of remembering plaintext -> record keeps the reader
# stateless: an unknown-key flood costs a hash each, never memory.  Keys are
# random high-entropy tokens, so a plain SHA-256 suffices (no slow KDF).

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
    uint64_t ws_connections             # WebSocket connections open under this key (atomic)
    uint64_t ws_max_connections         # at most this many at once; 0 = no limit
    uint64_t ws_max_subscriptions       # per connection; 0 = the server's default
    int ws_unlimited                    # 1 = no WebSocket limits at all (partners)
    int ws_denied                       # 1 = this key may not open the WebSocket feed (403)
    int shed_last                       # 1 = the governor sheds this key's requests last (partners)
    uint64_t lease                      # tokens left for a leased key (atomic)
    uint64_t lease_low                  # a take that leaves this many marks the key hungry
    uint64_t* hungry_ref                # the table's count of low-lease events
    int leased                          # 1 = every admission also takes a lease token
    # Requests by (USAGE_* route, ADMIT_* verdict), cell route * ADMIT_VERDICTS
    # + verdict; cumulative, read by the usage log's harvest (atomic).
    uint64_t usage[USAGE_ROUTES * ADMIT_VERDICTS]
    unsigned char digest[APIKEY_DIGEST_BYTES]   # SHA-256 of the key; the key is never kept

cdef struct bn_keyslot:
    uint64_t hash                       # 0 = empty; stored last (release)
    bn_apikey* rec

# Unknown keys noticed by the native threads, for the control plane to look
# up elsewhere (serve/keycache.py: Redis, then PostgreSQL) and add to the
# table: the request itself was answered unauthorized at once, so a lookup
# never holds a native thread.  A fixed ring of digests: a reader claims the
# next slot with one fetch-add and fills it unless its previous note is still
# unread (then the note is dropped and counted: an unknown-key flood loses
# notes, never blocks; a real key is noted again on its next request).  The
# control plane sweeps every slot (KEYMISS_SLOTS is small), so it needs no
# order and no tail.
cdef struct bn_keymiss_slot:
    uint64_t state                      # KEYMISS_FREE / _WRITING / _READY (atomic)
    unsigned char digest[APIKEY_DIGEST_BYTES]

cdef struct bn_keymiss:
    uint64_t head                       # slots claimed so far (atomic; index = head % SLOTS)
    uint64_t noted                      # notes written (atomic)
    uint64_t dropped                    # notes lost: their slot was still unread (atomic)
    bn_keymiss_slot slots[KEYMISS_SLOTS]

cdef struct bn_keyindex:
    size_t mask                         # capacity - 1
    size_t used
    uint64_t* unknown_ref               # the table's refusals of unknown keys, by USAGE_* route
    bn_keymiss* misses                  # the table's ring, the same in every index; NULL = off
    bn_keyslot* slots                   # same allocation


cdef bn_keyindex* keyindex_new(size_t capacity) noexcept nogil:
    cdef bn_keyindex* idx = <bn_keyindex*>calloc(1, sizeof(bn_keyindex) + capacity * sizeof(bn_keyslot))
    if idx == NULL:
        return NULL
    idx.mask = capacity - 1
    idx.slots = <bn_keyslot*>(<char*>idx + sizeof(bn_keyindex))
    return idx


cdef inline uint64_t digest_slot_hash(const unsigned char* digest) noexcept nogil:
    # A SHA-256 digest is uniform already: its first 8 bytes are the slot hash.
    cdef uint64_t h
    memcpy(&h, digest, sizeof(uint64_t))
    return h | 1                        # never 0: 0 marks an empty slot


cdef inline bn_apikey* keyindex_lookup(bn_keyindex* idx,
                                       const unsigned char* digest) noexcept nogil:
    cdef uint64_t h = digest_slot_hash(digest)
    cdef size_t i = h & idx.mask
    cdef uint64_t seen
    cdef bn_apikey* rec
    while True:
        seen = bn_load_u64(&idx.slots[i].hash)
        if seen == 0:
            return NULL
        if seen == h:
            rec = idx.slots[i].rec
            if memcmp(rec.digest, digest, APIKEY_DIGEST_BYTES) == 0:
                return rec
        i = (i + 1) & idx.mask


cdef inline void keymiss_note(bn_keymiss* ring, const unsigned char* digest) noexcept nogil:
    cdef bn_keymiss_slot* slot
    if ring == NULL:
        return
    slot = &ring.slots[bn_fetch_add_relaxed(&ring.head, 1) & (KEYMISS_SLOTS - 1)]
    if not bn_cas_u64(&slot.state, KEYMISS_FREE, KEYMISS_WRITING):
        bn_add_relaxed(&ring.dropped, 1)
        return
    memcpy(slot.digest, digest, APIKEY_DIGEST_BYTES)
    bn_store_u64(&slot.state, KEYMISS_READY)        # release: the digest before the state
    bn_add_relaxed(&ring.noted, 1)


cdef inline bn_apikey* apikey_lookup(bn_keyindex* idx, const char* key,
                                     size_t n) noexcept nogil:
    """The record of the presented `key` (hashed here), or NULL (the key
    noted in the table's ring of unknown keys)."""
    cdef unsigned char digest[APIKEY_DIGEST_BYTES]
    cdef bn_apikey* rec
    bn_apikey_sha256(key, n, digest)
    rec = keyindex_lookup(idx, digest)
    if rec == NULL:
        keymiss_note(idx.misses, digest)
    return rec


cdef inline bint apikey_over_cap(bn_apikey* rec, uint64_t cap, uint64_t admitted) noexcept nogil:
    return bn_load_i64_relaxed(&rec.quota_base) + <int64_t>admitted >= <int64_t>cap


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


cdef inline int lease_take(bn_apikey* rec) noexcept nogil:
    """1 = one lease token taken, 0 = none left."""
    cdef uint64_t left
    while True:
        left = bn_load_u64_relaxed(&rec.lease)
        if left == 0:
            return 0
        if bn_cas_u64_relaxed(&rec.lease, left, left - 1):
            if left - 1 == bn_load_u64_relaxed(&rec.lease_low):
                bn_add_relaxed(rec.hungry_ref, 1)
            return 1


cdef inline int apikey_admit(bn_keyindex** index_ref, const char* key, size_t n, uint64_t now_ns,
                             uint64_t* retry_after_ns, bn_apikey** found,
                             int usage_route) noexcept nogil:
    """ADMIT_OK, or why not, counted in the key's usage cell for
    `usage_route` (a USAGE_* value; an unknown or missing key in the table's
    unknown count).  On ADMIT_RATE_LIMITED, *retry_after_ns says when
    the next request would pass; `found`, when not NULL, gets the key's record
    (NULL for an unknown key), so a caller needing it hashes the key once.
    Lock-free; the caller must be QSBR-online."""
    cdef bn_keyindex* idx = <bn_keyindex*>bn_load_ptr(<void**>index_ref)
    cdef bn_apikey* rec = NULL
    cdef int verdict
    if n != 0:
        rec = apikey_lookup(idx, key, n)
    if found != NULL:
        found[0] = rec
    if rec == NULL:
        bn_add_relaxed(&idx.unknown_ref[usage_route], 1)
        return ADMIT_UNAUTHORIZED
    verdict = apikey_decide(rec, now_ns, retry_after_ns)
    bn_add_relaxed(&rec.usage[usage_route * ADMIT_VERDICTS + verdict], 1)
    return verdict


cdef inline int apikey_decide(bn_apikey* rec, uint64_t now_ns,
                              uint64_t* retry_after_ns) noexcept nogil:
    """The verdict on one request of a known key (apikey_admit's second half)."""
    cdef uint64_t cap
    cdef uint64_t emission
    cdef uint64_t used
    cdef int leased
    if bn_load_int(&rec.revoked):
        return ADMIT_UNAUTHORIZED
    cap = bn_load_u64_relaxed(&rec.monthly_cap)
    # Cheap early refusal: a key at its cap must not spend rate-limit credit.
    # The exact test is the CAS on `admitted` below.
    if cap != 0 and apikey_over_cap(rec, cap, bn_load_u64_relaxed(&rec.admitted)):
        bn_add_relaxed(&rec.over_quota, 1)
        return ADMIT_OVER_QUOTA
    leased = bn_load_int(&rec.leased)
    if leased and not lease_take(rec):
        # The cluster's share is spent until the next renewal (a few ms to 100 ms).
        retry_after_ns[0] = LEASE_RETRY_NS
        bn_add_relaxed(&rec.rate_limited, 1)
        return ADMIT_RATE_LIMITED
    emission = bn_load_u64_relaxed(&rec.emission_ns)
    if emission != 0 and not gcra_take(&rec.tat, emission, bn_load_u64_relaxed(&rec.tolerance_ns),
                                       now_ns, retry_after_ns):
        if leased:
            bn_add_relaxed(&rec.lease, 1)       # not spent: give the token back
        bn_add_relaxed(&rec.rate_limited, 1)
        return ADMIT_RATE_LIMITED
    if cap == 0:
        bn_add_relaxed(&rec.admitted, 1)
        return ADMIT_OK
    # Check and count in one step: with a load then an add, two readers could
    # both see cap - 1 and admit cap + 1 requests.  A request that passed the
    # rate limit and loses the last unit here has spent one emission interval;
    # the key is over its cap, so nothing else is waiting for that credit.
    while True:
        used = bn_load_u64_relaxed(&rec.admitted)
        if apikey_over_cap(rec, cap, used):
            bn_add_relaxed(&rec.over_quota, 1)
            return ADMIT_OVER_QUOTA
        if bn_cas_u64_relaxed(&rec.admitted, used, used + 1):
            return ADMIT_OK


cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef tuple apikey_usage_cells(bn_apikey* rec):
    """A record's usage cells (USAGE_ROUTES x ADMIT_VERDICTS), read atomically."""
    cdef int i
    return tuple([bn_load_u64_relaxed(&rec.usage[i]) for i in range(USAGE_ROUTES * ADMIT_VERDICTS)])


#: The usage routes as (protocol, route), indexed by the USAGE_* values.
USAGE_ROUTE_NAMES = (("udp", "price"), ("http", "price"), ("http", "snapshot"),
                     ("http", "report"), ("ws", "stream"))


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


KEY_ID_PREFIX = "sha256:"


cdef bytes apikey_digest_of(object key):
    """The 32-byte digest that names `key` in the table: a key ID
    ("sha256:" + 64 hex digits, what key stores keep) decoded, or a key
    hashed.  A key ID (71 characters) is longer than any key can be."""
    cdef bytes raw
    cdef unsigned char digest[APIKEY_DIGEST_BYTES]
    if isinstance(key, str) and (<str>key).startswith(KEY_ID_PREFIX) \
            and len(<str>key) == len(KEY_ID_PREFIX) + 2 * APIKEY_DIGEST_BYTES:
        try:
            return bytes.fromhex((<str>key)[len(KEY_ID_PREFIX):])
        except ValueError:
            raise ValueError(f"a key ID is {KEY_ID_PREFIX} and 64 hex digits") from None
    raw = apikey_to_bytes(key)
    bn_apikey_sha256(raw, len(raw), digest)
    return PyBytes_FromStringAndSize(<char*>digest, APIKEY_DIGEST_BYTES)


def api_key_id(key):
    """The ID of an API key: "sha256:" + its SHA-256 digest in hex, what a
    key store keeps instead of the key.  Given an ID, the same ID."""
    return KEY_ID_PREFIX + apikey_digest_of(key).hex()


cdef class APIKeyTable:
    """API keys with their limits, checked by native threads on every request.

    ``set(key, qps=..., burst=..., monthly_cap=...)`` adds or updates a key
    (``qps=0`` means no rate limit, ``monthly_cap=0`` no cap: a partner key is
    ``set(key)``, still counted); ``revoke(key)`` makes it answer
    unauthorized.  ``usage()`` returns cumulative counters per key; the key
    store turns their deltas into persisted usage.

    The table keeps each key's SHA-256 digest, never the key: every method
    takes either the key or its ID (``api_key_id(key)``, what a key store
    keeps), and ``usage()``/``leases()`` name a key as it was first ``set``.
    """

    def __cinit__(self, size_t capacity=64):
        cdef size_t cap = 16
        while cap < capacity * 2:
            cap <<= 1
        self.index = keyindex_new(cap)
        if self.index == NULL:
            raise MemoryError()
        self.index.unknown_ref = self.unknown
        self.misses = <bn_keymiss*>calloc(1, sizeof(bn_keymiss))
        if self.misses == NULL:
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
        free(self.misses)
        self.misses = NULL

    cdef bn_apikey* _find(self, bytes digest) noexcept:
        return keyindex_lookup(self.index, <const unsigned char*><const char*>digest)

    cdef int _grow(self) except -1:
        cdef bn_keyindex* old = self.index
        cdef bn_keyindex* idx = keyindex_new((old.mask + 1) * 2)
        cdef size_t i, j
        if idx == NULL:
            raise MemoryError()
        idx.unknown_ref = self.unknown
        idx.misses = old.misses
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
            month_used=None, uint64_t ws_max_connections=0, uint64_t ws_max_subscriptions=0,
            bint ws_unlimited=False, bint ws_allowed=True, bint shed_last=False):
        """Add `key` or change its limits; un-revokes it.  `month_used`, when
        given, is the count already persisted for the current month.

        WebSocket feed limits: at most `ws_max_connections` streams open at
        once under this key and `ws_max_subscriptions` symbols per stream (0 =
        the server's default); `ws_unlimited` lifts both (partners);
        `ws_allowed=False` refuses this key the stream (403).  `shed_last`:
        an overloaded server's governor sheds this key's requests only at its
        hard bound, after every other key's (partners)."""
        cdef bytes digest = apikey_digest_of(key)
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
            rec = self._find(digest)
            if rec == NULL:
                if (self.index.used + 1) * 2 > self.index.mask + 1:
                    self._grow()
                rec = <bn_apikey*>calloc(1, sizeof(bn_apikey))
                if rec == NULL:
                    raise MemoryError()
                rec.hungry_ref = &self.hungry_events
                memcpy(rec.digest, <const char*>digest, APIKEY_DIGEST_BYTES)
                h = digest_slot_hash(rec.digest)
                i = h & self.index.mask
                while self.index.slots[i].hash != 0:
                    i = (i + 1) & self.index.mask
                self.index.slots[i].rec = rec
                bn_store_u64(&self.index.slots[i].hash, h)   # publishes the record
                self.index.used += 1
                self.records.append((key if isinstance(key, str) else key.decode("ascii"),
                                     digest))
            bn_store_u64_relaxed(&rec.emission_ns, emission)
            bn_store_u64_relaxed(&rec.tolerance_ns, emission * (burst - 1))
            bn_store_u64_relaxed(&rec.monthly_cap, monthly_cap)
            bn_store_u64_relaxed(&rec.ws_max_connections, ws_max_connections)
            bn_store_u64_relaxed(&rec.ws_max_subscriptions, ws_max_subscriptions)
            bn_store_int(&rec.ws_unlimited, 1 if ws_unlimited else 0)
            bn_store_int(&rec.ws_denied, 0 if ws_allowed else 1)
            bn_store_int(&rec.shed_last, 1 if shed_last else 0)
            if month_used is not None:
                bn_store_i64_relaxed(&rec.quota_base,
                                     <int64_t>month_used - <int64_t>bn_load_u64_relaxed(&rec.admitted))
            bn_store_int(&rec.revoked, 0)
            retire_reclaim(&self.retired)

    def set_month_used(self, key, uint64_t month_used):
        """Tell the monthly cap how many requests are already persisted this month."""
        cdef bytes digest = apikey_digest_of(key)
        with self._lock:
            rec = self._find(digest)
            if rec == NULL:
                raise KeyError(key)
            bn_store_i64_relaxed(&rec.quota_base,
                                 <int64_t>month_used - <int64_t>bn_load_u64_relaxed(&rec.admitted))

    def set_rate(self, key, *, double qps, unsigned int burst=1):
        """Change only `key`'s local rate limit (qps=0: none), leaving its
        cap, lease and revocation as they are: the cluster's fallback gives
        each node a share of the limit this way."""
        cdef bytes digest = apikey_digest_of(key)
        cdef uint64_t emission = 0
        if qps < 0 or burst < 1 or (qps > 0 and not 1e-6 <= qps <= 1e9):
            raise ValueError("qps must be 0 or 1e-6..1e9 and burst >= 1")
        if qps > 0:
            emission = max(<uint64_t>(1e9 / qps), <uint64_t>1)
            if <double>emission * <double>(burst - 1) > 1e18:
                raise ValueError(f"burst {burst} at {qps} req/s allows more than 1e9 s of tolerance")
        with self._lock:
            rec = self._find(digest)
            if rec == NULL:
                raise KeyError(key)
            bn_store_u64_relaxed(&rec.emission_ns, emission)
            bn_store_u64_relaxed(&rec.tolerance_ns, emission * (burst - 1))

    def lease(self, key, *, bint on, uint64_t add=0, uint64_t low=0):
        """Lease control for `key` (many nodes sharing one limit).  `on`:
        whether admissions need a lease token; `add` tokens are added (taken
        from the cluster's GCRA); a take that leaves `low` tokens counts the
        key as hungry.  Turning leasing off drops the tokens left.  Returns
        the tokens left after the change."""
        cdef bytes digest = apikey_digest_of(key)
        with self._lock:
            rec = self._find(digest)
            if rec == NULL:
                raise KeyError(key)
            bn_store_u64_relaxed(&rec.lease_low, low)
            if not on:
                # Takes stop at `leased`; a give-back racing this store can
                # leave a token on a key no admission asks a token of.
                bn_store_int(&rec.leased, 0)
                bn_store_u64_relaxed(&rec.lease, 0)
                return 0
            if add:
                bn_add_relaxed(&rec.lease, add)
            bn_store_int(&rec.leased, 1)
            return bn_load_u64_relaxed(&rec.lease)

    def leases(self):
        """{key: tokens left} for every leased key."""
        cdef bn_apikey* rec
        out = {}
        with self._lock:
            for name, digest in self.records:
                rec = self._find(digest)
                if bn_load_int(&rec.leased):
                    out[name] = bn_load_u64_relaxed(&rec.lease)
        return out

    @property
    def hungry(self):
        """How many times a leased key's tokens fell to its low mark: the
        control plane renews when this moves."""
        return bn_load_u64_relaxed(&self.hungry_events)

    def note_unknown(self, bint on):
        """Whether requests with a key the table lacks are noted for
        `unknown_keys()` (off by default: a table that holds every key has
        nothing to look up)."""
        with self._lock:
            bn_store_ptr(<void**>&self.index.misses, self.misses if on else NULL)

    def unknown_keys(self):
        """The IDs (sha256:…) of unknown keys requests presented since the
        last call, each once, and the counts so far: (ids, noted, dropped)."""
        cdef size_t i
        cdef bn_keymiss_slot* slot
        cdef set found = set()
        for i in range(KEYMISS_SLOTS):
            slot = &self.misses.slots[i]
            if bn_load_u64(&slot.state) == KEYMISS_READY:
                found.add(PyBytes_FromStringAndSize(<char*>slot.digest, APIKEY_DIGEST_BYTES))
                bn_store_u64(&slot.state, KEYMISS_FREE)
        return ([KEY_ID_PREFIX + d.hex() for d in found], bn_load_u64_relaxed(&self.misses.noted),
                bn_load_u64_relaxed(&self.misses.dropped))

    def revoke(self, key):
        """Make `key` answer unauthorized; return whether it was known."""
        cdef bytes digest = apikey_digest_of(key)
        with self._lock:
            rec = self._find(digest)
            if rec == NULL:
                return False
            bn_store_int(&rec.revoked, 1)
            return True

    def __contains__(self, key):
        cdef bn_apikey* rec
        try:
            digest = apikey_digest_of(key)
        except (TypeError, ValueError, UnicodeEncodeError):
            return False
        with self._lock:
            rec = self._find(digest)
            return rec != NULL and not rec.revoked

    def __len__(self):
        return len(self.records)

    def usage(self):
        """{key: (admitted, rate_limited, over_quota, revoked)}: cumulative counts."""
        cdef bn_apikey* rec
        out = {}
        with self._lock:
            for name, digest in self.records:
                rec = self._find(digest)
                out[name] = (bn_load_u64_relaxed(&rec.admitted),
                                            bn_load_u64_relaxed(&rec.rate_limited),
                                            bn_load_u64_relaxed(&rec.over_quota),
                                            bool(bn_load_int(&rec.revoked)))
        return out

    def usage_counts(self, key=None):
        """({key: counts}, unknown): cumulative requests by usage route and
        verdict.  `counts` is a tuple of USAGE_ROUTES x 4 numbers, route by
        route (USAGE_ROUTE_NAMES order), each route's (admitted,
        unauthorized, rate_limited, over_quota); `unknown` counts refusals of
        a missing or unknown key, one number per route.  What the usage log
        turns into rows, from deltas.  With `key` (a key or its ID), only
        that key's counts, under `key` (one lookup, not a walk of the table)."""
        cdef bn_apikey* rec
        cdef int i
        out = {}
        with self._lock:
            if key is not None:
                rec = self._find(apikey_digest_of(key))
                if rec != NULL:
                    out[key] = apikey_usage_cells(rec)
            else:
                for name, digest in self.records:
                    out[name] = apikey_usage_cells(self._find(digest))
        return out, tuple([bn_load_u64_relaxed(&self.unknown[i]) for i in range(USAGE_ROUTES)])

    def admit(self, key, now_ns=None, int usage_route=USAGE_HTTP_PRICE):
        """Check one request as a native thread would, on the same lock-free
        path: ("ok" | "unauthorized" | "rate_limited" | "over_quota",
        retry_after_ns).  For tests and tools."""
        cdef bytes raw = apikey_to_bytes(key) if key else b""
        cdef uint64_t retry = 0
        cdef uint64_t now = monotonic_ns() if now_ns is None else now_ns
        cdef int verdict = ADMIT_UNAUTHORIZED
        cdef const char* p = raw
        cdef size_t n = len(raw)
        # The native readers' path exactly: no lock, the GIL released, so
        # threads calling admit() race on the same CAS loops the readers do.
        # QSBR-online keeps an index replaced by set() alive until we are done.
        cdef int slot = qsbr_register()
        try:
            with nogil:
                qsbr_online(&qsbr_slots[slot])
                verdict = apikey_admit(&self.index, p, n, now, &retry, NULL, usage_route)
                qsbr_offline(&qsbr_slots[slot])
        finally:
            qsbr_unregister(slot)
        return (("ok", "unauthorized", "rate_limited", "over_quota")[verdict], retry)


# -- a race harness for the tests of the CAS loops above ------------------------

cdef struct bn_admit_race:
    bn_keyindex** index_ref             # &keys.index
    const char* key
    size_t key_len                      # bytes
    uint64_t now_ns                     # one instant for every attempt: no refill
    uint64_t attempts                   # admits per thread
    uint64_t threads                    # racing threads in all
    uint64_t* ready                     # threads at the start line
    int qsbr_slot
    uint64_t verdicts[4]                # by ADMIT_* value


cdef void* apikey_on_race_start(void* arg) noexcept nogil:
    cdef bn_admit_race* r = <bn_admit_race*>arg
    cdef uint64_t retry = 0
    cdef uint64_t i
    # A barrier: spin until every thread is running, so they reach the limit
    # together instead of one after the other as they are scheduled.
    bn_add_relaxed(r.ready, 1)
    while bn_load_u64(r.ready) < r.threads:
        pass
    qsbr_online(&qsbr_slots[r.qsbr_slot])
    for i in range(r.attempts):
        r.verdicts[apikey_admit(r.index_ref, r.key, r.key_len, r.now_ns, &retry, NULL,
                                USAGE_HTTP_PRICE)] += 1
    qsbr_offline(&qsbr_slots[r.qsbr_slot])
    return NULL


def admit_race(APIKeyTable keys not None, key, int threads, uint64_t attempts, uint64_t now_ns):
    """`threads` native threads released together each admit `key` `attempts`
    times at `now_ns`, on the readers' lock-free path; returns the summed
    verdicts {"ok": n, ...}.  For the tests of the rate-limit and cap CAS loops."""
    cdef bytes raw = apikey_to_bytes(key)
    cdef uint64_t ready = 0
    cdef int started = 0
    cdef int created = 0
    cdef int i
    cdef int rc = 0
    if not 1 <= threads <= 64:
        raise ValueError("threads must be 1..64")
    cdef bn_admit_race* races = <bn_admit_race*>calloc(threads, sizeof(bn_admit_race))
    cdef pthread_t* tids = <pthread_t*>calloc(threads, sizeof(pthread_t))
    if races == NULL or tids == NULL:
        free(races)
        free(tids)
        raise MemoryError()
    try:
        for i in range(threads):
            races[i].index_ref = &keys.index
            races[i].key = raw
            races[i].key_len = len(raw)
            races[i].now_ns = now_ns
            races[i].attempts = attempts
            races[i].threads = <uint64_t>threads
            races[i].ready = &ready
            races[i].qsbr_slot = qsbr_register()
            started += 1
        with nogil:
            for i in range(threads):
                rc = pthread_create(&tids[i], NULL, apikey_on_race_start, &races[i])
                if rc != 0:
                    break
                created += 1
            if rc != 0:                     # release the created ones from the barrier
                bn_add_relaxed(&ready, <uint64_t>(threads - created))
            for i in range(created):
                pthread_join(tids[i], NULL)
        if rc != 0:
            raise OSError(rc, f"pthread_create: {os.strerror(rc)}")
        return {name: sum(races[i].verdicts[v] for i in range(threads))
                for v, name in enumerate(("ok", "unauthorized", "rate_limited", "over_quota"))}
    finally:
        for i in range(started):
            qsbr_unregister(races[i].qsbr_slot)
        free(races)
        free(tids)
