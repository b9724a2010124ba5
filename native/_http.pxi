# HTTP/1.1 in the compiled engine (included by _engine.pyx; twin: _http_py.py, shared helpers in http.py).
#
# Per direction a stream parser (``http_data``): heads read in one pass (request/status line and every header value
# the engine or a header rule reads), bodies by Content-Length, chunked or until close (SSE), pipelining,
# 100-continue, CONNECT tunnels (the flow is recognised afresh). Requests are paired with responses in order; a
# completed call (``http_call``) takes its tenant/feature/agent from the rules evaluated in C (header, baggage key,
# query parameter, host) or, from the first rule that needs Python, from ``slow.complete``, which also reads the
# usage of AI calls (the plain JSON case is read in C by ``_usage.usage_c`` when the answer is certain to be the same).
#
# Why one long file: HTTP is the protocol with the most to read (heads, three kinds of body, pairing, the rules
# evaluated in C, the AI fast path, id folding); kept whole so that it stays one pair with its twin, in the same order.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memchr, memcmp, memcpy, memset

from costmesh.native._bytes cimport (
    Buf, buf_add, buf_bytes, buf_set, eq_lower, find, find_byte, find_crlf2, lower, starts, strip,
)
from costmesh.native._usage cimport Usage, provider_c, usage_c

from .http import AI_HOST_MARKERS, AI_PATH_MARKERS
from ._usage import PROVIDERS as _PROVIDERS_T

DEF MAX_HEAD = 65536
DEF MAX_LINE = 1024
DEF MAX_REQ_BODY = 262144
DEF MAX_RESP_BODY = 8388608
DEF MAX_MARKERS = 32
# parser states of a direction
DEF S_HEAD = 0
DEF S_LEN = 1
DEF S_CSIZE = 2
DEF S_CDATA = 3
DEF S_CCRLF = 4
DEF S_TRAILER = 5
DEF S_CLOSE = 6
DEF S_DESYNC = 7

cdef int C_HTTP_REQ = _C["http_requests"], C_HTTP_RESP = _C["http_responses"]
cdef int C_UNPAIRED = _C["http_unpaired_responses"], C_UNANSWERED = _C["http_unanswered"], C_AI = _C["ai_calls"]
cdef int E_HEAD_LONG = _E["http_head_too_long"], E_CHUNK = _E["http_chunk"], E_HEADER = _E["http_header"]
cdef int E_CL = _E["http_content_length"], E_REQLINE = _E["http_request_line"], E_STATUS = _E["http_status_line"]
cdef int E_AI = _E["ai_body"]
# rule kinds as C ints: compared per request, so no Python object may stand in for them
cdef int SRC_HEADER = _SRC_HEADER, SRC_BAGGAGE = _SRC_BAGGAGE, SRC_QUERY = _SRC_QUERY, SRC_HOST = _SRC_HOST
cdef int SRC_PY = _SRC_PY
cdef tuple _PROVIDERS = _PROVIDERS_T


# ---- head helpers (twins in http.py and _http_py.py) ------------------------------------------------------------------

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
    """Same as ``http.baggage_value``: first item whose key (trimmed) is ``key``; its value up to ``;``, trimmed."""
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
    """Same as ``http.query_value``: the first ``key=value`` pair of the query string (no decoding)."""
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


cdef inline Py_ssize_t _crlf(const char* p, Py_ssize_t s, Py_ssize_t n) noexcept nogil:
    """Offset of the first ``\\r\\n`` in ``p[s:n]``, or -1."""
    while s + 1 < n:
        s = find_byte(p, s, n - 1, 13)
        if s < 0:
            return -1
        if p[s + 1] == 10:
            return s
        s += 1
    return -1


# ---- which requests are AI calls (twin: http.is_ai_request) --------------------------------------------------------

