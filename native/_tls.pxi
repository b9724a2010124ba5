# TLS ClientHello and DNS in the compiled engine (included by _engine.pyx; twin: _tls_py.py).
#
# Both name external destinations. TLS: the client's first record is read whole and handed to ``slow.tls`` (SNI, ECH,
# the SNI rules); the flow's later bytes count to the same record (host from the SNI). DNS: answers over UDP or TCP go
# to ``slow.dns`` (which learns the names of the answered addresses) and are recorded per query name.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.string cimport memmove, memset

from costmesh.native._bytes cimport Buf, buf_add, buf_set

DEF MAX_TLS_RECORD = 16389

cdef int C_TLS_HELLO = _C["tls_client_hellos"], C_TLS_ECH = _C["tls_ech"], C_DNS = _C["dns_messages"]
cdef int E_DNS = _E["dns_malformed"], E_TLS = _E["tls_malformed"]
cdef const char* ECH = b"ech"


cdef int dns_message(Engine eng, int64_t ts, const uint8_t* src, const uint8_t* dst, uint16_t sport, uint16_t dport,
                     const uint8_t* payload, Py_ssize_t n, bint from_server) except -1:
    cdef int64_t vals[9]
    cdef bytes qname
    cdef int rules[3]
    eng.counters[C_DNS] += 1
    r = eng.slow.dns(PyBytes_FromStringAndSize(<const char*>payload, n))
    if r is None:
        eng.errors[E_DNS] += 1
        return 0
    response, rcode, qname = r
    if response and from_server:
        memset(vals, 0, sizeof(vals))
        vals[0] = 1
        vals[1] = rcode != 0
        vals[2] = n
        rules[0] = rules[1] = rules[2] = -1
        agg_raw(eng, ts, dst, src, sport, R_DNS, PyBytes_AS_STRING(qname), min(len(qname), MAX_OP), NULL, 0,
                      NULL, rules, NULL, 0, NULL, 0, vals)
    return 0


cdef int tls_data(Engine eng, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
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
        r = eng.slow.tls(record)
        if r is None:
            eng.errors[E_TLS] += 1
            fl.proto = P_OPAQUE
            return 0
        sni, ech, ids = r
        eng.counters[C_TLS_HELLO] += 1
        if ech:
            eng.counters[C_TLS_ECH] += 1
        buf_set(&fl.host, PyBytes_AS_STRING(sni), len(sni) if len(sni) < MAX_VALUE else MAX_VALUE)
        for t in range(3):
            v, rule = ids[t]
            buf_set(&fl.ids[t], PyBytes_AS_STRING(v), len(v))
            fl.idrule[t] = rule
        vals[0] = 1
        vals[3] = len(record)
        return agg(eng, ts, fl, R_TLS, ECH, 3 if ech else 0, fl.host.p, fl.host.n, fl.ids, fl.idrule, NULL, 0,
                         NULL, 0, vals)
    if client:
        vals[3] = n
    else:
        vals[2] = n
    return agg(eng, ts, fl, R_TLS, NULL, 0, fl.host.p, fl.host.n, fl.ids, fl.idrule, NULL, 0, NULL, 0, vals)


cdef int dns_tcp_data(Engine eng, Flow* fl, int side, int64_t ts, const uint8_t* data, Py_ssize_t n) except -1:
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
        dns_message(eng, ts, fl.addr[side], fl.addr[1 - side], fl.port[side], fl.port[1 - side],
                  <const uint8_t*>PyBytes_AS_STRING(msg), len(msg), side != fl.cside)
    return 0


cdef void tls_desync(Flow* fl) noexcept:
    """Bytes were lost before the ClientHello was read whole: nothing more can be read from this flow."""
    fl.proto = P_OPAQUE
