# Webhook push over UDP: one datagram per (subscription, asset), every
# datagram due in a tick sent through sendmmsg batches of up to
# PUSH_BATCH_MAX, straight from the table's entries (nothing is copied: an
# iovec points at the entry's body).
#
# Lifetimes and thread contract:
# - `UDPPusher.push()` runs on one Python thread at a time (the webhook
#   loop) with the GIL released; it owns a QSBR slot and is online only
#   inside push(), so an idle pusher never holds reclamation back.
# - Entry pointers are looked up at most once per key per batch and dropped
#   at the batch's quiescent point: a price published mid-tick goes out in
#   the next batch, and a retired entry is never read after it may be freed.
# - One socket: AF_INET6 with IPV6_V6ONLY off, so IPv4 targets (as v4-mapped
#   addresses) and IPv6 targets share one batch.  Non-blocking:
#   fire-and-forget never waits; on EAGAIN or ENOBUFS the rest of the batch
#   is dropped and counted.

cdef struct bn_push_target:
    uint8_t addr[ADDR_MAX_BYTES]        # sockaddr_in6 (or sockaddr_in on a v4-only socket)
    uint32_t addr_len                   # bytes
    uint32_t first                      # first of its assets in UDPPusher.plan
    uint32_t count                      # assets

cdef struct bn_push_counters:
    uint64_t datagrams                  # handed to the kernel
    uint64_t bytes                      # payload bytes handed to the kernel
    uint64_t syscalls                   # sendmmsg calls that sent something
    uint64_t eagain                     # datagrams dropped: socket buffer full (EAGAIN)
    uint64_t enobufs                    # datagrams dropped: ENOBUFS
    uint64_t send_errors                # datagrams dropped: any other error (EMSGSIZE, no route...)
    uint64_t eintr                      # sendmmsg calls interrupted and retried
    uint64_t missing                    # datagrams not built: the asset has no entry
    uint64_t ticks                      # push() calls

cdef struct bn_pusher:
    int fd                              # the UDP socket (owned by UDPPusher.sock)
    bn_index** index_ref                # &table.index, loaded per lookup
    const char** key_ptrs               # nkeys, into UDPPusher.key_objs
    size_t* key_lens                    # nkeys
    bn_entry** entries                  # nkeys: this batch's lookups
    uint64_t* entry_batch               # nkeys: batch number of each lookup, 0 = none
    size_t nkeys
    bn_push_target* targets             # ntargets
    uint32_t ntargets
    uint32_t* plan                      # key index per (target, asset)
    mmsghdr* msgs                       # PUSH_BATCH_MAX
    iovec* iov                          # PUSH_BATCH_MAX
    uint32_t* owner                     # PUSH_BATCH_MAX: position in `due` of each message
    bn_push_counters counters


cdef class UDPPusher:
    """Sends every due subscription's assets from `table` over one UDP socket."""

    def __cinit__(self, ResponseTable table not None, list keys not None, object sock not None):
        self.qsbr_slot = -1
        self.p = <bn_pusher*>calloc(1, sizeof(bn_pusher))
        if self.p == NULL:
            raise MemoryError()
        self.table = table
        self.sock = sock
        self.p.fd = sock.fileno()
        self.p.index_ref = &table.index
        self.key_objs = [key_to_bytes(k) for k in keys]
        cdef size_t n = len(self.key_objs)
        self.p.nkeys = n
        self.p.key_ptrs = <const char**>calloc(n + 1, sizeof(char*))
        self.p.key_lens = <size_t*>calloc(n + 1, sizeof(size_t))
        self.p.entries = <bn_entry**>calloc(n + 1, sizeof(bn_entry*))
        self.p.entry_batch = <uint64_t*>calloc(n + 1, sizeof(uint64_t))
        self.p.msgs = <mmsghdr*>calloc(PUSH_BATCH_MAX, sizeof(mmsghdr))
        self.p.iov = <iovec*>calloc(PUSH_BATCH_MAX, sizeof(iovec))
        self.p.owner = <uint32_t*>calloc(PUSH_BATCH_MAX, sizeof(uint32_t))
        if (self.p.key_ptrs == NULL or self.p.key_lens == NULL or self.p.entries == NULL
                or self.p.entry_batch == NULL or self.p.msgs == NULL or self.p.iov == NULL
                or self.p.owner == NULL):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(<Py_ssize_t>n):
            self.p.key_ptrs[i] = <bytes>self.key_objs[i]
            self.p.key_lens[i] = len(<bytes>self.key_objs[i])
        self.qsbr_slot = qsbr_register()

    def __dealloc__(self):
        if self.qsbr_slot >= 0:
            qsbr_unregister(self.qsbr_slot)
        if self.p == NULL:
            return
        free(self.p.key_ptrs)
        free(self.p.key_lens)
        free(self.p.entries)
        free(self.p.entry_batch)
        free(self.p.msgs)
        free(self.p.iov)
        free(self.p.owner)
        free(self.p.targets)
        free(self.p.plan)
        free(self.p)

    def set_targets(self, list targets not None):
        """Replace the targets: a list of (sockaddr bytes, [key index, ...]).
        Target i is what push() calls i."""
        cdef Py_ssize_t n = len(targets)
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t i
        cdef bytes addr
        cdef list assets
        for addr, assets in targets:
            if len(addr) > ADDR_MAX_BYTES:
                raise ValueError("a socket address is at most 32 bytes")
            for j in assets:
                if not 0 <= j < <Py_ssize_t>self.p.nkeys:
                    raise ValueError(f"key index {j} out of range")
            total += len(assets)
        cdef bn_push_target* t = <bn_push_target*>calloc(n + 1, sizeof(bn_push_target))
        cdef uint32_t* plan = <uint32_t*>calloc(total + 1, sizeof(uint32_t))
        if t == NULL or plan == NULL:
            free(t)
            free(plan)
            raise MemoryError()
        total = 0
        for i in range(n):
            addr, assets = targets[i]
            memcpy(t[i].addr, <const char*>addr, len(addr))
            t[i].addr_len = <uint32_t>len(addr)
            t[i].first = <uint32_t>total
            t[i].count = <uint32_t>len(assets)
            for j in assets:
                plan[total] = <uint32_t>j
                total += 1
        free(self.p.targets)
        free(self.p.plan)
        self.p.targets = t
        self.p.plan = plan
        self.p.ntargets = <uint32_t>n

    def push(self, const uint32_t[::1] due not None, uint32_t[::1] sent not None):
        """Send the assets of targets `due[0..n)`; `sent[k]` gets the datagrams
        of `due[k]` the kernel took.  Returns the datagrams sent."""
        cdef Py_ssize_t n = due.shape[0]
        cdef Py_ssize_t k
        if sent.shape[0] < n:
            raise ValueError("`sent` is shorter than `due`")
        for k in range(n):
            if due[k] >= self.p.ntargets:
                raise ValueError(f"target {due[k]} out of range")
            sent[k] = 0
        if n == 0:
            return 0
        cdef uint64_t total
        cdef bn_qsbr_slot* slot = &qsbr_slots[self.qsbr_slot]
        with nogil:
            qsbr_online(slot)
            total = push_run(self.p, &due[0], &sent[0], <uint32_t>n, slot)
            qsbr_offline(slot)
        return total

    def stats(self):
        """Totals since creation, by name."""
        cdef bn_push_counters c
        counters_snapshot(&self.p.counters, &c, sizeof(c))
        return {"datagrams": c.datagrams, "bytes": c.bytes, "syscalls": c.syscalls,
                "eagain": c.eagain, "enobufs": c.enobufs, "send_errors": c.send_errors,
                "eintr": c.eintr, "missing": c.missing, "ticks": c.ticks}


