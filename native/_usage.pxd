# C surface of _usage.pyx: the AI usage fast path the engine calls without making Python objects.
from libc.stdint cimport int64_t

cdef struct Usage:
    int64_t tokens[4]       # in, out, cached, reasoning (same meaning as ai.AiUsage)
    Py_ssize_t model_at     # offset of the model name in the body
    Py_ssize_t model_len

cdef bint usage_c(const char* body, Py_ssize_t n, const char* ct, Py_ssize_t ctn, Py_ssize_t cen,
                  Usage* out) noexcept nogil
cdef int provider_c(const char* target, Py_ssize_t tn, const char* host, Py_ssize_t hn) noexcept nogil
