# The UDP load generator: native threads that drive a server over many
# connected UDP sockets, without the GIL.
#
# Each thread owns a set of connected sockets (distinct source ports, so a
# server's SO_REUSEPORT group spreads them) registered in its own epoll.  A
# request is `@TAG KEY[ APIKEY]` sent with a two-part iovec [tag, key] (the key
# part is built once); a reply is matched by its tag.
#
# Tags.  Every socket numbers its requests 1, 2, 3...; the tag is that
# sequence number in hex, and request `seq` lives in slot `seq & mask` of the
# socket's slot table.  A reply matches only when that slot is busy with the
# very same seq, so a late reply (its request already timed out), a duplicate,
# or a made-up tag can never be matched, let alone twice.  A bitmap over the
# last LG_EXPIRED_SEQS seqs marks requests that timed out unanswered: a reply
# to one of those is `late` (once); any other reply that matches nothing is
# `unmatched`.  When the slot of the
# next seq is still busy (an old request waiting for its timeout), the seq is
# skipped: tags are increasing, not contiguous.  The table has at least twice
# as many slots as requests can be outstanding, so a skip is rare and short.
#
# Closed loop keeps `window` requests outstanding per socket: a reply or a
# timeout frees a slot, the next pass refills it.  Open loop sends each
# socket's requests on a schedule (constant gaps or Poisson), whatever the
# replies, and measures latency from the intended send time.
#
# Results: counters (bn_lg_counters) and two histograms per thread, written
# only by the thread; Python reads them with relaxed loads while the run goes
# (progress line, per-second timeline) and merges them after the join.

cdef enum:
    LG_TAG_BUF_BYTES = 24           # "@" + up to 16 hex digits + " ", rounded up
    LG_TAG_MAX_DIGITS = 16          # longest TAG the protocol allows, without the '@'
    LG_RX_SLOT_BYTES = 256          # bytes of a reply we read: the tag and the start of the body
    LG_TICK_NS = 2000000            # 2 ms: timeout scan and stop-flag period
    LG_REFUSED_BACKOFF_NS = 10000000  # 10 ms: closed loop pauses a socket after ECONNREFUSED
    LG_RECV_ROUNDS = 4              # recvmmsg calls per readiness event before moving on
    LG_EXPIRED_SEQS = 65536         # seqs a socket remembers as timed out (8 KiB bitmap)


cdef struct bn_lg_slot:
    uint64_t seq                        # request in this slot; 0 = never used
    uint64_t intended_ns                # latency runs from here (closed loop: the send time)
    uint64_t sent_ns                    # the timeout runs from here
    uint32_t busy                       # 1 while outstanding
    uint32_t measured                   # 1 if intended inside the measured window

cdef struct bn_lg_sock:
    int fd                              # connected UDP socket, owned by Python
    uint32_t outstanding                # requests in flight
    uint64_t next_seq                   # next sequence number to try (starts at 1)
    uint64_t oldest_seq                 # no request below this is outstanding
    uint64_t next_send_ns               # open loop: intended time of the next request
    uint64_t cooldown_ns                # closed loop: no sends before this (after ECONNREFUSED)
    bn_lg_slot* slots                   # slot_mask + 1 slots
    uint64_t* expired                   # LG_EXPIRED_SEQS bits: seq timed out, no late reply yet

cdef struct bn_lg_thread:
    bn_lg_base b                        # first: what every load loop keeps (see _run.pxi)
    unsigned int nsocks
    unsigned int window                 # closed loop: outstanding requests per socket
    unsigned int batch                  # datagrams per sendmmsg / recvmmsg
    uint64_t slot_mask                  # slots per socket - 1 (a power of two - 1)
    bn_lg_sock* socks                   # nsocks
    const char** key_data               # nkeys "KEY[ APIKEY]" payloads, owned by the run
    uint32_t* key_len                   # bytes of each
    const uint8_t* tag_digits           # UDP GSO: tag width per key so every request has gso_seg bytes
    int gso_on                          # 1 while UDP_SEGMENT works; cleared on the first refusal
    uint16_t gso_seg                    # bytes of every request when gso_on
    bn_lg_counters* counters            # owned by the run, cache-line aligned
    mmsghdr* tx_msgs                    # batch
    iovec* tx_iov                       # 2 * batch: [tag, key payload]
    char* tx_tags                       # batch * LG_TAG_BUF_BYTES
    uint64_t* tx_seq                    # batch: seq of each message being sent
    uint64_t* tx_intended               # batch: intended send time of each
    mmsghdr* rx_msgs                    # batch
    iovec* rx_iov                       # batch
    char* rx_data                       # batch * LG_RX_SLOT_BYTES


