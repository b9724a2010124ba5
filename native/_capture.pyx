"""Compiled twin of ``_capture_py.py``: streams frames out of pcap and pcapng files.

Reads: classic pcap (either byte order, micro- or nanosecond timestamps) and pcapng (sections of either byte order,
several interfaces with their link types and ``if_tsresol``, Enhanced, Simple and obsolete Packet blocks). Emits: for
the engine, a C ``Frame`` pointing into the read buffer (no Python object per frame); for Python callers, the same
``(timestamp µs, link type, frame bytes)`` tuples as the twin. Memory stays bounded (chunked reads). A truncated or
corrupt file raises ``CaptureError`` with the byte offset; every frame before it has been delivered.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcpy, memmove

from .kinds import CaptureError
from ._capture_py import CHUNK
from ._capture_py import MAX_FRAME as _MAX_FRAME
from ._capture_py import MAX_TS as _MAX_TS
from ._capture_py import _ts_us

# limits as C values: checked per frame, so no Python object may stand in for them
cdef uint32_t MAX_FRAME = _MAX_FRAME


cdef inline uint32_t rd32(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline unsigned int rd16(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (p[0] << 8) | p[1]
    return (p[1] << 8) | p[0]


cdef class CaptureReader:
    def __init__(self, source, Py_ssize_t chunk_size=CHUNK):
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            self.path = str(source)
            self._fh = open(source, "rb")
            self._own = True
        else:
            self.path = getattr(source, "name", "<stream>")
            self._fh = source
            self._own = False
        self._chunk = chunk_size
        self._buf = bytearray()
        self._p = NULL
        self._len = 0
        self._readinto = getattr(self._fh, "readinto", None)
        self._pos = 0
        self._eof = False
        self.frames = 0
        self.format = ""
        self.offset = 0
        self._state = 0
        self._ifaces = []
        self._last_ts = 0
        self._pending = 0

    def close(self):
        if self._own and self._fh is not None:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef bint _need(self, Py_ssize_t n) except -1:
        """At least ``n`` unread bytes in the buffer (False at end of file). The unread tail moves to the front and
        the file is read straight into the one reused buffer (``readinto``): no new bytes object per chunk."""
        cdef Py_ssize_t avail = self._len - self._pos
        cdef Py_ssize_t want, got
        cdef bytes more
        while avail < n and not self._eof:
            if self._pos:
                memmove(self._p, self._p + self._pos, avail)
                self._len = avail
                self._pos = 0
            want = max(self._chunk, n)
            if self._len + want > len(self._buf):
                self._buf.extend(bytes(self._len + want - len(self._buf)))
                self._p = PyByteArray_AS_STRING(self._buf)
            if self._readinto is not None:
                with memoryview(self._buf) as view:
                    got = self._readinto(view[self._len:self._len + want]) or 0
            else:
                more = self._fh.read(want)
                got = len(more)
                memcpy(self._p + self._len, PyBytes_AS_STRING(more), got)
            if got <= 0:
                self._eof = True
                break
            self._len += got
            avail = self._len
        return avail >= n

    def _fail(self, kind, reason):
        self._state = 3
        self.close()
        return CaptureError(self.path, self.offset, kind, reason)

    cdef int next_c(self, Frame* out) except -1:
        """1: a frame in ``out``; 0: clean end of file. Raises ``CaptureError``."""
        cdef const uint8_t* b
        cdef uint32_t magic_le, magic_be, caplen, sec, frac, btype, blen, iface, hi, lo, orig, snap
        cdef Py_ssize_t body, end, p, avail
        cdef int code, olen, tsresol, linktype
        self.offset += self._pending
        self._pending = 0
        if self._state == 3:
            return 0
        if self._state == 0:
            if not self._need(4):
                raise self._fail("capture_format", "empty file or not a capture")
            b = <const uint8_t*>self._p + self._pos
            if b[0] == 0x0A and b[1] == 0x0D and b[2] == 0x0D and b[3] == 0x0A:
                self.format = "pcapng"
                self._state = 2
            else:
                self.format = "pcap"
                if not self._need(24):
                    raise self._fail("capture_truncated", "truncated pcap file header")
                b = <const uint8_t*>self._p + self._pos
                magic_le = rd32(b, False)
                magic_be = rd32(b, True)
                if magic_le == 0xA1B2C3D4 or magic_le == 0xA1B23C4D:
                    self._big = False
                    self._div = 1 if magic_le == 0xA1B2C3D4 else 1000
                elif magic_be == 0xA1B2C3D4 or magic_be == 0xA1B23C4D:
                    self._big = True
                    self._div = 1 if magic_be == 0xA1B2C3D4 else 1000
                else:
                    raise self._fail(
                        "capture_format", f"unknown magic {bytes(self._buf[self._pos:min(self._pos + 4, self._len)]).hex()}: "
                        "not a pcap or pcapng file"
                    )
                self._linktype = rd32(b + 20, self._big) & 0xFFFF
                self._pos += 24
                self.offset = 24
                self._state = 1
        if self._state == 1:
            if not self._need(16):
                if self._len - self._pos:
                    raise self._fail("capture_truncated", "truncated record header")
                self._state = 3
                self.close()
                return 0
            b = <const uint8_t*>self._p + self._pos
            sec = rd32(b, self._big)
            frac = rd32(b + 4, self._big)
            caplen = rd32(b + 8, self._big)
            if caplen > MAX_FRAME:
                raise self._fail("capture_corrupt", f"record length {caplen} exceeds {MAX_FRAME}")
            if not self._need(16 + caplen):
                raise self._fail(
                    "capture_truncated", f"truncated record ({self._len - self._pos - 16} of {caplen} bytes)"
                )
            b = <const uint8_t*>self._p + self._pos
            out.ts_us = <int64_t>sec * 1000000 + frac // self._div
            out.linktype = self._linktype
            out.data = b + 16
            out.n = caplen
            self._pos += 16 + caplen
            self._pending = 16 + caplen
            self.frames += 1
            return 1
        # pcapng
        while True:
            if not self._need(12):
                if self._len - self._pos:
                    raise self._fail("capture_truncated", "truncated block header")
                self._state = 3
                self.close()
                return 0
            b = <const uint8_t*>self._p + self._pos
            if b[0] == 0x0A and b[1] == 0x0D and b[2] == 0x0D and b[3] == 0x0A:
                if b[8] == 0x4D and b[9] == 0x3C and b[10] == 0x2B and b[11] == 0x1A:
                    self._big = False
                elif b[8] == 0x1A and b[9] == 0x2B and b[10] == 0x3C and b[11] == 0x4D:
                    self._big = True
                else:
                    raise self._fail("capture_format", "bad pcapng byte-order magic")
                self._ifaces = []
            btype = rd32(b, self._big)
            blen = rd32(b + 4, self._big)
            if blen < 12 or blen % 4 or blen > MAX_FRAME + 64 * 1024:
                raise self._fail("capture_corrupt", f"bad block length {blen}")
            if not self._need(blen):
                raise self._fail(
                    "capture_truncated", f"truncated block ({self._len - self._pos} of {blen} bytes)"
                )
            b = <const uint8_t*>self._p + self._pos
            if rd32(b + blen - 4, self._big) != blen:
                raise self._fail("capture_corrupt", "block trailer length does not match")
            body = 8
            end = blen - 4
            if btype == 1:
                if end - body < 8:
                    raise self._fail("capture_corrupt", "short interface block")
                linktype = rd16(b + body, self._big)
                snap = rd32(b + body + 4, self._big)
                tsresol = 6
                p = body + 8
                while p + 4 <= end:
                    code = rd16(b + p, self._big)
                    olen = rd16(b + p + 2, self._big)
                    if code == 0:
                        break
                    if code == 9 and olen >= 1 and p + 5 <= end:
                        tsresol = b[p + 4]
                    p += 4 + olen + ((-olen) % 4)
                if (tsresol & 0x80 and tsresol & 0x7F > 40) or (not tsresol & 0x80 and tsresol > 19):
                    raise self._fail("capture_corrupt", f"unsupported if_tsresol {tsresol}")
                self._ifaces.append((linktype, snap, tsresol))
            elif btype == 6 or btype == 2:
                if end - body < 20:
                    raise self._fail("capture_corrupt", "short packet block")
                if btype == 6:
                    iface = rd32(b + body, self._big)
                    hi = rd32(b + body + 4, self._big)
                    lo = rd32(b + body + 8, self._big)
                    caplen = rd32(b + body + 12, self._big)
                else:
                    iface = rd16(b + body, self._big)
                    hi = rd32(b + body + 4, self._big)
                    lo = rd32(b + body + 8, self._big)
                    caplen = rd32(b + body + 12, self._big)
                if iface >= len(self._ifaces):
                    raise self._fail("capture_corrupt", f"packet on undeclared interface {iface}")
                if caplen > end - body - 20:
                    raise self._fail("capture_corrupt", f"captured length {caplen} exceeds its block")
                linktype, _snap, tsresol = self._ifaces[iface]
                ts = _ts_us((<unsigned long long>hi << 32) | lo, tsresol)
                if ts > _MAX_TS:
                    raise self._fail("capture_corrupt", "timestamp out of range")
                self._last_ts = ts
                out.ts_us = self._last_ts
                out.linktype = linktype
                out.data = b + body + 20
                out.n = caplen
                self._pos += blen
                self._pending = blen
                self.frames += 1
                return 1
            elif btype == 3:
                if not self._ifaces:
                    raise self._fail("capture_corrupt", "simple packet before any interface")
                if end - body < 4:
                    raise self._fail("capture_corrupt", "short simple packet block")
                orig = rd32(b + body, self._big)
                linktype, snap, _res = self._ifaces[0]
                avail = end - body - 4
                caplen = orig if orig < avail else avail
                if snap and caplen > snap:
                    caplen = snap
                out.ts_us = self._last_ts
                out.linktype = linktype
                out.data = b + body + 4
                out.n = caplen
                self._pos += blen
                self._pending = blen
                self.frames += 1
                return 1
            self._pos += blen
            self.offset += blen

    def __iter__(self):
        cdef Frame fr
        try:
            while self.next_c(&fr):
                yield fr.ts_us, fr.linktype, (<const char*>fr.data)[:fr.n]
        finally:
            self.close()
