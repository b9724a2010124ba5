# C surface of _engine.pyx: the per-flow state and the per-window aggregate table, all plain C structs so that no
# Python object is made per frame. Strings live in growable byte buffers (Buf) that are reused, not freed, between
# requests (Req structs come from a free list).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from costmesh.native._bytes cimport Buf

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
    bint has_ooo            # self.ooo[slot] holds segments waiting (or did since the slot was taken)
    Dir dirs[2]
    Req* pend_head
    Req* pend_tail
    int npend
    Buf ids[3]
    int idrule[3]
    Buf host
    int64_t last_ts
    bint cycle_open
    int64_t cycle_ts
    Buf cycle_op
    int64_t cycle_bytes
    Buf stmt_name[4]        # prepared statements seen on this flow (round robin)
    Buf stmt_text[4]
    int nstmts
    int stmt_next
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

# One frame by pointer into an engine (a compiled ``Engine``): the live ring walk (``ring.pyx``) feeds frames from the
# mapped ring without a bytes object per frame.
cdef int feed_raw(object engine, int64_t ts, int linktype, const uint8_t* f, Py_ssize_t n) except -1
