"""Pure-Python twin of ``_flows.pxi``: the per-flow state, the flow table and TCP ordering.

Per flow (a bounded LRU table, evictions counted) both directions' segments are put in sequence order: retransmissions
are dropped, segments ahead wait in a small dict, a gap too long to wait for desynchronises the direction's parser.
In-order bytes go to ``Engine._data`` (the protocol dispatch), a FIN to ``Engine._fin``, the end of a flow (FIN both
ways, RST, eviction, final drain) to ``Engine._finish``. ``Req``, ``Dir`` and ``Flow`` are the twins of the structs in
``_engine.pxd``; the codes and limits here are the ``DEF``s every protocol shares.
"""

from __future__ import annotations

from collections import deque

from .kinds import C

P_UNKNOWN, P_HTTP, P_PG, P_TLS, P_DNS, P_OPAQUE = 0, 1, 2, 3, 4, 5

MASK32 = 0xFFFFFFFF
MAX_OOO = 16
MAX_PENDING = 64
MAX_OP = 2048
MAX_STMTS = 4
MAX_DETECT = 4
MAX_READS = 8


class Req:
    __slots__ = (
        "ai",
        "body",
        "bytes_in",
        "bytes_out",
        "capture",
        "ce",
        "ct",
        "error",
        "head",
        "host",
        "ids",
        "method_connect",
        "method_head",
        "op",
        "resp_body",
        "silent",
        "starts",
        "status",
        "target",
        "ts",
    )

    def __init__(self, ts: int, op: bytes) -> None:
        self.ts = ts
        self.op = op
        self.host = b""
        self.target = b""
        self.ids = [(b"", -1), (b"", -1), (b"", -1)]
        self.starts = (-1, -1, -1)
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.error = False
        self.method_head = False
        self.method_connect = False
        self.ai = False
        self.capture = False
        self.silent = False
        self.head = b""
        self.body = bytearray()
        self.resp_body = bytearray()
        self.ct = b""
        self.ce = b""


class Dir:
    __slots__ = (
        "buf",
        "fin",
        "have_seq",
        "mlen",
        "mtype",
        "next_seq",
        "ooo",
        "remaining",
        "req",
        "state",
    )

    def __init__(self) -> None:
        self.have_seq = False
        self.next_seq = 0
        self.ooo: dict[int, tuple[int, bytes, bool]] = {}
        self.fin = False
        self.state = 0  # every parser's first state
        self.buf = bytearray()
        self.remaining = 0
        self.req: Req | None = None
        self.mtype = 0
        self.mlen = 0


class Flow:
    __slots__ = (
        "addr",
        "cside",
        "cycle_bytes",
        "cycle_op",
        "cycle_open",
        "cycle_ts",
        "dirs",
        "fresh",
        "host",
        "ids",
        "last_ts",
        "pending",
        "port",
        "proto",
        "reads",
        "stmt_next",
        "stmts",
        "tls_done",
        "tries",
    )

    def __init__(self, addr: tuple[bytes, bytes], port: tuple[int, int]) -> None:
        self.addr = addr
        self.port = port
        self.cside = 0
        self.proto = P_UNKNOWN
        self.tries = 0
        self.fresh = False
        self.dirs = (Dir(), Dir())
        self.pending: deque[Req] = deque()
        self.ids = [(b"", -1), (b"", -1), (b"", -1)]
        self.host = b""
        self.last_ts = 0
        self.cycle_open = False
        self.cycle_ts = 0
        self.cycle_op = b""
        self.cycle_bytes = 0
        self.tls_done = False
        self.stmts: list[tuple[bytes, bytes]] = []
        self.stmt_next = 0
        self.reads: list[int] = []


def _s32(x: int) -> int:
    x &= MASK32
    return x - (1 << 32) if x & 0x80000000 else x


def flow_new(eng, src, dst, sport, dport, flags) -> tuple[Flow, int]:
    if (src, sport) <= (dst, dport):
        fl, side = Flow((src, dst), (sport, dport)), 0
    else:
        fl, side = Flow((dst, src), (dport, sport)), 1
    if flags & 0x02:
        fl.fresh = True
        fl.cside = side if not flags & 0x10 else 1 - side
    else:
        hinted = eng.pg_ports | eng.http_ports
        if dport in hinted and sport not in hinted:
            fl.cside = side
        elif (sport in hinted and dport not in hinted) or sport < dport:
            fl.cside = 1 - side
        else:
            fl.cside = side
    eng.counters[C["flows"]] += 1
    return fl, side


