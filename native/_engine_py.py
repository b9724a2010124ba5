"""Pure-Python twin of ``_engine.pyx``: frames in, per-window aggregates out.

Reads: frames (from ``CaptureReader`` or one at a time) and a ``slow`` object for the cold paths (extraction rules that
need Python, AI usage, TLS ClientHello, DNS, PostgreSQL startup). Emits: raw aggregate tuples (``drain``) or
``ObservedCall`` records (``drain_calls``, through the caller's builder) that the sensor (``costmesh.sensor.core``)
hands on.

Split by concern as the compiled engine is, one twin per file (see ``_engine.pyx`` for the protocol interface and how
a protocol is registered): ``_flows_py`` (flow table, TCP ordering), ``_records_py`` (aggregation, records),
``_http_py``, ``_pg_py``, ``_tls_py`` (TLS ClientHello and DNS). This module holds the ``Engine``: its public surface
and the per-protocol dispatch. The compiled engine does the same steps in the same order; the parser tests require
identical output.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from . import _net_py as net
from ._flows_py import (
    MAX_DETECT,
    P_DNS,
    P_HTTP,
    P_OPAQUE,
    P_PG,
    P_TLS,
    P_UNKNOWN,
    Flow,
    flow_end_all,
    flow_read,
    tcp_segment,
)
from ._http_py import http_data, http_desync, http_fin, http_finish
from ._pg_py import PG_BACKEND, PG_FRONTEND, pg_begin, pg_chain, pg_data, pg_desync, pg_finish, pg_startup_like
from ._records_py import agg_take, build
from ._tls_py import dns_message, dns_tcp_data, tls_data, tls_desync
from .http import HTTP_METHODS
from .kinds import COUNTERS, ERROR_KINDS, PROTOCOLS, C, E

__all__ = ["PROTOCOLS", "Engine"]

#: Server reads waiting for their frames at most (the compiled engine's ``DEF``).
MAX_READS_DUE = 1 << 18


class Engine:
    def __init__(
        self,
        slow,
        window_us: int,
        max_flows: int,
        pg_ports: list[int],
        http_ports: list[int],
        collapse_ids: bool = False,
    ) -> None:
        self.slow = slow
        self.collapse_ids = bool(collapse_ids)
        self.rules = slow.rules
        self.window_us = max(1, int(window_us))
        self.max_flows = max(1, int(max_flows))
        self.pg_ports = frozenset(pg_ports)
        self.http_ports = frozenset(http_ports)
        self.flows: OrderedDict[tuple, Flow] = OrderedDict()
        #: Server reads waiting for the frames of their time, oldest first (``server_reads``).
        self.reads_due: deque[tuple[int, bytes, int, bytes, int]] = deque()
        self.agg: dict[tuple, list[int]] = {}
        self.counters = [0] * len(COUNTERS)
        self.errors = [0] * len(ERROR_KINDS)
        self.last_ts = 0

    # ---- public surface -------------------------------------------------------------------------------------------

    def feed_capture(self, reader, max_frames: int = -1) -> int:
        """Frames from an iterator of (ts, linktype, frame), at most ``max_frames``; 0 means exhausted."""
        n = 0
        for ts, linktype, frame in reader:
            self.feed_frame(ts, linktype, frame)
            n += 1
            if n == max_frames:
                break
        return n

    def server_reads(self, reads) -> None:
        """Reads by servers on this host, ``(ts_us, local, local_port, peer, peer_port)`` with 16-byte addresses
        (IPv4 mapped), oldest first, from the kernel's socket reads: where a request's server time starts
        (``flow_served_from``). Each is applied when the first frame later than it is fed, so it meets the request
        it read and not yet its answer, however far the frames lag (a ring block is handed over up to
        ``ring_retire_ms`` after its first frame). At most MAX_READS_DUE wait (the oldest go first)."""
        self.reads_due.extend(reads)
        while len(self.reads_due) > MAX_READS_DUE:
            self.reads_due.popleft()

    def _reads_until(self, ts: int) -> None:
        """Apply the waiting reads up to ``ts`` (the frame about to be parsed)."""
        due = self.reads_due
        while due and due[0][0] <= ts:
            rts, local, lport, peer, pport = due.popleft()
            if len(local) == 16 and len(peer) == 16:
                self.counters[C["server_reads"]] += flow_read(self, rts, local, lport, peer, pport)

    def count_error(self, kind: str) -> None:
        self.errors[E[kind]] += 1

    def stats(self) -> dict:
        return {
            "counters": dict(zip(COUNTERS, self.counters, strict=True)),
            "errors": {k: v for k, v in zip(ERROR_KINDS, self.errors, strict=True) if v},
            "flows_open": len(self.flows),
            "aggregates_open": len(self.agg),
        }

    def drain_calls(self, now_us: int, final: bool, builder) -> list:
        """``ObservedCall`` records of the closed windows: the rows of ``drain`` through ``_records_py.build``."""
        out: list = []
        build(builder, self.drain(now_us, final), out)
        return out

    def drain(self, now_us: int = -1, final: bool = False) -> list[tuple]:
        """Aggregates of closed windows (all of them when ``final``, which also ends every open flow)."""
        if final:
            flow_end_all(self)
        return agg_take(self, now_us, final)

    def feed_frame(self, ts: int, linktype: int, frame: bytes) -> None:
        c = self.counters
        c[0] += 1
        c[1] += len(frame)
        if self.reads_due and self.reads_due[0][0] <= ts:
            self._reads_until(ts)
        if ts > self.last_ts:
            self.last_ts = ts
        r = net.decode(linktype, frame)
        if isinstance(r, int):
            if r == net.NON_IP:
                c[C["non_ip"]] += 1
            elif r == net.OTHER_L4:
                c[C["other_l4"]] += 1
            else:
                self.errors[-r - 100] += 1
            return
        l4, src, dst, sport, dport, flags, seq, payload = r
        if l4 == 17:
            if sport == 53 or dport == 53:
                dns_message(self, ts, src, dst, sport, dport, payload, sport == 53)
            return
        tcp_segment(self, ts, src, dst, sport, dport, flags, seq, payload)

    # ---- the per-protocol dispatch ----------------------------------------------------------------------------------

    def _detect(self, fl: Flow, side: int, data: bytes) -> None:
        """Which protocol a flow speaks: from the first bytes of a direction (tried in this order), with port
        hints for flows joined mid-stream; opaque when undecided after MAX_DETECT segments (at once on a flow seen
        from its SYN)."""
        client = side == fl.cside
        ports = fl.port
        if data.startswith(HTTP_METHODS):
            fl.cside = side
            fl.proto = P_HTTP
        elif data.startswith(b"HTTP/1."):
            fl.cside = 1 - side
            fl.proto = P_HTTP
        elif client and pg_startup_like(data):
            pg_begin(fl, side, True)
            return
        elif len(data) >= 6 and data[0] == 0x16 and data[1] == 3 and data[5] == 1:
            fl.cside = side
            fl.proto = P_TLS
            return
        elif ports[0] == 53 or ports[1] == 53:
            fl.proto = P_DNS
            fl.dirs[0].state = fl.dirs[1].state = 0
            return
        else:
            hint = ports[1 - fl.cside] in self.pg_ports
            if not fl.fresh and pg_chain(data, PG_FRONTEND if client else PG_BACKEND, hint):
                pg_begin(fl, side, False)
                self.counters[C["midstream_postgres"]] += 1
                return
            fl.tries += 1
            if fl.fresh or fl.tries >= MAX_DETECT:
                fl.proto = P_OPAQUE
            return
        if not fl.fresh:
            self.counters[C["midstream_http"]] += 1

    def _data(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        """In-order bytes of one direction, to the flow's protocol parser (recognised first when still unknown)."""
        if fl.proto == P_UNKNOWN:
            self._detect(fl, side, data)
        p = fl.proto
        if p == P_HTTP:
            http_data(self, fl, side, ts, data)
        elif p == P_PG:
            pg_data(self, fl, side, ts, data)
        elif p == P_TLS:
            tls_data(self, fl, side, ts, data)
        elif p == P_DNS:
            dns_tcp_data(self, fl, side, ts, data)

    def _fin(self, fl: Flow, side: int, ts: int) -> None:
        """``side`` sent its FIN (after its last byte)."""
        if fl.proto == P_HTTP:
            http_fin(self, fl, side, ts)

    def _finish(self, fl: Flow) -> None:
        """End of a flow (close, reset, eviction, final drain): its protocol settles what is still open."""
        if fl.proto == P_HTTP:
            http_finish(self, fl)
        elif fl.proto == P_PG:
            pg_finish(self, fl)
        elif fl.proto in (P_UNKNOWN, P_OPAQUE):
            self.counters[C["flows_unrecognised"]] += 1

    def _desync(self, fl: Flow, side: int) -> None:
        """Bytes of ``side`` were lost (a gap too long to wait for): what it buffered is dropped, its parser told."""
        d = fl.dirs[side]
        d.buf.clear()
        d.remaining = 0
        if fl.proto == P_HTTP:
            http_desync(fl, side)
        elif fl.proto == P_PG:
            pg_desync(fl, side)
        elif fl.proto == P_TLS:
            tls_desync(fl)
