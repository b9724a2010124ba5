"""AI API usage: provider, model and token counts from one request/response pair, in every shape the providers use.

Reads: the request target and ``Host``, the request body (JSON) and the response body as it came off the wire after
HTTP de-chunking: plain JSON, ``text/event-stream`` (OpenAI chat/Responses streams, Anthropic, Gemini/Vertex
``alt=sse``),
Bedrock's binary ``application/vnd.amazon.eventstream`` (Converse/InvokeModel streams), gzip or deflate encoded.
Emits: an ``AiUsage`` tuple. This is the cold path of the sensor: it runs once per AI call (not per frame), in both
builds, and leans on msgspec's C JSON decoder; the compiled engine hands it bytes only for flows it has classified as
AI traffic.

Token fields (the contract ``ObservedCall.tokens_*``) are made comparable across providers so that a price list can
apply to them without double counting:

- ``tokens_in``: input tokens billed at the input rate, **excluding** cache reads (OpenAI ``prompt_tokens`` minus
  ``cached_tokens``; Anthropic/Bedrock ``input_tokens`` plus cache writes; Gemini ``promptTokenCount`` minus
  ``cachedContentTokenCount``).
- ``tokens_cached``: input tokens read from the provider's prompt cache.
- ``tokens_out``: output tokens including reasoning/thinking tokens (that is how all of them bill).
- ``tokens_reasoning``: the reasoning part of ``tokens_out``, for information.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

import msgspec

#: Largest decompressed body read for usage; a response beyond it is read up to here.
MAX_BODY = 8 << 20

_json = msgspec.json.Decoder()


class AiUsage(NamedTuple):
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    tokens_reasoning: int


class AiRequest(NamedTuple):
    model: str
    stream: bool
    body: Any


def provider_of(target: bytes, host: bytes) -> str:
    h = host.lower()
    if b"openai.azure.com" in h or b"/openai/deployments/" in target:
        return "azure-openai"
    if b"anthropic" in h or target.startswith(b"/v1/messages"):
        return "anthropic"
    if b"bedrock-runtime" in h or b"/converse" in target or (target.startswith(b"/model/") and b"/invoke" in target):
        return "bedrock"
    if b"aiplatform.googleapis" in h or (b"/projects/" in target and b"/publishers/google/" in target):
        return "vertex"
    if b"generativelanguage.googleapis" in h or b":generateContent" in target or b":streamGenerateContent" in target:
        return "gemini"
    return "openai"


def _model_from_path(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    for marker in (b"/model/", b"/models/", b"/deployments/"):
        i = path.find(marker)
        if i >= 0:
            rest = path[i + len(marker) :]
            name = rest.split(b"/", 1)[0].split(b":", 1)[0]
            return unquote_to_bytes(name).decode("utf-8", "replace")
    return ""


def decode_body(body: bytes, content_encoding: bytes) -> bytes:
    """Undo ``gzip``/``deflate`` content coding (bounded); raises ``ValueError`` on a broken stream."""
    enc = content_encoding.strip().lower()
    if enc in (b"gzip", b"x-gzip", b"deflate"):
        wbits = 47 if enc != b"deflate" else 15
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(body, MAX_BODY)
        except zlib.error as exc:
            if enc == b"deflate":
                try:
                    return zlib.decompressobj(-15).decompress(body, MAX_BODY)
                except zlib.error:
                    pass
            raise ValueError(f"bad {enc.decode()} body: {exc}") from exc
        return out
    return body


def parse_request(body: bytes, doc: Any = None) -> AiRequest:
    """Model and stream flag of an AI request body (or of its already decoded ``doc``); not JSON: empty values."""
    if doc is None and body:
        try:
            doc = _json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            doc = None
    if not isinstance(doc, dict):
        return AiRequest("", False, None)
    model = doc.get("model")
    return AiRequest(model if isinstance(model, str) else "", doc.get("stream") is True, doc)


def _objects(body: bytes, content_type: bytes) -> list[Any]:
    """Every JSON document in a response body: one for plain JSON, one per SSE ``data:`` or eventstream frame."""
    ct = content_type.lower()
    if b"vnd.amazon.eventstream" in ct or (len(body) >= 12 and body[:1] == b"\x00" and b"event" not in ct):
        return _eventstream_objects(body)
    stripped = body.lstrip()
    if b"event-stream" in ct or stripped.startswith((b"data:", b"event:", b"id:", b":")):
        out = []
        for line in body.splitlines():
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data and data != b"[DONE]":
                    try:
                        out.append(_json.decode(data))
                    except (msgspec.DecodeError, UnicodeDecodeError):
                        continue
        return out
    if not stripped:
        return []
    try:
        doc = _json.decode(stripped)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # A JSON array streamed by Gemini without alt=sse is one document too; anything else is not usage.
        raise ValueError("response body is not JSON") from None
    return doc if isinstance(doc, list) else [doc]


def _eventstream_objects(body: bytes) -> list[Any]:
    """Frames of ``application/vnd.amazon.eventstream``: prelude (total, headers length, CRC), headers, payload, CRC."""
    out = []
    pos = 0
    n = len(body)
    while pos + 16 <= n:
        total, hlen, prelude_crc = struct.unpack_from(">III", body, pos)
        if total < 16 or pos + total > n or hlen > total - 16:
            raise ValueError(f"eventstream frame at {pos}: bad lengths")
        if binascii.crc32(body[pos : pos + 8]) != prelude_crc:
            raise ValueError(f"eventstream frame at {pos}: prelude CRC mismatch")
        payload = body[pos + 12 + hlen : pos + total - 4]
        pos += total
        if not payload:
            continue
        try:
            doc = _json.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        # InvokeModelWithResponseStream wraps each provider chunk as {"bytes": base64(json)}.
        if isinstance(doc, dict) and isinstance(doc.get("bytes"), str):
            try:
                doc = _json.decode(base64.b64decode(doc["bytes"]))
            except (ValueError, msgspec.DecodeError):
                continue
        out.append(doc)
    return out


_USAGE_KEYS = ("usage", "usageMetadata", "amazon-bedrock-invocationMetrics")


def _collect(doc: Any, raw: dict[str, int], found: dict[str, str]) -> None:
    if not isinstance(doc, dict):
        return
    if "model" not in found:
        for key in ("model", "modelVersion", "modelId"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                found["model"] = value
                break
    for key in _USAGE_KEYS:
        usage = doc.get(key)
        if isinstance(usage, dict):
            _flatten(usage, "", raw)
    for nested in ("response", "message", "metadata"):
        inner = doc.get(nested)
        if isinstance(inner, dict):
            _collect(inner, raw, found)


def _flatten(obj: dict, prefix: str, raw: dict[str, int]) -> None:
    for key, value in obj.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            raw[prefix + key] = value
        elif isinstance(value, dict) and not prefix:
            _flatten(value, key + ".", raw)


def _tokens(raw: dict[str, int]) -> tuple[int, int, int, int]:
    g = raw.get
    if "prompt_tokens" in raw or "completion_tokens" in raw:  # OpenAI / Azure chat completions
        cached = g("prompt_tokens_details.cached_tokens", 0)
        return (
            max(0, g("prompt_tokens", 0) - cached),
            g("completion_tokens", 0),
            cached,
            g("completion_tokens_details.reasoning_tokens", 0),
        )
    if "input_tokens_details.cached_tokens" in raw or ("input_tokens" in raw and "total_tokens" in raw):
        cached = g("input_tokens_details.cached_tokens", 0)  # OpenAI / Azure Responses API
        return (
            max(0, g("input_tokens", 0) - cached),
            g("output_tokens", 0),
            cached,
            g("output_tokens_details.reasoning_tokens", 0),
        )
    if "input_tokens" in raw or "output_tokens" in raw:  # Anthropic (also through Bedrock InvokeModel)
        return (
            g("input_tokens", 0) + g("cache_creation_input_tokens", 0),
            g("output_tokens", 0),
            g("cache_read_input_tokens", 0),
            0,
        )
    if "inputTokens" in raw or "outputTokens" in raw:  # Bedrock Converse
        return (
            g("inputTokens", 0) + g("cacheWriteInputTokens", 0),
            g("outputTokens", 0),
            g("cacheReadInputTokens", 0),
            0,
        )
    if "inputTokenCount" in raw or "outputTokenCount" in raw:  # Bedrock invocation metrics
        return (
            g("inputTokenCount", 0) + g("cacheWriteInputTokenCount", 0),
            g("outputTokenCount", 0),
            g("cacheReadInputTokenCount", 0),
            0,
        )
    if "promptTokenCount" in raw or "candidatesTokenCount" in raw:  # Gemini / Vertex usageMetadata
        cached = g("cachedContentTokenCount", 0)
        thoughts = g("thoughtsTokenCount", 0)
        return (max(0, g("promptTokenCount", 0) - cached), g("candidatesTokenCount", 0) + thoughts, cached, thoughts)
    return (0, 0, 0, 0)


def response_usage(
    body: bytes,
    content_type: bytes = b"",
    content_encoding: bytes = b"",
    target: bytes = b"",
    host: bytes = b"",
    request_model: str = "",
    provider: str = "",
) -> AiUsage:
    """Usage of one AI call. Raises ``ValueError`` for a body that cannot be read (caller counts it by kind).
    ``provider``: already known (else found from target and host)."""
    body = decode_body(body, content_encoding)
    raw: dict[str, int] = {}
    found: dict[str, str] = {}
    for doc in _objects(body, content_type):
        _collect(doc, raw, found)
    tin, tout, tcached, treason = _tokens(raw)
    model = found.get("model") or request_model or _model_from_path(target)
    return AiUsage(provider or provider_of(target, host), model, tin, tout, tcached, treason)
