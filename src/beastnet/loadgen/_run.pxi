# What the UDP and the HTTP load loops share: the loop modes and the stop
# flag, the protocol-independent half of a generator thread's state
# (bn_lg_base), the request mix (which key, when), and LoadRun, the base class
# that owns the threads, starts, stops and joins them, and reads their
# counters and histograms.
#
# A protocol's thread struct starts with its bn_lg_base, so a bn_lg_base* and
# a pointer to the whole struct are the same address: LoadRun works on the
# base, the protocol's loop on the whole.

cdef enum:
    LG_MAX_EVENTS = 256             # epoll events taken per wait
    LG_COUNTER_WORDS_MAX = 64       # uint64 words of the largest counters struct, padding included
    LG_ADDR_MAX_BYTES = 32          # room for a sockaddr_in6 (28 bytes)

# Loop modes.
cdef enum:
    LG_CLOSED = 0                   # a window of outstanding requests per socket / connection
    LG_OPEN_CONSTANT = 1            # target rate, evenly spaced requests
    LG_OPEN_POISSON = 2             # target rate, exponential gaps

# stop_flag values.
cdef enum:
    LG_RUN = 0                      # keep going
    LG_STOP = 1                     # stop sending, settle outstanding requests (reply or timeout)
    LG_ABORT = 2                    # leave now; outstanding requests are not accounted

# A thread's histograms, indexes into bn_lg_base.hists.
cdef enum:
    LG_HIST_MEASURED = 0            # latency of measured requests
    LG_HIST_ALL = 1                 # latency of every reply, warm-up included (timeline)
    LG_HIST_TTFB = 2                # HTTP: time to first byte of measured requests
    LG_HIST_CONNECT = 3             # HTTP: connect times after the warm-up
    LG_HIST_TLS = 4                 # HTTP over TLS: handshake times after the warm-up


cdef struct bn_lg_base:
    int index                           # thread number, 0-based
    int nthreads
    int cpu                             # CPU to pin to, -1 = no pinning
    int pin_error                       # errno from pinning, 0 = pinned or not asked
    int fatal_errno                     # errno that made the thread quit early, 0 = none
    int epfd                            # epoll over this thread's sockets, -1 = none
    int mode                            # LG_CLOSED / LG_OPEN_*
    int finished                        # set (release) when the thread is about to return
    int* stop_flag                      # the run's LG_RUN / LG_STOP / LG_ABORT
    uint64_t start_ns                   # CLOCK_MONOTONIC, the run's origin
    uint64_t measure_ns                 # warm-up ends: later intended sends are measured
    uint64_t end_ns                     # no intended send at or after this
    uint64_t timeout_ns                 # an unanswered request is lost after this
    double interval_ns                  # open loop: mean gap between requests (per socket, UDP; per thread, HTTP)
    uint64_t quota                      # measured requests this thread sends; 0 = no cap
    uint64_t rng                        # xorshift64* state, never 0
    uint32_t nkeys
    uint32_t* alias_prob                # weighted keys: Walker alias thresholds (2^32 scale); NULL = uniform
    uint32_t* alias_index               # weighted keys: the alias of each key
    uint64_t outstanding                # requests in flight, all sockets / connections
    uint64_t cpu_start_ns               # thread CPU time when the measured window began
    uint64_t cpu_end_ns                 # thread CPU time at exit
    uint64_t send_stop_ns               # when the thread stopped sending
    uint64_t last_reply_ns              # last measured reply
    bn_hist* hists                      # LG_HIST_*, one cache-line aligned block
    epoll_event* events                 # LG_MAX_EVENTS


cdef inline uint32_t lg_pick_key(bn_lg_base* b) noexcept nogil:
    cdef uint64_t r = bn_rand_u64(&b.rng)
    # Multiply-shift maps 32 random bits onto [0, nkeys) without a division;
    # the other 32 bits decide between the key and its alias.
    cdef uint32_t i = <uint32_t>(((r >> 32) * <uint64_t>b.nkeys) >> 32)
    if b.alias_prob != NULL and <uint32_t>r >= b.alias_prob[i]:
        i = b.alias_index[i]
    return i


