# Aggregation and records of the compiled engine (included by _engine.pyx; twin: _records_py.py).
#
# Every call a parser completes goes to ``agg``/``agg_raw``: summed per window and key (source, destination, port,
# protocol, operation, host, tenant/feature/agent with their rules, provider, model) in an open-addressing table keyed
# by a packed byte key, entries bump-allocated in blocks released per drain. ``agg_take`` hands the closed windows on
# as row tuples, or as ``ObservedCall`` records made in C by ``_Calls`` (the builder gives the per-record constants
# and names the endpoints). The table and the records are one file because ``_Calls`` reads the packed keys
# ``agg_raw`` writes: their layout is stated once, here.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from costmesh.native._bytes cimport Buf, buf_add, buf_free, buf_reserve, hash_bytes

cdef extern from "Python.h":
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, object kwnames)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

import gc

DEF BLOCK_BYTES = 262144
DEF MAX_SPARE_BLOCKS = 64
DEF N_CALL_ARGS = 15
DEF TEXT_SLOTS = 1024
DEF EP_SLOTS = 256
DEF EP_KEY = 160

cdef class _Calls  # below: makes ObservedCall records during a drain


# ---- the aggregate table ----------------------------------------------------------------------------------------------

cdef char* agg_alloc(Engine eng, Py_ssize_t n) except NULL:
    """``n`` bytes (8-aligned) in the current block of aggregate entries."""
    cdef Block* b = eng.blocks
    cdef size_t need = (<size_t>n + 7) & ~(<size_t>7)
    cdef size_t cap
    cdef char* p
    if b == NULL or b.used + need > b.cap:
        if eng.spare != NULL and eng.spare.cap >= need:
            b = eng.spare
            eng.spare = b.next
            eng.nspare -= 1
        else:
            cap = BLOCK_BYTES if need <= BLOCK_BYTES else need
            b = <Block*>malloc(sizeof(Block) + cap)
            if b == NULL:
                raise MemoryError()
            b.cap = cap
        b.used = 0
        b.next = eng.blocks
        eng.blocks = b
    p = <char*>(b + 1) + b.used
    b.used += need
    return p


cdef void agg_release_blocks(Engine eng, Block* b) noexcept:
    cdef Block* nxt
    while b != NULL:
        nxt = b.next
        if eng.nspare < MAX_SPARE_BLOCKS:
            b.next = eng.spare
            eng.spare = b
            eng.nspare += 1
        else:
            free(b)
        b = nxt


cdef object row_interned(list cache, const char* p, Py_ssize_t n):
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


cdef inline object row_field(const char* k, Py_ssize_t* p, list cache, bint intern):
    cdef uint32_t ln
    memcpy(&ln, k + p[0], 4)
    p[0] += 4 + ln
    if intern:
        return row_interned(cache, k + p[0] - ln, ln)
    return PyBytes_FromStringAndSize(k + p[0] - ln, ln)


