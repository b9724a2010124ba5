# Flow table, TCP ordering and the request lists of the compiled engine (included by _engine.pyx; twin: _flows_py.py).
#
# Flows live in a fixed table of C structs (open hashing by both endpoints + an LRU list; the oldest is evicted and
# counted when the table is full). Per direction, segments are put in sequence order: retransmissions are dropped,
# segments ahead of the expected number wait in a small per-flow dict (the rare path), a gap too long to wait for
# desynchronises the direction's parser. In-order bytes go to ``Engine._data`` (the protocol dispatch), a FIN to
# ``Engine._fin``, the end of a flow (FIN both ways, RST, eviction, final drain) to ``Engine._finish``.
#
# One file for a flow's whole life (its slot, its segments, its requests): the three share the invariants below.
#
# Invariants: a ``Req*`` is owned by its flow's pending list (or is being completed); ``Dir.req`` only ever points at a
# request still in that list and is cleared when it leaves. Callers of ``_data`` keep the flow alive; only
# ``tcp_segment`` and ``tcp_deliver`` close flows, and they re-check ``gen`` after anything that may have done so.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy

from costmesh.native._bytes cimport Buf, buf_free, buf_trim, hash_bytes, s32
from costmesh.native._net cimport Pkt

DEF MAX_OOO = 16
DEF MAX_READS = 8  # server reads a flow keeps (Flow.reads in _engine.pxd)


# ---- requests -----------------------------------------------------------------------------------------------------

cdef Req* req_new(Engine eng, int64_t ts) except NULL:
    cdef Req* r = eng.free_reqs
    cdef int t
    if r != NULL:
        eng.free_reqs = r.next
    else:
        r = <Req*>calloc(1, sizeof(Req))
        if r == NULL:
            raise MemoryError()
    r.ts = ts
    r.bytes_in = r.bytes_out = 0
    r.status = 0
    r.error = r.method_head = r.method_connect = r.ai = r.capture = r.silent = False
    for t in range(3):
        r.starts[t] = -1
        r.rule[t] = -1
        r.ids[t].n = 0
    r.op.n = r.host.n = r.target.n = r.head.n = r.body.n = r.resp_body.n = r.ct.n = r.ce.n = 0
    r.next = NULL
    return r


cdef void req_free_bufs(Req* r) noexcept:
    cdef int t
    for t in range(3):
        buf_free(&r.ids[t])
    buf_free(&r.op)
    buf_free(&r.host)
    buf_free(&r.target)
    buf_free(&r.head)
    buf_free(&r.body)
    buf_free(&r.resp_body)
    buf_free(&r.ct)
    buf_free(&r.ce)


cdef void req_recycle(Engine eng, Req* r) noexcept:
    if r.body.cap > 65536 or r.resp_body.cap > 65536 or r.head.cap > 65536:
        buf_free(&r.body)
        buf_free(&r.resp_body)
        buf_free(&r.head)
    r.next = eng.free_reqs
    eng.free_reqs = r


cdef void req_push(Flow* fl, Req* r) noexcept:
    r.next = NULL
    if fl.pend_tail != NULL:
        fl.pend_tail.next = r
    else:
        fl.pend_head = r
    fl.pend_tail = r
    fl.npend += 1


cdef Req* req_pop(Flow* fl) noexcept:
    cdef Req* r = fl.pend_head
    if r != NULL:
        fl.pend_head = r.next
        if fl.pend_head == NULL:
            fl.pend_tail = NULL
        fl.npend -= 1
        r.next = NULL
    return r


cdef void req_release_all(Engine eng, Flow* fl) noexcept:
    cdef Req* r
    while fl.pend_head != NULL:
        r = req_pop(fl)
        req_recycle(eng, r)
    fl.dirs[0].req = NULL
    fl.dirs[1].req = NULL


# ---- flow table ---------------------------------------------------------------------------------------------------

