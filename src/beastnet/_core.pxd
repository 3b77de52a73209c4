# The table of contents of beastnet._core: every cdef class and its fields.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from beastnet.includes.native cimport bn_counters, bn_http_counters
from beastnet.includes.native cimport bn_qsbr_slot, bn_threads


cdef struct bn_index
cdef struct bn_entry


cdef struct bn_retired:
    bn_retired* next
    void* mem                           # an entry or an index: one malloc block each
    void (*release)(void* mem) noexcept nogil   # free() for an index; drops the table's
                                                # reference for an entry (subscribers may hold more)
    uint64_t epoch                      # QSBR epoch of the unlink
    size_t nbytes                       # for memory accounting

cdef struct bn_retire_list:             # FIFO: epochs grow from head to tail
    bn_retired* head
    bn_retired* tail
    size_t count                        # objects waiting for QSBR
    size_t nbytes                       # bytes waiting for QSBR

cdef struct bn_control_beat:             # the control plane's liveness, as native threads see it
    uint64_t beat_ns                    # CLOCK_MONOTONIC of the control loop's last beat (atomic)
    uint64_t stall_ns                   # a beat older than this = stalled; 0 = not watched (atomic)

cdef struct bn_reader
cdef struct bn_rrl
cdef struct bn_missq
cdef struct bn_keyindex
cdef struct bn_keymiss
cdef struct bn_apikey
cdef struct bn_hworker
cdef struct bn_governor
cdef struct bn_ws_hubs
cdef struct bn_ws_hub
cdef struct bn_ws_conn
cdef struct bn_ws_worker
cdef struct bn_deflater
cdef struct bn_pusher


cdef class ResponseTable:
    cdef bn_index* index                # published index; readers load it atomically
    cdef bn_retire_list retired         # unlinked entries and indexes awaiting QSBR
    cdef size_t entry_memory            # bytes of live entries
    cdef size_t live                    # keys that hold an entry
    cdef uint64_t version               # last write's sequence number
    cdef size_t min_capacity            # slots; the index never shrinks below it
    cdef size_t key_cap                 # 0 = no cap; set() of a new key past it raises
    cdef bn_ws_hubs* ws_hubs            # WebSocket engines to tell of each write, NULL = none
    cdef size_t udp_oversize            # live entries past UDP_BODY_FITS_BYTES (flagged for UDP)
    cdef size_t ws_compress_min         # bodies deflated for the WebSocket feeds: this long or
                                        # longer (the least of the hubs' thresholds); 0 = none
    cdef bn_deflater* deflater          # permessage-deflate, once per publication, or NULL
    cdef int stale_marking              # 1 = entries keep a "stale":true variant (entry_new)
    cdef object _lock                   # serialises Python writers

    cdef int _retire(self, void* mem, size_t nbytes) except -1
    cdef int _retire_entry(self, bn_entry* e) except -1
    cdef int _attach_hub(self, void* hub) except -1
    cdef void _detach_hub(self, void* hub) noexcept
    cdef void _compress_min_update(self) noexcept
    cdef size_t _reclaim(self) noexcept
    cdef void _wake(self) noexcept
    cdef int _reserve(self, size_t extra_keys) except -1
    cdef int _shrink(self) except -1
    cdef int _rebuild(self, size_t keys) except -1
    cdef int _put(self, bytes key, const char* body, size_t body_len,
                  const char* ctype, size_t ctype_len) except -1
    cdef bn_entry* _find(self, bytes raw) noexcept
    cdef object _lookup(self, key, bint whole)
    cdef list _snapshot(self, bint bodies)


cdef class APIKeyTable:
    cdef bn_keyindex* index             # published index; readers load it atomically
    cdef bn_keymiss* misses             # unknown keys noted for the control plane
    cdef bn_retire_list retired         # replaced indexes awaiting QSBR (records live on)
    cdef list records                   # (name as first set, digest), in insertion order
    cdef uint64_t hungry_events         # low-lease events of leased keys (atomic)
    # Refusals of missing/unknown keys by USAGE_* route (atomic); 8 cells, at
    # least consts.pxi USAGE_ROUTES (a .pxd cannot include consts.pxi).
    cdef uint64_t unknown[8]
    cdef object _lock                   # serialises Python writers

    cdef bn_apikey* _find(self, bytes digest) noexcept
    cdef int _grow(self) except -1


