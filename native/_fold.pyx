"""Compiled fold of call batches, twin of ``_fold_py.py``: msgpack ``CallBatch`` payloads in, staging rows out, with no
Python object per record.

Reads: encoded ``CallBatch`` payloads as the redactor publishes them (msgpack maps, ``costmesh.common.schemas``).
Emits: per payload its identity (batch id, node, seq, record count, whether any record carries tokens), and on
``rows()`` the ``staging_agg`` rows of every payload added: per minute (``window_start_us / 60_000_000``, truncated as
PostgreSQL divides bigints), tenant, method, feature, agent, source, destination, protocol and operation (kept for
queue protocols only, where it names the topic), the sums of the nine counters and the first and last window start.

Why: decoding ~500 records per batch into ``ObservedCall`` objects and folding them in a dict cost the attributor
~3 CPU-s per million records, more than PostgreSQL spends writing them. Here the records are read in place (key
strings are slices of the payload; a new key's bytes are copied once into the folder's arena) and summed in a C
hash table; the parse and the fold run
without the GIL, so a thread can fold one group while the event loop talks to NATS and PostgreSQL.

Correctness first: ``add`` answers only when the result is certain to equal msgspec's decode of the same payload
(``Codec.decode_batch``). On anything unusual -- a field it does not know (a newer contract), a duplicate field, a
``flows`` list, a value of another msgpack type, an integer beyond int64, invalid UTF-8 or a NUL in a string, a
protocol or method outside the contract's Literal, trailing bytes -- it returns ``None`` and adds nothing; the caller then decodes the payload with
msgspec (which raises the precise error, or succeeds and the records are added with ``add_records``). Sums are kept in
128 bits, so they equal Python's unbounded sums for any group that fits in memory.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cdef extern from *:
    """
    typedef __int128 cm_i128;
    static inline uint64_t cm_lo(cm_i128 v) { return (uint64_t)v; }
    static inline int64_t cm_hi(cm_i128 v) { return (int64_t)(v >> 64); }
    static inline int cm_fits64(cm_i128 v) { return v >= (cm_i128)INT64_MIN && v <= (cm_i128)INT64_MAX; }
    """
    ctypedef long long i128 "cm_i128"
    uint64_t cm_lo(i128 v) nogil
    int64_t cm_hi(i128 v) nogil
    int cm_fits64(i128 v) nogil

DEF NKEY = 8  # tenant, tenant_method, feature, agent, src_workload, dst, protocol, operation
DEF NCOUNT = 9  # schemas.COUNTERS
DEF ARENA_CHUNK = 65536

# ObservedCall fields, in contract order (msgspec encodes them in this order, so the next expected name is tried first).
DEF NFIELD = 24
DEF F_V = 0
DEF F_WSTART = 1
DEF F_WEND = 2
DEF F_NODE = 3
DEF F_SRC = 4
DEF F_DST = 5
DEF F_PROTO = 6
DEF F_OP = 7
DEF F_TENANT = 8
DEF F_METHOD = 9
DEF F_RULE = 10
DEF F_FEATURE = 11
DEF F_AGENT = 12
DEF F_COUNT0 = 13  # requests .. tokens_reasoning: 13..21
DEF F_PROVIDER = 22
DEF F_MODEL = 23

cdef const char* FIELD[NFIELD]
FIELD[:] = [
    b"v", b"window_start_us", b"window_end_us", b"node", b"src_workload", b"dst", b"protocol", b"operation",
    b"tenant", b"tenant_method", b"tenant_rule", b"feature", b"agent", b"requests", b"errors", b"bytes_in",
    b"bytes_out", b"busy_us", b"tokens_in", b"tokens_out", b"tokens_cached", b"tokens_reasoning", b"provider",
    b"model",
]
cdef Py_ssize_t FIELD_LEN[NFIELD]
# Where a string field goes in the key (-1: validated, not kept).
cdef int KEY_OF[NFIELD]
cdef int _i
for _i in range(NFIELD):
    FIELD_LEN[_i] = len(<bytes>FIELD[_i])
    KEY_OF[_i] = -1
KEY_OF[F_TENANT] = 0
KEY_OF[F_METHOD] = 1
KEY_OF[F_FEATURE] = 2
KEY_OF[F_AGENT] = 3
KEY_OF[F_SRC] = 4
KEY_OF[F_DST] = 5
KEY_OF[F_PROTO] = 6
KEY_OF[F_OP] = 7

# The contract's Literals (schemas.Protocol, schemas.TenantMethod).
DEF NPROTO = 11
cdef const char* PROTOCOLS[NPROTO]
PROTOCOLS[:] = [b"http", b"postgres", b"tls", b"dns", b"kafka", b"redis", b"mongodb", b"amqp", b"nats", b"tcp", b"udp"]
DEF NMETHOD = 14
cdef const char* METHODS[NMETHOD]
METHODS[:] = [
    b"header", b"baggage", b"jwt", b"query", b"path", b"body", b"db", b"sni", b"host", b"label", b"trace",
    b"propagated", b"platform", b"unallocated",
]
cdef Py_ssize_t PROTOCOL_LEN[NPROTO]
for _i in range(NPROTO):
    PROTOCOL_LEN[_i] = len(<bytes>PROTOCOLS[_i])
cdef Py_ssize_t METHOD_LEN[NMETHOD]
for _i in range(NMETHOD):
    METHOD_LEN[_i] = len(<bytes>METHODS[_i])
# 1 + index in PROTOCOLS of the queue protocols (apply.QUEUE_PROTOCOLS)
DEF QUEUE_KAFKA = 5
DEF QUEUE_AMQP = 8
DEF QUEUE_NATS = 9
QUEUE_PROTOCOLS = ("kafka", "amqp", "nats")
INT_FIELDS = ("window_start_us", "window_end_us", "requests", "errors", "bytes_in", "bytes_out", "busy_us", "tokens_in",
              "tokens_out", "tokens_cached", "tokens_reasoning")
COUNTER_NAMES = (
    "requests", "errors", "bytes_in", "bytes_out", "busy_us", "tokens_in", "tokens_out", "tokens_cached",
    "tokens_reasoning",
)
cdef const char* UNALLOCATED = b"unallocated"
cdef const char* EMPTY = b""

# CallBatch fields.
DEF NBATCH = 7
DEF B_TYPE = 0
DEF B_V = 1
DEF B_ID = 2
DEF B_NODE = 3
DEF B_SEQ = 4
DEF B_RECORDS = 5
DEF B_FLOWS = 6
cdef const char* BFIELD[NBATCH]
BFIELD[:] = [b"type", b"v", b"batch_id", b"node", b"seq", b"records", b"flows"]


cdef struct Slice:
    const char* p
    Py_ssize_t n


cdef struct Rec:
    int64_t window
    int64_t minute
    Slice key[NKEY]
    int64_t count[NCOUNT]


cdef struct Entry:
    uint64_t hash
    int64_t minute
    int64_t first
    int64_t last
    Slice key[NKEY]
    i128 sums[NCOUNT]


cdef struct Slot:
    uint64_t hash  # the entry's hash, here so that a probe touches an entry only when the hashes match
    int64_t at  # the entry's index, -1: empty


cdef struct Cursor:
    const uint8_t* p
    const uint8_t* end


cdef struct Head:
    Slice batch_id
    Slice node
    int64_t seq
    Py_ssize_t n_records
    int has_tokens


# ---- msgpack reading: each returns 0 on success, -1 when the value is not what the fast path accepts ----

cdef inline int need(Cursor* c, Py_ssize_t n) noexcept nogil:
    return 0 if c.end - c.p >= n else -1


cdef inline uint64_t be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef int read_str(Cursor* c, Slice* out) noexcept nogil:
    cdef uint8_t t
    cdef Py_ssize_t n
    if need(c, 1):
        return -1
    t = c.p[0]
    if 0xa0 <= t <= 0xbf:
        n = t & 0x1f
        c.p += 1
    elif t == 0xd9:
        if need(c, 2):
            return -1
        n = c.p[1]
        c.p += 2
    elif t == 0xda:
        if need(c, 3):
            return -1
        n = <Py_ssize_t>be(c.p + 1, 2)
        c.p += 3
    elif t == 0xdb:
        if need(c, 5):
            return -1
        n = <Py_ssize_t>be(c.p + 1, 4)
        c.p += 5
    else:
        return -1
    if need(c, n):
        return -1
    out.p = <const char*>c.p
    out.n = n
    c.p += n
    return 0


cdef int read_int(Cursor* c, int64_t* out) noexcept nogil:
    cdef uint8_t t
    cdef uint64_t u
    if need(c, 1):
        return -1
    t = c.p[0]
    if t <= 0x7f:
        out[0] = t
        c.p += 1
        return 0
    if t >= 0xe0:
        out[0] = <int64_t>(<signed char>t)
        c.p += 1
        return 0
    if t == 0xcc or t == 0xd0:
        if need(c, 2):
            return -1
        out[0] = c.p[1] if t == 0xcc else <int64_t>(<signed char>c.p[1])
        c.p += 2
        return 0
    if t == 0xcd or t == 0xd1:
        if need(c, 3):
            return -1
        u = be(c.p + 1, 2)
        out[0] = <int64_t>u if t == 0xcd else <int64_t>(<short>u)
        c.p += 3
        return 0
    if t == 0xce or t == 0xd2:
        if need(c, 5):
            return -1
        u = be(c.p + 1, 4)
        out[0] = <int64_t>u if t == 0xce else <int64_t>(<int>u)
        c.p += 5
        return 0
    if t == 0xcf or t == 0xd3:
        if need(c, 9):
            return -1
        u = be(c.p + 1, 8)
        if t == 0xcf and u > <uint64_t>0x7fffffffffffffff:
            return -1  # beyond int64: msgspec takes it, the slow path sums it exactly
        out[0] = <int64_t>u
        c.p += 9
        return 0
    return -1


cdef int read_len(Cursor* c, uint8_t fix_lo, uint8_t fix_hi, uint8_t t16, uint8_t t32, Py_ssize_t* out) noexcept nogil:
    """A map or array header: its number of entries."""
    cdef uint8_t t
    if need(c, 1):
        return -1
    t = c.p[0]
    if fix_lo <= t <= fix_hi:
        out[0] = t & 0x0f
        c.p += 1
    elif t == t16:
        if need(c, 3):
            return -1
        out[0] = <Py_ssize_t>be(c.p + 1, 2)
        c.p += 3
    elif t == t32:
        if need(c, 5):
            return -1
        out[0] = <Py_ssize_t>be(c.p + 1, 4)
        c.p += 5
    else:
        return -1
    return 0


cdef inline int read_map(Cursor* c, Py_ssize_t* out) noexcept nogil:
    return read_len(c, 0x80, 0x8f, 0xde, 0xdf, out)


cdef inline int read_array(Cursor* c, Py_ssize_t* out) noexcept nogil:
    return read_len(c, 0x90, 0x9f, 0xdc, 0xdd, out)


cdef int valid_utf8(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """1 when ``s`` is strict UTF-8 as CPython decodes it (no overlongs, no surrogates, nothing past U+10FFFF) and
    holds no NUL, which PostgreSQL text cannot store (msgspec takes it; ``fold_group`` then refuses the batch)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t b, b1
    cdef uint64_t w
    while i < n:
        if i + 8 <= n:
            memcpy(&w, s + i, 8)
            # all ASCII, and no zero byte (the classic "has a zero byte" test)
            if (w & <uint64_t>0x8080808080808080) == 0 and (
                ((w - <uint64_t>0x0101010101010101) & ~w & <uint64_t>0x8080808080808080) == 0
            ):
                i += 8
                continue
        b = s[i]
        if b == 0:
            return 0
        if b < 0x80:
            i += 1
        elif 0xc2 <= b <= 0xdf:
            if i + 1 >= n or (s[i + 1] & 0xc0) != 0x80:
                return 0
            i += 2
        elif 0xe0 <= b <= 0xef:
            if i + 2 >= n:
                return 0
            b1 = s[i + 1]
            if (b1 & 0xc0) != 0x80 or (s[i + 2] & 0xc0) != 0x80:
                return 0
            if (b == 0xe0 and b1 < 0xa0) or (b == 0xed and b1 > 0x9f):
                return 0
            i += 3
        elif 0xf0 <= b <= 0xf4:
            if i + 3 >= n:
                return 0
            b1 = s[i + 1]
            if (b1 & 0xc0) != 0x80 or (s[i + 2] & 0xc0) != 0x80 or (s[i + 3] & 0xc0) != 0x80:
                return 0
            if (b == 0xf0 and b1 < 0x90) or (b == 0xf4 and b1 > 0x8f):
                return 0
            i += 4
        else:
            return 0
    return 1