cdef void flow_free_bufs(Flow* fl) noexcept:
    cdef int t
    buf_free(&fl.dirs[0].buf)
    buf_free(&fl.dirs[1].buf)
    for t in range(3):
        buf_free(&fl.ids[t])
    buf_free(&fl.host)
    buf_free(&fl.cycle_op)
    for t in range(MAX_STMTS):
        buf_free(&fl.stmt_name[t])
        buf_free(&fl.stmt_text[t])


cdef inline uint32_t flow_bucket(Engine eng, const uint8_t* a, uint16_t pa, const uint8_t* b, uint16_t pb) noexcept:
    cdef uint8_t k[36]
    memcpy(k, a, 16)
    memcpy(k + 16, b, 16)
    memcpy(k + 32, &pa, 2)
    memcpy(k + 34, &pb, 2)
    return <uint32_t>(hash_bytes(<const char*>k, 36) & (eng.nbuckets - 1))


cdef void flow_unlink(Engine eng, int32_t slot) noexcept:
    """Take a flow out of the hash chain and the LRU list (its slot stays allocated)."""
    cdef Flow* fl = &eng.flows[slot]
    cdef uint32_t b = flow_bucket(eng, fl.addr[0], fl.port[0], fl.addr[1], fl.port[1])
    cdef int32_t cur = eng.buckets[b]
    cdef int32_t prev = -1
    while cur >= 0 and cur != slot:
        prev = cur
        cur = eng.flows[cur].hnext
    if cur == slot:
        if prev < 0:
            eng.buckets[b] = fl.hnext
        else:
            eng.flows[prev].hnext = fl.hnext
    if fl.lru_prev >= 0:
        eng.flows[fl.lru_prev].lru_next = fl.lru_next
    else:
        eng.lru_head = fl.lru_next
    if fl.lru_next >= 0:
        eng.flows[fl.lru_next].lru_prev = fl.lru_prev
    else:
        eng.lru_tail = fl.lru_prev
    fl.lru_prev = fl.lru_next = -1
    eng.nflows -= 1


cdef void flow_release(Engine eng, int32_t slot) noexcept:
    cdef Flow* fl = &eng.flows[slot]
    cdef int t
    req_release_all(eng, fl)
    fl.used = False
    buf_trim(&fl.dirs[0].buf)
    buf_trim(&fl.dirs[1].buf)
    for t in range(3):
        buf_trim(&fl.ids[t])
    buf_trim(&fl.host)
    buf_trim(&fl.cycle_op)
    for t in range(MAX_STMTS):
        buf_trim(&fl.stmt_name[t])
        buf_trim(&fl.stmt_text[t])
    if fl.has_ooo:
        eng.ooo[slot] = None
        fl.has_ooo = False
    eng.free_slots[eng.nfree] = slot
    eng.nfree += 1


cdef inline void flow_touch(Engine eng, int32_t slot) noexcept:
    cdef Flow* fl = &eng.flows[slot]
    if eng.lru_tail == slot:
        return
    if fl.lru_prev >= 0:
        eng.flows[fl.lru_prev].lru_next = fl.lru_next
    else:
        eng.lru_head = fl.lru_next
    if fl.lru_next >= 0:
        eng.flows[fl.lru_next].lru_prev = fl.lru_prev
    fl.lru_prev = eng.lru_tail
    fl.lru_next = -1
    if eng.lru_tail >= 0:
        eng.flows[eng.lru_tail].lru_next = slot
    eng.lru_tail = slot
    if eng.lru_head < 0:
        eng.lru_head = slot


cdef int32_t flow_lookup(Engine eng, const uint8_t* a, uint16_t pa, const uint8_t* b, uint16_t pb) noexcept:
    cdef int32_t cur = eng.buckets[flow_bucket(eng, a, pa, b, pb)]
    cdef Flow* fl
    while cur >= 0:
        fl = &eng.flows[cur]
        if fl.port[0] == pa and fl.port[1] == pb and memcmp(fl.addr[0], a, 16) == 0 \
                and memcmp(fl.addr[1], b, 16) == 0:
            return cur
        cur = fl.hnext
    return -1


