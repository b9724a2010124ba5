# Byte-level helpers shared by the compiled parsers: growable buffers and bounds-taking scans over raw pointers.
# Every function takes the length it may read; callers pass spans they own. Inline: no module is imported at run time.
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy

cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef inline int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = b.n + extra
    cdef Py_ssize_t cap
    cdef char* p
    if want <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 64
    if cap < want:
        cap = want
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_add(Buf* b, const char* src, Py_ssize_t n) except -1:
    if n <= 0:
        return 0
    if b.n + n > b.cap:
        buf_reserve(b, n)
    memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int buf_set(Buf* b, const char* src, Py_ssize_t n) except -1:
    b.n = 0
    return buf_add(b, src, n)


cdef inline void buf_free(Buf* b) noexcept nogil:
    free(b.p)
    b.p = NULL
    b.n = 0
    b.cap = 0


cdef inline void buf_trim(Buf* b) noexcept nogil:
    """Forget the content; give big allocations back (a flow slot is reused by many flows)."""
    b.n = 0
    if b.cap > 4096:
        buf_free(b)


cdef inline bytes buf_bytes(Buf* b):
    if b.n == 0:
        return b""
    return PyBytes_FromStringAndSize(b.p, b.n)


cdef inline int32_t s32(uint32_t x) noexcept nogil:
    return <int32_t>x


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline bint is_ws(char c) noexcept nogil:
    return c == 32 or c == 9


cdef inline void strip(const char** p, Py_ssize_t* n) noexcept nogil:
    while n[0] > 0 and is_ws(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] > 0 and is_ws(p[0][n[0] - 1]):
        n[0] -= 1


cdef inline char lower(char c) noexcept nogil:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef inline bint eq_lower(const char* a, Py_ssize_t n, const char* lowered, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if lower(a[i]) != lowered[i]:
            return False
    return True


cdef inline bint starts(const char* p, Py_ssize_t n, const char* s, Py_ssize_t m) noexcept nogil:
    return n >= m and memcmp(p, s, m) == 0


cdef extern from "string.h" nogil:
    void* memmem(const void* haystack, size_t hn, const void* needle, size_t nn)  # GNU (Python.h asks for it)


cdef inline Py_ssize_t find(const char* p, Py_ssize_t n, const char* s, Py_ssize_t m) noexcept nogil:
    """Offset of ``s`` in ``p[:n]`` or -1 (glibc's ``memmem``: no ``memcmp`` per occurrence of the first byte, which
    matters for needles like ``"user"`` in JSON full of quotes)."""
    cdef const char* hit
    if m == 0:
        return 0
    if n < m:
        return -1
    hit = <const char*>memmem(p, n, s, m)
    return hit - p if hit != NULL else -1


cdef inline Py_ssize_t find_crlf2(const char* p, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t r = find(p + start, n - start, b"\r\n\r\n", 4)
    return r + start if r >= 0 else -1


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline uint64_t costmesh_mum(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    /* Offset of the first c in p[s:n] or -1: sixteen bytes per step with SSE2 (x86-64 baseline), else eight per
       step in a word (the lowest flagged byte of a word is always a true match: a false flag only appears above a
       true one). Header lines are short, so this inline scan beats a call to memchr per line. */
    static inline Py_ssize_t costmesh_find_byte(const char* p, Py_ssize_t s, Py_ssize_t n, char c) {
    #if defined(__SSE2__)
        const __m128i pat16 = _mm_set1_epi8(c);
        while (s + 16 <= n) {
            int m = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + s)), pat16));
            if (m) return s + __builtin_ctz((unsigned)m);
            s += 16;
        }
    #endif
        const uint64_t pat = 0x0101010101010101ULL * (uint8_t)c;
        while (s + 8 <= n) {
            uint64_t w, x, t;
            memcpy(&w, p + s, 8);
            x = w ^ pat;
            t = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
            if (t) return s + (__builtin_ctzll(t) >> 3);
            s += 8;
        }
        for (; s < n; s++) if (p[s] == c) return s;
        return -1;
    }
    """
    uint64_t costmesh_mum(uint64_t a, uint64_t b) nogil
    Py_ssize_t find_byte "costmesh_find_byte" (const char* p, Py_ssize_t s, Py_ssize_t n, char c) noexcept nogil


cdef inline uint64_t hash_bytes(const char* p, Py_ssize_t n) noexcept nogil:
    """A wyhash-style hash (16 bytes per 64x64->128-bit multiply); for in-process tables only, never stored."""
    cdef uint64_t h = 0x243F6A8885A308D3ULL ^ <uint64_t>n
    cdef uint64_t a, b
    cdef Py_ssize_t i = 0
    while i + 16 <= n:
        memcpy(&a, p + i, 8)
        memcpy(&b, p + i + 8, 8)
        h = costmesh_mum(a ^ 0xA0761D6478BD642FULL, b ^ h)
        i += 16
    a = 0
    b = 0
    if n - i > 8:
        memcpy(&a, p + i, 8)
        memcpy(&b, p + i + 8, n - i - 8)
    elif n - i > 0:
        memcpy(&a, p + i, n - i)
    h = costmesh_mum(a ^ 0xE7037ED1A0B428DBULL, b ^ h ^ 0x8EBC6AF09C88C6E3ULL)
    return costmesh_mum(h ^ 0x589965CC75374CC3ULL, <uint64_t>n ^ 0x1D8E4E27C47D124FULL)