def tcp_segment(eng, ts, src, dst, sport, dport, flags, seq, payload) -> None:
    if (src, sport) <= (dst, dport):
        key, side = (src, sport, dst, dport), 0
    else:
        key, side = (dst, dport, src, sport), 1
    fl = eng.flows.get(key)
    if fl is None:
        if flags & 0x04 or not (payload or flags & 0x02):
            return
        fl, side = flow_new(eng, src, dst, sport, dport, flags)
        eng.flows[key] = fl
        if len(eng.flows) > eng.max_flows:
            _k, old = eng.flows.popitem(last=False)
            eng.counters[C["flows_evicted"]] += 1
            eng._finish(old)
    else:
        eng.flows.move_to_end(key)
    fl.last_ts = ts
    d = fl.dirs[side]
    if flags & 0x02:
        d.have_seq = True
        d.next_seq = (seq + 1) & MASK32
        if not fl.fresh:
            fl.fresh = True
            fl.cside = side if not flags & 0x10 else 1 - side
        return
    if flags & 0x04:
        flow_close(eng, key, fl)
        return
    fin = bool(flags & 0x01)
    if not payload and not fin:
        return
    if not d.have_seq:
        d.have_seq = True
        d.next_seq = seq
    rel = _s32(seq - d.next_seq)
    if rel == 0:
        tcp_deliver(eng, key, fl, side, ts, payload, fin)
        tcp_drain_ooo(eng, key, fl, side)
    elif rel < 0:
        if rel + len(payload) <= 0:
            if payload:
                eng.counters[C["tcp_retransmissions"]] += 1
            return
        eng.counters[C["tcp_retransmissions"]] += 1
        tcp_deliver(eng, key, fl, side, ts, payload[-rel:], fin)
        tcp_drain_ooo(eng, key, fl, side)
    else:
        if seq not in d.ooo:
            d.ooo[seq] = (ts, bytes(payload), fin)
            eng.counters[C["tcp_out_of_order"]] += 1
        if len(d.ooo) > MAX_OOO:
            eng.counters[C["tcp_gaps"]] += 1
            first = min(d.ooo, key=lambda s: _s32(s - d.next_seq))
            d.next_seq = first
            eng._desync(fl, side)
            tcp_drain_ooo(eng, key, fl, side)


def tcp_drain_ooo(eng, key, fl, side) -> None:
    d = fl.dirs[side]
    while d.ooo and key in eng.flows:
        item = d.ooo.pop(d.next_seq, None)
        if item is None:
            return
        ts, payload, fin = item
        tcp_deliver(eng, key, fl, side, ts, payload, fin)


def tcp_deliver(eng, key, fl, side, ts, data, fin) -> None:
    d = fl.dirs[side]
    d.next_seq = (d.next_seq + len(data) + (1 if fin else 0)) & MASK32
    if data:
        eng._data(fl, side, ts, data)
    if fin:
        d.fin = True
        eng._fin(fl, side, ts)
        if fl.dirs[0].fin and fl.dirs[1].fin:
            flow_close(eng, key, fl)


def flow_read(eng, ts: int, local: bytes, lport: int, peer: bytes, pport: int) -> int:
    """The end ``local``:``lport`` of a flow read bytes of it at ``ts``: kept for ``flow_served_from`` when it is
    the server's end (1); ignored (0) when it is the client's end or the flow is unknown."""
    if (local, lport) <= (peer, pport):
        key, side = (local, lport, peer, pport), 0
    else:
        key, side = (peer, pport, local, lport), 1
    fl = eng.flows.get(key)
    return 0 if fl is None else flow_keep_read(fl, ts, side)


def flow_keep_read(fl: Flow, ts: int, side: int) -> int:
    """Keep a read by ``side`` of the flow if that is the server's end (the MAX_READS latest)."""
    if side == fl.cside:
        return 0
    if len(fl.reads) == MAX_READS:
        del fl.reads[0]
    fl.reads.append(ts)
    return 1


def flow_served_from(fl: Flow, start: int, end: int) -> int:
    """When the server began on a request that arrived at ``start`` and was answered at ``end``: its first read of
    the flow in between, else ``start``. A request waits in the socket until the server reads it (for its turn on a
    busy CPU): that wait is on the wire but is not work the server did. Reads up to the one used are forgotten."""
    found = min((r for r in fl.reads if start <= r <= end), default=-1)
    fl.reads = [r for r in fl.reads if r >= start and (found < 0 or r > found)]
    return found if found >= 0 else start


def flow_close(eng, key, fl) -> None:
    if eng.flows.get(key) is fl:
        del eng.flows[key]
        eng._finish(fl)


def flow_end_all(eng) -> None:
    """End every open flow (the final drain), oldest first: what each has open is settled by its protocol."""
    while eng.flows:
        _key, fl = eng.flows.popitem(last=False)
        eng._finish(fl)
