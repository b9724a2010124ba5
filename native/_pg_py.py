"""Pure-Python twin of ``_pg.pxi``: the PostgreSQL wire protocol.

Recognition (``pg_startup_like``: a startup, SSL, GSS or cancel request; ``pg_chain``: whole typed messages, for flows
joined mid-stream), then per direction a message parser (``pg_data``): simple queries and extended-query cycles
(Parse/Bind/Execute up to Sync, prepared statements remembered per flow) become requests, each completed by the
server's ReadyForQuery. An SSLRequest answered ``S`` turns the flow into TLS; the startup's user and database go to
the rules (``slow.pg_startup``).
"""

from __future__ import annotations

from ._flows_py import MAX_OP, MAX_PENDING, MAX_STMTS, P_OPAQUE, P_PG, P_TLS, Flow, Req, flow_served_from
from ._records_py import agg
from .kinds import R_PG, C, E

MAX_STMT_NAME = 64
PG_MAX_LEN = 1 << 30
PG_MAX_STARTUP = 10000
PG_FRONTEND = b"QPBEDSCHXFpdcf"
PG_BACKEND = b"RKSZTDCEN123nstcGHWAIVvdf"

# parser states of a direction
G_UNTYPED, G_TYPED, G_SSLANS = range(3)


def _be32(b: bytes | bytearray, i: int) -> int:
    return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]


def pg_chain(data: bytes, types: bytes, hint: bool) -> bool:
    """Does ``data`` read as whole PostgreSQL messages of these types (or, with a port hint, their beginning)?"""
    p = 0
    n = 0
    while p + 5 <= len(data):
        if data[p] not in types:
            return False
        length = _be32(data, p + 1)
        if length < 4 or length > (1 << 24):
            return False
        p += 1 + length
        n += 1
    return n > 0 and hint if p != len(data) else (n > 1 or (n > 0 and hint))


def pg_startup_like(data: bytes) -> bool:
    if len(data) < 8:
        return False
    length, code = _be32(data, 0), _be32(data, 4)
    if length < 8 or length > PG_MAX_STARTUP:
        return False
    if code in (80877103, 80877104, 80877102):
        return length in (8, 16)
    if (code >> 16) != 3 or (code & 0xFFFF) > 2 or len(data) < 10:
        return False
    key = data[8:40].split(b"\0", 1)[0]
    return 0 < len(key) < 32 and all(97 <= c <= 122 or c == 95 for c in key)


def pg_data(eng, fl: Flow, side: int, ts: int, data: bytes) -> None:
    d = fl.dirs[side]
    client = side == fl.cside
    n = len(data)
    pos = 0
    while pos < n and fl.proto == P_PG:
        if d.state == G_SSLANS:
            b = data[pos]
            pos += 1
            if b == 0x4E:  # 'N': go on in cleartext
                d.state = G_TYPED
            elif b == 0x53:  # 'S': TLS from here on
                eng.counters[C["pg_tls"]] += 1
                fl.proto = P_TLS
                for x in fl.dirs:
                    x.buf.clear()
                    x.state = 0
                return
            elif b == 0x47:  # 'G': GSSAPI encryption accepted, nothing readable follows
                fl.proto = P_OPAQUE
                return
            else:
                eng.errors[E["pg_message"]] += 1
                fl.proto = P_OPAQUE
                return
            continue
        hlen = 4 if d.state == G_UNTYPED else 5
        if d.mtype == 0:
            # header phase (d.mtype == 0 means: no message in progress)
            need = hlen - len(d.buf)
            take = min(need, n - pos)
            d.buf += data[pos : pos + take]
            pos += take
            if len(d.buf) < hlen:
                return
            if hlen == 5:
                mtype = d.buf[0]
                length = _be32(d.buf, 1)
                ok = 4 <= length <= PG_MAX_LEN and mtype in (PG_FRONTEND if client else PG_BACKEND)
            else:
                mtype = 1
                length = _be32(d.buf, 0)
                ok = 8 <= length <= PG_MAX_STARTUP
            if not ok:
                eng.errors[E["pg_message"]] += 1
                fl.proto = P_OPAQUE
                return
            d.mtype = mtype
            d.remaining = length - 4
            d.buf.clear()
            d.mlen = length
        take = min(d.remaining, n - pos)
        cap = _pg_cap(d.mtype, client, d.state)
        room = cap - len(d.buf)
        if room > 0:
            d.buf += data[pos : pos + min(take, room)]
        d.remaining -= take
        pos += take
        if d.remaining == 0:
            mtype, mlen, body = d.mtype, d.mlen, bytes(d.buf)
            d.buf.clear()
            d.mtype = 0
            pg_message(eng, fl, side, ts, mtype, mlen, body)


def _pg_cap(mtype: int, client: bool, state: int) -> int:
    """How much of a message body is kept: the SQL text of Query/Parse, the statement of Bind, startup."""
    if state == G_UNTYPED:
        return PG_MAX_STARTUP
    if not client:
        return 0
    if mtype == 0x51:  # Q
        return MAX_OP
    if mtype == 0x50:  # P: name, query
        return MAX_OP + 256
    if mtype == 0x42:  # B: portal, statement
        return 256
    return 0


