# C surface of the compiled engine (_engine.pyx and the files it includes): the per-flow state, the per-window
# aggregate table and the Engine's fields, all plain C so that no Python object is made per frame. Strings live in
# growable byte buffers (Buf) that are reused, not freed, between requests (Req structs come from a free list).
#
# A new protocol adds its per-direction state to Dir or its per-flow state to Flow (and the engine-wide state it
# needs to Engine, under its own heading); see _engine.pyx for the rest of a protocol's registration.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from costmesh.native._bytes cimport Buf


# One request of a flow, waiting for its answer (HTTP request, PostgreSQL query or extended-query cycle).
cdef struct Req:
    int64_t ts
    int64_t bytes_in
    int64_t bytes_out
    int status
    bint error
    bint method_head
    bint method_connect
    bint ai
    bint capture
    bint silent
    int starts[3]
    int rule[3]
    Buf ids[3]
    Buf op
    Buf host
    Buf target          # kept for AI calls only
    Buf head            # kept when rules or AI usage need the request again at completion
    Buf body
    Buf resp_body
    Buf ct
    Buf ce
    Req* next

# One direction of a flow: TCP ordering, then the protocol parser's state (``state`` 0 is every parser's start).
cdef struct Dir:
    bint have_seq
    bint fin
    uint32_t next_seq
    int state
    int64_t remaining
    Buf buf
    Req* req
    int mtype
    int64_t mlen

cdef struct Flow:
    bint used
    uint32_t gen
    uint8_t addr[2][16]
    uint16_t port[2]
    int cside
    int proto
    int tries
    bint fresh
    bint tls_done
    bint has_ooo            # Engine.ooo[slot] holds segments waiting (or did since the slot was taken)
    Dir dirs[2]
    Req* pend_head
    Req* pend_tail
    int npend
    Buf ids[3]
    int idrule[3]
    Buf host
    int64_t last_ts
    bint cycle_open         # PostgreSQL: an extended-query cycle is open
    int64_t cycle_ts
    Buf cycle_op
    int64_t cycle_bytes
    Buf stmt_name[4]        # PostgreSQL: prepared statements seen on this flow (round robin, MAX_STMTS)
    Buf stmt_text[4]
    int nstmts
    int stmt_next
    int64_t reads[8]        # when the server on this host read from the flow (Engine.server_reads), oldest first
    int nreads              # (MAX_READS): the start of its server time for the request it read (flow_served_from)
    int32_t hnext
    int32_t lru_prev
    int32_t lru_next

cdef struct AggEntry:
    uint64_t h
    char* key
    Py_ssize_t klen
    int64_t window
    int64_t vals[9]

cdef struct Block:              # a slab of aggregate entries (the entries of a drain are released together)
    Block* next
    size_t used
    size_t cap

cdef struct AggSlot:            # one slot of the aggregate table: the hash beside the entry, so a probe reads one line
    uint64_t h
    AggEntry* e

# One header value: a span into the head bytes (p == NULL: absent).
cdef struct Span:
    const char* p
    Py_ssize_t n


cdef class Engine:
    # the cold paths (``slow``) and the rule program (``rules``) the caller gave
    cdef object slow
    cdef object rules
    cdef readonly int64_t window_us
    cdef int64_t counters[64]
    cdef int64_t errors[64]
    cdef readonly int64_t last_ts
    cdef uint8_t port_hint[65536]      # bit 1: PostgreSQL port, bit 2: HTTP port
    # flow table (_flows.pxi)
    cdef int max_flows
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
    cdef Req* free_reqs
    cdef object reads_due              # server reads waiting for the frames of their time (deque, oldest first)
    cdef int64_t next_read_ts          # the oldest one's time (INT64_MAX: none)
    # aggregates (_records.pxi)
    cdef AggSlot* agg                  # open addressing by hash: entry and its hash side by side (one cache line)
    cdef uint64_t agg_cap
    cdef uint64_t agg_n
    cdef AggEntry** agg_list           # the same entries in insertion order (drain order, as in the twin)
    cdef uint64_t agg_list_cap
    cdef Block* blocks                 # where aggregate entries live: bump-allocated, released per drain
    cdef Block* spare                  # emptied blocks kept for reuse (at most MAX_SPARE_BLOCKS)
    cdef int nspare
    cdef Buf kbuf
    # HTTP: the extraction rules evaluated in C, and the header values of the head being read (_http.pxi)
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
    cdef list ai_body_skip             # [target][start]: needles of the body rules left, or None (see http_ai_ids_none)
    cdef bint collapse_ids             # fold ids and query values of HTTP operations (http.collapse_http_op)

    # the per-protocol dispatch (one arm per protocol in each)
    cdef int _frame(self, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1
    cdef void _detect(self, Flow* fl, int side, const uint8_t* data, Py_ssize_t n) noexcept
    cdef int _data(self, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1
    cdef int _fin(self, Flow* fl, int side, int64_t ts) except -1
    cdef int _finish(self, Flow* fl) except -1
    cdef void _desync(self, Flow* fl, int side) noexcept
    cdef int _reads_until(self, int64_t ts) except -1


# One frame by pointer into an engine (a compiled ``Engine``): the live ring walk (``ring.pyx``) feeds frames from the
# mapped ring without a bytes object per frame.
cdef int feed_raw(object engine, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1
