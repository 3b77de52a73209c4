# The governor: an adaptive concurrency limit on an engine's queued work (one
# per engine: the HTTP workers' here, the UDP readers' misses in _udp.pxi).
#
# What queues is what the control plane answers: table misses and routes go
# onto the miss queue and wait for a Python handler.  That is where a server
# past its knee piles up latency (a hit is answered in the worker in
# microseconds and costs what a refusal would, so hits are never shed).
# `inflight` counts those requests from queueing to their reply (a reply for
# a connection that went away still counts down); their latency is that
# span, measured on the fine clock (admit_ns) by the worker that writes the
# reply.  Latencies are summed into a window shared by every worker (two
# relaxed adds per reply); the worker that first sees the window due closes
# it (one CAS on next_window_ns, so one closer per window) and moves the
# limit with governor_next_limit, after Netflix's Gradient2 limit:
#
#   long  = EWMA of the windows' mean latencies (about 2 s of them)
#   gradient = clamp(tolerance * long / short, 0.5, 1)     short = this window's mean
#   limit' = limit * gradient + sqrt(limit)                 (sqrt: Gradient2's queue allowance)
#
# plus an absolute bound Gradient2 lacks: a window whose mean passes the
# profile's target shrinks the limit by target/short (at most by half) and
# gets no allowance.  The step is smoothed (20 % of the way), clamped to
# [min_limit, max_limit], and the limit does not grow while under half of it
# is in use (the load, not the limit, is what holds it back).
#
# Shedding (conn_request, before a request is queued): while on, a request of
# a shed-first tier (public, pro, keyless) is answered 503 overloaded with
# Retry-After when inflight >= limit; a shed-last key (partners) only when
# inflight >= max_limit, the profile's hard bound.  Off, the cost is one
# relaxed load of `enabled` per queued request; `inflight` is kept either way
# so that switching on live starts from the true count.

cdef struct bn_governor:
    int enabled                         # 1 = shed past the limit (atomic; switched live)
    uint64_t inflight                   # requests queued to the control plane, not yet answered
    uint64_t limit                      # the adaptive limit now (requests; atomic)
    uint64_t limit_milli                # the same in thousandths, as the updater keeps it: a
                                        # step under one request accumulates, not rounds away
    uint64_t min_limit                  # bounds of `limit` (requests; set live)
    uint64_t max_limit                  # ... also where shed-last (partner) requests are shed
    uint64_t target_ns                  # a window's mean latency above this shrinks the limit
    uint64_t tolerance_pct              # how far (%) short may exceed long latency unshrunk
    uint64_t next_window_ns             # CLOCK_MONOTONIC end of the current window (CAS'd)
    uint64_t window_sum_ns              # latencies of the current window (relaxed adds)
    uint64_t window_count               # ... how many
    uint64_t long_rtt_ns                # Gradient2's long-term latency (EWMA of window means)
    uint64_t last_rtt_ns                # the last closed window's mean latency (gauge)
    uint64_t windows                    # windows closed (limit updates)
    uint64_t decreases                  # ... that lowered the limit
    uint64_t increases                  # ... that raised it


cdef inline int governor_on(bn_governor* g) noexcept nogil:
    # NULL: an engine built without one (the load-generator's test servers).
    return g != NULL and bn_load_int(&g.enabled)


cdef inline int governor_sheds(bn_governor* g, int shed_last) noexcept nogil:
    """1 = answer this request 503 overloaded (the governor is on)."""
    cdef uint64_t inflight = bn_load_u64_relaxed(&g.inflight)
    if shed_last:
        return inflight >= bn_load_u64_relaxed(&g.max_limit)
    return inflight >= bn_load_u64_relaxed(&g.limit)


cdef inline void governor_sample(bn_governor* g, uint64_t latency_ns) noexcept nogil:
    # A sample racing a window's close may land its sum in one window and its
    # count in the next: one sample's worth of error in a mean of many.
    bn_add_relaxed(&g.window_sum_ns, latency_ns)
    bn_add_relaxed(&g.window_count, 1)


