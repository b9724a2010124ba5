"""Names of external destinations: TLS ClientHello SNI and DNS answers.

Reads: a TLS handshake record from the client side of a flow; a DNS message (UDP payload, or one length-prefixed
message of DNS over TCP). Emits: the SNI (and whether Encrypted Client Hello hides the real one), DNS answers as
``(address bytes, name)``. Both builds share this module: it runs once per TLS connection and once per DNS message, not
per frame. Malformed input raises ``ValueError`` with the offset; the engine counts it by kind and goes on.
"""

from __future__ import annotations

from typing import NamedTuple

EXT_SERVER_NAME = 0x0000
EXT_ECH = 0xFE0D


class ClientHello(NamedTuple):
    sni: bytes
    ech: bool


class DnsMessage(NamedTuple):
    response: bool
    rcode: int
    qname: bytes
    #: (IPv4/IPv6 address bytes, the question name it answers, through any CNAME chain)
    answers: list[tuple[bytes, bytes]]


def _u16(b: bytes, i: int) -> int:
    if i + 2 > len(b):
        raise ValueError(f"truncated at offset {i}")
    return (b[i] << 8) | b[i + 1]


def client_hello(record: bytes) -> ClientHello:
    """SNI of a ClientHello in a TLS record (``0x16``); the record may be cut after the extensions it needs."""
    if len(record) < 9 or record[0] != 0x16 or record[5] != 0x01:
        raise ValueError("offset 0: not a ClientHello record")
    p = 9  # record header 5 + handshake type 1 + length 3
    p += 2 + 32  # client version, random
    if p >= len(record):
        raise ValueError(f"truncated at offset {p}")
    p += 1 + record[p]  # session id
    p += 2 + _u16(record, p)  # cipher suites
    if p >= len(record):
        raise ValueError(f"truncated at offset {p}")
    p += 1 + record[p]  # compression methods
    if p == len(record):
        return ClientHello(b"", False)  # no extensions at all
    end = p + 2 + _u16(record, p)
    p += 2
    sni = b""
    ech = False
    while p + 4 <= min(end, len(record)):
        ext, length = _u16(record, p), _u16(record, p + 2)
        body = record[p + 4 : p + 4 + length]
        if len(body) < length:
            raise ValueError(f"truncated extension at offset {p}")
        if ext == EXT_SERVER_NAME and len(body) >= 5 and body[2] == 0:
            n = _u16(body, 3)
            if 5 + n > len(body):
                raise ValueError(f"bad server_name at offset {p}")
            sni = body[5 : 5 + n]
        elif ext == EXT_ECH:
            ech = True
        p += 4 + length
    return ClientHello(sni.lower(), ech)


def _name(msg: bytes, p: int, depth: int = 0) -> tuple[bytes, int]:
    """A possibly compressed domain name at ``p``; returns (name, offset after it in the original position)."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    while True:
        if p >= len(msg):
            raise ValueError(f"truncated name at offset {p}")
        n = msg[p]
        if n == 0:
            p += 1
            break
        if n & 0xC0 == 0xC0:
            if p + 1 >= len(msg):
                raise ValueError(f"truncated pointer at offset {p}")
            if end < 0:
                end = p + 2
            p = ((n & 0x3F) << 8) | msg[p + 1]
            jumps += 1
            if jumps > 16:
                raise ValueError(f"name pointer loop at offset {p}")
            continue
        if n & 0xC0:
            raise ValueError(f"bad label at offset {p}")
        labels.append(msg[p + 1 : p + 1 + n])
        p += 1 + n
        if len(labels) > 128:
            raise ValueError(f"name too long at offset {p}")
    return b".".join(labels).lower(), (end if end >= 0 else p)


def dns_message(msg: bytes) -> DnsMessage:
    if len(msg) < 12:
        raise ValueError("offset 0: DNS header truncated")
    flags = _u16(msg, 2)
    qd, an = _u16(msg, 4), _u16(msg, 6)
    p = 12
    qname = b""
    for i in range(qd):
        name, p = _name(msg, p)
        p += 4
        if i == 0:
            qname = name
    answers: list[tuple[bytes, bytes]] = []
    alias: dict[bytes, bytes] = {}
    for _ in range(min(an, 256)):
        name, p = _name(msg, p)
        if p + 10 > len(msg):
            raise ValueError(f"truncated answer at offset {p}")
        rtype, rdlen = _u16(msg, p), _u16(msg, p + 8)
        rdata_at = p + 10
        if rdata_at + rdlen > len(msg):
            raise ValueError(f"truncated rdata at offset {rdata_at}")
        origin = alias.get(name, name)
        if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
            answers.append((msg[rdata_at : rdata_at + rdlen], origin))
        elif rtype == 5:
            target, _ = _name(msg, rdata_at)
            alias[target] = origin
        p = rdata_at + rdlen
    return DnsMessage(bool(flags & 0x8000), flags & 0xF, qname, answers)