cdef list _AI_PATHS = list(AI_PATH_MARKERS)
cdef list _AI_HOSTS = list(AI_HOST_MARKERS)
cdef const char* AI_PATHS_C[MAX_MARKERS]
cdef Py_ssize_t AI_PATHS_LEN[MAX_MARKERS]
cdef const char* AI_HOSTS_C[MAX_MARKERS]
cdef Py_ssize_t AI_HOSTS_LEN[MAX_MARKERS]
cdef int N_AI_PATHS = min(len(_AI_PATHS), MAX_MARKERS)
cdef int N_AI_HOSTS = min(len(_AI_HOSTS), MAX_MARKERS)
# per first byte, the markers that start with it (bit j: marker j): one table look-up per byte of a host or path
cdef uint32_t AI_PATHS_FIRST[256]
cdef uint32_t AI_HOSTS_FIRST[256]
memset(AI_PATHS_FIRST, 0, sizeof(AI_PATHS_FIRST))
memset(AI_HOSTS_FIRST, 0, sizeof(AI_HOSTS_FIRST))
for _j in range(N_AI_PATHS):  # the bytes stay alive in the module-level lists
    AI_PATHS_C[_j] = PyBytes_AS_STRING(_AI_PATHS[_j])
    AI_PATHS_LEN[_j] = len(_AI_PATHS[_j])
    assert AI_PATHS_LEN[_j] > 0
    AI_PATHS_FIRST[<uint8_t>AI_PATHS_C[_j][0]] |= 1u << _j
for _j in range(N_AI_HOSTS):
    assert _AI_HOSTS[_j] == _AI_HOSTS[_j].lower() and len(_AI_HOSTS[_j]) > 0
    AI_HOSTS_C[_j] = PyBytes_AS_STRING(_AI_HOSTS[_j])
    AI_HOSTS_LEN[_j] = len(_AI_HOSTS[_j])
    AI_HOSTS_FIRST[<uint8_t>AI_HOSTS_C[_j][0]] |= 1u << _j


cdef inline bint _any_marker(const char* s, Py_ssize_t n, const uint32_t* first, const char** markers,
                             const Py_ssize_t* lens, bint fold) noexcept nogil:
    """Whether one of the markers occurs in ``s[:n]`` (``fold``: ASCII case-insensitively; markers are lower case)."""
    cdef Py_ssize_t i, k, m
    cdef uint32_t bits
    cdef int j
    cdef const char* mk
    for i in range(n):
        bits = first[<uint8_t>(lower(s[i]) if fold else s[i])]
        j = 0
        while bits:
            m = lens[j]
            if bits & 1 and m <= n - i:
                mk = markers[j]
                k = 1  # byte 0 matched; compared inline, as most candidates differ within a byte or two
                if fold:
                    while k < m and lower(s[i + k]) == mk[k]:
                        k += 1
                else:
                    while k < m and s[i + k] == mk[k]:
                        k += 1
                if k == m:
                    return True
            bits >>= 1
            j += 1
    return False


cdef bint http_is_ai(const char* target, Py_ssize_t tn, const char* host, Py_ssize_t hn) noexcept:
    return _any_marker(host, hn, AI_HOSTS_FIRST, AI_HOSTS_C, AI_HOSTS_LEN, True) or \
        _any_marker(target, tn, AI_PATHS_FIRST, AI_PATHS_C, AI_PATHS_LEN, False)


# ---- the rules evaluated in C ------------------------------------------------------------------------------------

cdef int http_init(Engine eng) except -1:
    """The extraction rules the engine evaluates in C, from the caller's rule program (``eng.rules``: ``order``,
    ``kinds``, ``keys``, ``ai_only``, ``needles``, ``has_body_rules``), and what AI bodies may skip."""
    cdef int i, t
    rs = eng.rules
    eng.ai_body_skip = []
    for t in range(3):
        row = []
        for pos in range(len(rs.order[t]) + 1):
            needles = []
            for i in rs.order[t][pos:]:
                if not rs.http_rule_applies(i, True):
                    continue
                # a body rule whose key part only a \\u escape can spell otherwise (see http_ai_ids_none)
                nd = rs.needles[i]
                if rs.rules[i].source != "body" or any(c in nd[1:-1] for c in b'\\/"') or min(nd) < 32:
                    needles = None
                    break
                needles.append(nd)
            row.append(tuple(needles) if needles is not None else None)
        eng.ai_body_skip.append(row)
    eng.nrules = len(rs.rules)
    n = max(1, eng.nrules)
    eng.kind = <int*>calloc(n, sizeof(int))
    eng.http_ok = <bint*>calloc(n, sizeof(bint))
    eng.ai_only = <bint*>calloc(n, sizeof(bint))
    eng.key = <const char**>calloc(n, sizeof(char*))
    eng.keylen = <Py_ssize_t*>calloc(n, sizeof(Py_ssize_t))
    eng.rulev = <Span*>calloc(n, sizeof(Span))
    eng.header_rules = <int*>calloc(n, sizeof(int))
    eng._keys = list(rs.keys)
    eng.nheader_rules = 0
    eng.header_rule_lens = 0
    eng.any_baggage = False
    for i in range(eng.nrules):
        eng.kind[i] = rs.kinds[i]
        eng.http_ok[i] = rs.rules[i].source not in ("pg_database", "pg_user", "sni")
        eng.ai_only[i] = rs.ai_only[i]
        eng.key[i] = PyBytes_AS_STRING(eng._keys[i])
        eng.keylen[i] = len(eng._keys[i])
        if eng.kind[i] == SRC_HEADER:
            eng.header_rules[eng.nheader_rules] = i
            eng.nheader_rules += 1
            eng.header_rule_lens |= 1ULL << min(eng.keylen[i], 63)
    for t in range(3):
        eng.norder[t] = len(rs.order[t])
        eng.order[t] = <int*>calloc(max(1, eng.norder[t]), sizeof(int))
        for i in range(eng.norder[t]):
            eng.order[t][i] = rs.order[t][i]
    eng.has_body_rules = rs.has_body_rules
    return 0


