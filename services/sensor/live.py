"""Live capture: the eBPF socket filter on the configured interfaces, PACKET_RX_RING rings read a block at a time,
kernel flow counters polled every window into ``FlowVolume`` records, and (optionally) OpenSSL plaintext by uprobes.

Reads: the interfaces of ``sensor.interfaces`` (through ``bpf/sensor.bpf.c``) and, with ``sensor.tls_capture``, the
``libssl.so.3`` calls of every process on the host (through ``bpf/tls.bpf.c``, see ``live_tls``).
Emits: ring frames to a ``FrameSink`` (by pointer into the compiled engine) and batches of ``TlsChunk`` to a
``TlsSink`` (the parsers), and per window a ``LiveWindow``: the sinks' ``ObservedCall`` records, the kernel's
``FlowVolume`` records, and counters.

The parsers are behind the two sink protocols so that this module does not know which parser runs: frames go to
``SensorFrameSink``, the sensor's parsing core (``costmesh.sensor.core``, the same one capture replays use). The
ring walk also picks out the frames that open a connection; ``AiFlowMarker`` reads their SNI or Host and calls
``LiveCapture.mark_ai_flow``, so the kernel passes an AI flow's whole payload.

Overload: the kernel never waits for user space. A full packet ring drops and the socket counts it; a full TLS ring
buffer drops and the program counts it; a full flow table counts the bytes in a separate slot. All three are
exported as Prometheus metrics and in each ``LiveWindow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import errno
import functools
import ipaddress
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS, REGISTRY
from costmesh.common.schemas import FlowVolume, ObservedCall
from costmesh.native import _net_py as net_py
from costmesh.native.http import HTTP_METHODS

from . import bpf
from .core import Sensor
from .live_ring import PacketRing

log = logging.getLogger(__name__)

PACKETS = Counter(
    "costmesh_sensor_ring_packets_total",
    "Packets the socket filter passed to a ring, by interface and outcome (received, dropped: the ring was full).",
    ["interface", "outcome"],
    registry=REGISTRY,
)
KERNEL_PACKETS = Counter(
    "costmesh_sensor_kernel_packets_total",
    "Packets seen by the socket filter, by outcome (seen, passed to user space, flow_table_full).",
    ["outcome"],
    registry=REGISTRY,
)
TLS_EVENTS = Counter(
    "costmesh_sensor_tls_events_total",
    "OpenSSL plaintext events from the uprobes, by outcome (received, lost: the ring buffer was full).",
    ["outcome"],
    registry=REGISTRY,
)
FLOWS = Gauge("costmesh_sensor_flows", "Flow directions with traffic in the last window.", registry=REGISTRY)
FLOW_RECORDS = Counter(
    "costmesh_sensor_flow_records_total", "FlowVolume records produced from the kernel counters.", registry=REGISTRY
)
CALL_RECORDS = Counter(
    "costmesh_sensor_call_records_total", "ObservedCall records produced by the parsers.", registry=REGISTRY
)
FLOW_TABLE_FULL_BYTES = Counter(
    "costmesh_sensor_flow_table_full_bytes_total",
    "Bytes counted while the kernel flow table was full (not attributed to a flow, still counted).",
    registry=REGISTRY,
)
EXEC_LOOKS = Counter(
    "costmesh_sensor_exec_looks_total",
    "Programs started while the sensor runs, looked at for OpenSSL at once (looked) or left to the periodic /proc "
    "scan because too many started at once (skipped).",
    ["outcome"],
    registry=REGISTRY,
)
PARSED = Counter(
    "costmesh_sensor_parsed_total",
    "What the parsing engine counted (frames, flows, http_requests, pg_queries, ai_calls, tcp_gaps...), by source "
    "(frames from the rings, tls plaintext from the uprobes). Malformed input: costmesh_input_errors_total by kind.",
    ["source", "counter"],
    registry=REGISTRY,
)
CPU_SECONDS = Gauge(
    "costmesh_sensor_cpu_seconds", "CPU seconds (user + system) the sensor process has used.", registry=REGISTRY
)


#: The TLS program wakes the reader once per this many events; the reader also drains at every window's end.
TLS_WAKEUP_EVERY = 64
#: After a process starts (exec event), its maps are read for OpenSSL this long after (seconds; the dynamic loader
#: maps libssl before main runs; a later dlopen is found by the periodic scan).
EXEC_LOOKS_S = (0.02, 0.5)
#: At most this many such looks per second (a build host may start hundreds of programs a second): past it, started
#: programs wait for the periodic scan, and the skipped looks are counted.
EXEC_LOOKS_PER_S = 20
LINKTYPE_ETHERNET = 1


class FrameSink(Protocol):
    """A parser of link-layer frames: it takes them straight from a packet ring."""

    def feed_ring(self, ring: PacketRing, hellos: list[bytes] | None, max_blocks: int) -> int:
        """Take the ring's ready blocks (``PacketRing.feed``; frames start at the Ethernet header, cut to the snap
        length), appending the frames that open a connection to ``hellos``. Returns the number of frames."""

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


class ParserMetrics:
    """Exports what an engine counted since the last call (it counts in C, cheaply; this runs once per window):
    parse errors by kind to ``costmesh_input_errors_total``, everything else to ``costmesh_sensor_parsed_total``."""

    def __init__(self, sensor: Sensor, source: str) -> None:
        self.sensor = sensor
        self.source = source
        self.last: dict[str, int] = {}

    def export(self) -> None:
        stats = self.sensor.stats()
        for prefix, values in (("error:", stats["errors"]), ("", stats["counters"])):
            for name, value in values.items():
                key = prefix + name
                grown = value - self.last.get(key, 0)
                if grown > 0:
                    self.last[key] = value
                    if prefix:
                        ERRORS.labels("sensor", name).inc(grown)
                    else:
                        PARSED.labels(self.source, name).inc(grown)


class SensorFrameSink:
    """Live frames into the sensor's parsing core, by pointer from the ring when the engine is compiled. Ring frames
    carry an Ethernet header (``lo`` included)."""

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.metrics = ParserMetrics(sensor, "frames")

    def feed_ring(self, ring: PacketRing, hellos: list[bytes] | None, max_blocks: int) -> int:
        return ring.feed(self.sensor.engine, None, hellos, max_blocks)

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


@dataclass
class LiveWindow:
    """One window's output: parsed calls, kernel flow volumes, counters."""

    window_start_us: int
    window_end_us: int
    records: list[ObservedCall]
    flows: list[FlowVolume]
    counters: LiveCounters = field(default_factory=LiveCounters)


