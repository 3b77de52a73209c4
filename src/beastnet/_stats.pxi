# Counter snapshots.  A thread owns its counter struct (bn_counters,
# bn_http_counters: nothing but uint64_t fields) and writes it with relaxed
# stores; a snapshot reads every 64-bit word with a relaxed load, so no value
# is torn (the snapshot as a whole is not atomic, nor needs to be).

cdef void counters_snapshot(const void* src, void* dst, size_t nbytes) noexcept nogil:
    cdef const uint64_t* s = <const uint64_t*>src
    cdef uint64_t* d = <uint64_t*>dst
    cdef size_t i
    for i in range(nbytes // sizeof(uint64_t)):
        d[i] = bn_load_u64_relaxed(&s[i])
