# HTTP/1.1 head helpers of the compiled engine (twins: ``rules.baggage_value``/``query_value`` and ``_engine_py``).
from libc.stdint cimport int64_t
from libc.string cimport memchr, memcmp

from costmesh.native._bytes cimport lower, starts, strip


# One header value: a span into the head bytes (p == NULL: absent).
cdef struct Span:
    const char* p
    Py_ssize_t n


cdef inline bint http_method_start(const char* p, Py_ssize_t n) noexcept nogil:
    if n < 4:
        return False
    if p[0] == 71:
        return starts(p, n, b"GET ", 4)
    if p[0] == 80:
        return starts(p, n, b"POST ", 5) or starts(p, n, b"PUT ", 4) or starts(p, n, b"PATCH ", 6)
    if p[0] == 68:
        return starts(p, n, b"DELETE ", 7)
    if p[0] == 72:
        return starts(p, n, b"HEAD ", 5)
    if p[0] == 79:
        return starts(p, n, b"OPTIONS ", 8)
    if p[0] == 67:
        return starts(p, n, b"CONNECT ", 8)
    if p[0] == 84:
        return starts(p, n, b"TRACE ", 6)
    return False


cdef inline int64_t _digits(const char* p, Py_ssize_t n) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if not (48 <= p[i] <= 57):
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef inline bint _contains_lower(const char* p, Py_ssize_t n, const char* s, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(n - m + 1):
        j = 0
        while j < m and lower(p[i + j]) == s[j]:
            j += 1
        if j == m:
            return True
    return False


cdef inline void _baggage_value(const char* p, Py_ssize_t n, const char* key, Py_ssize_t kn, Span* out) noexcept nogil:
    """Same as ``rules.baggage_value``: first item whose key (trimmed) is ``key``; its value up to ``;``, trimmed."""
    cdef Py_ssize_t s = 0
    cdef Py_ssize_t e, eq, i, vn
    cdef const char* k
    cdef const char* v
    cdef Py_ssize_t knn
    while s <= n:
        e = s
        while e < n and p[e] != 44:
            e += 1
        eq = -1
        for i in range(s, e):
            if p[i] == 61:
                eq = i
                break
        if eq >= 0:
            k = p + s
            knn = eq - s
            strip(&k, &knn)
            if knn == kn and memcmp(k, key, kn) == 0:
                v = p + eq + 1
                vn = e - eq - 1
                for i in range(vn):
                    if v[i] == 59:
                        vn = i
                        break
                strip(&v, &vn)
                out.p = v
                out.n = vn
                return
        s = e + 1
    out.p = NULL
    out.n = 0


cdef inline void _query_value(const char* t, Py_ssize_t n, const char* key, Py_ssize_t kn, Span* out) noexcept nogil:
    """Same as ``rules.query_value``: the first ``key=value`` pair of the query string (no decoding)."""
    cdef const char* q = <const char*>memchr(t, 63, n)
    cdef Py_ssize_t s, e, end, i, eq
    out.p = NULL
    out.n = 0
    if q == NULL:
        return
    s = (q - t) + 1
    end = n
    for i in range(s, n):
        if t[i] == 35:
            end = i
            break
    while s <= end:
        e = s
        while e < end and t[e] != 38:
            e += 1
        eq = e
        for i in range(s, e):
            if t[i] == 61:
                eq = i
                break
        if eq - s == kn and memcmp(t + s, key, kn) == 0:
            out.p = t + eq + 1 if eq < e else t + e
            out.n = e - eq - 1 if eq < e else 0
            return
        s = e + 1
