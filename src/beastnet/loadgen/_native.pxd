# The table of contents of beastnet.loadgen._native: every cdef class and its fields.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from beastnet.includes.native cimport bn_threads
from beastnet.includes.openssl cimport SSL_CTX


cdef struct bn_lg_base
cdef struct bn_tls_client


cdef class TLSClientContext:
    cdef SSL_CTX* ctx                   # owned; the threads' SSL objects hold references too
    cdef bytes sni                      # server name for SNI, b"" = none (IP literal)
    cdef readonly bint resume           # threads keep and offer the last session

    cdef void attach(self, bn_tls_client* tc) noexcept


cdef class LoadRun:
    cdef int nthreads
    cdef bn_lg_base** threads           # one per generator thread, owned; each struct starts with its bn_lg_base
    cdef void* (*thread_main)(void*) noexcept nogil     # the protocol's loop
    cdef void (*thread_free)(bn_lg_base*) noexcept nogil  # frees one thread's state
    cdef bn_threads group               # the native threads; group.running = started, not joined
    cdef int stopped
    cdef int stop_flag                  # LG_RUN / LG_STOP / LG_ABORT, read by threads each pass
    cdef char* counters_mem             # nthreads counter structs, cache-line aligned
    cdef size_t counter_bytes           # size of one, padding included
    cdef int nhists                     # histograms per thread (LG_HIST_*)
    cdef uint32_t nkeys
    cdef char* blob                     # every payload, back to back
    cdef const char** data              # pointers into blob, one per payload
    cdef uint32_t* lens                 # bytes of each payload
    cdef uint32_t longest               # bytes of the longest payload
    cdef uint32_t* alias_prob           # weighted keys (Walker alias), NULL = uniform
    cdef uint32_t* alias_index
    cdef uint64_t start_ns              # CLOCK_MONOTONIC at start()
    cdef uint64_t warmup_ns
    cdef uint64_t duration_ns
    cdef TLSClientContext tls           # https:// / wss://: the run's SSL_CTX, None = plain TCP

    cdef int _setup(self, int nthreads, size_t counter_bytes, int nhists, list payloads,
                    uint32_t nkeys, alias, uint64_t warmup_ns, uint64_t duration_ns) except -1
    cdef int _add_thread(self, int i, bn_lg_base* b, int mode, double interval_ns,
                         uint64_t timeout_ns, list quotas, list cpus, uint64_t seed) except -1
    cdef void _abort(self) noexcept
    cdef void _join(self) noexcept
    cdef object _counters_dict(self, const uint64_t* sums)
    cdef dict _thread_extra(self, bn_lg_base* b)


cdef class UDPLoadRun(LoadRun):
    cdef uint8_t* tag_digits            # UDP GSO tag width per key, NULL = no GSO
    cdef uint16_t gso_seg               # bytes of every request under GSO


cdef class HTTPLoadRun(LoadRun):
    pass


cdef class WSLoadRun(LoadRun):
    pass
