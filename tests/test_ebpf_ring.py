"""The TPACKET_V3 block walk: the Cython module and its pure-Python twin read the same synthetic ring (laid out as
the kernel lays it: block descriptors, packet headers with tp_next_offset and tp_mac) identically, give blocks back,
stop at a block still owned by the kernel, wrap around, and honour max_blocks."""

from __future__ import annotations

import mmap
import random
import struct

import pytest

from costmesh.native import ring_py

try:
    from costmesh.native import ring as ring_c
except ImportError:  # built with COSTMESH_NO_EXTENSIONS=1
    ring_c = None

IMPLS = [pytest.param(ring_py, id="python")] + ([pytest.param(ring_c, id="cython")] if ring_c else [])
BLOCK = 4096


def make_ring(blocks: list[list[tuple[int, bytes]] | None]) -> mmap.mmap:
    """A ring of len(blocks) blocks; None = a block the kernel still owns. Frames get tp_mac = 66 (as the kernel
    aligns them) and a 16-byte gap after each, so the walk must follow tp_next_offset."""
    ring = mmap.mmap(-1, BLOCK * len(blocks))
    for b, frames in enumerate(blocks):
        base = b * BLOCK
        if frames is None:
            continue
        off = 48
        struct.pack_into("=III", ring, base + 8, 1, len(frames), off)
        for ts_us, frame in frames:
            mac = 66
            next_off = (mac + len(frame) + 16 + 15) & ~15
            struct.pack_into(
                "=IIIIIIH",
                ring,
                base + off,
                next_off,
                ts_us // 1_000_000,
                ts_us % 1_000_000 * 1000,
                len(frame),
                len(frame) + 100,
                1,
                mac,
            )
            ring[base + off + mac : base + off + mac + len(frame)] = frame
            off += next_off
    return ring


def sample(seed: int) -> list[list[tuple[int, bytes]] | None]:
    rnd = random.Random(seed)
    print(f"seed {seed}")
    blocks: list[list[tuple[int, bytes]] | None] = []
    for _ in range(4):
        frames, used = [], 48
        while True:
            frame = rnd.randbytes(rnd.randint(1, 600))
            need = (66 + len(frame) + 16 + 15) & ~15
            if used + need > BLOCK or len(frames) >= 5:
                break
            frames.append((1_795_000_000_000_000 + rnd.randint(0, 10**9), frame))
            used += need
        blocks.append(frames)
    return blocks


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_walk_reads_every_frame_and_gives_blocks_back(impl, seed):
    blocks = sample(seed)
    blocks[3] = None  # still the kernel's
    ring = make_ring(blocks)
    out: list = []
    taken, current = impl.drain_blocks(ring, BLOCK, 4, 0, out)
    assert (taken, current) == (3, 3)
    assert out == [f for b in blocks[:3] for f in b]
    for b in range(3):
        assert struct.unpack_from("=I", ring, b * BLOCK + 8)[0] == 0  # TP_STATUS_KERNEL again
    assert impl.drain_blocks(ring, BLOCK, 4, 3, out) == (0, 3)


@pytest.mark.parametrize("impl", IMPLS)
def test_wraps_around_and_honours_max_blocks(impl):
    blocks = sample(7)
    ring = make_ring(blocks)
    out: list = []
    assert impl.drain_blocks(ring, BLOCK, 4, 2, out, 1) == (1, 3)
    assert impl.drain_blocks(ring, BLOCK, 4, 3, out) == (3, 2)  # 3, then 0 and 1, then 2 is given back already
    assert out == blocks[2] + blocks[3] + blocks[0] + blocks[1]


@pytest.mark.skipif(ring_c is None, reason="built without extensions")
def test_cython_and_python_agree_byte_for_byte():
    for seed in range(20):
        blocks = sample(100 + seed)
        a, b = [], []
        ring_py.drain_blocks(make_ring(blocks), BLOCK, 4, 0, a)
        ring_c.drain_blocks(make_ring(blocks), BLOCK, 4, 0, b)
        assert a == b


@pytest.mark.skipif(ring_c is None, reason="built without extensions")
def test_cython_refuses_a_corrupt_block_instead_of_reading_past_it():
    ring = make_ring([[(1, b"x" * 10)]])
    struct.pack_into("=I", ring, 48 + 12, 10_000)  # tp_snaplen beyond the block
    with pytest.raises(ValueError, match="past the block end"):
        ring_c.drain_blocks(ring, BLOCK, 1, 0, [])
