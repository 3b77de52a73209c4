# What every native engine shares: its thread group, the threads' QSBR slots,
# their counters, the miss queue and its eventfd, and the one record shape
# that carries a queued request to the control plane.
#
# UDPEngine and HTTPEngine derive from NativeEngine and add only what differs:
# the per-thread state, how stop() wakes a thread, and how a reply is sent.
# Nothing here runs on a native thread, but for the two helpers below.
#
# The control plane's liveness: its loop writes `control.beat_ns` every
# CONTROL_BEAT_MS (control.py), and a thread that finds the beat older than
# `control.stall_ns` treats the control plane as stalled: prices are served
# from their entries' "stale":true variant and the HTTP workers answer
# /healthz 503 themselves (docs/serve.md).  A thread checks once per wake-up
# (HTTP) or per batch (UDP), never per request.


cdef inline uint64_t monotonic_coarse_ns() noexcept nogil:
    # The last tick's time (4 ms steps here): all a multi-second bound needs.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef inline int control_stalled(bn_control_beat* c, uint64_t now_ns) noexcept nogil:
    """1 when the control plane is watched and its last beat is older than
    the bound.  `now_ns` may be the coarse clock, a tick behind the beat's."""
    cdef uint64_t bound = bn_load_u64_relaxed(&c.stall_ns)
    return bound != 0 and now_ns > bn_load_u64_relaxed(&c.beat_ns) + bound

