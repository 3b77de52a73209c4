# The UDP fast path: one native reader thread per SO_REUSEPORT socket.
#
# A reader loops: block in recvmmsg(MSG_WAITFORONE) until at least one
# datagram is there (taking what else is queued, up to a batch), parse each
# datagram in place, answer hits from the table with a two-part iovec
# [tag prefix, body] that points into the receive slot and the entry (nothing
# is copied), hand misses to the miss queue, sendmmsg the whole batch.
# Error replies, and only they, pass response-rate limiting per source
# (_rrl.pxi); with silent_refusals, unauthorized and malformed requests get
# none at all.  An answer too large for one datagram is answered too_large.
# It is QSBR-offline while blocked in recvmmsg, and its return is the quiescent
# point: one syscall per batch under load, and one per wake-up when idle
# (a poll()-based wait costs three).  stop() wakes blocked readers with
# shutdown(SHUT_RD).  Readers never touch Python.
#
# The governor (_governor.pxi), when on, limits the misses waiting for the
# control plane as it does the HTTP workers' queued requests: past its
# adaptive limit a miss of a shed-first key is answered {"error":"overloaded"}
# (pre-serialized, through response-rate limiting like every error reply), a
# shed-last key's (partners) only past adaptive_max_limit.  A queued miss
# counts in `inflight` until send_reply(); its latency is measured from the
# batch's clock read to that reply.  Off, it costs one relaxed load a batch.

cdef enum:
    # bn_miss.gen of a UDP miss (UDP has no connection generation): what
    # send_reply() must do for the governor.  bn_miss.conn carries the
    # queueing time then (CLOCK_MONOTONIC microseconds, low 32 bits: a wait
    # under 71 minutes subtracts right across the wrap).
    UDP_MISS_COUNTED = 1                # counted in gov.inflight: count it down
    UDP_MISS_STAMPED = 2                # queued while on: conn is its time, sample it

cdef struct bn_request:
    const char* key
    uint32_t key_len
    uint32_t tag_len                    # bytes of "@TAG " to echo, 0 = no tag
    const char* apikey
    uint32_t apikey_len                 # 0 = no API key

cdef struct bn_reader:
    int fd                              # the reader's SO_REUSEPORT socket
    int index                           # position in the reuseport group
    int cpu                             # CPU to pin to, -1 = no pinning
    int pin_error                       # errno from pinning, 0 = pinned or not asked
    int fatal_errno                     # errno that made the reader quit, 0 = none
    int miss_fd                         # eventfd to signal the control plane, -1 = no miss queue
    int* stop_flag                      # engine's stop flag
    unsigned int batch                  # datagrams the arrays below hold (the capacity)
    int batch_live                      # datagrams per recvmmsg now, <= batch (atomic; set_batch)
    unsigned int slot_bytes             # receive buffer per datagram; longer ones are truncated
    bn_missq* missq                     # NULL: misses are answered not_found
    bn_index** index_ref                # &table.index, loaded once per datagram
    bn_keyindex** keys_ref              # &api_keys.index, NULL = API keys not enforced
    bn_control_beat* control            # &engine.control: the control plane's liveness
    int silent_refusals                 # 1 = unauthorized and malformed requests get no reply
    bn_rrl* rrl                         # the engine's error-reply limiter, NULL = off
    bn_governor* gov                    # the engine's governor, shared by the readers
    unsigned int rrl_slip               # every rrl_slip-th limited reply is the bare tag; 0 = none
    uint64_t rrl_limited                # error replies this reader has limited (drives the slip)
    bn_qsbr_slot* qsbr
    bn_counters* counters
    char* rx_data                       # batch * slot_bytes
    char* rx_addr                       # batch * ADDR_MAX_BYTES, source addresses
    mmsghdr* rx_msgs                    # batch
    iovec* rx_iov                       # batch, one slot each
    mmsghdr* tx_msgs                    # batch
    iovec* tx_iov                       # 2 * batch: [tag prefix, body] per reply
    char* scratch                       # batch * ERROR_SCRATCH_BYTES: bodies formatted per request
    char cmsg[CMSG_BUF_BYTES]           # SO_RXQ_OVFL, attached to the first message of a batch