cdef tuple agg_row(AggEntry* e, list cache):
    cdef const char* k = e.key
    cdef Py_ssize_t p = 8 + 16 + 16 + 2 + 1 + 12
    cdef int32_t rules[3]
    memcpy(rules, k + 43, 12)
    op = row_field(k, &p, cache, False)  # the operation: mostly distinct, not worth caching
    host = row_field(k, &p, cache, True)
    tv = row_field(k, &p, cache, True)
    fv = row_field(k, &p, cache, True)
    av = row_field(k, &p, cache, True)
    provider = row_field(k, &p, cache, True)
    model = row_field(k, &p, cache, True)
    return (
        e.window,
        row_interned(cache, k + 8, 16),
        row_interned(cache, k + 24, 16),
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


cdef int agg_insert(Engine eng, AggEntry* e) except -1:
    cdef uint64_t mask, i
    if (eng.agg_n + 1) * 2 > eng.agg_cap:
        agg_grow(eng)
    mask = eng.agg_cap - 1
    i = e.h & mask
    while eng.agg[i].e != NULL:
        i = (i + 1) & mask
    eng.agg[i].e = e
    eng.agg[i].h = e.h
    eng.agg_n += 1
    return 0


cdef int agg_grow(Engine eng) except -1:
    cdef AggSlot* old = eng.agg
    cdef uint64_t old_cap = eng.agg_cap
    cdef uint64_t i, j, mask
    cdef AggSlot* grown = <AggSlot*>calloc(old_cap * 2, sizeof(AggSlot))
    if grown == NULL:
        raise MemoryError()
    eng.agg = grown
    eng.agg_cap = old_cap * 2
    mask = eng.agg_cap - 1
    for i in range(old_cap):
        if old[i].e != NULL:
            j = old[i].h & mask
            while eng.agg[j].e != NULL:
                j = (j + 1) & mask
            eng.agg[j] = old[i]
    free(old)
    return 0


cdef int agg(Engine eng, int64_t ts, Flow* fl, int proto, const char* op, Py_ssize_t opn, const char* host,
             Py_ssize_t hostn, Buf* ids, int* rules, const char* prov, Py_ssize_t provn, const char* model,
             Py_ssize_t modeln, int64_t* vals) except -1:
    cdef int cs = fl.cside
    return agg_raw(eng, ts, fl.addr[cs], fl.addr[1 - cs], fl.port[1 - cs], proto, op, opn, host, hostn, ids,
                         rules, prov, provn, model, modeln, vals)


cdef int agg_raw(Engine eng, int64_t ts, const uint8_t* src, const uint8_t* dst, uint16_t dport, int proto,
                 const char* op, Py_ssize_t opn, const char* host, Py_ssize_t hostn, Buf* ids, int* rules,
                 const char* prov, Py_ssize_t provn, const char* model, Py_ssize_t modeln,
                 int64_t* vals) except -1:
    cdef int64_t window = ts - ts % eng.window_us
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
    eng.kbuf.n = 0
    if total > eng.kbuf.cap:
        buf_reserve(&eng.kbuf, total)
    k = eng.kbuf.p
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
    eng.kbuf.n = k - eng.kbuf.p
    if COSTMESH_DEBUG and eng.kbuf.n != total:  # the fields were written unchecked into a buffer of ``total`` bytes
        raise AssertionError(f"aggregate key of {eng.kbuf.n} bytes, {total} reserved")
    h = hash_bytes(eng.kbuf.p, eng.kbuf.n)
    mask = eng.agg_cap - 1
    i = h & mask
    while True:
        e = eng.agg[i].e
        if e == NULL:
            break
        if eng.agg[i].h == h and e.klen == eng.kbuf.n and memcmp(e.key, eng.kbuf.p, e.klen) == 0:
            for t in range(9):
                e.vals[t] += vals[t]
            return 0
        i = (i + 1) & mask
    e = <AggEntry*>agg_alloc(eng, sizeof(AggEntry) + eng.kbuf.n)  # the key follows the entry
    e.key = <char*>(e + 1)
    memcpy(e.key, eng.kbuf.p, eng.kbuf.n)
    e.klen = eng.kbuf.n
    e.h = h
    e.window = window
    for t in range(9):
        e.vals[t] = vals[t]
    if eng.agg_n == eng.agg_list_cap:
        grown = <AggEntry**>realloc(eng.agg_list, eng.agg_list_cap * 2 * sizeof(AggEntry*))
        if grown == NULL:  # the entry stays unused in its block until the next drain
            raise MemoryError()
        eng.agg_list = grown
        eng.agg_list_cap *= 2
    eng.agg_list[eng.agg_n] = e
    if (eng.agg_n + 1) * 2 > eng.agg_cap:
        agg_insert(eng, e)  # grows the table, then probes afresh
    else:  # the probe above ended on the free slot the entry takes
        eng.agg[i].e = e
        eng.agg[i].h = h
        eng.agg_n += 1
    return 0


cdef inline char* _kput(char* k, const char* p, Py_ssize_t n) noexcept nogil:
    """One length-prefixed field of an aggregate key; the caller reserved room for it."""
    cdef uint32_t ln = <uint32_t>n
    memcpy(k, &ln, 4)
    if n > 0:
        memcpy(k + 4, p, n)
    return k + 4 + n


cdef list agg_take(Engine eng, int64_t now_us, bint final, _Calls ctx):
    """The aggregates of the closed windows (all when ``final``) as row tuples, or as ``ObservedCall`` records made by
    ``ctx``; entries of open windows stay."""
    cdef uint64_t i
    cdef AggEntry* e
    cdef list out = []
    cdef uint64_t kept = 0
    cdef uint64_t nd = 0
    cdef uint64_t total = eng.agg_n
    cdef Block* old = eng.blocks
    cdef AggEntry* moved
    cdef Py_ssize_t size
    cdef AggEntry** done = <AggEntry**>malloc((total + 1) * sizeof(AggEntry*))
    if done == NULL:
        raise MemoryError()
    memset(eng.agg, 0, eng.agg_cap * sizeof(AggSlot))
    eng.agg_n = 0
    # First in C: entries of open windows move to fresh blocks, the others are listed; then the records are made
    # from the listed ones, and their blocks are released together.
    eng.blocks = NULL
    for i in range(total):
        e = eng.agg_list[i]
        if final or now_us < 0 or e.window + eng.window_us <= now_us:
            done[nd] = e
            nd += 1
        else:
            size = sizeof(AggEntry) + e.klen
            moved = <AggEntry*>agg_alloc(eng, size)
            memcpy(moved, e, size)
            moved.key = <char*>(moved + 1)
            eng.agg_list[kept] = moved
            kept += 1
            agg_insert(eng, moved)
    cdef list cache = [None] * 1024
    gc_was_on = gc.isenabled()
    gc.disable()  # rows are plain tuples made by the thousand: no cycle collection while making them
    try:
        for i in range(nd):
            out.append(agg_row(done[i], cache) if ctx is None else ctx.call(done[i]))
    finally:
        free(done)
        agg_release_blocks(eng, old)
        if gc_was_on:
            gc.enable()
    return out


cdef void _free_blocks(Block* b) noexcept:
    cdef Block* nxt
    while b != NULL:
        nxt = b.next
        free(b)
        b = nxt


# ---- records ----------------------------------------------------------------------------------------------------------

# The keywords an ``ObservedCall`` is made with, in one vectorcall; at most 15, for msgspec (0.22) takes a much slower
# path from 16 keywords on. The fields that usually keep their default are set afterwards when they differ.
cdef tuple CALL_KWNAMES = (
    "window_start_us", "window_end_us", "node", "src_workload", "dst", "protocol", "operation", "tenant",
    "tenant_method", "tenant_rule", "requests", "errors", "bytes_in", "bytes_out", "busy_us",
)


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