cdef void http_free(Engine eng) noexcept:
    cdef int t
    free(eng.kind)
    free(eng.http_ok)
    free(eng.ai_only)
    free(eng.key)
    free(eng.keylen)
    free(eng.rulev)
    free(eng.header_rules)
    for t in range(3):
        free(eng.order[t])


cdef int http_ids(Engine eng, Req* req, const char* head, Py_ssize_t hn, const char* target,
                  Py_ssize_t tn) except -1:
    cdef int t, pos, i, k
    cdef Span v
    cdef bint any_start = False
    for t in range(3):
        for pos in range(eng.norder[t]):
            i = eng.order[t][pos]
            if not eng.http_ok[i] or (eng.ai_only[i] and not req.ai):
                continue
            k = eng.kind[i]
            if k == SRC_PY:
                req.starts[t] = pos
                any_start = True
                break
            v.p = NULL
            v.n = 0
            if k == SRC_HEADER:
                v = eng.rulev[i]
            elif k == SRC_BAGGAGE:
                if eng.hv_baggage.p != NULL:
                    _baggage_value(eng.hv_baggage.p, eng.hv_baggage.n, eng.key[i], eng.keylen[i], &v)
            elif k == SRC_QUERY:
                _query_value(target, tn, eng.key[i], eng.keylen[i], &v)
            elif k == SRC_HOST:
                v = eng.hv_host
            if v.p != NULL and v.n > 0:
                buf_set(&req.ids[t], v.p, v.n if v.n < MAX_VALUE else MAX_VALUE)
                req.rule[t] = i
                break
    if not any_start:
        req.capture = req.ai
        return 0
    if req.ai or eng.has_body_rules:
        req.capture = True
        return 0
    found = eng.slow.resolve(PyBytes_FromStringAndSize(head, hn), None,
                              (req.starts[0], req.starts[1], req.starts[2]), False)
    http_take_ids(req, found)
    for t in range(3):
        req.starts[t] = -1
    return 0


cdef int http_take_ids(Req* req, found) except -1:
    cdef int t
    cdef bytes v
    for t in range(3):
        if req.starts[t] >= 0:
            v, rule = found[t]
            buf_set(&req.ids[t], PyBytes_AS_STRING(v), len(v))
            req.rule[t] = rule
    return 0


cdef bint http_ai_ids_none(Engine eng, Req* req) except -1:
    """True when ``RuleSet.resolve`` is certain to find nothing for this AI request's open targets: only body rules
    are left for them, and the body holds none of their first keys as JSON text (``"key"``), so no top-level key
    of the decoded body is one of them (an empty or non-JSON body gives nothing either). The keys have no ``/``,
    ``"``, ``\\`` or control character, so only a ``\\u`` escape could spell one otherwise: a body with ``\\u``
    goes to Python. (Python itself skips the decoding only for bodies without any backslash; the answer is the
    same, and chat prompts are full of ``\\n``.)"""
    cdef int t
    cdef bytes nd
    cdef const char* body = req.body.p
    cdef Py_ssize_t bn = req.body.n
    cdef bint checked = False
    for t in range(3):
        if req.starts[t] < 0:
            continue
        needles = eng.ai_body_skip[t][req.starts[t]]
        if needles is None:
            return False
        if bn > 0:
            if not checked:
                if find(body, bn, b"\\u", 2) >= 0:
                    return False
                checked = True
            for nd in needles:
                if find(body, bn, PyBytes_AS_STRING(nd), len(nd)) >= 0:
                    return False
    return True


# ---- the stream parser --------------------------------------------------------------------------------------------

