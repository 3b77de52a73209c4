# Response-rate limiting (RRL) of UDP error replies, as DNS servers limit
# theirs (BIND, NSD, Knot): with a spoofed source address, a small request
# must not make the server a reflector of error bodies aimed at a victim.
#
# - Only error replies come here; a hit never does, so serving costs nothing
#   more.  The reader reads the clock once a batch, and only when the batch
#   has an error reply to check.
# - Each engine keeps RRL_BUCKETS 64-bit words, each the GCRA "theoretical
#   arrival time" of the sources hashed to it: the algorithm of the API-key
#   limits (_limits.pxi, gcra_take), one CAS on one word, shared by every
#   reader of the engine, no lock, no allocation.  That admits a burst of
#   `burst` error replies per source, then one every 1/rate seconds.
# - A source is an IPv4 /24 or an IPv6 /56 (BIND's defaults): spoofing a
#   victim's neighbours still draws on one budget.  An IPv4-mapped IPv6
#   address counts as its IPv4 address.
# - Buckets are picked by a hash seeded per engine (os.urandom), so nobody
#   can plan a collision with a victim's bucket.  Sources that do collide
#   share one budget: that costs them error replies, never hits.
# - A limited reply slips through every `slip`-th time (per reader) as the
#   bare tag prefix without a body, never more bytes than its request: a real
#   client caught in a spoofed flood learns that it is limited instead of
#   timing out.  The other limited replies are not sent.  slip = 0: none slip.
# - Loopback sources (127/8, ::1, their v4-mapped forms) are exempt unless
#   asked otherwise: Linux drops a datagram that arrives from the network with
#   a loopback source (a martian), so one cannot be forged from off the host,
#   and local load tests of misses are not throttled.

cdef struct bn_rrl:
    uint64_t emission_ns                # 1e9 / rate: ns between error replies per source; 0 = off
    uint64_t tolerance_ns               # emission_ns * (burst - 1)
    uint64_t seed                       # random, per engine
    uint64_t* tats                      # RRL_BUCKETS GCRA words (ns, CLOCK_MONOTONIC), cache-line aligned
    int exempt_loopback                 # 1 = loopback sources are never limited


cdef inline int addr_is_v4mapped(const uint8_t* sa) noexcept nogil:
    # sockaddr_in6 keeps sin6_addr at byte 8; ::ffff:a.b.c.d is ten zero
    # bytes, two 0xff, then the IPv4 address.
    cdef int i
    for i in range(8, 18):
        if sa[i] != 0:
            return 0
    return sa[18] == 0xff and sa[19] == 0xff


cdef inline uint64_t rrl_source(const char* addr) noexcept nogil:
    """The source's prefix: IPv4 /24 (sin_addr at byte 4, or the tail of a
    v4-mapped sin6_addr), else IPv6 /56 tagged so it never equals an IPv4 one."""
    cdef const uint8_t* sa = <const uint8_t*>addr
    cdef const uint8_t* v4 = sa + 4
    cdef uint64_t v = 0
    cdef int i
    if (<const sockaddr*>addr).sa_family == AF_INET6:
        if not addr_is_v4mapped(sa):
            for i in range(8, 15):
                v = (v << 8) | sa[i]
            return v | (1ULL << 62)
        v4 = sa + 20
    return (<uint64_t>v4[0] << 16) | (<uint64_t>v4[1] << 8) | v4[2]


cdef inline int addr_is_loopback(const char* addr) noexcept nogil:
    cdef const uint8_t* sa = <const uint8_t*>addr
    cdef int i
    if (<const sockaddr*>addr).sa_family != AF_INET6:
        return sa[4] == 127
    if addr_is_v4mapped(sa):
        return sa[20] == 127
    for i in range(8, 23):
        if sa[i] != 0:
            return 0
    return sa[23] == 1


cdef inline int rrl_check(bn_rrl* rrl, const char* addr, uint64_t now_ns) noexcept nogil:
    """1: send the error reply to `addr`; 0: its source is over its budget."""
    # splitmix64's finalizer over (source ^ seed): every bit of the bucket
    # depends on every bit of both.
    cdef uint64_t h = rrl_source(addr) ^ rrl.seed
    cdef uint64_t retry_ns
    if rrl.exempt_loopback and addr_is_loopback(addr):
        return 1
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL
    h ^= h >> 31
    return gcra_take(&rrl.tats[h >> (64 - RRL_BUCKET_BITS)], rrl.emission_ns, rrl.tolerance_ns,
                     now_ns, &retry_ns)


cdef bn_rrl* rrl_new(double rate_per_s, unsigned int burst, bint exempt_loopback,
                     bytes seed) except? NULL:
    """A limiter for `rate_per_s` error replies a second per source after a
    burst of `burst`, or NULL for rate 0 (off).  Free with rrl_free()."""
    cdef void* mem = NULL
    cdef bn_rrl* rrl
    if rate_per_s <= 0:
        return NULL
    if posix_memalign(&mem, BN_CACHE_LINE, RRL_BUCKETS * sizeof(uint64_t)) != 0:
        raise MemoryError()
    rrl = <bn_rrl*>calloc(1, sizeof(bn_rrl))
    if rrl == NULL:
        free(mem)
        raise MemoryError()
    memset(mem, 0, RRL_BUCKETS * sizeof(uint64_t))
    rrl.tats = <uint64_t*>mem
    rrl.emission_ns = max(<uint64_t>(1e9 / rate_per_s), <uint64_t>1)
    rrl.tolerance_ns = rrl.emission_ns * (burst - 1)
    rrl.exempt_loopback = exempt_loopback
    memcpy(&rrl.seed, <const char*>seed, sizeof(uint64_t))
    return rrl


cdef void rrl_free(bn_rrl* rrl) noexcept nogil:
    if rrl != NULL:
        free(rrl.tats)
        free(rrl)
