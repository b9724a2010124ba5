"""The TPACKET_V3 block walk: the Cython module and its pure-Python twin read the same synthetic ring (laid out as
the kernel lays it: block descriptors, packet headers with tp_next_offset and tp_mac) identically, give blocks back,
stop at a block still owned by the kernel, wrap around, and honour max_blocks. Feeding an engine straight from the
ring (by pointer, in the compiled walk) gives the engine exactly what feeding it the frames one by one gives, and both
walks pick out the same frames as opening a connection (what the AI-flow marker reads)."""

from __future__ import annotations

import array
import mmap
import random
import struct
import sys
from pathlib import Path

import pytest

from costmesh.common.config import Config
from costmesh.native import ring_py
from costmesh.sensor.core import Sensor

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from make_demo_capture import build as demo_frames
from make_demo_capture import frame as tcp_frame

from .conftest import metric

try:
    from costmesh.native import ring as ring_c
except ImportError:  # built with COSTMESH_NO_EXTENSIONS=1
    ring_c = None

IMPLS = [pytest.param(ring_py, id="python")] + ([pytest.param(ring_c, id="cython")] if ring_c else [])
BLOCK = 4096


def make_ring(blocks: list[list[tuple[int, bytes]] | None], block: int = BLOCK) -> mmap.mmap:
    """A ring of len(blocks) blocks; None = a block the kernel still owns. Frames get tp_mac = 66 (as the kernel
    aligns them) and a 16-byte gap after each, so the walk must follow tp_next_offset."""
    ring = mmap.mmap(-1, block * len(blocks))
    for b, frames in enumerate(blocks):
        base = b * block
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


def drain(impl, ring, block_size: int, block_count: int, current: int, out: list, max_blocks: int = 0):
    """The walk collecting ``(timestamp_us, frame)`` (no engine, no opening frames): ``(blocks taken, next block)``."""
    taken, _frames, current = impl.feed_blocks(
        ring, block_size, block_count, current, None, out, None, None, max_blocks
    )
    return taken, current


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
    taken, current = drain(impl, ring, BLOCK, 4, 0, out)
    assert (taken, current) == (3, 3)
    assert out == [f for b in blocks[:3] for f in b]
    for b in range(3):
        assert struct.unpack_from("=I", ring, b * BLOCK + 8)[0] == 0  # TP_STATUS_KERNEL again
    assert drain(impl, ring, BLOCK, 4, 3, out) == (0, 3)


@pytest.mark.parametrize("impl", IMPLS)
def test_wraps_around_and_honours_max_blocks(impl):
    blocks = sample(7)
    ring = make_ring(blocks)
    out: list = []
    assert drain(impl, ring, BLOCK, 4, 2, out, 1) == (1, 3)
    assert drain(impl, ring, BLOCK, 4, 3, out) == (3, 2)  # 3, then 0 and 1, then 2 is given back already
    assert out == blocks[2] + blocks[3] + blocks[0] + blocks[1]


@pytest.mark.skipif(ring_c is None, reason="built without extensions")
def test_cython_and_python_agree_byte_for_byte():
    for seed in range(20):
        blocks = sample(100 + seed)
        a, b = [], []
        drain(ring_py, make_ring(blocks), BLOCK, 4, 0, a)
        drain(ring_c, make_ring(blocks), BLOCK, 4, 0, b)
        assert a == b


@pytest.mark.parametrize("impl", IMPLS)
def test_a_corrupt_block_is_refused_instead_of_read_past(impl):
    ring = make_ring([[(1, b"x" * 10)]])
    struct.pack_into("=I", ring, 48 + 12, 10_000)  # tp_snaplen beyond the block
    with pytest.raises(ValueError, match="past the block end"):
        drain(impl, ring, BLOCK, 1, 0, [])


