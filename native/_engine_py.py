"""Pure-Python twin of ``_engine.pyx``: frames in, per-window aggregates out.

Reads: frames (from ``CaptureReader`` or one at a time) and a ``slow`` object for the cold paths (extraction rules that
need Python, AI usage, TLS ClientHello, DNS, PostgreSQL startup). Emits: raw aggregate tuples (see ``Engine.drain``)
that the sensor (``costmesh.sensor.core``) turns into ``ObservedCall`` records.

Per flow (a bounded LRU table, evictions counted) it orders TCP segments, drops retransmissions, recognises the
protocol (from the first bytes, port hints for flows joined mid-stream) and runs one stream parser per direction:
HTTP/1.1 (pipelining, Content-Length, chunked, 100-continue, close-delimited/SSE bodies), the PostgreSQL wire
protocol (startup, SSLRequest, simple and extended query, ReadyForQuery pairing), a TLS ClientHello, DNS over TCP.
The compiled engine does the same steps in the same order; the parser tests require identical output.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from . import _net_py as net
from .http import HTTP_METHODS, baggage_value, collapse_http_op, query_value
from .kinds import COUNTERS, ERROR_KINDS, MAX_VALUE, SRC_BAGGAGE, SRC_HEADER, SRC_HOST, SRC_PY, SRC_QUERY, C, E

P_UNKNOWN, P_HTTP, P_PG, P_TLS, P_DNS, P_OPAQUE = 0, 1, 2, 3, 4, 5
#: Protocol codes of aggregate records (index into ``PROTOCOLS``).
PROTOCOLS = ("http", "postgres", "tls", "dns")
R_HTTP, R_PG, R_TLS, R_DNS = 0, 1, 2, 3

MASK32 = 0xFFFFFFFF
MAX_OOO = 16
MAX_HEAD = 64 * 1024
MAX_LINE = 1024
MAX_PENDING = 64
MAX_OP = 2048
MAX_STMTS = 4
MAX_STMT_NAME = 64
MAX_REQ_BODY = 256 * 1024
MAX_RESP_BODY = 8 << 20
MAX_TLS_RECORD = 16384 + 5
MAX_DETECT = 4
PG_MAX_LEN = 1 << 30
PG_MAX_STARTUP = 10000

_HEX = frozenset(b"0123456789abcdefABCDEF")
PG_FRONTEND = b"QPBEDSCHXFpdcf"
PG_BACKEND = b"RKSZTDCEN123nstcGHWAIVvdf"

# parser states
S_HEAD, S_LEN, S_CSIZE, S_CDATA, S_CCRLF, S_TRAILER, S_CLOSE, S_DESYNC = range(8)
G_UNTYPED, G_TYPED, G_SSLANS, G_OFF = range(4)


class Req:
    __slots__ = (
        "ai",
        "body",
        "bytes_in",
        "bytes_out",
        "capture",
        "ce",
        "ct",
        "error",
        "head",
        "host",
        "ids",
        "method_connect",
        "method_head",
        "op",
        "resp_body",
        "silent",
        "starts",
        "status",
        "target",
        "ts",
    )

    def __init__(self, ts: int, op: bytes) -> None:
        self.ts = ts
        self.op = op
        self.host = b""
        self.target = b""
        self.ids = [(b"", -1), (b"", -1), (b"", -1)]
        self.starts = (-1, -1, -1)
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.error = False
        self.method_head = False
        self.method_connect = False
        self.ai = False
        self.capture = False
        self.silent = False
        self.head = b""
        self.body = bytearray()
        self.resp_body = bytearray()
        self.ct = b""
        self.ce = b""


class Dir:
    __slots__ = (
        "buf",
        "fin",
        "have_seq",
        "mlen",
        "mtype",
        "next_seq",
        "ooo",
        "remaining",
        "req",
        "state",
    )

    def __init__(self) -> None:
        self.have_seq = False
        self.next_seq = 0
        self.ooo: dict[int, tuple[int, bytes, bool]] = {}
        self.fin = False
        self.state = S_HEAD
        self.buf = bytearray()
        self.remaining = 0
        self.req: Req | None = None
        self.mtype = 0
        self.mlen = 0


class Flow:
    __slots__ = (
        "addr",
        "cside",
        "cycle_bytes",
        "cycle_op",
        "cycle_open",
        "cycle_ts",
        "dirs",
        "fresh",
        "host",
        "ids",
        "last_ts",
        "pending",
        "port",
        "proto",
        "stmt_next",
        "stmts",
        "tls_done",
        "tries",
    )

    def __init__(self, addr: tuple[bytes, bytes], port: tuple[int, int]) -> None:
        self.addr = addr
        self.port = port
        self.cside = 0
        self.proto = P_UNKNOWN
        self.tries = 0
        self.fresh = False
        self.dirs = (Dir(), Dir())
        self.pending: deque[Req] = deque()
        self.ids = [(b"", -1), (b"", -1), (b"", -1)]
        self.host = b""
        self.last_ts = 0
        self.cycle_open = False
        self.cycle_ts = 0
        self.cycle_op = b""
        self.cycle_bytes = 0
        self.tls_done = False
        self.stmts: list[tuple[bytes, bytes]] = []
        self.stmt_next = 0


def _s32(x: int) -> int:
    x &= MASK32
    return x - (1 << 32) if x & 0x80000000 else x


def _be32(b: bytes | bytearray, i: int) -> int:
    return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]


def _strip(b: bytes) -> bytes:
    return b.strip(b" \t")


def _digits(v: bytes) -> int:
    if not v or len(v) > 18 or not v.isdigit():
        return -1
    return int(v)


def pg_chain(data: bytes, types: bytes, hint: bool) -> bool:
    """Does ``data`` read as whole PostgreSQL messages of these types (or, with a port hint, their beginning)?"""
    p = 0
    n = 0
    while p + 5 <= len(data):
        if data[p] not in types:
            return False
        length = _be32(data, p + 1)
        if length < 4 or length > (1 << 24):
            return False
        p += 1 + length
        n += 1
    return n > 0 and hint if p != len(data) else (n > 1 or (n > 0 and hint))


def pg_startup_like(data: bytes) -> bool:
    if len(data) < 8:
        return False
    length, code = _be32(data, 0), _be32(data, 4)
    if length < 8 or length > PG_MAX_STARTUP:
        return False
    if code in (80877103, 80877104, 80877102):
        return length in (8, 16)
    if (code >> 16) != 3 or (code & 0xFFFF) > 2 or len(data) < 10:
        return False
    key = data[8:40].split(b"\0", 1)[0]
    return 0 < len(key) < 32 and all(97 <= c <= 122 or c == 95 for c in key)


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
        """``ObservedCall`` records of the closed windows: the rows of ``drain`` through ``builder.build``."""
        out: list = []
        builder.build(self.drain(now_us, final), out)
        return out

    def drain(self, now_us: int = -1, final: bool = False) -> list[tuple]:
        """Aggregates of closed windows (all of them when ``final``, which also ends every open flow)."""
        if final:
            while self.flows:
                _key, fl = self.flows.popitem(last=False)
                self._finish(fl)
        out = []
        keep: dict[tuple, list[int]] = {}
        for key, acc in self.agg.items():  # insertion order: the compiled engine keeps the same order
            if final or now_us < 0 or key[0] + self.window_us <= now_us:
                out.append((*key, *acc))
            else:
                keep[key] = acc
        self.agg = keep
        return out

    def feed_frame(self, ts: int, linktype: int, frame: bytes) -> None:
        c = self.counters
        c[0] += 1
        c[1] += len(frame)
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
                self._dns(ts, src, dst, sport, dport, payload, sport == 53)
            return
        self._tcp(ts, src, dst, sport, dport, flags, seq, payload)

    # ---- aggregation ------------------------------------------------------------------------------------------------

    def _agg(self, ts, fl, proto, op, host, ids, provider, model, vals) -> None:
        cs = fl.cside
        window = ts - ts % self.window_us
        key = (
            window,
            fl.addr[cs],
            fl.addr[1 - cs],
            fl.port[1 - cs],
            proto,
            op,
            host,
            ids[0][0],
            ids[0][1],
            ids[1][0],
            ids[1][1],
            ids[2][0],
            ids[2][1],
            provider,
            model,
        )
        acc = self.agg.get(key)
        if acc is None:
            self.agg[key] = list(vals)
        else:
            for i, v in enumerate(vals):
                acc[i] += v

    # ---- UDP DNS ----

    def _dns(self, ts, src, dst, sport, dport, payload, from_server) -> None:
        self.counters[C["dns_messages"]] += 1
        r = self.slow.dns(bytes(payload))
        if r is None:
            self.errors[E["dns_malformed"]] += 1
            return
        response, rcode, qname = r
        if response and from_server:
            window = ts - ts % self.window_us
            key = (window, dst, src, sport, R_DNS, qname[:MAX_OP], b"", b"", -1, b"", -1, b"", -1, b"", b"")
            acc = self.agg.setdefault(key, [0] * 9)
            acc[0] += 1
            acc[1] += rcode != 0
            acc[2] += len(payload)

    # ---- TCP ------------------------------------------------------------------------------------------------------

    def _new_flow(self, src, dst, sport, dport, flags) -> tuple[Flow, int]:
        if (src, sport) <= (dst, dport):
            fl, side = Flow((src, dst), (sport, dport)), 0
        else:
            fl, side = Flow((dst, src), (dport, sport)), 1
        if flags & 0x02:
            fl.fresh = True
            fl.cside = side if not flags & 0x10 else 1 - side
        else:
            hinted = self.pg_ports | self.http_ports
            if dport in hinted and sport not in hinted:
                fl.cside = side
            elif (sport in hinted and dport not in hinted) or sport < dport:
                fl.cside = 1 - side
            else:
                fl.cside = side
        self.counters[C["flows"]] += 1
        return fl, side

    def _tcp(self, ts, src, dst, sport, dport, flags, seq, payload) -> None:
        if (src, sport) <= (dst, dport):
            key, side = (src, sport, dst, dport), 0
        else:
            key, side = (dst, dport, src, sport), 1
        fl = self.flows.get(key)
        if fl is None:
            if flags & 0x04 or not (payload or flags & 0x02):
                return
            fl, side = self._new_flow(src, dst, sport, dport, flags)
            self.flows[key] = fl
            if len(self.flows) > self.max_flows:
                _k, old = self.flows.popitem(last=False)
                self.counters[C["flows_evicted"]] += 1
                self._finish(old)
        else:
            self.flows.move_to_end(key)
        fl.last_ts = ts
        d = fl.dirs[side]
        if flags & 0x02:
            d.have_seq = True
            d.next_seq = (seq + 1) & MASK32
            if not fl.fresh:
                fl.fresh = True
                fl.cside = side if not flags & 0x10 else 1 - side
            return
        if flags & 0x04:
            self._close(key, fl)
            return
        fin = bool(flags & 0x01)
        if not payload and not fin:
            return
        if not d.have_seq:
            d.have_seq = True
            d.next_seq = seq
        rel = _s32(seq - d.next_seq)
        if rel == 0:
            self._deliver(key, fl, side, ts, payload, fin)
            self._drain_ooo(key, fl, side)
        elif rel < 0:
            if rel + len(payload) <= 0:
                if payload:
                    self.counters[C["tcp_retransmissions"]] += 1
                return
            self.counters[C["tcp_retransmissions"]] += 1
            self._deliver(key, fl, side, ts, payload[-rel:], fin)
            self._drain_ooo(key, fl, side)
        else:
            if seq not in d.ooo:
                d.ooo[seq] = (ts, bytes(payload), fin)
                self.counters[C["tcp_out_of_order"]] += 1
            if len(d.ooo) > MAX_OOO:
                self.counters[C["tcp_gaps"]] += 1
                first = min(d.ooo, key=lambda s: _s32(s - d.next_seq))
                d.next_seq = first
                self._desync(fl, side)
                self._drain_ooo(key, fl, side)

    def _drain_ooo(self, key, fl, side) -> None:
        d = fl.dirs[side]
        while d.ooo and key in self.flows:
            item = d.ooo.pop(d.next_seq, None)
            if item is None:
                return
            ts, payload, fin = item
            self._deliver(key, fl, side, ts, payload, fin)

    def _deliver(self, key, fl, side, ts, data, fin) -> None:
        d = fl.dirs[side]
        d.next_seq = (d.next_seq + len(data) + (1 if fin else 0)) & MASK32
        if data:
            self._data(fl, side, ts, data)
        if fin:
            d.fin = True
            if fl.proto == P_HTTP and side != fl.cside and d.state == S_CLOSE:
                self._http_response_done(fl, ts)
                d.state = S_HEAD
            if fl.dirs[0].fin and fl.dirs[1].fin:
                self._close(key, fl)

    def _close(self, key, fl) -> None:
        if self.flows.get(key) is fl:
            del self.flows[key]
            self._finish(fl)

    def _finish(self, fl: Flow) -> None:
        """End of a flow (close, reset, eviction, final drain): settle what is still open."""
        if fl.proto == P_HTTP:
            srv = fl.dirs[1 - fl.cside]
            if srv.state == S_CLOSE and srv.req is not None:
                self._http_response_done(fl, fl.last_ts)
            while fl.pending:
                req = fl.pending.popleft()
                self.counters[C["http_unanswered"]] += 1
                self._http_call(fl, req, fl.last_ts, False)
        elif fl.proto == P_PG:
            while fl.pending:
                req = fl.pending.popleft()
                if not req.silent:
                    self._agg(
                        req.ts,
                        fl,
                        R_PG,
                        req.op,
                        b"",
                        fl.ids,
                        b"",
                        b"",
                        (1, int(req.error), req.bytes_in, req.bytes_out, 0, 0, 0, 0, 0),
                    )
        elif fl.proto in (P_UNKNOWN, P_OPAQUE):
            self.counters[C["flows_unrecognised"]] += 1

    def _desync(self, fl, side) -> None:
        d = fl.dirs[side]
        d.buf.clear()
        d.remaining = 0
        if fl.proto == P_HTTP:
            d.state = S_DESYNC
            if side == fl.cside:
                d.req = None
        elif fl.proto == P_PG:
            d.state = G_TYPED
            d.mtype = 0
        elif fl.proto == P_TLS:
            fl.proto = P_OPAQUE

    # ---- protocol recognition -------------------------------------------------------------------------------------

    def _detect(self, fl: Flow, side: int, data: bytes) -> None:
        client = side == fl.cside
        ports = fl.port
        if data.startswith(HTTP_METHODS):
            fl.cside = side
            fl.proto = P_HTTP
        elif data.startswith(b"HTTP/1."):
            fl.cside = 1 - side
            fl.proto = P_HTTP
        elif client and pg_startup_like(data):
            fl.proto = P_PG
            fl.dirs[side].state = G_UNTYPED
            fl.dirs[1 - side].state = G_TYPED
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
                fl.proto = P_PG
                fl.dirs[0].state = fl.dirs[1].state = G_TYPED
                if not fl.fresh:
                    self.counters[C["midstream_postgres"]] += 1
                return
            fl.tries += 1
            if fl.fresh or fl.tries >= MAX_DETECT:
                fl.proto = P_OPAQUE
            return
        if not fl.fresh:
            self.counters[C["midstream_http"]] += 1

    def _data(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        if fl.proto == P_UNKNOWN:
            self._detect(fl, side, data)
        p = fl.proto
        if p == P_HTTP:
            self._http(fl, side, ts, data)
        elif p == P_PG:
            self._pg(fl, side, ts, data)
        elif p == P_TLS:
            self._tls(fl, side, ts, data)
        elif p == P_DNS:
            self._dns_tcp(fl, side, ts, data)

    # ---- HTTP/1.1 -------------------------------------------------------------------------------------------------

    def _http(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        d = fl.dirs[side]
        client = side == fl.cside
        n = len(data)
        pos = 0
        while pos < n and fl.proto == P_HTTP:
            st = d.state
            if st == S_HEAD:
                if not d.buf:
                    while pos + 1 < n and data[pos] == 13 and data[pos + 1] == 10:
                        pos += 2
                    if pos >= n:
                        return
                    end = data.find(b"\r\n\r\n", pos)
                    if end >= 0:
                        head = data[pos : end + 4]
                        pos = end + 4
                        self._head(fl, side, ts, head)
                        continue
                    if n - pos > MAX_HEAD:
                        self.errors[E["http_head_too_long"]] += 1
                        self._desync(fl, side)
                        return
                    d.buf += data[pos:]
                    return
                old = len(d.buf)
                d.buf += data[pos:]
                end = d.buf.find(b"\r\n\r\n", max(0, old - 3))
                if end < 0:
                    if len(d.buf) > MAX_HEAD:
                        self.errors[E["http_head_too_long"]] += 1
                        self._desync(fl, side)
                    return
                head = bytes(d.buf[: end + 4])
                pos += end + 4 - old
                d.buf.clear()
                self._head(fl, side, ts, head)
            elif st in (S_LEN, S_CDATA, S_CCRLF):
                take = min(d.remaining, n - pos)
                if st != S_CCRLF:
                    self._body(fl, side, data[pos : pos + take])
                self._bytes(fl, side, take)
                d.remaining -= take
                pos += take
                if d.remaining == 0:
                    if st == S_LEN:
                        self._body_done(fl, side, ts)
                    elif st == S_CDATA:
                        d.state = S_CCRLF
                        d.remaining = 2
                    else:
                        d.state = S_CSIZE
            elif st in (S_CSIZE, S_TRAILER):
                nl = data.find(b"\n", pos)
                if nl < 0:
                    d.buf += data[pos:]
                    self._bytes(fl, side, n - pos)
                    pos = n
                    if len(d.buf) > MAX_LINE:
                        self.errors[E["http_chunk"]] += 1
                        self._desync(fl, side)
                    return
                d.buf += data[pos:nl]
                self._bytes(fl, side, nl + 1 - pos)
                pos = nl + 1
                line = bytes(d.buf).rstrip(b"\r")
                d.buf.clear()
                if st == S_TRAILER:
                    if not line:
                        self._body_done(fl, side, ts)
                    continue
                size_text = _strip(line.split(b";", 1)[0])
                if size_text and len(size_text) <= 15 and all(ch in _HEX for ch in size_text):
                    size = int(size_text, 16)
                else:
                    self.errors[E["http_chunk"]] += 1
                    self._desync(fl, side)
                    return
                if size == 0:
                    d.state = S_TRAILER
                else:
                    d.state = S_CDATA
                    d.remaining = size
            elif st == S_CLOSE:
                self._body(fl, side, data[pos:])
                self._bytes(fl, side, n - pos)
                return
            else:  # S_DESYNC: wait for a segment that starts with a message head
                rest = data[pos:]
                if (client and rest.startswith(HTTP_METHODS)) or (not client and rest.startswith(b"HTTP/1.")):
                    d.state = S_HEAD
                    continue
                return

    def _bytes(self, fl, side, n) -> None:
        d = fl.dirs[side]
        if d.req is not None:
            if side == fl.cside:
                d.req.bytes_out += n
            else:
                d.req.bytes_in += n

    def _body(self, fl, side, chunk) -> None:
        req = fl.dirs[side].req
        if req is None or not req.capture:
            return
        if side == fl.cside:
            room = MAX_REQ_BODY - len(req.body)
            if room > 0:
                req.body += chunk[:room]
        elif req.ai:
            room = MAX_RESP_BODY - len(req.resp_body)
            if room > 0:
                req.resp_body += chunk[:room]

    def _body_done(self, fl, side, ts) -> None:
        d = fl.dirs[side]
        d.state = S_HEAD
        if side == fl.cside:
            d.req = None
        else:
            self._http_response_done(fl, ts)

    def _parse_headers(self, head: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
        lines = head[: len(head) - 4].split(b"\r\n")
        first: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if not line or line[0] in (32, 9):
                continue
            colon = line.find(b":")
            if colon <= 0:
                self.errors[E["http_header"]] += 1
                continue
            name = line[:colon].lower()
            if name not in first:
                first[name] = _strip(line[colon + 1 :])
        return lines, first

    def _head(self, fl: Flow, side: int, ts: int, head: bytes) -> None:
        d = fl.dirs[side]
        lines, hdr = self._parse_headers(head)
        line = lines[0]
        te = hdr.get(b"transfer-encoding")
        chunked = te is not None and b"chunked" in te.lower()
        cl = -1
        if b"content-length" in hdr:
            cl = _digits(hdr[b"content-length"])
            if cl < 0:
                self.errors[E["http_content_length"]] += 1
        if side == fl.cside:
            sp1 = line.find(b" ")
            sp2 = line.rfind(b" ")
            method = line[:sp1] if sp1 > 0 else b""
            if (
                sp1 <= 0
                or sp1 > 16
                or sp2 <= sp1 + 1
                or not line[sp2 + 1 :].startswith(b"HTTP/1.")
                or not all(65 <= ch <= 90 for ch in method)
            ):
                self.errors[E["http_request_line"]] += 1
                self._desync(fl, side)
                return
            target = line[sp1 + 1 : sp2]
            self.counters[C["http_requests"]] += 1
            op = (method + b" " + target)[:MAX_OP]
            req = Req(ts, collapse_http_op(op) if self.collapse_ids else op)
            req.target = target
            req.host = hdr.get(b"host", b"")[:MAX_VALUE]
            req.method_head = method == b"HEAD"
            req.method_connect = method == b"CONNECT"
            req.bytes_out = len(head)
            req.ai = self.slow.is_ai(target, req.host)
            self._http_ids(req, head, hdr)
            if req.capture:
                req.head = head
            if len(fl.pending) < MAX_PENDING:
                fl.pending.append(req)
            d.req = req
            if chunked:
                d.state = S_CSIZE
            elif cl > 0:
                d.state = S_LEN
                d.remaining = cl
            else:
                d.req = None
            return
        # response
        if not (len(line) >= 12 and line.startswith(b"HTTP/1.") and line[8] == 32 and line[9:12].isdigit()):
            self.errors[E["http_status_line"]] += 1
            self._desync(fl, side)
            return
        status = int(line[9:12])
        self.counters[C["http_responses"]] += 1
        req = fl.pending[0] if fl.pending else None
        if req is None:
            self.counters[C["http_unpaired_responses"]] += 1
        if 100 <= status < 200:
            if status == 101:
                fl.proto = P_OPAQUE
            return
        d.req = req
        if req is not None:
            req.status = status
            req.bytes_in += len(head)
            req.ct = hdr.get(b"content-type", b"")
            req.ce = hdr.get(b"content-encoding", b"")
        if req is not None and req.method_connect and 200 <= status < 300:
            # a proxy tunnel from here on (egress proxies to AI APIs): look for the TLS ClientHello inside it
            self._http_response_done(fl, ts)
            self._tunnel(fl)
            return
        if (req is not None and req.method_head) or status == 204 or status == 304:
            self._http_response_done(fl, ts)
        elif chunked:
            d.state = S_CSIZE
        elif cl >= 0:
            if cl == 0:
                self._http_response_done(fl, ts)
            else:
                d.state = S_LEN
                d.remaining = cl
        else:
            d.state = S_CLOSE

    def _tunnel(self, fl: Flow) -> None:
        """After ``CONNECT`` succeeded the flow carries another protocol: recognise it afresh."""
        self._finish(fl)  # requests still waiting in the queue will not be answered over HTTP
        fl.proto = P_UNKNOWN
        fl.tries = 0
        for d in fl.dirs:
            d.buf.clear()
            d.state = 0
            d.remaining = 0
            d.req = None

    def _http_ids(self, req: Req, head: bytes, hdr: dict[bytes, bytes]) -> None:
        rs = self.rules
        starts = [-1, -1, -1]
        for t in range(3):
            for pos, i in enumerate(rs.order[t]):
                if not rs.http_rule_applies(i, req.ai):
                    continue
                kind = rs.kinds[i]
                if kind == SRC_PY:
                    starts[t] = pos
                    break
                if kind == SRC_HEADER:
                    v = hdr.get(rs.keys[i], b"")
                elif kind == SRC_BAGGAGE:
                    v = baggage_value(hdr.get(b"baggage", b""), rs.keys[i])
                elif kind == SRC_QUERY:
                    v = query_value(req.target, rs.keys[i])
                else:
                    v = hdr.get(b"host", b"") if kind == SRC_HOST else b""
                if v:
                    req.ids[t] = (v[:MAX_VALUE], i)
                    break
        req.starts = (starts[0], starts[1], starts[2])
        if starts == [-1, -1, -1]:
            req.capture = req.ai
            return
        if req.ai or rs.has_body_rules:
            req.capture = True
            return
        found = self.slow.resolve(head, None, req.starts, False)
        for t in range(3):
            if req.starts[t] >= 0:
                req.ids[t] = found[t]
        req.starts = (-1, -1, -1)

    def _http_response_done(self, fl: Flow, ts: int) -> None:
        srv = fl.dirs[1 - fl.cside]
        req = srv.req
        srv.req = None
        if req is None:
            return
        if fl.pending and fl.pending[0] is req:
            fl.pending.popleft()
        cli = fl.dirs[fl.cside]
        if cli.req is req:
            cli.req = None
        self._http_call(fl, req, ts, True)

    def _http_call(self, fl: Flow, req: Req, ts: int, answered: bool) -> None:
        provider = model = b""
        tin = tout = tc = tr = 0
        if req.capture:  # one call settles the deferred rules and reads the AI usage
            starts = req.starts if req.starts != (-1, -1, -1) else None
            found, r = self.slow.complete(
                req.head,
                bytes(req.body),
                starts,
                req.ai,
                req.target,
                req.host,
                bytes(req.resp_body),
                req.ct,
                req.ce,
                answered,
            )
            if found is not None:
                for t in range(3):
                    if req.starts[t] >= 0:
                        req.ids[t] = found[t]
            if req.ai:
                self.counters[C["ai_calls"]] += 1
                if r is None:
                    self.errors[E["ai_body"]] += 1
                else:
                    provider, model, tin, tout, tc, tr = r
        busy = ts - req.ts if answered and ts > req.ts else 0
        errors = 1 if req.status >= 500 else 0
        self._agg(
            req.ts,
            fl,
            R_HTTP,
            req.op,
            req.host,
            req.ids,
            provider,
            model,
            (1, errors, req.bytes_in, req.bytes_out, busy, tin, tout, tc, tr),
        )

    # ---- PostgreSQL -------------------------------------------------------------------------------------------------

    def _pg(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        d = fl.dirs[side]
        client = side == fl.cside
        n = len(data)
        pos = 0
        while pos < n and fl.proto == P_PG:
            if d.state == G_OFF:
                return
            if d.state == G_SSLANS:
                b = data[pos]
                pos += 1
                if b == 0x4E:  # 'N': go on in cleartext
                    d.state = G_TYPED
                elif b == 0x53:  # 'S': TLS from here on
                    self.counters[C["pg_tls"]] += 1
                    fl.proto = P_TLS
                    for x in fl.dirs:
                        x.buf.clear()
                        x.state = 0
                    return
                elif b == 0x47:  # 'G': GSSAPI encryption accepted, nothing readable follows
                    fl.proto = P_OPAQUE
                    return
                else:
                    self.errors[E["pg_message"]] += 1
                    fl.proto = P_OPAQUE
                    return
                continue
            hlen = 4 if d.state == G_UNTYPED else 5
            if d.mtype == 0:
                # header phase (d.mtype == 0 means: no message in progress)
                need = hlen - len(d.buf)
                take = min(need, n - pos)
                d.buf += data[pos : pos + take]
                pos += take
                if len(d.buf) < hlen:
                    return
                if hlen == 5:
                    mtype = d.buf[0]
                    length = _be32(d.buf, 1)
                    ok = 4 <= length <= PG_MAX_LEN and mtype in (PG_FRONTEND if client else PG_BACKEND)
                else:
                    mtype = 1
                    length = _be32(d.buf, 0)
                    ok = 8 <= length <= PG_MAX_STARTUP
                if not ok:
                    self.errors[E["pg_message"]] += 1
                    fl.proto = P_OPAQUE
                    return
                d.mtype = mtype
                d.remaining = length - 4
                d.buf.clear()
                d.mlen = length
            take = min(d.remaining, n - pos)
            cap = self._pg_cap(d.mtype, client, d.state)
            room = cap - len(d.buf)
            if room > 0:
                d.buf += data[pos : pos + min(take, room)]
            d.remaining -= take
            pos += take
            if d.remaining == 0:
                mtype, mlen, body = d.mtype, d.mlen, bytes(d.buf)
                d.buf.clear()
                d.mtype = 0
                self._pg_message(fl, side, ts, mtype, mlen, body)

    @staticmethod
    def _pg_cap(mtype: int, client: bool, state: int) -> int:
        """How much of a message body is kept: the SQL text of Query/Parse, the statement of Bind, startup."""
        if state == G_UNTYPED:
            return PG_MAX_STARTUP
        if not client:
            return 0
        if mtype == 0x51:  # Q
            return MAX_OP
        if mtype == 0x50:  # P: name, query
            return MAX_OP + 256
        if mtype == 0x42:  # B: portal, statement
            return 256
        return 0

    @staticmethod
    def _stmt_put(fl: Flow, name: bytes, text: bytes) -> None:
        """A small per-flow cache of prepared statements (pooled clients prepare once, bind many times)."""
        for i, (n, _t) in enumerate(fl.stmts):
            if n == name:
                fl.stmts[i] = (name, text)
                return
        if len(fl.stmts) < MAX_STMTS:
            fl.stmts.append((name, text))
        else:
            fl.stmts[fl.stmt_next] = (name, text)
            fl.stmt_next = (fl.stmt_next + 1) % MAX_STMTS

    @staticmethod
    def _stmt_get(fl: Flow, name: bytes) -> bytes:
        for n, t in fl.stmts:
            if n == name:
                return t
        return b""

    def _pg_message(self, fl: Flow, side: int, ts: int, mtype: int, mlen: int, body: bytes) -> None:
        self.counters[C["pg_messages"]] += 1
        d = fl.dirs[side]
        size = mlen + (1 if d.state == G_TYPED else 0)
        if side == fl.cside:
            if d.state == G_UNTYPED:
                code = _be32(body, 0)
                srv = fl.dirs[1 - side]
                if code in (80877103, 80877104):
                    srv.state = G_SSLANS
                elif code == 80877102:
                    pass
                elif (code >> 16) == 3:
                    d.state = G_TYPED
                    params = body[4:].split(b"\0")
                    kv = dict(zip(params[0::2], params[1::2], strict=False))
                    user = kv.get(b"user", b"")
                    database = kv.get(b"database", b"") or user
                    fl.ids = list(self.slow.pg_startup(user, database))
                else:
                    self.errors[E["pg_message"]] += 1
                    fl.proto = P_OPAQUE
                return
            if mtype == 0x51:  # Query
                req = Req(ts, body.split(b"\0", 1)[0][:MAX_OP])
                req.bytes_out = size
                self.counters[C["pg_queries"]] += 1
                if len(fl.pending) < MAX_PENDING:
                    fl.pending.append(req)
            elif mtype == 0x53:  # Sync
                req = Req(fl.cycle_ts if fl.cycle_open else ts, fl.cycle_op)
                req.bytes_out = fl.cycle_bytes + size
                req.silent = not fl.cycle_open
                if not req.silent:
                    self.counters[C["pg_queries"]] += 1
                if len(fl.pending) < MAX_PENDING:
                    fl.pending.append(req)
                fl.cycle_open = False
                fl.cycle_op = b""
                fl.cycle_bytes = 0
            elif mtype in (0x58, 0x70):  # Terminate, password
                return
            else:
                if not fl.cycle_open:
                    fl.cycle_open = True
                    fl.cycle_ts = ts
                    fl.cycle_op = b""
                    fl.cycle_bytes = 0
                fl.cycle_bytes += size
                if mtype == 0x50:  # Parse: remember the statement, name the cycle after its first one
                    parts = body.split(b"\0", 2)
                    if len(parts) >= 2:
                        text = parts[1][:MAX_OP]
                        self._stmt_put(fl, parts[0][:MAX_STMT_NAME], text)
                        if not fl.cycle_op:
                            fl.cycle_op = text
                elif mtype == 0x42 and not fl.cycle_op:  # Bind of a statement prepared in an earlier cycle
                    parts = body.split(b"\0", 2)
                    if len(parts) >= 2:
                        fl.cycle_op = self._stmt_get(fl, parts[1][:MAX_STMT_NAME])
            return
        # server
        if not fl.pending:
            return
        front = fl.pending[0]
        front.bytes_in += size
        if mtype == 0x45:  # ErrorResponse
            front.error = True
        elif mtype == 0x5A:  # ReadyForQuery
            fl.pending.popleft()
            if not front.silent:
                busy = ts - front.ts if ts > front.ts else 0
                vals = (1, int(front.error), front.bytes_in, front.bytes_out, busy, 0, 0, 0, 0)
                self._agg(front.ts, fl, R_PG, front.op, b"", fl.ids, b"", b"", vals)

    # ---- TLS ClientHello ---------------------------------------------------------------------------------------------

    def _tls(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        client = side == fl.cside
        if not fl.tls_done:
            if not client:
                return
            d = fl.dirs[side]
            d.buf += data[: MAX_TLS_RECORD - len(d.buf)]
            if len(d.buf) < 5:
                return
            need = 5 + ((d.buf[3] << 8) | d.buf[4])
            if len(d.buf) < need and len(d.buf) < MAX_TLS_RECORD:
                return
            record = bytes(d.buf[:need])
            d.buf.clear()
            fl.tls_done = True
            r = self.slow.tls(record)
            if r is None:
                self.errors[E["tls_malformed"]] += 1
                fl.proto = P_OPAQUE
                return
            sni, ech, ids = r
            self.counters[C["tls_client_hellos"]] += 1
            if ech:
                self.counters[C["tls_ech"]] += 1
            fl.host = sni[:MAX_VALUE]
            fl.ids = list(ids)
            op = b"ech" if ech else b""
            self._agg(ts, fl, R_TLS, op, fl.host, fl.ids, b"", b"", (1, 0, 0, len(record), 0, 0, 0, 0, 0))
            return
        op = b""
        vals = (0, 0, 0 if client else len(data), len(data) if client else 0, 0, 0, 0, 0, 0)
        self._agg(ts, fl, R_TLS, op, fl.host, fl.ids, b"", b"", vals)

    # ---- DNS over TCP ------------------------------------------------------------------------------------------------

    def _dns_tcp(self, fl: Flow, side: int, ts: int, data: bytes) -> None:
        d = fl.dirs[side]
        d.buf += data
        while len(d.buf) >= 2:
            need = 2 + ((d.buf[0] << 8) | d.buf[1])
            if len(d.buf) < need:
                if len(d.buf) > 70000:
                    d.buf.clear()
                return
            msg = bytes(d.buf[2:need])
            del d.buf[:need]
            cs = fl.cside
            from_server = side != cs
            src, dst = fl.addr[side], fl.addr[1 - side]
            self._dns(ts, src, dst, fl.port[side], fl.port[1 - side], msg, from_server)
