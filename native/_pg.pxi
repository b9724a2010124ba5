# The PostgreSQL wire protocol in the compiled engine (included by _engine.pyx; twin: _pg_py.py).
#
# Recognition (``pg_startup_like``: a startup, SSL, GSS or cancel request; ``pg_chain``: a segment of whole typed
# messages, for flows joined mid-stream), then per direction a message parser (``pg_data``): the client's simple
# queries and extended-query cycles (Parse/Bind/Execute up to Sync, prepared statements remembered per flow) become
# requests, each completed by the server's ReadyForQuery (server time, errors, bytes both ways). An SSLRequest
# answered ``S`` turns the flow into TLS; the startup's user and database go to the rules (``slow.pg_startup``).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memchr, memcmp, memset

from costmesh.native._bytes cimport Buf, be32, buf_add, buf_set

DEF MAX_STMT_NAME = 64
DEF PG_MAX_LEN = 1073741824
DEF PG_MAX_STARTUP = 10000
# parser states of a direction
DEF G_UNTYPED = 0
DEF G_TYPED = 1
DEF G_SSLANS = 2

cdef int C_PG_MSG = _C["pg_messages"], C_PG_Q = _C["pg_queries"], C_PG_TLS = _C["pg_tls"]
cdef int C_MID_PG = _C["midstream_postgres"]
cdef int E_PG = _E["pg_message"]
cdef const char* PG_FRONTEND = b"QPBEDSCHXFpdcf"
cdef const char* PG_BACKEND = b"RKSZTDCEN123nstcGHWAIVvdf"


# ---- recognition (twins in _pg_py.py) ---------------------------------------------------------------------------------

cdef inline bint in_set(const char* s, uint8_t c) noexcept nogil:
    cdef int i = 0
    while s[i]:
        if <uint8_t>s[i] == c:
            return True
        i += 1
    return False


cdef inline bint pg_chain(const uint8_t* d, Py_ssize_t n, const char* types, bint hint) noexcept nogil:
    cdef Py_ssize_t p = 0
    cdef int cnt = 0
    cdef uint32_t length
    while p + 5 <= n:
        if not in_set(types, d[p]):
            return False
        length = be32(d + p + 1)
        if length < 4 or length > (1 << 24):
            return False
        p += 1 + length
        cnt += 1
    if p != n:
        return cnt > 0 and hint
    return cnt > 1 or (cnt > 0 and hint)


cdef inline bint pg_startup_like(const uint8_t* d, Py_ssize_t n) noexcept nogil:
    cdef uint32_t length, code
    cdef Py_ssize_t i, klen
    if n < 8:
        return False
    length = be32(d)
    code = be32(d + 4)
    if length < 8 or length > 10000:
        return False
    if code == 80877103 or code == 80877104 or code == 80877102:
        return length == 8 or length == 16
    if (code >> 16) != 3 or (code & 0xFFFF) > 2 or n < 10:
        return False
    klen = 0
    i = 8
    while i < n and i < 40 and d[i] != 0:
        if not ((97 <= d[i] <= 122) or d[i] == 95):
            return False
        klen += 1
        i += 1
    return 0 < klen < 32


cdef void pg_begin(Flow* fl, int side, bint startup) noexcept:
    """The flow is PostgreSQL: from its startup packet (sent by ``side``), or joined mid-stream (typed messages both
    ways)."""
    fl.proto = P_PG
    if startup:
        fl.dirs[side].state = G_UNTYPED
        fl.dirs[1 - side].state = G_TYPED
    else:
        fl.dirs[0].state = G_TYPED
        fl.dirs[1].state = G_TYPED


cdef int pg_finish(Engine eng, Flow* fl) except -1:
    """The flow ended: queries still waiting for ReadyForQuery are recorded without server time."""
    cdef Req* req
    cdef int64_t vals[9]
    while fl.pend_head != NULL:
        req = req_pop(fl)
        if not req.silent:
            memset(vals, 0, sizeof(vals))
            vals[0] = 1
            vals[1] = req.error
            vals[2] = req.bytes_in
            vals[3] = req.bytes_out
            agg(eng, req.ts, fl, R_PG, req.op.p, req.op.n, NULL, 0, fl.ids, fl.idrule, NULL, 0, NULL, 0, vals)
        req_recycle(eng, req)
    return 0


cdef void pg_desync(Flow* fl, int side) noexcept:
    """Bytes were lost: read typed messages again from the next header (a message in progress is lost)."""
    fl.dirs[side].state = G_TYPED
    fl.dirs[side].mtype = 0


# ---- the message parser -------------------------------------------------------------------------------------------