cdef int32_t flow_new(Engine eng, const uint8_t* src, const uint8_t* dst, uint16_t sport, uint16_t dport,
                      uint8_t flags, int* side) except -2:
    cdef int32_t slot, old
    cdef Flow* fl
    cdef uint32_t b
    cdef int t
    cdef bint d_h, s_h
    if eng.nfree == 0:
        old = eng.lru_head
        eng.counters[C_EVICTED] += 1
        flow_unlink(eng, old)
        eng._finish(&eng.flows[old])
        flow_release(eng, old)
    eng.nfree -= 1
    slot = eng.free_slots[eng.nfree]
    if slot >= eng.slots_touched:
        eng.slots_touched = slot + 1
    fl = &eng.flows[slot]
    fl.used = True
    eng.gen_counter += 1
    fl.gen = eng.gen_counter
    if memcmp(src, dst, 16) < 0 or (memcmp(src, dst, 16) == 0 and sport <= dport):
        memcpy(fl.addr[0], src, 16)
        memcpy(fl.addr[1], dst, 16)
        fl.port[0] = sport
        fl.port[1] = dport
        side[0] = 0
    else:
        memcpy(fl.addr[0], dst, 16)
        memcpy(fl.addr[1], src, 16)
        fl.port[0] = dport
        fl.port[1] = sport
        side[0] = 1
    fl.proto = P_UNKNOWN
    fl.tries = 0
    fl.fresh = False
    fl.tls_done = False
    for t in range(2):
        fl.dirs[t].have_seq = False
        fl.dirs[t].fin = False
        fl.dirs[t].next_seq = 0
        fl.dirs[t].state = 0  # every parser's first state
        fl.dirs[t].remaining = 0
        fl.dirs[t].buf.n = 0
        fl.dirs[t].req = NULL
        fl.dirs[t].mtype = 0
        fl.dirs[t].mlen = 0
    fl.pend_head = fl.pend_tail = NULL
    fl.npend = 0
    for t in range(3):
        fl.ids[t].n = 0
        fl.idrule[t] = -1
    fl.host.n = 0
    fl.last_ts = 0
    fl.cycle_open = False
    fl.cycle_ts = 0
    fl.cycle_op.n = 0
    fl.cycle_bytes = 0
    fl.nstmts = 0
    fl.stmt_next = 0
    fl.nreads = 0
    if flags & 0x02:
        fl.fresh = True
        fl.cside = side[0] if not flags & 0x10 else 1 - side[0]
    else:
        d_h = eng.port_hint[dport] != 0
        s_h = eng.port_hint[sport] != 0
        if d_h and not s_h:
            fl.cside = side[0]
        elif s_h and not d_h:
            fl.cside = 1 - side[0]
        elif sport < dport:
            fl.cside = 1 - side[0]
        else:
            fl.cside = side[0]
    eng.counters[C_FLOWS] += 1
    b = flow_bucket(eng, fl.addr[0], fl.port[0], fl.addr[1], fl.port[1])
    fl.hnext = eng.buckets[b]
    eng.buckets[b] = slot
    fl.lru_prev = eng.lru_tail
    fl.lru_next = -1
    if eng.lru_tail >= 0:
        eng.flows[eng.lru_tail].lru_next = slot
    eng.lru_tail = slot
    if eng.lru_head < 0:
        eng.lru_head = slot
    eng.nflows += 1
    return slot


cdef int flow_read(Engine eng, int64_t ts, const uint8_t* local, uint16_t lport, const uint8_t* peer,
                   uint16_t pport) noexcept:
    """The end ``local``:``lport`` of a flow read bytes of it at ``ts``: kept for ``flow_served_from`` when it is
    the server's end (1); ignored (0) when it is the client's end or the flow is unknown."""
    cdef int32_t slot
    cdef int side
    if memcmp(local, peer, 16) < 0 or (memcmp(local, peer, 16) == 0 and lport <= pport):
        slot = flow_lookup(eng, local, lport, peer, pport)
        side = 0
    else:
        slot = flow_lookup(eng, peer, pport, local, lport)
        side = 1
    if slot < 0:
        return 0
    return flow_keep_read(&eng.flows[slot], ts, side)


