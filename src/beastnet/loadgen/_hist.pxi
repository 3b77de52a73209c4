# The load generator's latency histogram: log-linear, HDR-style.
#
# Values are nanoseconds.  Below 256 ns every value has its own bucket; from
# there each power of two [2^e, 2^(e+1)) is cut into 128 equal sub-buckets, so
# a bucket is at most 1/128 (0.78 %) of its lower bound wide and the midpoint
# is within 0.4 % of any value in it.  2^38 ns (275 s) and above share the last
# bucket; the exact maximum is kept apart.  4096 buckets = 32 KiB a histogram.
# One histogram per generator thread, written only by that thread; Python
# merges them (NumPy, in histogram.py) after the join, or samples them for the timeline with
# relaxed loads while the threads run.

cdef enum:
    HIST_LINEAR = 256               # values below this are exact
    HIST_SUB_BITS = 7               # 128 sub-buckets per power of two
    HIST_TOP_LOG2 = 38              # first power of two that is clamped
    HIST_BUCKETS = 4096             # HIST_LINEAR + (HIST_TOP_LOG2 - 8) * 128

cdef struct bn_hist:
    uint64_t counts[HIST_BUCKETS]
    uint64_t total                      # values recorded
    uint64_t sum_ns                     # for the mean
    uint64_t min_ns                     # UINT64_MAX until the first value
    uint64_t max_ns                     # exact, not bucketed


cdef inline int hist_index(uint64_t v) noexcept nogil:
    cdef int e
    if v < HIST_LINEAR:
        return <int>v
    e = bn_log2_u64(v)
    if e >= HIST_TOP_LOG2:
        return HIST_BUCKETS - 1
    return HIST_LINEAR + ((e - 8) << HIST_SUB_BITS) + <int>((v >> (e - HIST_SUB_BITS)) & 127)


cdef inline void hist_record(bn_hist* h, uint64_t v) noexcept nogil:
    bn_count(&h.counts[hist_index(v)], 1)
    bn_count(&h.total, 1)
    bn_count(&h.sum_ns, v)
    if v < h.min_ns:
        bn_store_u64(&h.min_ns, v)
    if v > h.max_ns:
        bn_store_u64(&h.max_ns, v)


cdef void hist_reset(bn_hist* h) noexcept nogil:
    memset(h, 0, sizeof(bn_hist))
    h.min_ns = 0xFFFFFFFFFFFFFFFF


cdef void hist_add_snapshot(const bn_hist* src, uint64_t* counts, uint64_t* extra) noexcept nogil:
    """Add `src` into `counts` (HIST_BUCKETS) and `extra` (total, sum, min, max)
    with relaxed loads: safe while the owning thread still records."""
    cdef int i
    cdef uint64_t v
    for i in range(HIST_BUCKETS):
        counts[i] += bn_load_u64_relaxed(&src.counts[i])
    extra[0] += bn_load_u64_relaxed(&src.total)
    extra[1] += bn_load_u64_relaxed(&src.sum_ns)
    v = bn_load_u64_relaxed(&src.min_ns)
    if v < extra[2]:
        extra[2] = v
    v = bn_load_u64_relaxed(&src.max_ns)
    if v > extra[3]:
        extra[3] = v


def hist_bucket_bounds():
    """(lower, upper) bounds in ns of every histogram bucket, as two lists;
    the load generator's Python side turns them into NumPy arrays once."""
    cdef int i, e, sub
    lower = []
    upper = []
    for i in range(HIST_BUCKETS):
        if i < HIST_LINEAR:
            lower.append(i)
            upper.append(i + 1)
        else:
            e = 8 + ((i - HIST_LINEAR) >> HIST_SUB_BITS)
            sub = (i - HIST_LINEAR) & 127
            lower.append(<object>(128 + sub) << (e - HIST_SUB_BITS))
            upper.append(<object>(129 + sub) << (e - HIST_SUB_BITS))
    return lower, upper


def hist_index_of(uint64_t value_ns):
    """The bucket a value falls in (for tests of the histogram)."""
    return hist_index(value_ns)
