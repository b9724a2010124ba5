"""Pure-Python twin of ``_http.pxi``: HTTP/1.1 per direction, requests paired with responses.

A stream parser per direction (``http_data``): heads, bodies by Content-Length, chunked or until close (SSE),
pipelining, 100-continue, CONNECT tunnels (the flow is recognised afresh). A completed call (``http_call``) takes its
tenant/feature/agent from the rules the engine evaluates itself (header, baggage key, query parameter, host) or, from
the first rule that needs Python, from ``slow.complete``, which also reads the usage of AI calls. The compiled twin
does the same steps in the same order; the parser tests require identical output.
"""

from __future__ import annotations

from ._flows_py import MAX_OP, MAX_PENDING, P_HTTP, P_OPAQUE, P_UNKNOWN, Flow, Req, flow_served_from
from ._records_py import agg
from .http import HTTP_METHODS, baggage_value, collapse_http_op, query_value
from .kinds import MAX_VALUE, R_HTTP, SRC_BAGGAGE, SRC_HEADER, SRC_HOST, SRC_PY, SRC_QUERY, C, E

MAX_HEAD = 64 * 1024
MAX_LINE = 1024
MAX_REQ_BODY = 256 * 1024
MAX_RESP_BODY = 8 << 20

_HEX = frozenset(b"0123456789abcdefABCDEF")

# parser states of a direction
S_HEAD, S_LEN, S_CSIZE, S_CDATA, S_CCRLF, S_TRAILER, S_CLOSE, S_DESYNC = range(8)


def _strip(b: bytes) -> bytes:
    return b.strip(b" \t")


def _digits(v: bytes) -> int:
    if not v or len(v) > 18 or not v.isdigit():
        return -1
    return int(v)


def http_data(eng, fl: Flow, side: int, ts: int, data: bytes) -> None:
    d = fl.dirs[side]
    client = side == fl.cside
    n = len(data)
    pos = 0
    while pos < n and fl.proto == P_HTTP:
        st = d.state
        if st == S_HEAD:
            if not d.buf:
                while pos + 1 < n and data[pos] == 13 and data[pos + 1] == 10:
                    pos += 2
                if pos >= n:
                    return
                end = data.find(b"\r\n\r\n", pos)
                if end >= 0:
                    head = data[pos : end + 4]
                    pos = end + 4
                    http_head(eng, fl, side, ts, head)
                    continue
                if n - pos > MAX_HEAD:
                    eng.errors[E["http_head_too_long"]] += 1
                    eng._desync(fl, side)
                    return
                d.buf += data[pos:]
                return
            old = len(d.buf)
            d.buf += data[pos:]
            end = d.buf.find(b"\r\n\r\n", max(0, old - 3))
            if end < 0:
                if len(d.buf) > MAX_HEAD:
                    eng.errors[E["http_head_too_long"]] += 1
                    eng._desync(fl, side)
                return
            head = bytes(d.buf[: end + 4])
            pos += end + 4 - old
            d.buf.clear()
            http_head(eng, fl, side, ts, head)
        elif st in (S_LEN, S_CDATA, S_CCRLF):
            take = min(d.remaining, n - pos)
            if st != S_CCRLF:
                http_body(fl, side, data[pos : pos + take])
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
        elif st in (S_CSIZE, S_TRAILER):
            nl = data.find(b"\n", pos)
            if nl < 0:
                d.buf += data[pos:]
                http_bytes(fl, side, n - pos)
                pos = n
                if len(d.buf) > MAX_LINE:
                    eng.errors[E["http_chunk"]] += 1
                    eng._desync(fl, side)
                return
            d.buf += data[pos:nl]
            http_bytes(fl, side, nl + 1 - pos)
            pos = nl + 1
            line = bytes(d.buf).rstrip(b"\r")
            d.buf.clear()
            if st == S_TRAILER:
                if not line:
                    http_body_done(eng, fl, side, ts)
                continue
            size_text = _strip(line.split(b";", 1)[0])
            if size_text and len(size_text) <= 15 and all(ch in _HEX for ch in size_text):
                size = int(size_text, 16)
            else:
                eng.errors[E["http_chunk"]] += 1
                eng._desync(fl, side)
                return
            if size == 0:
                d.state = S_TRAILER
            else:
                d.state = S_CDATA
                d.remaining = size
        elif st == S_CLOSE:
            http_body(fl, side, data[pos:])
            http_bytes(fl, side, n - pos)
            return
        else:  # S_DESYNC: wait for a segment that starts with a message head
            rest = data[pos:]
            if (client and rest.startswith(HTTP_METHODS)) or (not client and rest.startswith(b"HTTP/1.")):
                d.state = S_HEAD
                continue
            return