cdef inline void lg_release(bn_lg_thread* t, bn_lg_sock* s, uint64_t seq) noexcept nogil:
    """Free the slot of a request that never left (send refused or skipped)."""
    cdef bn_lg_slot* slot = &s.slots[seq & t.slot_mask]
    slot.busy = 0
    s.outstanding -= 1
    t.b.outstanding -= 1


cdef int lg_send(bn_lg_thread* t, bn_lg_sock* s, uint64_t now, int measuring) noexcept nogil:
    """One sendmmsg batch on socket `s`: refill its window (closed loop) or
    send what its schedule says is due (open loop).  Returns datagrams sent."""
    cdef unsigned int n = 0
    cdef unsigned int sent = 0
    cdef unsigned int i
    cdef int rc
    cdef int err
    cdef uint64_t seq
    cdef uint64_t probes
    cdef uint64_t intended
    cdef uint64_t next_send = s.next_send_ns
    cdef uint64_t m_sent = 0
    cdef uint32_t k
    cdef bn_lg_slot* slot
    cdef char* tag
    cdef int closed = t.b.mode == LG_CLOSED
    cdef uint64_t quota_left = 0xFFFFFFFFFFFFFFFF
    cdef unsigned int limit = t.batch
    cdef int done = 0
    cdef int retried = 0
    cdef ssize_t wrote
    if t.b.quota:
        quota_left = t.b.quota - t.counters.m_sent if t.counters.m_sent < t.b.quota else 0
        if measuring and quota_left == 0:
            return 0
    if closed and (s.cooldown_ns > now or now >= t.b.end_ns):
        return 0
    if t.gso_on and limit > BN_GSO_MAX_SEGMENTS:
        limit = BN_GSO_MAX_SEGMENTS
    while n < limit:
        if closed:
            if s.outstanding >= t.window:
                break
            intended = now
        else:
            if next_send > now or next_send >= t.b.end_ns:
                break
            intended = next_send
        if measuring and n >= quota_left:
            break
        # Find the next seq whose slot is free (see "Tags" above).
        seq = s.next_seq
        probes = 0
        while s.slots[seq & t.slot_mask].busy:
            seq += 1
            probes += 1
            if probes > t.slot_mask:
                break
        if probes > t.slot_mask:
            break                       # every slot busy: open loop falls behind (counted at the end)
        slot = &s.slots[seq & t.slot_mask]
        slot.seq = seq
        slot.busy = 1
        lg_clear_expired(s, seq)        # forget a stale mark from LG_EXPIRED_SEQS seqs ago
        slot.intended_ns = intended
        slot.measured = intended >= t.b.measure_ns and intended < t.b.end_ns
        s.next_seq = seq + 1
        s.outstanding += 1
        t.b.outstanding += 1
        # TAG: '@' + hex seq + ' ', then the pre-built "KEY[ APIKEY]".  With
        # GSO the hex is zero-padded so that every request has the same size.
        k = lg_pick_key(&t.b)
        tag = t.tx_tags + <size_t>n * LG_TAG_BUF_BYTES
        tag[0] = 64                     # '@'
        if t.gso_on:
            rc = t.tag_digits[k]
            bn_hex_u64_width(tag + 1, seq, rc)
        else:
            rc = bn_hex_u64(tag + 1, seq)
        tag[rc + 1] = 32                # ' '
        t.tx_iov[2 * n].iov_len = <size_t>(rc + 2)
        t.tx_iov[2 * n + 1].iov_base = <void*>t.key_data[k]
        t.tx_iov[2 * n + 1].iov_len = t.key_len[k]
        t.tx_seq[n] = seq
        t.tx_intended[n] = intended
        n += 1
        if not closed:
            next_send += lg_gap_ns(&t.b)
    if n == 0:
        return 0
    # The timeout runs from the moment the batch goes to the kernel.  Closed
    # loop: the intended time is the send time, taken as close to sendmmsg as
    # possible so that building the batch is not charged to the server.
    now = bn_now_ns()
    for i in range(n):
        slot = &s.slots[t.tx_seq[i] & t.slot_mask]
        slot.sent_ns = now
        if closed:
            slot.intended_ns = now
    if t.gso_on and n > 1:
        # UDP GSO: the whole batch as one buffer, cut into datagrams late in
        # the stack (one route, one skb through IP) -- about a third less
        # kernel work per request than sendmmsg on loopback.
        while not done:
            wrote = bn_send_gso(s.fd, t.tx_iov, 2 * <size_t>n, t.gso_seg)
            if wrote >= 0:
                for i in range(n):
                    if s.slots[t.tx_seq[i] & t.slot_mask].measured:
                        m_sent += 1
                sent = n
                bn_count(&t.counters.tx_batches, 1)
                done = 1
                break
            err = errno
            if err == EINTR:
                bn_count(&t.counters.eintr, 1)
            elif err == ECONNREFUSED and not retried:
                # The pending ICMP error is consumed by this call: try once more.
                retried = 1
                if measuring:
                    bn_count(&t.counters.err_refused, 1)
                if closed:
                    s.cooldown_ns = now + LG_REFUSED_BACKOFF_NS
            elif err == EAGAIN or err == ENOBUFS:
                if measuring:
                    bn_count(&t.counters.err_nobufs, 1)
                if not closed:
                    next_send = t.tx_intended[0]
                for i in range(n):
                    lg_release(t, s, t.tx_seq[i])
                done = 1
            elif err == EINVAL or err == EIO or err == EOPNOTSUPP or err == ENOPROTOOPT:
                t.gso_on = 0            # no UDP_SEGMENT here: sendmmsg from now on
                break
            else:
                if measuring:
                    bn_count(&t.counters.err_send, 1)
                for i in range(n):
                    lg_release(t, s, t.tx_seq[i])
                done = 1
    while sent < n and not done:
        rc = sendmmsg(s.fd, t.tx_msgs + sent, n - sent, MSG_DONTWAIT)
        if rc > 0:
            for i in range(sent, sent + <unsigned int>rc):
                if s.slots[t.tx_seq[i] & t.slot_mask].measured:
                    m_sent += 1
            sent += <unsigned int>rc
            bn_count(&t.counters.tx_batches, 1)
            continue
        err = errno
        if rc < 0 and err == EINTR:
            bn_count(&t.counters.eintr, 1)
            continue
        if err == EAGAIN or err == ENOBUFS:
            # Socket buffer full: the rest did not leave.  Closed loop refills
            # later; open loop keeps them due at their intended times.
            if measuring:
                bn_count(&t.counters.err_nobufs, 1)
            if not closed:
                next_send = t.tx_intended[sent]
            for i in range(sent, n):
                lg_release(t, s, t.tx_seq[i])
            break
        # ECONNREFUSED: an ICMP port unreachable came back for an earlier
        # datagram (a connected socket reports it on the next call).  The
        # datagram at `sent` was not sent: count it, skip it.
        if measuring:
            if err == ECONNREFUSED:
                bn_count(&t.counters.err_refused, 1)
            else:
                bn_count(&t.counters.err_send, 1)
        if err == ECONNREFUSED and closed:
            s.cooldown_ns = now + LG_REFUSED_BACKOFF_NS
        lg_release(t, s, t.tx_seq[sent])
        sent += 1
    s.next_send_ns = next_send
    bn_count(&t.counters.m_sent, m_sent)
    bn_count(&t.counters.t_sent, sent)
    return <int>sent