cdef int flow_keep_read(Flow* fl, int64_t ts, int side) noexcept:
    """Keep a read by ``side`` of the flow if that is the server's end (the MAX_READS latest)."""
    cdef int i
    if side == fl.cside:
        return 0
    if fl.nreads == MAX_READS:
        for i in range(1, MAX_READS):
            fl.reads[i - 1] = fl.reads[i]
        fl.nreads -= 1
    fl.reads[fl.nreads] = ts
    fl.nreads += 1
    return 1


cdef int64_t flow_served_from(Flow* fl, int64_t start, int64_t end) noexcept:
    """When the server began on a request that arrived at ``start`` and was answered at ``end``: its first read of
    the flow in between, else ``start``. A request waits in the socket until the server reads it (for its turn on a
    busy CPU): that wait is on the wire but is not work the server did. Reads up to the one used are forgotten."""
    cdef int i, j, k = 0
    cdef int64_t r, found = -1
    for i in range(fl.nreads):
        r = fl.reads[i]
        if start <= r <= end and (found < 0 or r < found):
            found = r
    for i in range(fl.nreads):
        r = fl.reads[i]
        if r >= start and (found < 0 or r > found):  # a read after the one used: of a later request
            fl.reads[k] = r
            k += 1
    fl.nreads = k
    return found if found >= 0 else start


cdef int flow_close(Engine eng, int32_t slot) except -1:
    flow_unlink(eng, slot)
    eng._finish(&eng.flows[slot])
    flow_release(eng, slot)
    return 0



cdef int flow_end_all(Engine eng) except -1:
    """End every open flow (the final drain): what each has open is settled by its protocol."""
    cdef int32_t slot
    while eng.lru_head >= 0:
        slot = eng.lru_head
        flow_unlink(eng, slot)
        eng._finish(&eng.flows[slot])
        flow_release(eng, slot)
    return 0


# ---- TCP ordering ---------------------------------------------------------------------------------------------------

