"""Pure-Python twin of ``ring.pyx``: walks the ready blocks of a TPACKET_V3 receive ring.

Same interface and results as the compiled module (``COSTMESH_NO_EXTENSIONS=1`` selects this one); the ring tests run
both on the same synthetic ring and require identical output, including which frames open a connection.
"""

from __future__ import annotations

import struct

from . import _net_py as net

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
LINKTYPE_ETHERNET = 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_OPENERS = frozenset(b"\x16GPDO")  # TLS handshake, GET, POST/PUT/PATCH, DELETE, OPTIONS

_BLOCK_HEAD = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at offset 8 of a block)
_PKT_HEAD = struct.Struct("=IIIIIIH")  # tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac
_STATUS = struct.Struct("=I")


def _fnv(h: int, data: bytes) -> int:
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return h


def _opens(frame: bytes, seen) -> bool:
    """True for the first frame of a TCP connection whose payload starts like a ClientHello or a request, as the
    compiled walk decides it (same hash, same direct-mapped table)."""
    r = net.decode(LINKTYPE_ETHERNET, frame)
    if isinstance(r, int) or r[0] != 6 or not r[7] or r[7][0] not in _OPENERS:
        return False
    _l4, src, dst, sport, dport = r[:5]
    h = _fnv(FNV_OFFSET, src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")) | 1
    slot = h & (len(seen) - 1)
    if seen[slot] == h:
        return False
    seen[slot] = h
    return True


def feed_blocks(
    ring, block_size: int, block_count: int, current: int, engine, out, hellos, seen, max_blocks: int = 0
) -> tuple[int, int, int]:
    """Hand every frame of the ready blocks to ``engine.feed_frame`` or, without an engine, append ``(timestamp_us,
    frame)`` to ``out`` (when given); append the frames that open a connection to ``hellos`` (when given). Give each
    block back. Returns ``(blocks taken, frames, next current block)``."""
    if block_size <= 0 or block_count <= 0 or block_size * block_count > len(ring):
        raise ValueError("ring geometry does not fit the mapped ring")
    if hellos is not None and (seen is None or not len(seen) or len(seen) & (len(seen) - 1)):
        raise ValueError("the table of seen connections must have a power-of-two size")
    unpack_block, unpack_pkt = _BLOCK_HEAD.unpack_from, _PKT_HEAD.unpack_from
    taken = frames = 0
    while not max_blocks or taken < max_blocks:
        base = current * block_size
        status, count, first = unpack_block(ring, base + 8)
        if not status & TP_STATUS_USER:
            break
        off = first
        for i in range(count):
            if off + 28 > block_size:
                raise ValueError(f"ring block {current}: packet header past the block end")
            next_off, sec, nsec, snaplen, _wire, _st, mac = unpack_pkt(ring, base + off)
            if off + mac + snaplen > block_size:
                raise ValueError(f"ring block {current}: frame past the block end")
            if next_off < 28 and i + 1 < count:
                raise ValueError(f"ring block {current}: packet chain does not advance")
            start = base + off + mac
            frame = bytes(ring[start : start + snaplen])
            ts = sec * 1_000_000 + nsec // 1000
            if hellos is not None and _opens(frame, seen):
                hellos.append(frame)
            if engine is not None:
                engine.feed_frame(ts, LINKTYPE_ETHERNET, frame)
            elif out is not None:
                out.append((ts, frame))
            off += next_off
            frames += 1
        _STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
        current = (current + 1) % block_count
        taken += 1
    return taken, frames, current