def pg_stmt_put(fl: Flow, name: bytes, text: bytes) -> None:
    """A small per-flow cache of prepared statements (pooled clients prepare once, bind many times)."""
    for i, (n, _t) in enumerate(fl.stmts):
        if n == name:
            fl.stmts[i] = (name, text)
            return
    if len(fl.stmts) < MAX_STMTS:
        fl.stmts.append((name, text))
    else:
        fl.stmts[fl.stmt_next] = (name, text)
        fl.stmt_next = (fl.stmt_next + 1) % MAX_STMTS


def pg_stmt_get(fl: Flow, name: bytes) -> bytes:
    for n, t in fl.stmts:
        if n == name:
            return t
    return b""


def pg_message(eng, fl: Flow, side: int, ts: int, mtype: int, mlen: int, body: bytes) -> None:
    eng.counters[C["pg_messages"]] += 1
    d = fl.dirs[side]
    size = mlen + (1 if d.state == G_TYPED else 0)
    if side == fl.cside:
        if d.state == G_UNTYPED:
            code = _be32(body, 0)
            srv = fl.dirs[1 - side]
            if code in (80877103, 80877104):
                srv.state = G_SSLANS
            elif code == 80877102:
                pass
            elif (code >> 16) == 3:
                d.state = G_TYPED
                params = body[4:].split(b"\0")
                kv = dict(zip(params[0::2], params[1::2], strict=False))
                user = kv.get(b"user", b"")
                database = kv.get(b"database", b"") or user
                fl.ids = list(eng.slow.pg_startup(user, database))
            else:
                eng.errors[E["pg_message"]] += 1
                fl.proto = P_OPAQUE
            return
        if mtype == 0x51:  # Query
            req = Req(ts, body.split(b"\0", 1)[0][:MAX_OP])
            req.bytes_out = size
            eng.counters[C["pg_queries"]] += 1
            if len(fl.pending) < MAX_PENDING:
                fl.pending.append(req)
        elif mtype == 0x53:  # Sync
            req = Req(fl.cycle_ts if fl.cycle_open else ts, fl.cycle_op)
            req.bytes_out = fl.cycle_bytes + size
            req.silent = not fl.cycle_open
            if not req.silent:
                eng.counters[C["pg_queries"]] += 1
            if len(fl.pending) < MAX_PENDING:
                fl.pending.append(req)
            fl.cycle_open = False
            fl.cycle_op = b""
            fl.cycle_bytes = 0
        elif mtype in (0x58, 0x70):  # Terminate, password
            return
        else:
            if not fl.cycle_open:
                fl.cycle_open = True
                fl.cycle_ts = ts
                fl.cycle_op = b""
                fl.cycle_bytes = 0
            fl.cycle_bytes += size
            if mtype == 0x50:  # Parse: remember the statement, name the cycle after its first one
                parts = body.split(b"\0", 2)
                if len(parts) >= 2:
                    text = parts[1][:MAX_OP]
                    pg_stmt_put(fl, parts[0][:MAX_STMT_NAME], text)
                    if not fl.cycle_op:
                        fl.cycle_op = text
            elif mtype == 0x42 and not fl.cycle_op:  # Bind of a statement prepared in an earlier cycle
                parts = body.split(b"\0", 2)
                if len(parts) >= 2:
                    fl.cycle_op = pg_stmt_get(fl, parts[1][:MAX_STMT_NAME])
        return
    # server
    if not fl.pending:
        return
    front = fl.pending[0]
    front.bytes_in += size
    if mtype == 0x45:  # ErrorResponse
        front.error = True
    elif mtype == 0x5A:  # ReadyForQuery
        fl.pending.popleft()
        if not front.silent:
            start = flow_served_from(fl, front.ts, ts)
            busy = ts - start if ts > start else 0
            vals = (1, int(front.error), front.bytes_in, front.bytes_out, busy, 0, 0, 0, 0)
            agg(eng, front.ts, fl, R_PG, front.op, b"", fl.ids, b"", b"", vals)


def pg_begin(fl: Flow, side: int, startup: bool) -> None:
    """The flow is PostgreSQL: from its startup packet (sent by ``side``), or joined mid-stream (typed messages both
    ways)."""
    fl.proto = P_PG
    if startup:
        fl.dirs[side].state = G_UNTYPED
        fl.dirs[1 - side].state = G_TYPED
    else:
        fl.dirs[0].state = fl.dirs[1].state = G_TYPED


def pg_finish(eng, fl: Flow) -> None:
    """The flow ended: queries still waiting for ReadyForQuery are recorded without server time."""
    while fl.pending:
        req = fl.pending.popleft()
        if not req.silent:
            vals = (1, int(req.error), req.bytes_in, req.bytes_out, 0, 0, 0, 0, 0)
            agg(eng, req.ts, fl, R_PG, req.op, b"", fl.ids, b"", b"", vals)


def pg_desync(fl: Flow, side: int) -> None:
    """Bytes were lost: read typed messages again from the next header (a message in progress is lost)."""
    d = fl.dirs[side]
    d.state = G_TYPED
    d.mtype = 0
