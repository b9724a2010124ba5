"""The kernel program's decisions, checked on ``lo`` with real traffic: what reaches user space and how much of it
(snap length, whole payload for AI flows by port or by Host/SNI), that empty segments stay in the kernel, that a
full ring drops and counts without slowing anyone while the flow counters still count every byte, and that the
counters are exported as Prometheus metrics. Also the program text itself: header inlined, placeholders replaced."""

from __future__ import annotations

import asyncio
import ctypes
import ssl

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from costmesh.common.config import Config
from costmesh.common.embedded import free_port
from costmesh.common.metrics import REGISTRY
from costmesh.sensor import bpf
from costmesh.sensor.live.ai_marker import client_hello_sni, http_host
from costmesh.sensor.live.capture import LiveCapture

from .ebpf_harness import FrameRecorder, LiveHarness, RawCount, open_or_skip, per_direction, settled_flows, text_server


def _segments(frames, port: int):
    """(frame, ip total length, tcp payload offset) of frames to or from ``port``."""
    out = []
    for _ts, f in frames:
        if f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        tcp = 14 + (f[14] & 15) * 4
        if port not in (int.from_bytes(f[tcp : tcp + 2], "big"), int.from_bytes(f[tcp + 2 : tcp + 4], "big")):
            continue
        out.append((f, int.from_bytes(f[16:18], "big"), tcp + (f[tcp + 12] >> 4) * 4))
    return out


def test_program_text_inlines_the_header_and_replaces_placeholders():
    text = bpf.program_text("sensor", {"MAX_FLOWS": 1024, "SNAPLEN": 77, "LOOPBACK_IFINDEX": 1})
    assert '#include "records.h"' not in text and "struct flow_key {" in text
    assert "u32 cut = payload_off + 77;" in text
    assert "MAX_FLOWS" not in text and "SNAPLEN" not in text and "LOOPBACK_IFINDEX" not in text
    with pytest.raises(KeyError, match="SNAP_LEN"):
        bpf.program_text("sensor", {"SNAP_LEN": 1})
    tls = bpf.program_text("tls", {"TLS_MAX_CHUNKS": 4, "TLS_RING_PAGES": 64, "FILTER_PID": 0, "TLS_WAKEUP_EVERY": 64})
    assert "TLS_MAX_CHUNKS" not in tls and "#define TLS_CHUNK 4096" in tls


def test_record_layouts_match_the_header():
    cap = LiveCapture(Config(), "n", FrameRecorder(), FrameRecorder())
    open_or_skip(cap)
    try:
        assert ctypes.sizeof(cap.bpf[b"flows0"].Key) == bpf.FLOW_KEY.size
        assert ctypes.sizeof(cap.tls_bpf[b"scratch"].Leaf._type_) == bpf.TLS_EVENT_HEAD.size + 4096
        assert cap.reads_bpf is not None, cap.reads_error
    finally:
        cap.close()


def test_sni_and_host_readers():
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="api.openai.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert client_hello_sni(hello) == "api.openai.com"
    assert client_hello_sni(hello[:60]) == ""  # cut short: no name, no exception
    assert http_host(b"POST /v1/x HTTP/1.1\r\nhost: ai.test:8443\r\n\r\n") == "ai.test"
    assert http_host(b"HTTP/1.1 200 OK\r\nHost: x\r\n\r\n") == ""


async def _post_twice(port: int, host: str | None, body: bytes) -> None:
    headers = {"Host": host} if host else {}
    async with aiohttp.ClientSession() as client:
        for i in range(2):
            if i:
                await asyncio.sleep(0.3)  # the sensor reads the first request and marks the flow meanwhile
            async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers) as r:
                assert r.status == 200
                await r.read()


async def test_snaplen_cuts_and_ai_flows_get_whole_payloads():
    plain, ai_port, ai_host = free_port(), free_port(), free_port()
    config = Config()
    config.sensor.snaplen = 64
    config.sensor.ai_ports = [ai_port]
    config.sensor.ai_hosts = [r"^ai\.test$"]
    harness = LiveHarness(config)
    recorder = FrameRecorder()
    harness.capture.frames = recorder
    await harness.start()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    runners = []
    for port in (plain, ai_port, ai_host):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    body = b"x" * 3000
    try:
        await _post_twice(plain, None, body)
        await _post_twice(ai_port, None, body)
        await _post_twice(ai_host, "ai.test", body)
    finally:
        for runner in runners:
            await runner.cleanup()
    await harness.stop()

    segs = _segments(recorder.frames, plain)
    assert segs and all(len(f) == min(14 + ip_len, off + 64) for f, ip_len, off in segs)
    assert any(14 + ip_len > off + 64 for _f, ip_len, off in segs)  # some were really cut
    assert all(14 + ip_len > off for _f, ip_len, off in segs)  # no empty segment left the kernel
    segs = _segments(recorder.frames, ai_port)
    assert segs and all(len(f) == 14 + ip_len for f, ip_len, _off in segs)
    segs = _segments(recorder.frames, ai_host)
    requests = [(f, ip_len) for f, ip_len, off in segs if f[off:].startswith(b"POST ")]
    assert len(requests) == 2
    assert len(requests[0][0]) < 14 + requests[0][1]  # seen cut, and marked by its Host header ...
    assert len(requests[1][0]) == 14 + requests[1][1]  # ... so the next request on the connection is whole