FlowNamer = Callable[[str, int], str]


@functools.lru_cache(maxsize=65536)
def _addr(raw: bytes) -> str:
    """Text of a 16-byte address (IPv4 mapped into IPv6 shown as IPv4); cached: flows are named every window."""
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)


def _raw_addr(addr: str) -> bytes:
    ip = ipaddress.ip_address(addr)
    return (ipaddress.IPv6Address("::ffff:" + addr) if ip.version == 4 else ip).packed


def client_hello_sni(payload: bytes) -> str:
    """The server name of a TLS ClientHello at the start of ``payload`` ("" when absent or cut short)."""
    try:
        if payload[0] != 0x16 or payload[5] != 0x01:
            return ""
        pos = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
        pos += 1 + payload[pos]  # session id
        pos += 2 + int.from_bytes(payload[pos : pos + 2], "big")  # cipher suites
        pos += 1 + payload[pos]  # compression methods
        end = pos + 2 + int.from_bytes(payload[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            ext, size = int.from_bytes(payload[pos : pos + 2], "big"), int.from_bytes(payload[pos + 2 : pos + 4], "big")
            if ext == 0:  # server_name: list length, name type (0 = host_name), name length, name
                name_len = int.from_bytes(payload[pos + 7 : pos + 9], "big")
                name = payload[pos + 9 : pos + 9 + name_len]
                return name.decode("ascii") if len(name) == name_len else ""
            pos += 4 + size
    except (IndexError, UnicodeDecodeError):
        return ""
    return ""


def http_host(payload: bytes) -> str:
    """The Host header of an HTTP/1.x request head at the start of ``payload`` (without port), or ""."""
    if not payload.startswith(HTTP_METHODS):
        return ""
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return ""


class AiFlowMarker:
    """Marks flows whose TLS SNI or HTTP Host matches ``sensor.ai_hosts`` as AI traffic, so that the kernel passes
    their whole payload from then on. It reads only the frames that open a connection (the ring walk picks them out
    in C: one per connection, not one per packet), IPv4 and IPv6.
    """

    def __init__(self, patterns: list[str], mark: Callable[[str, int, str, int], None]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.mark = mark
        self.marked: dict[tuple[str, int, str, int], int] = {}  # flow → windows since last seen

    def inspect(self, hellos: Sequence[bytes]) -> None:
        for frame in hellos:
            r = net_py.decode(LINKTYPE_ETHERNET, frame)
            if isinstance(r, int) or not r[7]:
                continue
            _l4, src, dst, sport, dport, _flags, _seq, payload = r
            name = client_hello_sni(payload) if payload[0] == 0x16 else http_host(payload)
            if name and any(p.search(name) for p in self.patterns):
                flow = (_addr(src), sport, _addr(dst), dport)
                if flow not in self.marked:
                    self.mark(*flow)
                self.marked[flow] = 0


def libssl_of(pid_dir: str, name: str = "libssl.so.3") -> tuple[str, str] | None:
    """``(comm, path)`` when the process at ``pid_dir`` (``/proc/<pid>``) has an OpenSSL library mapped, else None;
    the path goes through the process's root (``/proc/<pid>/root/...``), so that copies inside containers are
    reachable from the host."""
    wanted = name.encode()
    try:
        with open(f"{pid_dir}/maps", "rb") as fh:
            maps = fh.read()
        if wanted not in maps:
            return None
        with open(f"{pid_dir}/comm", "rb") as fh:
            comm = fh.read().strip().decode(errors="replace")
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].split(b" (deleted)")[0].endswith(b"/" + wanted):
            path = parts[5].decode(errors="replace").removesuffix(" (deleted)")
            return comm, f"{pid_dir}/root{path}"
    return None


def libssl_mappings(proc: str = "/proc", name: str = "libssl.so.3") -> list[tuple[int, str, str]]:
    """``(pid, comm, path)`` of every process that has an OpenSSL library mapped (see ``libssl_of``)."""
    out: list[tuple[int, str, str]] = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            found = libssl_of(entry.path, name)
            if found:
                out.append((int(entry.name), *found))
    return out


def discover_libssl(proc: str = "/proc", name: str = "libssl.so.3") -> list[str]:
    """Every distinct OpenSSL library file mapped by a running process (one path per file)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for _pid, _comm, path in libssl_mappings(proc, name):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out


_SSL_PROBES = (
    ("SSL_write", "enter_write", "leave_write"),
    ("SSL_read", "enter_read", "leave_read"),
    ("SSL_write_ex", "enter_write_ex", "leave_write"),
    ("SSL_read_ex", "enter_read_ex", "leave_read"),
)


class _FlowTable:
    """Reads and empties one generation's flow map in batches (BPF_MAP_LOOKUP_AND_DELETE_BATCH, reused buffers)."""

    def __init__(self, table: Any, chunk: int = 4096) -> None:
        from bcc.libbcc import lib

        self.lib, self.fd, self.chunk = lib, table.map_fd, chunk
        self.key_size, self.val_size = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
        self.keys = (ct.c_char * (self.key_size * chunk))()
        self.values = (ct.c_char * (self.val_size * chunk))()

    def take_all(self) -> list[tuple[bytes, int, int]]:
        """Every (raw key, bytes, packets), deleting them; the map is the idle generation, so nothing races us."""
        out: list[tuple[bytes, int, int]] = []
        in_batch, out_batch, count = ct.c_uint32(0), ct.c_uint32(0), ct.c_uint32(0)
        first = True
        ks, vs = self.key_size, self.val_size
        while True:
            count.value = self.chunk
            res = self.lib.bpf_lookup_and_delete_batch(
                self.fd,
                None if first else ct.byref(in_batch),
                ct.byref(out_batch),
                self.keys,
                self.values,
                ct.byref(count),
            )
            err = ct.get_errno()
            keys, values = bytes(self.keys[: ks * count.value]), memoryview(bytes(self.values[: vs * count.value]))
            vals = values.cast("Q")
            for i in range(count.value):
                out.append((keys[i * ks : (i + 1) * ks], vals[2 * i], vals[2 * i + 1]))
            if res != 0:
                if err in (0, errno.ENOENT):  # the whole map was walked
                    return out
                raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH on the flow map failed: {os.strerror(err)}")
            in_batch.value = out_batch.value
            first = False


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
        self._gen = 0
        self._tables: list[_FlowTable] = []
        self._pending_tls: list[TlsChunk] = []
        self._counters = LiveCounters()
        self._mono_to_wall_ns = time.time_ns() - time.monotonic_ns()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exec_looks: set[asyncio.TimerHandle] = set()
        self._detacher: ThreadPoolExecutor | None = None
        self._exec_budget = EXEC_LOOKS_PER_S * self.sensor_cfg.window_s
        self.ai_marker = AiFlowMarker(self.sensor_cfg.ai_hosts, self.mark_ai_flow)

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
        self._tables = [_FlowTable(self.bpf[b"flows0"]), _FlowTable(self.bpf[b"flows1"])]
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
        if self.sensor_cfg.tls_capture and self.tls is not None:
            try:
                self._open_tls()
            except bpf.BpfUnavailable as exc:  # packets and flows are worth having without TLS plaintext
                log.error("TLS plaintext capture unavailable, capturing packets only: %s", exc)
                self.tls_error = str(exc)
                if self.tls_bpf is not None:
                    self.tls_bpf.cleanup()
                    self.tls_bpf = None

    def _open_tls(self) -> None:
        text = self.tls_program()
        if self.print_programs:
            print(text, file=sys.stderr)
        self.tls_bpf = bpf.load(text)
        self._tls_files: dict[tuple[int, int], str] = {}
        self._tls_pids: dict[int, list[bytes]] = {}
        self._tls_patterns = [re.compile(p) for p in self.sensor_cfg.tls_processes]
        attached = self.attach_tls_libraries()
        if not attached and not self._tls_files and not self.sensor_cfg.tls_processes:
            raise bpf.BpfUnavailable(f"no OpenSSL function could be probed in {self.sensor_cfg.tls_libraries}")
        self.tls_bpf[b"tls_events"].open_ring_buffer(self._on_tls_event)
        if self.sensor_cfg.tls_discover or self.sensor_cfg.tls_processes:
            self.tls_bpf[b"exec_events"].open_ring_buffer(self._on_exec)
        self._tls_scanned = time.monotonic()

    def attach_tls_libraries(self) -> int:
        """Probe OpenSSL where not probed yet; returns how many files (or processes) were newly probed.

        Without ``sensor.tls_processes``: every process, one set of uprobes per library file — the configured files
        and, with ``sensor.tls_discover``, each distinct ``libssl.so.3`` mapped by a running process (containers
        bring their own copies, and a uprobe binds to one file). With ``sensor.tls_processes``: only processes whose
        name matches, one set of uprobes per process, so that no other process takes a uprobe trap at all (the
        kernel installs a per-process uprobe's breakpoint in that process only); processes that ended are detached.
        """
        if self.sensor_cfg.tls_processes:
            return self._attach_tls_processes()
        candidates = list(self.sensor_cfg.tls_libraries)
        if self.sensor_cfg.tls_discover:
            candidates += discover_libssl()
        new = 0
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in self._tls_files:
                continue
            self._tls_files[key] = path  # also when nothing could be probed: do not retry it every scan
            if self._probe(path, -1):
                new += 1
                log.info("probing OpenSSL in %s", path)
        return new

    def _probe(self, path: str, pid: int) -> list[bytes]:
        """Attach the four entry/return pairs to one library (for one process, or all with pid -1); returns the
        names of the uprobe events created."""
        before = set(self.tls_bpf.uprobe_fds)
        for sym, enter, leave in _SSL_PROBES:
            try:
                self.tls_bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=enter.encode(), pid=pid)
                self.tls_bpf.attach_uretprobe(name=path.encode(), sym=sym.encode(), fn_name=leave.encode(), pid=pid)
            except Exception as exc:
                log.warning("cannot probe %s in %s (pid %d): %s", sym, path, pid, exc)
        return [name for name in self.tls_bpf.uprobe_fds if name not in before]

    def _attach_tls_processes(self) -> int:
        patterns = self._tls_patterns
        alive: dict[int, str] = {}
        for pid, comm, path in libssl_mappings():
            if any(p.search(comm) for p in patterns):
                alive[pid] = path
        for pid in [pid for pid in self._tls_pids if pid not in alive]:
            self._detach_probes(self._tls_pids.pop(pid))
        new = 0
        for pid, path in alive.items():
            if pid not in self._tls_pids:
                self._tls_pids[pid] = self._probe(path, pid)
                self._tls_files[(-1, pid)] = path
                if self._tls_pids[pid]:
                    new += 1
                    log.info("probing OpenSSL of pid %d in %s", pid, path)
        for key in [k for k in self._tls_files if k[0] == -1 and k[1] not in alive]:
            del self._tls_files[key]
        return new

    def _on_exec(self, _ctx: Any, data: Any, size: int) -> int:
        """A process started a program: look for its OpenSSL shortly (``EXEC_LOOKS_S``) instead of at the next scan.
        With ``sensor.tls_processes`` only programs whose name matches are looked at."""
        pid, comm = bpf.EXEC_EVENT.unpack(ct.string_at(data, bpf.EXEC_EVENT.size))
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        if self._loop is None or (self._tls_patterns and not any(p.search(name) for p in self._tls_patterns)):
            return 0
        if self._exec_budget <= 0:
            EXEC_LOOKS.labels("skipped").inc()
            return 0
        self._exec_budget -= 1
        EXEC_LOOKS.labels("looked").inc()
        self._look_later(pid, 0)
        return 0

    def _look_later(self, pid: int, attempt: int) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def look() -> None:
            self._exec_looks.discard(handle)
            if not self._probe_started(pid) and attempt + 1 < len(EXEC_LOOKS_S):
                self._look_later(pid, attempt + 1)

        handle = self._loop.call_later(EXEC_LOOKS_S[attempt], look)
        self._exec_looks.add(handle)

    def _probe_started(self, pid: int) -> bool:
        """Probe the OpenSSL of one started process if it is new to us; True when its libssl was found (probed now
        or already)."""
        found = libssl_of(f"/proc/{pid}")
        if found is None:
            return False
        comm, path = found
        if self.sensor_cfg.tls_processes:
            if pid not in self._tls_pids and any(p.search(comm) for p in self._tls_patterns):
                self._tls_pids[pid] = self._probe(path, pid)
                self._tls_files[(-1, pid)] = path
                log.info("probing OpenSSL of pid %d in %s (started after the sensor)", pid, path)
            return True
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_dev, st.st_ino) not in self._tls_files:
            self._tls_files[(st.st_dev, st.st_ino)] = path
            if self._probe(path, -1):
                log.info("probing OpenSSL in %s (started after the sensor)", path)
        return True

    @property
    def tls_files(self) -> list[str]:
        """The OpenSSL library files being probed."""
        return list(getattr(self, "_tls_files", {}).values())

    def close(self) -> None:
        if self._loop is not None:
            for ring in self.rings:
                self._loop.remove_reader(ring.fileno())
            self._loop = None
        for ring in self.rings:
            ring.close()
        self.rings = []
        if self.tls_bpf is not None:
            self._detach_probes(list(self.tls_bpf.uprobe_fds))
        if self._detacher is not None:
            self._detacher.shutdown(wait=True)  # every probe is gone before close returns
            self._detacher = None
        for prog in (self.tls_bpf, self.bpf):
            if prog is not None:
                prog.cleanup()
        self.bpf = self.tls_bpf = None

    def _detach_probes(self, names: list[bytes]) -> None:
        """Detach uprobes without holding up the loop: closing a uprobe's perf event waits for the kernel (about
        0.1 s each here), so the closes run on worker threads (ctypes lets go of the GIL), several at once. The
        names leave bcc's table at once, so nothing is detached twice."""
        from bcc.libbcc import lib

        prog = self.tls_bpf
        taken = [(name, prog.uprobe_fds[name]) for name in names if name in prog.uprobe_fds]
        for name, _fd in taken:
            prog._del_uprobe_fd(name)

        def detach(item: tuple[bytes, int]) -> None:
            name, fd = item
            if lib.bpf_close_perf_event_fd(fd) < 0 or lib.bpf_detach_uprobe(name) < 0:
                log.warning("cannot detach uprobe %s", name.decode(errors="replace"))

        if taken:
            if self._detacher is None:
                self._detacher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="uprobe-detach")
            for item in taken:
                self._detacher.submit(detach, item)

    # ---- AI flows ---------------------------------------------------------------------------------------------

    def _ai_flow_keys(self, src: str, sport: int, dst: str, dport: int) -> tuple[Any, list[Any]]:
        """The ``ai_flows`` map and its keys for both directions of one TCP connection."""
        table = self.bpf[b"ai_flows"]
        a, b = _raw_addr(src), _raw_addr(dst)
        keys = []
        for s, sp, d, dp in ((a, sport, b, dport), (b, dport, a, sport)):
            key = table.Key()
            ct.memmove(key.saddr, s, 16)
            ct.memmove(key.daddr, d, 16)
            key.sport, key.dport = sp, dp
            keys.append(key)
        return table, keys

    def mark_ai_flow(self, src: str, sport: int, dst: str, dport: int) -> None:
        """Have the kernel pass the whole payload of this TCP connection (both directions) from now on."""
        table, keys = self._ai_flow_keys(src, sport, dst, dport)
        for key in keys:
            table[key] = table.Leaf(1)

    def forget_ai_flow(self, src: str, sport: int, dst: str, dport: int) -> None:
        table, keys = self._ai_flow_keys(src, sport, dst, dport)
        for key in keys:
            with contextlib.suppress(KeyError):
                del table[key]

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

    def read_rings(self, max_blocks: int = 0) -> int:
        """Hand every ready block of every ring to the frame sink, then mark the AI flows the opening frames name;
        returns frames read."""
        hellos: list[bytes] | None = [] if self.ai_marker.patterns else None
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
        """Start counting into the other generation; the one left is read by ``collect_flows`` a little later."""
        self._gen ^= 1
        table = self.bpf[b"generation"]
        table[table.Key(0)] = table.Leaf(self._gen)

    def collect_flows(self, window_start_us: int, window_end_us: int) -> list[FlowVolume]:
        """Read and empty the generation that ``flip`` retired, as ``FlowVolume`` records of this window."""
        idle = self._tables[self._gen ^ 1]
        out: list[FlowVolume] = []
        unpack = bpf.FLOW_KEY.unpack_from
        name_of = self.name_of
        for key, nbytes, packets in idle.take_all():
            saddr, daddr, sport, dport, proto, _gen, _ifindex = unpack(key)
            src, dst = _addr(saddr), _addr(daddr)
            out.append(
                FlowVolume(
                    window_start_us=window_start_us,
                    window_end_us=window_end_us,
                    node=self.node,
                    l4="tcp" if proto == 6 else "udp",
                    src_addr=src,
                    src_port=sport,
                    dst_addr=dst,
                    dst_port=dport,
                    bytes=nbytes,
                    packets=packets,
                    src_workload=name_of(src, sport) if name_of else "",
                    dst_workload=name_of(dst, dport) if name_of else "",
                )
            )
        return out

    def _age_ai_flows(self, flows: list[FlowVolume], idle_windows: int = 60) -> None:
        """Drop AI-flow marks of connections without traffic for ``idle_windows`` windows (ports get reused)."""
        marked = self.ai_marker.marked
        if not marked:
            return
        active = {(f.src_addr, f.src_port, f.dst_addr, f.dst_port) for f in flows}
        for flow in list(marked):
            if flow in active or (flow[2], flow[3], flow[0], flow[1]) in active:
                marked[flow] = 0
            else:
                marked[flow] += 1
                if marked[flow] > idle_windows:
                    del marked[flow]
                    self.forget_ai_flow(*flow)

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
        self._counters = LiveCounters(
            seen_packets=totals[bpf.STAT_SEEN_PACKETS],
            passed_packets=totals[bpf.STAT_PASSED_PACKETS],
            flow_table_full_packets=totals[bpf.STAT_FLOW_FULL_PACKETS],
            flow_table_full_bytes=totals[bpf.STAT_FLOW_FULL_BYTES],
            tls_events=totals[bpf.STAT_TLS_EVENTS + 100],
            tls_lost=totals[bpf.STAT_TLS_LOST + 100],
        )
        KERNEL_PACKETS.labels("seen").inc(c.seen_packets)
        KERNEL_PACKETS.labels("passed").inc(c.passed_packets)
        KERNEL_PACKETS.labels("flow_table_full").inc(c.flow_table_full_packets)
        FLOW_TABLE_FULL_BYTES.inc(c.flow_table_full_bytes)
        TLS_EVENTS.labels("received").inc(c.tls_events - c.tls_lost)
        TLS_EVENTS.labels("lost").inc(c.tls_lost)
        return c

    def _kernel_stats(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for base, prog in ((0, self.bpf), (100, self.tls_bpf)):
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
        self._exec_budget = EXEC_LOOKS_PER_S * self.sensor_cfg.window_s
        flows = self.collect_flows(window_start_us, end_us)
        self._age_ai_flows(flows)
        rescan = self.tls_bpf is not None and self.sensor_cfg.tls_discover
        if rescan and time.monotonic() - self._tls_scanned >= self.sensor_cfg.tls_discover_s:
            self._tls_scanned = time.monotonic()
            self.attach_tls_libraries()
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
            for handle in self._exec_looks:
                handle.cancel()
            self._exec_looks.clear()
            self._loop = None