cdef int tcp_segment(Engine eng, int64_t ts, Pkt* pkt, const uint8_t* payload, Py_ssize_t n) except -1:
    cdef int side
    cdef int32_t slot
    cdef Flow* fl
    cdef Dir* d
    cdef bint fin
    cdef int32_t rel
    cdef uint32_t gen
    if memcmp(pkt.src, pkt.dst, 16) < 0 or (memcmp(pkt.src, pkt.dst, 16) == 0 and pkt.sport <= pkt.dport):
        slot = flow_lookup(eng, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        side = 0
    else:
        slot = flow_lookup(eng, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        side = 1
    if slot < 0:
        if pkt.flags & 0x04 or not (n > 0 or pkt.flags & 0x02):
            return 0
        slot = flow_new(eng, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.flags, &side)
    else:
        flow_touch(eng, slot)
    fl = &eng.flows[slot]
    fl.last_ts = ts
    d = &fl.dirs[side]
    if pkt.flags & 0x02:
        d.have_seq = True
        d.next_seq = pkt.seq + 1
        if not fl.fresh:
            fl.fresh = True
            fl.cside = side if not pkt.flags & 0x10 else 1 - side
        return 0
    if pkt.flags & 0x04:
        flow_close(eng, slot)
        return 0
    fin = (pkt.flags & 0x01) != 0
    if n == 0 and not fin:
        return 0
    if not d.have_seq:
        d.have_seq = True
        d.next_seq = pkt.seq
    rel = s32(pkt.seq - d.next_seq)
    gen = fl.gen
    if rel == 0:
        tcp_deliver(eng, slot, side, ts, payload, n, fin)
        if fl.used and fl.gen == gen:
            tcp_drain_ooo(eng, slot, side)
    elif rel < 0:
        if <int64_t>rel + n <= 0:
            if n:
                eng.counters[C_RETRANS] += 1
            return 0
        eng.counters[C_RETRANS] += 1
        tcp_deliver(eng, slot, side, ts, payload - rel, n + rel, fin)
        if fl.used and fl.gen == gen:
            tcp_drain_ooo(eng, slot, side)
    else:
        tcp_stash(eng, slot, side, ts, pkt.seq, payload, n, fin)
    return 0


cdef int tcp_stash(Engine eng, int32_t slot, int side, int64_t ts, uint32_t seq, const uint8_t* payload, Py_ssize_t n,
                   bint fin) except -1:
    """The rare path: a segment ahead of the expected sequence number waits in a small dict."""
    cdef Flow* fl = &eng.flows[slot]
    cdef Dir* d = &fl.dirs[side]
    cdef uint32_t nxt
    pair = eng.ooo[slot]
    if pair is None:
        pair = ({}, {})
        eng.ooo[slot] = pair
        fl.has_ooo = True
    ooo = pair[side]
    if seq not in ooo:
        ooo[seq] = (ts, PyBytes_FromStringAndSize(<const char*>payload, n), fin)
        eng.counters[C_OOO] += 1
    if len(ooo) > MAX_OOO:
        eng.counters[C_GAPS] += 1
        d.next_seq = _ooo_first(ooo, d.next_seq)
        eng._desync(fl, side)
        tcp_drain_ooo(eng, slot, side)
    return 0


cdef int tcp_drain_ooo(Engine eng, int32_t slot, int side) except -1:
    cdef Flow* fl = &eng.flows[slot]
    cdef uint32_t gen = fl.gen
    cdef bytes payload
    if not fl.has_ooo:  # the common case, decided without touching the Python list
        return 0
    pair = eng.ooo[slot]
    if pair is None:
        return 0
    ooo = pair[side]
    while ooo and fl.used and fl.gen == gen:
        item = ooo.pop(fl.dirs[side].next_seq, None)
        if item is None:
            return 0
        ts, payload, fin = item
        tcp_deliver(eng, slot, side, ts, <const uint8_t*>PyBytes_AS_STRING(payload), len(payload), fin)
    return 0


cdef int tcp_deliver(Engine eng, int32_t slot, int side, int64_t ts, const uint8_t* data, Py_ssize_t n,
                     bint fin) except -1:
    cdef Flow* fl = &eng.flows[slot]
    cdef Dir* d = &fl.dirs[side]
    d.next_seq = d.next_seq + <uint32_t>n + (1 if fin else 0)
    if n:
        eng._data(fl, side, ts, data, n)
    if fin:
        d.fin = True
        eng._fin(fl, side, ts)
    if COSTMESH_DEBUG:  # the parsers ran on this flow: its request list must still hold
        flow_check(fl)
        if fl.dirs[0].fin and fl.dirs[1].fin:
            flow_close(eng, slot)
    return 0


cdef int flow_check(Flow* fl) except -1:
    """The invariants of a flow's request list (see the top of this file), checked after every delivery in a
    ``COSTMESH_DEBUG=1`` build (``setup.py``); raises ``AssertionError`` naming the one broken."""
    cdef Req* r = fl.pend_head
    cdef Req* last = NULL
    cdef int n = 0
    cdef bint found0 = fl.dirs[0].req == NULL
    cdef bint found1 = fl.dirs[1].req == NULL
    while r != NULL:
        n += 1
        if n > MAX_PENDING:
            raise AssertionError(f"flow request list: more than {MAX_PENDING} requests (or a cycle)")
        found0 = found0 or r == fl.dirs[0].req
        found1 = found1 or r == fl.dirs[1].req
        last = r
        r = r.next
    if n != fl.npend:
        raise AssertionError(f"flow request list: {n} requests, npend says {fl.npend}")
    if last != fl.pend_tail:
        raise AssertionError("flow request list: pend_tail is not its last request")
    if not (found0 and found1):
        raise AssertionError("Dir.req points at a request no longer in its flow's list")
    return 0


def _ooo_first(ooo, nxt):
    """The waiting segment nearest after ``nxt`` (sequence numbers wrap at 2**32), as the twin picks it."""

    def rel(s):
        x = (s - nxt) & 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    return min(ooo, key=rel)