cdef size_t format_rate_limited(char* out, uint64_t retry_after_ns) noexcept nogil:
    """{"error":"rate_limited","retry_after_ms":N} into `out` (ERROR_SCRATCH_BYTES);
    N rounds up, so a client that waits N ms is admitted."""
    cdef size_t n = BODY_RATE_LIMITED_MS.len
    cdef uint64_t ms = (retry_after_ns + 999999) // 1000000
    cdef char digits[20]
    cdef int nd = 0
    memcpy(out, BODY_RATE_LIMITED_MS.data, n)
    while True:
        digits[nd] = <char>(48 + ms % 10)
        nd += 1
        ms //= 10
        if ms == 0:
            break
    while nd > 0:
        nd -= 1
        out[n] = digits[nd]
        n += 1
    out[n] = 125                        # '}'
    return n + 1


cdef inline int udp_parse(const char* data, size_t n, bn_request* req) noexcept nogil:
    """Parse `[@TAG ]KEY[ APIKEY][\\r]\\n` in place (docs/protocol.md)."""
    cdef const uint8_t* p = <const uint8_t*>data
    cdef size_t i = 0
    cdef size_t start
    req.tag_len = 0
    req.key = NULL
    req.key_len = 0
    req.apikey = NULL
    req.apikey_len = 0
    if n > 0 and p[n - 1] == 10:        # LF
        n -= 1
        if n > 0 and p[n - 1] == 13:    # CR
            n -= 1
    if n == 0:
        return PARSE_EMPTY
    if p[0] == 64:                      # '@' opens a TAG
        i = 1
        while i < n and (CHAR_CLASS[p[i]] & CHAR_PRINT):
            i += 1
        if i == 1 or i - 1 > TAG_MAX_BYTES or i >= n or p[i] != 32:
            return PARSE_BAD
        i += 1                          # the space is echoed with the tag
        req.tag_len = <uint32_t>i
    start = i
    while i < n and (CHAR_CLASS[p[i]] & CHAR_KEY):
        i += 1
    if i == start or i - start > KEY_MAX_BYTES:
        return PARSE_BAD
    req.key = data + start
    req.key_len = <uint32_t>(i - start)
    if i == n:
        return PARSE_OK
    if p[i] != 32:                      # KEY ends at a space or at the end
        return PARSE_BAD
    i += 1
    start = i
    while i < n and (CHAR_CLASS[p[i]] & CHAR_PRINT):
        i += 1
    if i != n or i == start or i - start > APIKEY_MAX_BYTES:
        return PARSE_BAD
    req.apikey = data + start
    req.apikey_len = <uint32_t>(i - start)
    return PARSE_OK


cdef inline void udp_reply(mmsghdr* out, mmsghdr* src, const char* tag, size_t tag_len,
                           const char* body, size_t body_len) noexcept nogil:
    out.msg_hdr.msg_name = src.msg_hdr.msg_name
    out.msg_hdr.msg_namelen = src.msg_hdr.msg_namelen
    out.msg_hdr.msg_iov[0].iov_base = <void*>tag
    out.msg_hdr.msg_iov[0].iov_len = tag_len
    out.msg_hdr.msg_iov[1].iov_base = <void*>body
    out.msg_hdr.msg_iov[1].iov_len = body_len


cdef inline int udp_too_large(mmsghdr* m, size_t tag_len, size_t body_len) noexcept nogil:
    """Whether [tag, body] exceeds one datagram to this peer.  IPv6 carries
    65,527 payload bytes; IPv4, and IPv6 to a v4-mapped address, 65,507."""
    cdef const char* addr = <const char*>m.msg_hdr.msg_name
    if (<const sockaddr*>addr).sa_family == AF_INET6 and not addr_is_v4mapped(<const uint8_t*>addr):
        return tag_len + body_len > UDP6_PAYLOAD_MAX_BYTES
    return tag_len + body_len > UDP_PAYLOAD_MAX_BYTES


