"""Bad input never crashes or hangs the parsers (both builds) and is counted by kind: hypothesis-generated frames and
TCP streams, and the real captures with every 50th byte flipped. The long run is ``loadtests/fuzz_parsers.py``."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmesh.sensor.core import ai, names

from .data.make_demo_capture import frame
from .test_native_parsers import BUILDS, PCAPS, run_capture, sensor_for

PREFIXES = [
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 9\r\n\r\n",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
    b"Q\x00\x00\x00",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"",
]


def _feed_both(chunks: list[bytes], dport: int) -> None:
    results = []
    for b in sorted(BUILDS):
        s = sensor_for(BUILDS[b])
        seq = 1
        for i, chunk in enumerate(chunks):
            side = i % 3 == 2
            src, dst = ("10.0.0.20", "10.0.0.10") if side else ("10.0.0.10", "10.0.0.20")
            sp, dp = (dport, 40000) if side else (40000, dport)
            s.feed_frame(1_000_000 + i, 1, frame(src, sp, dst, dp, seq, 0, 0x18, chunk))
            seq += len(chunk)
        s.feed_frame(2_000_000, 1, b"\xff" * 7)
        calls = s.drain(final=True)
        results.append(([c.requests for c in calls], s.stats()))
    assert results[0] == results[1]
    assert results[0][1]["errors"].get("frame_truncated") == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(PREFIXES),
    chunks=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    dport=st.sampled_from([80, 5432, 443, 53, 9092]),
)
def test_random_streams_do_not_crash_and_builds_agree(prefix, chunks, dport):
    _feed_both([prefix + chunks[0], *chunks[1:]], dport)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), linktype=st.sampled_from([0, 1, 101, 113, 276, 108, 228, 229, 9999]))
def test_random_frames_do_not_crash(data, linktype):
    outs = []
    for b in sorted(BUILDS):
        s = sensor_for(BUILDS[b])
        s.feed_frame(5, linktype, data)
        outs.append((s.drain(final=True), s.stats()))
    assert outs[0] == outs[1]


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_cold_path_parsers_raise_only_value_error(data):
    for fn in (
        names.dns_message,
        names.client_hello,
        lambda d: ai.response_usage(d, b"application/vnd.amazon.eventstream"),
    ):
        with contextlib.suppress(ValueError):
            fn(data)
    with contextlib.suppress(ValueError):
        ai.response_usage(data, b"text/event-stream", b"gzip")


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    for i in range(49, len(b), 50):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("path", PCAPS, ids=lambda p: p.name)
def test_mangled_real_captures_do_not_crash(path):
    data = _flip(path.read_bytes())
    results = [run_capture(BUILDS[b], io.BytesIO(data)) for b in sorted(BUILDS)]
    assert results[0] == results[1]