cdef int pg_data(Engine eng, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
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
                eng.counters[C_PG_TLS] += 1
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
                eng.errors[E_PG] += 1
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
                eng.errors[E_PG] += 1
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
                pg_message(eng, fl, side, ts, mtype, mlen, d.buf.p, d.buf.n)
            finally:
                d.buf.n = 0
    return 0


cdef int pg_message(Engine eng, Flow* fl, int side, int64_t ts, int mtype, int64_t mlen, const char* body,
                    Py_ssize_t bn) except -1:
    cdef Dir* d = &fl.dirs[side]
    cdef int64_t size = mlen + (1 if d.state == G_TYPED else 0)
    cdef uint32_t code
    cdef Req* req
    cdef Req* front
    cdef int64_t start
    cdef const char* z
    cdef const char* q
    cdef Py_ssize_t qn, name_n
    cdef int64_t vals[9]
    eng.counters[C_PG_MSG] += 1
    if side == fl.cside:
        if d.state == G_UNTYPED:
            code = be32(<const uint8_t*>body)
            if code == 80877103 or code == 80877104:
                fl.dirs[1 - side].state = G_SSLANS
            elif code == 80877102:
                pass
            elif (code >> 16) == 3:
                d.state = G_TYPED
                pg_startup(eng, fl, PyBytes_FromStringAndSize(body + 4, bn - 4))
            else:
                eng.errors[E_PG] += 1
                fl.proto = P_OPAQUE
            return 0
        if mtype == 0x51:
            z = <const char*>memchr(body, 0, bn)
            qn = (z - body) if z != NULL else bn
            if fl.npend < MAX_PENDING:
                req = req_new(eng, ts)
                buf_set(&req.op, body, qn if qn < MAX_OP else MAX_OP)
                req.bytes_out = size
                req_push(fl, req)
            eng.counters[C_PG_Q] += 1
        elif mtype == 0x53:
            if not fl.cycle_open:
                pass
            else:
                eng.counters[C_PG_Q] += 1
            if fl.npend < MAX_PENDING:
                req = req_new(eng, fl.cycle_ts if fl.cycle_open else ts)
                buf_set(&req.op, fl.cycle_op.p, fl.cycle_op.n)
                req.bytes_out = fl.cycle_bytes + size
                req.silent = not fl.cycle_open
                req_push(fl, req)
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
                        pg_stmt_put(fl, body, name_n if name_n < MAX_STMT_NAME else MAX_STMT_NAME, q, qn)
                        if fl.cycle_op.n == 0:
                            buf_set(&fl.cycle_op, q, qn)
                    else:
                        pg_stmt_get(fl, q, qn if qn < MAX_STMT_NAME else MAX_STMT_NAME, &fl.cycle_op)
        return 0
    front = fl.pend_head
    if front == NULL:
        return 0
    front.bytes_in += size
    if mtype == 0x45:
        front.error = True
    elif mtype == 0x5A:
        req_pop(fl)
        try:
            if not front.silent:
                memset(vals, 0, sizeof(vals))
                vals[0] = 1
                vals[1] = front.error
                vals[2] = front.bytes_in
                vals[3] = front.bytes_out
                start = flow_served_from(fl, front.ts, ts)
                vals[4] = ts - start if ts > start else 0
                agg(eng, front.ts, fl, R_PG, front.op.p, front.op.n, NULL, 0, fl.ids, fl.idrule, NULL, 0,
                          NULL, 0, vals)
        finally:
            req_recycle(eng, front)
    return 0


cdef int pg_stmt_put(Flow* fl, const char* name, Py_ssize_t nn, const char* text,
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


cdef int pg_stmt_get(Flow* fl, const char* name, Py_ssize_t nn, Buf* out) except -1:
    cdef int i
    for i in range(fl.nstmts):
        if fl.stmt_name[i].n == nn and memcmp(fl.stmt_name[i].p, name, nn) == 0:
            return buf_set(out, fl.stmt_text[i].p, fl.stmt_text[i].n)
    out.n = 0
    return 0


cdef int pg_startup(Engine eng, Flow* fl, bytes params) except -1:
    cdef int t
    cdef bytes v
    parts = params.split(b"\0")
    kv = dict(zip(parts[0::2], parts[1::2]))
    user = kv.get(b"user", b"")
    database = kv.get(b"database", b"") or user
    found = eng.slow.pg_startup(user, database)
    for t in range(3):
        v, rule = found[t]
        buf_set(&fl.ids[t], PyBytes_AS_STRING(v), len(v))
        fl.idrule[t] = rule
    return 0


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
