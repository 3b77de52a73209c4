# Quiescent-state-based reclamation (QSBR) for the response table.
#
# Every native thread that reads a table owns one slot.  After each batch it
# announces a quiescent point by copying the global epoch into its slot: at
# that moment it holds no entry or index pointer.  A writer that unlinks an
# object bumps the global epoch and tags the object with the new value E; the
# object may be freed once every *online* slot holds an epoch >= E.  A thread
# about to block in poll() goes offline (epoch 0), so an idle reader never holds
# reclamation back; it comes online again before it touches a table.
#
# One domain for the whole process: tables and engines come and go, slots are
# few, and a writer scans at most `qsbr_high_water` cache lines.

cdef bn_qsbr_slot* qsbr_slots = NULL
cdef uint64_t qsbr_global_epoch = 1     # 0 is reserved for "offline"
cdef int qsbr_high_water = 0            # slots [0, qsbr_high_water) have been used


cdef int qsbr_init() except -1:
    global qsbr_slots
    cdef void* mem = NULL
    cdef size_t size = sizeof(bn_qsbr_slot) * QSBR_MAX_THREADS
    if posix_memalign(&mem, BN_CACHE_LINE, size) != 0:
        raise MemoryError()
    memset(mem, 0, size)
    qsbr_slots = <bn_qsbr_slot*>mem
    return 0


cdef int qsbr_register() except -1:
    """Claim a slot for a thread about to start.  Called with the GIL held,
    which serialises registrations."""
    global qsbr_high_water
    cdef int i
    for i in range(QSBR_MAX_THREADS):
        if qsbr_slots[i].in_use == 0:
            qsbr_slots[i].in_use = 1
            bn_store_u64_sc(&qsbr_slots[i].epoch, 0)
            if i >= qsbr_high_water:
                qsbr_high_water = i + 1
            return i
    raise RuntimeError(f"more than {QSBR_MAX_THREADS} native reader threads")


cdef void qsbr_unregister(int i) noexcept:
    bn_store_u64_sc(&qsbr_slots[i].epoch, 0)
    qsbr_slots[i].in_use = 0


cdef inline void qsbr_quiescent(bn_qsbr_slot* slot) noexcept nogil:
    # seq_cst store: later table loads cannot move above it, and a writer
    # scanning slots either sees this epoch or we see its newer pointers.
    bn_store_u64_sc(&slot.epoch, bn_load_u64(&qsbr_global_epoch))


cdef inline void qsbr_online(bn_qsbr_slot* slot) noexcept nogil:
    qsbr_quiescent(slot)


cdef inline void qsbr_offline(bn_qsbr_slot* slot) noexcept nogil:
    # release: every table load of this thread completes before it.
    bn_store_u64(&slot.epoch, 0)


cdef inline uint64_t qsbr_retire_epoch() noexcept nogil:
    return bn_add_u64(&qsbr_global_epoch, 1)


cdef uint64_t qsbr_safe_epoch() noexcept nogil:
    """Objects retired with an epoch <= the result can be freed now."""
    cdef uint64_t low = 0xFFFFFFFFFFFFFFFF
    cdef uint64_t epoch
    cdef int i
    bn_fence()
    for i in range(qsbr_high_water):
        epoch = bn_load_u64(&qsbr_slots[i].epoch)
        if epoch != 0 and epoch < low:
            low = epoch
    return low


# A retire list: objects unlinked by one writer (serialised by its owner's
# lock), each one malloc block, freed in epoch order once QSBR allows.

cdef void release_block(void* mem) noexcept nogil:
    free(mem)


cdef int retire_push(bn_retire_list* rl, void* mem, size_t nbytes) noexcept nogil:
    """Queue `mem` for freeing; -1 when out of memory (then `mem` leaks: no
    reader can be proven done with it)."""
    return retire_push_release(rl, mem, nbytes, release_block)


cdef int retire_push_release(bn_retire_list* rl, void* mem, size_t nbytes,
                             void (*release)(void*) noexcept nogil) noexcept nogil:
    """Queue `mem` for `release` once no reader can hold it; -1 when out of memory."""
    cdef bn_retired* r = <bn_retired*>malloc(sizeof(bn_retired))
    if r == NULL:
        return -1
    r.next = NULL
    r.mem = mem
    r.release = release
    r.nbytes = nbytes
    r.epoch = qsbr_retire_epoch()
    if rl.tail == NULL:
        rl.head = r
    else:
        rl.tail.next = r
    rl.tail = r
    rl.count += 1
    rl.nbytes += nbytes
    return 0


cdef size_t retire_reclaim(bn_retire_list* rl) noexcept nogil:
    """Free every queued object no reader can still hold; return how many."""
    cdef bn_retired* r
    cdef size_t freed = 0
    if rl.head == NULL:
        return 0
    cdef uint64_t safe = qsbr_safe_epoch()
    # Epochs only grow along the list, so the freeable ones form a prefix.
    while rl.head != NULL and rl.head.epoch <= safe:
        r = rl.head
        rl.head = r.next
        r.release(r.mem)
        rl.nbytes -= r.nbytes
        free(r)
        freed += 1
    if rl.head == NULL:
        rl.tail = NULL
    rl.count -= freed
    return freed


cdef void retire_free_all(bn_retire_list* rl) noexcept nogil:
    """Free everything queued: only when no reader can exist any more."""
    cdef bn_retired* r
    while rl.head != NULL:
        r = rl.head
        rl.head = r.next
        r.release(r.mem)
        free(r)
    rl.tail = NULL
    rl.count = 0
    rl.nbytes = 0