cdef inline int eq(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    """``memcmp(a, b, n) == 0`` for the short strings compared per record, inline (a libc call each cost more)."""
    cdef uint64_t x, y
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&x, a + i, 8)
        memcpy(&y, b + i, 8)
        if x != y:
            return 0
        i += 8
    while i < n:
        if a[i] != b[i]:
            return 0
        i += 1
    return 1


cdef inline int is_name(Slice s, const char* name, Py_ssize_t n) noexcept nogil:
    return s.n == n and eq(s.p, name, n)


cdef int one_of(Slice s, const char** names, const Py_ssize_t* lens, int count) noexcept nogil:
    """1 + the index of ``s`` in ``names``, or 0."""
    cdef int i
    for i in range(count):
        if is_name(s, names[i], lens[i]):
            return i + 1
    return 0


cdef int parse_record(Cursor* c, Rec* r, int* has_tokens) noexcept nogil:
    """One ``ObservedCall`` map into ``r``; -1 on anything the fast path does not take."""
    cdef Py_ssize_t n, i
    cdef Slice name, s
    cdef uint32_t seen = 0
    cdef int f, hint = 0, k, proto = 0
    cdef int64_t v
    if read_map(c, &n):
        return -1
    r.window = 0
    for k in range(NKEY):
        r.key[k].p = EMPTY
        r.key[k].n = 0
    r.key[1].p = UNALLOCATED
    r.key[1].n = 11
    for k in range(NCOUNT):
        r.count[k] = 0
    for i in range(n):
        if read_str(c, &name):
            return -1
        f = -1
        if hint < NFIELD and is_name(name, FIELD[hint], FIELD_LEN[hint]):
            f = hint
        else:
            for k in range(NFIELD):
                if is_name(name, FIELD[k], FIELD_LEN[k]):
                    f = k
                    break
        if f < 0 or (seen >> f) & 1:
            return -1  # unknown (newer contract) or repeated field: msgspec decides
        seen |= (<uint32_t>1) << f
        hint = f + 1
        if f <= F_WEND or F_COUNT0 <= f < F_PROVIDER:
            if read_int(c, &v):
                return -1
            if f == F_WSTART:
                r.window = v
            elif f >= F_COUNT0:
                r.count[f - F_COUNT0] = v
        else:
            if read_str(c, &s):
                return -1
            if not valid_utf8(<const uint8_t*>s.p, s.n):
                return -1
            if f == F_PROTO:
                proto = one_of(s, PROTOCOLS, PROTOCOL_LEN, NPROTO)
                if not proto:
                    return -1
            if f == F_METHOD and not one_of(s, METHODS, METHOD_LEN, NMETHOD):
                return -1
            if KEY_OF[f] >= 0:
                r.key[KEY_OF[f]] = s
    # required: window_start_us, window_end_us, node, src_workload, dst, protocol
    if (seen & 0x7e) != 0x7e:
        return -1
    r.minute = r.window / 60000000  # C truncates toward zero, as PostgreSQL's bigint division does
    if not (proto == QUEUE_KAFKA or proto == QUEUE_AMQP or proto == QUEUE_NATS):
        r.key[7].p = EMPTY  # the operation is kept for queue calls only (the topic); elsewhere it is not a key
        r.key[7].n = 0
    for k in range(5, NCOUNT):
        if r.count[k]:
            has_tokens[0] = 1
    return 0


