"""Pure-Python twin of ``_capture.pyx``: streams frames out of pcap and pcapng files.

Reads: classic pcap (either byte order, micro- or nanosecond timestamps) and pcapng (sections of either byte order,
several interfaces with their link types and ``if_tsresol``, Enhanced, Simple and obsolete Packet blocks). Emits:
``(timestamp µs, link type, frame bytes)``. The file is read in chunks, so memory stays bounded whatever its size.
A truncated or corrupt file raises ``CaptureError`` naming the byte offset; every frame before it has been yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .kinds import CaptureError

#: Largest frame accepted; a larger caplen means a corrupt file.
MAX_FRAME = 1 << 18
CHUNK = 1 << 20
#: Largest timestamp (µs) accepted; beyond it a pcapng block is corrupt (keeps both builds in 64-bit range).
MAX_TS = 1 << 62

PCAP_MAGICS = {
    0xA1B2C3D4: 1,  # µs
    0xA1B23C4D: 1000,  # ns
}


def _ts_us(ts: int, resol: int) -> int:
    """Ticks to µs; ``resol`` is the raw ``if_tsresol`` byte (high bit: power of 2, else power of 10)."""
    if resol & 0x80:
        shift = resol & 0x7F
        return (ts >> shift) * 1_000_000 + (((ts & ((1 << shift) - 1)) * 1_000_000) >> shift)
    if resol >= 6:
        return ts // 10 ** (resol - 6)
    return ts * 10 ** (6 - resol)


class CaptureReader:
    """Iterate over the frames of one capture; ``frames`` and ``offset`` tell how far it got."""

    def __init__(self, source: str | Path | BinaryIO, chunk_size: int = CHUNK) -> None:
        if isinstance(source, str | Path):
            self.path = str(source)
            self._fh: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by close()/iteration end
            self._own = True
        else:
            self.path = getattr(source, "name", "<stream>")
            self._fh = source
            self._own = False
        self._chunk = chunk_size
        self._buf = b""
        self._pos = 0
        self._base = 0  # file offset of _buf[0]
        self._eof = False
        self.frames = 0
        self.format = ""
        self.offset = 0

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _need(self, n: int) -> bool:
        """Make ``n`` bytes available at ``_pos``; False at a clean end of file with nothing left."""
        while len(self._buf) - self._pos < n and not self._eof:
            more = self._fh.read(max(self._chunk, n))
            if not more:
                self._eof = True
                break
            self._base += self._pos
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        return len(self._buf) - self._pos >= n

    def _fail(self, kind: str, reason: str) -> CaptureError:
        return CaptureError(self.path, self.offset, kind, reason)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        try:
            if not self._need(4):
                raise self._fail("capture_format", "empty file or not a capture")
            magic = self._buf[self._pos : self._pos + 4]
            if magic == b"\x0a\x0d\x0d\x0a":
                self.format = "pcapng"
                yield from self._pcapng()
            else:
                self.format = "pcap"
                yield from self._pcap()
        finally:
            self.close()

    def _pcap(self) -> Iterator[tuple[int, int, bytes]]:
        if not self._need(24):
            raise self._fail("capture_truncated", "truncated pcap file header")
        head = self._buf[self._pos : self._pos + 24]
        magic_le = struct.unpack_from("<I", head)[0]
        magic_be = struct.unpack_from(">I", head)[0]
        if magic_le in PCAP_MAGICS:
            order, div = "<", PCAP_MAGICS[magic_le]
        elif magic_be in PCAP_MAGICS:
            order, div = ">", PCAP_MAGICS[magic_be]
        else:
            raise self._fail("capture_format", f"unknown magic {head[:4].hex()}: not a pcap or pcapng file")
        linktype = struct.unpack_from(order + "I", head, 20)[0] & 0xFFFF
        rec = struct.Struct(order + "IIII")
        self._pos += 24
        self.offset = 24
        while True:
            if not self._need(16):
                if len(self._buf) - self._pos:
                    raise self._fail("capture_truncated", "truncated record header")
                return
            sec, frac, caplen, _orig = rec.unpack_from(self._buf, self._pos)
            if caplen > MAX_FRAME:
                raise self._fail("capture_corrupt", f"record length {caplen} exceeds {MAX_FRAME}")
            if not self._need(16 + caplen):
                got = len(self._buf) - self._pos - 16
                raise self._fail("capture_truncated", f"truncated record ({got} of {caplen} bytes)")
            data = self._buf[self._pos + 16 : self._pos + 16 + caplen]
            self._pos += 16 + caplen
            self.frames += 1
            yield sec * 1_000_000 + frac // div, linktype, data
            self.offset += 16 + caplen

    def _pcapng(self) -> Iterator[tuple[int, int, bytes]]:
        order = "<"
        ifaces: list[tuple[int, int, int]] = []  # (linktype, snaplen, tsresol)
        last_ts = 0
        while True:
            if not self._need(12):
                if len(self._buf) - self._pos:
                    raise self._fail("capture_truncated", "truncated block header")
                return
            btype_raw = self._buf[self._pos : self._pos + 4]
            if btype_raw == b"\x0a\x0d\x0d\x0a":
                bom = self._buf[self._pos + 8 : self._pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise self._fail("capture_format", "bad pcapng byte-order magic")
                ifaces = []
            btype, blen = struct.unpack_from(order + "II", self._buf, self._pos)
            if blen < 12 or blen % 4 or blen > MAX_FRAME + 64 * 1024:
                raise self._fail("capture_corrupt", f"bad block length {blen}")
            if not self._need(blen):
                raise self._fail("capture_truncated", f"truncated block ({len(self._buf) - self._pos} of {blen} bytes)")
            start = self._pos
            if struct.unpack_from(order + "I", self._buf, start + blen - 4)[0] != blen:
                raise self._fail("capture_corrupt", "block trailer length does not match")
            body = start + 8
            end = start + blen - 4
            frame = None
            if btype == 1:  # Interface Description
                if end - body < 8:
                    raise self._fail("capture_corrupt", "short interface block")
                linktype, _res, snaplen = struct.unpack_from(order + "HHI", self._buf, body)
                tsresol = 6
                p = body + 8
                while p + 4 <= end:
                    code, olen = struct.unpack_from(order + "HH", self._buf, p)
                    if code == 0:
                        break
                    if code == 9 and olen >= 1 and p + 5 <= end:
                        tsresol = self._buf[p + 4]
                    p += 4 + olen + (-olen % 4)
                if (tsresol & 0x80 and tsresol & 0x7F > 40) or (not tsresol & 0x80 and tsresol > 19):
                    raise self._fail("capture_corrupt", f"unsupported if_tsresol {tsresol}")
                ifaces.append((linktype, snaplen, tsresol))
            elif btype in (6, 2):  # Enhanced Packet, obsolete Packet
                if end - body < 20:
                    raise self._fail("capture_corrupt", "short packet block")
                if btype == 6:
                    iface, hi, lo, caplen, _orig = struct.unpack_from(order + "IIIII", self._buf, body)
                else:
                    iface, _drops, hi, lo, caplen, _orig = struct.unpack_from(order + "HHIIII", self._buf, body)
                if iface >= len(ifaces):
                    raise self._fail("capture_corrupt", f"packet on undeclared interface {iface}")
                if caplen > end - body - 20:
                    raise self._fail("capture_corrupt", f"captured length {caplen} exceeds its block")
                linktype, _snap, resol = ifaces[iface]
                ts = _ts_us((hi << 32) | lo, resol)
                if ts > MAX_TS:
                    raise self._fail("capture_corrupt", "timestamp out of range")
                last_ts = ts
                frame = (last_ts, linktype, self._buf[body + 20 : body + 20 + caplen])
            elif btype == 3:  # Simple Packet: interface 0, no timestamp (the previous one is kept)
                if not ifaces:
                    raise self._fail("capture_corrupt", "simple packet before any interface")
                if end - body < 4:
                    raise self._fail("capture_corrupt", "short simple packet block")
                orig = struct.unpack_from(order + "I", self._buf, body)[0]
                linktype, snap, _resol = ifaces[0]
                caplen = min(orig, end - body - 4)
                if snap:
                    caplen = min(caplen, snap)
                frame = (last_ts, linktype, self._buf[body + 4 : body + 4 + caplen])
            self._pos += blen
            if frame is not None:
                self.frames += 1
                yield frame
            self.offset += blen
