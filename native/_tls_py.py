"""Pure-Python twin of ``_tls.pxi``: TLS ClientHello and DNS (over UDP and TCP), which name external destinations.

TLS: the client's first record is read whole and handed to ``slow.tls`` (SNI, ECH, the SNI rules); the flow's later
bytes count to the same record. DNS: answers go to ``slow.dns`` (which learns the names of the answered addresses)
and are recorded per query name.
"""

from __future__ import annotations

from ._flows_py import MAX_OP, P_OPAQUE, Flow
from ._records_py import agg
from .kinds import MAX_VALUE, R_DNS, R_TLS, C, E

MAX_TLS_RECORD = 16384 + 5


def dns_message(eng, ts, src, dst, sport, dport, payload, from_server) -> None:
    eng.counters[C["dns_messages"]] += 1
    r = eng.slow.dns(bytes(payload))
    if r is None:
        eng.errors[E["dns_malformed"]] += 1
        return
    response, rcode, qname = r
    if response and from_server:
        window = ts - ts % eng.window_us
        key = (window, dst, src, sport, R_DNS, qname[:MAX_OP], b"", b"", -1, b"", -1, b"", -1, b"", b"")
        acc = eng.agg.setdefault(key, [0] * 9)
        acc[0] += 1
        acc[1] += rcode != 0
        acc[2] += len(payload)


def tls_data(eng, fl: Flow, side: int, ts: int, data: bytes) -> None:
    client = side == fl.cside
    if not fl.tls_done:
        if not client:
            return
        d = fl.dirs[side]
        d.buf += data[: MAX_TLS_RECORD - len(d.buf)]
        if len(d.buf) < 5:
            return
        need = 5 + ((d.buf[3] << 8) | d.buf[4])
        if len(d.buf) < need and len(d.buf) < MAX_TLS_RECORD:
            return
        record = bytes(d.buf[:need])
        d.buf.clear()
        fl.tls_done = True
        r = eng.slow.tls(record)
        if r is None:
            eng.errors[E["tls_malformed"]] += 1
            fl.proto = P_OPAQUE
            return
        sni, ech, ids = r
        eng.counters[C["tls_client_hellos"]] += 1
        if ech:
            eng.counters[C["tls_ech"]] += 1
        fl.host = sni[:MAX_VALUE]
        fl.ids = list(ids)
        op = b"ech" if ech else b""
        agg(eng, ts, fl, R_TLS, op, fl.host, fl.ids, b"", b"", (1, 0, 0, len(record), 0, 0, 0, 0, 0))
        return
    op = b""
    vals = (0, 0, 0 if client else len(data), len(data) if client else 0, 0, 0, 0, 0, 0)
    agg(eng, ts, fl, R_TLS, op, fl.host, fl.ids, b"", b"", vals)


def dns_tcp_data(eng, fl: Flow, side: int, ts: int, data: bytes) -> None:
    d = fl.dirs[side]
    d.buf += data
    while len(d.buf) >= 2:
        need = 2 + ((d.buf[0] << 8) | d.buf[1])
        if len(d.buf) < need:
            if len(d.buf) > 70000:
                d.buf.clear()
            return
        msg = bytes(d.buf[2:need])
        del d.buf[:need]
        cs = fl.cside
        from_server = side != cs
        src, dst = fl.addr[side], fl.addr[1 - side]
        dns_message(eng, ts, src, dst, fl.port[side], fl.port[1 - side], msg, from_server)


def tls_desync(fl: Flow) -> None:
    """Bytes were lost before the ClientHello was read whole: nothing more can be read from this flow."""
    fl.proto = P_OPAQUE
