# cython: language_level=3
"""Walks the ready blocks of a TPACKET_V3 receive ring (see ``costmesh.sensor.live.ring``) and hands each frame on.

The live sensor's path (``feed_blocks`` with a compiled ``Engine``) makes no Python object per frame: frames go by
pointer into the engine's C entry while the block is still ours, and only the rare frame that opens a connection
(a ClientHello or the first request: what names an AI flow) is copied out for the AI-flow marker. Other callers get
``(timestamp_us, frame)`` tuples.

Twin: ``ring_py.py`` (same interface, same results). The block status word is read with acquire and written back
with release ordering, as the kernel's side of the ring expects.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from costmesh.native._engine cimport feed_raw
from costmesh.native._net cimport Pkt, decode_c

from costmesh.native._engine import Engine as _CompiledEngine

cdef extern from *:
    """
    static inline unsigned int cm_ring_load(const unsigned char *p) {
        return __atomic_load_n((const unsigned int *)p, __ATOMIC_ACQUIRE);
    }
    static inline void cm_ring_release(unsigned char *p) {
        __atomic_store_n((unsigned int *)p, 0u, __ATOMIC_RELEASE);
    }
    #define CM_FNV_OFFSET 0xCBF29CE484222325ULL
    #define CM_FNV_PRIME 0x100000001B3ULL
    """
    unsigned int cm_ring_load(const unsigned char *p) nogil
    void cm_ring_release(unsigned char *p) nogil
    const uint64_t FNV_OFFSET "CM_FNV_OFFSET"
    const uint64_t FNV_PRIME "CM_FNV_PRIME"

cdef enum:
    TP_STATUS_USER = 1
    LINKTYPE_ETHERNET = 1


cdef inline uint64_t _fnv(uint64_t h, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    return h


cdef inline bint _opens(const uint8_t* f, Py_ssize_t n, uint64_t[::1] seen) noexcept:
    """True for the first frame of a TCP connection whose payload starts like a ClientHello or a request (GET, POST,
    PUT, PATCH, DELETE, OPTIONS) that this ring has seen; ``seen`` is a direct-mapped table of connection hashes
    (a collision only means one more look at a connection)."""
    cdef Pkt pkt
    cdef uint8_t c, port[4]
    cdef uint64_t h, slot
    if decode_c(LINKTYPE_ETHERNET, f, n, &pkt) != 0 or pkt.l4 != 6 or pkt.n <= 0:
        return False
    c = f[pkt.off]
    if c != 0x16 and c != 0x47 and c != 0x50 and c != 0x44 and c != 0x4F:  # TLS handshake, G, P, D, O
        return False
    port[0] = pkt.sport >> 8
    port[1] = pkt.sport & 0xFF
    port[2] = pkt.dport >> 8
    port[3] = pkt.dport & 0xFF
    h = _fnv(_fnv(_fnv(FNV_OFFSET, pkt.src, 16), pkt.dst, 16), port, 4) | 1
    slot = h & <uint64_t>(seen.shape[0] - 1)
    if seen[slot] == h:
        return False
    seen[slot] = h
    return True


def feed_blocks(object ring, Py_ssize_t block_size, Py_ssize_t block_count, Py_ssize_t current, object engine,
                list out, list hellos, uint64_t[::1] seen, Py_ssize_t max_blocks=0):
    """Hand every frame of the blocks the kernel handed over, starting at block ``current``, to ``engine`` (a
    compiled ``Engine`` by pointer, any other by ``feed_frame``) or, without one, append ``(timestamp_us, frame)``
    to ``out`` (when given); append the frames that open a connection to ``hellos`` (when given; ``seen``, a
    power-of-two table, remembers connections). Give each block back. Returns ``(blocks taken, frames, next current
    block)``. ``max_blocks`` > 0 bounds the work."""
    cdef unsigned char[::1] view = ring
    cdef unsigned char *mem = &view[0]
    cdef Py_ssize_t size = view.shape[0]
    cdef Py_ssize_t taken = 0, frames = 0, base, off
    cdef uint32_t count, i, next_off, sec, nsec, snaplen
    cdef uint16_t mac
    cdef int64_t ts
    cdef unsigned char *blk
    cdef unsigned char *pkt
    cdef bint compiled = type(engine) is _CompiledEngine
    if block_size <= 0 or block_count <= 0 or block_size * block_count > size:
        raise ValueError("ring geometry does not fit the mapped ring")
    if hellos is not None and (seen is None or seen.shape[0] == 0 or seen.shape[0] & (seen.shape[0] - 1)):
        raise ValueError("the table of seen connections must have a power-of-two size")
    while max_blocks == 0 or taken < max_blocks:
        base = current * block_size
        blk = mem + base
        if not (cm_ring_load(blk + 8) & TP_STATUS_USER):
            break
        count = (<uint32_t *>(blk + 12))[0]
        off = (<uint32_t *>(blk + 16))[0]
        for i in range(count):
            # caller must ensure: the kernel wrote every header of a block it marked TP_STATUS_USER
            if off + 28 > block_size:
                raise ValueError(f"ring block {current}: packet header past the block end")
            pkt = blk + off
            next_off = (<uint32_t *>pkt)[0]
            sec = (<uint32_t *>(pkt + 4))[0]
            nsec = (<uint32_t *>(pkt + 8))[0]
            snaplen = (<uint32_t *>(pkt + 12))[0]
            mac = (<uint16_t *>(pkt + 24))[0]
            if off + mac + snaplen > block_size:
                raise ValueError(f"ring block {current}: frame past the block end")
            if next_off < 28 and i + 1 < count:
                raise ValueError(f"ring block {current}: packet chain does not advance")
            ts = (<int64_t>sec) * 1000000 + nsec // 1000
            if hellos is not None and _opens(pkt + mac, snaplen, seen):
                hellos.append(PyBytes_FromStringAndSize(<char *>pkt + mac, snaplen))
            if compiled:
                feed_raw(engine, ts, LINKTYPE_ETHERNET, pkt + mac, snaplen)
            elif engine is not None:
                engine.feed_frame(ts, LINKTYPE_ETHERNET, PyBytes_FromStringAndSize(<char *>pkt + mac, snaplen))
            elif out is not None:
                out.append((ts, PyBytes_FromStringAndSize(<char *>pkt + mac, snaplen)))
            off += next_off
            frames += 1
        cm_ring_release(blk + 8)
        current = (current + 1) % block_count
        taken += 1
    return taken, frames, current
