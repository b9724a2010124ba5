"""A PACKET_RX_RING (TPACKET_V3) packet socket: the kernel writes the frames the socket filter lets through into
blocks of a ring shared with user space, and user space takes whole blocks at a time, with no system call per packet.

Reads: one interface, through the eBPF socket filter whose fd is given (it decides what is copied and how much).
The block walk is ``costmesh.native.ring`` (Cython) or its twin ``ring_py``.
Emits: frames (starting at the link-layer header) straight into the sensor's engine, or lists of ``(timestamp_us,
frame)``; the frames that open a connection (for the AI-flow marker); and the socket's counters (packets received,
packets dropped because the ring was full: the kernel never waits for us, it drops and counts).

Set-up order matters: the filter is attached and the ring mapped before the socket is bound to the interface, so no
unfiltered packet is ever queued.
"""

from __future__ import annotations

import array
import logging
import mmap
import socket
import struct
from dataclasses import dataclass

from costmesh.common.metrics import ERRORS
from costmesh.native import NO_EXTENSIONS

if NO_EXTENSIONS:
    from costmesh.native.ring_py import feed_blocks
else:
    try:
        from costmesh.native.ring import feed_blocks
    except ImportError:  # built without extensions
        from costmesh.native.ring_py import feed_blocks

log = logging.getLogger(__name__)

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_BPF = 50
SO_TIMESTAMPNS = 35
ETH_P_ALL = 0x0003
#: Connections remembered per ring by the opening-frame check (direct-mapped; a power of two).
SEEN_CONNECTIONS = 1 << 16

_STATS_V3 = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt


@dataclass(slots=True)
class RingStats:
    """Counters since the previous read (the kernel resets them on each read)."""

    packets: int = 0
    drops: int = 0


class PacketRing:
    """One interface's TPACKET_V3 ring with an eBPF socket filter attached."""

    def __init__(
        self, ifname: str, filter_fd: int, block_size: int = 1 << 20, block_count: int = 8, retire_ms: int = 20
    ) -> None:
        if block_size % mmap.PAGESIZE:
            raise ValueError(f"ring block size {block_size} is not a multiple of the page size {mmap.PAGESIZE}")
        self.ifname = ifname
        self.block_size = block_size
        self.block_count = block_count
        self.current = 0
        self.seen = array.array("Q", bytes(8 * SEEN_CONNECTIONS))
        frame_size = 2048
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing arrives before bind
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            req = struct.pack(
                "=7I",
                block_size,
                block_count,
                frame_size,
                block_size // frame_size * block_count,
                retire_ms,
                0,
                0,
            )
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(
                self.sock.fileno(), block_size * block_count, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, struct.pack("=i", filter_fd))
            # Stamp packets when they are handed to the stack (netif_rx, on lo in the sender's own send call), not
            # when the receive softirq gets to them: on a busy CPU that runs in ksoftirqd, milliseconds later, and a
            # response would look that much slower than its server was. Asking for timestamps on any socket turns
            # on the kernel's early stamping; the ring's frames then carry it.
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def feed(self, engine, out: list[tuple[int, bytes]] | None, hellos: list[bytes] | None, max_blocks: int = 0) -> int:
        """Hand the frames of every block the kernel has handed over to ``engine`` (the sensor's parsing engine; the
        compiled one takes them by pointer, with no Python object per frame) or, without one, append ``(timestamp_us,
        frame)`` to ``out``; append to ``hellos`` the frames that open a connection (first request or ClientHello:
        what names an AI flow). Gives the blocks back; returns the number of frames.

        ``max_blocks`` > 0 bounds the work of one call (the rest stays for the next one), so one busy interface cannot
        starve the event loop.
        """
        frames = blocks = 0
        while not max_blocks or blocks < max_blocks:
            try:  # a block at a time (a block holds up to a MiB of frames): a bad one is then exactly this one
                taken, n, self.current = feed_blocks(
                    self.map, self.block_size, self.block_count, self.current, engine, out, hellos, self.seen, 1
                )
            except ValueError as exc:  # a block the kernel would never write: count it, give it back, go on
                if not str(exc).startswith("ring block"):
                    raise  # the ring's set-up itself, not one block: no block to skip
                ERRORS.labels("sensor", "ring_block").inc()
                log.error("%s: %s", self.ifname, exc)
                struct.pack_into("=I", self.map, self.current * self.block_size + 8, 0)
                self.current = (self.current + 1) % self.block_count
                blocks += 1
                continue
            if not taken:
                break
            frames += n
            blocks += 1
        return frames

    def stats(self) -> RingStats:
        """Packets queued and dropped since the last call (PACKET_STATISTICS resets on read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        packets, drops, _freeze = _STATS_V3.unpack(raw)
        return RingStats(packets, drops)

    def close(self) -> None:
        try:
            self.map.close()
        finally:
            self.sock.close()
