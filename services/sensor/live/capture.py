"""Live capture: the eBPF socket filter on the configured interfaces, PACKET_RX_RING rings read a block at a time,
kernel flow counters polled every window into ``FlowVolume`` records, and (optionally) OpenSSL plaintext by uprobes.

Reads: the interfaces of ``sensor.interfaces`` (through ``bpf/sensor.bpf.c``), when servers on the watched HTTP and
PostgreSQL ports read their connections (``bpf/reads.bpf.c``: where their server time starts) and, with
``sensor.tls_capture``, the ``libssl.so.3`` calls of the probed processes (``bpf/tls.bpf.c``, probes kept by
``tls_probes``).
Emits: ring frames to a ``FrameSink`` (by pointer into the compiled engine) and batches of ``TlsChunk`` to a
``TlsSink`` (the parsers, see ``sinks``), and per window a ``LiveWindow``: the sinks' ``ObservedCall`` records, the
kernel's ``FlowVolume`` records (``flows``), and counters.

The parsers are behind the two sink protocols so that this module does not know which parser runs. The ring walk
also picks out the frames that open a connection; ``ai_marker.AiFlowMarker`` reads their SNI or Host and marks the
flow, so the kernel passes an AI flow's whole payload.

Overload: the kernel never waits for user space. A full packet ring drops and the socket counts it; a full TLS ring
buffer drops and the program counts it; a full flow table counts the bytes in a separate slot. All three are
exported as Prometheus metrics (``metrics``) and in each ``LiveWindow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from costmesh.common.config import Config
from costmesh.common.schemas import FlowVolume

from .. import bpf
from .ai_marker import AiFlowMarker
from .flows import FlowNamer, FlowVolumes
from .metrics import (
    CALL_RECORDS,
    CPU_SECONDS,
    FLOW_RECORDS,
    FLOW_TABLE_FULL_BYTES,
    FLOWS,
    KERNEL_PACKETS,
    PACKETS,
    SERVER_READS,
    SERVER_READS_LOST,
    TLS_EVENTS,
)
from .ring import PacketRing
from .sinks import FrameSink, LiveCounters, LiveWindow, TlsChunk, TlsSink
from .tls_probes import TlsProbes

log = logging.getLogger(__name__)

#: The TLS program wakes the reader once per this many events; the reader also drains at every window's end.
TLS_WAKEUP_EVERY = 64
#: Ring buffer of server reads, in pages: 48-byte events, taken before every ring read (a quarter second at most).
READS_RING_PAGES = 256


class LiveCapture:
    """Owns the kernel programs, the rings and the flow poller of one sensor process.

    ``open()`` loads and attaches everything (``BpfUnavailable`` if the kernel says no); ``run()`` reads until
    ``stopping`` is set, calling ``on_window`` once per window; ``close()`` detaches everything (also after a failed
    ``open``).
    """

    def __init__(
        self,
        config: Config,
        node: str,
        frames: FrameSink,
        tls: TlsSink | None = None,
        *,
        name_of: FlowNamer | None = None,
        tls_pid: int = 0,
        print_programs: bool = False,
    ) -> None:
        self.config = config
        self.sensor_cfg = config.sensor
        self.node = node
        self.frames = frames
        self.tls = tls
        self.name_of = name_of
        self.tls_pid = tls_pid
        self.print_programs = print_programs
        self.window_us = int(self.sensor_cfg.window_s * 1_000_000)
        self.rings: list[PacketRing] = []
        self.bpf: Any = None
        self.tls_bpf: Any = None
        #: Why TLS capture is off although configured ("" when on or not configured).
        self.tls_error = ""
        self.reads_bpf: Any = None
        #: Why server reads are not followed ("" when they are): server time then starts at a request's arrival.
        self.reads_error = ""
        self._pending_reads: list[tuple[int, bytes, int, bytes, int]] = []
        self.volumes: FlowVolumes | None = None
        self.tls_probes: TlsProbes | None = None
        self._pending_tls: list[TlsChunk] = []
        self._counters = LiveCounters()
        self._mono_to_wall_ns = time.time_ns() - time.monotonic_ns()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ai_marker = AiFlowMarker(self.sensor_cfg.ai_hosts, lambda: self.bpf[b"ai_flows"])

    # ---- set-up -----------------------------------------------------------------------------------------------

    def sensor_program(self) -> str:
        try:
            lo = socket.if_nametoindex("lo")
        except OSError:
            lo = 1
        return bpf.program_text(
            "sensor",
            {"MAX_FLOWS": self.sensor_cfg.max_flows, "SNAPLEN": self.sensor_cfg.snaplen, "LOOPBACK_IFINDEX": lo},
        )

    def tls_program(self) -> str:
        return bpf.program_text(
            "tls",
            {
                "TLS_MAX_CHUNKS": self.sensor_cfg.tls_max_chunks,
                "TLS_RING_PAGES": self.sensor_cfg.tls_ring_pages,
                "TLS_WAKEUP_EVERY": TLS_WAKEUP_EVERY,
                "FILTER_PID": self.tls_pid,
            },
        )

    def open(self) -> None:
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        text = self.sensor_program()
        if self.print_programs:
            print(text, file=sys.stderr)
        self.bpf = bpf.load(text)
        fd = bpf.func_fd(self.bpf, "costmesh_filter", "socket_filter")
        ports = self.bpf[b"watched_ports"]
        watched = {p: bpf.PORT_WATCH for p in (*self.sensor_cfg.http_ports, *self.sensor_cfg.postgres_ports)}
        watched.update({p: bpf.PORT_WATCH for p in self.sensor_cfg.watch_ports})
        watched.update({p: bpf.PORT_WATCH | bpf.PORT_AI for p in self.sensor_cfg.ai_ports})
        for port, kind in watched.items():
            ports[ports.Key(port)] = ports.Leaf(kind)
        self.volumes = FlowVolumes(self.bpf, self.node, self.name_of)
        for ifname in self.sensor_cfg.interfaces:
            try:
                self.rings.append(
                    PacketRing(
                        ifname,
                        fd,
                        block_size=self.sensor_cfg.ring_block_kib * 1024,
                        block_count=self.sensor_cfg.ring_blocks,
                        retire_ms=self.sensor_cfg.ring_retire_ms,
                    )
                )
            except OSError as exc:
                raise bpf.BpfUnavailable(f"cannot open a packet ring on {ifname}: {exc}") from exc
        try:
            self._open_reads()
        except bpf.BpfUnavailable as exc:  # server time from the wire alone is still server time
            log.error("server reads unavailable, server time starts at each request's arrival: %s", exc)
            self.reads_error = str(exc)
            if self.reads_bpf is not None:
                self.reads_bpf.cleanup()
                self.reads_bpf = None
        if self.sensor_cfg.tls_capture and self.tls is not None:
            try:
                self._open_tls()
            except bpf.BpfUnavailable as exc:  # packets and flows are worth having without TLS plaintext
                log.error("TLS plaintext capture unavailable, capturing packets only: %s", exc)
                self.tls_error = str(exc)
                if self.tls_bpf is not None:
                    self.tls_bpf.cleanup()
                    self.tls_bpf = None

    def reads_program(self) -> str:
        return bpf.program_text("reads", {"READS_RING_PAGES": READS_RING_PAGES})

    def _open_reads(self) -> None:
        text = self.reads_program()
        if self.print_programs:
            print(text, file=sys.stderr)
        self.reads_bpf = bpf.load(text)
        ports = self.reads_bpf[b"server_ports"]
        for port in {*self.sensor_cfg.http_ports, *self.sensor_cfg.postgres_ports}:
            ports[ports.Key(port)] = ports.Leaf(1)
        self.reads_bpf[b"reads"].open_ring_buffer(self._on_read)

    def _open_tls(self) -> None:
        text = self.tls_program()
        if self.print_programs:
            print(text, file=sys.stderr)
        self.tls_bpf = bpf.load(text)
        probes = self.tls_probes = TlsProbes(self.sensor_cfg, self.tls_bpf)
        attached = probes.attach()
        if not attached and not probes.files and not self.sensor_cfg.tls_processes:
            raise bpf.BpfUnavailable(f"no OpenSSL function could be probed in {self.sensor_cfg.tls_libraries}")
        self.tls_bpf[b"tls_events"].open_ring_buffer(self._on_tls_event)
        if self.sensor_cfg.tls_discover or self.sensor_cfg.tls_processes:
            self.tls_bpf[b"exec_events"].open_ring_buffer(probes.on_exec)

    @property
    def tls_files(self) -> list[str]:
        """The OpenSSL library files being probed."""
        return self.tls_probes.files if self.tls_probes is not None else []

    def close(self) -> None:
        if self._loop is not None:
            for ring in self.rings:
                self._loop.remove_reader(ring.fileno())
            self._loop = None
        for ring in self.rings:
            ring.close()
        self.rings = []
        if self.tls_probes is not None:
            self.tls_probes.close()  # every probe is gone before close returns
            self.tls_probes = None
        for prog in (self.tls_bpf, self.reads_bpf, self.bpf):
            if prog is not None:
                prog.cleanup()
        self.bpf = self.tls_bpf = self.reads_bpf = None

    # ---- reading ----------------------------------------------------------------------------------------------

    def _on_tls_event(self, _ctx: Any, data: Any, size: int) -> int:
        raw = ct.string_at(data, size)
        ts_ns, ssl, cgroup_id, pid, tid, length, offset, captured, direction, comm = bpf.TLS_EVENT_HEAD.unpack_from(raw)
        head = bpf.TLS_EVENT_HEAD.size
        self._pending_tls.append(
            TlsChunk(
                ts_us=(ts_ns + self._mono_to_wall_ns) // 1000,
                pid=pid,
                tid=tid,
                ssl=ssl,
                cgroup_id=cgroup_id,
                comm=comm.split(b"\0", 1)[0].decode(errors="replace"),
                direction="read" if direction else "write",
                offset=offset,
                length=length,
                data=raw[head : head + captured],
            )
        )
        return 0

    def _on_read(self, _ctx: Any, data: Any, size: int) -> int:
        ts_ns, local, peer, lport, pport, _pad = bpf.READ_EVENT.unpack(ct.string_at(data, size))
        self._pending_reads.append(((ts_ns + self._mono_to_wall_ns) // 1000, local, lport, peer, pport))
        return 0

    def read_server_reads(self) -> int:
        """Hand the server reads so far to the frame sink, before the frames about to be read: the engine applies
        each when it reaches the frames of its time, so a request answered in them finds the read that started it."""
        if self.reads_bpf is None:
            return 0
        self.reads_bpf.ring_buffer_consume()
        reads, n = self._pending_reads, len(self._pending_reads)
        if n:
            self._pending_reads = []
            self.frames.feed_reads(reads)
            SERVER_READS.inc(n)
        return n

    def read_rings(self, max_blocks: int = 0) -> int:
        """Hand the server reads, then every ready block of every ring to the frame sink, then mark the AI flows the
        opening frames name; returns frames read."""
        hellos: list[bytes] | None = [] if self.ai_marker.patterns else None
        self.read_server_reads()
        n = 0
        for ring in self.rings:
            n += self.frames.feed_ring(ring, hellos, max_blocks)
        if hellos:
            self.ai_marker.inspect(hellos)
        return n

    def _tls_epoll_fd(self) -> int:
        """The epoll fd of bcc's ring-buffer manager (readable when TLS events wait), or -1 without TLS capture."""
        manager = getattr(self.tls_bpf, "_ringbuf_manager", None)
        if not manager:
            return -1
        from bcc.libbcc import lib

        lib.ring_buffer__epoll_fd.restype = ct.c_int
        lib.ring_buffer__epoll_fd.argtypes = [ct.c_void_p]
        return int(lib.ring_buffer__epoll_fd(manager))

    def read_tls(self) -> int:
        if self.tls_bpf is None or self.tls is None:
            return 0
        self.tls_bpf.ring_buffer_consume()
        chunks, n = self._pending_tls, len(self._pending_tls)
        if n:
            self._pending_tls = []
            self.tls.feed_tls(chunks)
        return n

    def flip(self) -> None:
        """Start counting flows into the other generation (see ``flows.FlowVolumes``)."""
        assert self.volumes is not None
        self.volumes.flip()

    def collect_flows(self, window_start_us: int, window_end_us: int) -> list[FlowVolume]:
        """The flow volumes of the generation ``flip`` retired, as records of this window."""
        assert self.volumes is not None
        return self.volumes.collect(window_start_us, window_end_us)

    def counters(self) -> LiveCounters:
        """Counters since the previous call (kernel per-CPU stats are read as totals and differenced here)."""
        c = LiveCounters()
        for ring in self.rings:
            st = ring.stats()
            c.ring_packets += st.packets
            c.ring_drops += st.drops
            PACKETS.labels(ring.ifname, "received").inc(st.packets - st.drops)
            PACKETS.labels(ring.ifname, "dropped").inc(st.drops)
        totals = self._kernel_stats()
        prev = self._counters
        c.seen_packets = totals[bpf.STAT_SEEN_PACKETS] - prev.seen_packets
        c.passed_packets = totals[bpf.STAT_PASSED_PACKETS] - prev.passed_packets
        c.flow_table_full_packets = totals[bpf.STAT_FLOW_FULL_PACKETS] - prev.flow_table_full_packets
        c.flow_table_full_bytes = totals[bpf.STAT_FLOW_FULL_BYTES] - prev.flow_table_full_bytes
        c.tls_events = totals[bpf.STAT_TLS_EVENTS + 100] - prev.tls_events
        c.tls_lost = totals[bpf.STAT_TLS_LOST + 100] - prev.tls_lost
        c.reads_lost = totals[bpf.STAT_READS_LOST + 200] - prev.reads_lost
        self._counters = LiveCounters(
            seen_packets=totals[bpf.STAT_SEEN_PACKETS],
            passed_packets=totals[bpf.STAT_PASSED_PACKETS],
            flow_table_full_packets=totals[bpf.STAT_FLOW_FULL_PACKETS],
            flow_table_full_bytes=totals[bpf.STAT_FLOW_FULL_BYTES],
            tls_events=totals[bpf.STAT_TLS_EVENTS + 100],
            tls_lost=totals[bpf.STAT_TLS_LOST + 100],
            reads_lost=totals[bpf.STAT_READS_LOST + 200],
        )
        KERNEL_PACKETS.labels("seen").inc(c.seen_packets)
        KERNEL_PACKETS.labels("passed").inc(c.passed_packets)
        KERNEL_PACKETS.labels("flow_table_full").inc(c.flow_table_full_packets)
        FLOW_TABLE_FULL_BYTES.inc(c.flow_table_full_bytes)
        TLS_EVENTS.labels("received").inc(c.tls_events - c.tls_lost)
        TLS_EVENTS.labels("lost").inc(c.tls_lost)
        SERVER_READS_LOST.inc(c.reads_lost)
        return c

    def _kernel_stats(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for base, prog in ((0, self.bpf), (100, self.tls_bpf), (200, self.reads_bpf)):
            if prog is None:
                for i in range(bpf.STAT_COUNT):
                    totals[base + i] = 0
                continue
            stats = prog[b"stats"]
            for i in range(bpf.STAT_COUNT):
                totals[base + i] = int(sum(stats[stats.Key(i)]))
        return totals

    async def window(self, window_start_us: int) -> LiveWindow:
        """Close the window that started at ``window_start_us``: flip the flow generation, let in-flight programs
        finish, then read everything the window produced."""
        self.flip()
        end_us = time.time_ns() // 1000
        # A filter that read the old generation before the flip has long finished; a ring block retires within
        # ring_retire_ms, so the frames of the window are readable too.
        await asyncio.sleep(max(0.02, 2 * self.sensor_cfg.ring_retire_ms / 1000))
        self.read_rings()
        self.read_tls()
        flows = self.collect_flows(window_start_us, end_us)
        self.ai_marker.age(flows)
        if self.tls_probes is not None:
            self.tls_probes.new_window()
        records = self.frames.drain()
        if self.tls is not None:
            records.extend(self.tls.drain())
        counters = self.counters()
        FLOWS.set(len(flows))
        FLOW_RECORDS.inc(len(flows))
        CALL_RECORDS.inc(len(records))
        CPU_SECONDS.set(time.process_time())
        return LiveWindow(window_start_us, end_us, records, flows, counters)

    async def run(self, on_window: Callable[[LiveWindow], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Read rings when a block is handed over and TLS events when the program wakes us (and at each window's end);
        every window, hand a ``LiveWindow`` to ``on_window``.

        The first window starts when ``run`` starts; everything counted before (since ``open``) is in it too.
        """
        loop = self._loop = asyncio.get_running_loop()
        if self.tls_probes is not None:
            self.tls_probes.loop = loop
        for ring in self.rings:
            loop.add_reader(ring.fileno(), self.read_rings, 64)
        tls_fd = self._tls_epoll_fd()
        if tls_fd >= 0:
            loop.add_reader(tls_fd, self.read_tls)
        start = time.time_ns() // 1000
        next_window = time.monotonic() + self.sensor_cfg.window_s
        try:
            while not stopping.is_set():
                # One wake-up per window: rings and TLS events arrive through their readers meanwhile.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=max(0.0, next_window - time.monotonic()))
                next_window += self.sensor_cfg.window_s
                win = await self.window(start)
                start = win.window_end_us
                await on_window(win)
        finally:
            for ring in self.rings:
                loop.remove_reader(ring.fileno())
            if tls_fd >= 0:
                loop.remove_reader(tls_fd)
            if self.tls_probes is not None:
                self.tls_probes.stop_looking()
            self._loop = None