cdef inline void lg_mark_expired(bn_lg_sock* s, uint64_t seq) noexcept nogil:
    cdef uint64_t bit = seq & (LG_EXPIRED_SEQS - 1)
    s.expired[bit >> 6] |= (<uint64_t>1) << (bit & 63)


cdef inline void lg_clear_expired(bn_lg_sock* s, uint64_t seq) noexcept nogil:
    cdef uint64_t bit = seq & (LG_EXPIRED_SEQS - 1)
    s.expired[bit >> 6] &= ~((<uint64_t>1) << (bit & 63))


cdef inline int lg_take_expired(bn_lg_sock* s, uint64_t seq) noexcept nogil:
    """1 (and forget it) if `seq` was sent, timed out and is still remembered."""
    cdef uint64_t bit = seq & (LG_EXPIRED_SEQS - 1)
    cdef uint64_t mask = (<uint64_t>1) << (bit & 63)
    if seq == 0 or seq >= s.next_seq or seq + LG_EXPIRED_SEQS < s.next_seq:
        return 0
    if not (s.expired[bit >> 6] & mask):
        return 0
    s.expired[bit >> 6] &= ~mask
    return 1


cdef inline int lg_parse_tag(const char* data, unsigned int n, uint64_t* seq) noexcept nogil:
    """`@HEX ` at the start of a reply: the offset of the body, or -1."""
    cdef unsigned int i = 1
    cdef uint64_t v = 0
    cdef uint8_t c
    if n < 3 or data[0] != 64:          # '@'
        return -1
    while i < n and i <= LG_TAG_MAX_DIGITS:
        c = <uint8_t>data[i]
        if 48 <= c <= 57:               # 0-9
            v = (v << 4) | (c - 48)
        elif 97 <= c <= 102:            # a-f
            v = (v << 4) | (c - 87)
        elif c == 32 and i > 1:         # the space ends the TAG
            seq[0] = v
            return <int>(i + 1)
        else:
            return -1
        i += 1
    return -1


