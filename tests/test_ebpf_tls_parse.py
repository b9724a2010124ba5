"""The interim TLS-plaintext parser (``live_tls``) on synthetic plaintext, without the kernel: streams split across
calls and chunks, chunked and SSE bodies, the usage shapes it knows, cut calls, and forgetting idle connections.
(The live uprobe path is tested in test_ebpf_live.py.)"""

from __future__ import annotations

import json

from costmesh.common.config import Config
from costmesh.sensor.live import TlsChunk
from costmesh.sensor.live_tls import IDLE_US, TlsHttpSink, ai_usage


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


def test_usage_shapes():
    openai = {
        "model": "gpt-4o",
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
    u = ai_usage(json.dumps(openai).encode(), "application/json")
    assert (u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning, u.model) == (10, 4, 2, 1, "gpt-4o")
    anthropic = {"model": "claude-x", "usage": {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 3}}
    u = ai_usage(json.dumps(anthropic).encode())
    assert (u.tokens_in, u.tokens_out, u.tokens_cached, u.model) == (20, 5, 3, "claude-x")
    sse = (
        b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    u = ai_usage(sse, "text/event-stream")
    assert (u.tokens_in, u.tokens_out, u.model) == (8, 2, "gpt-4o")
    anthropic_sse = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x",'
        b'"usage":{"input_tokens":30,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":17}}\n\n'
    )
    u = ai_usage(anthropic_sse, "text/event-stream")
    assert (u.tokens_in, u.tokens_out, u.model) == (30, 17, "claude-x")
    assert ai_usage(b'{"ok": true}', "application/json") is None
    assert ai_usage(b"not json", "application/json") is None


def test_client_stream_split_across_calls_with_chunked_response():
    sink = TlsHttpSink(Config(), "n")
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
    sink.feed_tls([chunk(1_000_000, "write", request[:20]), chunk(1_000_100, "write", request[20:])])
    sink.feed_tls([chunk(1_002_000, "read", response[:7]), chunk(1_002_500, "read", response[7:])])
    (rec,) = sink.drain()
    assert (rec.tenant, rec.tenant_method, rec.dst, rec.operation) == (
        "acme",
        "header",
        "api.openai.com",
        "POST /v1/chat/completions",
    )
    assert (rec.requests, rec.tokens_in, rec.tokens_out, rec.provider, rec.model) == (1, 3, 9, "openai", "m")
    assert rec.bytes_out == len(request) and rec.bytes_in == len(response) and rec.busy_us == 2000
    assert rec.src_workload == "agent[7]"


def test_server_side_and_a_cut_call():
    sink = TlsHttpSink(Config(), "n", max_chunks=2)
    request = b"GET /health HTTP/1.1\r\nHost: svc\r\n\r\n"
    sink.feed_tls([chunk(5, "read", request), chunk(6, "write", b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")])
    (rec,) = sink.drain()
    assert (rec.src_workload, rec.dst, rec.errors) == ("tls-client", "agent[7]", 1)
    # A call longer than max_chunks × 4096 bytes leaves a gap: the stream starts over instead of misparsing.
    big = b"POST /x HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" + b"a" * 4000
    sink.feed_tls(
        [
            chunk(7, "write", big[:4096], ssl=1, length=20044),
            chunk(8, "write", b"b" * 4096, ssl=1, offset=4096, length=20044),
        ]
    )
    assert sink.conns[(7, 1)].out == b""
    assert sink.drain() == []


def test_idle_connections_are_forgotten():
    sink = TlsHttpSink(Config(), "n")
    sink.feed_tls([chunk(1, "write", b"GET / HTTP/1.1\r\n", ssl=1)])
    sink.feed_tls([chunk(IDLE_US + 10, "write", b"GET / HTTP/1.1\r\n", ssl=2)])
    sink.drain()
    assert list(sink.conns) == [(7, 2)]