cdef int http_data(Engine eng, Flow* fl, int side, int64_t ts, const char* data, Py_ssize_t n) except -1:
    cdef Dir* d = &fl.dirs[side]
    cdef bint client = side == fl.cside
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t end, old, take, nl, ln, i, hl
    cdef Span line0
    cdef int st
    cdef const char* line
    cdef const char* lp
    cdef int64_t size
    cdef char ch
    while pos < n and fl.proto == P_HTTP:
        st = d.state
        if st == S_HEAD:
            if d.buf.n == 0:
                while pos + 1 < n and data[pos] == 13 and data[pos + 1] == 10:
                    pos += 2
                if pos >= n:
                    return 0
                hl = http_scan_head(eng, data + pos, n - pos, &line0)
                if hl >= 0:
                    http_head(eng, fl, side, ts, data + pos, hl, line0)
                    pos += hl
                    continue
                if n - pos > MAX_HEAD:
                    eng.errors[E_HEAD_LONG] += 1
                    eng._desync(fl, side)
                    return 0
                buf_add(&d.buf, data + pos, n - pos)
                return 0
            old = d.buf.n
            buf_add(&d.buf, data + pos, n - pos)
            end = find_crlf2(d.buf.p, old - 3 if old > 3 else 0, d.buf.n)
            if end < 0:
                if d.buf.n > MAX_HEAD:
                    eng.errors[E_HEAD_LONG] += 1
                    eng._desync(fl, side)
                return 0
            pos += end + 4 - old
            # the head is copied out before the buffer is reused (the head parser may append to buffers)
            head = PyBytes_FromStringAndSize(d.buf.p, end + 4)
            d.buf.n = 0
            hl = http_scan_head(eng, PyBytes_AS_STRING(head), end + 4, &line0)
            http_head(eng, fl, side, ts, PyBytes_AS_STRING(head), hl, line0)
        elif st == S_LEN or st == S_CDATA or st == S_CCRLF:
            take = d.remaining if d.remaining < n - pos else n - pos
            if st != S_CCRLF:
                http_body(fl, side, data + pos, take)
            http_bytes(fl, side, take)
            d.remaining -= take
            pos += take
            if d.remaining == 0:
                if st == S_LEN:
                    http_body_done(eng, fl, side, ts)
                elif st == S_CDATA:
                    d.state = S_CCRLF
                    d.remaining = 2
                else:
                    d.state = S_CSIZE
        elif st == S_CSIZE or st == S_TRAILER:
            lp = <const char*>memchr(data + pos, 10, n - pos)
            if lp == NULL:
                buf_add(&d.buf, data + pos, n - pos)
                http_bytes(fl, side, n - pos)
                pos = n
                if d.buf.n > MAX_LINE:
                    eng.errors[E_CHUNK] += 1
                    eng._desync(fl, side)
                return 0
            nl = lp - data
            buf_add(&d.buf, data + pos, nl - pos)
            http_bytes(fl, side, nl + 1 - pos)
            pos = nl + 1
            line = d.buf.p
            ln = d.buf.n
            while ln > 0 and line[ln - 1] == 13:
                ln -= 1
            d.buf.n = 0
            if st == S_TRAILER:
                if ln == 0:
                    http_body_done(eng, fl, side, ts)
                continue
            lp = <const char*>memchr(line, 59, ln) if ln else NULL
            if lp != NULL:
                ln = lp - line
            strip(&line, &ln)
            size = 0
            if ln == 0 or ln > 15:
                size = -1
            else:
                for i in range(ln):
                    ch = line[i]
                    if 48 <= ch <= 57:
                        size = size * 16 + (ch - 48)
                    elif 97 <= ch <= 102:
                        size = size * 16 + (ch - 87)
                    elif 65 <= ch <= 70:
                        size = size * 16 + (ch - 55)
                    else:
                        size = -1
                        break
            if size < 0:
                eng.errors[E_CHUNK] += 1
                eng._desync(fl, side)
                return 0
            if size == 0:
                d.state = S_TRAILER
            else:
                d.state = S_CDATA
                d.remaining = size
        elif st == S_CLOSE:
            http_body(fl, side, data + pos, n - pos)
            http_bytes(fl, side, n - pos)
            return 0
        else:
            if (client and http_method_start(data + pos, n - pos)) or \
                    (not client and starts(data + pos, n - pos, b"HTTP/1.", 7)):
                d.state = S_HEAD
                continue
            return 0
    return 0


cdef inline void http_bytes(Flow* fl, int side, Py_ssize_t n) noexcept:
    cdef Req* r = fl.dirs[side].req
    if r != NULL:
        if side == fl.cside:
            r.bytes_out += n
        else:
            r.bytes_in += n