cdef inline uint64_t governor_take(uint64_t* p) noexcept nogil:
    # Read and zero a window accumulator (no exchange primitive: a CAS loop).
    cdef uint64_t v
    while True:
        v = bn_load_u64_relaxed(p)
        if bn_cas_u64_relaxed(p, v, 0):
            return v


cdef double governor_next_limit(double limit, double short_ns, double* long_ns, double inflight,
                                double min_limit, double max_limit, double target_ns,
                                double tolerance) noexcept nogil:
    """The limit after a window of mean latency `short_ns` (> 0).  Updates
    the long-term latency at *long_ns (0 = none yet).  Pure: the tests drive
    it through governor_step().  Non-increasing in short_ns, within
    [min_limit, max_limit], one step moves at most 10 % down."""
    cdef double old_long = long_ns[0] if long_ns[0] > 0 else short_ns
    cdef double long_rtt = old_long + (short_ns - old_long) * 2.0 / (GOV_LONG_WINDOWS + 1)
    cdef double gradient
    cdef double next_limit
    # The gradient reads the EWMA before the drift correction below, so a
    # higher latency never yields a higher limit (the correction's threshold
    # would otherwise make it jump).
    gradient = tolerance * long_rtt / short_ns
    # Netflix's drift correction: a short latency far under the long one
    # means the queue drained; the baseline comes down fast, not over 2 s.
    if long_rtt > 2.0 * short_ns:
        long_rtt = long_rtt * 0.95
    long_ns[0] = long_rtt
    if gradient > 1.0:
        gradient = 1.0
    if target_ns > 0 and short_ns > target_ns:
        if target_ns / short_ns < gradient:
            gradient = target_ns / short_ns
        if gradient < 0.5:
            gradient = 0.5
        next_limit = limit * gradient           # over the target: no queue allowance
    else:
        if gradient < 0.5:
            gradient = 0.5
        next_limit = limit * gradient + sqrt(limit if limit > 0 else 0.0)
    if inflight * 2.0 < limit and next_limit > limit:
        next_limit = limit                      # the load holds it back, not the limit
    next_limit = limit + (next_limit - limit) * GOV_SMOOTHING_PCT / 100.0
    if next_limit < min_limit:
        next_limit = min_limit
    if next_limit > max_limit:
        next_limit = max_limit
    return next_limit