cdef inline unsigned int udp_error(bn_reader* r, unsigned int nout, mmsghdr* m, const char* tag,
                                   size_t tag_len, const char* body, size_t body_len,
                                   uint64_t* now_ns) noexcept nogil:
    """Queue an error reply in tx slot `nout` unless response-rate limiting
    holds it back (_rrl.pxi); return the next free slot."""
    if r.rrl != NULL:
        if now_ns[0] == 0:
            now_ns[0] = monotonic_ns()
        if not rrl_check(r.rrl, <const char*>m.msg_hdr.msg_name, now_ns[0]):
            r.rrl_limited += 1
            if r.rrl_slip == 0 or r.rrl_limited % r.rrl_slip != 0:
                bn_count(&r.counters.rrl_dropped, 1)
                return nout
            bn_count(&r.counters.rrl_slipped, 1)
            body_len = 0                # the slip: the tag alone, no larger than the request
    udp_reply(&r.tx_msgs[nout], m, tag, tag_len, body, body_len)
    return nout + 1


cdef inline int udp_governor_sheds(bn_governor* g, bn_apikey* rec, uint64_t* shed_public,
                                   uint64_t* shed_partner) noexcept nogil:
    """The governor is on: 1 = answer this miss overloaded (counted here).
    `rec` is the admitted key's record, NULL without keys (a public request)."""
    cdef int shed_last
    if bn_load_u64_relaxed(&g.inflight) < bn_load_u64_relaxed(&g.limit):
        return 0                        # under the limit: one load, one compare
    shed_last = rec != NULL and not bn_load_int(&rec.revoked) and bn_load_int(&rec.shed_last)
    if not governor_sheds(g, shed_last):
        return 0
    if shed_last:
        shed_partner[0] += 1
    else:
        shed_public[0] += 1
    return 1