cdef inline uint64_t mix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= <uint64_t>0xff51afd7ed558ccd
    h ^= h >> 33
    h *= <uint64_t>0xc4ceb9fe1a85ec53
    h ^= h >> 33
    return h


cdef uint64_t hash_rec(Rec* r) noexcept nogil:
    cdef uint64_t h = mix(<uint64_t>r.minute ^ <uint64_t>0x9e3779b97f4a7c15)
    cdef uint64_t w
    cdef Py_ssize_t i, n
    cdef const char* p
    cdef int k
    for k in range(NKEY):
        p = r.key[k].p
        n = r.key[k].n
        h = (h ^ <uint64_t>n) * <uint64_t>0x100000001b3
        i = 0
        while i + 8 <= n:
            memcpy(&w, p + i, 8)
            h = ((h << 5) | (h >> 59)) ^ w
            h *= <uint64_t>0x9e3779b97f4a7c15
            i += 8
        if i < n:
            w = 0
            memcpy(&w, p + i, n - i)
            h = ((h << 5) | (h >> 59)) ^ w
            h *= <uint64_t>0x9e3779b97f4a7c15
    return mix(h)


cdef inline int same_key(Entry* e, Rec* r) noexcept nogil:
    cdef int k
    if e.minute != r.minute:
        return 0
    for k in range(NKEY):
        if e.key[k].n != r.key[k].n or not eq(e.key[k].p, r.key[k].p, r.key[k].n):
            return 0
    return 1


