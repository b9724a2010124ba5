"""TLS plaintext through the sensor's own engine (``live.tls.TlsPlaintextSink``), without the kernel: every recorded
AI conversation gives the same call over TLS as in plaintext on the wire; streams split across calls and chunks;
the server side; a call cut by the chunk limit; connections of one process merged; idle connections forgotten.
(The live uprobe path is tested in test_ebpf_live.py.)"""

from __future__ import annotations

import io
import json

import pytest

from costmesh.common.config import Config, SensorConfig
from costmesh.sensor.live import tls as live_tls
from costmesh.sensor.live.sinks import TlsChunk
from costmesh.sensor.live.tls import IDLE_US, TLS_CHUNK, TlsPlaintextSink

from .conftest import metric
from .test_native_parsers import BUILDS, conversation, pcap_bytes, run_capture
from .test_sensor_ai import CASSETTES, _interactions, _wire

T0 = 1_767_225_600_000_000


def chunk(ts, direction, data, *, pid=7, ssl=0xABC, offset=0, length=None):
    return TlsChunk(
        ts_us=ts,
        pid=pid,
        tid=pid,
        ssl=ssl,
        cgroup_id=1,
        comm="agent",
        direction=direction,
        offset=offset,
        length=len(data) + offset if length is None else length,
        data=data,
    )


def call(ts: int, direction: str, data: bytes, **kw) -> list[TlsChunk]:
    """One SSL call as the probe reports it: chunks of TLS_CHUNK bytes, each with its offset and the call's length."""
    return [
        chunk(ts, direction, data[i : i + TLS_CHUNK], offset=i, length=len(data), **kw)
        for i in range(0, max(1, len(data)), TLS_CHUNK)
    ]


FIELDS = ("tenant", "operation", "provider", "model", "tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning")


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: p.name)
def test_every_recorded_ai_conversation_gives_the_same_call_over_tls_as_in_plaintext(path):
    for request, response in _interactions(path):
        req, resp, _ctype = _wire(request, response)
        plain, _stats, error = run_capture(BUILDS["cython"], io.BytesIO(pcap_bytes(conversation([(req, resp)]))))
        assert error is None
        sink = TlsPlaintextSink(Config(), "n")
        sink.feed_tls(call(T0, "write", req) + call(T0 + 500, "read", resp))
        (over_tls,) = sink.drain()
        (on_wire,) = plain
        assert {f: getattr(over_tls, f) for f in FIELDS} == {
            f: on_wire.get(f, "" if f[0] != "t" else 0) for f in FIELDS
        }
        assert over_tls.tokens_in + over_tls.tokens_out > 0
        assert (over_tls.src_workload, over_tls.dst) == ("agent[7]", on_wire["dst"])
        assert sink.sensor.stats()["errors"] == {}


def test_client_stream_split_across_calls_with_chunked_response():
    sink = TlsPlaintextSink(Config(), "n")
    body = json.dumps({"model": "m", "user": "u1"}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nX-Tenant-ID: acme\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 9}}).encode()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{10:x}\r\n".encode()
        + answer[:10]
        + b"\r\n"
        + f"{len(answer) - 10:x}\r\n".encode()
        + answer[10:]
        + b"\r\n0\r\n\r\n"
    )
    sink.feed_tls(call(T0, "write", request[:20]) + call(T0 + 100, "write", request[20:]))
    sink.feed_tls(call(T0 + 2000, "read", response[:7]) + call(T0 + 2500, "read", response[7:]))
    (rec,) = sink.drain()
    assert (rec.tenant, rec.tenant_method, rec.dst, rec.operation) == (
        "acme",
        "header",
        "api.openai.com",
        "POST /v1/chat/completions",
    )
    assert (rec.requests, rec.tokens_in, rec.tokens_out, rec.provider, rec.model) == (1, 3, 9, "openai", "m")
    assert rec.src_workload == "agent[7]" and rec.protocol == "http"


def test_server_side_is_named_by_the_process_and_its_caller_is_unknown():
    """Recorded only with ``tls_server_side``: by default a call the process served is left out (its caller, when on
    this host, has it from its own probe; recording both would count it twice)."""
    request = b"GET /health HTTP/1.1\r\nHost: svc\r\nX-Tenant-ID: globex\r\n\r\n"
    answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
    for server_side in (True, False):
        config = Config(sensor=SensorConfig(tls_server_side=server_side))
        sink = TlsPlaintextSink(config, "n", name_of_pid=lambda pid, _cg, comm: f"pod-of-{comm}-{pid}")
        left_out = metric("costmesh_sensor_tls_served_calls_total")
        sink.feed_tls(call(T0, "read", request) + call(T0 + 10, "write", answer))
        records = sink.drain()
        if server_side:
            (rec,) = records
            assert (rec.src_workload, rec.dst, rec.errors, rec.tenant) == ("tls-client", "pod-of-agent-7", 1, "globex")
        else:
            assert records == [] and metric("costmesh_sensor_tls_served_calls_total") == left_out + 1