def packed(frames: list[tuple[int, bytes]], block: int = 1 << 16) -> tuple[mmap.mmap, int]:
    """The frames laid out in as many ring blocks of ``block`` bytes as they need; returns the ring and its block
    count."""
    blocks: list[list[tuple[int, bytes]]] = [[]]
    used = 48
    for ts, f in frames:
        need = (66 + len(f) + 16 + 15) & ~15
        if used + need > block:
            blocks.append([])
            used = 48
        blocks[-1].append((ts, f))
        used += need
    return make_ring(blocks, block), len(blocks)


def engines():
    """(walk, engine class) pairs: each walk with the compiled engine (by pointer in the compiled walk, by
    ``feed_frame`` in the twin) and with the pure-Python engine."""
    from costmesh.native import _engine_py

    pairs = [pytest.param(ring_py, _engine_py.Engine, id="python-walk-python-engine")]
    if ring_c is not None:
        from costmesh.native import _engine

        pairs += [
            pytest.param(ring_c, _engine.Engine, id="cython-walk-cython-engine"),
            pytest.param(ring_c, _engine_py.Engine, id="cython-walk-python-engine"),
            pytest.param(ring_py, _engine.Engine, id="python-walk-cython-engine"),
        ]
    return pairs


@pytest.mark.parametrize(("impl", "engine_cls"), engines())
def test_feeding_an_engine_from_the_ring_equals_feeding_it_frame_by_frame(impl, engine_cls):
    frames, truth = demo_frames()
    ring, count = packed(frames)
    direct = Sensor(Config(), "n", engine_cls=engine_cls)
    for ts, f in frames:
        direct.feed_frame(ts, 1, f)
    walked = Sensor(Config(), "n", engine_cls=engine_cls)
    taken, n, current = impl.feed_blocks(ring, 1 << 16, count, 0, walked.engine, None, None, None)
    assert (taken, n, current) == (count, len(frames), 0)
    assert walked.stats() == direct.stats()
    calls = walked.drain(final=True)
    assert calls == direct.drain(final=True)
    by_tenant: dict[str, int] = {}
    for c in calls:
        by_tenant[c.tenant] = by_tenant.get(c.tenant, 0) + c.requests
    assert by_tenant == truth["requests_by_tenant"]


HELLO = bytes.fromhex("16030100") + b"\x01" * 60  # starts like a TLS handshake record


def v6frame(sport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 443, 7, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    src, dst = b"\x20\x01" + b"\0" * 13 + b"\x01", b"\xfe\x80" + b"\0" * 13 + b"\x02"
    return b"\x02" * 12 + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst) + tcp


@pytest.mark.parametrize("impl", IMPLS)
def test_the_walk_picks_out_the_first_opening_frame_of_each_connection(impl):
    get = b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
    first_a = tcp_frame("10.0.0.1", 40000, "10.0.0.2", 80, 1, 1, 0x18, get)
    frames = [
        (1, tcp_frame("10.0.0.1", 40000, "10.0.0.2", 80, 0, 0, 0x02)),  # SYN: no payload
        (2, first_a),
        (3, tcp_frame("10.0.0.2", 80, "10.0.0.1", 40000, 1, 60, 0x18, b"HTTP/1.1 200 OK\r\n\r\n")),  # a response
        (4, tcp_frame("10.0.0.1", 40000, "10.0.0.2", 80, 60, 1, 0x18, get)),  # the same connection again
        (5, tcp_frame("10.0.0.1", 40001, "10.0.0.2", 80, 1, 1, 0x18, b"POST /x HTTP/1.1\r\n\r\n")),  # another one
        (6, v6frame(50000, HELLO)),  # IPv6 ClientHello
        (7, v6frame(50000, HELLO)),  # retransmitted
        (8, tcp_frame("10.0.0.1", 40002, "10.0.0.2", 80, 1, 1, 0x18, b"\x00garbage")),
    ]
    ring, count = packed(frames)
    seen = array.array("Q", bytes(8 * 1024))
    hellos: list[bytes] = []
    out: list = []
    assert impl.feed_blocks(ring, 1 << 16, count, 0, None, out, hellos, seen)[1] == len(frames)
    assert out == frames
    assert hellos == [first_a, frames[4][1], frames[5][1]]
    with pytest.raises(ValueError, match="power-of-two"):
        impl.feed_blocks(packed(frames)[0], 1 << 16, count, 0, None, None, [], array.array("Q", bytes(8 * 3)))


