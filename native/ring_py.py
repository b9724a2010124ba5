"""Pure-Python twin of ``ring.pyx``: walks the ready blocks of a TPACKET_V3 receive ring.

Same interface and results as the compiled module (``COSTMESH_NO_EXTENSIONS=1`` selects this one); the ring tests run
both on the same synthetic ring and require identical output.
"""

from __future__ import annotations

import struct

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

_BLOCK_HEAD = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at offset 8 of a block)
_PKT_HEAD = struct.Struct("=IIIIIIH")  # tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac
_STATUS = struct.Struct("=I")


def drain_blocks(
    ring, block_size: int, block_count: int, current: int, out: list, max_blocks: int = 0
) -> tuple[int, int]:
    """Append ``(timestamp_us, frame)`` of every block the kernel handed over, starting at block ``current``, and
    give each block back. Returns ``(blocks taken, next current block)``. ``max_blocks`` > 0 bounds the work."""
    unpack_block, unpack_pkt = _BLOCK_HEAD.unpack_from, _PKT_HEAD.unpack_from
    append = out.append
    taken = 0
    while not max_blocks or taken < max_blocks:
        base = current * block_size
        status, count, first = unpack_block(ring, base + 8)
        if not status & TP_STATUS_USER:
            break
        off = base + first
        for _ in range(count):
            next_off, sec, nsec, snaplen, _wire, _st, mac = unpack_pkt(ring, off)
            start = off + mac
            append((sec * 1_000_000 + nsec // 1000, bytes(ring[start : start + snaplen])))
            off += next_off
        _STATUS.pack_into(ring, base + 8, TP_STATUS_KERNEL)
        current = (current + 1) % block_count
        taken += 1
    return taken, current