@pytest.mark.parametrize("filled", [True, False], ids=["gap filled", "gap too large"])
def test_a_call_cut_by_the_chunk_limit_is_a_gap_and_the_next_call_is_still_read(filled, monkeypatch):
    """The probe sends 2 × 4 KiB of a 20 kB upload. Filled with zeros, the upload is one call of its real size; too
    large to fill, it is one call of the bytes captured (its answer still pairs with it), and the next call starts a
    new made-up connection at its message head."""
    if not filled:
        monkeypatch.setattr(live_tls, "MAX_FILL", 1000)
    sink = TlsPlaintextSink(Config(), "n", max_chunks=2)
    big = b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 20000\r\n\r\n" + b"a" * 20000
    cut = [c for c in call(T0, "write", big) if c.offset < 2 * TLS_CHUNK]  # what the probe sends of it
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    after = b"GET /next HTTP/1.1\r\nHost: svc\r\nX-Tenant-ID: acme\r\n\r\n"
    sink.feed_tls(cut + call(T0 + 10, "read", ok) + call(T0 + 20, "write", after) + call(T0 + 30, "read", ok))
    calls = {r.operation: (r.tenant, r.requests, r.bytes_out) for r in sink.drain()}
    assert calls["GET /next"] == ("acme", 1, len(after))
    assert calls["POST /upload"] == ("", 1, len(big) if filled else 2 * TLS_CHUNK)
    assert sink.sensor.stats()["counters"]["flows"] == (1 if filled else 2)


def test_connections_of_one_process_to_one_host_make_one_record():
    sink = TlsPlaintextSink(Config(), "n")
    request = b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\nX-Tenant-ID: acme\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    for ssl in (1, 2, 3):
        sink.feed_tls(call(T0 + ssl, "write", request, ssl=ssl) + call(T0 + 10 + ssl, "read", response, ssl=ssl))
    (rec,) = sink.drain()
    assert (rec.src_workload, rec.dst, rec.requests) == ("agent[7]", "api.example", 3)


def test_idle_connections_are_forgotten_and_a_reused_ssl_pointer_is_a_new_connection():
    """SSL* pointers get reused: calls on a pointer seen again after its connection was forgotten are all counted
    (a new made-up connection; the engine let the old one go)."""
    sink = TlsPlaintextSink(Config(), "n")
    request = b"GET /a HTTP/1.1\r\nHost: svc\r\nX-Tenant-ID: acme\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for i in range(20):
        sink.feed_tls(call(T0 + i, "write", request, ssl=1) + call(T0 + i, "read", ok, ssl=1))
    assert sum(r.requests for r in sink.drain()) == 20
    later = T0 + IDLE_US + 100
    sink.feed_tls(call(later, "write", request, ssl=2))
    sink.drain()
    assert list(sink.conns) == [(7, 2)]
    for i in range(3):
        sink.feed_tls(call(later + i, "write", request, ssl=1) + call(later + i, "read", ok, ssl=1))
    assert sum(r.requests for r in sink.drain() if r.operation == "GET /a") == 3


def test_a_server_response_too_large_to_fill_restarts_at_once():
    """A server's 3 MB response is cut at the chunk limit and is too large to fill: the made-up connection ends at
    once (not at the next call), so the requests after it pair with their own responses."""
    config = Config(sensor=SensorConfig(tls_server_side=True))  # the probed process is the server here
    sink = TlsPlaintextSink(config, "n", name_of_pid=lambda pid, _cg, comm: "files")
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"x" * 3_000_000
    sink.feed_tls(call(T0, "read", b"GET /file HTTP/1.1\r\nHost: files\r\n\r\n"))
    sink.feed_tls([c for c in call(T0 + 1, "write", big) if c.offset < 16 * TLS_CHUNK])
    for i in range(3):
        request = f"GET /n{i} HTTP/1.1\r\nHost: files\r\n\r\n".encode()
        sink.feed_tls(call(T0 + 10 + i, "read", request) + call(T0 + 10 + i, "write", b"HTTP/1.1 204 No\r\n\r\n"))
    calls = {r.operation: r.requests for r in sink.drain()}
    assert {op: calls.get(op) for op in ("GET /n0", "GET /n1", "GET /n2")} == dict.fromkeys(
        ("GET /n0", "GET /n1", "GET /n2"), 1
    )


def test_a_call_whose_first_chunk_was_lost_does_not_displace_the_calls_after_it():
    sink = TlsPlaintextSink(Config(), "n")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    upload = b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 9000\r\n\r\n" + b"u" * 9000
    chunks = call(T0, "write", upload)
    sink.feed_tls(chunks[1:] + call(T0 + 1, "read", ok))  # the ring had no room for the first chunk
    for i in range(5):
        request = f"GET /after{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode()
        sink.feed_tls(call(T0 + 10 + i, "write", request) + call(T0 + 10 + i, "read", ok))
    calls = {r.operation: r.requests for r in sink.drain()}
    assert [calls.get(f"GET /after{i}") for i in range(5)] == [1] * 5


def test_what_the_engine_counts_is_exported_each_drain():
    """Parser counters go to costmesh_sensor_parsed_total{source="tls"}, malformed input to
    costmesh_input_errors_total by kind, each drain adding only what grew since the last."""
    requests = {"source": "tls", "counter": "http_requests"}
    chunk_errors = {"service": "sensor", "kind": "http_chunk"}
    before = metric("costmesh_sensor_parsed_total", **requests), metric("costmesh_input_errors_total", **chunk_errors)
    sink = TlsPlaintextSink(Config(), "n")
    request = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
    broken = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"  # not a chunk size
    sink.feed_tls(call(T0, "write", request) + call(T0 + 10, "read", broken))
    sink.drain()
    sink.drain()  # nothing new: nothing added
    after = metric("costmesh_sensor_parsed_total", **requests), metric("costmesh_input_errors_total", **chunk_errors)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
