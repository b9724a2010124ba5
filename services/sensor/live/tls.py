"""TLS plaintext (from the OpenSSL uprobes) through the sensor's own parsing engine.

Reads: ``TlsChunk`` batches from ``LiveCapture`` (one per SSL_read/SSL_write call, or part of one), per process and
SSL connection. Emits: ``ObservedCall`` records made by the same engine as captured frames, so an HTTPS call is
parsed exactly like a plaintext one: HTTP/1.1 (keep-alive, chunked, SSE, gzip), PostgreSQL when a client speaks it
over TLS, AI usage of every provider, the extraction rules, folded ids in paths.

How: each SSL connection's two plaintext streams are handed to the engine as the two directions of a TCP connection
between two made-up IPv6 addresses, ``fd63::/16`` for the process's end and ``fd64::/16`` for its peer, with the pid
and the SSL* inside them, and sequence numbers that follow each stream. Bytes the probe did not capture (a call
longer than its chunk limit, a short copy, a lost event) are a gap: up to ``MAX_FILL`` bytes it is filled with zeros
so that the message framing holds (the call is still counted); a larger one ends the made-up connection and the next
one starts at the next message head. The engine tells client from server
by who sends the request. The process's end is named by ``name_of_pid`` (pod, container or ``comm[pid]``) through
the engine's naming hook; a peer the process called is named by the request's Host header, as any destination is;
a peer that called the process is ``tls-client`` (plaintext does not say who it is). Calls a process served are
recorded only with ``sensor.tls_server_side`` (counted in ``costmesh_sensor_tls_served_calls_total`` otherwise).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import ObservedCall, add_counters
from costmesh.native.http import HTTP_METHODS

from ..core import Sensor
from .metrics import TLS_SERVED_CALLS, ParserMetrics
from .sinks import TlsChunk

TLS_CHUNK = 4096  # records.h
LINKTYPE_RAW = 101
IDLE_US = 300_000_000  # a TLS connection without plaintext for 5 minutes is forgotten (SSL* pointers get reused)
PEER_CALLER = "tls-client"
PEER_UNNAMED = "tls"
_ME, _PEER = b"\xfd\x63\x00\x00", b"\xfd\x64\x00\x00"
_PEER_TEXT = "fd64:"  # every peer end in text (this sink's engine sees made-up addresses only)
_ME_PORT, _PEER_PORT = 1, 2
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_PSH_ACK = 0x18
_RST = 0x04
#: A gap up to this many bytes is filled with zeros (framing kept); a larger one waits for the next message head.
MAX_FILL = 1 << 20
_FILL_SEGMENT = 32768
_HEADS = (*HTTP_METHODS, b"HTTP/1.")  # what the engine takes as the start of a request or a response


def _text(addr: bytes) -> str:
    return str(ipaddress.IPv6Address(addr))


@dataclass(slots=True)
class _Stream:
    """One direction of one SSL connection, as a TCP sequence space: ``next`` is where the next call starts, ``base``
    where the current one started (a chunk's bytes sit at ``base + offset``), ``fed`` how far the engine has it."""

    next: int = 1
    base: int = 1
    fed: int = 1
    length: int = 0  # of the current call
    waiting: bool = False  # after a gap too large to fill: nothing is fed until a call starts with a message head


@dataclass(slots=True)
class _Conn:
    me: bytes
    peer: bytes
    pid: int
    cgroup_id: int
    comm: str
    out: _Stream = field(default_factory=_Stream)  # written by the process
    inp: _Stream = field(default_factory=_Stream)  # read by the process
    gen: int = 0  # made-up TCP connection number (ports): a new one after a gap that cannot be filled
    last_us: int = 0


PidNamer = Callable[[int, int, str], str]


class TlsPlaintextSink:
    """Feeds per-connection plaintext streams to a ``Sensor`` of its own and names the ends of its records."""

    def __init__(
        self,
        config: Config,
        node: str,
        *,
        window_us: int = 1_000_000,
        name_of_pid: PidNamer | None = None,
        max_chunks: int = 16,
        keep_plaintext: int = 0,
    ) -> None:
        self.sensor = Sensor(config, node, window_us, name_of=self._name_of_end)
        self.server_side = config.sensor.tls_server_side
        self.metrics = ParserMetrics(self.sensor, "tls")
        self.name_of_pid = name_of_pid or (lambda pid, _cg, comm: f"{comm}[{pid}]")
        self.max_chunks = max_chunks
        self.conns: dict[tuple[int, int], _Conn] = {}
        #: The process's made-up end in text → its connection (for the engine's naming hook).
        self._ends: dict[str, _Conn] = {}
        #: With keep_plaintext > 0, the first bytes of each (pid, ssl, direction) stream, for inspection and tests.
        self.keep_plaintext = keep_plaintext
        self.plaintext: dict[tuple[int, int, str], bytearray] = {}
        self._latest_us = 0
        self._gens = 0
        self._retired: list[str] = []

    def _new_gen(self) -> int:
        self._gens += 1
        return self._gens

    def _open(self, c: TlsChunk) -> _Conn:
        tail = (c.pid & 0xFFFFFFFF).to_bytes(4, "big") + (c.ssl & (2**64 - 1)).to_bytes(8, "big")
        conn = _Conn(me=_ME + tail, peer=_PEER + tail, pid=c.pid, cgroup_id=c.cgroup_id, comm=c.comm)
        conn.gen = self._new_gen()  # an SSL* seen again later (pointers are reused) is a new made-up connection
        self.conns[(c.pid, c.ssl)] = conn
        self._ends[_text(conn.me)] = conn
        return conn

    def _name_of_end(self, addr: str, _port: int) -> str:
        """The engine's naming hook: the process's end is a workload (so it is the destination when the process
        serves, whatever Host the request names); a peer is not (the Host header names it as a destination)."""
        conn = self._ends.get(addr)
        return self.name_of_pid(conn.pid, conn.cgroup_id, conn.comm) if conn is not None else ""

    def feed_tls(self, chunks: Sequence[TlsChunk]) -> None:
        for c in chunks:
            conn = self.conns.get((c.pid, c.ssl)) or self._open(c)
            conn.last_us = c.ts_us
            self._latest_us = max(self._latest_us, c.ts_us)
            if self.keep_plaintext:
                kept = self.plaintext.setdefault((c.pid, c.ssl, c.direction), bytearray())
                if len(kept) < self.keep_plaintext:
                    kept += c.data[: self.keep_plaintext - len(kept)]
            written = c.direction == "write"
            st = conn.out if written else conn.inp
            if c.offset == 0 or c.length != st.length or st.base + c.offset >= st.next:
                # A new call: it starts where the previous one ended, whatever was captured of it. A chunk past the
                # current call, or of another length, is of a new call whose first chunk was lost.
                st.base, st.next, st.length = st.next, st.next + c.length, c.length
            pos = st.base + c.offset
            if not c.data:
                continue
            if st.waiting:
                if c.offset or not c.data.startswith(_HEADS):
                    continue
                st.waiting, st.fed = False, pos
            elif pos > st.fed:  # bytes never captured: a short copy, a lost event
                ERRORS.labels("sensor", "tls_gap").inc()
                if pos - st.fed <= MAX_FILL:
                    self._fill(c.ts_us, conn, written, st, pos)
                else:
                    self._restart(c.ts_us, conn)
                    if c.offset or not c.data.startswith(_HEADS):
                        continue
                    st.waiting, st.fed = False, pos
            self._segment(c.ts_us, conn, written, pos, c.data)
            st.fed = max(st.fed, pos + len(c.data))
            last = c.offset + TLS_CHUNK >= c.length or c.offset >= (self.max_chunks - 1) * TLS_CHUNK
            if last and st.fed < st.next:  # the call's end was not captured: deal with it now, before the other side
                ERRORS.labels("sensor", "tls_gap").inc()
                if st.next - st.fed <= MAX_FILL:
                    self._fill(c.ts_us, conn, written, st, st.next)
                else:
                    self._restart(c.ts_us, conn)

    def _restart(self, ts_us: int, conn: _Conn) -> None:
        """A gap too large to fill: the made-up connection ends (a reset, so the engine finishes what waits on it)
        and the next one starts, on both streams, at the next message head."""
        self._segment(ts_us, conn, True, conn.out.fed, b"", _RST)
        conn.gen = self._new_gen()
        conn.out.waiting = conn.inp.waiting = True

    def _fill(self, ts_us: int, conn: _Conn, written: bool, st: _Stream, pos: int) -> None:
        """Zeros in place of bytes the probe did not capture, so the engine keeps the message framing (a body of
        known length stays a body); what they hide (tokens in a cut response, say) is lost, and counted as a gap."""
        while st.fed < pos:
            n = min(pos - st.fed, _FILL_SEGMENT)
            self._segment(ts_us, conn, written, st.fed, bytes(n))
            st.fed += n

    def _segment(self, ts_us: int, conn: _Conn, written: bool, pos: int, data: bytes, flags: int = _PSH_ACK) -> None:
        me_port, peer_port = (2 * conn.gen + _ME_PORT) & 0xFFFF, (2 * conn.gen + _PEER_PORT) & 0xFFFF
        if written:
            src, dst, sport, dport, ack = conn.me, conn.peer, me_port, peer_port, conn.inp.fed
        else:
            src, dst, sport, dport, ack = conn.peer, conn.me, peer_port, me_port, conn.out.fed
        tcp = _TCP.pack(sport, dport, pos & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
        ip = _IP6.pack(6 << 28, len(tcp) + len(data), 6, 64, src, dst)
        self.sensor.feed_frame(ts_us, LINKTYPE_RAW, ip + tcp + data)

    def drain(self) -> list[ObservedCall]:
        """The records of the windows the engine closed, with the made-up ends named, records that name the same
        ends merged; connections idle for ``IDLE_US`` are forgotten."""
        merged: dict[tuple, ObservedCall] = {}
        records = self.sensor.drain()
        for name in self._retired:
            self._ends.pop(name, None)
        self._retired.clear()
        for r in records:
            if r.src_workload.startswith(_PEER_TEXT):
                if not self.server_side:
                    TLS_SERVED_CALLS.inc(r.requests)
                    continue
                r.src_workload = PEER_CALLER
            if r.dst.startswith("[" + _PEER_TEXT):
                r.dst = PEER_UNNAMED
            key = (r.window_start_us, r.src_workload, r.dst, r.protocol, r.operation, r.tenant, r.tenant_method)
            key += (r.tenant_rule, r.feature, r.agent, r.provider, r.model)
            same = merged.get(key)
            if same is None:
                merged[key] = r
            else:
                add_counters(same, r)
        self._forget_idle()
        self.metrics.export()
        return list(merged.values())

    def _forget_idle(self) -> None:
        horizon = self._latest_us - IDLE_US
        for key in [k for k, conn in self.conns.items() if conn.last_us < horizon]:
            conn = self.conns.pop(key)
            self._segment(self._latest_us, conn, True, conn.out.fed, b"", _RST)  # the engine lets the flow go too
            self._retired.append(_text(conn.me))  # named until the next drain, which has what the reset finished