cdef int parse_batch(Cursor* c, Head* h, Rec** recs, Py_ssize_t* cap) noexcept nogil:
    """A whole ``CallBatch``: header into ``h``, records into ``recs`` (grown as needed); -1: not for the fast path."""
    cdef Py_ssize_t n, i, j, nrec = -1
    cdef Slice name, s
    cdef uint32_t seen = 0
    cdef int f, k
    cdef int64_t v
    cdef Rec* grown
    h.has_tokens = 0
    h.n_records = 0
    if read_map(c, &n):
        return -1
    for i in range(n):
        if read_str(c, &name):
            return -1
        f = -1
        for k in range(NBATCH):
            if is_name(name, BFIELD[k], len_of(BFIELD[k])):
                f = k
                break
        if f < 0 or f == B_FLOWS or (seen >> f) & 1:
            return -1
        seen |= (<uint32_t>1) << f
        if f == B_V or f == B_SEQ:
            if read_int(c, &v):
                return -1
            if f == B_V and v != 1:
                return -1
            if f == B_SEQ:
                h.seq = v
        elif f == B_RECORDS:
            if read_array(c, &nrec):
                return -1
            if nrec > cap[0]:
                grown = <Rec*>realloc(recs[0], nrec * sizeof(Rec))
                if grown == NULL:
                    return -1
                recs[0] = grown
                cap[0] = nrec
            for j in range(nrec):
                if parse_record(c, &recs[0][j], &h.has_tokens):
                    return -1
            h.n_records = nrec
        else:
            if read_str(c, &s) or not valid_utf8(<const uint8_t*>s.p, s.n):
                return -1
            if f == B_TYPE and not is_name(s, b"call_batch", 10):
                return -1
            if f == B_ID:
                h.batch_id = s
            elif f == B_NODE:
                h.node = s
    if c.p != c.end:
        return -1  # trailing bytes: msgspec refuses them
    if (seen & 0x1c) != 0x1c:  # batch_id, node, seq
        return -1
    return 0


