"""AI API usage: every file under ``shared/data/ai`` parses with the token counts written in it, and every recorded
cassette interaction, replayed as HTTP/1.1 on the wire, goes through both engine builds to the same usage."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import urlsplit

import pytest
import yaml

from costmesh.sensor.core import ai

from .conftest import SHARED_DATA
from .test_native_parsers import BUILDS, conversation, pcap_bytes, run_capture

AI = SHARED_DATA / "ai"

#: (tokens_in, tokens_out, tokens_cached, tokens_reasoning, model) read from the files (``tokens_in`` excludes cache
#: reads and includes cache writes, see ``costmesh.sensor.core.ai``).
EXPECTED = {
    "openai/chat_gpt-4o-mini.json": (8, 9, 0, 0, "gpt-4o-mini-2024-07-18"),
    "openai/chat_o3-mini_reasoning.json": (7, 87, 0, 64, "o3-mini-2025-01-31"),
    "openai/chat_prompt_cache_1.json": (4020, 4, 0, 0, "gpt-5.6-sol"),
    "openai/chat_prompt_cache_2.json": (8, 4, 4012, 0, "gpt-5.6-sol"),
    "openai/chat_stream_include_usage_1.sse": (53, 15, 0, 0, "gpt-4o-mini-2024-07-18"),
    "openai/chat_stream_include_usage_2.sse": (78, 9, 0, 0, "gpt-4o-mini-2024-07-18"),
    "openai/responses_gpt-4o.json": (14, 8, 0, 0, "gpt-4o-2024-08-06"),
    "openai/responses_stream_1.sse": (255, 16, 0, 0, "gpt-4o-2024-08-06"),
    "openai/responses_stream_2.sse": (278, 9, 0, 0, "gpt-4o-2024-08-06"),
    "azure-openai/responses_gpt-5.4.json": (18, 5, 0, 0, "gpt-5.4"),
    "azure-openai/chat_completions_docs-example_2024-10-21.json": (33, 557, 0, 0, ""),
    "anthropic/messages_claude-3-opus.json": (20, 10, 0, 0, "claude-3-opus-20240229"),
    "anthropic/messages_prompt_cache_1.json": (3, 406, 1111, 0, "claude-sonnet-4-5-20250929"),
    "anthropic/messages_prompt_cache_2.json": (421, 33, 1111, 0, "claude-sonnet-4-5-20250929"),
    "anthropic/messages_stream_claude-sonnet-4-5.sse": (20, 5, 0, 0, "claude-sonnet-4-5-20250929"),
    "bedrock/converse_nova-micro.json": (7, 30, 0, 0, ""),
    "bedrock/converse_claude-sonnet-4-5.json": (13, 12, 0, 0, ""),
    "bedrock/converse-stream_nova-micro.eventstream": (13, 82, 0, 0, ""),
    "bedrock/converse-stream_nova-micro.decoded-events.jsonl": (13, 82, 0, 0, ""),
    "bedrock/invoke_anthropic_prompt_cache_1.json": (3, 1944, 9511, 0, "claude-haiku-4-5-20251001"),
    "bedrock/invoke_anthropic_prompt_cache_2.json": (1959, 44, 9511, 0, "claude-haiku-4-5-20251001"),
    "vertex/generate_content_gemini-2.0-flash.json": (13, 8, 0, 0, "gemini-2.0-flash"),
    "vertex/stream_generate_content.sse": (5, 101, 0, 100, "gemini-3-flash-preview"),
    "gemini-api/stream_generate_content.sse": (13, 8, 0, 0, "gemini-2.0-flash-exp"),
}
BODY_FILES = sorted(p for p in AI.rglob("*") if p.is_file() and "cassettes" not in p.parts)
CASSETTES = sorted(AI.rglob("cassettes/*.yaml"))


def test_every_extracted_file_is_listed():
    assert {str(p.relative_to(AI)) for p in BODY_FILES} == set(EXPECTED)


@pytest.mark.parametrize("path", BODY_FILES, ids=lambda p: str(p.relative_to(AI)))
def test_extracted_body_usage(path):
    raw = path.read_bytes()
    ct = b"application/json"
    if path.suffix == ".sse":
        ct = b"text/event-stream"
    elif path.suffix == ".eventstream":
        ct = b"application/vnd.amazon.eventstream"
    elif path.suffix == ".jsonl":
        ct = b"text/event-stream"
        raw = b"".join(
            b"data: " + json.dumps(json.loads(line)["payload"]).encode() + b"\n\n" for line in raw.splitlines()
        )
    elif path.name.startswith("chat_completions_docs-example"):
        raw = json.dumps(json.loads(raw)["responses"]["200"]["body"]).encode()
    u = ai.response_usage(raw, ct)
    assert (u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning, u.model) == EXPECTED[
        str(path.relative_to(AI))
    ]


def _interactions(path):
    for it in yaml.safe_load(path.read_text())["interactions"]:
        yield it["request"], it["response"]


def _wire(request, response) -> tuple[bytes, bytes, str]:
    url = urlsplit(request["uri"])
    target = url.path + ("?" + url.query if url.query else "")
    if "parsed_body" in request:
        req_body = json.dumps(request["parsed_body"]).encode()
    else:
        body = request.get("body") or b""
        req_body = body if isinstance(body, bytes) else str(body).encode()
    req = (
        f"{request['method']} {target} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(req_body)}\r\n\r\n"
    ).encode() + req_body
    ctype = response["headers"].get("content-type", response["headers"].get("Content-Type", ["application/json"]))[0]
    if "parsed_body" in response:
        resp_body = json.dumps(response["parsed_body"]).encode()
    else:
        s = response["body"]["string"]
        if isinstance(s, bytes):
            resp_body = s
        elif "eventstream" in ctype:
            resp_body = base64.b64decode(s)
        else:
            resp_body = s.encode()
    resp = (
        f"HTTP/1.1 {response['status']['code']} OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    for i in range(0, len(resp_body), 1000):
        part = resp_body[i : i + 1000]
        resp += b"%x\r\n" % len(part) + part + b"\r\n"
    resp += b"0\r\n\r\n"
    return req, resp, ctype


PROVIDER = {
    "openai": "openai",
    "azure-openai": "azure-openai",
    "anthropic": "anthropic",
    "bedrock": "bedrock",
    "vertex": "vertex",
    "gemini-api": "gemini",
}


@pytest.mark.parametrize("path", CASSETTES, ids=lambda p: p.name)
def test_cassette_replayed_on_the_wire_through_both_builds(path):
    provider = PROVIDER[path.parent.parent.name]
    for request, response in _interactions(path):
        req, resp, ctype = _wire(request, response)
        data = pcap_bytes(conversation([(req, resp)], sport=40100, dport=80, split=1400))
        results = [run_capture(BUILDS[b], io.BytesIO(data)) for b in sorted(BUILDS)]
        assert results[0] == results[1]
        calls, stats, error = results[0]
        assert error is None and stats["errors"] == {}
        (c,) = calls
        expected = ai.response_usage(_body_of(response, ctype), ctype.encode(), b"", b"", b"")
        assert c["provider"] == provider
        assert (c.get("tokens_in", 0), c.get("tokens_out", 0), c.get("tokens_cached", 0)) == (
            expected.tokens_in,
            expected.tokens_out,
            expected.tokens_cached,
        )
        assert expected.tokens_in + expected.tokens_out > 0
        assert c.get("model")
        assert stats["counters"]["ai_calls"] == 1


def _body_of(response, ctype: str) -> bytes:
    if "parsed_body" in response:
        return json.dumps(response["parsed_body"]).encode()
    s = response["body"]["string"]
    if isinstance(s, bytes):
        return s
    return base64.b64decode(s) if "eventstream" in ctype else s.encode()
