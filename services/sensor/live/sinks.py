"""The seams between live capture and the parsers, and what one window hands on.

``FrameSink`` takes frames straight from a packet ring, ``TlsSink`` batches of OpenSSL plaintext (``TlsChunk``);
the capture does not know which parser runs behind them. ``SensorFrameSink`` is the sensor's own (frames by pointer
into the compiled engine, the same parsing core capture replays use), ``FrameListSink`` the base of sinks that want
frames as Python objects (tests, tools). A ``LiveWindow`` carries one window's records, flow volumes, counters and
compute samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from costmesh.common.schemas import CapacitySample, ComputeSample, FlowVolume, ObservedCall

from ..core import Sensor
from .metrics import ParserMetrics
from .ring import PacketRing


class FrameSink(Protocol):
    """A parser of link-layer frames: it takes them straight from a packet ring."""

    def feed_ring(self, ring: PacketRing, hellos: list[bytes] | None, max_blocks: int) -> int:
        """Take the ring's ready blocks (``PacketRing.feed``; frames start at the Ethernet header, cut to the snap
        length), appending the frames that open a connection to ``hellos``. Returns the number of frames."""

    def feed_reads(self, reads: list[tuple[int, bytes, int, bytes, int]]) -> None:
        """Reads by servers on this host, ``(ts_us, local, local_port, peer, peer_port)``: where the server time of
        the requests they read starts (``Engine.server_reads``)."""

    def drain(self) -> list[ObservedCall]:
        """The records of every finished window, forgotten afterwards."""


class FrameListSink:
    """Base of frame sinks that want each frame as a Python object (``feed_frames`` gets ``(timestamp_us, frame)``
    lists): recorders in tests, tools. The sensor itself uses ``SensorFrameSink``, which makes no object per frame."""

    def feed_ring(self, ring: PacketRing, hellos: list[bytes] | None, max_blocks: int) -> int:
        frames: list[tuple[int, bytes]] = []
        n = ring.feed(None, frames, hellos, max_blocks)
        if frames:
            self.feed_frames(frames)
        return n

    def feed_frames(self, frames: Sequence[tuple[int, bytes]]) -> None:
        raise NotImplementedError

    def feed_reads(self, reads: list[tuple[int, bytes, int, bytes, int]]) -> None:
        """Frames only: server reads are not wanted here."""

    def drain(self) -> list[ObservedCall]:
        return []


@dataclass(slots=True)
class TlsChunk:
    """Plaintext of one ``SSL_write``/``SSL_read`` call of one process (or one part when the call was long)."""

    ts_us: int
    pid: int
    tid: int
    ssl: int  # the SSL* pointer: one TLS connection within the process
    cgroup_id: int
    comm: str
    direction: str  # "write" (sent by the process) or "read" (received)
    offset: int  # where ``data`` starts within the call
    length: int  # bytes of the whole call (more than offset + len(data) when cut)
    data: bytes


class TlsSink(Protocol):
    """A parser of TLS plaintext streams (per pid and SSL connection, per direction)."""

    def feed_tls(self, chunks: Sequence[TlsChunk]) -> None: ...

    def drain(self) -> list[ObservedCall]: ...


class SensorFrameSink:
    """Live frames into the sensor's parsing core, by pointer from the ring when the engine is compiled. Ring frames
    carry an Ethernet header (``lo`` included)."""

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.metrics = ParserMetrics(sensor, "frames")

    def feed_ring(self, ring: PacketRing, hellos: list[bytes] | None, max_blocks: int) -> int:
        return ring.feed(self.sensor.engine, None, hellos, max_blocks)

    def feed_reads(self, reads: list[tuple[int, bytes, int, bytes, int]]) -> None:
        self.sensor.engine.server_reads(reads)

    def drain(self) -> list[ObservedCall]:
        records = self.sensor.drain()
        self.metrics.export()
        return records


@dataclass
class LiveCounters:
    """What happened in the kernel and the rings during one window."""

    seen_packets: int = 0
    passed_packets: int = 0
    ring_packets: int = 0
    ring_drops: int = 0
    flow_table_full_packets: int = 0
    flow_table_full_bytes: int = 0
    tls_events: int = 0
    tls_lost: int = 0
    reads_lost: int = 0


@dataclass
class LiveWindow:
    """One window's output: parsed calls, kernel flow volumes, counters."""

    window_start_us: int
    window_end_us: int
    records: list[ObservedCall]
    flows: list[FlowVolume]
    counters: LiveCounters = field(default_factory=LiveCounters)
    #: CPU and memory per workload in the window, and the node's capacity (``compute.ComputeSampler``).
    compute: list[ComputeSample] = field(default_factory=list)
    capacity: list[CapacitySample] = field(default_factory=list)
