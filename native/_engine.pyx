"""Compiled engine, twin of ``_engine_py.py``: frames in, per-window aggregates out, with no Python object per frame.

Reads: frames from the compiled ``CaptureReader`` (C ``Frame`` pointing into its buffer) or one at a time, and a
``slow`` object for the cold paths (rules that need Python, AI usage, TLS ClientHello, DNS, PostgreSQL startup).
Emits: raw aggregate tuples on ``drain`` (one per window/edge/operation/tenant), the only Python objects it builds in
steady state besides those cold-path calls.

Per flow (C structs in a fixed table: open hashing + LRU list, evictions counted) it orders TCP segments, drops
retransmissions (out-of-order segments wait in a small per-flow dict, the rare path), recognises the protocol and runs
the HTTP/1.1, PostgreSQL, TLS ClientHello and DNS-over-TCP stream parsers over raw pointers, then aggregates into an
open-addressing table keyed by a packed byte key. Every step mirrors ``_engine_py.py``; the parser tests run both and
require identical output, so a change here goes there too.

Invariants: a ``Req*`` is owned by its flow's pending list (or is being completed); ``Dir.req`` only ever points at a
request still in that list and is cleared when it leaves. Callers of ``_data`` keep the flow alive; only ``_tcp`` and
``_deliver`` close flows, and they re-check ``gen`` after anything that may have done so.
"""

import gc

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from cpython.object cimport PyObject

cdef extern from "Python.h":
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, object kwnames)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

from costmesh.native._bytes cimport (
    Buf, be32, buf_add, buf_bytes, buf_free, buf_reserve, buf_set, find_byte, buf_trim, eq_lower, find, find_crlf2, hash_bytes, lower, s32,
    starts, strip,
)
from costmesh.native._capture cimport CaptureReader, Frame
from costmesh.native._http cimport Span, _baggage_value, _contains_lower, _digits, _query_value, http_method_start
from costmesh.native._pgwire cimport in_set, pg_chain, pg_startup_like
from costmesh.native._usage cimport Usage, provider_c, usage_c
from costmesh.native._net cimport NET_NON_IP, NET_OTHER_L4, Pkt, decode_c

from ._engine_py import PROTOCOLS
from .kinds import C as _C
from .kinds import COUNTERS, ERROR_KINDS
from .kinds import E as _E
from .kinds import MAX_VALUE as _MAX_VALUE
from .kinds import SRC_BAGGAGE as _SRC_BAGGAGE
from .kinds import SRC_HEADER as _SRC_HEADER
from .kinds import SRC_HOST as _SRC_HOST
from .kinds import SRC_PY as _SRC_PY
from .kinds import SRC_QUERY as _SRC_QUERY
from .http import AI_HOST_MARKERS, AI_PATH_MARKERS
from ._usage import PROVIDERS as _PROVIDERS_T

__all__ = ["PROTOCOLS", "Engine", "collapse_http_op"]

DEF MAX_OOO = 16
DEF MAX_HEAD = 65536
DEF MAX_LINE = 1024
DEF MAX_PENDING = 64
DEF MAX_OP = 2048
DEF MAX_STMTS = 4
DEF MAX_STMT_NAME = 64
DEF MAX_REQ_BODY = 262144
DEF MAX_RESP_BODY = 8388608
DEF MAX_TLS_RECORD = 16389
DEF MAX_DETECT = 4
DEF PG_MAX_LEN = 1073741824
DEF PG_MAX_STARTUP = 10000
DEF MAX_VALUE = 128
DEF BLOCK_BYTES = 262144
DEF MAX_SPARE_BLOCKS = 64

# protocols of a flow
DEF P_UNKNOWN = 0
DEF P_HTTP = 1
DEF P_PG = 2
DEF P_TLS = 3
DEF P_DNS = 4
DEF P_OPAQUE = 5
# record protocols
DEF R_HTTP = 0
DEF R_PG = 1
DEF R_TLS = 2
DEF R_DNS = 3
# HTTP parser states
DEF S_HEAD = 0
DEF S_LEN = 1
DEF S_CSIZE = 2
DEF S_CDATA = 3
DEF S_CCRLF = 4
DEF S_TRAILER = 5
DEF S_CLOSE = 6
DEF S_DESYNC = 7
# PostgreSQL parser states
DEF G_UNTYPED = 0
DEF G_TYPED = 1
DEF G_SSLANS = 2

assert _MAX_VALUE == MAX_VALUE
# rule kinds as C ints: compared per request, so no Python object may stand in for them
cdef int SRC_HEADER = _SRC_HEADER, SRC_BAGGAGE = _SRC_BAGGAGE, SRC_QUERY = _SRC_QUERY, SRC_HOST = _SRC_HOST
cdef int SRC_PY = _SRC_PY

cdef int NC = len(COUNTERS)
cdef int NE = len(ERROR_KINDS)
cdef int C_FRAMES = _C["frames"], C_BYTES = _C["bytes"], C_NON_IP = _C["non_ip"], C_OTHER_L4 = _C["other_l4"]
cdef int C_FLOWS = _C["flows"], C_EVICTED = _C["flows_evicted"], C_RETRANS = _C["tcp_retransmissions"]
cdef int C_OOO = _C["tcp_out_of_order"], C_GAPS = _C["tcp_gaps"], C_HTTP_REQ = _C["http_requests"]
cdef int C_HTTP_RESP = _C["http_responses"], C_UNPAIRED = _C["http_unpaired_responses"]
cdef int C_UNANSWERED = _C["http_unanswered"], C_PG_MSG = _C["pg_messages"], C_PG_Q = _C["pg_queries"]
cdef int C_PG_TLS = _C["pg_tls"], C_MID_HTTP = _C["midstream_http"], C_MID_PG = _C["midstream_postgres"]
cdef int C_TLS_HELLO = _C["tls_client_hellos"], C_TLS_ECH = _C["tls_ech"], C_DNS = _C["dns_messages"]
cdef int C_AI = _C["ai_calls"], C_UNRECOGNISED = _C["flows_unrecognised"]
cdef int E_HEAD_LONG = _E["http_head_too_long"], E_CHUNK = _E["http_chunk"], E_HEADER = _E["http_header"]
cdef int E_CL = _E["http_content_length"], E_REQLINE = _E["http_request_line"], E_STATUS = _E["http_status_line"]
cdef int E_PG = _E["pg_message"], E_DNS = _E["dns_malformed"], E_TLS = _E["tls_malformed"], E_AI = _E["ai_body"]

cdef const char* ECH = b"ech"
cdef const char* PG_FRONTEND = b"QPBEDSCHXFpdcf"
cdef const char* PG_BACKEND = b"RKSZTDCEN123nstcGHWAIVvdf"
cdef list _AI_PATHS = list(AI_PATH_MARKERS)
cdef list _AI_HOSTS = list(AI_HOST_MARKERS)
cdef tuple _PROVIDERS = _PROVIDERS_T
DEF MAX_MARKERS = 32
cdef const char* AI_PATHS_C[MAX_MARKERS]
cdef Py_ssize_t AI_PATHS_LEN[MAX_MARKERS]
cdef const char* AI_HOSTS_C[MAX_MARKERS]
cdef Py_ssize_t AI_HOSTS_LEN[MAX_MARKERS]
cdef int N_AI_PATHS = min(len(_AI_PATHS), MAX_MARKERS)
cdef int N_AI_HOSTS = min(len(_AI_HOSTS), MAX_MARKERS)
# per first byte, the markers that start with it (bit j: marker j): one table look-up per byte of a host or path
cdef uint32_t AI_PATHS_FIRST[256]
cdef uint32_t AI_HOSTS_FIRST[256]
memset(AI_PATHS_FIRST, 0, sizeof(AI_PATHS_FIRST))
memset(AI_HOSTS_FIRST, 0, sizeof(AI_HOSTS_FIRST))
for _j in range(N_AI_PATHS):  # the bytes stay alive in the module-level lists
    AI_PATHS_C[_j] = PyBytes_AS_STRING(_AI_PATHS[_j])
    AI_PATHS_LEN[_j] = len(_AI_PATHS[_j])
    assert AI_PATHS_LEN[_j] > 0
    AI_PATHS_FIRST[<uint8_t>AI_PATHS_C[_j][0]] |= 1u << _j
for _j in range(N_AI_HOSTS):
    assert _AI_HOSTS[_j] == _AI_HOSTS[_j].lower() and len(_AI_HOSTS[_j]) > 0
    AI_HOSTS_C[_j] = PyBytes_AS_STRING(_AI_HOSTS[_j])
    AI_HOSTS_LEN[_j] = len(_AI_HOSTS[_j])
    AI_HOSTS_FIRST[<uint8_t>AI_HOSTS_C[_j][0]] |= 1u << _j


cdef inline bint _any_marker(const char* s, Py_ssize_t n, const uint32_t* first, const char** markers,
                             const Py_ssize_t* lens, bint fold) noexcept nogil:
    """Whether one of the markers occurs in ``s[:n]`` (``fold``: ASCII case-insensitively; markers are lower case)."""
    cdef Py_ssize_t i, k, m
    cdef uint32_t bits
    cdef int j
    cdef const char* mk
    for i in range(n):
        bits = first[<uint8_t>(lower(s[i]) if fold else s[i])]
        j = 0
        while bits:
            m = lens[j]
            if bits & 1 and m <= n - i:
                mk = markers[j]
                k = 1  # byte 0 matched; compared inline, as most candidates differ within a byte or two
                if fold:
                    while k < m and lower(s[i + k]) == mk[k]:
                        k += 1
                else:
                    while k < m and s[i + k] == mk[k]:
                        k += 1
                if k == m:
                    return True
            bits >>= 1
            j += 1
    return False


cdef class _Calls  # below: makes ObservedCall records during a drain


# ---- the engine ----------------------------------------------------------------------------------------------------

