"""Recording the demo's traffic to a pcap file when live capture (eBPF) is not available: a plain packet socket on
``lo`` read in a thread, keeping the incoming copy of each IPv4 packet between the demo's own addresses. The
sensor then replays the file through the same parsing code as live frames.

Each packet carries the kernel's time of its sending (``SO_TIMESTAMPNS``: stamped when handed to the stack, on ``lo``
in the sender's own call), not the time this thread got to it: server time is read from those times, and on a busy
machine the reader runs milliseconds late."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
LINKTYPE_ETHERNET = 1
SNAPLEN = 262_144


class RecorderUnavailable(RuntimeError):
    """No packet socket here (it needs CAP_NET_RAW)."""


class Recorder:
    def __init__(self, path: Path, addresses: set[str]) -> None:
        self.path = Path(path)
        self.addresses = {socket.inet_aton(a) for a in addresses}
        self.packets = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="demo-recorder", daemon=True)
        self._sock: socket.socket | None = None

    @staticmethod
    def check() -> None:
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
        except OSError as exc:
            raise RecorderUnavailable(str(exc)) from None

    def start(self) -> Recorder:
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except OSError as exc:
            raise RecorderUnavailable(str(exc)) from None
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.05)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        with open(self.path, "wb") as out:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
            while True:
                try:
                    frame, ancillary, _flags, addr = self._sock.recvmsg(SNAPLEN, 64)
                except TimeoutError:
                    if self._stopping.is_set():
                        return
                    continue
                if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                    continue
                if frame[26:30] not in self.addresses and frame[30:34] not in self.addresses:
                    continue
                sec, usec = _stamp(ancillary)
                out.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
                self.packets += 1

    def stop(self) -> None:
        time.sleep(0.2)
        self._stopping.set()  # the reader ends on its first idle timeout, after what is queued
        self._thread.join(10)
        if self._sock is not None:
            self._sock.close()


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(seconds, microseconds) of the kernel's timestamp in a packet's ancillary data; now when there is none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("=qq", data)
            return sec, nsec // 1000
    now = time.time_ns()
    return now // 1_000_000_000, now // 1000 % 1_000_000
