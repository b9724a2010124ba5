# PostgreSQL wire-protocol recognition of the compiled engine (twin: ``pg_chain``/``pg_startup_like`` in
# ``_engine_py``): does a segment read as whole frontend/backend messages, or as a startup/SSL/GSS/cancel request?
from libc.stdint cimport uint8_t, uint32_t

from costmesh.native._bytes cimport be32


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