cdef inline void lg_count_error_body(bn_lg_counters* c, const char* body,
                                     unsigned int length) noexcept nogil:
    """Count an error body by its name, told apart by its first letters
    (the names are the engine's error vocabulary)."""
    # {"error":"  is 10 bytes; the name starts at body[10].
    if length < 12:
        return
    if body[10] == b'n':
        bn_count(&c.m_err_not_found, 1)
    elif body[10] == b'u':
        bn_count(&c.m_err_unauthorized, 1)
    elif body[10] == b'r':
        bn_count(&c.m_err_rate_limited, 1)
    elif body[10] == b'o':
        bn_count(&c.m_err_over_quota, 1)
    elif body[10] == b'b' and body[11] == b'u':
        bn_count(&c.m_err_busy, 1)
    elif body[10] == b'b':
        bn_count(&c.m_err_bad_request, 1)


cdef int lg_recv(bn_lg_thread* t, bn_lg_sock* s, int measuring) noexcept nogil:
    """Read and match what socket `s` has (a few batches at most, to stay fair
    to the other sockets).  Returns replies read, -1 on a fatal error."""
    cdef int rounds = 0
    cdef int rc
    cdef int err
    cdef int off
    cdef int total = 0
    cdef unsigned int i
    cdef unsigned int length
    cdef uint64_t now
    cdef uint64_t seq
    cdef uint64_t latency
    cdef const char* data
    cdef bn_lg_slot* slot
    cdef uint64_t t_received = 0
    cdef uint64_t m_received = 0
    cdef uint64_t m_error_replies = 0
    cdef uint64_t late = 0
    cdef uint64_t unmatched = 0
    cdef uint64_t bad = 0
    while rounds < LG_RECV_ROUNDS:
        rc = recvmmsg(s.fd, t.rx_msgs, t.batch, MSG_DONTWAIT, NULL)
        if rc < 0:
            err = errno
            if err == EINTR:
                bn_count(&t.counters.eintr, 1)
                continue
            if err == EAGAIN:
                break
            if err == ECONNREFUSED:
                # The pending ICMP error is consumed; the queue may still hold replies.
                if measuring:
                    bn_count(&t.counters.err_refused, 1)
                rounds += 1
                continue
            if measuring:
                bn_count(&t.counters.err_recv, 1)
            if err == EBADF or err == ENOTSOCK or err == EFAULT or err == EINVAL:
                t.b.fatal_errno = err
                return -1
            break
        if rc == 0:
            break
        # One timestamp per batch, right after the call: every datagram in it
        # was already queued, so this overstates latency by at most the
        # syscall itself, never understates it.
        now = bn_now_ns()
        bn_count(&t.counters.rx_batches, 1)
        for i in range(<unsigned int>rc):
            data = t.rx_data + <size_t>i * LG_RX_SLOT_BYTES
            length = t.rx_msgs[i].msg_len
            if length > LG_RX_SLOT_BYTES:
                length = LG_RX_SLOT_BYTES
            off = lg_parse_tag(data, length, &seq)
            if off < 0:
                bad += 1
                continue
            slot = &s.slots[seq & t.slot_mask]
            if slot.busy and slot.seq == seq:
                slot.busy = 0
                s.outstanding -= 1
                t.b.outstanding -= 1
                # Open loop: from the intended send time, not the actual one,
                # so a server stall that delayed our sends (or a generator
                # that fell behind) still shows in the latency -- no
                # coordinated omission (wrk2).  Closed loop: intended == sent.
                latency = now - slot.intended_ns if now > slot.intended_ns else 0
                t_received += 1
                hist_record(&t.b.hists[LG_HIST_ALL], latency)
                if slot.measured:
                    m_received += 1
                    hist_record(&t.b.hists[LG_HIST_MEASURED], latency)
                    t.b.last_reply_ns = now
                    if (<unsigned int>off + 8 <= length
                            and memcmp(data + off, b'{"error"', 8) == 0):
                        m_error_replies += 1
                        lg_count_error_body(t.counters, data + off, length - <unsigned int>off)
            elif lg_take_expired(s, seq):
                late += 1               # counted once: a second copy is unmatched
            else:
                unmatched += 1
        total += rc
        rounds += 1
        if <unsigned int>rc < t.batch:
            break
    bn_count(&t.counters.t_received, t_received)
    bn_count(&t.counters.m_received, m_received)
    bn_count(&t.counters.m_error_replies, m_error_replies)
    if measuring:
        bn_count(&t.counters.late, late)
        bn_count(&t.counters.unmatched, unmatched)
        bn_count(&t.counters.bad_replies, bad)
    return total