cdef inline Py_ssize_t len_of(const char* s) noexcept nogil:
    cdef Py_ssize_t n = 0
    while s[n] != 0:
        n += 1
    return n


cdef inline char* put_be(char* p, uint64_t v, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        p[i] = <char>((v >> (8 * (n - 1 - i))) & 0xff)
    return p + n


cdef inline char* put_int8(char* p, int64_t v) noexcept nogil:
    """A bigint field of binary COPY: length 8, then the value big-endian."""
    p = put_be(p, 8, 4)
    return put_be(p, <uint64_t>v, 8)


# Binary COPY: signature, flags, header extension length.
cdef const char* COPY_HEADER = b"PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00"
DEF COPY_HEADER_LEN = 19
DEF NCOLUMN = 1 + NKEY + NCOUNT + 2  # apply.AGG_COLUMNS


cdef object to_int(i128 v):
    if cm_fits64(v):
        return <int64_t>v
    return (<object>cm_hi(v) << 64) + <object>cm_lo(v)


cdef class Folder:
    """Accumulates staging rows over the payloads (and decoded records) of one group; one thread at a time."""

    cdef Entry* entries
    cdef Py_ssize_t n_entries, cap_entries
    cdef Slot* slots
    cdef Py_ssize_t n_slots
    cdef Rec* recs
    cdef Py_ssize_t cap_recs
    # Key bytes of the entries, copied: compact (probes compare against it, not against payloads spread over many
    # megabytes) and independent of the payloads. Chunks never move, so entries point into them.
    cdef char** chunks
    cdef Py_ssize_t n_chunks, cap_chunks
    cdef char* arena_p
    cdef Py_ssize_t arena_left
    cdef readonly Py_ssize_t records

    def __cinit__(self):
        self.n_slots = 1024
        self.slots = <Slot*>malloc(self.n_slots * sizeof(Slot))
        self.cap_entries = 512
        self.entries = <Entry*>malloc(self.cap_entries * sizeof(Entry))
        if self.slots == NULL or self.entries == NULL:
            raise MemoryError()
        for i in range(self.n_slots):
            self.slots[i].at = -1

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n_chunks):
            free(self.chunks[i])
        free(self.chunks)
        free(self.entries)
        free(self.slots)
        free(self.recs)

    cdef char* arena(self, Py_ssize_t n) except NULL nogil:
        cdef Py_ssize_t size
        cdef char* chunk
        cdef char** grown
        if n > self.arena_left:
            size = n if n > ARENA_CHUNK else ARENA_CHUNK
            if self.n_chunks == self.cap_chunks:
                self.cap_chunks = self.cap_chunks * 2 if self.cap_chunks else 16
                grown = <char**>realloc(self.chunks, self.cap_chunks * sizeof(char*))
                if grown == NULL:
                    with gil:
                        raise MemoryError()
                self.chunks = grown
            chunk = <char*>malloc(size)
            if chunk == NULL:
                with gil:
                    raise MemoryError()
            self.chunks[self.n_chunks] = chunk
            self.n_chunks += 1
            self.arena_p = chunk
            self.arena_left = size
        chunk = self.arena_p
        self.arena_p += n
        self.arena_left -= n
        return chunk

    def __len__(self) -> int:
        return self.n_entries

    cdef int grow_slots(self) except -1 nogil:
        cdef Py_ssize_t n = self.n_slots * 2, i, j
        cdef Slot* slots = <Slot*>malloc(n * sizeof(Slot))
        if slots == NULL:
            with gil:
                raise MemoryError()
        for i in range(n):
            slots[i].at = -1
        for i in range(self.n_entries):
            j = <Py_ssize_t>(self.entries[i].hash & <uint64_t>(n - 1))
            while slots[j].at >= 0:
                j = (j + 1) & (n - 1)
            slots[j].hash = self.entries[i].hash
            slots[j].at = i
        free(self.slots)
        self.slots = slots
        self.n_slots = n
        return 0

    cdef int fold(self, Rec* r) except -1 nogil:
        cdef uint64_t h = hash_rec(r)
        cdef Py_ssize_t j = <Py_ssize_t>(h & <uint64_t>(self.n_slots - 1))
        cdef Slot* slot
        cdef Entry* e
        cdef Entry* grown
        cdef int k
        cdef Py_ssize_t n
        cdef char* p
        while True:
            slot = &self.slots[j]
            if slot.at < 0:
                break
            e = &self.entries[slot.at]
            if slot.hash == h and same_key(e, r):
                for k in range(NCOUNT):
                    e.sums[k] += r.count[k]
                if r.window < e.first:
                    e.first = r.window
                if r.window > e.last:
                    e.last = r.window
                return 0
            j = (j + 1) & (self.n_slots - 1)
        if self.n_entries == self.cap_entries:
            grown = <Entry*>realloc(self.entries, self.cap_entries * 2 * sizeof(Entry))
            if grown == NULL:
                with gil:
                    raise MemoryError()
            self.entries = grown
            self.cap_entries *= 2
        n = 0
        for k in range(NKEY):
            n += r.key[k].n
        p = self.arena(n if n else 1)
        e = &self.entries[self.n_entries]
        for k in range(NKEY):
            memcpy(p, r.key[k].p, r.key[k].n)
            e.key[k].p = p
            e.key[k].n = r.key[k].n
            p += r.key[k].n
        e.hash = h
        e.minute = r.minute
        e.first = r.window
        e.last = r.window
        for k in range(NCOUNT):
            e.sums[k] = r.count[k]
        self.slots[j].hash = h
        self.slots[j].at = self.n_entries
        self.n_entries += 1
        if self.n_entries * 2 > self.n_slots:
            self.grow_slots()
        return 0

    def add(self, bytes payload):
        """Fold one encoded ``CallBatch``: ``(batch_id, node, seq, n_records, has_tokens)``, or ``None`` (nothing
        added) when the payload is not one the fast path takes."""
        cdef Cursor c
        cdef Head h
        cdef int rc
        cdef Py_ssize_t i
        c.p = <const uint8_t*>PyBytes_AS_STRING(payload)
        c.end = c.p + PyBytes_GET_SIZE(payload)
        with nogil:
            rc = parse_batch(&c, &h, &self.recs, &self.cap_recs)
            if rc == 0:
                for i in range(h.n_records):
                    self.fold(&self.recs[i])
        if rc:
            return None
        self.records += h.n_records
        return (
            PyUnicode_DecodeUTF8(h.batch_id.p, h.batch_id.n, NULL),
            PyUnicode_DecodeUTF8(h.node.p, h.node.n, NULL),
            h.seq,
            h.n_records,
            bool(h.has_tokens),
        )

    def add_many(self, list payloads):
        """``add`` for each payload, in order."""
        return [self.add(p) for p in payloads]

    def add_records(self, records):
        """Fold decoded ``ObservedCall``s (the slow path's records) into the same rows. Raises ``OverflowError``, having
        added nothing, when an integer does not fit 64 bits (msgspec takes up to 2**64 - 1; a bigint cannot)."""
        cdef Rec r
        cdef int k
        cdef bytes b
        records = list(records)
        for rec in records:
            for name in INT_FIELDS:
                if not -0x8000000000000000 <= getattr(rec, name) <= 0x7fffffffffffffff:
                    raise OverflowError(f"{name} does not fit 64 bits: {getattr(rec, name)}")
        for rec in records:
            r.window = rec.window_start_us
            r.minute = r.window / 60000000
            fields = (
                rec.tenant, rec.tenant_method, rec.feature, rec.agent, rec.src_workload, rec.dst, rec.protocol,
                rec.operation if rec.protocol in QUEUE_PROTOCOLS else "",
            )
            alive = []  # the slices point into these until fold() copies them
            for k in range(NKEY):
                b = (<str>fields[k]).encode()
                alive.append(b)
                r.key[k].p = PyBytes_AS_STRING(b)
                r.key[k].n = PyBytes_GET_SIZE(b)
            counts = (
                rec.requests, rec.errors, rec.bytes_in, rec.bytes_out, rec.busy_us, rec.tokens_in, rec.tokens_out,
                rec.tokens_cached, rec.tokens_reasoning,
            )
            for k in range(NCOUNT):
                r.count[k] = counts[k]
            self.fold(&r)
            self.records += 1

    def copy_data(self) -> bytes:
        """The rows as PostgreSQL binary COPY data for ``apply.AGG_COLUMNS`` (``b""`` when there are none), written
        in one pass. Raises ``OverflowError`` when a sum does not fit a bigint (as asyncpg would for a tuple)."""
        cdef Py_ssize_t i, size = COPY_HEADER_LEN + 2
        cdef int k
        cdef Entry* e
        cdef char* out
        cdef char* p
        if self.n_entries == 0:
            return b""
        for i in range(self.n_entries):
            e = &self.entries[i]
            size += 2 + (1 + NCOUNT + 2) * 12 + NKEY * 4
            for k in range(NKEY):
                size += e.key[k].n
            for k in range(NCOUNT):
                if not cm_fits64(e.sums[k]):
                    raise OverflowError(f"a sum of {COUNTER_NAMES[k]} does not fit a bigint: {to_int(e.sums[k])}")
        data = PyBytes_FromStringAndSize(NULL, size)
        out = PyBytes_AS_STRING(data)
        with nogil:
            memcpy(out, COPY_HEADER, COPY_HEADER_LEN)
            p = out + COPY_HEADER_LEN
            for i in range(self.n_entries):
                e = &self.entries[i]
                p = put_be(p, NCOLUMN, 2)
                p = put_int8(p, e.minute)
                for k in range(NKEY):
                    p = put_be(p, <uint64_t>e.key[k].n, 4)
                    memcpy(p, e.key[k].p, e.key[k].n)
                    p += e.key[k].n
                for k in range(NCOUNT):
                    p = put_int8(p, <int64_t>e.sums[k])
                p = put_int8(p, e.first)
                p = put_int8(p, e.last)
            p = put_be(p, 0xffff, 2)  # the trailer: a field count of -1
        return data

    def rows(self) -> list:
        """The ``staging_agg`` tuples, one per (minute, key), in order of first appearance."""
        cdef Py_ssize_t i
        cdef int k
        cdef Entry* e
        out = []
        for i in range(self.n_entries):
            e = &self.entries[i]
            row = [e.minute]
            for k in range(NKEY):
                row.append(PyUnicode_DecodeUTF8(e.key[k].p, e.key[k].n, NULL))
            for k in range(NCOUNT):
                row.append(to_int(e.sums[k]))
            row.append(e.first)
            row.append(e.last)
            out.append(tuple(row))
        return out
