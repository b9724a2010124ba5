"""Writes ``demo_tenants.pcap``: a small multi-tenant SaaS conversation with known ground truth.

Three keep-alive TCP connections from ``web`` (10.0.0.10) to ``orders`` (10.0.0.20:8080), full handshakes, correct
sequence numbers and FINs; each request carries ``X-Tenant-ID`` (or none), some carry ``X-Feature``. The expected
per-tenant request counts are written beside it in ``demo_tenants.truth.json``. Run it again to regenerate; the output
is deterministic (fixed seed and clock).
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

HERE = Path(__file__).parent
CLIENT, SERVER, SERVER_PORT = "10.0.0.10", "10.0.0.20", 8080
PLAN = {"acme": 120, "globex": 45, "initech": 7, "": 3}
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = _ip(src) + _ip(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, _ip(src), _ip(dst))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + tcp


def build() -> tuple[list[tuple[int, bytes]], dict]:
    rng = random.Random(7)
    work = [t for t, n in PLAN.items() for _ in range(n)]
    rng.shuffle(work)
    conns = [{"port": 40000 + i, "cseq": 1000 * (i + 1), "sseq": 900_000 * (i + 1)} for i in range(3)]
    frames: list[tuple[int, bytes]] = []
    now = START_US
    for c in conns:
        frames.append((now, frame(CLIENT, c["port"], SERVER, SERVER_PORT, c["cseq"], 0, 0x02)))
        frames.append((now + 50, frame(SERVER, SERVER_PORT, CLIENT, c["port"], c["sseq"], c["cseq"] + 1, 0x12)))
        c["cseq"] += 1
        c["sseq"] += 1
        frames.append((now + 80, frame(CLIENT, c["port"], SERVER, SERVER_PORT, c["cseq"], c["sseq"], 0x10)))
        now += 200
    for i, tenant in enumerate(work):
        c = conns[i % 3]
        headers = [
            f"GET /v1/orders/{rng.randrange(10**6)} HTTP/1.1",
            "Host: orders.internal:8080",
            "User-Agent: web/1.4",
            "Accept: application/json",
        ]
        if tenant:
            headers.append(f"X-Tenant-ID: {tenant}")
        if i % 4 == 0:
            headers.append("X-Feature: checkout")
        request = ("\r\n".join(headers) + "\r\n\r\n").encode()
        body = json.dumps({"order": i, "status": "shipped"}).encode()
        status = "500 Internal Server Error" if i % 50 == 49 else "200 OK"
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        frames.append((now, frame(CLIENT, c["port"], SERVER, SERVER_PORT, c["cseq"], c["sseq"], 0x18, request)))
        c["cseq"] += len(request)
        now += 1500 + rng.randrange(3000)
        frames.append((now, frame(SERVER, SERVER_PORT, CLIENT, c["port"], c["sseq"], c["cseq"], 0x18, response)))
        c["sseq"] += len(response)
        now += 40_000 + rng.randrange(20_000)
    for c in conns:
        frames.append((now, frame(CLIENT, c["port"], SERVER, SERVER_PORT, c["cseq"], c["sseq"], 0x11)))
        frames.append((now + 60, frame(SERVER, SERVER_PORT, CLIENT, c["port"], c["sseq"], c["cseq"] + 1, 0x11)))
        frames.append((now + 90, frame(CLIENT, c["port"], SERVER, SERVER_PORT, c["cseq"] + 1, c["sseq"] + 1, 0x10)))
        now += 200
    truth = {
        "requests_by_tenant": PLAN,
        "errors": sum(1 for i in range(len(work)) if i % 50 == 49),
        "server": f"{SERVER}:{SERVER_PORT}",
        "client": CLIENT,
    }
    return frames, truth


def write_pcap(path: Path, frames: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, data in frames:
            fh.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(data), len(data)) + data)


if __name__ == "__main__":
    frames, truth = build()
    write_pcap(HERE / "demo_tenants.pcap", frames)
    (HERE / "demo_tenants.truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(frames)} frames")