cdef void lg_expire(bn_lg_thread* t, bn_lg_sock* s, uint64_t now, int force) noexcept nogil:
    """Time out the requests of `s` older than the timeout (all of them when
    `force`).  Requests leave in seq order, so the scan stops at the first
    one still in time; each seq is passed over once (amortised O(1))."""
    cdef bn_lg_slot* slot
    cdef uint64_t lost = 0
    cdef uint64_t m_lost = 0
    while s.oldest_seq < s.next_seq:
        slot = &s.slots[s.oldest_seq & t.slot_mask]
        if slot.busy and slot.seq == s.oldest_seq:
            # `now` may predate a send made later in the same pass: compare
            # by addition, never by (now - sent_ns), which would wrap.
            if not force and slot.sent_ns + t.b.timeout_ns > now:
                break
            slot.busy = 0
            lg_mark_expired(s, slot.seq)
            s.outstanding -= 1
            t.b.outstanding -= 1
            lost += 1
            if slot.measured:
                m_lost += 1
        s.oldest_seq += 1
    if lost:
        bn_count(&t.counters.t_lost, lost)
        bn_count(&t.counters.m_lost, m_lost)


cdef void lg_count_unsent(bn_lg_thread* t, uint64_t stop_ns) noexcept nogil:
    """Open loop: requests whose intended time in the measured window passed
    without being sent (every slot busy, the generator behind).  They are not
    latency samples, but hiding them would flatter the server."""
    cdef unsigned int j
    cdef uint64_t start
    cdef uint64_t unsent = 0
    cdef uint64_t limit = stop_ns if stop_ns < t.b.end_ns else t.b.end_ns
    for j in range(t.nsocks):
        start = t.socks[j].next_send_ns
        if start < t.b.measure_ns:
            start = t.b.measure_ns
        if start < limit and t.b.interval_ns > 0:
            unsent += <uint64_t>((limit - start) / t.b.interval_ns) + 1
    bn_count(&t.counters.m_unsent, unsent)