cdef inline uint64_t lg_gap_ns(bn_lg_base* b) noexcept nogil:
    cdef double u
    if b.mode == LG_OPEN_POISSON:
        # Exponential gap: -ln(U) * mean, U uniform in (0, 1].
        u = <double>((bn_rand_u64(&b.rng) >> 11) + 1) * (1.0 / 9007199254740992.0)
        return <uint64_t>(-log(u) * b.interval_ns + 0.5)
    return <uint64_t>(b.interval_ns + 0.5)


cdef int lg_base_init(bn_lg_base* b, int nhists) noexcept nogil:
    """Allocate the events and `nhists` empty histograms; 0, or -1 when out
    of memory (lg_base_free then frees what was allocated)."""
    cdef void* mem = NULL
    cdef int i
    b.epfd = -1
    b.events = <epoll_event*>calloc(LG_MAX_EVENTS, sizeof(epoll_event))
    if posix_memalign(&mem, BN_CACHE_LINE, <size_t>nhists * sizeof(bn_hist)) != 0:
        return -1
    b.hists = <bn_hist*>mem
    for i in range(nhists):
        hist_reset(&b.hists[i])
    return 0 if b.events != NULL else -1


cdef void lg_base_free(bn_lg_base* b) noexcept nogil:
    if b.epfd >= 0:
        close(b.epfd)
        b.epfd = -1
    free(b.events)
    free(b.hists)


cdef inline int lg_wait(bn_lg_base* b, uint64_t wake, uint64_t* waits,
                        uint64_t* eintr) noexcept nogil:
    """Sleep in the thread's epoll until an event or `wake` (CLOCK_MONOTONIC
    ns).  Returns the events ready (0 when a signal cut the wait short:
    counted in `eintr`), or -1 on a fatal error, recorded in fatal_errno."""
    cdef uint64_t now = bn_now_ns()
    cdef uint64_t wait_ns = wake - now if wake > now else 0
    cdef int n
    if wait_ns:
        bn_count(waits, 1)
    n = bn_epoll_wait_ns(b.epfd, b.events, LG_MAX_EVENTS, wait_ns)
    if n >= 0:
        return n
    if errno == EINTR:
        bn_count(eintr, 1)
        return 0
    b.fatal_errno = errno
    return -1


cdef void lg_thread_done(bn_lg_base* b) noexcept nogil:
    """The thread leaves its loop: close its clocks, then say so (release:
    LoadRun.finished() then sees every value written before)."""
    if b.send_stop_ns == 0:
        b.send_stop_ns = bn_now_ns()
    b.cpu_end_ns = bn_thread_cpu_ns()
    bn_store_int(&b.finished, 1)


cdef int lg_raise_errno(str call) except -1:
    cdef int err = errno
    raise OSError(err, f"{call}: {os.strerror(err)}")