cdef int http_body(Flow* fl, int side, const char* chunk, Py_ssize_t n) except -1:
    cdef Req* req = fl.dirs[side].req
    cdef Py_ssize_t room
    if req == NULL or not req.capture:
        return 0
    if side == fl.cside:
        room = MAX_REQ_BODY - req.body.n
        if room > 0:
            buf_add(&req.body, chunk, n if n < room else room)
    elif req.ai:
        room = MAX_RESP_BODY - req.resp_body.n
        if room > 0:
            buf_add(&req.resp_body, chunk, n if n < room else room)
    return 0


cdef int http_body_done(Engine eng, Flow* fl, int side, int64_t ts) except -1:
    cdef Dir* d = &fl.dirs[side]
    d.state = S_HEAD
    if side == fl.cside:
        d.req = NULL
    else:
        http_response_done(eng, fl, ts)
    return 0


cdef Py_ssize_t http_scan_head(Engine eng, const char* head, Py_ssize_t n, Span* line0) noexcept:
    """One pass over a head that starts at ``head``: the request/status line and the first value of every header
    the engine reads, up to the first empty line. Returns the head's length (through its ``\\r\\n\\r\\n``) or -1
    when ``head[:n]`` holds no complete head (then nothing is counted). Lines end at ``\\r\\n``; the first
    empty line is where ``\\r\\n\\r\\n`` first occurs, so this finds the same end as ``find_crlf2``."""
    cdef Py_ssize_t s, e, nn, vn
    cdef const char* p
    cdef const char* colon
    cdef const char* v
    cdef Py_ssize_t j
    cdef int r
    cdef int bad = 0
    eng.hv_host.p = eng.hv_cl.p = eng.hv_te.p = eng.hv_ct.p = eng.hv_ce.p = eng.hv_baggage.p = NULL
    for j in range(eng.nheader_rules):
        eng.rulev[eng.header_rules[j]].p = NULL
    e = _crlf(head, 0, n)
    if e < 0:
        return -1
    line0.p = head
    line0.n = e
    s = e + 2
    while True:
        e = _crlf(head, s, n)
        if e < 0:
            return -1
        if e == s:
            eng.errors[E_HEADER] += bad
            return s + 2
        p = head + s
        nn = e - s
        s = e + 2
        if p[0] == 32 or p[0] == 9:
            continue
        j = find_byte(p, 0, nn, 58)
        if j <= 0:
            bad += 1
            continue
        vn = nn - j - 1
        v = p + j + 1
        nn = j
        strip(&v, &vn)
        if nn == 4:
            if eng.hv_host.p == NULL and eq_lower(p, nn, b"host", 4):
                eng.hv_host.p = v
                eng.hv_host.n = vn
        elif nn == 14:
            if eng.hv_cl.p == NULL and eq_lower(p, nn, b"content-length", 14):
                eng.hv_cl.p = v
                eng.hv_cl.n = vn
        elif nn == 17:
            if eng.hv_te.p == NULL and eq_lower(p, nn, b"transfer-encoding", 17):
                eng.hv_te.p = v
                eng.hv_te.n = vn
        elif nn == 12:
            if eng.hv_ct.p == NULL and eq_lower(p, nn, b"content-type", 12):
                eng.hv_ct.p = v
                eng.hv_ct.n = vn
        elif nn == 16:
            if eng.hv_ce.p == NULL and eq_lower(p, nn, b"content-encoding", 16):
                eng.hv_ce.p = v
                eng.hv_ce.n = vn
        elif nn == 7:
            if eng.hv_baggage.p == NULL and eq_lower(p, nn, b"baggage", 7):
                eng.hv_baggage.p = v
                eng.hv_baggage.n = vn
        if (eng.header_rule_lens >> (nn if nn < 63 else 63)) & 1:  # a header rule's name is this long
            for j in range(eng.nheader_rules):
                r = eng.header_rules[j]
                if eng.rulev[r].p == NULL and eq_lower(p, nn, eng.key[r], eng.keylen[r]):
                    eng.rulev[r].p = v
                    eng.rulev[r].n = vn