cdef uint64_t push_run(bn_pusher* p, const uint32_t* due, uint32_t* sent, uint32_t n,
                       bn_qsbr_slot* slot) noexcept nogil:
    """Fill batches from the due targets' plans and send each; between
    batches, a quiescent point."""
    cdef uint32_t k, a
    cdef uint32_t nmsg = 0
    # A batch number no earlier tick used: entry_batch marks lookups made in this batch.
    cdef uint64_t batch = (p.counters.ticks + 1) * 0x100000000ULL
    cdef uint64_t total = 0
    cdef uint64_t missing = 0
    cdef bn_push_target* t
    cdef uint32_t key
    cdef bn_entry* e
    cdef mmsghdr* m
    for k in range(n):
        t = &p.targets[due[k]]
        for a in range(t.count):
            key = p.plan[t.first + a]
            if p.entry_batch[key] != batch:
                p.entries[key] = table_lookup(p.index_ref, p.key_ptrs[key], p.key_lens[key])
                p.entry_batch[key] = batch
            e = p.entries[key]
            if e == NULL:
                missing += 1
                continue
            p.iov[nmsg].iov_base = e.body
            p.iov[nmsg].iov_len = e.body_len
            m = &p.msgs[nmsg]
            m.msg_hdr.msg_name = t.addr
            m.msg_hdr.msg_namelen = t.addr_len
            m.msg_hdr.msg_iov = &p.iov[nmsg]
            m.msg_hdr.msg_iovlen = 1
            m.msg_hdr.msg_control = NULL
            m.msg_hdr.msg_controllen = 0
            m.msg_hdr.msg_flags = 0
            p.owner[nmsg] = k
            nmsg += 1
            if nmsg == PUSH_BATCH_MAX:
                total += push_send(p, nmsg, sent)
                nmsg = 0
                batch += 1              # forget this batch's entry pointers...
                qsbr_quiescent(slot)    # ...before saying we hold none
    if nmsg:
        total += push_send(p, nmsg, sent)
    bn_count(&p.counters.missing, missing)
    bn_count(&p.counters.ticks, 1)
    return total


cdef uint64_t push_send(bn_pusher* p, uint32_t nmsg, uint32_t* sent) noexcept nogil:
    """sendmmsg the batch; after a partial send, go on from the first unsent
    datagram.  A datagram refused on its own is counted and skipped; a full
    buffer drops (and counts) what is left of the batch."""
    cdef uint32_t done = 0
    cdef uint32_t i
    cdef int r
    cdef int err
    cdef uint64_t nbytes = 0
    cdef uint64_t delivered = 0
    while done < nmsg:
        r = sendmmsg(p.fd, p.msgs + done, nmsg - done, MSG_DONTWAIT)
        if r > 0:
            for i in range(done, done + <uint32_t>r):
                nbytes += p.msgs[i].msg_len
                sent[p.owner[i]] += 1
            done += <uint32_t>r
            delivered += <uint32_t>r
            bn_count(&p.counters.syscalls, 1)
            continue
        err = errno
        if r < 0 and err == EINTR:
            bn_count(&p.counters.eintr, 1)
            continue
        if err == EAGAIN or err == ENOBUFS:
            # The socket's buffer (or the device queue) is full: the rest of
            # the batch would fail the same way, one syscall each.  Drop it.
            bn_count(&p.counters.eagain if err == EAGAIN else &p.counters.enobufs, nmsg - done)
            break
        # This datagram alone is refused (EMSGSIZE, no route to its address):
        # skip it, send the rest.
        bn_count(&p.counters.send_errors, 1)
        done += 1
    bn_count(&p.counters.datagrams, delivered)
    bn_count(&p.counters.bytes, nbytes)
    return delivered