cdef inline int udp_queue_miss(bn_reader* r, mmsghdr* m, const char* data, bn_request* req,
                               uint64_t stamp_ns) noexcept nogil:
    """Copy a miss into the queue; 0 when the queue is full.  `stamp_ns`:
    the queueing time for the governor's latency sample, 0 = none (off)."""
    cdef uint64_t pos
    cdef bn_miss* cell = missq_claim(r.missq, &pos)
    if cell == NULL:
        return 0
    cell.reader = <uint32_t>r.index
    cell.gen = UDP_MISS_COUNTED | (UDP_MISS_STAMPED if stamp_ns else 0)
    cell.conn = <uint32_t>(stamp_ns // 1000)
    cell.addr_len = m.msg_hdr.msg_namelen
    memcpy(cell.addr, m.msg_hdr.msg_name, m.msg_hdr.msg_namelen)
    cell.tag_len = req.tag_len
    memcpy(cell.tag, data, req.tag_len)
    missq_set_request(cell, req.key, req.key_len, req.apikey, req.apikey_len)
    # Counted before it is visible: the reply that counts it down cannot come first.
    bn_add_relaxed(&r.gov.inflight, 1)
    missq_publish(cell, pos)
    return 1


cdef int udp_reader_recv(bn_reader* r) noexcept nogil:
    """One blocking recvmmsg: the number of datagrams read, 0 for none, -1 on a
    fatal error.  Returns a QSBR-online thread that has passed a quiescent point."""
    cdef unsigned int i
    cdef int n
    cdef int err
    # Read once: set_batch() may change it between two calls, never within one.
    cdef unsigned int batch = <unsigned int>bn_load_int(&r.batch_live)
    for i in range(batch):
        r.rx_msgs[i].msg_hdr.msg_namelen = ADDR_MAX_BYTES
    r.rx_msgs[0].msg_hdr.msg_controllen = CMSG_BUF_BYTES
    qsbr_offline(r.qsbr)                # holds no table pointer while blocked
    n = recvmmsg(r.fd, r.rx_msgs, batch, MSG_WAITFORONE, NULL)
    err = errno
    qsbr_online(r.qsbr)
    if n >= 0:
        return n
    if err == EAGAIN:                   # == EWOULDBLOCK; only with a receive timeout
        return 0
    if err == EINTR:
        bn_count(&r.counters.eintr, 1)
        return 0
    bn_count(&r.counters.recv_errors, 1)
    if err == EBADF or err == ENOTSOCK or err == EFAULT or err == EINVAL:
        r.fatal_errno = err
        return -1
    return 0                            # ENOMEM and friends: count and carry on


cdef void udp_reader_kernel_drops(bn_reader* r) noexcept nogil:
    # The kernel attaches SO_RXQ_OVFL (a cumulative uint32 of the socket's
    # drops) only once it is non-zero; reading it once a batch is enough.
    cdef msghdr* hdr = &r.rx_msgs[0].msg_hdr
    cdef cmsghdr* cm
    cdef uint32_t drops
    if hdr.msg_controllen == 0:
        return
    cm = CMSG_FIRSTHDR(hdr)
    while cm != NULL:
        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_RXQ_OVFL:
            memcpy(&drops, CMSG_DATA(cm), sizeof(uint32_t))
            bn_store_u64(&r.counters.kernel_drops, drops)
        cm = CMSG_NXTHDR(hdr, cm)


cdef void udp_reader_send(bn_reader* r, unsigned int nout) noexcept nogil:
    cdef unsigned int sent = 0
    cdef unsigned int i
    cdef int n
    cdef int err
    cdef unsigned int delivered = 0
    cdef uint64_t nbytes = 0
    cdef uint64_t calls = 0
    while sent < nout:
        n = sendmmsg(r.fd, r.tx_msgs + sent, nout - sent, 0)
        if n > 0:
            for i in range(sent, sent + <unsigned int>n):
                nbytes += r.tx_msgs[i].msg_len
            sent += <unsigned int>n
            delivered += <unsigned int>n
            calls += 1
            continue
        err = errno
        if n < 0 and err == EINTR:
            bn_count(&r.counters.eintr, 1)
            continue
        # The datagram at `sent` was refused (ENOBUFS, EAGAIN after
        # SO_SNDTIMEO, EMSGSIZE, a vanished route...): count it, skip it.
        bn_count(&r.counters.send_errors, 1)
        if err == ENOBUFS or err == EAGAIN:
            bn_count(&r.counters.send_enobufs, 1)
        sent += 1
    bn_count(&r.counters.tx_packets, delivered)
    bn_count(&r.counters.tx_bytes, nbytes)
    bn_count(&r.counters.tx_batches, calls)


cdef void udp_reader_serve(bn_reader* r, unsigned int n) noexcept nogil:
    cdef unsigned int i
    cdef unsigned int nout = 0
    cdef mmsghdr* m
    cdef const char* data
    cdef unsigned int length
    cdef int status
    cdef bn_request req
    cdef bn_entry* entry
    cdef uint64_t rx_bytes = 0
    cdef uint64_t hits = 0
    cdef uint64_t misses = 0
    cdef uint64_t not_found = 0
    cdef uint64_t bad = 0
    cdef uint64_t truncated = 0
    cdef uint64_t empty = 0
    cdef uint64_t queued = 0
    cdef uint64_t queue_drops = 0
    cdef uint64_t unauthorized = 0
    cdef uint64_t rate_limited = 0
    cdef uint64_t over_quota = 0
    cdef uint64_t too_large = 0
    cdef uint64_t unanswered = 0
    cdef uint64_t now_ns = 0            # 0 = not read yet this batch
    cdef uint64_t retry_ns = 0
    cdef int admit
    cdef char* scratch
    cdef int stalled = 0                # the control plane is stalled: serve stale variants
    cdef uint64_t stale_served = 0
    cdef bn_apikey* rec = NULL          # the admitted key's record (the governor's tier)
    cdef int gov_on = governor_on(r.gov)    # read once a batch: switched live
    cdef uint64_t shed_public = 0
    cdef uint64_t shed_partner = 0
    if r.keys_ref != NULL:
        now_ns = monotonic_ns()         # one clock read a batch: GCRA needs no finer time
    if bn_load_u64_relaxed(&r.control.stall_ns):
        stalled = control_stalled(r.control, now_ns if now_ns else monotonic_coarse_ns())
    for i in range(n):
        m = &r.rx_msgs[i]
        data = r.rx_data + <size_t>i * r.slot_bytes
        length = m.msg_len
        rx_bytes += length
        if m.msg_hdr.msg_flags & MSG_TRUNC:
            # Longer than any valid request; its tag cannot be trusted either.
            truncated += 1
            bad += 1
            if r.silent_refusals:
                unanswered += 1
            else:
                nout = udp_error(r, nout, m, data, 0, BODY_BAD_REQUEST.data, BODY_BAD_REQUEST.len,
                                 &now_ns)
            continue
        status = udp_parse(data, length, &req)
        if status == PARSE_OK and r.keys_ref != NULL:
            admit = apikey_admit(r.keys_ref, req.apikey, req.apikey_len, now_ns, &retry_ns, &rec,
                                 USAGE_UDP_PRICE)
            if admit != ADMIT_OK:
                if admit == ADMIT_UNAUTHORIZED:
                    unauthorized += 1
                    if r.silent_refusals:
                        unanswered += 1
                    else:
                        nout = udp_error(r, nout, m, data, req.tag_len, BODY_UNAUTHORIZED.data,
                                         BODY_UNAUTHORIZED.len, &now_ns)
                elif admit == ADMIT_OVER_QUOTA:
                    over_quota += 1
                    nout = udp_error(r, nout, m, data, req.tag_len, BODY_OVER_QUOTA.data,
                                     BODY_OVER_QUOTA.len, &now_ns)
                else:
                    rate_limited += 1
                    scratch = r.scratch + <size_t>nout * ERROR_SCRATCH_BYTES
                    nout = udp_error(r, nout, m, data, req.tag_len, scratch,
                                     format_rate_limited(scratch, retry_ns), &now_ns)
                continue
        if status == PARSE_OK:
            entry = table_lookup(r.index_ref, req.key, req.key_len)
            if entry != NULL:
                hits += 1
                # One compare on a length the hit loads anyway; only bodies
                # within a tag of the UDP limit take the exact check.
                if entry.body_len > UDP_BODY_FITS_BYTES and udp_too_large(m, req.tag_len, entry.body_len):
                    too_large += 1
                    nout = udp_error(r, nout, m, data, req.tag_len, BODY_TOO_LARGE.data,
                                     BODY_TOO_LARGE.len, &now_ns)
                    continue
                if stalled and entry.has_stale:
                    stale_served += 1
                    udp_reply(&r.tx_msgs[nout], m, data, req.tag_len, entry_stale_body(entry),
                              entry.body_len)
                else:
                    udp_reply(&r.tx_msgs[nout], m, data, req.tag_len, entry.body, entry.body_len)
                nout += 1
                continue
            misses += 1
            if r.missq == NULL:
                not_found += 1
                nout = udp_error(r, nout, m, data, req.tag_len, BODY_NOT_FOUND.data, BODY_NOT_FOUND.len,
                                 &now_ns)
            elif gov_on and udp_governor_sheds(r.gov, rec, &shed_public, &shed_partner):
                nout = udp_error(r, nout, m, data, req.tag_len, BODY_OVERLOADED.data,
                                 BODY_OVERLOADED.len, &now_ns)
            elif udp_queue_miss(r, m, data, &req, udp_stamp(gov_on, &now_ns)):
                queued += 1             # the control plane answers it
            else:
                queue_drops += 1
                nout = udp_error(r, nout, m, data, req.tag_len, BODY_BUSY.data, BODY_BUSY.len, &now_ns)
            continue
        if status == PARSE_EMPTY:
            empty += 1
        bad += 1
        if r.silent_refusals:
            unanswered += 1
        else:
            nout = udp_error(r, nout, m, data, req.tag_len, BODY_BAD_REQUEST.data, BODY_BAD_REQUEST.len,
                             &now_ns)
    # Counted before the send, so a client holding its reply knows that the
    # request already shows in stats().
    udp_reader_kernel_drops(r)
    bn_count(&r.counters.rx_packets, n)
    bn_count(&r.counters.rx_bytes, rx_bytes)
    bn_count(&r.counters.rx_batches, 1)
    bn_count(&r.counters.hits, hits)
    bn_count(&r.counters.misses, misses)
    bn_count(&r.counters.not_found, not_found)
    bn_count(&r.counters.bad_requests, bad)
    bn_count(&r.counters.truncated, truncated)
    bn_count(&r.counters.empty, empty)
    bn_count(&r.counters.queued, queued)
    bn_count(&r.counters.queue_drops, queue_drops)
    bn_count(&r.counters.too_large, too_large)
    bn_count(&r.counters.unanswered, unanswered)
    if stale_served:
        bn_count(&r.counters.stale_served, stale_served)
    if shed_public or shed_partner:
        bn_count(&r.counters.shed_public, shed_public)
        bn_count(&r.counters.shed_partner, shed_partner)
    if r.keys_ref != NULL:
        bn_count(&r.counters.unauthorized, unauthorized)
        bn_count(&r.counters.rate_limited, rate_limited)
        bn_count(&r.counters.over_quota, over_quota)
    if nout > 0:
        udp_reader_send(r, nout)
    if queued > 0:
        udp_signal(r.miss_fd)


cdef inline uint64_t udp_stamp(int gov_on, uint64_t* now_ns) noexcept nogil:
    # The batch's clock (read at most once a batch) while the governor is on.
    if not gov_on:
        return 0
    if now_ns[0] == 0:
        now_ns[0] = monotonic_ns()
    return now_ns[0]


cdef inline void udp_signal(int efd) noexcept nogil:
    # An eventfd counter only saturates after 2^64-2 writes; EAGAIN cannot
    # happen in practice and a lost wake-up would be repaired by the next one.
    cdef uint64_t one = 1
    write(efd, &one, sizeof(one))


cdef void* udp_reader_main(void* arg) noexcept nogil:
    cdef bn_reader* r = <bn_reader*>arg
    cdef int n
    if r.cpu >= 0:
        r.pin_error = bn_pin_self_to_cpu(r.cpu)
    while True:
        n = udp_reader_recv(r)
        # stop() sets the flag, then shuts the socket down, which ends a
        # blocked recvmmsg with an empty datagram: never serve that one.
        if bn_load_int(r.stop_flag) or n < 0:
            break
        if n > 0:
            udp_reader_serve(r, <unsigned int>n)
    qsbr_offline(r.qsbr)
    return NULL


cdef bn_reader* udp_reader_new(int fd, int index, int cpu, unsigned int batch,
                               unsigned int slot_bytes) noexcept nogil:
    cdef bn_reader* r = <bn_reader*>calloc(1, sizeof(bn_reader))
    cdef unsigned int i
    if r == NULL:
        return NULL
    r.fd = fd
    r.index = index
    r.cpu = cpu
    r.batch = batch
    r.batch_live = <int>batch
    r.slot_bytes = slot_bytes
    r.miss_fd = -1
    r.rx_data = <char*>malloc(<size_t>batch * slot_bytes)
    r.rx_addr = <char*>calloc(batch, ADDR_MAX_BYTES)
    r.rx_msgs = <mmsghdr*>calloc(batch, sizeof(mmsghdr))
    r.rx_iov = <iovec*>calloc(batch, sizeof(iovec))
    r.tx_msgs = <mmsghdr*>calloc(batch, sizeof(mmsghdr))
    r.tx_iov = <iovec*>calloc(2 * <size_t>batch, sizeof(iovec))
    r.scratch = <char*>malloc(<size_t>batch * ERROR_SCRATCH_BYTES)
    if (r.rx_data == NULL or r.rx_addr == NULL or r.rx_msgs == NULL or r.rx_iov == NULL
            or r.tx_msgs == NULL or r.tx_iov == NULL or r.scratch == NULL):
        udp_reader_free(r)
        return NULL
    for i in range(batch):
        r.rx_iov[i].iov_base = r.rx_data + <size_t>i * slot_bytes
        r.rx_iov[i].iov_len = slot_bytes
        r.rx_msgs[i].msg_hdr.msg_iov = &r.rx_iov[i]
        r.rx_msgs[i].msg_hdr.msg_iovlen = 1
        r.rx_msgs[i].msg_hdr.msg_name = r.rx_addr + <size_t>i * ADDR_MAX_BYTES
        r.tx_msgs[i].msg_hdr.msg_iov = &r.tx_iov[2 * i]
        r.tx_msgs[i].msg_hdr.msg_iovlen = 2
    r.rx_msgs[0].msg_hdr.msg_control = r.cmsg
    return r


cdef void udp_reader_free(bn_reader* r) noexcept nogil:
    if r == NULL:
        return
    free(r.rx_data)
    free(r.rx_addr)
    free(r.rx_msgs)
    free(r.rx_iov)
    free(r.tx_msgs)
    free(r.tx_iov)
    free(r.scratch)
    free(r)


cdef class UDPEngine(NativeEngine):
    """Native reader threads over already-bound SO_REUSEPORT sockets.

    Low-level: `beastnet.UDPServer` creates the sockets, the control plane and
    this engine.  The engine owns neither the socket file descriptors nor the
    table; it keeps the table alive while it exists.  One start(), one stop().
    """

    def __cinit__(self, ResponseTable table not None, fds, *, unsigned int batch=32,
                  unsigned int batch_capacity=0, unsigned int max_datagram=512, cpus=None,
                  size_t miss_capacity=0,
                  APIKeyTable api_keys=None, bint silent_refusals=False, double rrl_rate_per_s=0.0,
                  unsigned int rrl_burst=1, unsigned int rrl_slip=2, bint rrl_exempt_loopback=False):
        cdef int i
        cdef int n = len(fds)
        if n < 1:
            raise ValueError("at least one socket is needed")
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1..1024, got {batch}")
        if batch_capacity > 1024:
            raise ValueError(f"batch_capacity must be 0..1024, got {batch_capacity}")
        if not 64 <= max_datagram <= 65536:
            raise ValueError(f"max_datagram must be 64..65536, got {max_datagram}")
        if cpus is not None and len(cpus) != n:
            raise ValueError("cpus must give one CPU (or -1) per socket")
        if not rrl_rate_per_s >= 0 or rrl_burst < 1:
            raise ValueError("rrl_rate_per_s must be >= 0 and rrl_burst >= 1")
        self._setup(table, api_keys, n, sizeof(bn_counters), miss_capacity)
        self.rrl = rrl_new(rrl_rate_per_s, rrl_burst, rrl_exempt_loopback, os.urandom(8))
        self.readers = <bn_reader**>calloc(n, sizeof(bn_reader*))
        if self.readers == NULL:
            raise MemoryError()
        for i in range(n):
            # The engine works on its own duplicate of each socket: whoever
            # owns the original may close it at any time (a server collected
            # without stop()), but shutdown() must still reach a reader
            # blocked in recvmmsg, and a closed fd would not wake it.
            fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 0)
            if fd < 0:
                raise_errno("fcntl F_DUPFD_CLOEXEC")
            self.readers[i] = udp_reader_new(fd, i, -1 if cpus is None else cpus[i],
                                             max(batch, batch_capacity), max_datagram)
            if self.readers[i] == NULL:
                close(fd)
                raise MemoryError()
            self.readers[i].batch_live = <int>batch
            self.readers[i].stop_flag = &self.stop_flag
            self.readers[i].miss_fd = self.miss_efd
            self.readers[i].missq = self.missq
            self.readers[i].index_ref = &table.index
            self.readers[i].keys_ref = &api_keys.index if api_keys is not None else NULL
            self.readers[i].control = &self.control
            self.readers[i].silent_refusals = silent_refusals
            self.readers[i].rrl = self.rrl
            self.readers[i].gov = self.gov
            self.readers[i].rrl_slip = rrl_slip
            self.readers[i].counters = &(<bn_counters*>self.counter_mem)[i]

    def __dealloc__(self):
        cdef int i
        if self.group.running:
            self._join()
        if self.readers != NULL:
            for i in range(self.nthreads):
                if self.readers[i] != NULL and self.readers[i].fd >= 0:
                    close(self.readers[i].fd)
                udp_reader_free(self.readers[i])
            free(self.readers)
            self.readers = NULL
        rrl_free(self.rrl)              # readers are joined: none can hold it
        self.rrl = NULL

    cdef void _bind_qsbr(self, int i, bn_qsbr_slot* slot) noexcept:
        self.readers[i].qsbr = slot

    cdef object _snapshot(self, int i):
        cdef bn_counters snap
        counters_snapshot(&(<bn_counters*>self.counter_mem)[i], &snap, sizeof(snap))
        return snap

    def start(self):
        """Start one native thread per socket (GIL released in each)."""
        cdef int rc = self._start_threads("a UDPEngine", udp_reader_main, <void**>self.readers)
        if rc != 0:
            self._join()
            raise OSError(rc, f"pthread_create: {os.strerror(rc)}")

    cdef void _join(self) noexcept:
        cdef int i
        bn_store_int(&self.stop_flag, 1)
        # Wakes a reader blocked in recvmmsg (it returns an empty datagram) and
        # makes any later recvmmsg return at once, so no wake-up is lost.  On
        # an unconnected UDP socket it also reports ENOTCONN: expected.
        for i in range(self.nthreads):
            shutdown(self.readers[i].fd, SHUT_RD)
        self._join_threads()

    def stop(self):
        """Stop and join every reader thread.  Idempotent; returns promptly
        (blocked readers are woken by shutdown(SHUT_RD), and a send blocks for
        at most SO_SNDTIMEO).  Closes the engine's duplicates of the sockets;
        the caller's sockets stay open."""
        cdef int i
        if self.group.running:
            self._join()
        self.stopped = 1
        # No reader is left: release the socket duplicates and the miss
        # eventfd now rather than when the engine is collected (a stopped
        # server holds no fds).  The miss dispatcher must be detached first.
        for i in range(self.nthreads):
            if self.readers[i].fd >= 0:
                close(self.readers[i].fd)
                self.readers[i].fd = -1
        if self.miss_efd >= 0:
            close(self.miss_efd)
            self.miss_efd = -1
        self.table.reclaim()

    @property
    def too_large_replies(self):
        """Control-plane replies (send_reply) answered too_large instead."""
        return self.too_large_replies_n

    def set_batch(self, unsigned int batch):
        """Datagrams per recvmmsg from the readers' next call on (live), at
        most the capacity their arrays were made for."""
        cdef int i
        if self.nthreads == 0 or not 1 <= batch <= self.readers[0].batch:
            raise ValueError(f"batch must be 1..{self.readers[0].batch if self.nthreads else 0}, "
                             f"got {batch}")
        for i in range(self.nthreads):
            bn_store_int(&self.readers[i].batch_live, <int>batch)

    @property
    def batch_capacity(self):
        """The most datagrams per recvmmsg set_batch() may ask for."""
        return self.readers[0].batch if self.nthreads else 0

    def reader_status(self):
        """Per reader: the pinning errno (0 = fine) and the errno that made it quit (0 = none)."""
        cdef int i
        return [(self.readers[i].pin_error, self.readers[i].fatal_errno) for i in range(self.nthreads)]

    def send_reply(self, unsigned int thread, unsigned int conn, unsigned int gen,
                   bytes addr not None, bytes tag_prefix not None, int status,
                   str content_type not None, bytes body not None):
        """Answer a record of pop_misses() through reader `thread`'s socket:
        the body after the tag prefix (UDP has no status line or content
        type).  conn and gen are the record's: for UDP, the governor's
        marks (UDP_MISS_*): a queued miss leaves its in-flight count here,
        delivered or not.  Returns 0 or an errno value.

        A body too large for one datagram to that peer is answered
        {"error":"too_large"} instead (counted in `too_large_replies`)."""
        cdef msghdr msg
        cdef iovec iov[2]
        cdef ssize_t rc
        cdef uint64_t now_ns
        if thread >= <unsigned int>self.nthreads:
            raise ValueError("no such reader")
        if gen & UDP_MISS_COUNTED:
            bn_add_u64(&self.gov.inflight, <uint64_t>-1)
            if (gen & UDP_MISS_STAMPED) and governor_on(self.gov):
                now_ns = monotonic_ns()
                governor_sample(self.gov, <uint64_t>(<uint32_t>(now_ns // 1000) - <uint32_t>conn)
                                * 1000)
                governor_close_window(self.gov, now_ns)
        if self.readers[thread].fd < 0:
            return EBADF                # stopped: the engine's socket is closed
        cdef sockaddr_in6 peer
        memset(&peer, 0, sizeof(peer))
        memcpy(&peer, <char*>addr, min(<size_t>len(addr), sizeof(peer)))
        if len(tag_prefix) + len(body) > (
                UDP6_PAYLOAD_MAX_BYTES if peer.sin6_family == AF_INET6
                and not addr_is_v4mapped(<const uint8_t*>&peer) else UDP_PAYLOAD_MAX_BYTES):
            body = <bytes>ERROR_BODIES["too_large"]
            self.too_large_replies_n += 1
        memset(&msg, 0, sizeof(msg))
        iov[0].iov_base = <char*>tag_prefix
        iov[0].iov_len = len(tag_prefix)
        iov[1].iov_base = <char*>body
        iov[1].iov_len = len(body)
        msg.msg_name = <char*>addr
        msg.msg_namelen = <socklen_t>len(addr)
        msg.msg_iov = iov
        msg.msg_iovlen = 2
        rc = sendmsg(self.readers[thread].fd, &msg, MSG_DONTWAIT)
        if rc < 0:
            return errno
        return 0
