"""Compiled engine, twin of ``_engine_py.py``: frames in, per-window aggregates out, with no Python object per frame.

Reads: frames from the compiled ``CaptureReader`` (C ``Frame`` pointing into its buffer) or one at a time, and a
``slow`` object for the cold paths (rules that need Python, AI usage, TLS ClientHello, DNS, PostgreSQL startup).
Emits: raw aggregate tuples on ``drain`` (one per window/edge/operation/tenant), or ``ObservedCall`` records on
``drain_calls``, the only Python objects it builds in steady state besides those cold-path calls.

One extension module, one concern per file (each mirrored step for step by its twin; the parser tests run both
builds and require identical output, so a change in one goes into the other too):

- ``_engine.pxd``: the C surface: per-flow structs, the aggregate table, the ``Engine``'s fields.
- ``_engine.pyx`` (this file): ``Engine``: its public surface and the per-protocol dispatch.   twin ``_engine_py.py``
- ``_flows.pxi``: flow table (open hashing + LRU, evictions counted), TCP ordering, requests.  twin ``_flows_py.py``
- ``_records.pxi``: aggregation per window and key, and the ``ObservedCall`` records.         twin ``_records_py.py``
- ``_http.pxi``: HTTP/1.1 (with the extraction rules evaluated in C and the AI usage path).    twin ``_http_py.py``
- ``_pg.pxi``: the PostgreSQL wire protocol.                                                   twin ``_pg_py.py``
- ``_tls.pxi``: TLS ClientHello and DNS (UDP and TCP), which name external destinations.     twin ``_tls_py.py``

A protocol is one ``_<name>.pxi`` with its ``_<name>_py.py`` twin, written against this interface (``eng`` the engine,
``fl`` the flow, ``side`` 0/1 a direction, ``fl.cside`` the client's side):

- ``<name>_data(eng, fl, side, ts, data, n)``: the in-order bytes of one direction (a stream parser; keep state in the
  flow's ``Dir``/``Flow`` structs, where ``state`` 0 is the start); every completed call goes to ``agg`` (``_records``)
  with its protocol's record code; cold paths call ``eng.slow``.
- optionally ``<name>_fin`` (a direction ended), ``<name>_finish`` (the flow ended: settle what is open),
  ``<name>_desync`` (bytes were lost).

Registration, here and the same in ``_engine_py.py``/``_flows_py.py``: a flow code ``P_<NAME>``, a record code
``R_<NAME>`` with its name in ``kinds.PROTOCOLS`` (which both builds read), the ``include`` below (the twin: an
import), the recognition in ``Engine._detect`` (first bytes, port hints; order matters), and one arm in each of
``_data``, ``_fin``, ``_finish``, ``_desync`` that the protocol implements; its counters and error kinds go in
``kinds.py``, its per-flow state in ``_engine.pxd`` (twin: ``_flows_py.Flow``/``Dir``). The record's ``protocol`` must be one of the contract's (``costmesh.common.schemas.Protocol``).
"""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from costmesh.native._bytes cimport Buf, buf_free, starts
from costmesh.native._capture cimport CaptureReader, Frame
from costmesh.native._net cimport NET_NON_IP, NET_OTHER_L4, Pkt, decode_c

from collections import deque

from .kinds import PROTOCOLS
from .kinds import C as _C
from .kinds import COUNTERS, ERROR_KINDS
from .kinds import E as _E
from .kinds import MAX_VALUE as _MAX_VALUE
from .kinds import SRC_BAGGAGE as _SRC_BAGGAGE
from .kinds import SRC_HEADER as _SRC_HEADER
from .kinds import SRC_HOST as _SRC_HOST
from .kinds import SRC_PY as _SRC_PY
from .kinds import SRC_QUERY as _SRC_QUERY

__all__ = ["PROTOCOLS", "Engine", "collapse_http_op"]

# limits every protocol shares
DEF MAX_PENDING = 64
DEF MAX_OP = 2048
DEF MAX_STMTS = 4
DEF MAX_DETECT = 4
DEF MAX_READS_DUE = 1 << 18  # server reads waiting for their frames (a quarter second at 1M reads/s)
DEF MAX_VALUE = 128
# protocols of a flow
DEF P_UNKNOWN = 0
DEF P_HTTP = 1
DEF P_PG = 2
DEF P_TLS = 3
DEF P_DNS = 4
DEF P_OPAQUE = 5
# record protocols (index into PROTOCOLS)
DEF R_HTTP = 0
DEF R_PG = 1
DEF R_TLS = 2
DEF R_DNS = 3