cdef class Engine:
    cdef object slow
    cdef object rules
    cdef readonly int64_t window_us
    cdef int max_flows
    cdef uint8_t port_hint[65536]      # bit 1: PostgreSQL port, bit 2: HTTP port
    cdef Flow* flows
    cdef int32_t* buckets
    cdef uint32_t nbuckets
    cdef int32_t lru_head, lru_tail
    cdef int32_t* free_slots
    cdef int nfree
    cdef int nflows
    cdef int slots_touched             # slots below this have been used at least once (dealloc visits only those)
    cdef uint32_t gen_counter
    cdef list ooo                      # per flow slot: None or {seq: (ts, payload, fin)} per direction
    cdef AggSlot* agg                  # open addressing by hash: entry and its hash side by side (one cache line)
    cdef uint64_t agg_cap
    cdef uint64_t agg_n
    cdef AggEntry** agg_list           # the same entries in insertion order (drain order, as in the twin)
    cdef uint64_t agg_list_cap
    cdef Block* blocks                 # where aggregate entries live: bump-allocated, released per drain
    cdef Block* spare                  # emptied blocks kept for reuse (at most MAX_SPARE_BLOCKS)
    cdef int nspare
    cdef Buf kbuf
    cdef Req* free_reqs
    cdef int64_t counters[64]
    cdef int64_t errors[64]
    cdef readonly int64_t last_ts
    # rules
    cdef int nrules
    cdef int* order[3]
    cdef int norder[3]
    cdef int* kind
    cdef bint* http_ok
    cdef bint* ai_only
    cdef const char** key
    cdef Py_ssize_t* keylen
    cdef list _keys
    cdef bint has_body_rules
    cdef Span* rulev
    cdef Span hv_host, hv_cl, hv_te, hv_ct, hv_ce, hv_baggage
    cdef int* header_rules             # indices of header rules (kind SRC_HEADER)
    cdef int nheader_rules
    cdef uint64_t header_rule_lens     # bit n: a header rule's name has n bytes (63 or more: bit 63)
    cdef bint any_baggage
    cdef list ai_body_skip             # [target][start]: needles of the body rules left, or None (see _ai_ids_none)
    cdef bint collapse_ids             # fold ids and query values of HTTP operations (http.collapse_http_op)

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
        rs = self.rules
        self.ai_body_skip = []
        for t in range(3):
            row = []
            for pos in range(len(rs.order[t]) + 1):
                needles = []
                for i in rs.order[t][pos:]:
                    if not rs.http_rule_applies(i, True):
                        continue
                    # a body rule whose key part only a \\u escape can spell otherwise (see _ai_ids_none)
                    nd = rs.needles[i]
                    if rs.rules[i].source != "body" or any(c in nd[1:-1] for c in b'\\/"') or min(nd) < 32:
                        needles = None
                        break
                    needles.append(nd)
                row.append(tuple(needles) if needles is not None else None)
            self.ai_body_skip.append(row)
        self.nrules = len(rs.rules)
        n = max(1, self.nrules)
        self.kind = <int*>calloc(n, sizeof(int))
        self.http_ok = <bint*>calloc(n, sizeof(bint))
        self.ai_only = <bint*>calloc(n, sizeof(bint))
        self.key = <const char**>calloc(n, sizeof(char*))
        self.keylen = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
        self.rulev = <Span*>calloc(n, sizeof(Span))
        self.header_rules = <int*>calloc(n, sizeof(int))
        self._keys = list(rs.keys)
        self.nheader_rules = 0
        self.header_rule_lens = 0
        self.any_baggage = False
        for i in range(self.nrules):
            self.kind[i] = rs.kinds[i]
            self.http_ok[i] = rs.rules[i].source not in ("pg_database", "pg_user", "sni")
            self.ai_only[i] = rs.ai_only[i]
            self.key[i] = PyBytes_AS_STRING(self._keys[i])
            self.keylen[i] = len(self._keys[i])
            if self.kind[i] == SRC_HEADER:
                self.header_rules[self.nheader_rules] = i
                self.nheader_rules += 1
                self.header_rule_lens |= 1ULL << min(self.keylen[i], 63)
        for t in range(3):
            self.norder[t] = len(rs.order[t])
            self.order[t] = <int*>calloc(max(1, self.norder[t]), sizeof(int))
            for i in range(self.norder[t]):
                self.order[t][i] = rs.order[t][i]
        self.has_body_rules = rs.has_body_rules

    def __dealloc__(self):
        cdef int i, t
        cdef Req* r
        if self.flows != NULL:
            for i in range(self.slots_touched):
                if self.flows[i].used:
                    self._release_reqs(&self.flows[i])
                self._free_flow_bufs(&self.flows[i])
            free(self.flows)
        while self.free_reqs != NULL:
            r = self.free_reqs
            self.free_reqs = r.next
            self._free_req_bufs(r)
            free(r)
        free(self.agg_list)
        _free_blocks(self.blocks)
        _free_blocks(self.spare)
        free(self.agg)
        free(self.buckets)
        free(self.free_slots)
        free(self.kind)
        free(self.http_ok)
        free(self.ai_only)
        free(self.key)
        free(self.keylen)
        free(self.rulev)
        free(self.header_rules)
        for t in range(3):
            free(self.order[t])
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
        """Raw per-window rows (tuples, see ``costmesh.sensor.core.sensor._Builder.build`` for their layout) of the closed windows."""
        return self._drain(now_us, final, None)

    def drain_calls(self, int64_t now_us, bint final, builder):
        """``ObservedCall`` records of the closed windows, made here from the C aggregates (no row tuples);
        ``builder`` (``costmesh.sensor.core.sensor._Builder``) names endpoints and holds the per-record constants."""
        return self._drain(now_us, final, _Calls(builder))

    cdef list _drain(self, int64_t now_us, bint final, _Calls ctx):
        cdef int32_t slot
        cdef uint64_t i
        cdef AggEntry* e
        cdef list out = []
        if final:
            while self.lru_head >= 0:
                slot = self.lru_head
                self._unlink(slot)
                self._finish(&self.flows[slot])
                self._release_slot(slot)
        cdef uint64_t kept = 0
        cdef uint64_t nd = 0
        cdef uint64_t total = self.agg_n
        cdef Block* old = self.blocks
        cdef AggEntry* moved
        cdef Py_ssize_t size
        cdef AggEntry** done = <AggEntry**>malloc((total + 1) * sizeof(AggEntry*))
        if done == NULL:
            raise MemoryError()
        memset(self.agg, 0, self.agg_cap * sizeof(AggSlot))
        self.agg_n = 0
        # First in C: entries of open windows move to fresh blocks, the others are listed; then the records are made
        # from the listed ones, and their blocks are released together.
        self.blocks = NULL
        for i in range(total):
            e = self.agg_list[i]
            if final or now_us < 0 or e.window + self.window_us <= now_us:
                done[nd] = e
                nd += 1
            else:
                size = sizeof(AggEntry) + e.klen
                moved = <AggEntry*>self._alloc(size)
                memcpy(moved, e, size)
                moved.key = <char*>(moved + 1)
                self.agg_list[kept] = moved
                kept += 1
                self._agg_insert(moved)
        cdef list cache = [None] * 1024
        gc_was_on = gc.isenabled()
        gc.disable()  # rows are plain tuples made by the thousand: no cycle collection while making them
        try:
            for i in range(nd):
                out.append(self._row(done[i], cache) if ctx is None else ctx.call(done[i]))
        finally:
            free(done)
            self._release_blocks(old)
            if gc_was_on:
                gc.enable()
        return out

    cdef char* _alloc(self, Py_ssize_t n) except NULL:
        """``n`` bytes (8-aligned) in the current block of aggregate entries."""
        cdef Block* b = self.blocks
        cdef size_t need = (<size_t>n + 7) & ~(<size_t>7)
        cdef size_t cap
        cdef char* p
        if b == NULL or b.used + need > b.cap:
            if self.spare != NULL and self.spare.cap >= need:
                b = self.spare
                self.spare = b.next
                self.nspare -= 1
            else:
                cap = BLOCK_BYTES if need <= BLOCK_BYTES else need
                b = <Block*>malloc(sizeof(Block) + cap)
                if b == NULL:
                    raise MemoryError()
                b.cap = cap
            b.used = 0
            b.next = self.blocks
            self.blocks = b
        p = <char*>(b + 1) + b.used
        b.used += need
        return p

    cdef void _release_blocks(self, Block* b) noexcept:
        cdef Block* nxt
        while b != NULL:
            nxt = b.next
            if self.nspare < MAX_SPARE_BLOCKS:
                b.next = self.spare
                self.spare = b
                self.nspare += 1
            else:
                free(b)
            b = nxt

    # ---- aggregation --------------------------------------------------------------------------------------------------

    cdef object _interned(self, list cache, const char* p, Py_ssize_t n):
        """The same bytes object for the same short value within a drain (addresses, ids, hosts, models repeat):
        a direct-mapped cache saves an allocation and a hash per repeated field."""
        cdef uint64_t h
        cdef Py_ssize_t slot
        if n == 0:
            return b""
        if n > MAX_VALUE:
            return PyBytes_FromStringAndSize(p, n)
        h = hash_bytes(p, n)
        slot = <Py_ssize_t>(h & 1023)
        obj = cache[slot]
        if obj is not None and len(<bytes>obj) == n and memcmp(PyBytes_AS_STRING(obj), p, n) == 0:
            return obj
        obj = PyBytes_FromStringAndSize(p, n)
        cache[slot] = obj
        return obj

    cdef inline object _field(self, const char* k, Py_ssize_t* p, list cache, bint intern):
        cdef uint32_t ln
        memcpy(&ln, k + p[0], 4)
        p[0] += 4 + ln
        if intern:
            return self._interned(cache, k + p[0] - ln, ln)
        return PyBytes_FromStringAndSize(k + p[0] - ln, ln)

    cdef tuple _row(self, AggEntry* e, list cache):
        cdef const char* k = e.key
        cdef Py_ssize_t p = 8 + 16 + 16 + 2 + 1 + 12
        cdef int32_t rules[3]
        memcpy(rules, k + 43, 12)
        op = self._field(k, &p, cache, False)  # the operation: mostly distinct, not worth caching
        host = self._field(k, &p, cache, True)
        tv = self._field(k, &p, cache, True)
        fv = self._field(k, &p, cache, True)
        av = self._field(k, &p, cache, True)
        provider = self._field(k, &p, cache, True)
        model = self._field(k, &p, cache, True)
        return (
            e.window,
            self._interned(cache, k + 8, 16),
            self._interned(cache, k + 24, 16),
            (<uint8_t>k[40] << 8) | <uint8_t>k[41],
            <int>k[42],
            op,
            host,
            tv,
            rules[0],
            fv,
            rules[1],
            av,
            rules[2],
            provider,
            model,
            e.vals[0], e.vals[1], e.vals[2], e.vals[3], e.vals[4], e.vals[5], e.vals[6], e.vals[7], e.vals[8],
        )

    cdef int _agg_insert(self, AggEntry* e) except -1:
        cdef uint64_t mask, i
        if (self.agg_n + 1) * 2 > self.agg_cap:
            self._agg_grow()
        mask = self.agg_cap - 1
        i = e.h & mask
        while self.agg[i].e != NULL:
            i = (i + 1) & mask
        self.agg[i].e = e
        self.agg[i].h = e.h
        self.agg_n += 1
        return 0

    cdef int _agg_grow(self) except -1:
        cdef AggSlot* old = self.agg
        cdef uint64_t old_cap = self.agg_cap
        cdef uint64_t i, j, mask
        cdef AggSlot* grown = <AggSlot*>calloc(old_cap * 2, sizeof(AggSlot))
        if grown == NULL:
            raise MemoryError()
        self.agg = grown
        self.agg_cap = old_cap * 2
        mask = self.agg_cap - 1
        for i in range(old_cap):
            if old[i].e != NULL:
                j = old[i].h & mask
                while self.agg[j].e != NULL:
                    j = (j + 1) & mask
                self.agg[j] = old[i]
        free(old)
        return 0

    cdef int _agg(self, int64_t ts, Flow* fl, int proto, const char* op, Py_ssize_t opn, const char* host,
                  Py_ssize_t hostn, Buf* ids, int* rules, const char* prov, Py_ssize_t provn, const char* model,
                  Py_ssize_t modeln, int64_t* vals) except -1:
        cdef int cs = fl.cside
        return self._agg_raw(ts, fl.addr[cs], fl.addr[1 - cs], fl.port[1 - cs], proto, op, opn, host, hostn, ids,
                             rules, prov, provn, model, modeln, vals)

    cdef int _agg_raw(self, int64_t ts, const uint8_t* src, const uint8_t* dst, uint16_t dport, int proto,
                      const char* op, Py_ssize_t opn, const char* host, Py_ssize_t hostn, Buf* ids, int* rules,
                      const char* prov, Py_ssize_t provn, const char* model, Py_ssize_t modeln,
                      int64_t* vals) except -1:
        cdef int64_t window = ts - ts % self.window_us
        cdef int32_t r3[3]
        cdef int t
        cdef uint64_t h, mask, i
        cdef AggEntry* e
        cdef AggEntry** grown
        cdef char* k
        cdef Py_ssize_t total = 43 + 12 + 7 * 4 + opn + hostn + provn + modeln
        if ids != NULL:
            total += ids[0].n + ids[1].n + ids[2].n
        # the key is written in one go into a buffer reserved for all of it (no bounds check per field)
        self.kbuf.n = 0
        if total > self.kbuf.cap:
            buf_reserve(&self.kbuf, total)
        k = self.kbuf.p
        memcpy(k, &window, 8)
        memcpy(k + 8, src, 16)
        memcpy(k + 24, dst, 16)
        k[40] = <char>(dport >> 8)
        k[41] = <char>(dport & 0xFF)
        k[42] = <char>proto
        for t in range(3):
            r3[t] = rules[t] if ids != NULL else -1
        memcpy(k + 43, r3, 12)
        k += 55
        k = _kput(k, op, opn)
        k = _kput(k, host, hostn)
        for t in range(3):
            if ids != NULL:
                k = _kput(k, ids[t].p, ids[t].n)
            else:
                k = _kput(k, NULL, 0)
        k = _kput(k, prov, provn)
        k = _kput(k, model, modeln)
        self.kbuf.n = k - self.kbuf.p
        h = hash_bytes(self.kbuf.p, self.kbuf.n)
        mask = self.agg_cap - 1
        i = h & mask
        while True:
            e = self.agg[i].e
            if e == NULL:
                break
            if self.agg[i].h == h and e.klen == self.kbuf.n and memcmp(e.key, self.kbuf.p, e.klen) == 0:
                for t in range(9):
                    e.vals[t] += vals[t]
                return 0
            i = (i + 1) & mask
        e = <AggEntry*>self._alloc(sizeof(AggEntry) + self.kbuf.n)  # the key follows the entry
        e.key = <char*>(e + 1)
        memcpy(e.key, self.kbuf.p, self.kbuf.n)
        e.klen = self.kbuf.n
        e.h = h
        e.window = window
        for t in range(9):
            e.vals[t] = vals[t]
        if self.agg_n == self.agg_list_cap:
            grown = <AggEntry**>realloc(self.agg_list, self.agg_list_cap * 2 * sizeof(AggEntry*))
            if grown == NULL:  # the entry stays unused in its block until the next drain
                raise MemoryError()
            self.agg_list = grown
            self.agg_list_cap *= 2
        self.agg_list[self.agg_n] = e
        if (self.agg_n + 1) * 2 > self.agg_cap:
            self._agg_insert(e)  # grows the table, then probes afresh
        else:  # the probe above ended on the free slot the entry takes
            self.agg[i].e = e
            self.agg[i].h = h
            self.agg_n += 1
        return 0

    # ---- requests ---------------------------------------------------------------------------------------------------

    cdef Req* _new_req(self, int64_t ts) except NULL:
        cdef Req* r = self.free_reqs
        cdef int t
        if r != NULL:
            self.free_reqs = r.next
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

    cdef void _free_req_bufs(self, Req* r) noexcept:
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

    cdef void _recycle(self, Req* r) noexcept:
        if r.body.cap > 65536 or r.resp_body.cap > 65536 or r.head.cap > 65536:
            buf_free(&r.body)
            buf_free(&r.resp_body)
            buf_free(&r.head)
        r.next = self.free_reqs
        self.free_reqs = r

    cdef void _push(self, Flow* fl, Req* r) noexcept:
        r.next = NULL
        if fl.pend_tail != NULL:
            fl.pend_tail.next = r
        else:
            fl.pend_head = r
        fl.pend_tail = r
        fl.npend += 1

    cdef Req* _pop(self, Flow* fl) noexcept:
        cdef Req* r = fl.pend_head
        if r != NULL:
            fl.pend_head = r.next
            if fl.pend_head == NULL:
                fl.pend_tail = NULL
            fl.npend -= 1
            r.next = NULL
        return r

    cdef void _release_reqs(self, Flow* fl) noexcept:
        cdef Req* r
        while fl.pend_head != NULL:
            r = self._pop(fl)
            self._recycle(r)
        fl.dirs[0].req = NULL
        fl.dirs[1].req = NULL

    # ---- flow table -------------------------------------------------------------------------------------------------

    cdef void _free_flow_bufs(self, Flow* fl) noexcept:
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

    cdef inline uint32_t _bucket(self, const uint8_t* a, uint16_t pa, const uint8_t* b, uint16_t pb) noexcept:
        cdef uint8_t k[36]
        memcpy(k, a, 16)
        memcpy(k + 16, b, 16)
        memcpy(k + 32, &pa, 2)
        memcpy(k + 34, &pb, 2)
        return <uint32_t>(hash_bytes(<const char*>k, 36) & (self.nbuckets - 1))

    cdef void _unlink(self, int32_t slot) noexcept:
        """Take a flow out of the hash chain and the LRU list (its slot stays allocated)."""
        cdef Flow* fl = &self.flows[slot]
        cdef uint32_t b = self._bucket(fl.addr[0], fl.port[0], fl.addr[1], fl.port[1])
        cdef int32_t cur = self.buckets[b]
        cdef int32_t prev = -1
        while cur >= 0 and cur != slot:
            prev = cur
            cur = self.flows[cur].hnext
        if cur == slot:
            if prev < 0:
                self.buckets[b] = fl.hnext
            else:
                self.flows[prev].hnext = fl.hnext
        if fl.lru_prev >= 0:
            self.flows[fl.lru_prev].lru_next = fl.lru_next
        else:
            self.lru_head = fl.lru_next
        if fl.lru_next >= 0:
            self.flows[fl.lru_next].lru_prev = fl.lru_prev
        else:
            self.lru_tail = fl.lru_prev
        fl.lru_prev = fl.lru_next = -1
        self.nflows -= 1

    cdef void _release_slot(self, int32_t slot) noexcept:
        cdef Flow* fl = &self.flows[slot]
        cdef int t
        self._release_reqs(fl)
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
            self.ooo[slot] = None
            fl.has_ooo = False
        self.free_slots[self.nfree] = slot
        self.nfree += 1

    cdef inline void _touch(self, int32_t slot) noexcept:
        cdef Flow* fl = &self.flows[slot]
        if self.lru_tail == slot:
            return
        if fl.lru_prev >= 0:
            self.flows[fl.lru_prev].lru_next = fl.lru_next
        else:
            self.lru_head = fl.lru_next
        if fl.lru_next >= 0:
            self.flows[fl.lru_next].lru_prev = fl.lru_prev
        fl.lru_prev = self.lru_tail
        fl.lru_next = -1
        if self.lru_tail >= 0:
            self.flows[self.lru_tail].lru_next = slot
        self.lru_tail = slot
        if self.lru_head < 0:
            self.lru_head = slot

    cdef int32_t _lookup(self, const uint8_t* a, uint16_t pa, const uint8_t* b, uint16_t pb) noexcept:
        cdef int32_t cur = self.buckets[self._bucket(a, pa, b, pb)]
        cdef Flow* fl
        while cur >= 0:
            fl = &self.flows[cur]
            if fl.port[0] == pa and fl.port[1] == pb and memcmp(fl.addr[0], a, 16) == 0 \
                    and memcmp(fl.addr[1], b, 16) == 0:
                return cur
            cur = fl.hnext
        return -1

    cdef int32_t _new_flow(self, const uint8_t* src, const uint8_t* dst, uint16_t sport, uint16_t dport,
                           uint8_t flags, int* side) except -2:
        cdef int32_t slot, old
        cdef Flow* fl
        cdef uint32_t b
        cdef int t
        cdef bint d_h, s_h
        if self.nfree == 0:
            old = self.lru_head
            self.counters[C_EVICTED] += 1
            self._unlink(old)
            self._finish(&self.flows[old])
            self._release_slot(old)
        self.nfree -= 1
        slot = self.free_slots[self.nfree]
        if slot >= self.slots_touched:
            self.slots_touched = slot + 1
        fl = &self.flows[slot]
        fl.used = True
        self.gen_counter += 1
        fl.gen = self.gen_counter
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
            fl.dirs[t].state = S_HEAD
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
        if flags & 0x02:
            fl.fresh = True
            fl.cside = side[0] if not flags & 0x10 else 1 - side[0]
        else:
            d_h = self.port_hint[dport] != 0
            s_h = self.port_hint[sport] != 0
            if d_h and not s_h:
                fl.cside = side[0]
            elif s_h and not d_h:
                fl.cside = 1 - side[0]
            elif sport < dport:
                fl.cside = 1 - side[0]
            else:
                fl.cside = side[0]
        self.counters[C_FLOWS] += 1
        b = self._bucket(fl.addr[0], fl.port[0], fl.addr[1], fl.port[1])
        fl.hnext = self.buckets[b]
        self.buckets[b] = slot
        fl.lru_prev = self.lru_tail
        fl.lru_next = -1
        if self.lru_tail >= 0:
            self.flows[self.lru_tail].lru_next = slot
        self.lru_tail = slot
        if self.lru_head < 0:
            self.lru_head = slot
        self.nflows += 1
        return slot

    # ---- frames -----------------------------------------------------------------------------------------------------

    cdef int _frame(self, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1:
        cdef Pkt pkt
        cdef int r
        self.counters[C_FRAMES] += 1
        self.counters[C_BYTES] += n
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
                self._dns(ts, pkt.src, pkt.dst, pkt.sport, pkt.dport, f + pkt.off, pkt.n, pkt.sport == 53)
            return 0
        return self._tcp(ts, &pkt, f + pkt.off, pkt.n)

    cdef int _dns(self, int64_t ts, const uint8_t* src, const uint8_t* dst, uint16_t sport, uint16_t dport,
                  const uint8_t* payload, Py_ssize_t n, bint from_server) except -1:
        cdef int64_t vals[9]
        cdef bytes qname
        cdef int rules[3]
        self.counters[C_DNS] += 1
        r = self.slow.dns(PyBytes_FromStringAndSize(<const char*>payload, n))
        if r is None:
            self.errors[E_DNS] += 1
            return 0
        response, rcode, qname = r
        if response and from_server:
            memset(vals, 0, sizeof(vals))
            vals[0] = 1
            vals[1] = rcode != 0
            vals[2] = n
            rules[0] = rules[1] = rules[2] = -1
            self._agg_raw(ts, dst, src, sport, R_DNS, PyBytes_AS_STRING(qname), min(len(qname), MAX_OP), NULL, 0,
                          NULL, rules, NULL, 0, NULL, 0, vals)
        return 0

    cdef int _tcp(self, int64_t ts, Pkt* pkt, const uint8_t* payload, Py_ssize_t n) except -1:
        cdef int side
        cdef int32_t slot
        cdef Flow* fl
        cdef Dir* d
        cdef bint fin
        cdef int32_t rel
        cdef uint32_t gen
        if memcmp(pkt.src, pkt.dst, 16) < 0 or (memcmp(pkt.src, pkt.dst, 16) == 0 and pkt.sport <= pkt.dport):
            slot = self._lookup(pkt.src, pkt.sport, pkt.dst, pkt.dport)
            side = 0
        else:
            slot = self._lookup(pkt.dst, pkt.dport, pkt.src, pkt.sport)
            side = 1
        if slot < 0:
            if pkt.flags & 0x04 or not (n > 0 or pkt.flags & 0x02):
                return 0
            slot = self._new_flow(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.flags, &side)
        else:
            self._touch(slot)
        fl = &self.flows[slot]
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
            self._close(slot)
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
            self._deliver(slot, side, ts, payload, n, fin)
            if fl.used and fl.gen == gen:
                self._drain_ooo(slot, side)
        elif rel < 0:
            if <int64_t>rel + n <= 0:
                if n:
                    self.counters[C_RETRANS] += 1
                return 0
            self.counters[C_RETRANS] += 1
            self._deliver(slot, side, ts, payload - rel, n + rel, fin)
            if fl.used and fl.gen == gen:
                self._drain_ooo(slot, side)
        else:
            self._stash(slot, side, ts, pkt.seq, payload, n, fin)
        return 0

    cdef int _stash(self, int32_t slot, int side, int64_t ts, uint32_t seq, const uint8_t* payload, Py_ssize_t n,
                    bint fin) except -1:
        """The rare path: a segment ahead of the expected sequence number waits in a small dict."""
        cdef Flow* fl = &self.flows[slot]
        cdef Dir* d = &fl.dirs[side]
        cdef uint32_t nxt
        pair = self.ooo[slot]
        if pair is None:
            pair = ({}, {})
            self.ooo[slot] = pair
            fl.has_ooo = True
        ooo = pair[side]
        if seq not in ooo:
            ooo[seq] = (ts, PyBytes_FromStringAndSize(<const char*>payload, n), fin)
            self.counters[C_OOO] += 1
        if len(ooo) > MAX_OOO:
            self.counters[C_GAPS] += 1
            d.next_seq = _ooo_first(ooo, d.next_seq)
            self._desync(fl, side)
            self._drain_ooo(slot, side)
        return 0

    cdef int _drain_ooo(self, int32_t slot, int side) except -1:
        cdef Flow* fl = &self.flows[slot]
        cdef uint32_t gen = fl.gen
        cdef bytes payload
        if not fl.has_ooo:  # the common case, decided without touching the Python list
            return 0
        pair = self.ooo[slot]
        if pair is None:
            return 0
        ooo = pair[side]
        while ooo and fl.used and fl.gen == gen:
            item = ooo.pop(fl.dirs[side].next_seq, None)
            if item is None:
                return 0
            ts, payload, fin = item
            self._deliver(slot, side, ts, <const uint8_t*>PyBytes_AS_STRING(payload), len(payload), fin)
        return 0

    cdef int _deliver(self, int32_t slot, int side, int64_t ts, const uint8_t* data, Py_ssize_t n,
                      bint fin) except -1:
        cdef Flow* fl = &self.flows[slot]
        cdef Dir* d = &fl.dirs[side]
        d.next_seq = d.next_seq + <uint32_t>n + (1 if fin else 0)
        if n:
            self._data(fl, side, ts, data, n)
        if fin:
            d.fin = True
            if fl.proto == P_HTTP and side != fl.cside and d.state == S_CLOSE:
                self._http_response_done(fl, ts)
                d.state = S_HEAD
            if fl.dirs[0].fin and fl.dirs[1].fin:
                self._close(slot)
        return 0

    cdef int _close(self, int32_t slot) except -1:
        self._unlink(slot)
        self._finish(&self.flows[slot])
        self._release_slot(slot)
        return 0

    cdef int _finish(self, Flow* fl) except -1:
        cdef Dir* srv
        cdef Req* req
        cdef int64_t vals[9]
        if fl.proto == P_HTTP:
            srv = &fl.dirs[1 - fl.cside]
            if srv.state == S_CLOSE and srv.req != NULL:
                self._http_response_done(fl, fl.last_ts)
            while fl.pend_head != NULL:
                req = self._pop(fl)
                if fl.dirs[0].req == req:
                    fl.dirs[0].req = NULL
                if fl.dirs[1].req == req:
                    fl.dirs[1].req = NULL
                self.counters[C_UNANSWERED] += 1
                try:
                    self._http_call(fl, req, fl.last_ts, False)
                finally:
                    self._recycle(req)
        elif fl.proto == P_PG:
            while fl.pend_head != NULL:
                req = self._pop(fl)
                if not req.silent:
                    memset(vals, 0, sizeof(vals))
                    vals[0] = 1
                    vals[1] = req.error
                    vals[2] = req.bytes_in
                    vals[3] = req.bytes_out
                    self._agg(req.ts, fl, R_PG, req.op.p, req.op.n, NULL, 0, fl.ids, fl.idrule, NULL, 0, NULL, 0,
                              vals)
                self._recycle(req)
        elif fl.proto == P_UNKNOWN or fl.proto == P_OPAQUE:
            self.counters[C_UNRECOGNISED] += 1
        return 0

    cdef void _desync(self, Flow* fl, int side) noexcept:
        cdef Dir* d = &fl.dirs[side]
        d.buf.n = 0
        d.remaining = 0
        if fl.proto == P_HTTP:
            d.state = S_DESYNC
            if side == fl.cside:
                d.req = NULL
        elif fl.proto == P_PG:
            d.state = G_TYPED
            d.mtype = 0
        elif fl.proto == P_TLS:
            fl.proto = P_OPAQUE

    # ---- protocol recognition ---------------------------------------------------------------------------------------

    cdef void _detect(self, Flow* fl, int side, const uint8_t* data, Py_ssize_t n) noexcept:
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
            fl.proto = P_PG
            fl.dirs[side].state = G_UNTYPED
            fl.dirs[1 - side].state = G_TYPED
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
                fl.proto = P_PG
                fl.dirs[0].state = G_TYPED
                fl.dirs[1].state = G_TYPED
                self.counters[C_MID_PG] += 1
                return
            fl.tries += 1
            if fl.fresh or fl.tries >= MAX_DETECT:
                fl.proto = P_OPAQUE
            return
        if not fl.fresh:
            self.counters[C_MID_HTTP] += 1

    cdef int _data(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
        if fl.proto == P_UNKNOWN:
            self._detect(fl, side, data, n)
        if fl.proto == P_HTTP:
            return self._http(fl, side, ts, <const char*>data, n)
        if fl.proto == P_PG:
            return self._pg(fl, side, ts, data, n)
        if fl.proto == P_TLS:
            return self._tls(fl, side, ts, data, n)
        if fl.proto == P_DNS:
            return self._dns_tcp(fl, side, ts, data, n)
        return 0

    # ---- HTTP/1.1 ---------------------------------------------------------------------------------------------------

    cdef int _http(self, Flow* fl, int side, int64_t ts, const char* data, Py_ssize_t n) except -1:
        cdef Dir* d = &fl.dirs[side]
        cdef bint client = side == fl.cside
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t end, old, take, nl, ln, i, hl
        cdef Span line0
        cdef int st
        cdef const char* line
        cdef const char* lp
        cdef int64_t size
        cdef char ch
        while pos < n and fl.proto == P_HTTP:
            st = d.state
            if st == S_HEAD:
                if d.buf.n == 0:
                    while pos + 1 < n and data[pos] == 13 and data[pos + 1] == 10:
                        pos += 2
                    if pos >= n:
                        return 0
                    hl = self._scan_head(data + pos, n - pos, &line0)
                    if hl >= 0:
                        self._head(fl, side, ts, data + pos, hl, line0)
                        pos += hl
                        continue
                    if n - pos > MAX_HEAD:
                        self.errors[E_HEAD_LONG] += 1
                        self._desync(fl, side)
                        return 0
                    buf_add(&d.buf, data + pos, n - pos)
                    return 0
                old = d.buf.n
                buf_add(&d.buf, data + pos, n - pos)
                end = find_crlf2(d.buf.p, old - 3 if old > 3 else 0, d.buf.n)
                if end < 0:
                    if d.buf.n > MAX_HEAD:
                        self.errors[E_HEAD_LONG] += 1
                        self._desync(fl, side)
                    return 0
                pos += end + 4 - old
                # the head is copied out before the buffer is reused (the head parser may append to buffers)
                head = PyBytes_FromStringAndSize(d.buf.p, end + 4)
                d.buf.n = 0
                hl = self._scan_head(PyBytes_AS_STRING(head), end + 4, &line0)
                self._head(fl, side, ts, PyBytes_AS_STRING(head), hl, line0)
            elif st == S_LEN or st == S_CDATA or st == S_CCRLF:
                take = d.remaining if d.remaining < n - pos else n - pos
                if st != S_CCRLF:
                    self._body(fl, side, data + pos, take)
                self._bytes(fl, side, take)
                d.remaining -= take
                pos += take
                if d.remaining == 0:
                    if st == S_LEN:
                        self._body_done(fl, side, ts)
                    elif st == S_CDATA:
                        d.state = S_CCRLF
                        d.remaining = 2
                    else:
                        d.state = S_CSIZE
            elif st == S_CSIZE or st == S_TRAILER:
                lp = <const char*>memchr(data + pos, 10, n - pos)
                if lp == NULL:
                    buf_add(&d.buf, data + pos, n - pos)
                    self._bytes(fl, side, n - pos)
                    pos = n
                    if d.buf.n > MAX_LINE:
                        self.errors[E_CHUNK] += 1
                        self._desync(fl, side)
                    return 0
                nl = lp - data
                buf_add(&d.buf, data + pos, nl - pos)
                self._bytes(fl, side, nl + 1 - pos)
                pos = nl + 1
                line = d.buf.p
                ln = d.buf.n
                while ln > 0 and line[ln - 1] == 13:
                    ln -= 1
                d.buf.n = 0
                if st == S_TRAILER:
                    if ln == 0:
                        self._body_done(fl, side, ts)
                    continue
                lp = <const char*>memchr(line, 59, ln) if ln else NULL
                if lp != NULL:
                    ln = lp - line
                strip(&line, &ln)
                size = 0
                if ln == 0 or ln > 15:
                    size = -1
                else:
                    for i in range(ln):
                        ch = line[i]
                        if 48 <= ch <= 57:
                            size = size * 16 + (ch - 48)
                        elif 97 <= ch <= 102:
                            size = size * 16 + (ch - 87)
                        elif 65 <= ch <= 70:
                            size = size * 16 + (ch - 55)
                        else:
                            size = -1
                            break
                if size < 0:
                    self.errors[E_CHUNK] += 1
                    self._desync(fl, side)
                    return 0
                if size == 0:
                    d.state = S_TRAILER
                else:
                    d.state = S_CDATA
                    d.remaining = size
            elif st == S_CLOSE:
                self._body(fl, side, data + pos, n - pos)
                self._bytes(fl, side, n - pos)
                return 0
            else:
                if (client and http_method_start(data + pos, n - pos)) or \
                        (not client and starts(data + pos, n - pos, b"HTTP/1.", 7)):
                    d.state = S_HEAD
                    continue
                return 0
        return 0

    cdef inline void _bytes(self, Flow* fl, int side, Py_ssize_t n) noexcept:
        cdef Req* r = fl.dirs[side].req
        if r != NULL:
            if side == fl.cside:
                r.bytes_out += n
            else:
                r.bytes_in += n

    cdef int _body(self, Flow* fl, int side, const char* chunk, Py_ssize_t n) except -1:
        cdef Req* req = fl.dirs[side].req
        cdef Py_ssize_t room
        if req == NULL or not req.capture:
            return 0
        if side == fl.cside:
            room = MAX_REQ_BODY - req.body.n
            if room > 0:
                buf_add(&req.body, chunk, n if n < room else room)
        elif req.ai:
            room = MAX_RESP_BODY - req.resp_body.n
            if room > 0:
                buf_add(&req.resp_body, chunk, n if n < room else room)
        return 0

    cdef int _body_done(self, Flow* fl, int side, int64_t ts) except -1:
        cdef Dir* d = &fl.dirs[side]
        d.state = S_HEAD
        if side == fl.cside:
            d.req = NULL
        else:
            self._http_response_done(fl, ts)
        return 0

    cdef Py_ssize_t _scan_head(self, const char* head, Py_ssize_t n, Span* line0) noexcept:
        """One pass over a head that starts at ``head``: the request/status line and the first value of every header
        the engine reads, up to the first empty line. Returns the head's length (through its ``\\r\\n\\r\\n``) or -1
        when ``head[:n]`` holds no complete head (then nothing is counted). Lines end at ``\\r\\n``; the first
        empty line is where ``\\r\\n\\r\\n`` first occurs, so this finds the same end as ``find_crlf2``."""
        cdef Py_ssize_t s, e, nn, vn
        cdef const char* p
        cdef const char* colon
        cdef const char* v
        cdef Py_ssize_t j
        cdef int r
        cdef int bad = 0
        self.hv_host.p = self.hv_cl.p = self.hv_te.p = self.hv_ct.p = self.hv_ce.p = self.hv_baggage.p = NULL
        for j in range(self.nheader_rules):
            self.rulev[self.header_rules[j]].p = NULL
        e = _crlf(head, 0, n)
        if e < 0:
            return -1
        line0.p = head
        line0.n = e
        s = e + 2
        while True:
            e = _crlf(head, s, n)
            if e < 0:
                return -1
            if e == s:
                self.errors[E_HEADER] += bad
                return s + 2
            p = head + s
            nn = e - s
            s = e + 2
            if p[0] == 32 or p[0] == 9:
                continue
            j = find_byte(p, 0, nn, 58)
            if j <= 0:
                bad += 1
                continue
            vn = nn - j - 1
            v = p + j + 1
            nn = j
            strip(&v, &vn)
            if nn == 4:
                if self.hv_host.p == NULL and eq_lower(p, nn, b"host", 4):
                    self.hv_host.p = v
                    self.hv_host.n = vn
            elif nn == 14:
                if self.hv_cl.p == NULL and eq_lower(p, nn, b"content-length", 14):
                    self.hv_cl.p = v
                    self.hv_cl.n = vn
            elif nn == 17:
                if self.hv_te.p == NULL and eq_lower(p, nn, b"transfer-encoding", 17):
                    self.hv_te.p = v
                    self.hv_te.n = vn
            elif nn == 12:
                if self.hv_ct.p == NULL and eq_lower(p, nn, b"content-type", 12):
                    self.hv_ct.p = v
                    self.hv_ct.n = vn
            elif nn == 16:
                if self.hv_ce.p == NULL and eq_lower(p, nn, b"content-encoding", 16):
                    self.hv_ce.p = v
                    self.hv_ce.n = vn
            elif nn == 7:
                if self.hv_baggage.p == NULL and eq_lower(p, nn, b"baggage", 7):
                    self.hv_baggage.p = v
                    self.hv_baggage.n = vn
            if (self.header_rule_lens >> (nn if nn < 63 else 63)) & 1:  # a header rule's name is this long
                for j in range(self.nheader_rules):
                    r = self.header_rules[j]
                    if self.rulev[r].p == NULL and eq_lower(p, nn, self.key[r], self.keylen[r]):
                        self.rulev[r].p = v
                        self.rulev[r].n = vn

    cdef int _head(self, Flow* fl, int side, int64_t ts, const char* head, Py_ssize_t hn, Span line) except -1:
        """A complete head that ``_scan_head`` has just read (its header values are in ``hv_*``/``rulev``)."""
        cdef Dir* d = &fl.dirs[side]
        cdef bint chunked
        cdef int64_t cl = -1
        cdef Py_ssize_t sp1, sp2, i, tn
        cdef const char* hit
        cdef Req* req
        cdef int status
        cdef const char* target
        chunked = self.hv_te.p != NULL and _contains_lower(self.hv_te.p, self.hv_te.n, b"chunked", 7)
        if self.hv_cl.p != NULL:
            cl = _digits(self.hv_cl.p, self.hv_cl.n)
            if cl < 0:
                self.errors[E_CL] += 1
        if side == fl.cside:
            hit = <const char*>memchr(line.p, 32, line.n)
            sp1 = hit - line.p if hit != NULL else -1
            sp2 = -1
            for i in range(line.n - 1, -1, -1):
                if line.p[i] == 32:
                    sp2 = i
                    break
            if sp1 <= 0 or sp1 > 16 or sp2 <= sp1 + 1 or not starts(line.p + sp2 + 1, line.n - sp2 - 1,
                                                                     b"HTTP/1.", 7):
                self.errors[E_REQLINE] += 1
                self._desync(fl, side)
                return 0
            for i in range(sp1):
                if not (65 <= line.p[i] <= 90):
                    self.errors[E_REQLINE] += 1
                    self._desync(fl, side)
                    return 0
            self.counters[C_HTTP_REQ] += 1
            target = line.p + sp1 + 1
            tn = sp2 - sp1 - 1
            if fl.npend >= MAX_PENDING:
                req = NULL
                # the twin still builds the request (and may evaluate rules) but never reports it
            else:
                req = self._new_req(ts)
                buf_set(&req.op, line.p, sp2 if sp2 < MAX_OP else MAX_OP)
                if self.collapse_ids:
                    req.op.n = _collapse(req.op.p, req.op.n)
                if self.hv_host.p != NULL:
                    buf_set(&req.host, self.hv_host.p, self.hv_host.n if self.hv_host.n < MAX_VALUE else MAX_VALUE)
                req.method_head = sp1 == 4 and memcmp(line.p, b"HEAD", 4) == 0
                req.method_connect = sp1 == 7 and memcmp(line.p, b"CONNECT", 7) == 0
                req.bytes_out = hn
                req.ai = self._is_ai(target, tn, req.host.p, req.host.n)
                try:
                    self._http_ids(req, head, hn, target, tn)
                except BaseException:
                    self._recycle(req)
                    raise
                if req.capture:
                    buf_set(&req.head, head, hn)
                if req.ai:
                    buf_set(&req.target, target, tn)
                self._push(fl, req)
            d.req = req
            if chunked:
                d.state = S_CSIZE
            elif cl > 0:
                d.state = S_LEN
                d.remaining = cl
            else:
                d.req = NULL
            return 0
        # response
        if not (line.n >= 12 and starts(line.p, line.n, b"HTTP/1.", 7) and line.p[8] == 32
                and 48 <= line.p[9] <= 57 and 48 <= line.p[10] <= 57 and 48 <= line.p[11] <= 57):
            self.errors[E_STATUS] += 1
            self._desync(fl, side)
            return 0
        status = (line.p[9] - 48) * 100 + (line.p[10] - 48) * 10 + (line.p[11] - 48)
        self.counters[C_HTTP_RESP] += 1
        req = fl.pend_head
        if req == NULL:
            self.counters[C_UNPAIRED] += 1
        if 100 <= status < 200:
            if status == 101:
                fl.proto = P_OPAQUE
            return 0
        d.req = req
        if req != NULL:
            req.status = status
            req.bytes_in += hn
            if self.hv_ct.p != NULL:
                buf_set(&req.ct, self.hv_ct.p, self.hv_ct.n)
            else:
                req.ct.n = 0
            if self.hv_ce.p != NULL:
                buf_set(&req.ce, self.hv_ce.p, self.hv_ce.n)
            else:
                req.ce.n = 0
        if req != NULL and req.method_connect and 200 <= status < 300:
            # a proxy tunnel from here on (egress proxies to AI APIs): look for the TLS ClientHello inside it
            self._http_response_done(fl, ts)
            self._tunnel(fl)
            return 0
        if (req != NULL and req.method_head) or status == 204 or status == 304:
            self._http_response_done(fl, ts)
        elif chunked:
            d.state = S_CSIZE
        elif cl >= 0:
            if cl == 0:
                self._http_response_done(fl, ts)
            else:
                d.state = S_LEN
                d.remaining = cl
        else:
            d.state = S_CLOSE
        return 0

    cdef int _tunnel(self, Flow* fl) except -1:
        """After ``CONNECT`` succeeded the flow carries another protocol: recognise it afresh."""
        cdef int t
        self._finish(fl)
        self._release_reqs(fl)
        fl.proto = P_UNKNOWN
        fl.tries = 0
        for t in range(2):
            fl.dirs[t].buf.n = 0
            fl.dirs[t].state = 0
            fl.dirs[t].remaining = 0
            fl.dirs[t].req = NULL
        return 0

    cdef bint _is_ai(self, const char* target, Py_ssize_t tn, const char* host, Py_ssize_t hn) noexcept:
        return _any_marker(host, hn, AI_HOSTS_FIRST, AI_HOSTS_C, AI_HOSTS_LEN, True) or \
            _any_marker(target, tn, AI_PATHS_FIRST, AI_PATHS_C, AI_PATHS_LEN, False)

    cdef int _http_ids(self, Req* req, const char* head, Py_ssize_t hn, const char* target,
                       Py_ssize_t tn) except -1:
        cdef int t, pos, i, k
        cdef Span v
        cdef bint any_start = False
        for t in range(3):
            for pos in range(self.norder[t]):
                i = self.order[t][pos]
                if not self.http_ok[i] or (self.ai_only[i] and not req.ai):
                    continue
                k = self.kind[i]
                if k == SRC_PY:
                    req.starts[t] = pos
                    any_start = True
                    break
                v.p = NULL
                v.n = 0
                if k == SRC_HEADER:
                    v = self.rulev[i]
                elif k == SRC_BAGGAGE:
                    if self.hv_baggage.p != NULL:
                        _baggage_value(self.hv_baggage.p, self.hv_baggage.n, self.key[i], self.keylen[i], &v)
                elif k == SRC_QUERY:
                    _query_value(target, tn, self.key[i], self.keylen[i], &v)
                elif k == SRC_HOST:
                    v = self.hv_host
                if v.p != NULL and v.n > 0:
                    buf_set(&req.ids[t], v.p, v.n if v.n < MAX_VALUE else MAX_VALUE)
                    req.rule[t] = i
                    break
        if not any_start:
            req.capture = req.ai
            return 0
        if req.ai or self.has_body_rules:
            req.capture = True
            return 0
        found = self.slow.resolve(PyBytes_FromStringAndSize(head, hn), None,
                                  (req.starts[0], req.starts[1], req.starts[2]), False)
        self._take_ids(req, found)
        for t in range(3):
            req.starts[t] = -1
        return 0

    cdef int _take_ids(self, Req* req, found) except -1:
        cdef int t
        cdef bytes v
        for t in range(3):
            if req.starts[t] >= 0:
                v, rule = found[t]
                buf_set(&req.ids[t], PyBytes_AS_STRING(v), len(v))
                req.rule[t] = rule
        return 0

    cdef int _http_response_done(self, Flow* fl, int64_t ts) except -1:
        cdef Dir* srv = &fl.dirs[1 - fl.cside]
        cdef Dir* cli = &fl.dirs[fl.cside]
        cdef Req* req = srv.req
        cdef Req* cur
        srv.req = NULL
        if req == NULL:
            return 0
        if fl.pend_head == req:
            self._pop(fl)
        else:  # never expected (the response belongs to the oldest request), but the list must stay sound
            cur = fl.pend_head
            while cur != NULL and cur.next != req:
                cur = cur.next
            if cur != NULL:
                cur.next = req.next
                if fl.pend_tail == req:
                    fl.pend_tail = cur
                fl.npend -= 1
            req.next = NULL
        if cli.req == req:
            cli.req = NULL
        try:
            self._http_call(fl, req, ts, True)
        finally:
            self._recycle(req)
        return 0

    cdef bint _ai_ids_none(self, Req* req) except -1:
        """True when ``RuleSet.resolve`` is certain to find nothing for this AI request's open targets: only body rules
        are left for them, and the body holds none of their first keys as JSON text (``"key"``), so no top-level key
        of the decoded body is one of them (an empty or non-JSON body gives nothing either). The keys have no ``/``,
        ``"``, ``\\`` or control character, so only a ``\\u`` escape could spell one otherwise: a body with ``\\u``
        goes to Python. (Python itself skips the decoding only for bodies without any backslash; the answer is the
        same, and chat prompts are full of ``\\n``.)"""
        cdef int t
        cdef bytes nd
        cdef const char* body = req.body.p
        cdef Py_ssize_t bn = req.body.n
        cdef bint checked = False
        for t in range(3):
            if req.starts[t] < 0:
                continue
            needles = self.ai_body_skip[t][req.starts[t]]
            if needles is None:
                return False
            if bn > 0:
                if not checked:
                    if find(body, bn, b"\\u", 2) >= 0:
                        return False
                    checked = True
                for nd in needles:
                    if find(body, bn, PyBytes_AS_STRING(nd), len(nd)) >= 0:
                        return False
        return True

    cdef int _http_call(self, Flow* fl, Req* req, int64_t ts, bint answered) except -1:
        cdef int64_t vals[9]
        cdef bytes provider = b""
        cdef bytes model = b""
        cdef Usage u
        cdef int pi, t
        memset(vals, 0, sizeof(vals))
        if req.capture and req.ai and answered and self._ai_ids_none(req):
            # AI call whose deferred rules cannot match: read a plain JSON usage body in C when that is certain to
            # give what Slow.complete gives (usage_c says so, or we take the Python path below)
            pi = provider_c(req.target.p, req.target.n, req.host.p, req.host.n)
            if pi >= 0 and usage_c(req.resp_body.p, req.resp_body.n, req.ct.p, req.ct.n, req.ce.n, &u):
                for t in range(3):
                    if req.starts[t] >= 0:  # what _take_ids makes of RuleSet.resolve's (b"", -1)
                        req.ids[t].n = 0
                        req.rule[t] = -1
                self.counters[C_AI] += 1
                vals[0] = 1
                vals[1] = 1 if req.status >= 500 else 0
                vals[2] = req.bytes_in
                vals[3] = req.bytes_out
                vals[4] = ts - req.ts if ts > req.ts else 0
                vals[5] = u.tokens[0]
                vals[6] = u.tokens[1]
                vals[7] = u.tokens[2]
                vals[8] = u.tokens[3]
                provider = _PROVIDERS[pi]
                return self._agg(req.ts, fl, R_HTTP, req.op.p, req.op.n, req.host.p, req.host.n, req.ids, req.rule,
                                 PyBytes_AS_STRING(provider), len(provider), req.resp_body.p + u.model_at,
                                 u.model_len, vals)
        if req.capture:  # one call settles the deferred rules and reads the AI usage
            starts = None
            if req.starts[0] >= 0 or req.starts[1] >= 0 or req.starts[2] >= 0:
                starts = (req.starts[0], req.starts[1], req.starts[2])
            found, r = self.slow.complete(buf_bytes(&req.head), buf_bytes(&req.body), starts, req.ai,
                                          buf_bytes(&req.target), buf_bytes(&req.host), buf_bytes(&req.resp_body),
                                          buf_bytes(&req.ct), buf_bytes(&req.ce), answered)
            if found is not None:
                self._take_ids(req, found)
            if req.ai:
                self.counters[C_AI] += 1
                if r is None:
                    self.errors[E_AI] += 1
                else:
                    provider = r[0]
                    model = r[1]
                    vals[5] = r[2]
                    vals[6] = r[3]
                    vals[7] = r[4]
                    vals[8] = r[5]
        vals[0] = 1
        vals[1] = 1 if req.status >= 500 else 0
        vals[2] = req.bytes_in
        vals[3] = req.bytes_out
        vals[4] = ts - req.ts if answered and ts > req.ts else 0
        return self._agg(req.ts, fl, R_HTTP, req.op.p, req.op.n, req.host.p, req.host.n, req.ids, req.rule,
                         PyBytes_AS_STRING(provider), len(provider), PyBytes_AS_STRING(model), len(model), vals)

    # ---- PostgreSQL ---------------------------------------------------------------------------------------------------

    cdef int _pg(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
        cdef Dir* d = &fl.dirs[side]
        cdef bint client = side == fl.cside
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take, need, cap, room
        cdef int hlen, mtype, b
        cdef int64_t length
        cdef bint ok
        cdef int64_t mlen
        while pos < n and fl.proto == P_PG:
            if d.state == G_SSLANS:
                b = data[pos]
                pos += 1
                if b == 0x4E:
                    d.state = G_TYPED
                elif b == 0x53:
                    self.counters[C_PG_TLS] += 1
                    fl.proto = P_TLS
                    fl.dirs[0].buf.n = 0
                    fl.dirs[0].state = 0
                    fl.dirs[1].buf.n = 0
                    fl.dirs[1].state = 0
                    return 0
                elif b == 0x47:
                    fl.proto = P_OPAQUE
                    return 0
                else:
                    self.errors[E_PG] += 1
                    fl.proto = P_OPAQUE
                    return 0
                continue
            hlen = 4 if d.state == G_UNTYPED else 5
            if d.mtype == 0:
                need = hlen - d.buf.n
                take = need if need < n - pos else n - pos
                buf_add(&d.buf, <const char*>data + pos, take)
                pos += take
                if d.buf.n < hlen:
                    return 0
                if hlen == 5:
                    mtype = <uint8_t>d.buf.p[0]
                    length = be32(<const uint8_t*>d.buf.p + 1)
                    ok = 4 <= length <= PG_MAX_LEN and in_set(PG_FRONTEND if client else PG_BACKEND, mtype)
                else:
                    mtype = 1
                    length = be32(<const uint8_t*>d.buf.p)
                    ok = 8 <= length <= PG_MAX_STARTUP
                if not ok:
                    self.errors[E_PG] += 1
                    fl.proto = P_OPAQUE
                    return 0
                d.mtype = mtype
                d.remaining = length - 4
                d.buf.n = 0
                d.mlen = length
            take = d.remaining if d.remaining < n - pos else n - pos
            cap = _pg_cap(d.mtype, client, d.state)
            room = cap - d.buf.n
            if room > 0:
                buf_add(&d.buf, <const char*>data + pos, take if take < room else room)
            d.remaining -= take
            pos += take
            if d.remaining == 0:
                mtype = d.mtype
                mlen = d.mlen
                d.mtype = 0
                try:
                    self._pg_message(fl, side, ts, mtype, mlen, d.buf.p, d.buf.n)
                finally:
                    d.buf.n = 0
        return 0

    cdef int _pg_message(self, Flow* fl, int side, int64_t ts, int mtype, int64_t mlen, const char* body,
                         Py_ssize_t bn) except -1:
        cdef Dir* d = &fl.dirs[side]
        cdef int64_t size = mlen + (1 if d.state == G_TYPED else 0)
        cdef uint32_t code
        cdef Req* req
        cdef Req* front
        cdef const char* z
        cdef const char* q
        cdef Py_ssize_t qn, name_n
        cdef int64_t vals[9]
        self.counters[C_PG_MSG] += 1
        if side == fl.cside:
            if d.state == G_UNTYPED:
                code = be32(<const uint8_t*>body)
                if code == 80877103 or code == 80877104:
                    fl.dirs[1 - side].state = G_SSLANS
                elif code == 80877102:
                    pass
                elif (code >> 16) == 3:
                    d.state = G_TYPED
                    self._pg_startup(fl, PyBytes_FromStringAndSize(body + 4, bn - 4))
                else:
                    self.errors[E_PG] += 1
                    fl.proto = P_OPAQUE
                return 0
            if mtype == 0x51:
                z = <const char*>memchr(body, 0, bn)
                qn = (z - body) if z != NULL else bn
                if fl.npend < MAX_PENDING:
                    req = self._new_req(ts)
                    buf_set(&req.op, body, qn if qn < MAX_OP else MAX_OP)
                    req.bytes_out = size
                    self._push(fl, req)
                self.counters[C_PG_Q] += 1
            elif mtype == 0x53:
                if not fl.cycle_open:
                    pass
                else:
                    self.counters[C_PG_Q] += 1
                if fl.npend < MAX_PENDING:
                    req = self._new_req(fl.cycle_ts if fl.cycle_open else ts)
                    buf_set(&req.op, fl.cycle_op.p, fl.cycle_op.n)
                    req.bytes_out = fl.cycle_bytes + size
                    req.silent = not fl.cycle_open
                    self._push(fl, req)
                fl.cycle_open = False
                fl.cycle_op.n = 0
                fl.cycle_bytes = 0
            elif mtype == 0x58 or mtype == 0x70:
                return 0
            else:
                if not fl.cycle_open:
                    fl.cycle_open = True
                    fl.cycle_ts = ts
                    fl.cycle_op.n = 0
                    fl.cycle_bytes = 0
                fl.cycle_bytes += size
                if mtype == 0x50 or (mtype == 0x42 and fl.cycle_op.n == 0):
                    # first C string: statement (Parse) or portal (Bind) name; second: query text or statement name
                    z = <const char*>memchr(body, 0, bn)
                    if z != NULL:
                        name_n = z - body
                        q = z + 1
                        qn = bn - (q - body)
                        z = <const char*>memchr(q, 0, qn)
                        if z != NULL:
                            qn = z - q
                        if mtype == 0x50:
                            if qn > MAX_OP:
                                qn = MAX_OP
                            self._stmt_put(fl, body, name_n if name_n < MAX_STMT_NAME else MAX_STMT_NAME, q, qn)
                            if fl.cycle_op.n == 0:
                                buf_set(&fl.cycle_op, q, qn)
                        else:
                            self._stmt_get(fl, q, qn if qn < MAX_STMT_NAME else MAX_STMT_NAME, &fl.cycle_op)
            return 0
        front = fl.pend_head
        if front == NULL:
            return 0
        front.bytes_in += size
        if mtype == 0x45:
            front.error = True
        elif mtype == 0x5A:
            self._pop(fl)
            try:
                if not front.silent:
                    memset(vals, 0, sizeof(vals))
                    vals[0] = 1
                    vals[1] = front.error
                    vals[2] = front.bytes_in
                    vals[3] = front.bytes_out
                    vals[4] = ts - front.ts if ts > front.ts else 0
                    self._agg(front.ts, fl, R_PG, front.op.p, front.op.n, NULL, 0, fl.ids, fl.idrule, NULL, 0,
                              NULL, 0, vals)
            finally:
                self._recycle(front)
        return 0

    cdef int _stmt_put(self, Flow* fl, const char* name, Py_ssize_t nn, const char* text,
                       Py_ssize_t tn) except -1:
        cdef int i
        for i in range(fl.nstmts):
            if fl.stmt_name[i].n == nn and memcmp(fl.stmt_name[i].p, name, nn) == 0:
                buf_set(&fl.stmt_text[i], text, tn)
                return 0
        if fl.nstmts < MAX_STMTS:
            i = fl.nstmts
            fl.nstmts += 1
        else:
            i = fl.stmt_next
            fl.stmt_next = (fl.stmt_next + 1) % MAX_STMTS
        buf_set(&fl.stmt_name[i], name, nn)
        buf_set(&fl.stmt_text[i], text, tn)
        return 0

    cdef int _stmt_get(self, Flow* fl, const char* name, Py_ssize_t nn, Buf* out) except -1:
        cdef int i
        for i in range(fl.nstmts):
            if fl.stmt_name[i].n == nn and memcmp(fl.stmt_name[i].p, name, nn) == 0:
                return buf_set(out, fl.stmt_text[i].p, fl.stmt_text[i].n)
        out.n = 0
        return 0

    cdef int _pg_startup(self, Flow* fl, bytes params) except -1:
        cdef int t
        cdef bytes v
        parts = params.split(b"\0")
        kv = dict(zip(parts[0::2], parts[1::2]))
        user = kv.get(b"user", b"")
        database = kv.get(b"database", b"") or user
        found = self.slow.pg_startup(user, database)
        for t in range(3):
            v, rule = found[t]
            buf_set(&fl.ids[t], PyBytes_AS_STRING(v), len(v))
            fl.idrule[t] = rule
        return 0

    # ---- TLS ClientHello ----------------------------------------------------------------------------------------------

    cdef int _tls(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
        cdef bint client = side == fl.cside
        cdef Dir* d
        cdef Py_ssize_t need, room
        cdef int64_t vals[9]
        cdef int t
        cdef bytes record, sni, v
        memset(vals, 0, sizeof(vals))
        if not fl.tls_done:
            if not client:
                return 0
            d = &fl.dirs[side]
            room = MAX_TLS_RECORD - d.buf.n
            buf_add(&d.buf, <const char*>data, n if n < room else room)
            if d.buf.n < 5:
                return 0
            need = 5 + ((<uint8_t>d.buf.p[3] << 8) | <uint8_t>d.buf.p[4])
            if d.buf.n < need and d.buf.n < MAX_TLS_RECORD:
                return 0
            record = PyBytes_FromStringAndSize(d.buf.p, need if need < d.buf.n else d.buf.n)
            d.buf.n = 0
            fl.tls_done = True
            r = self.slow.tls(record)
            if r is None:
                self.errors[E_TLS] += 1
                fl.proto = P_OPAQUE
                return 0
            sni, ech, ids = r
            self.counters[C_TLS_HELLO] += 1
            if ech:
                self.counters[C_TLS_ECH] += 1
            buf_set(&fl.host, PyBytes_AS_STRING(sni), len(sni) if len(sni) < MAX_VALUE else MAX_VALUE)
            for t in range(3):
                v, rule = ids[t]
                buf_set(&fl.ids[t], PyBytes_AS_STRING(v), len(v))
                fl.idrule[t] = rule
            vals[0] = 1
            vals[3] = len(record)
            return self._agg(ts, fl, R_TLS, ECH, 3 if ech else 0, fl.host.p, fl.host.n, fl.ids, fl.idrule, NULL, 0,
                             NULL, 0, vals)
        if client:
            vals[3] = n
        else:
            vals[2] = n
        return self._agg(ts, fl, R_TLS, NULL, 0, fl.host.p, fl.host.n, fl.ids, fl.idrule, NULL, 0, NULL, 0, vals)

    # ---- DNS over TCP ---------------------------------------------------------------------------------------------------

    cdef int _dns_tcp(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
        cdef Dir* d = &fl.dirs[side]
        cdef Py_ssize_t need
        cdef bytes msg
        buf_add(&d.buf, <const char*>data, n)
        while d.buf.n >= 2:
            need = 2 + ((<uint8_t>d.buf.p[0] << 8) | <uint8_t>d.buf.p[1])
            if d.buf.n < need:
                if d.buf.n > 70000:
                    d.buf.n = 0
                return 0
            msg = PyBytes_FromStringAndSize(d.buf.p + 2, need - 2)
            memmove(d.buf.p, d.buf.p + need, d.buf.n - need)
            d.buf.n -= need
            self._dns(ts, fl.addr[side], fl.addr[1 - side], fl.port[side], fl.port[1 - side],
                      <const uint8_t*>PyBytes_AS_STRING(msg), len(msg), side != fl.cside)
        return 0


# ---- records ----------------------------------------------------------------------------------------------------------

# The keywords an ``ObservedCall`` is made with, in one vectorcall; at most 15, for msgspec (0.22) takes a much slower
# path from 16 keywords on. The fields that usually keep their default are set afterwards when they differ.
cdef tuple CALL_KWNAMES = (
    "window_start_us", "window_end_us", "node", "src_workload", "dst", "protocol", "operation", "tenant",
    "tenant_method", "tenant_rule", "requests", "errors", "bytes_in", "bytes_out", "busy_us",
)
DEF N_CALL_ARGS = 15
DEF TEXT_SLOTS = 1024
DEF EP_SLOTS = 256
DEF EP_KEY = 160


cdef struct EpKey:
    Py_ssize_t n
    char k[EP_KEY]


cdef class _Calls:
    """Makes ``ObservedCall`` records from aggregate entries during one drain: the same records as
    ``costmesh.sensor.core.sensor._Builder.build`` makes from row tuples (the parser tests compare both builds), with texts decoded once
    per distinct value (a direct-mapped cache of ``str``) and endpoint names asked of the builder once per edge."""
    cdef object cls
    cdef object node
    cdef int64_t width
    cdef list method_of
    cdef list rule_of
    cdef object src_name
    cdef object dst_name
    cdef dict srcs
    cdef dict dsts
    cdef list texts
    cdef list raw
    cdef int64_t win
    cdef object win_start
    cdef object win_end
    cdef Buf kbuf
    # endpoint names by raw key, direct-mapped in C before the dicts: no bytes object nor dict look-up per record
    cdef EpKey src_keys[EP_SLOTS]
    cdef EpKey dst_keys[EP_SLOTS]
    cdef list src_names
    cdef list dst_names

    def __cinit__(self, builder):
        cdef int t
        self.cls = builder.cls
        self.node = builder.node
        self.width = builder.width
        self.method_of = builder.method_of
        self.rule_of = builder.rule_of
        self.src_name = builder.src_name
        self.dst_name = builder.dst_name
        self.srcs = {}
        self.dsts = {}
        self.texts = [None] * TEXT_SLOTS
        self.raw = [None] * TEXT_SLOTS
        self.win = -1
        memset(&self.kbuf, 0, sizeof(Buf))
        for t in range(EP_SLOTS):
            self.src_keys[t].n = -1
            self.dst_keys[t].n = -1
        self.src_names = [None] * EP_SLOTS
        self.dst_names = [None] * EP_SLOTS

    def __dealloc__(self):
        buf_free(&self.kbuf)

    cdef object _text(self, const char* p, Py_ssize_t n):
        """``p[:n].decode("utf-8", "replace")``, the same ``str`` object for the same short ASCII value."""
        cdef Py_ssize_t slot
        if n == 0:
            return ""
        if n > MAX_OP:
            return PyUnicode_DecodeUTF8(p, n, "replace")
        slot = <Py_ssize_t>(hash_bytes(p, n) & (TEXT_SLOTS - 1))
        obj = self.texts[slot]
        if obj is not None and PyUnicode_GET_LENGTH(obj) == n and memcmp(PyUnicode_DATA(obj), p, n) == 0:
            return obj
        obj = PyUnicode_DecodeUTF8(p, n, "replace")
        if PyUnicode_IS_COMPACT_ASCII(obj):  # only then are its characters the bytes compared above
            self.texts[slot] = obj
        return obj

    cdef object _src(self, const char* addr):
        cdef Py_ssize_t slot = <Py_ssize_t>(hash_bytes(addr, 16) & (EP_SLOTS - 1))
        cdef EpKey* ek = &self.src_keys[slot]
        if ek.n == 16 and memcmp(ek.k, addr, 16) == 0:
            return self.src_names[slot]
        key = PyBytes_FromStringAndSize(addr, 16)
        name = self.srcs.get(key)
        if name is None:
            name = self.srcs[key] = self.src_name(key)
        memcpy(ek.k, addr, 16)
        ek.n = 16
        self.src_names[slot] = name
        return name

    cdef object _dst(self, const char* k, const char* host, Py_ssize_t hostn):
        """Destination name by (address, port, host): the key is those bytes side by side."""
        cdef Py_ssize_t slot
        cdef EpKey* ek = NULL
        self.kbuf.n = 0
        buf_add(&self.kbuf, k + 24, 18)
        buf_add(&self.kbuf, host, hostn)
        if self.kbuf.n <= EP_KEY:
            slot = <Py_ssize_t>(hash_bytes(self.kbuf.p, self.kbuf.n) & (EP_SLOTS - 1))
            ek = &self.dst_keys[slot]
            if ek.n == self.kbuf.n and memcmp(ek.k, self.kbuf.p, ek.n) == 0:
                return self.dst_names[slot]
        key = PyBytes_FromStringAndSize(self.kbuf.p, self.kbuf.n)
        name = self.dsts.get(key)
        if name is None:
            name = self.dsts[key] = self.dst_name(
                key[:16], (<uint8_t>k[40] << 8) | <uint8_t>k[41], key[18:]
            )
        if ek != NULL:
            memcpy(ek.k, self.kbuf.p, self.kbuf.n)
            ek.n = self.kbuf.n
            self.dst_names[slot] = name
        return name

    cdef object call(self, AggEntry* e):
        cdef const char* k = e.key
        cdef Py_ssize_t p = 8 + 16 + 16 + 2 + 1 + 12
        cdef int32_t rules[3]
        cdef const char* f[7]
        cdef Py_ssize_t fn[7]
        cdef uint32_t ln
        cdef int t
        cdef PyObject* args[N_CALL_ARGS]
        cdef object requests, errors, bytes_in, bytes_out, busy  # Python ints: they go into args[] below
        memcpy(rules, k + 43, 12)
        for t in range(7):  # op, host, tenant, feature, agent, provider, model
            memcpy(&ln, k + p, 4)
            f[t] = k + p + 4
            fn[t] = ln
            p += 4 + ln
        if e.window != self.win:
            self.win = e.window
            self.win_start = e.window
            self.win_end = e.window + self.width
        src = self._src(k + 8)
        dst = self._dst(k, f[1], fn[1])
        protocol = PROTOCOLS[<int>k[42]]
        op = self._text(f[0], fn[0])
        tenant = self._text(f[2], fn[2])
        t = rules[0] if rules[0] >= 0 else len(self.method_of) - 1  # nothing matched: the last entry
        method = self.method_of[t]
        rule = self.rule_of[t]
        requests = e.vals[0]
        errors = e.vals[1]
        bytes_in = e.vals[2]
        bytes_out = e.vals[3]
        busy = e.vals[4]
        args[0] = <PyObject*>self.win_start
        args[1] = <PyObject*>self.win_end
        args[2] = <PyObject*>self.node
        args[3] = <PyObject*>src
        args[4] = <PyObject*>dst
        args[5] = <PyObject*>protocol
        args[6] = <PyObject*>op
        args[7] = <PyObject*>tenant
        args[8] = <PyObject*>method
        args[9] = <PyObject*>rule
        args[10] = <PyObject*>requests
        args[11] = <PyObject*>errors
        args[12] = <PyObject*>bytes_in
        args[13] = <PyObject*>bytes_out
        args[14] = <PyObject*>busy
        call = PyObject_Vectorcall(self.cls, args, 0, CALL_KWNAMES)
        if fn[3]:
            call.feature = self._text(f[3], fn[3])
        if fn[4]:
            call.agent = self._text(f[4], fn[4])
        if fn[5] or fn[6] or e.vals[5] or e.vals[6] or e.vals[7] or e.vals[8]:
            call.tokens_in = e.vals[5]
            call.tokens_out = e.vals[6]
            call.tokens_cached = e.vals[7]
            call.tokens_reasoning = e.vals[8]
            call.provider = self._text(f[5], fn[5])
            call.model = self._text(f[6], fn[6])
        return call


# ---- module-level helpers -------------------------------------------------------------------------------------------

cdef const char* NIL_UUID = b"00000000-0000-0000-0000-000000000000"


cdef inline bint _id_end(char c) noexcept nogil:
    return c == 47 or c == 59 or c == 35 or c == 32  # / ; # and space (the only \\s in printable ASCII)


cdef inline bint _hex(char c) noexcept nogil:
    return 48 <= c <= 57 or 97 <= c <= 102 or 65 <= c <= 70


cdef inline bint _uuid_at(const char* p) noexcept nogil:
    """``p[:36]`` is 8-4-4-4-12 hex digits (the caller checked there are 36 bytes)."""
    cdef int i
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            if p[i] != 45:
                return False
        elif not _hex(p[i]):
            return False
    return True


cdef Py_ssize_t _collapse(char* p, Py_ssize_t n) noexcept nogil:
    """Twin of ``http.collapse_http_op`` (the redactor's ``shapes.cache_key`` for HTTP), in place; returns the new
    length. Every write lands at or before the byte being read, so one buffer suffices."""
    cdef Py_ssize_t i, j, w, pe
    cdef const char* q
    cdef char c
    cdef bint foldable = False
    for i in range(n):
        if <uint8_t>p[i] < 32 or <uint8_t>p[i] > 126:
            return n
        if <uint8_t>(p[i] - 48) < 10 or p[i] == 63 or p[i] == 45:
            foldable = True
    if not foldable:  # no digit, "?" or "-": no number, UUID (even one of letters only) or query in it
        return n
    q = <const char*>memchr(p, 63, n)
    pe = (q - p) if q != NULL else n
    i = 0
    w = 0
    while i < pe:
        c = p[i]
        p[w] = c
        w += 1
        i += 1
        if c != 47:
            continue
        j = i
        while j < pe and 48 <= p[j] <= 57:
            j += 1
        if j > i and (j == pe or _id_end(p[j])):
            if j - i == 36:
                memcpy(p + w, NIL_UUID, 36)
                w += 36
            else:
                p[w] = 48
                w += 1
            i = j
        elif pe - i >= 36 and _uuid_at(p + i) and (i + 36 == pe or _id_end(p[i + 36])):
            memcpy(p + w, NIL_UUID, 36)
            w += 36
            i += 36
    if q == NULL:
        return w
    p[w] = 63
    w += 1
    i = pe + 1
    while i < n:
        c = p[i]
        if c == 61:
            i += 1
            while i < n and not (p[i] == 38 or p[i] == 59 or p[i] == 35 or p[i] == 32):
                i += 1
            continue
        p[w] = c
        w += 1
        i += 1
    return w


def collapse_http_op(bytes op):
    """``_collapse`` for tests (the engine calls it in C)."""
    cdef bytearray b = bytearray(op)
    cdef Py_ssize_t n = _collapse(PyByteArray_AS_STRING(b), len(b))
    return bytes(b[:n])


cdef void _free_blocks(Block* b) noexcept:
    cdef Block* nxt
    while b != NULL:
        nxt = b.next
        free(b)
        b = nxt


cdef inline char* _kput(char* k, const char* p, Py_ssize_t n) noexcept nogil:
    """One length-prefixed field of an aggregate key; the caller reserved room for it."""
    cdef uint32_t ln = <uint32_t>n
    memcpy(k, &ln, 4)
    if n > 0:
        memcpy(k + 4, p, n)
    return k + 4 + n


cdef inline Py_ssize_t _crlf(const char* p, Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """Offset of the first ``\\r\\n`` in ``p[s:n]``, or -1."""
    while s + 1 < n:
        s = find_byte(p, s, n - 1, 13)
        if s < 0:
            return -1
        if p[s + 1] == 10:
            return s
        s += 1
    return -1


def _ooo_first(ooo, nxt):
    """The waiting segment nearest after ``nxt`` (sequence numbers wrap at 2**32), as the twin picks it."""

    def rel(s):
        x = (s - nxt) & 0xFFFFFFFF
        return x - (1 << 32) if x & 0x80000000 else x

    return min(ooo, key=rel)


cdef inline Py_ssize_t _pg_cap(int mtype, bint client, int state) noexcept nogil:
    if state == G_UNTYPED:
        return PG_MAX_STARTUP
    if not client:
        return 0
    if mtype == 0x51:
        return MAX_OP
    if mtype == 0x50:
        return MAX_OP + 256
    if mtype == 0x42:
        return 256
    return 0


cdef int feed_raw(object engine, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1:
    """``Engine.feed_frame`` without the bytes object: the frame is parsed (and what is kept, copied) before the caller
    hands the memory back, so a pointer into the live ring is safe."""
    return (<Engine>engine)._frame(ts, linktype, f, n)