cdef class LoadRun:
    """Native generator threads: the part of a run that does not depend on
    the protocol.  A subclass allocates its threads and sets `thread_main`
    and `thread_free`; one start(), one join()."""

    cdef int _setup(self, int nthreads, size_t counter_bytes, int nhists, list payloads,
                    uint32_t nkeys, alias, uint64_t warmup_ns, uint64_t duration_ns) except -1:
        """Room for `nthreads` threads and their counters; the payloads in one
        blob the threads point into (never copied again); the alias table of
        the first `nkeys` payloads' weights, if any."""
        cdef size_t blob_len = 0
        cdef size_t off = 0
        cdef uint32_t j
        cdef void* mem = NULL
        if nthreads < 1:
            raise ValueError("at least one thread is needed")
        if nkeys < 1:
            raise ValueError("at least one key is needed")
        if counter_bytes > LG_COUNTER_WORDS_MAX * sizeof(uint64_t):
            raise SystemError("counters struct larger than LG_COUNTER_WORDS_MAX")
        self.nthreads = nthreads
        self.nhists = nhists
        self.nkeys = nkeys
        self.counter_bytes = counter_bytes
        self.warmup_ns = warmup_ns
        self.duration_ns = duration_ns
        self.threads = <bn_lg_base**>calloc(nthreads, sizeof(bn_lg_base*))
        if self.threads == NULL or bn_threads_init(&self.group, nthreads) != 0:
            raise MemoryError()
        if posix_memalign(&mem, BN_CACHE_LINE, counter_bytes * nthreads) != 0:
            raise MemoryError()
        memset(mem, 0, counter_bytes * nthreads)
        self.counters_mem = <char*>mem
        for p in payloads:
            blob_len += len(<bytes>p)
        self.blob = <char*>malloc(blob_len + 1)
        self.data = <const char**>calloc(len(payloads), sizeof(char*))
        self.lens = <uint32_t*>calloc(len(payloads), sizeof(uint32_t))
        if self.blob == NULL or self.data == NULL or self.lens == NULL:
            raise MemoryError()
        for j, p in enumerate(payloads):
            memcpy(self.blob + off, <char*><bytes>p, len(<bytes>p))
            self.data[j] = self.blob + off
            self.lens[j] = <uint32_t>len(<bytes>p)
            if self.lens[j] > self.longest:
                self.longest = self.lens[j]
            off += len(<bytes>p)
        if alias is not None:
            prob, index = alias
            self.alias_prob = <uint32_t*>calloc(nkeys, sizeof(uint32_t))
            self.alias_index = <uint32_t*>calloc(nkeys, sizeof(uint32_t))
            if self.alias_prob == NULL or self.alias_index == NULL:
                raise MemoryError()
            for j in range(nkeys):
                self.alias_prob[j] = prob[j]
                self.alias_index[j] = index[j]
        return 0

    cdef int _add_thread(self, int i, bn_lg_base* b, int mode, double interval_ns,
                         uint64_t timeout_ns, list quotas, list cpus, uint64_t seed) except -1:
        """Thread `i` joins the run (which frees it from now on): its share of
        the settings, the request mix, and its own epoll."""
        self.threads[i] = b
        b.index = i
        b.nthreads = self.nthreads
        b.cpu = -1 if cpus is None else cpus[i]
        b.mode = mode
        b.stop_flag = &self.stop_flag
        b.timeout_ns = timeout_ns
        b.interval_ns = interval_ns
        b.quota = 0 if quotas is None else quotas[i]
        b.rng = (seed + <uint64_t>0x9E3779B97F4A7C15 * <uint64_t>(i + 1)) | 1
        b.nkeys = self.nkeys
        b.alias_prob = self.alias_prob
        b.alias_index = self.alias_index
        b.epfd = epoll_create1(EPOLL_CLOEXEC)
        if b.epfd < 0:
            lg_raise_errno("epoll_create1")
        return 0

    cdef void _abort(self) noexcept:
        """Stop at once and join: nothing the threads read may be freed before."""
        if self.group.running:
            bn_store_int(&self.stop_flag, LG_ABORT)
            self._join()

    def __dealloc__(self):
        cdef int i
        self._abort()
        if self.threads != NULL:
            for i in range(self.nthreads):
                if self.threads[i] != NULL:
                    self.thread_free(self.threads[i])
            free(self.threads)
        bn_threads_free(&self.group)
        free(self.counters_mem)
        free(self.blob)
        free(self.data)
        free(self.lens)
        free(self.alias_prob)
        free(self.alias_index)

    def start(self):
        """Start the native threads (they never take the GIL)."""
        cdef int i
        cdef int rc = 0
        cdef uint64_t now
        if self.group.running or self.stopped:
            raise RuntimeError(f"a {type(self).__name__} starts once")
        now = bn_now_ns()
        self.start_ns = now
        for i in range(self.nthreads):
            self.threads[i].start_ns = now
            self.threads[i].measure_ns = now + self.warmup_ns
            self.threads[i].end_ns = now + self.warmup_ns + self.duration_ns
        with nogil:
            rc = bn_threads_start(&self.group, self.thread_main, <void**>self.threads)
        if rc != 0:
            self._abort()
            raise OSError(rc, f"pthread_create: {os.strerror(rc)}")

    cdef void _join(self) noexcept:
        with nogil:
            bn_threads_join(&self.group)
        self.stopped = 1

    def stop(self, bint abort=False):
        """Ask the threads to stop sending and settle what is in flight
        (a reply or a timeout each); `abort` leaves at once instead."""
        bn_store_int(&self.stop_flag, LG_ABORT if abort else LG_STOP)

    def finished(self):
        """True once every thread has left its loop (join() then returns at once)."""
        cdef int i
        for i in range(self.group.running):
            if not bn_load_int(&self.threads[i].finished):
                return False
        return True

    def join(self):
        """Wait for every thread (GIL released).  Idempotent."""
        if self.group.running:
            self._join()
        self.stopped = 1

    def counters(self):
        """The threads' counters summed: a dict of ints (relaxed loads, safe while running)."""
        cdef int i
        cdef size_t k
        cdef size_t nwords = self.counter_bytes // sizeof(uint64_t)
        cdef uint64_t sums[LG_COUNTER_WORDS_MAX]
        cdef const uint64_t* src
        memset(sums, 0, sizeof(sums))
        for i in range(self.nthreads):
            src = <const uint64_t*>(self.counters_mem + <size_t>i * self.counter_bytes)
            for k in range(nwords):
                sums[k] += bn_load_u64_relaxed(&src[k])
        return self._counters_dict(sums)

    cdef object _counters_dict(self, const uint64_t* sums):
        raise NotImplementedError

    cdef dict _thread_extra(self, bn_lg_base* b):
        return {}

    def histogram(self, int which=0):
        """The threads' histograms merged (LG_HIST_*: 0 = measured latency,
        1 = every reply for the timeline; HTTP adds 2 = time to first byte,
        3 = connect time): (counts as bytes of HIST_BUCKETS native uint64,
        total, sum_ns, min_ns, max_ns).  Safe while running."""
        cdef int i
        cdef uint64_t extra[4]
        cdef bytes out = PyBytes_FromStringAndSize(NULL, HIST_BUCKETS * sizeof(uint64_t))
        cdef uint64_t* counts = <uint64_t*><char*>out
        if not 0 <= which < self.nhists:
            raise ValueError(f"which must be 0..{self.nhists - 1}")
        memset(counts, 0, HIST_BUCKETS * sizeof(uint64_t))
        extra[0] = 0
        extra[1] = 0
        extra[2] = 0xFFFFFFFFFFFFFFFF
        extra[3] = 0
        for i in range(self.nthreads):
            hist_add_snapshot(&self.threads[i].hists[which], counts, extra)
        return out, extra[0], extra[1], extra[2] if extra[0] else 0, extra[3]

    def thread_info(self):
        """Per thread after the join: a dict of pin/fatal errnos, CPU time in the
        measured window, and when it stopped sending / last got a reply
        (ns since start, 0 = never), plus what the protocol adds."""
        cdef int i
        cdef bn_lg_base* b
        out = []
        for i in range(self.nthreads):
            b = self.threads[i]
            info = {
                "pin_error": b.pin_error,
                "fatal_errno": b.fatal_errno,
                "cpu_ns": b.cpu_end_ns - b.cpu_start_ns if b.cpu_end_ns > b.cpu_start_ns else 0,
                "send_stop_ns": b.send_stop_ns - self.start_ns if b.send_stop_ns else 0,
                "last_reply_ns": b.last_reply_ns - self.start_ns if b.last_reply_ns else 0,
            }
            info.update(self._thread_extra(b))
            out.append(info)
        return out
