"""Compiled fast path for AI usage, twin of ``_usage_py.py``: provider, model and tokens of a plain JSON response body
read in C, without decoding it into Python objects.

Reads: the request target and ``Host``, the response body after de-chunking, its ``Content-Type`` and whether it has a
``Content-Encoding``. Emits: a ``Usage`` struct (tokens in/out/cached/reasoning as ``ai._tokens`` computes them, and
the span of the top-level ``"model"`` string in the body), or *no answer*. Why: an AI call costs ~10 us through the
generic JSON decode in ``ai`` (``costmesh.sensor.core.ai``), and the engine would spend most of its time there on
realistic traffic.

Correctness first: it answers only when the result is certain to equal ``ai.response_usage`` (then ``Slow.ai``). It
validates the whole body as strict JSON (strings with valid UTF-8, no control characters) and
gives up, so the caller takes the full Python path, on anything unusual: a ``\\u`` escape of a surrogate, an escaped key
where keys matter, a duplicate ``model``/``usage`` or usage key, a float/negative/huge token count, any content
coding, an event stream, non-empty objects under the keys the Python path searches (``response``, ``message``, ``metadata``) or
for other providers' models (``modelVersion``, ``modelId``, ``usageMetadata``, Bedrock metrics), a missing or empty
``model`` (the request's then counts), deep nesting.
"""

from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcmp, strlen

from costmesh.native._bytes cimport find, lower

DEF MAX_DEPTH = 48
DEF MAX_HOST = 256
DEF NSLOT = 23
DEF NPREFIX = 4
DEF NTOP = 7
DEF NTOP_NESTED = 4  # TOP_OTHER[4:] are nested documents
DEF MODEL_MAX = 256

# Every key ``ai._tokens`` reads from the flattened usage dict, in this order (indices used below).
cdef const char* SLOT[NSLOT]
SLOT[0] = b"prompt_tokens"
SLOT[1] = b"completion_tokens"
SLOT[2] = b"prompt_tokens_details.cached_tokens"
SLOT[3] = b"completion_tokens_details.reasoning_tokens"
SLOT[4] = b"input_tokens_details.cached_tokens"
SLOT[5] = b"input_tokens"
SLOT[6] = b"total_tokens"
SLOT[7] = b"output_tokens"
SLOT[8] = b"output_tokens_details.reasoning_tokens"
SLOT[9] = b"cache_creation_input_tokens"
SLOT[10] = b"cache_read_input_tokens"
SLOT[11] = b"inputTokens"
SLOT[12] = b"outputTokens"
SLOT[13] = b"cacheWriteInputTokens"
SLOT[14] = b"cacheReadInputTokens"
SLOT[15] = b"inputTokenCount"
SLOT[16] = b"outputTokenCount"
SLOT[17] = b"cacheWriteInputTokenCount"
SLOT[18] = b"cacheReadInputTokenCount"
SLOT[19] = b"promptTokenCount"
SLOT[20] = b"candidatesTokenCount"
SLOT[21] = b"cachedContentTokenCount"
SLOT[22] = b"thoughtsTokenCount"
cdef Py_ssize_t SLOT_LEN[NSLOT]
# The usage keys whose object members flatten into a slot name ("prefix.member").
cdef const char* PREFIX[NPREFIX]
PREFIX[0] = b"prompt_tokens_details"
PREFIX[1] = b"completion_tokens_details"
PREFIX[2] = b"input_tokens_details"
PREFIX[3] = b"output_tokens_details"
cdef Py_ssize_t PREFIX_LEN[NPREFIX]
# Top-level keys the Python path reads but this one does not: their presence means "take the full path" (for the
# nested documents: unless the value is not an object or is an empty one, which the Python path finds nothing in).
cdef const char* TOP_OTHER[NTOP]
TOP_OTHER[0] = b"modelVersion"
TOP_OTHER[1] = b"modelId"
TOP_OTHER[2] = b"usageMetadata"
TOP_OTHER[3] = b"amazon-bedrock-invocationMetrics"
TOP_OTHER[4] = b"response"
TOP_OTHER[5] = b"message"
TOP_OTHER[6] = b"metadata"
cdef Py_ssize_t TOP_OTHER_LEN[NTOP]