@pytest.mark.skipif(ring_c is None, reason="built without extensions")
def test_both_walks_pick_out_the_same_opening_frames_from_random_traffic():
    rnd = random.Random(11)
    print("seed 11")
    frames = []
    for i in range(3000):
        port = 40000 + rnd.randrange(200)
        payload = rnd.choice([b"", b"GET / HTTP/1.1\r\n\r\n", HELLO, b"PUT /a HTTP/1.1\r\n\r\n", rnd.randbytes(20)])
        f = tcp_frame("10.0.0.1", port, "10.0.0.2", 80, i, 0, 0x18, payload)
        frames.append((i, f if rnd.random() > 0.05 else f[: rnd.randrange(len(f))]))  # some cut short
    results = []
    for impl in (ring_py, ring_c):
        ring, count = packed(frames)
        hellos: list[bytes] = []
        impl.feed_blocks(ring, 1 << 16, count, 0, None, None, hellos, array.array("Q", bytes(8 * 64)))
        results.append(hellos)
    assert results[0] == results[1] and 0 < len(results[0]) < len(frames)


def test_random_blocks_are_walked_or_refused_never_read_past_or_looped():
    """Blocks of random bytes marked as handed over (the kernel never writes them, a bug or a hostile writer might):
    both walks either read frames that lie inside the block or refuse with ValueError, and agree on which."""
    rnd = random.Random(5)
    print("seed 5")
    impls = [ring_py] + ([ring_c] if ring_c else [])
    refused = 0
    for _ in range(300):
        block = bytearray(rnd.randbytes(BLOCK))
        struct.pack_into("=III", block, 8, 1, rnd.choice([0, 1, 2, 5, 200, 2**32 - 1]), rnd.randrange(0, 200))
        outcomes = []
        for impl in impls:
            ring = mmap.mmap(-1, BLOCK)
            ring[:] = bytes(block)
            out: list = []
            try:
                drain(impl, ring, BLOCK, 1, 0, out)
                outcomes.append(("read", out))
            except ValueError as exc:
                outcomes.append(("refused", str(exc)))
        assert all(o == outcomes[0] for o in outcomes)
        refused += outcomes[0][0] == "refused"
    assert 0 < refused < 300


def test_the_live_ring_counts_a_bad_block_gives_it_back_and_reads_on():
    """``PacketRing.feed`` (the live reader): a block that would be read past its end is counted
    (costmesh_input_errors_total{kind="ring_block"}), handed back to the kernel, and the blocks after it are read."""
    from costmesh.sensor.live.ring import SEEN_CONNECTIONS, PacketRing

    def bad_blocks() -> float:
        return metric("costmesh_input_errors_total", service="sensor", kind="ring_block")

    blocks = sample(21)[:3]
    ring = make_ring(blocks)
    struct.pack_into("=I", ring, BLOCK + 48 + 12, 10_000)  # block 1's first frame runs past the block
    live = PacketRing.__new__(PacketRing)  # the reader alone, on a synthetic ring (no socket needed)
    live.ifname, live.map, live.block_size, live.block_count, live.current = "test0", ring, BLOCK, 3, 0
    live.seen = array.array("Q", bytes(8 * SEEN_CONNECTIONS))
    before = bad_blocks()
    out: list = []
    assert live.feed(None, out, None) == len(blocks[0]) + len(blocks[2])
    assert out == blocks[0] + blocks[2]
    assert bad_blocks() - before == 1
    assert all(struct.unpack_from("=I", ring, b * BLOCK + 8)[0] == 0 for b in range(3))
    assert live.current == 0
