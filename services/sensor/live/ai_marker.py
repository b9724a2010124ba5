"""Which flows are AI traffic: the TLS SNI or HTTP Host of a connection's first frame against ``sensor.ai_hosts``.

Reads: the frames that open a connection (the ring walk picks them out in C: one per connection, not one per packet),
IPv4 and IPv6. Emits: marks in the socket filter's ``ai_flows`` map, both directions of a connection, so the kernel
passes an AI flow's whole payload from then on; marks of connections idle for a minute are taken back (ports get
reused).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import re
from collections.abc import Callable, Sequence
from typing import Any

from costmesh.common.schemas import FlowVolume
from costmesh.native import _net_py as net_py
from costmesh.native.http import HTTP_METHODS

from .flows import addr_text, raw_addr

LINKTYPE_ETHERNET = 1
#: A marked connection without traffic for this many windows is forgotten.
IDLE_WINDOWS = 60


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
    """Marks flows whose TLS SNI or HTTP Host matches ``sensor.ai_hosts`` as AI traffic; ``table`` gives the kernel
    map (``ai_flows``) once the program is loaded."""

    def __init__(self, patterns: list[str], table: Callable[[], Any]) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self.table = table
        self.marked: dict[tuple[str, int, str, int], int] = {}  # flow → windows since last seen

    def inspect(self, hellos: Sequence[bytes]) -> None:
        for frame in hellos:
            r = net_py.decode(LINKTYPE_ETHERNET, frame)
            if isinstance(r, int) or not r[7]:
                continue
            _l4, src, dst, sport, dport, _flags, _seq, payload = r
            name = client_hello_sni(payload) if payload[0] == 0x16 else http_host(payload)
            if name and any(p.search(name) for p in self.patterns):
                flow = (addr_text(src), sport, addr_text(dst), dport)
                if flow not in self.marked:
                    self.mark(*flow)
                self.marked[flow] = 0

    def _keys(self, src: str, sport: int, dst: str, dport: int) -> tuple[Any, list[Any]]:
        """The ``ai_flows`` map and its keys for both directions of one TCP connection."""
        table = self.table()
        a, b = raw_addr(src), raw_addr(dst)
        keys = []
        for s, sp, d, dp in ((a, sport, b, dport), (b, dport, a, sport)):
            key = table.Key()
            ct.memmove(key.saddr, s, 16)
            ct.memmove(key.daddr, d, 16)
            key.sport, key.dport = sp, dp
            keys.append(key)
        return table, keys

    def mark(self, src: str, sport: int, dst: str, dport: int) -> None:
        """Have the kernel pass the whole payload of this TCP connection (both directions) from now on."""
        table, keys = self._keys(src, sport, dst, dport)
        for key in keys:
            table[key] = table.Leaf(1)

    def forget(self, src: str, sport: int, dst: str, dport: int) -> None:
        table, keys = self._keys(src, sport, dst, dport)
        for key in keys:
            with contextlib.suppress(KeyError):
                del table[key]

    def age(self, flows: list[FlowVolume], idle_windows: int = IDLE_WINDOWS) -> None:
        """Drop the marks of connections without traffic for ``idle_windows`` windows (ports get reused)."""
        marked = self.marked
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
                    self.forget(*flow)
