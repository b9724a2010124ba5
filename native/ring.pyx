# cython: language_level=3
"""Walks the ready blocks of a TPACKET_V3 receive ring (see ``costmesh.sensor.live_ring``) without a Python object
per header field: one bytes object and one tuple per frame, nothing else.

Twin: ``ring_py.py`` (same interface, same results). The block status word is read with acquire and written back
with release ordering, as the kernel's side of the ring expects.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    static inline unsigned int cm_ring_load(const unsigned char *p) {
        return __atomic_load_n((const unsigned int *)p, __ATOMIC_ACQUIRE);
    }
    static inline void cm_ring_release(unsigned char *p) {
        __atomic_store_n((unsigned int *)p, 0u, __ATOMIC_RELEASE);
    }
    """
    unsigned int cm_ring_load(const unsigned char *p) nogil
    void cm_ring_release(unsigned char *p) nogil

cdef enum:
    TP_STATUS_USER = 1


def drain_blocks(object ring, Py_ssize_t block_size, Py_ssize_t block_count, Py_ssize_t current, list out,
                 Py_ssize_t max_blocks=0):
    """Append ``(timestamp_us, frame)`` of every block the kernel handed over, starting at block ``current``, and
    give each block back. Returns ``(blocks taken, next current block)``. ``max_blocks`` > 0 bounds the work."""
    cdef unsigned char[::1] view = ring
    cdef unsigned char *mem = &view[0]
    cdef Py_ssize_t size = view.shape[0]
    cdef Py_ssize_t taken = 0, base, off
    cdef uint32_t count, i, next_off, sec, nsec, snaplen
    cdef uint16_t mac
    cdef unsigned char *blk
    cdef unsigned char *pkt
    if block_size <= 0 or block_count <= 0 or block_size * block_count > size:
        raise ValueError("ring geometry does not fit the mapped ring")
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
            out.append(((<uint64_t>sec) * 1000000 + nsec // 1000, PyBytes_FromStringAndSize(<char *>pkt + mac, snaplen)))
            off += next_off
        cm_ring_release(blk + 8)
        current = (current + 1) % block_count
        taken += 1
    return taken, current