cdef class NativeEngine:
    cdef ResponseTable table            # kept alive while the threads run
    cdef APIKeyTable api_keys           # None = API keys not enforced
    cdef int nthreads
    cdef char* counter_mem              # nthreads counter structs, cache-line aligned
    cdef size_t counter_bytes           # bytes of one thread's counter struct
    cdef int* qsbr_index                # nthreads slots in qsbr_slots, -1 = none
    cdef bn_threads group               # the native threads; group.running = started, not joined
    cdef int stopped
    cdef int stop_flag                  # read by the threads after each batch
    cdef int miss_efd                   # eventfd: misses/routes queued, -1 = no queue
    cdef bn_missq* missq
    cdef bn_control_beat control        # written by the control loop, read by every thread
    cdef bn_governor* gov               # the adaptive concurrency limit on the queued misses
                                        # (_governor.pxi), owned; off until set_governor()

    cdef int _setup(self, ResponseTable table, APIKeyTable api_keys, int n,
                    size_t counter_bytes, size_t miss_capacity) except -1
    cdef void _bind_qsbr(self, int i, bn_qsbr_slot* slot) noexcept
    cdef object _snapshot(self, int i)
    cdef int _start_threads(self, str name, void* (*main_fn)(void*) noexcept nogil,
                            void** args) except -1
    cdef void _join_threads(self) noexcept
    cdef void _release_qsbr(self) noexcept


cdef class UDPEngine(NativeEngine):
    cdef bn_reader** readers            # nthreads, owned
    cdef bn_rrl* rrl                    # error-reply rate limiter shared by the readers, NULL = off
    cdef uint64_t too_large_replies_n   # send_reply bodies swapped for too_large (GIL held)

    cdef void _join(self) noexcept


cdef class HTTPEngine(NativeEngine):
    cdef bn_hworker** workers           # nthreads, owned
    cdef int stop_efd                   # eventfd: wakes workers sleeping in epoll_wait
    cdef uint64_t owned_output_bytes    # output copied by all workers' connections (atomic)
    cdef bn_ws_hub* hub                 # WebSocket publication rings, NULL = WebSocket off
    cdef ResponseTable ws_topics        # HTTPServer.publish()'s topics, or None
    cdef ResponseTable keyed_replies    # answers per API key (http_keyed_lookup), or None
    cdef int hub_attached               # 1 while the tables publish to `hub`
    cdef uint64_t ws_reassembly_bytes   # client messages being reassembled, all workers (atomic)
    cdef void* tls_ctx                  # SSL_CTX* new TLS connections use (a reference held), NULL = plain
    cdef bn_retire_list tls_retired     # replaced contexts awaiting QSBR
    cdef object tls_context             # the TLSContext tls_ctx came from, or None
    cdef int use_uring                  # io="uring": the workers run _http_uring.pxi's loop

    cdef int _ws_setup(self, bytes path, bytes echo, ResponseTable topics, unsigned int max_subs,
                       size_t max_frame, size_t max_message, double stall_s,
                       unsigned int max_symbols, size_t compress_min) except -1
    cdef void _ws_detach(self) noexcept
    cdef void _ws_release(self) noexcept

    cdef void _join(self, int64_t grace_ns) noexcept
    cdef void _free_rings(self) noexcept


cdef class UDPPusher:
    cdef ResponseTable table            # kept alive while push() reads it
    cdef object sock                    # the Python socket owning p.fd
    cdef int qsbr_slot                  # -1 = none
    cdef list key_objs                  # bytes, kept alive: p.key_ptrs point into them
    cdef bn_pusher* p                   # what push() reads and writes without the GIL, owned