cdef void* lg_thread_main(void* arg) noexcept nogil:
    cdef bn_lg_thread* t = <bn_lg_thread*>arg
    cdef uint64_t now
    cdef uint64_t next_tick
    cdef uint64_t drain_deadline = 0
    cdef uint64_t wake
    cdef int measuring = 0
    cdef int sending = 1
    cdef int stop
    cdef int n
    cdef int i
    cdef unsigned int j
    if t.b.cpu >= 0:
        t.b.pin_error = bn_pin_self_to_cpu(t.b.cpu)
    now = bn_now_ns()
    next_tick = now + LG_TICK_NS
    if t.b.mode != LG_CLOSED:
        # Spread the sockets' first sends over one gap so a constant rate is
        # smooth across sockets and threads, not bursts of nsocks at once.
        for j in range(t.nsocks):
            t.socks[j].next_send_ns = t.b.start_ns + <uint64_t>(
                t.b.interval_ns * (j * t.b.nthreads + t.b.index) / (t.nsocks * t.b.nthreads))
    while True:
        now = bn_now_ns()
        if not measuring and now >= t.b.measure_ns:
            measuring = 1
            t.b.cpu_start_ns = bn_thread_cpu_ns()
        stop = bn_load_int(t.b.stop_flag)
        if stop == LG_ABORT:
            break
        if sending and stop == LG_RUN:
            for j in range(t.nsocks):
                lg_send(t, &t.socks[j], now, measuring)
        if sending and (now >= t.b.end_ns or stop != LG_RUN
                        or (measuring and t.b.quota and t.counters.m_sent >= t.b.quota)):
            sending = 0
            t.b.send_stop_ns = now if now < t.b.end_ns else t.b.end_ns
            if t.b.mode != LG_CLOSED and stop == LG_RUN and not t.b.quota:
                lg_count_unsent(t, now)
            # Settle what is in flight: a reply or a timeout for each.
            drain_deadline = now + t.b.timeout_ns + LG_TICK_NS
        if not sending and (t.b.outstanding == 0 or now >= drain_deadline):
            break
        if now >= next_tick:
            for j in range(t.nsocks):
                lg_expire(t, &t.socks[j], now, 0)
            next_tick = now + LG_TICK_NS
        # Sleep until a reply, the next tick, or (open loop) the next intended send.
        wake = next_tick
        if sending and t.b.mode != LG_CLOSED:
            for j in range(t.nsocks):
                # A socket with every slot busy waits for the next timeout
                # scan rather than spinning on a send it cannot make.
                if t.socks[j].next_send_ns < wake and t.socks[j].outstanding <= t.slot_mask:
                    wake = t.socks[j].next_send_ns
        if sending and t.b.end_ns < wake:
            wake = t.b.end_ns
        n = lg_wait(&t.b, wake, &t.counters.waits, &t.counters.eintr)
        if n < 0:
            break
        for i in range(n):
            if lg_recv(t, &t.socks[t.b.events[i].data.u32], measuring) < 0:
                sending = 0
                drain_deadline = 0
    if bn_load_int(t.b.stop_flag) != LG_ABORT:
        now = bn_now_ns()
        for j in range(t.nsocks):
            lg_expire(t, &t.socks[j], now, 1)
    if not measuring:
        t.b.cpu_start_ns = bn_thread_cpu_ns()
    lg_thread_done(&t.b)
    return NULL