cdef int http_head(Engine eng, Flow* fl, int side, int64_t ts, const char* head, Py_ssize_t hn, Span line) except -1:
    """A complete head that ``http_scan_head`` has just read (its header values are in ``hv_*``/``rulev``)."""
    cdef Dir* d = &fl.dirs[side]
    cdef bint chunked
    cdef int64_t cl = -1
    cdef Py_ssize_t sp1, sp2, i, tn
    cdef const char* hit
    cdef Req* req
    cdef int status
    cdef const char* target
    chunked = eng.hv_te.p != NULL and _contains_lower(eng.hv_te.p, eng.hv_te.n, b"chunked", 7)
    if eng.hv_cl.p != NULL:
        cl = _digits(eng.hv_cl.p, eng.hv_cl.n)
        if cl < 0:
            eng.errors[E_CL] += 1
    if side == fl.cside:
        hit = <const char*>memchr(line.p, 32, line.n)
        sp1 = hit - line.p if hit != NULL else -1
        sp2 = -1
        for i in range(line.n - 1, -1, -1):
            if line.p[i] == 32:
                sp2 = i
                break
        if sp1 <= 0 or sp1 > 16 or sp2 <= sp1 + 1 or not starts(line.p + sp2 + 1, line.n - sp2 - 1,
                                                                 b"HTTP/1.", 7):
            eng.errors[E_REQLINE] += 1
            eng._desync(fl, side)
            return 0
        for i in range(sp1):
            if not (65 <= line.p[i] <= 90):
                eng.errors[E_REQLINE] += 1
                eng._desync(fl, side)
                return 0
        eng.counters[C_HTTP_REQ] += 1
        target = line.p + sp1 + 1
        tn = sp2 - sp1 - 1
        if fl.npend >= MAX_PENDING:
            req = NULL
            # the twin still builds the request (and may evaluate rules) but never reports it
        else:
            req = req_new(eng, ts)
            buf_set(&req.op, line.p, sp2 if sp2 < MAX_OP else MAX_OP)
            if eng.collapse_ids:
                req.op.n = _collapse(req.op.p, req.op.n)
            if eng.hv_host.p != NULL:
                buf_set(&req.host, eng.hv_host.p, eng.hv_host.n if eng.hv_host.n < MAX_VALUE else MAX_VALUE)
            req.method_head = sp1 == 4 and memcmp(line.p, b"HEAD", 4) == 0
            req.method_connect = sp1 == 7 and memcmp(line.p, b"CONNECT", 7) == 0
            req.bytes_out = hn
            req.ai = http_is_ai(target, tn, req.host.p, req.host.n)
            try:
                http_ids(eng, req, head, hn, target, tn)
            except BaseException:
                req_recycle(eng, req)
                raise
            if req.capture:
                buf_set(&req.head, head, hn)
            if req.ai:
                buf_set(&req.target, target, tn)
            req_push(fl, req)
        d.req = req
        if chunked:
            d.state = S_CSIZE
        elif cl > 0:
            d.state = S_LEN
            d.remaining = cl
        else:
            d.req = NULL
        return 0
    # response
    if not (line.n >= 12 and starts(line.p, line.n, b"HTTP/1.", 7) and line.p[8] == 32
            and 48 <= line.p[9] <= 57 and 48 <= line.p[10] <= 57 and 48 <= line.p[11] <= 57):
        eng.errors[E_STATUS] += 1
        eng._desync(fl, side)
        return 0
    status = (line.p[9] - 48) * 100 + (line.p[10] - 48) * 10 + (line.p[11] - 48)
    eng.counters[C_HTTP_RESP] += 1
    req = fl.pend_head
    if req == NULL:
        eng.counters[C_UNPAIRED] += 1
    if 100 <= status < 200:
        if status == 101:
            fl.proto = P_OPAQUE
        return 0
    d.req = req
    if req != NULL:
        req.status = status
        req.bytes_in += hn
        if eng.hv_ct.p != NULL:
            buf_set(&req.ct, eng.hv_ct.p, eng.hv_ct.n)
        else:
            req.ct.n = 0
        if eng.hv_ce.p != NULL:
            buf_set(&req.ce, eng.hv_ce.p, eng.hv_ce.n)
        else:
            req.ce.n = 0
    if req != NULL and req.method_connect and 200 <= status < 300:
        # a proxy tunnel from here on (egress proxies to AI APIs): look for the TLS ClientHello inside it
        http_response_done(eng, fl, ts)
        http_tunnel(eng, fl)
        return 0
    if (req != NULL and req.method_head) or status == 204 or status == 304:
        http_response_done(eng, fl, ts)
    elif chunked:
        d.state = S_CSIZE
    elif cl >= 0:
        if cl == 0:
            http_response_done(eng, fl, ts)
        else:
            d.state = S_LEN
            d.remaining = cl
    else:
        d.state = S_CLOSE
    return 0


