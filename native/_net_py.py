"""Pure-Python twin of ``_net.pyx``: link, network and transport headers of one frame.

Reads: a frame and its link type (Ethernet with 802.1Q/QinQ tags, Linux cooked v1/v2, raw IPv4/IPv6, BSD loopback in
either byte order). Emits: ``(l4, src, dst, sport, dport, flags, seq, payload)`` with addresses as 16 bytes (IPv4
mapped into ``::ffff:0:0/96``), or a negative code: ``NON_IP``, ``OTHER_L4`` or ``-(100 + error kind index)``.
"""

from __future__ import annotations

from .kinds import E

NON_IP = -1
OTHER_L4 = -2
V4_PREFIX = b"\x00" * 10 + b"\xff\xff"

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_SLL, LINKTYPE_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6 = 113, 276, 228, 229
_AF_INET6 = (24, 28, 30)


def _err(kind: str) -> int:
    return -(100 + E[kind])


def decode(linktype: int, f: bytes) -> tuple | int:
    n = len(f)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return _err("frame_truncated")
        etype = (f[12] << 8) | f[13]
        p = 14
        tags = 0
        while etype in (0x8100, 0x88A8, 0x9100) and tags < 4:
            if n < p + 4:
                return _err("frame_truncated")
            etype = (f[p + 2] << 8) | f[p + 3]
            p += 4
            tags += 1
        if etype == 0x0800:
            return _ipv4(f, p)
        if etype == 0x86DD:
            return _ipv6(f, p)
        return NON_IP
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return _err("frame_truncated")
        le = f[0] | (f[1] << 8) | (f[2] << 16) | (f[3] << 24)
        be = (f[0] << 24) | (f[1] << 16) | (f[2] << 8) | f[3]
        af = be if linktype == LINKTYPE_LOOP else (le if le < 0x10000 else be)
        if af == 2:
            return _ipv4(f, 4)
        if af in _AF_INET6:
            return _ipv6(f, 4)
        return NON_IP
    if linktype in (LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if n < 1:
            return _err("frame_truncated")
        v = f[0] >> 4
        if v == 4:
            return _ipv4(f, 0)
        if v == 6:
            return _ipv6(f, 0)
        return _err("ip_malformed")
    if linktype == LINKTYPE_SLL:
        if n < 16:
            return _err("frame_truncated")
        etype = (f[14] << 8) | f[15]
        p = 16
    elif linktype == LINKTYPE_SLL2:
        if n < 20:
            return _err("frame_truncated")
        etype = (f[0] << 8) | f[1]
        p = 20
    else:
        return _err("linktype_unsupported")
    if etype == 0x0800:
        return _ipv4(f, p)
    if etype == 0x86DD:
        return _ipv6(f, p)
    return NON_IP


def _ipv4(f: bytes, p: int) -> tuple | int:
    n = len(f)
    if n < p + 20:
        return _err("frame_truncated")
    if f[p] >> 4 != 4:
        return _err("ip_malformed")
    ihl = (f[p] & 0x0F) * 4
    total = (f[p + 2] << 8) | f[p + 3]
    if ihl < 20 or total < ihl:
        return _err("ip_malformed")
    if n < p + ihl:
        return _err("frame_truncated")
    if ((f[p + 6] << 8) | f[p + 7]) & 0x3FFF:
        return _err("ip_fragment")
    end = min(n, p + total)
    src = V4_PREFIX + f[p + 12 : p + 16]
    dst = V4_PREFIX + f[p + 16 : p + 20]
    return _l4(f, f[p + 9], src, dst, p + ihl, end)


def _ipv6(f: bytes, p: int) -> tuple | int:
    n = len(f)
    if n < p + 40:
        return _err("frame_truncated")
    if f[p] >> 4 != 6:
        return _err("ip_malformed")
    plen = (f[p + 4] << 8) | f[p + 5]
    nxt = f[p + 6]
    src = f[p + 8 : p + 24]
    dst = f[p + 24 : p + 40]
    end = min(n, p + 40 + plen)
    q = p + 40
    hops = 0
    while nxt in (0, 43, 60, 51, 44):
        if nxt == 44:
            return _err("ip_fragment")
        if q + 8 > end or hops >= 8:
            return _err("ip_malformed")
        length = (f[q + 1] + 2) * 4 if nxt == 51 else (f[q + 1] + 1) * 8
        nxt = f[q]
        q += length
        hops += 1
    if q > end:
        return _err("ip_malformed")
    return _l4(f, nxt, src, dst, q, end)


def _l4(f: bytes, proto: int, src: bytes, dst: bytes, q: int, end: int) -> tuple | int:
    if proto == 6:
        if end < q + 20:
            return _err("frame_truncated")
        doff = (f[q + 12] >> 4) * 4
        if doff < 20 or q + doff > end:
            return _err("tcp_malformed")
        sport = (f[q] << 8) | f[q + 1]
        dport = (f[q + 2] << 8) | f[q + 3]
        seq = (f[q + 4] << 24) | (f[q + 5] << 16) | (f[q + 6] << 8) | f[q + 7]
        return (6, src, dst, sport, dport, f[q + 13], seq, f[q + doff : end])
    if proto == 17:
        if end < q + 8:
            return _err("frame_truncated")
        ulen = (f[q + 4] << 8) | f[q + 5]
        if ulen < 8:
            return _err("udp_malformed")
        stop = min(end, q + ulen)
        return (17, src, dst, (f[q] << 8) | f[q + 1], (f[q + 2] << 8) | f[q + 3], 0, 0, f[q + 8 : stop])
    return OTHER_L4
