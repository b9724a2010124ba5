"""Compiled twin of ``_net_py.py``: link, network and transport headers of one frame, into a C struct.

Reads: a frame and its link type (Ethernet with 802.1Q/QinQ tags, Linux cooked v1/v2, raw IPv4/IPv6, BSD loopback in
either byte order). Emits: a ``Pkt`` (C) for the engine, or for Python callers the same tuple/negative code as the twin.
Every read is bounds-checked against the frame length before it happens.
"""

from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from .kinds import E

NON_IP = NET_NON_IP
OTHER_L4 = NET_OTHER_L4

cdef int E_FRAME_TRUNCATED = -(100 + E["frame_truncated"])
cdef int E_IP_MALFORMED = -(100 + E["ip_malformed"])
cdef int E_IP_FRAGMENT = -(100 + E["ip_fragment"])
cdef int E_TCP_MALFORMED = -(100 + E["tcp_malformed"])
cdef int E_UDP_MALFORMED = -(100 + E["udp_malformed"])
cdef int E_LINKTYPE = -(100 + E["linktype_unsupported"])


cdef inline uint16_t be16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef int _l4(const uint8_t* f, int proto, Py_ssize_t q, Py_ssize_t end, Pkt* out) noexcept nogil:
    cdef Py_ssize_t doff, ulen, stop
    if proto == 6:
        if end < q + 20:
            return E_FRAME_TRUNCATED
        doff = (f[q + 12] >> 4) * 4
        if doff < 20 or q + doff > end:
            return E_TCP_MALFORMED
        out.l4 = 6
        out.sport = be16(f + q)
        out.dport = be16(f + q + 2)
        out.seq = (<uint32_t>f[q + 4] << 24) | (<uint32_t>f[q + 5] << 16) | (<uint32_t>f[q + 6] << 8) | f[q + 7]
        out.flags = f[q + 13]
        out.off = q + doff
        out.n = end - (q + doff)
        return 0
    if proto == 17:
        if end < q + 8:
            return E_FRAME_TRUNCATED
        ulen = be16(f + q + 4)
        if ulen < 8:
            return E_UDP_MALFORMED
        stop = q + ulen
        if stop > end:
            stop = end
        out.l4 = 17
        out.sport = be16(f + q)
        out.dport = be16(f + q + 2)
        out.seq = 0
        out.flags = 0
        out.off = q + 8
        out.n = stop - (q + 8) if stop > q + 8 else 0
        return 0
    return NET_OTHER_L4


cdef int _ipv4(const uint8_t* f, Py_ssize_t n, Py_ssize_t p, Pkt* out) noexcept nogil:
    cdef Py_ssize_t ihl, total, end
    if n < p + 20:
        return E_FRAME_TRUNCATED
    if f[p] >> 4 != 4:
        return E_IP_MALFORMED
    ihl = (f[p] & 0x0F) * 4
    total = be16(f + p + 2)
    if ihl < 20 or total < ihl:
        return E_IP_MALFORMED
    if n < p + ihl:
        return E_FRAME_TRUNCATED
    if be16(f + p + 6) & 0x3FFF:
        return E_IP_FRAGMENT
    end = p + total
    if end > n:
        end = n
    memset(out.src, 0, 10)
    out.src[10] = 0xFF
    out.src[11] = 0xFF
    memcpy(out.src + 12, f + p + 12, 4)
    memset(out.dst, 0, 10)
    out.dst[10] = 0xFF
    out.dst[11] = 0xFF
    memcpy(out.dst + 12, f + p + 16, 4)
    return _l4(f, f[p + 9], p + ihl, end, out)


cdef int _ipv6(const uint8_t* f, Py_ssize_t n, Py_ssize_t p, Pkt* out) noexcept nogil:
    cdef Py_ssize_t plen, end, q, length
    cdef int nxt, hops
    if n < p + 40:
        return E_FRAME_TRUNCATED
    if f[p] >> 4 != 6:
        return E_IP_MALFORMED
    plen = be16(f + p + 4)
    nxt = f[p + 6]
    memcpy(out.src, f + p + 8, 16)
    memcpy(out.dst, f + p + 24, 16)
    end = p + 40 + plen
    if end > n:
        end = n
    q = p + 40
    hops = 0
    while nxt == 0 or nxt == 43 or nxt == 60 or nxt == 51 or nxt == 44:
        if nxt == 44:
            return E_IP_FRAGMENT
        if q + 8 > end or hops >= 8:
            return E_IP_MALFORMED
        if nxt == 51:
            length = (f[q + 1] + 2) * 4
        else:
            length = (f[q + 1] + 1) * 8
        nxt = f[q]
        q += length
        hops += 1
    if q > end:
        return E_IP_MALFORMED
    return _l4(f, nxt, q, end, out)


cdef int decode_c(int linktype, const uint8_t* f, Py_ssize_t n, Pkt* out) noexcept nogil:
    cdef int etype, tags, v
    cdef Py_ssize_t p
    cdef uint32_t le, be, af
    if linktype == 1:
        if n < 14:
            return E_FRAME_TRUNCATED
        etype = be16(f + 12)
        p = 14
        tags = 0
        while (etype == 0x8100 or etype == 0x88A8 or etype == 0x9100) and tags < 4:
            if n < p + 4:
                return E_FRAME_TRUNCATED
            etype = be16(f + p + 2)
            p += 4
            tags += 1
        if etype == 0x0800:
            return _ipv4(f, n, p, out)
        if etype == 0x86DD:
            return _ipv6(f, n, p, out)
        return NET_NON_IP
    if linktype == 0 or linktype == 108:
        if n < 4:
            return E_FRAME_TRUNCATED
        le = f[0] | (<uint32_t>f[1] << 8) | (<uint32_t>f[2] << 16) | (<uint32_t>f[3] << 24)
        be = (<uint32_t>f[0] << 24) | (<uint32_t>f[1] << 16) | (<uint32_t>f[2] << 8) | f[3]
        if linktype == 108:
            af = be
        elif le < 0x10000:
            af = le
        else:
            af = be
        if af == 2:
            return _ipv4(f, n, 4, out)
        if af == 24 or af == 28 or af == 30:
            return _ipv6(f, n, 4, out)
        return NET_NON_IP
    if linktype == 101 or linktype == 12 or linktype == 14 or linktype == 228 or linktype == 229:
        if n < 1:
            return E_FRAME_TRUNCATED
        v = f[0] >> 4
        if v == 4:
            return _ipv4(f, n, 0, out)
        if v == 6:
            return _ipv6(f, n, 0, out)
        return E_IP_MALFORMED
    if linktype == 113:
        if n < 16:
            return E_FRAME_TRUNCATED
        etype = be16(f + 14)
        p = 16
    elif linktype == 276:
        if n < 20:
            return E_FRAME_TRUNCATED
        etype = be16(f)
        p = 20
    else:
        return E_LINKTYPE
    if etype == 0x0800:
        return _ipv4(f, n, p, out)
    if etype == 0x86DD:
        return _ipv6(f, n, p, out)
    return NET_NON_IP


def decode(int linktype, bytes f):
    """Same result as ``_net_py.decode`` (used by tests to compare the builds)."""
    cdef Pkt pkt
    cdef const uint8_t* p = <const uint8_t*>f
    cdef int r = decode_c(linktype, p, len(f), &pkt)
    if r != 0:
        return r
    return (pkt.l4, (<char*>pkt.src)[:16], (<char*>pkt.dst)[:16], pkt.sport, pkt.dport, pkt.flags, pkt.seq,
            f[pkt.off:pkt.off + pkt.n])