cdef int http_tunnel(Engine eng, Flow* fl) except -1:
    """After ``CONNECT`` succeeded the flow carries another protocol: recognise it afresh."""
    cdef int t
    eng._finish(fl)
    req_release_all(eng, fl)
    fl.proto = P_UNKNOWN
    fl.tries = 0
    for t in range(2):
        fl.dirs[t].buf.n = 0
        fl.dirs[t].state = 0
        fl.dirs[t].remaining = 0
        fl.dirs[t].req = NULL
    return 0


cdef int http_response_done(Engine eng, Flow* fl, int64_t ts) except -1:
    cdef Dir* srv = &fl.dirs[1 - fl.cside]
    cdef Dir* cli = &fl.dirs[fl.cside]
    cdef Req* req = srv.req
    cdef Req* cur
    srv.req = NULL
    if req == NULL:
        return 0
    if fl.pend_head == req:
        req_pop(fl)
    else:  # never expected (the response belongs to the oldest request), but the list must stay sound
        cur = fl.pend_head
        while cur != NULL and cur.next != req:
            cur = cur.next
        if cur != NULL:
            cur.next = req.next
            if fl.pend_tail == req:
                fl.pend_tail = cur
            fl.npend -= 1
        req.next = NULL
    if cli.req == req:
        cli.req = NULL
    try:
        http_call(eng, fl, req, ts, True)
    finally:
        req_recycle(eng, req)
    return 0


cdef int http_call(Engine eng, Flow* fl, Req* req, int64_t ts, bint answered) except -1:
    cdef int64_t vals[9]
    cdef bytes provider = b""
    cdef bytes model = b""
    cdef Usage u
    cdef int pi, t
    cdef int64_t start
    memset(vals, 0, sizeof(vals))
    if req.capture and req.ai and answered and http_ai_ids_none(eng, req):
        # AI call whose deferred rules cannot match: read a plain JSON usage body in C when that is certain to
        # give what Slow.complete gives (usage_c says so, or we take the Python path below)
        pi = provider_c(req.target.p, req.target.n, req.host.p, req.host.n)
        if pi >= 0 and usage_c(req.resp_body.p, req.resp_body.n, req.ct.p, req.ct.n, req.ce.n, &u):
            for t in range(3):
                if req.starts[t] >= 0:  # what http_take_ids makes of RuleSet.resolve's (b"", -1)
                    req.ids[t].n = 0
                    req.rule[t] = -1
            eng.counters[C_AI] += 1
            vals[0] = 1
            vals[1] = 1 if req.status >= 500 else 0
            vals[2] = req.bytes_in
            vals[3] = req.bytes_out
            start = flow_served_from(fl, req.ts, ts)
            vals[4] = ts - start if ts > start else 0
            vals[5] = u.tokens[0]
            vals[6] = u.tokens[1]
            vals[7] = u.tokens[2]
            vals[8] = u.tokens[3]
            provider = _PROVIDERS[pi]
            return agg(eng, req.ts, fl, R_HTTP, req.op.p, req.op.n, req.host.p, req.host.n, req.ids, req.rule,
                             PyBytes_AS_STRING(provider), len(provider), req.resp_body.p + u.model_at,
                             u.model_len, vals)
    if req.capture:  # one call settles the deferred rules and reads the AI usage
        starts = None
        if req.starts[0] >= 0 or req.starts[1] >= 0 or req.starts[2] >= 0:
            starts = (req.starts[0], req.starts[1], req.starts[2])
        found, r = eng.slow.complete(buf_bytes(&req.head), buf_bytes(&req.body), starts, req.ai,
                                      buf_bytes(&req.target), buf_bytes(&req.host), buf_bytes(&req.resp_body),
                                      buf_bytes(&req.ct), buf_bytes(&req.ce), answered)
        if found is not None:
            http_take_ids(req, found)
        if req.ai:
            eng.counters[C_AI] += 1
            if r is None:
                eng.errors[E_AI] += 1
            else:
                provider = r[0]
                model = r[1]
                vals[5] = r[2]
                vals[6] = r[3]
                vals[7] = r[4]
                vals[8] = r[5]
    vals[0] = 1
    vals[1] = 1 if req.status >= 500 else 0
    vals[2] = req.bytes_in
    vals[3] = req.bytes_out
    if answered:
        start = flow_served_from(fl, req.ts, ts)
        vals[4] = ts - start if ts > start else 0
    return agg(eng, req.ts, fl, R_HTTP, req.op.p, req.op.n, req.host.p, req.host.n, req.ids, req.rule,
                     PyBytes_AS_STRING(provider), len(provider), PyBytes_AS_STRING(model), len(model), vals)



