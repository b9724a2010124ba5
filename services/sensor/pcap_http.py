"""A minimal capture reader for the first end-to-end path: classic pcap, Ethernet/IPv4/TCP, HTTP/1.1 requests and
responses whose head fits in one segment, tenant from header rules.

It is deliberately small; the Cython hot path in ``costmesh.native`` (issue "Sensor hot path") replaces it. Its output
is the same ``ObservedCall`` records the real parser produces, so everything downstream is already real.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import ObservedCall

log = logging.getLogger(__name__)

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS ")


class CaptureError(Exception):
    """A capture file that cannot be read further; names the file and byte offset."""


def read_pcap(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (timestamp µs, Ethernet frame) from a classic pcap file, streaming."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24 or head[:4] not in _PCAP_MAGIC:
            raise CaptureError(f"{path}: offset 0: not a classic pcap file")
        order, ticks_per_us = _PCAP_MAGIC[head[:4]]
        linktype = struct.unpack(order + "I", head[20:24])[0]
        if linktype != 1:
            raise CaptureError(f"{path}: offset 20: link type {linktype} not supported by the minimal reader")
        rec = struct.Struct(order + "IIII")
        offset = 24
        while True:
            hdr = fh.read(16)
            if not hdr:
                return
            if len(hdr) < 16:
                raise CaptureError(f"{path}: offset {offset}: truncated record header")
            sec, frac, caplen, _wirelen = rec.unpack(hdr)
            data = fh.read(caplen)
            if len(data) < caplen:
                raise CaptureError(f"{path}: offset {offset}: truncated record ({len(data)} of {caplen} bytes)")
            offset += 16 + caplen
            yield sec * 1_000_000 + frac // ticks_per_us, data


@dataclass(slots=True)
class _Pending:
    ts_us: int
    tenant: str
    tenant_rule: str
    feature: str
    agent: str
    bytes_out: int
    #: The raw request line's method and target (``"GET /path?query"``); the redactor shapes it.
    operation: str = ""


@dataclass
class MinimalHttpSensor:
    """Turns frames into per-window HTTP ``ObservedCall`` records, one request pairs with the next response per flow."""

    config: Config
    node: str
    window_us: int = 1_000_000
    pending: dict[tuple[str, int, str, int], list[_Pending]] = field(default_factory=dict)
    totals: dict[tuple, list[int]] = field(default_factory=dict)

    def _name(self, addr: str, port: int) -> str:
        for w in self.config.workloads:
            if w.address == addr and (not w.port or w.port == port):
                return w.name
        return f"{addr}:{port}" if port else addr

    def _extract(self, headers: dict[bytes, bytes]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for rule in self.config.rules:
            if rule.target in found:
                continue
            if rule.source == "header":
                value = headers.get(rule.key.lower().encode())
                if value:
                    found[rule.target] = (value.decode("latin-1").strip(), rule.name or f"header:{rule.key}")
            elif rule.source == "baggage":
                for item in headers.get(b"baggage", b"").decode("latin-1").split(","):
                    k, _, v = item.strip().partition("=")
                    if k == rule.key and v:
                        found[rule.target] = (v.split(";")[0], rule.name or f"baggage:{rule.key}")
        return found

    def feed(self, ts_us: int, frame: bytes) -> None:
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or len(ip) < ihl + 20:
            return
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if not payload:
            return
        if payload.startswith(_METHODS):
            self._request(ts_us, (src, sport, dst, dport), payload)
        elif payload.startswith(b"HTTP/1."):
            self._response(ts_us, (dst, dport, src, sport), payload)

    def _request(self, ts_us: int, flow: tuple[str, int, str, int], payload: bytes) -> None:
        head = payload.split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                ERRORS.labels("sensor", "http_header").inc()
                continue
            headers[name.strip().lower()] = value.strip()
        ids = self._extract(headers)
        tenant, rule = ids.get("tenant", ("", ""))
        method, _, target = lines[0].decode("latin-1").partition(" ")
        operation = f"{method} {target.rsplit(' HTTP/', 1)[0]}"
        self.pending.setdefault(flow, []).append(
            _Pending(
                ts_us,
                tenant,
                rule,
                ids.get("feature", ("", ""))[0],
                ids.get("agent", ("", ""))[0],
                len(payload),
                operation,
            )
        )

    def _response(self, ts_us: int, flow: tuple[str, int, str, int], payload: bytes) -> None:
        queue = self.pending.get(flow)
        if not queue:
            return
        req = queue.pop(0)
        try:
            status = int(payload[9:12])
        except ValueError:
            ERRORS.labels("sensor", "http_status").inc()
            status = 0
        window = req.ts_us - req.ts_us % self.window_us
        key = (
            window,
            self._name(flow[0], 0),
            self._name(flow[2], flow[3]),
            req.tenant,
            req.tenant_rule,
            req.feature,
            req.agent,
            req.operation,
        )
        acc = self.totals.setdefault(key, [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += status >= 500
        acc[2] += len(payload)
        acc[3] += req.bytes_out
        acc[4] += max(0, ts_us - req.ts_us)

    def drain(self) -> list[ObservedCall]:
        """Hand over every finished window's records and forget them."""
        out = []
        for (window, src, dst, tenant, rule, feature, agent, operation), acc in sorted(self.totals.items()):
            out.append(
                ObservedCall(
                    window_start_us=window,
                    window_end_us=window + self.window_us,
                    node=self.node,
                    src_workload=src,
                    dst=dst,
                    protocol="http",
                    operation=operation,
                    tenant=tenant,
                    tenant_method="header" if tenant else "unallocated",
                    tenant_rule=rule,
                    feature=feature,
                    agent=agent,
                    requests=acc[0],
                    errors=acc[1],
                    bytes_in=acc[2],
                    bytes_out=acc[3],
                    busy_us=acc[4],
                )
            )
        self.totals.clear()
        return out