cdef void governor_close_window(bn_governor* g, uint64_t now_ns) noexcept nogil:
    """Close the window if it is due (and has samples enough, or is overdue):
    one worker wins the CAS and moves the limit."""
    cdef uint64_t due = bn_load_u64_relaxed(&g.next_window_ns)
    cdef uint64_t count
    cdef uint64_t total
    if now_ns < due:
        return
    if (due != 0 and bn_load_u64_relaxed(&g.window_count) < GOV_MIN_SAMPLES
            and now_ns < due + <uint64_t>GOV_WINDOW_MS * 10000000):
        return                          # a mean of a handful of samples is noise: wait
    if not bn_cas_u64(&g.next_window_ns, due, now_ns + <uint64_t>GOV_WINDOW_MS * 1000000):
        return                          # another worker closes it
    count = governor_take(&g.window_count)
    total = governor_take(&g.window_sum_ns)
    if count == 0 or total == 0:
        return
    bn_store_u64_relaxed(&g.last_rtt_ns, total // count)
    governor_apply(g, <double>total / <double>count)


cdef void governor_apply(bn_governor* g, double short_ns) noexcept nogil:
    """Move the limit after a window of mean latency `short_ns` (the window's
    closer only).  The limit is kept in thousandths: rounded to whole
    requests each window, a step of 0.3 would never move a limit of 2."""
    cdef double long_rtt = <double>bn_load_u64_relaxed(&g.long_rtt_ns)
    cdef uint64_t old_limit = bn_load_u64_relaxed(&g.limit)
    cdef double next_limit = governor_next_limit(
        <double>bn_load_u64_relaxed(&g.limit_milli) / 1000.0, short_ns, &long_rtt,
        <double>bn_load_u64_relaxed(&g.inflight), <double>bn_load_u64_relaxed(&g.min_limit),
        <double>bn_load_u64_relaxed(&g.max_limit), <double>bn_load_u64_relaxed(&g.target_ns),
        <double>bn_load_u64_relaxed(&g.tolerance_pct) / 100.0)
    cdef uint64_t new_limit = <uint64_t>(next_limit + 0.5)
    bn_store_u64_relaxed(&g.long_rtt_ns, <uint64_t>long_rtt)
    bn_store_u64_relaxed(&g.limit_milli, <uint64_t>(next_limit * 1000.0 + 0.5))
    bn_store_u64_relaxed(&g.limit, new_limit)
    bn_add_relaxed(&g.windows, 1)
    if new_limit < old_limit:
        bn_add_relaxed(&g.decreases, 1)
    elif new_limit > old_limit:
        bn_add_relaxed(&g.increases, 1)


cdef void governor_configure(bn_governor* g, int enabled, uint64_t min_limit, uint64_t max_limit,
                             double target_ms, double tolerance) noexcept nogil:
    """Switch on or off and set the bounds (GIL held or not: only atomics).
    Switching on starts a fresh estimate at GOV_INITIAL_LIMIT within bounds."""
    cdef uint64_t start = GOV_INITIAL_LIMIT
    if start < min_limit:
        start = min_limit
    if start > max_limit:
        start = max_limit
    bn_store_u64_relaxed(&g.min_limit, min_limit)
    bn_store_u64_relaxed(&g.max_limit, max_limit)
    bn_store_u64_relaxed(&g.target_ns, <uint64_t>(target_ms * 1e6))
    bn_store_u64_relaxed(&g.tolerance_pct, <uint64_t>(tolerance * 100.0 + 0.5))
    if enabled and not bn_load_int(&g.enabled):
        bn_store_u64_relaxed(&g.long_rtt_ns, 0)
        bn_store_u64_relaxed(&g.next_window_ns, 0)
        governor_take(&g.window_count)
        governor_take(&g.window_sum_ns)
    else:
        # Bounds changed while on: the limit moves into them at once.
        start = bn_load_u64_relaxed(&g.limit)
        if start < min_limit:
            start = min_limit
        elif start > max_limit:
            start = max_limit
    bn_store_u64_relaxed(&g.limit_milli, start * 1000)
    bn_store_u64_relaxed(&g.limit, start)
    bn_store_int(&g.enabled, 1 if enabled else 0)


def governor_replay(list latencies_ms, *, unsigned int inflight, unsigned int min_limit=4,
                    unsigned int max_limit=1000, double target_ms=50.0, double tolerance=1.5):
    """The limit after each window of `latencies_ms` (mean latencies) with
    `inflight` requests in flight, through the engine's own state (whole
    requests, as the workers compare), from a governor just switched on."""
    cdef bn_governor g
    memset(&g, 0, sizeof(g))
    governor_configure(&g, 1, min_limit, max_limit, target_ms, tolerance)
    g.inflight = inflight
    out = []
    for ms in latencies_ms:
        governor_apply(&g, <double>ms * 1e6)
        out.append(g.limit)
    return out


def governor_step(double limit, double short_ms, double long_ms, double inflight, *,
                  double min_limit=4, double max_limit=1000, double target_ms=50.0,
                  double tolerance=1.5):
    """One window of the governor's limit algorithm, for the tests:
    (next limit, next long-term latency in ms).  long_ms 0 = no history."""
    if short_ms <= 0:
        raise ValueError("short_ms must be > 0")
    cdef double long_ns = long_ms * 1e6
    cdef double out = governor_next_limit(limit, short_ms * 1e6, &long_ns, inflight, min_limit,
                                          max_limit, target_ms * 1e6, tolerance)
    return out, long_ns / 1e6