cdef int http_fin(Engine eng, Flow* fl, int side, int64_t ts) except -1:
    """The server closed its direction: a response delimited by the close is complete."""
    cdef Dir* d = &fl.dirs[side]
    if side != fl.cside and d.state == S_CLOSE:
        http_response_done(eng, fl, ts)
        d.state = S_HEAD
    return 0


cdef int http_finish(Engine eng, Flow* fl) except -1:
    """The flow ended: a close-delimited response is complete, requests still waiting are counted unanswered and
    recorded without an answer."""
    cdef Dir* srv = &fl.dirs[1 - fl.cside]
    cdef Req* req
    if srv.state == S_CLOSE and srv.req != NULL:
        http_response_done(eng, fl, fl.last_ts)
    while fl.pend_head != NULL:
        req = req_pop(fl)
        if fl.dirs[0].req == req:
            fl.dirs[0].req = NULL
        if fl.dirs[1].req == req:
            fl.dirs[1].req = NULL
        eng.counters[C_UNANSWERED] += 1
        try:
            http_call(eng, fl, req, fl.last_ts, False)
        finally:
            req_recycle(eng, req)
    return 0


cdef void http_desync(Flow* fl, int side) noexcept:
    """Bytes were lost: wait for a segment that starts with a message head (a request's current body is lost)."""
    fl.dirs[side].state = S_DESYNC
    if side == fl.cside:
        fl.dirs[side].req = NULL


# ---- id folding (twin: http.collapse_http_op) ---------------------------------------------------------------------

cdef const char* NIL_UUID = b"00000000-0000-0000-0000-000000000000"


cdef inline bint _id_end(char c) noexcept nogil:
    return c == 47 or c == 59 or c == 35 or c == 32  # / ; # and space (the only \\s in printable ASCII)


cdef inline bint _hex(char c) noexcept nogil:
    return 48 <= c <= 57 or 97 <= c <= 102 or 65 <= c <= 70


cdef inline bint _uuid_at(const char* p) noexcept nogil:
    """``p[:36]`` is 8-4-4-4-12 hex digits (the caller checked there are 36 bytes)."""
    cdef int i
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            if p[i] != 45:
                return False
        elif not _hex(p[i]):
            return False
    return True


cdef Py_ssize_t _collapse(char* p, Py_ssize_t n) noexcept nogil:
    """Twin of ``http.collapse_http_op`` (the redactor's ``shapes.cache_key`` for HTTP), in place; returns the new
    length. Every write lands at or before the byte being read, so one buffer suffices."""
    cdef Py_ssize_t i, j, w, pe
    cdef const char* q
    cdef char c
    cdef bint foldable = False
    for i in range(n):
        if <uint8_t>p[i] < 32 or <uint8_t>p[i] > 126:
            return n
        if <uint8_t>(p[i] - 48) < 10 or p[i] == 63 or p[i] == 45:
            foldable = True
    if not foldable:  # no digit, "?" or "-": no number, UUID (even one of letters only) or query in it
        return n
    q = <const char*>memchr(p, 63, n)
    pe = (q - p) if q != NULL else n
    i = 0
    w = 0
    while i < pe:
        c = p[i]
        p[w] = c
        w += 1
        i += 1
        if c != 47:
            continue
        j = i
        while j < pe and 48 <= p[j] <= 57:
            j += 1
        if j > i and (j == pe or _id_end(p[j])):
            if j - i == 36:
                memcpy(p + w, NIL_UUID, 36)
                w += 36
            else:
                p[w] = 48
                w += 1
            i = j
        elif pe - i >= 36 and _uuid_at(p + i) and (i + 36 == pe or _id_end(p[i + 36])):
            memcpy(p + w, NIL_UUID, 36)
            w += 36
            i += 36
    if q == NULL:
        return w
    p[w] = 63
    w += 1
    i = pe + 1
    while i < n:
        c = p[i]
        if c == 61:
            i += 1
            while i < n and not (p[i] == 38 or p[i] == 59 or p[i] == 35 or p[i] == 32):
                i += 1
            continue
        p[w] = c
        w += 1
        i += 1
    return w


def collapse_http_op(bytes op):
    """``_collapse`` for tests (the engine calls it in C)."""
    cdef bytearray b = bytearray(op)
    cdef Py_ssize_t n = _collapse(PyByteArray_AS_STRING(b), len(b))
    return bytes(b[:n])