cdef bn_lg_thread* lg_thread_new(unsigned int nsocks, unsigned int batch,
                                 uint64_t nslots) noexcept nogil:
    cdef bn_lg_thread* t = <bn_lg_thread*>calloc(1, sizeof(bn_lg_thread))
    cdef unsigned int i
    if t == NULL:
        return NULL
    t.nsocks = nsocks
    t.batch = batch
    t.slot_mask = nslots - 1
    t.socks = <bn_lg_sock*>calloc(nsocks, sizeof(bn_lg_sock))
    t.tx_msgs = <mmsghdr*>calloc(batch, sizeof(mmsghdr))
    t.tx_iov = <iovec*>calloc(2 * <size_t>batch, sizeof(iovec))
    t.tx_tags = <char*>calloc(batch, LG_TAG_BUF_BYTES)
    t.tx_seq = <uint64_t*>calloc(batch, sizeof(uint64_t))
    t.tx_intended = <uint64_t*>calloc(batch, sizeof(uint64_t))
    t.rx_msgs = <mmsghdr*>calloc(batch, sizeof(mmsghdr))
    t.rx_iov = <iovec*>calloc(batch, sizeof(iovec))
    t.rx_data = <char*>malloc(<size_t>batch * LG_RX_SLOT_BYTES)
    # Two histograms: measured requests, and every reply (the timeline).
    if (lg_base_init(&t.b, 2) < 0 or t.socks == NULL or t.tx_msgs == NULL or t.tx_iov == NULL
            or t.tx_tags == NULL or t.tx_seq == NULL or t.tx_intended == NULL
            or t.rx_msgs == NULL or t.rx_iov == NULL or t.rx_data == NULL):
        lg_thread_free(&t.b)
        return NULL
    for i in range(nsocks):
        t.socks[i].fd = -1
        t.socks[i].next_seq = 1
        t.socks[i].oldest_seq = 1
        t.socks[i].slots = <bn_lg_slot*>calloc(nslots, sizeof(bn_lg_slot))
        t.socks[i].expired = <uint64_t*>calloc(LG_EXPIRED_SEQS // 64, sizeof(uint64_t))
        if t.socks[i].slots == NULL or t.socks[i].expired == NULL:
            lg_thread_free(&t.b)
            return NULL
    for i in range(batch):
        t.tx_iov[2 * i].iov_base = t.tx_tags + <size_t>i * LG_TAG_BUF_BYTES
        t.tx_msgs[i].msg_hdr.msg_iov = &t.tx_iov[2 * i]
        t.tx_msgs[i].msg_hdr.msg_iovlen = 2
        t.rx_iov[i].iov_base = t.rx_data + <size_t>i * LG_RX_SLOT_BYTES
        t.rx_iov[i].iov_len = LG_RX_SLOT_BYTES
        t.rx_msgs[i].msg_hdr.msg_iov = &t.rx_iov[i]
        t.rx_msgs[i].msg_hdr.msg_iovlen = 1
    return t


cdef void lg_thread_free(bn_lg_base* b) noexcept nogil:
    cdef bn_lg_thread* t = <bn_lg_thread*>b      # b is its first member
    cdef unsigned int i
    if t == NULL:
        return
    if t.socks != NULL:
        for i in range(t.nsocks):
            free(t.socks[i].slots)
            free(t.socks[i].expired)
        free(t.socks)
    free(t.tx_msgs)
    free(t.tx_iov)
    free(t.tx_tags)
    free(t.tx_seq)
    free(t.tx_intended)
    free(t.rx_msgs)
    free(t.rx_iov)
    free(t.rx_data)
    lg_base_free(&t.b)
    free(t)
cdef class UDPLoadRun(LoadRun):
    """Native generator threads over already-connected UDP sockets.

    Low-level: `beastnet.loadgen.run_udp_load` creates the sockets, sizes the
    run and turns its counters into a `LoadResult`.  The run owns neither the
    sockets nor any Python object; Python must keep the sockets open until
    join() returns.  One start(), one join().
    """

    def __cinit__(self, list fd_groups not None, list payloads not None, alias=None, *,
                  int mode=LG_CLOSED, unsigned int window=32, unsigned int batch=32,
                  uint64_t slots_per_socket=64, double interval_ns=0.0,
                  uint64_t timeout_ns=200000000, uint64_t warmup_ns=0, uint64_t duration_ns=1,
                  list quotas=None, list cpus=None, uint64_t seed=0x9E3779B97F4A7C15,
                  list gso_tag_digits=None):
        cdef int i
        cdef unsigned int j
        cdef epoll_event ev
        cdef bn_lg_thread* t
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1..1024, got {batch}")
        if slots_per_socket < 2 or slots_per_socket & (slots_per_socket - 1):
            raise ValueError("slots_per_socket must be a power of two >= 2")
        if mode == LG_CLOSED and (window < 1 or 2 * <uint64_t>window > slots_per_socket):
            raise ValueError("window must be 1..slots_per_socket/2")
        if mode != LG_CLOSED and interval_ns <= 0:
            raise ValueError("open loop needs a positive interval")
        self.thread_main = lg_thread_main
        self.thread_free = lg_thread_free
        self._setup(len(fd_groups), sizeof(bn_lg_counters), 2, payloads, len(payloads), alias,
                    warmup_ns, duration_ns)
        if gso_tag_digits is not None:
            # Every request "@" + digits + " " + payload must have one size.
            if len(gso_tag_digits) != self.nkeys:
                raise ValueError("one GSO tag width per key")
            self.tag_digits = <uint8_t*>calloc(self.nkeys, sizeof(uint8_t))
            if self.tag_digits == NULL:
                raise MemoryError()
            for j in range(self.nkeys):
                if not 10 <= gso_tag_digits[j] <= LG_TAG_MAX_DIGITS:
                    raise ValueError("GSO tag widths must be 10..16")
                self.tag_digits[j] = gso_tag_digits[j]
                if gso_tag_digits[j] + self.lens[j] != gso_tag_digits[0] + self.lens[0]:
                    raise ValueError("GSO tag widths must equalise the request sizes")
            self.gso_seg = <uint16_t>(2 + self.tag_digits[0] + self.lens[0])
        for i in range(self.nthreads):
            fds = fd_groups[i]
            t = lg_thread_new(len(fds), batch, slots_per_socket)
            if t == NULL:
                raise MemoryError()
            self._add_thread(i, &t.b, mode, interval_ns, timeout_ns, quotas, cpus, seed)
            t.window = window
            t.key_data = self.data
            t.key_len = self.lens
            t.tag_digits = self.tag_digits
            t.gso_on = self.tag_digits != NULL
            t.gso_seg = self.gso_seg
            t.counters = <bn_lg_counters*>(self.counters_mem + <size_t>i * self.counter_bytes)
            for j in range(t.nsocks):
                t.socks[j].fd = fds[j]
                memset(&ev, 0, sizeof(ev))
                ev.events = EPOLLIN
                ev.data.u32 = j
                if epoll_ctl(t.b.epfd, EPOLL_CTL_ADD, t.socks[j].fd, &ev) < 0:
                    lg_raise_errno("epoll_ctl EPOLL_CTL_ADD")

    def __dealloc__(self):
        self._abort()                   # the threads read tag_digits until they are joined
        free(self.tag_digits)

    cdef object _counters_dict(self, const uint64_t* sums):
        cdef bn_lg_counters total
        memcpy(&total, sums, sizeof(bn_lg_counters))
        return total

    cdef dict _thread_extra(self, bn_lg_base* b):
        cdef bn_lg_thread* t = <bn_lg_thread*>b
        return {"sockets": t.nsocks, "gso": bool(t.gso_on)}