async def test_full_ring_drops_counts_and_never_blocks_while_flows_count_every_byte():
    port = free_port()
    config = Config()
    config.sensor.ring_block_kib = 4
    config.sensor.ring_blocks = 2
    cap = LiveCapture(config, "node-test", FrameRecorder())
    open_or_skip(cap)
    count = RawCount({port}).start()
    try:
        async with text_server("127.0.0.1", port, "y" * 700), aiohttp.ClientSession() as client:
            for _ in range(200):  # nobody reads the ring meanwhile: it fills after a dozen frames
                async with client.get(f"http://127.0.0.1:{port}/") as r:
                    assert r.status == 200
                    await r.read()
        await asyncio.sleep(0.5)
        truth = await count.stop()
        flows = await settled_flows(cap)
        counters = cap.counters()
    finally:
        cap.close()
    assert counters.ring_drops > 0
    assert counters.ring_packets == counters.passed_packets >= 400  # every passed packet: queued or dropped
    kernel = per_direction(flows, {port})
    assert kernel == truth  # the bytes the ring dropped were counted all the same
    text = generate_latest(REGISTRY).decode()
    assert 'costmesh_sensor_ring_packets_total{interface="lo",outcome="dropped"}' in text
    dropped = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('costmesh_sensor_ring_packets_total{interface="lo",outcome="dropped"}')
    )
    assert dropped >= counters.ring_drops


async def test_ipv6_flows_are_counted_exactly():
    port = _free_port6()
    cap = LiveCapture(Config(), "node-test", FrameRecorder())
    open_or_skip(cap)
    count = RawCount({port}).start()
    try:
        async with text_server("::1", port, "v6" * 100), aiohttp.ClientSession() as client:
            for _ in range(5):
                async with client.get(f"http://[::1]:{port}/") as r:
                    assert r.status == 200
                    await r.read()
        await asyncio.sleep(0.5)
        truth = await count.stop()
        flows = await settled_flows(cap)
    finally:
        cap.close()
    kernel = per_direction(flows, {port})
    assert truth and {k[0] for k in truth} == {"::1"}
    assert kernel == truth


def _free_port6() -> int:
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return sock.getsockname()[1]


async def test_a_full_flow_table_still_counts_every_byte():
    """With room for 4 flow directions, 8 connections (16 directions) overflow the table: the bytes that find no
    slot are counted in the overflow counter, so flows + overflow cover everything the wire carried. (lo is shared
    with other work, whose bytes may land in the overflow too: hence >=, and the flows alone must fall short.)"""
    port = free_port()
    config = Config()
    config.sensor.max_flows = 4
    cap = LiveCapture(config, "node-test", FrameRecorder())
    open_or_skip(cap)
    count = RawCount({port}).start()
    try:
        async with text_server("127.0.0.1", port, "z" * 300):
            for _ in range(8):  # a new connection each time
                async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}/") as r:
                    await r.read()
        await asyncio.sleep(0.5)
        truth = await count.stop()
        flows = await settled_flows(cap)
        counters = cap.counters()
    finally:
        cap.close()
    wire = sum(b for b, _p in truth.values())
    counted = sum(f.bytes for f in flows if port in (f.src_port, f.dst_port))
    assert len(flows) <= 4
    assert counters.flow_table_full_packets > 0
    assert counted < wire <= counted + counters.flow_table_full_bytes


def test_without_any_probable_openssl_packets_are_still_captured():
    config = Config()
    config.sensor.tls_libraries = ["/nonexistent/libssl.so.3"]
    config.sensor.tls_discover = False
    cap = LiveCapture(config, "n", FrameRecorder(), FrameRecorder())
    open_or_skip(cap)
    try:
        assert cap.tls_bpf is None and "no OpenSSL function could be probed" in cap.tls_error
        assert cap.rings and cap.bpf is not None
    finally:
        cap.close()


async def test_payload_signatures_decide_what_passes_on_unwatched_ports():
    """On ports no list names, a segment passes only by its first bytes: HTTP, a TLS ClientHello, a PostgreSQL
    startup or message, DNS over UDP; anything else (SSH banner, junk, other UDP) stays in the kernel."""
    import socket
    import struct as st

    ctx = ssl.create_default_context()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    payloads = {
        "http": b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "http-response": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "tls-hello": out.read(),
        "pg-startup": st.pack("!II", 8 + 9, 196608) + b"user\0me\0\0",
        "pg-ssl": st.pack("!II", 8, 80877103),
        "pg-query": b"Q" + st.pack("!I", 4 + 9) + b"SELECT 1\0",
        "ssh": b"SSH-2.0-OpenSSH_9.2\r\n",
        "junk": bytes(range(1, 40)),
    }
    harness = LiveHarness(Config())
    recorder = FrameRecorder()
    harness.capture.frames = recorder
    await harness.start()
    received: list[bytes] = []

    async def sink(reader, writer):
        received.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for data in payloads.values():
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    udp_other = _free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d:
        d.bind(("127.0.0.1", 0))
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"
        d.sendto(query, ("127.0.0.1", 53))  # DNS: passes whatever answers (or not) on port 53
        d.sendto(query, ("127.0.0.1", udp_other))
        dport = d.getsockname()[1]
    await asyncio.sleep(0.3)
    server.close()
    await server.wait_closed()
    await harness.stop()
    assert len(received) == len(payloads)

    seen = set()
    for _ts, f in recorder.frames:
        if f[12:14] != b"\x08\x00":
            continue
        l4 = 14 + (f[14] & 15) * 4
        sport, dst = int.from_bytes(f[l4 : l4 + 2], "big"), int.from_bytes(f[l4 + 2 : l4 + 4], "big")
        if f[23] == 6 and dst == port:
            payload = f[l4 + (f[l4 + 12] >> 4) * 4 :]
            seen |= {name for name, data in payloads.items() if payload and data.startswith(payload[:8])}
        elif f[23] == 17 and sport == dport:
            seen.add("udp-53" if dst == 53 else f"udp-{dst}")
    assert seen == {"http", "http-response", "tls-hello", "pg-startup", "pg-ssl", "pg-query", "udp-53"}


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
