"""The kernel's flow counters as ``FlowVolume`` records: bytes and packets of every flow direction, per window.

Reads: the socket filter's two flow maps (``flows0``/``flows1``, one generation counting while the other is read).
Emits: ``FlowVolume`` per flow direction and window, both ends named when a namer is given. Every byte is counted in
the kernel, also those never copied to user space: data-transfer, NAT and cross-zone cost is split by these.
"""

from __future__ import annotations

import ctypes as ct
import errno
import functools
import ipaddress
import os
from collections.abc import Callable
from typing import Any

from costmesh.common.schemas import FlowVolume

from .. import bpf

#: Names one end of a flow (address text, port), "" when unknown.
FlowNamer = Callable[[str, int], str]


@functools.lru_cache(maxsize=65536)
def addr_text(raw: bytes) -> str:
    """Text of a 16-byte address (IPv4 mapped into IPv6 shown as IPv4); cached: flows are named every window."""
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)


def raw_addr(addr: str) -> bytes:
    """The 16-byte form of an address text (IPv4 mapped into IPv6), as the kernel keys flows."""
    ip = ipaddress.ip_address(addr)
    return (ipaddress.IPv6Address("::ffff:" + addr) if ip.version == 4 else ip).packed


class FlowTable:
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


class FlowVolumes:
    """The two generations of the kernel's flow map: ``flip`` starts counting into the other one, ``collect`` reads
    and empties the one ``flip`` retired (so nothing races the reader)."""

    def __init__(self, prog: Any, node: str, name_of: FlowNamer | None = None) -> None:
        self.prog = prog
        self.node = node
        self.name_of = name_of
        self._gen = 0
        self._tables = [FlowTable(prog[b"flows0"]), FlowTable(prog[b"flows1"])]

    def flip(self) -> None:
        """Start counting into the other generation; the one left is read by ``collect`` a little later."""
        self._gen ^= 1
        table = self.prog[b"generation"]
        table[table.Key(0)] = table.Leaf(self._gen)

    def collect(self, window_start_us: int, window_end_us: int) -> list[FlowVolume]:
        """Read and empty the generation that ``flip`` retired, as ``FlowVolume`` records of this window."""
        idle = self._tables[self._gen ^ 1]
        out: list[FlowVolume] = []
        unpack = bpf.FLOW_KEY.unpack_from
        name_of = self.name_of
        for key, nbytes, packets in idle.take_all():
            saddr, daddr, sport, dport, proto, _gen, _ifindex = unpack(key)
            src, dst = addr_text(saddr), addr_text(daddr)
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
