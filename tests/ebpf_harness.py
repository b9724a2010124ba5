"""Test harness for live capture: runs a ``LiveCapture`` on ``lo`` in the test's event loop and collects its
windows; a plain packet socket beside it gives an independent byte count. Skips (with the kernel's words) where BPF
is refused."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from costmesh.common.config import Config
from costmesh.sensor.bpf import BpfUnavailable
from costmesh.sensor.core import Sensor
from costmesh.sensor.live.capture import LiveCapture
from costmesh.sensor.live.sinks import FrameListSink, LiveWindow, SensorFrameSink
from costmesh.sensor.live.tls import TlsPlaintextSink


class FrameRecorder(FrameListSink):
    """A frame sink that keeps every frame, for tests about capture rather than parsing."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def feed_frames(self, frames) -> None:
        self.frames.extend(frames)


class LiveHarness:
    def __init__(self, config: Config, *, tls: bool = False) -> None:
        self.config = config
        self.frame_sink = SensorFrameSink(Sensor(config, "node-test"))
        self.tls_sink = TlsPlaintextSink(config, "node-test", keep_plaintext=1 << 20) if tls else None
        self.capture = LiveCapture(config, "node-test", self.frame_sink, self.tls_sink)
        self.windows: list[LiveWindow] = []
        self.stopping = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> LiveHarness:
        open_or_skip(self.capture)
        self.task = asyncio.create_task(self.capture.run(self._on_window, self.stopping), name="live-capture")
        return self

    async def _on_window(self, window: LiveWindow) -> None:
        self.windows.append(window)

    async def stop(self) -> list[LiveWindow]:
        await asyncio.sleep(0.2)  # let the last segments reach a ring block
        self.stopping.set()
        if self.task is not None:
            await self.task
        self.capture.close()
        return self.windows

    def records(self):
        return [r for w in self.windows for r in w.records]

    def flows(self):
        return [f for w in self.windows for f in w.flows]


class RawCount:
    """An independent count of bytes and packets per flow direction: a plain AF_PACKET socket on ``lo`` read one
    packet at a time in a thread (no eBPF, no ring), keeping only TCP packets of the given ports and, as on every
    loopback capture, only the incoming copy of each packet.

    (tcpdump was the first choice; on this machine it lost the last packets of a run when stopped, so the count
    is made here, in the plainest way.)"""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.counts: dict[tuple[str, int, str, int], list[int]] = {}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name="raw-count", daemon=True)

    def start(self) -> RawCount:
        self.thread.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(1 << 17)
            except TimeoutError:
                if self.stopping.is_set():
                    return
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            if frame[12:14] == b"\x08\x00" and frame[23] == 6:
                tcp, ip_len = 14 + (frame[14] & 15) * 4, int.from_bytes(frame[16:18], "big")
                src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
            elif frame[12:14] == b"\x86\xdd" and frame[20] == 6:
                tcp, ip_len = 54, 40 + int.from_bytes(frame[18:20], "big")
                src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
                dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
            else:
                continue
            sport, dport = int.from_bytes(frame[tcp : tcp + 2], "big"), int.from_bytes(frame[tcp + 2 : tcp + 4], "big")
            if sport not in self.ports and dport not in self.ports:
                continue
            acc = self.counts.setdefault((src, sport, dst, dport), [0, 0])
            acc[0] += ip_len
            acc[1] += 1

    async def stop(self) -> dict[tuple[str, int, str, int], list[int]]:
        await asyncio.sleep(0.2)
        self.stopping.set()  # the reader returns on its first idle timeout: everything queued is read before
        await asyncio.to_thread(self.thread.join, 10)
        self.sock.close()
        return self.counts


def requests_by_tenant(records, dst: str) -> Counter:
    out: Counter = Counter()
    for r in records:
        if r.dst == dst:
            out[r.tenant] += r.requests
    return out


def open_or_skip(capture: LiveCapture) -> None:
    """Load the programs, or skip the test with the kernel's own words where BPF is refused."""
    try:
        capture.open()
    except BpfUnavailable as exc:
        pytest.skip(f"live capture unavailable here: {exc}")


@contextlib.asynccontextmanager
async def text_server(host: str, port: int, text: str) -> AsyncIterator[None]:
    """An aiohttp server answering ``GET /`` with ``text``, stopped on exit."""

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def settled_flows(capture: LiveCapture) -> list:
    """Swap the counter maps and read the retired one: every byte counted so far, once."""
    capture.flip()
    await asyncio.sleep(0.05)
    return capture.collect_flows(0, 1)


def per_direction(flows, ports: set[int]) -> dict[tuple[str, int, str, int], list[int]]:
    """[bytes, packets] per flow direction touching one of ``ports``, shaped like ``RawCount.stop()``'s answer."""
    out: dict[tuple[str, int, str, int], list[int]] = {}
    for f in flows:
        if {f.src_port, f.dst_port} & ports:
            acc = out.setdefault((f.src_addr, f.src_port, f.dst_addr, f.dst_port), [0, 0])
            acc[0] += f.bytes
            acc[1] += f.packets
    return out