cdef int _j
for _j in range(NSLOT):
    SLOT_LEN[_j] = strlen(SLOT[_j])
for _j in range(NPREFIX):
    PREFIX_LEN[_j] = strlen(PREFIX[_j])
for _j in range(NTOP):
    TOP_OTHER_LEN[_j] = strlen(TOP_OTHER[_j])

#: Provider names by ``provider_c`` index (same names as ``ai.provider_of``).
PROVIDERS = (b"azure-openai", b"anthropic", b"bedrock", b"vertex", b"gemini", b"openai")


cdef struct Raw:
    int64_t val[NSLOT]
    bint has[NSLOT]       # an int was read (``key in raw`` of the Python path)
    bint seen[NSLOT]      # the key occurred (a second occurrence: give up)
    bint pseen[NPREFIX]


cdef inline Py_ssize_t _ws(const uint8_t* b, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    return i


cdef inline bint _cont(uint8_t c) noexcept nogil:
    return 0x80 <= c <= 0xBF


cdef inline Py_ssize_t _utf8(const uint8_t* b, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Length of the strict UTF-8 sequence at ``b[i]`` (a byte >= 0x80), or -1."""
    cdef uint8_t c = b[i]
    cdef uint8_t lo = 0x80
    cdef uint8_t hi = 0xBF
    if 0xC2 <= c <= 0xDF:
        return 2 if i + 1 < n and _cont(b[i + 1]) else -1
    if 0xE0 <= c <= 0xEF:
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        if i + 2 < n and lo <= b[i + 1] <= hi and _cont(b[i + 2]):
            return 3
        return -1
    if 0xF0 <= c <= 0xF4:
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if i + 3 < n and lo <= b[i + 1] <= hi and _cont(b[i + 2]) and _cont(b[i + 3]):
            return 4
        return -1
    return -1


cdef inline bint _hex4(const uint8_t* p) noexcept nogil:
    cdef int j
    for j in range(4):
        if not (48 <= p[j] <= 57 or 97 <= p[j] <= 102 or 65 <= p[j] <= 70):
            return False
    return True


cdef Py_ssize_t _str_end(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, bint* esc) noexcept nogil:
    """``i`` just after an opening quote: the offset after the closing quote, or -1 (bad or uncertain)."""
    cdef uint8_t c, e
    cdef Py_ssize_t k
    while i < n:
        c = b[i]
        if c == 34:  # "
            return i + 1
        if c == 92:  # backslash: the simple escapes only and \uXXXX outside the surrogates (left to the full decoder)
            if i + 1 >= n:
                return -1
            e = b[i + 1]
            if e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                esc[0] = True
                i += 2
                continue
            if e == 117 and i + 5 < n and _hex4(b + i + 2):  # \uXXXX outside the surrogates: always one character
                if not (b[i + 2] in b"dD" and b[i + 3] in b"89abcdefABCDEF"):
                    esc[0] = True
                    i += 6
                    continue
            return -1
        if c < 0x20:
            return -1
        if c < 0x80:
            i += 1
        else:
            k = _utf8(b, i, n)
            if k < 0:
                return -1
            i += k
    return -1


cdef Py_ssize_t _num_end(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, bint* integer) noexcept nogil:
    """A strict JSON number at ``i``: the offset after it, or -1; ``integer``: no fraction and no exponent."""
    cdef Py_ssize_t start = i
    cdef Py_ssize_t d
    integer[0] = True
    if i < n and b[i] == 45:  # -
        i += 1
    if i >= n:
        return -1
    if b[i] == 48:  # 0
        i += 1
    elif 49 <= b[i] <= 57:
        d = i
        while i < n and 48 <= b[i] <= 57:
            i += 1
        if i - d > 18:
            return -1
    else:
        return -1
    if i < n and b[i] == 46:  # .
        integer[0] = False
        i += 1
        d = i
        while i < n and 48 <= b[i] <= 57:
            i += 1
        if i == d:
            return -1
    if i < n and (b[i] == 101 or b[i] == 69):  # e E
        integer[0] = False
        i += 1
        if i < n and (b[i] == 43 or b[i] == 45):
            i += 1
        d = i
        while i < n and 48 <= b[i] <= 57:
            i += 1
        if i == d or i - d > 2:
            return -1
    if i - start > 40:
        return -1
    return i


cdef Py_ssize_t _skip(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, int depth) noexcept nogil:
    """Validate and skip one JSON value at ``i``: the offset after it, or -1."""
    cdef bint flag = False
    cdef uint8_t c
    if i >= n:
        return -1
    c = b[i]
    if c == 34:
        return _str_end(b, i + 1, n, &flag)
    if c == 123 or c == 91:  # { [
        if depth >= MAX_DEPTH:
            return -1
        i = _ws(b, i + 1, n)
        if i < n and b[i] == c + 2:  # } ]
            return i + 1
        while True:
            if c == 123:
                if i >= n or b[i] != 34:
                    return -1
                i = _str_end(b, i + 1, n, &flag)
                if i < 0:
                    return -1
                i = _ws(b, i, n)
                if i >= n or b[i] != 58:  # :
                    return -1
                i = _ws(b, i + 1, n)
            i = _skip(b, i, n, depth + 1)
            if i < 0:
                return -1
            i = _ws(b, i, n)
            if i >= n:
                return -1
            if b[i] == 44:  # ,
                i = _ws(b, i + 1, n)
                continue
            if b[i] == c + 2:
                return i + 1
            return -1
    if c == 116:
        return i + 4 if i + 4 <= n and memcmp(b + i, b"true", 4) == 0 else -1
    if c == 102:
        return i + 5 if i + 5 <= n and memcmp(b + i, b"false", 5) == 0 else -1
    if c == 110:
        return i + 4 if i + 4 <= n and memcmp(b + i, b"null", 4) == 0 else -1
    if c == 45 or 48 <= c <= 57:
        return _num_end(b, i, n, &flag)
    return -1


cdef inline bint _is(const uint8_t* k, Py_ssize_t kn, const char* s, Py_ssize_t sn) noexcept nogil:
    return kn == sn and memcmp(k, s, sn) == 0


cdef Py_ssize_t _key(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* ks, Py_ssize_t* kn) noexcept nogil:
    """An unescaped member key at ``i`` and its colon: the offset of the value, or -1."""
    cdef bint esc = False
    cdef Py_ssize_t e
    if i >= n or b[i] != 34:
        return -1
    e = _str_end(b, i + 1, n, &esc)
    if e < 0 or esc:
        return -1
    ks[0] = i + 1
    kn[0] = e - 1 - (i + 1)
    i = _ws(b, e, n)
    if i >= n or b[i] != 58:
        return -1
    return _ws(b, i + 1, n)


cdef Py_ssize_t _slot_value(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, Raw* raw, int s) noexcept nogil:
    """The value of a slot key: a plain non-negative int is kept; a float or negative number gives up (rare, left to
    the full path); any other value is skipped (the Python path ignores non-int values)."""
    cdef bint integer = False
    cdef Py_ssize_t e
    cdef int64_t v = 0
    if raw.seen[s]:
        return -1
    raw.seen[s] = True
    if i < n and 48 <= b[i] <= 57:
        e = _num_end(b, i, n, &integer)
        if e < 0 or not integer:
            return -1
        while i < e:
            v = v * 10 + (b[i] - 48)
            i += 1
        raw.val[s] = v
        raw.has[s] = True
        return e
    if i < n and b[i] == 45:
        return -1
    return _skip(b, i, n, 2)


cdef Py_ssize_t _members(const uint8_t* b, Py_ssize_t i, Py_ssize_t n, Raw* raw, int prefix) noexcept nogil:
    """The object at ``i`` (a ``{``): ``usage`` itself (``prefix`` -1) or one of its ``*_details`` objects."""
    cdef Py_ssize_t ks = 0
    cdef Py_ssize_t kn = 0
    cdef const uint8_t* k
    cdef int s, p
    cdef Py_ssize_t pl
    i = _ws(b, i + 1, n)
    if i < n and b[i] == 125:
        return i + 1
    while True:
        i = _key(b, i, n, &ks, &kn)
        if i < 0:
            return -1
        k = b + ks
        s = -1
        if prefix < 0:
            for p in range(NSLOT):
                if _is(k, kn, SLOT[p], SLOT_LEN[p]):
                    s = p
                    break
        else:
            pl = PREFIX_LEN[prefix]
            for p in range(NSLOT):
                if (SLOT_LEN[p] == pl + 1 + kn and memcmp(SLOT[p], PREFIX[prefix], pl) == 0
                        and SLOT[p][pl] == 46 and memcmp(SLOT[p] + pl + 1, k, kn) == 0):
                    s = p
                    break
        if s >= 0:
            i = _slot_value(b, i, n, raw, s)
        else:
            p = -1
            if prefix < 0:
                for s in range(NPREFIX):
                    if _is(k, kn, PREFIX[s], PREFIX_LEN[s]):
                        p = s
                        break
            if p >= 0:
                if raw.pseen[p]:
                    return -1
                raw.pseen[p] = True
                if i < n and b[i] == 123:
                    i = _members(b, i, n, raw, p)
                else:
                    i = _skip(b, i, n, 2)
            else:
                i = _skip(b, i, n, 2)
        if i < 0:
            return -1
        i = _ws(b, i, n)
        if i >= n:
            return -1
        if b[i] == 44:
            i = _ws(b, i + 1, n)
            continue
        if b[i] == 125:
            return i + 1
        return -1


cdef inline int64_t _g(Raw* r, int s) noexcept nogil:
    return r.val[s] if r.has[s] else 0


cdef inline int64_t _pos(int64_t v) noexcept nogil:
    return v if v > 0 else 0


cdef void _tokens(Raw* r, int64_t* t) noexcept nogil:
    """``ai._tokens`` over the slots."""
    cdef int64_t cached
    t[0] = t[1] = t[2] = t[3] = 0
    if r.has[0] or r.has[1]:  # OpenAI / Azure chat completions
        cached = _g(r, 2)
        t[0] = _pos(_g(r, 0) - cached)
        t[1] = _g(r, 1)
        t[2] = cached
        t[3] = _g(r, 3)
    elif r.has[4] or (r.has[5] and r.has[6]):  # OpenAI / Azure Responses API
        cached = _g(r, 4)
        t[0] = _pos(_g(r, 5) - cached)
        t[1] = _g(r, 7)
        t[2] = cached
        t[3] = _g(r, 8)
    elif r.has[5] or r.has[7]:  # Anthropic
        t[0] = _g(r, 5) + _g(r, 9)
        t[1] = _g(r, 7)
        t[2] = _g(r, 10)
    elif r.has[11] or r.has[12]:  # Bedrock Converse
        t[0] = _g(r, 11) + _g(r, 13)
        t[1] = _g(r, 12)
        t[2] = _g(r, 14)
    elif r.has[15] or r.has[16]:  # Bedrock invocation metrics
        t[0] = _g(r, 15) + _g(r, 17)
        t[1] = _g(r, 16)
        t[2] = _g(r, 18)
    elif r.has[19] or r.has[20]:  # Gemini / Vertex
        cached = _g(r, 21)
        t[0] = _pos(_g(r, 19) - cached)
        t[1] = _g(r, 20) + _g(r, 22)
        t[2] = cached
        t[3] = _g(r, 22)


cdef bint usage_c(const char* body, Py_ssize_t n, const char* ct, Py_ssize_t ctn, Py_ssize_t cen,
                  Usage* out) noexcept nogil:
    """Usage of a plain JSON response body into ``out``; False: not certain, take the full Python path."""
    cdef const uint8_t* b = <const uint8_t*>body
    cdef Raw raw
    cdef Py_ssize_t i, ks = 0, kn = 0, e
    cdef Py_ssize_t model_at = -1, model_len = 0
    cdef bint have_usage = False
    cdef bint esc
    cdef const uint8_t* k
    cdef int j
    cdef char low[5]
    if cen != 0 or n <= 0:
        return False
    for i in range(ctn - 4 if ctn >= 5 else 0):  # "event": SSE or a Bedrock event stream
        for j in range(5):
            low[j] = lower(ct[i + j])
        if memcmp(low, b"event", 5) == 0:
            return False
    for j in range(NSLOT):
        raw.has[j] = False
        raw.seen[j] = False
        raw.val[j] = 0
    for j in range(NPREFIX):
        raw.pseen[j] = False
    i = _ws(b, 0, n)
    if i >= n or b[i] != 123:
        return False
    i = _ws(b, i + 1, n)
    if i < n and b[i] == 125:
        return False  # no model
    while True:
        i = _key(b, i, n, &ks, &kn)
        if i < 0:
            return False
        k = b + ks
        if _is(k, kn, b"model", 5):
            if model_at >= 0 or i >= n or b[i] != 34:
                return False
            esc = False
            e = _str_end(b, i + 1, n, &esc)
            if e < 0 or esc or e - 1 - (i + 1) == 0:
                return False
            model_at = i + 1
            model_len = e - 1 - (i + 1)
            i = e
        elif _is(k, kn, b"usage", 5):
            if have_usage or i >= n or b[i] != 123:
                return False
            have_usage = True
            i = _members(b, i, n, &raw, -1)
        else:
            for j in range(NTOP):
                if _is(k, kn, TOP_OTHER[j], TOP_OTHER_LEN[j]):
                    # a nested document the Python path searches: fine when it is not an object or an empty one
                    if j < NTOP_NESTED or i >= n or (b[i] == 123 and (_ws(b, i + 1, n) >= n or b[_ws(b, i + 1, n)] != 125)):
                        return False
            i = _skip(b, i, n, 1)
        if i < 0:
            return False
        i = _ws(b, i, n)
        if i >= n:
            return False
        if b[i] == 44:
            i = _ws(b, i + 1, n)
            continue
        if b[i] == 125:
            break
        return False
    if _ws(b, i + 1, n) != n or model_at < 0:
        return False
    _tokens(&raw, out.tokens)
    out.model_at = model_at
    out.model_len = model_len if model_len < MODEL_MAX else MODEL_MAX
    return True


cdef int provider_c(const char* target, Py_ssize_t tn, const char* host, Py_ssize_t hn) noexcept nogil:
    """``ai.provider_of`` as an index into ``PROVIDERS``; -1 for a host too long to lower here (take the Python path)."""
    cdef char low[MAX_HOST]
    cdef Py_ssize_t i
    if hn > MAX_HOST:
        return -1
    for i in range(hn):
        low[i] = lower(host[i])
    if find(low, hn, b"openai.azure.com", 16) >= 0 or find(target, tn, b"/openai/deployments/", 20) >= 0:
        return 0
    if find(low, hn, b"anthropic", 9) >= 0 or (tn >= 12 and memcmp(target, b"/v1/messages", 12) == 0):
        return 1
    if (find(low, hn, b"bedrock-runtime", 15) >= 0 or find(target, tn, b"/converse", 9) >= 0
            or (tn >= 7 and memcmp(target, b"/model/", 7) == 0 and find(target, tn, b"/invoke", 7) >= 0)):
        return 2
    if (find(low, hn, b"aiplatform.googleapis", 21) >= 0
            or (find(target, tn, b"/projects/", 10) >= 0 and find(target, tn, b"/publishers/google/", 19) >= 0)):
        return 3
    if (find(low, hn, b"generativelanguage.googleapis", 29) >= 0 or find(target, tn, b":generateContent", 16) >= 0
            or find(target, tn, b":streamGenerateContent", 22) >= 0):
        return 4
    return 5


def response_usage(body: bytes, content_type: bytes = b"", content_encoding: bytes = b""):
    """The fast path from Python (tests): ``(model, tokens_in, tokens_out, tokens_cached, tokens_reasoning)`` with
    ``model`` as the engine records it (UTF-8 bytes, at most 256), or None where the full path must decide."""
    cdef Usage u
    cdef const char* p = body
    if not usage_c(p, len(body), content_type, len(content_type), len(content_encoding), &u):
        return None
    return (body[u.model_at : u.model_at + u.model_len], u.tokens[0], u.tokens[1], u.tokens[2], u.tokens[3])


def provider(target: bytes, host: bytes) -> bytes | None:
    """``ai.provider_of`` as bytes, or None (host too long for the fast path)."""
    cdef int i = provider_c(target, len(target), host, len(host))
    return PROVIDERS[i] if i >= 0 else None