assert _MAX_VALUE == MAX_VALUE
assert PROTOCOLS[R_HTTP] == "http" and PROTOCOLS[R_PG] == "postgres" and PROTOCOLS[R_TLS] == "tls"
assert PROTOCOLS[R_DNS] == "dns"

cdef int NC = len(COUNTERS)
cdef int NE = len(ERROR_KINDS)
cdef int C_FRAMES = _C["frames"], C_BYTES = _C["bytes"], C_NON_IP = _C["non_ip"], C_OTHER_L4 = _C["other_l4"]
cdef int C_FLOWS = _C["flows"], C_EVICTED = _C["flows_evicted"], C_RETRANS = _C["tcp_retransmissions"]
cdef int C_OOO = _C["tcp_out_of_order"], C_GAPS = _C["tcp_gaps"], C_MID_HTTP = _C["midstream_http"]
cdef int C_UNRECOGNISED = _C["flows_unrecognised"], C_READS = _C["server_reads"]

include "_records.pxi"
include "_flows.pxi"
include "_http.pxi"
include "_pg.pxi"
include "_tls.pxi"


# ---- the engine ----------------------------------------------------------------------------------------------------

cdef class Engine:
    def __cinit__(self):
        cdef int t
        self.flows = NULL
        self.buckets = NULL
        self.free_slots = NULL
        self.agg = NULL
        self.agg_list = NULL
        self.blocks = NULL
        self.spare = NULL
        self.nspare = 0
        self.free_reqs = NULL
        self.kind = NULL
        self.http_ok = NULL
        self.ai_only = NULL
        self.key = NULL
        self.keylen = NULL
        self.rulev = NULL
        self.header_rules = NULL
        for t in range(3):
            self.order[t] = NULL
        memset(&self.kbuf, 0, sizeof(Buf))

    def __init__(self, slow, window_us, max_flows, pg_ports, http_ports, collapse_ids=False):
        cdef int i, t
        self.slow = slow
        self.collapse_ids = bool(collapse_ids)
        self.rules = slow.rules
        self.window_us = max(1, int(window_us))
        self.max_flows = max(1, int(max_flows))
        memset(self.port_hint, 0, sizeof(self.port_hint))
        for p in pg_ports:
            if 0 <= p < 65536:
                self.port_hint[p] |= 1
        for p in http_ports:
            if 0 <= p < 65536:
                self.port_hint[p] |= 2
        self.flows = <Flow*>calloc(self.max_flows, sizeof(Flow))
        self.nbuckets = 16
        while self.nbuckets < 2 * <uint32_t>self.max_flows:
            self.nbuckets *= 2
        self.buckets = <int32_t*>malloc(self.nbuckets * sizeof(int32_t))
        self.free_slots = <int32_t*>malloc(self.max_flows * sizeof(int32_t))
        if self.flows == NULL or self.buckets == NULL or self.free_slots == NULL:
            raise MemoryError()
        for i in range(<int>self.nbuckets):
            self.buckets[i] = -1
        for i in range(self.max_flows):
            self.free_slots[i] = self.max_flows - 1 - i
        self.nfree = self.max_flows
        self.nflows = 0
        self.slots_touched = 0
        self.lru_head = self.lru_tail = -1
        self.ooo = [None] * self.max_flows
        self.reads_due = deque()
        self.next_read_ts = INT64_MAX
        self.agg_cap = 1024
        self.agg_n = 0
        self.agg = <AggSlot*>calloc(self.agg_cap, sizeof(AggSlot))
        self.agg_list_cap = 1024
        self.agg_list = <AggEntry**>malloc(self.agg_list_cap * sizeof(AggEntry*))
        if self.agg == NULL or self.agg_list == NULL:
            raise MemoryError()
        memset(self.counters, 0, sizeof(self.counters))
        memset(self.errors, 0, sizeof(self.errors))
        self.last_ts = 0
        http_init(self)


    def __dealloc__(self):
        cdef int i, t
        cdef Req* r
        if self.flows != NULL:
            for i in range(self.slots_touched):
                if self.flows[i].used:
                    req_release_all(self, &self.flows[i])
                flow_free_bufs(&self.flows[i])
            free(self.flows)
        while self.free_reqs != NULL:
            r = self.free_reqs
            self.free_reqs = r.next
            req_free_bufs(r)
            free(r)
        free(self.agg_list)
        _free_blocks(self.blocks)
        _free_blocks(self.spare)
        free(self.agg)
        free(self.buckets)
        free(self.free_slots)
        http_free(self)
        buf_free(&self.kbuf)

    # ---- public surface ---------------------------------------------------------------------------------------------

    def feed_capture(self, reader, int64_t max_frames=-1):
        """Frames from a ``CaptureReader`` (compiled: read in C) or any iterator of (ts, linktype, frame); at most
        ``max_frames`` (-1: all). Returns how many were fed; 0 means the capture is exhausted."""
        cdef Frame fr
        cdef CaptureReader r
        cdef int64_t n = 0
        if isinstance(reader, CaptureReader):
            r = <CaptureReader>reader
            try:
                while n != max_frames and r.next_c(&fr):
                    self._frame(fr.ts_us, fr.linktype, fr.data, fr.n)
                    n += 1
            except BaseException:
                r.close()
                raise
            return n
        for ts, linktype, frame in reader:
            self.feed_frame(ts, linktype, frame)
            n += 1
            if n == max_frames:
                break
        return n


    def feed_frame(self, int64_t ts, int linktype, bytes frame):
        self._frame(ts, linktype, <const uint8_t*>PyBytes_AS_STRING(frame), len(frame))


    def server_reads(self, reads):
        """Reads by servers on this host, ``(ts_us, local, local_port, peer, peer_port)`` with 16-byte addresses
        (IPv4 mapped), oldest first, from the kernel's socket reads: where a request's server time starts
        (``flow_served_from``). Each is applied when the first frame later than it is fed, so it meets the request
        it read and not yet its answer, however far the frames lag (a ring block is handed over up to
        ``ring_retire_ms`` after its first frame). At most MAX_READS_DUE wait (the oldest go first)."""
        self.reads_due.extend(reads)
        while len(self.reads_due) > MAX_READS_DUE:
            self.reads_due.popleft()
        if self.reads_due:
            self.next_read_ts = self.reads_due[0][0]

    cdef int _reads_until(self, int64_t ts) except -1:
        """Apply the waiting reads up to ``ts`` (the frame about to be parsed)."""
        cdef bytes local, peer
        due = self.reads_due
        while due and due[0][0] <= ts:
            rts, local, lport, peer, pport = due.popleft()
            if len(local) == 16 and len(peer) == 16:
                self.counters[C_READS] += flow_read(self, rts, <const uint8_t*>PyBytes_AS_STRING(local), lport,
                                                    <const uint8_t*>PyBytes_AS_STRING(peer), pport)
        self.next_read_ts = due[0][0] if due else INT64_MAX
        return 0


    def count_error(self, kind):
        self.errors[_E[kind]] += 1


    def stats(self):
        return {
            "counters": {COUNTERS[i]: self.counters[i] for i in range(NC)},
            "errors": {ERROR_KINDS[i]: self.errors[i] for i in range(NE) if self.errors[i]},
            "flows_open": self.nflows,
            "aggregates_open": self.agg_n,
        }

    def drain(self, int64_t now_us=-1, bint final=False):
        """Raw per-window rows (tuples, see ``costmesh.sensor.core.sensor._Builder.build`` for their layout) of the
        closed windows (all of them when ``final``, which also ends every open flow)."""
        if final:
            flow_end_all(self)
        return agg_take(self, now_us, final, None)

    def drain_calls(self, int64_t now_us, bint final, builder):
        """``ObservedCall`` records of the closed windows, made here from the C aggregates (no row tuples);
        ``builder`` (``costmesh.sensor.core.sensor._Builder``) names endpoints and holds the per-record constants."""
        if final:
            flow_end_all(self)
        return agg_take(self, now_us, final, _Calls(builder))

    # ---- frames and the per-protocol dispatch --------------------------------------------------------------------

    cdef int _frame(self, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1:
        cdef Pkt pkt
        cdef int r
        self.counters[C_FRAMES] += 1
        self.counters[C_BYTES] += n
        if ts >= self.next_read_ts:
            self._reads_until(ts)
        if ts > self.last_ts:
            self.last_ts = ts
        r = decode_c(linktype, f, n, &pkt)
        if r != 0:
            if r == NET_NON_IP:
                self.counters[C_NON_IP] += 1
            elif r == NET_OTHER_L4:
                self.counters[C_OTHER_L4] += 1
            else:
                self.errors[-r - 100] += 1
            return 0
        if pkt.l4 == 17:
            if pkt.sport == 53 or pkt.dport == 53:
                dns_message(self, ts, pkt.src, pkt.dst, pkt.sport, pkt.dport, f + pkt.off, pkt.n, pkt.sport == 53)
            return 0
        return tcp_segment(self, ts, &pkt, f + pkt.off, pkt.n)

    cdef void _detect(self, Flow* fl, int side, const uint8_t* data, Py_ssize_t n) noexcept:
        """Which protocol a flow speaks: from the first bytes of a direction (tried in this order), with port
        hints for flows joined mid-stream; opaque when undecided after MAX_DETECT segments (at once on a flow seen
        from its SYN)."""
        cdef bint client = side == fl.cside
        cdef bint hint
        cdef const char* c = <const char*>data
        if http_method_start(c, n):
            fl.cside = side
            fl.proto = P_HTTP
        elif starts(c, n, b"HTTP/1.", 7):
            fl.cside = 1 - side
            fl.proto = P_HTTP
        elif client and pg_startup_like(data, n):
            pg_begin(fl, side, True)
            return
        elif n >= 6 and data[0] == 0x16 and data[1] == 3 and data[5] == 1:
            fl.cside = side
            fl.proto = P_TLS
            return
        elif fl.port[0] == 53 or fl.port[1] == 53:
            fl.proto = P_DNS
            fl.dirs[0].state = 0
            fl.dirs[1].state = 0
            return
        else:
            hint = (self.port_hint[fl.port[1 - fl.cside]] & 1) != 0
            if not fl.fresh and pg_chain(data, n, PG_FRONTEND if client else PG_BACKEND, hint):
                pg_begin(fl, side, False)
                self.counters[C_MID_PG] += 1
                return
            fl.tries += 1
            if fl.fresh or fl.tries >= MAX_DETECT:
                fl.proto = P_OPAQUE
            return
        if not fl.fresh:
            self.counters[C_MID_HTTP] += 1

    cdef int _data(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
        """In-order bytes of one direction, to the flow's protocol parser (recognised first when still unknown)."""
        if fl.proto == P_UNKNOWN:
            self._detect(fl, side, data, n)
        if fl.proto == P_HTTP:
            return http_data(self, fl, side, ts, <const char*>data, n)
        if fl.proto == P_PG:
            return pg_data(self, fl, side, ts, data, n)
        if fl.proto == P_TLS:
            return tls_data(self, fl, side, ts, data, n)
        if fl.proto == P_DNS:
            return dns_tcp_data(self, fl, side, ts, data, n)
        return 0

    cdef int _fin(self, Flow* fl, int side, int64_t ts) except -1:
        """``side`` sent its FIN (after its last byte)."""
        if fl.proto == P_HTTP:
            return http_fin(self, fl, side, ts)
        return 0

    cdef int _finish(self, Flow* fl) except -1:
        """End of a flow (close, reset, eviction, final drain): its protocol settles what is still open."""
        if fl.proto == P_HTTP:
            return http_finish(self, fl)
        if fl.proto == P_PG:
            return pg_finish(self, fl)
        if fl.proto == P_UNKNOWN or fl.proto == P_OPAQUE:
            self.counters[C_UNRECOGNISED] += 1
        return 0

    cdef void _desync(self, Flow* fl, int side) noexcept:
        """Bytes of ``side`` were lost (a gap too long to wait for): what it buffered is dropped, its parser told."""
        cdef Dir* d = &fl.dirs[side]
        d.buf.n = 0
        d.remaining = 0
        if fl.proto == P_HTTP:
            http_desync(fl, side)
        elif fl.proto == P_PG:
            pg_desync(fl, side)
        elif fl.proto == P_TLS:
            tls_desync(fl)


cdef int feed_raw(object engine, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1:
    """``Engine.feed_frame`` without the bytes object: the frame is parsed (and what is kept, copied) before the caller
    hands the memory back, so a pointer into the live ring is safe."""
    return (<Engine>engine)._frame(ts, linktype, f, n)