cdef class NativeEngine:
    """Base of UDPEngine and HTTPEngine (not for direct use)."""

    def __cinit__(self):
        self.miss_efd = -1

    cdef int _setup(self, ResponseTable table, APIKeyTable api_keys, int n,
                    size_t counter_bytes, size_t miss_capacity) except -1:
        """Fields and memory every engine needs for `n` threads."""
        cdef void* mem = NULL
        cdef int i
        self.table = table
        self.api_keys = api_keys        # kept alive: threads hold &api_keys.index
        self.nthreads = n
        self.counter_bytes = counter_bytes
        if miss_capacity > 0:
            self.missq = missq_new(miss_capacity)
            if self.missq == NULL:
                raise MemoryError()
            self.miss_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.miss_efd < 0:
                raise_errno("eventfd")
        # One cache line (or more) per thread: threads never share a line.
        if posix_memalign(&mem, BN_CACHE_LINE, counter_bytes * n) != 0:
            raise MemoryError()
        memset(mem, 0, counter_bytes * n)
        self.counter_mem = <char*>mem
        self.qsbr_index = <int*>malloc(n * sizeof(int))
        if self.qsbr_index == NULL or bn_threads_init(&self.group, n) != 0:
            raise MemoryError()
        for i in range(n):
            self.qsbr_index[i] = -1
        self.gov = <bn_governor*>calloc(1, sizeof(bn_governor))
        if self.gov == NULL:
            raise MemoryError()
        governor_configure(self.gov, 0, 4, 1000, 50.0, 1.5)    # off (the profile's defaults)
        return 0

    def __dealloc__(self):
        # A subclass's __dealloc__ runs first: it has joined its threads and
        # freed their states, so slots left (a start() that failed half-way)
        # are released without _bind_qsbr.
        cdef int i
        if self.qsbr_index != NULL:
            for i in range(self.nthreads):
                if self.qsbr_index[i] >= 0:
                    qsbr_unregister(self.qsbr_index[i])
        bn_threads_free(&self.group)
        free(self.qsbr_index)
        free(self.counter_mem)
        missq_free(self.missq)
        free(self.gov)                  # the subclass joined its threads: none reads it now
        if self.miss_efd >= 0:
            close(self.miss_efd)

    cdef void _bind_qsbr(self, int i, bn_qsbr_slot* slot) noexcept:
        pass                            # each engine stores the slot in thread i's state

    cdef object _snapshot(self, int i):
        raise NotImplementedError

    cdef int _start_threads(self, str name, void* (*main_fn)(void*) noexcept nogil,
                            void** args) except -1:
        """Give each thread a QSBR slot, then start them all (GIL released).
        On failure the subclass's _join() must stop those that started."""
        cdef int i
        cdef int rc = 0
        if self.group.running or self.stopped:
            raise RuntimeError(f"{name} starts once")
        for i in range(self.nthreads):
            self.qsbr_index[i] = qsbr_register()
            self._bind_qsbr(i, &qsbr_slots[self.qsbr_index[i]])
        with nogil:
            rc = bn_threads_start(&self.group, main_fn, args)
        return rc

    cdef void _join_threads(self) noexcept:
        """After the subclass has woken its threads: join them without the
        GIL, then free their QSBR slots."""
        with nogil:
            bn_threads_join(&self.group)
        self._release_qsbr()
        self.stopped = 1

    cdef void _release_qsbr(self) noexcept:
        cdef int i
        if self.qsbr_index == NULL:
            return
        for i in range(self.nthreads):
            if self.qsbr_index[i] >= 0:
                qsbr_unregister(self.qsbr_index[i])
                self.qsbr_index[i] = -1
                self._bind_qsbr(i, NULL)

    @property
    def running(self):
        return self.group.running > 0

    def control_watch(self, double stall_s):
        """Treat the control plane as stalled once its beat is `stall_s` old
        (0 = never).  Counts as a beat."""
        if not stall_s >= 0:
            raise ValueError(f"control_stall_s must be >= 0, got {stall_s}")
        bn_store_u64_relaxed(&self.control.beat_ns, monotonic_ns())
        bn_store_u64_relaxed(&self.control.stall_ns, <uint64_t>(stall_s * 1e9))

    def control_beat(self):
        """The control loop is alive (control.py calls it every CONTROL_BEAT_MS)."""
        bn_store_u64_relaxed(&self.control.beat_ns, monotonic_ns())

    @property
    def control_stalled_s(self):
        """Seconds since the control plane's last beat when that is past the
        bound (what the native threads see), else 0.0."""
        cdef uint64_t now = monotonic_ns()
        if not control_stalled(&self.control, now):
            return 0.0
        return (now - bn_load_u64_relaxed(&self.control.beat_ns)) / 1e9

    @property
    def miss_fd(self):
        """eventfd that becomes readable when misses are queued (-1 without a queue)."""
        return self.miss_efd

    def counters(self):
        """A snapshot of every thread's counters, one dict per thread."""
        return [self._snapshot(i) for i in range(self.nthreads)]

    def drain_eventfd(self):
        """Reset the miss eventfd (call before draining the queue)."""
        cdef uint64_t value
        if self.miss_efd >= 0:
            read(self.miss_efd, &value, sizeof(value))

    def pop_misses(self, size_t limit):
        """Up to `limit` queued requests, as records of one shape for both engines:
        (thread, conn, gen, addr, tag_prefix, method, target, key, apikey).

        UDP: conn and gen are the governor's marks for send_reply (_udp.pxi),
        method and target None.  HTTP: tag_prefix is b"", key is None for a
        route (/admin/..., /metrics, /healthz)."""
        cdef bn_miss* cell
        out = []
        if self.missq == NULL:
            return out
        while <size_t>len(out) < limit:
            cell = missq_peek(self.missq)
            if cell == NULL:
                break
            out.append((
                cell.reader, cell.conn, cell.gen,
                PyBytes_FromStringAndSize(cell.addr, cell.addr_len),
                PyBytes_FromStringAndSize(cell.tag, cell.tag_len),
                cell.method[:cell.method_len].decode("ascii") if cell.method_len else None,
                cell.target[:cell.target_len].decode("latin-1") if cell.target_len else None,
                cell.key[:cell.key_len].decode("ascii") if cell.key_len else None,
                cell.apikey[:cell.apikey_len].decode("latin-1") if cell.apikey_len else None,
            ))
            missq_release(self.missq, cell)
        return out

    def set_governor(self, bint enabled, *, unsigned int min_limit=4, unsigned int max_limit=1000,
                     double target_ms=50.0, double tolerance=1.5):
        """Switch the adaptive concurrency limit on or off and set its bounds
        (live: the native threads read them atomically).  See _governor.pxi."""
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        if not 0 < target_ms <= 60000:
            raise ValueError(f"target_ms must be in (0, 60000], got {target_ms}")
        if not 1.0 <= tolerance <= 10.0:
            raise ValueError(f"tolerance must be 1..10, got {tolerance}")
        governor_configure(self.gov, enabled, min_limit, max_limit, target_ms, tolerance)

    def governor(self):
        """The governor's state: on, limit, in flight, bounds, latencies (ms)."""
        cdef bn_governor* g = self.gov
        return {"enabled": bool(bn_load_int(&g.enabled)),
                "limit": bn_load_u64_relaxed(&g.limit),
                "inflight": bn_load_u64_relaxed(&g.inflight),
                "min_limit": bn_load_u64_relaxed(&g.min_limit),
                "max_limit": bn_load_u64_relaxed(&g.max_limit),
                "target_ms": bn_load_u64_relaxed(&g.target_ns) / 1e6,
                "tolerance": bn_load_u64_relaxed(&g.tolerance_pct) / 100.0,
                "latency_ms": bn_load_u64_relaxed(&g.last_rtt_ns) / 1e6,
                "long_latency_ms": bn_load_u64_relaxed(&g.long_rtt_ns) / 1e6,
                "windows": bn_load_u64_relaxed(&g.windows),
                "decreases": bn_load_u64_relaxed(&g.decreases),
                "increases": bn_load_u64_relaxed(&g.increases)}