def http_bytes(fl, side, n) -> None:
    d = fl.dirs[side]
    if d.req is not None:
        if side == fl.cside:
            d.req.bytes_out += n
        else:
            d.req.bytes_in += n


def http_body(fl, side, chunk) -> None:
    req = fl.dirs[side].req
    if req is None or not req.capture:
        return
    if side == fl.cside:
        room = MAX_REQ_BODY - len(req.body)
        if room > 0:
            req.body += chunk[:room]
    elif req.ai:
        room = MAX_RESP_BODY - len(req.resp_body)
        if room > 0:
            req.resp_body += chunk[:room]


def http_body_done(eng, fl, side, ts) -> None:
    d = fl.dirs[side]
    d.state = S_HEAD
    if side == fl.cside:
        d.req = None
    else:
        http_response_done(eng, fl, ts)


def http_parse_headers(eng, head: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    lines = head[: len(head) - 4].split(b"\r\n")
    first: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line or line[0] in (32, 9):
            continue
        colon = line.find(b":")
        if colon <= 0:
            eng.errors[E["http_header"]] += 1
            continue
        name = line[:colon].lower()
        if name not in first:
            first[name] = _strip(line[colon + 1 :])
    return lines, first


def http_head(eng, fl: Flow, side: int, ts: int, head: bytes) -> None:
    d = fl.dirs[side]
    lines, hdr = http_parse_headers(eng, head)
    line = lines[0]
    te = hdr.get(b"transfer-encoding")
    chunked = te is not None and b"chunked" in te.lower()
    cl = -1
    if b"content-length" in hdr:
        cl = _digits(hdr[b"content-length"])
        if cl < 0:
            eng.errors[E["http_content_length"]] += 1
    if side == fl.cside:
        sp1 = line.find(b" ")
        sp2 = line.rfind(b" ")
        method = line[:sp1] if sp1 > 0 else b""
        if (
            sp1 <= 0
            or sp1 > 16
            or sp2 <= sp1 + 1
            or not line[sp2 + 1 :].startswith(b"HTTP/1.")
            or not all(65 <= ch <= 90 for ch in method)
        ):
            eng.errors[E["http_request_line"]] += 1
            eng._desync(fl, side)
            return
        target = line[sp1 + 1 : sp2]
        eng.counters[C["http_requests"]] += 1
        op = (method + b" " + target)[:MAX_OP]
        req = Req(ts, collapse_http_op(op) if eng.collapse_ids else op)
        req.target = target
        req.host = hdr.get(b"host", b"")[:MAX_VALUE]
        req.method_head = method == b"HEAD"
        req.method_connect = method == b"CONNECT"
        req.bytes_out = len(head)
        req.ai = eng.slow.is_ai(target, req.host)
        http_ids(eng, req, head, hdr)
        if req.capture:
            req.head = head
        if len(fl.pending) < MAX_PENDING:
            fl.pending.append(req)
        d.req = req
        if chunked:
            d.state = S_CSIZE
        elif cl > 0:
            d.state = S_LEN
            d.remaining = cl
        else:
            d.req = None
        return
    # response
    if not (len(line) >= 12 and line.startswith(b"HTTP/1.") and line[8] == 32 and line[9:12].isdigit()):
        eng.errors[E["http_status_line"]] += 1
        eng._desync(fl, side)
        return
    status = int(line[9:12])
    eng.counters[C["http_responses"]] += 1
    req = fl.pending[0] if fl.pending else None
    if req is None:
        eng.counters[C["http_unpaired_responses"]] += 1
    if 100 <= status < 200:
        if status == 101:
            fl.proto = P_OPAQUE
        return
    d.req = req
    if req is not None:
        req.status = status
        req.bytes_in += len(head)
        req.ct = hdr.get(b"content-type", b"")
        req.ce = hdr.get(b"content-encoding", b"")
    if req is not None and req.method_connect and 200 <= status < 300:
        # a proxy tunnel from here on (egress proxies to AI APIs): look for the TLS ClientHello inside it
        http_response_done(eng, fl, ts)
        http_tunnel(eng, fl)
        return
    if (req is not None and req.method_head) or status == 204 or status == 304:
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


def http_tunnel(eng, fl: Flow) -> None:
    """After ``CONNECT`` succeeded the flow carries another protocol: recognise it afresh."""
    eng._finish(fl)  # requests still waiting in the queue will not be answered over HTTP
    fl.proto = P_UNKNOWN
    fl.tries = 0
    for d in fl.dirs:
        d.buf.clear()
        d.state = 0
        d.remaining = 0
        d.req = None


def http_ids(eng, req: Req, head: bytes, hdr: dict[bytes, bytes]) -> None:
    rs = eng.rules
    starts = [-1, -1, -1]
    for t in range(3):
        for pos, i in enumerate(rs.order[t]):
            if not rs.http_rule_applies(i, req.ai):
                continue
            kind = rs.kinds[i]
            if kind == SRC_PY:
                starts[t] = pos
                break
            if kind == SRC_HEADER:
                v = hdr.get(rs.keys[i], b"")
            elif kind == SRC_BAGGAGE:
                v = baggage_value(hdr.get(b"baggage", b""), rs.keys[i])
            elif kind == SRC_QUERY:
                v = query_value(req.target, rs.keys[i])
            else:
                v = hdr.get(b"host", b"") if kind == SRC_HOST else b""
            if v:
                req.ids[t] = (v[:MAX_VALUE], i)
                break
    req.starts = (starts[0], starts[1], starts[2])
    if starts == [-1, -1, -1]:
        req.capture = req.ai
        return
    if req.ai or rs.has_body_rules:
        req.capture = True
        return
    found = eng.slow.resolve(head, None, req.starts, False)
    for t in range(3):
        if req.starts[t] >= 0:
            req.ids[t] = found[t]
    req.starts = (-1, -1, -1)


def http_response_done(eng, fl: Flow, ts: int) -> None:
    srv = fl.dirs[1 - fl.cside]
    req = srv.req
    srv.req = None
    if req is None:
        return
    if fl.pending and fl.pending[0] is req:
        fl.pending.popleft()
    cli = fl.dirs[fl.cside]
    if cli.req is req:
        cli.req = None
    http_call(eng, fl, req, ts, True)


def http_call(eng, fl: Flow, req: Req, ts: int, answered: bool) -> None:
    provider = model = b""
    tin = tout = tc = tr = 0
    if req.capture:  # one call settles the deferred rules and reads the AI usage
        starts = req.starts if req.starts != (-1, -1, -1) else None
        found, r = eng.slow.complete(
            req.head,
            bytes(req.body),
            starts,
            req.ai,
            req.target,
            req.host,
            bytes(req.resp_body),
            req.ct,
            req.ce,
            answered,
        )
        if found is not None:
            for t in range(3):
                if req.starts[t] >= 0:
                    req.ids[t] = found[t]
        if req.ai:
            eng.counters[C["ai_calls"]] += 1
            if r is None:
                eng.errors[E["ai_body"]] += 1
            else:
                provider, model, tin, tout, tc, tr = r
    busy = 0
    if answered:
        start = flow_served_from(fl, req.ts, ts)
        busy = ts - start if ts > start else 0
    errors = 1 if req.status >= 500 else 0
    agg(
        eng,
        req.ts,
        fl,
        R_HTTP,
        req.op,
        req.host,
        req.ids,
        provider,
        model,
        (1, errors, req.bytes_in, req.bytes_out, busy, tin, tout, tc, tr),
    )


def http_fin(eng, fl: Flow, side: int, ts: int) -> None:
    """The server closed its direction: a response delimited by the close is complete."""
    d = fl.dirs[side]
    if side != fl.cside and d.state == S_CLOSE:
        http_response_done(eng, fl, ts)
        d.state = S_HEAD


def http_finish(eng, fl: Flow) -> None:
    """The flow ended: a close-delimited response is complete, requests still waiting are counted unanswered and
    recorded without an answer."""
    srv = fl.dirs[1 - fl.cside]
    if srv.state == S_CLOSE and srv.req is not None:
        http_response_done(eng, fl, fl.last_ts)
    while fl.pending:
        req = fl.pending.popleft()
        eng.counters[C["http_unanswered"]] += 1
        http_call(eng, fl, req, fl.last_ts, False)


def http_desync(fl: Flow, side: int) -> None:
    """Bytes were lost: wait for a segment that starts with a message head (a request's current body is lost)."""
    d = fl.dirs[side]
    d.state = S_DESYNC
    if side == fl.cside:
        d.req = None
