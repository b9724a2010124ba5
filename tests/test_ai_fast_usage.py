"""The AI usage fast path (compiled ``_usage`` and its twin ``_usage_py``): wherever it answers, the answer equals the
full Python path's (``ai.response_usage`` as ``Slow.ai`` uses it), and it declines (None) whenever it cannot be sure.
Checked on every file under ``shared/data/ai``, on hand-written edge cases, on generated bodies (hypothesis), and
end to end: the compiled engine (which takes the fast path) and the pure-Python engine (which never does) agree."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmesh.common.config import Config, Rule
from costmesh.native import _usage_py
from costmesh.sensor.core import ai

from .conftest import SHARED_DATA
from .test_native_parsers import BUILDS, conversation, pcap_bytes, run_capture

try:
    from costmesh.native import _usage
except ImportError as exc:  # the compiled build is part of the product: its absence is a failure, not a skip
    raise ImportError("compiled costmesh.native._usage missing: run `make deps`") from exc

FAST = {"cython": _usage, "python": _usage_py}
AI = SHARED_DATA / "ai"


def full(body: bytes, ct: bytes = b"application/json", ce: bytes = b""):
    """What ``Slow.ai`` records from the response alone: (model bytes, tokens...) or "error"."""
    try:
        u = ai.response_usage(body, ct, ce, b"", b"", "", "p")
    except ValueError:
        return "error"
    return (u.model.encode("utf-8", "replace")[:256], u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning)


def fast(body: bytes, ct: bytes = b"application/json", ce: bytes = b""):
    """Both builds' fast answer; they must agree, and an answer must equal the full path's with a model."""
    answers = {name: mod.response_usage(body, ct, ce) for name, mod in FAST.items()}
    assert answers["cython"] == answers["python"], answers
    got = answers["cython"]
    if got is not None:
        assert got[0], "the fast path answers only with a model from the response"
        assert got == full(body, ct, ce)
    return got


def _bodies():
    """(name, body, content type) of every response body in the shared data, files and cassettes."""
    for p in sorted(AI.rglob("*")):
        if not p.is_file():
            continue
        if "cassettes" in p.parts:
            for i, it in enumerate(yaml.safe_load(p.read_text())["interactions"]):
                r = it["response"]
                ct = r["headers"].get("content-type", r["headers"].get("Content-Type", ["application/json"]))[0]
                if "parsed_body" in r:
                    body = json.dumps(r["parsed_body"]).encode()
                else:
                    s = r["body"]["string"]
                    body = s if isinstance(s, bytes) else s.encode()
                yield f"{p.relative_to(AI)}#{i}", body, ct.encode()
        else:
            ct = {".sse": b"text/event-stream", ".eventstream": b"application/vnd.amazon.eventstream"}.get(
                p.suffix, b"application/json"
            )
            yield str(p.relative_to(AI)), p.read_bytes(), ct


BODIES = list(_bodies())


@pytest.mark.parametrize(("name", "body", "ct"), BODIES, ids=[b[0] for b in BODIES])
def test_shared_bodies_fast_equals_full(name, body, ct):
    fast(body, ct)
    fast(body, b"application/json")  # even mislabelled, the scan declines what it cannot read exactly


def test_fast_path_answers_the_common_shapes():
    answered = {name for name, body, ct in BODIES if fast(body, ct) is not None}
    # plain JSON bodies of OpenAI chat/Responses and Anthropic messages with a model: the fast path takes them
    assert {
        "openai/chat_gpt-4o-mini.json",
        "openai/chat_o3-mini_reasoning.json",
        "openai/chat_prompt_cache_2.json",
        "openai/responses_gpt-4o.json",
        "anthropic/messages_claude-3-opus.json",
        "anthropic/messages_prompt_cache_1.json",
    } <= answered
    # streams and bodies without a model (Bedrock Converse) go the full way
    assert not any(n.endswith((".sse", ".eventstream")) or n.startswith("bedrock/converse") for n in answered)


OPENAI = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": 'hello\n"quoted" é ✓ 😀'}}],
    "usage": {
        "prompt_tokens": 1031,
        "completion_tokens": 90,
        "total_tokens": 1121,
        "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 64, "accepted_prediction_tokens": 0},
    },
}


def _j(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def test_accepted_shapes_equal_full():
    assert fast(_j(OPENAI)) == (b"gpt-4o-mini-2024-07-18", 31, 90, 1000, 64)
    assert fast(json.dumps(OPENAI, indent=2, ensure_ascii=False).encode())[1:] == (31, 90, 1000, 64)
    bmp = {**OPENAI, "choices": [{"message": {"content": "é ✓ \u0000"}}]}  # \u escapes outside the surrogates
    assert fast(json.dumps(bmp).encode()) == fast(_j(OPENAI))
    assert fast(json.dumps(OPENAI).encode()) is None  # the emoji is a surrogate pair: left to the full decoder
    anthropic = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 7,
                  "output_tokens": 5, "service_tier": "standard", "cache_creation": {"ephemeral_5m_input_tokens": 0}},
    }  # fmt: skip
    assert fast(_j(anthropic)) == (b"claude-sonnet-4-5", 13, 5, 7, 0)
    no_usage = {"model": "m", "choices": []}
    assert fast(_j(no_usage)) == (b"m", 0, 0, 0, 0)
    non_int = {"model": "m", "usage": {"prompt_tokens": None, "completion_tokens": True, "x": [1, {"a": 2.5e3}]}}
    assert fast(_j(non_int)) == full(_j(non_int))
    nested_empty = {**OPENAI, "metadata": {}, "response": None, "message": "text"}  # nothing for the Python path
    assert fast(_j(nested_empty)) == fast(_j(OPENAI))
    long_model = {"model": "é" * 200, "usage": {"input_tokens": 1, "total_tokens": 2}}
    got = fast(_j(long_model))
    assert got is not None and len(got[0]) == 256  # cut inside a character, as Slow.ai does


@pytest.mark.parametrize(
    ("body", "ct", "ce"),
    [
        (b'{"model": "gpt\\u00e9", "usage": {"prompt_tokens": 1}}', b"application/json", b""),  # \u escape
        (b'{"model": "g\\"x", "usage": {"prompt_tokens": 1}}', b"application/json", b""),  # escaped model
        (b'{"model": "m", "c": "\\ud800", "usage": {}}', b"application/json", b""),  # lone surrogate
        (b'{"model": "m", "c": "\\ude00", "usage": {}}', b"application/json", b""),  # lone low surrogate
        (b'{"model": "m", "c": "\\uDC00\\uD800", "usage": {}}', b"application/json", b""),
        (b'{"mod\\u0065l": "m", "usage": {}}', b"application/json", b""),  # escaped key
        (b'{"model": "m", "usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 2}}', b"", b""),
        (b'{"model": "m", "model": "n"}', b"", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 1, "prompt_tokens": 2}}', b"", b""),
        (
            b'{"model": "m", "usage": {"prompt_tokens_details": {"cached_tokens": 1}, "prompt_tokens_details": {}}}',
            b"",
            b"",
        ),
        (
            b'{"model": "m", "usage": {"prompt_tokens_details.cached_tokens": 1,'
            b' "prompt_tokens_details": {"cached_tokens": 2}}}',
            b"",
            b"",
        ),
        (b'{"model": "m", "usage": {"prompt_tokens": 1.0}}', b"", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": -1}}', b"", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 1234567890123456789012}}', b"", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 01}}', b"", b""),
        (b'{"model": "m", "modelVersion": "v", "usage": {}}', b"", b""),
        (b'{"model": "m", "usageMetadata": {"promptTokenCount": 1}}', b"", b""),
        (b'{"model": "m", "message": {"usage": {"input_tokens": 1}}}', b"", b""),
        (b'{"model": "m", "metadata": {}, "metadata": {"usage": {"input_tokens": 1}}}', b"", b""),
        (b'{"model": "m", "response": { "x": 1 }}', b"", b""),
        (b'{"model": "", "usage": {"prompt_tokens": 1}}', b"", b""),
        (b'{"usage": {"prompt_tokens": 1}}', b"", b""),  # no model: the request's counts
        (b'{"model": 5, "usage": {}}', b"", b""),
        (b'{"model": "m", "usage": [1]}', b"", b""),
        (b'{"model": "m", "usage": {}} x', b"", b""),  # trailing bytes
        (b'{"model": "m", "usage": {},}', b"", b""),  # trailing comma
        (b'{"model": "m", "x": "\xff"}', b"", b""),  # invalid UTF-8
        (b'{"model": "m", "x": "\xed\xa0\x80"}', b"", b""),  # UTF-8 encoded surrogate
        (b'{"model": "m", "x": "a\tb"}', b"", b""),  # raw control character
        (b'{"model": "m", "x": tru}', b"", b""),
        (b'{"model": "m", "x": 1e400}', b"", b""),
        (b'\x0b{"model": "m"}', b"", b""),
        (b'[{"model": "m"}]', b"", b""),
        (b'data: {"model": "m"}\n\n', b"text/event-stream", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 1}}', b"text/Event-Stream", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 1}}', b"application/vnd.amazon.eventstream", b""),
        (b'{"model": "m", "usage": {"prompt_tokens": 1}}', b"application/json", b"identity"),
        (gzip.compress(b'{"model": "m", "usage": {"prompt_tokens": 1}}'), b"application/json", b"gzip"),
        (b"[" * 100 + b"]" * 100, b"", b""),
        (b'{"model": "m", "x": ' + b"[" * 60 + b"]" * 60 + b"}", b"", b""),  # deeper than the scan goes
        (b"", b"", b""),
        (b"{}", b"", b""),
    ],
)
def test_declines_what_it_cannot_be_sure_of(body, ct, ce):
    assert fast(body, ct, ce) is None


@pytest.mark.parametrize("mod", sorted(FAST), ids=str)
def test_provider_equals_provider_of(mod):
    m = FAST[mod]
    cases = [
        (b"/v1/chat/completions", b"api.openai.com"),
        (b"/v1/chat/completions", b"orders.internal:8080"),
        (b"/openai/deployments/d/chat/completions?api-version=1", b"x.openai.azure.com"),
        (b"/v1/messages", b"gateway"),
        (b"/v1/messages", b"API.ANTHROPIC.COM"),
        (b"/model/anthropic.claude/invoke", b"gw"),
        (b"/model/x/converse", b"bedrock-runtime.us-east-1.amazonaws.com"),
        (b"/v1/projects/p/locations/l/publishers/google/models/g:generateContent", b"gw"),
        (b"/v1beta/models/g:streamGenerateContent", b"generativelanguage.googleapis.com"),
        (b"/", b""),
    ]
    for target, host in cases:
        assert m.provider(target, host) == ai.provider_of(target, host).encode()
    assert m.provider(b"/v1/messages", b"h" * 257) is None


KEYS = st.sampled_from(
    [*(k.decode() for k in _usage_py.SLOT), *(k.decode() for k in _usage_py.PREFIX), "cached_tokens",
     "reasoning_tokens", "audio_tokens", "x", "usage", "model"]
)  # fmt: skip
ANY_CHAR = st.characters(blacklist_categories=())  # lone surrogates too: escaped, or UTF-8 encoded
SCALARS = st.one_of(
    st.integers(0, 10**9),
    st.integers(-5, 5),
    st.integers(10**17, 10**20),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(ANY_CHAR, max_size=8),
)
VALUES = st.recursive(SCALARS, lambda inner: st.dictionaries(KEYS, inner, max_size=4) | st.lists(inner, max_size=3),
                      max_leaves=12)  # fmt: skip
USAGE = st.dictionaries(KEYS, VALUES, max_size=8)
TOP = st.dictionaries(
    st.sampled_from(["id", "object", "choices", "content", "type", "model", "usage", "modelVersion", "metadata"]),
    VALUES,
    max_size=4,
)


@st.composite
def bodies(draw):
    doc = draw(TOP)
    if draw(st.booleans()):
        doc["model"] = draw(st.text(min_size=0, max_size=300) | st.sampled_from(["gpt-4o-mini", "claude-3"]))
    if draw(st.booleans()):
        doc["usage"] = draw(USAGE)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    body = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0 and body:  # a damaged body now and then
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    return body


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_generated_bodies_fast_equals_full(body):
    fast(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_wrong(body):
    fast(body)


def _call(body: bytes, ct: str = "application/json", extra: str = "") -> tuple[bytes, bytes]:
    req_body = b'{"model": "req-model", "messages": []}'
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nX-Tenant-ID: t1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(req_body)
    ) + req_body
    resp = (f"HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body
    return req, resp


def test_engines_agree_with_and_without_the_fast_path():
    """The compiled engine takes the fast path for the plain bodies and the Python path for the others; the
    pure-Python engine always takes the Python path: every record must be the same."""
    plain = _j(OPENAI)
    exchanges = [
        _call(plain),
        _call(_j({**OPENAI, "model": "x" * 300})),
        _call(b'{"usage": {"prompt_tokens": 4, "completion_tokens": 2}}'),  # model from the request
        _call(b'{"model": "m\\u00e9", "usage": {"input_tokens": 4, "output_tokens": 2}}'),
        _call(gzip.compress(plain), extra="Content-Encoding: gzip\r\n"),
        _call(b"data: " + plain + b"\n\ndata: [DONE]\n\n", ct="text/event-stream"),
        _call(b"not json"),
    ]
    data = pcap_bytes(conversation(exchanges))
    results = [run_capture(BUILDS[b], io.BytesIO(data)) for b in sorted(BUILDS)]
    assert results[0] == results[1]
    calls, stats, error = results[0]
    assert error is None and stats["counters"]["ai_calls"] == len(exchanges)
    assert stats["errors"] == {"ai_body": 1}
    by_model = {c["model"]: c for c in calls}
    # plain (fast path), gzip and SSE (Python path) land in one row: 3 x (1031 prompt - 1000 cached)
    assert by_model["gpt-4o-mini-2024-07-18"]["tokens_in"] == 3 * 31
    assert "req-model" in by_model and "x" * 256 in by_model and "mé" in by_model
    assert {c["provider"] for c in calls if c["model"]} == {"openai"}  # the unreadable body records none


def _ai_exchange(req_body: bytes, headers: str = "") -> tuple[bytes, bytes]:
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: llm.internal\r\n{headers}Content-Type: application/json\r\n"
        f"Content-Length: {len(req_body)}\r\n\r\n"
    ).encode() + req_body
    body = _j(OPENAI)
    resp = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return req, resp


REQUEST_BODIES = [
    b'{"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "hi"}]}',  # nothing to find: fast path
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',  # the "user" needle: Python path
    b'{"model": "gpt-4o-mini", "user": "acme", "messages": []}',
    b'{"model": "gpt-4o-mini", "metadata": {"tenant_id": "t9", "feature": "search", "agent_id": "bot"}}',
    b'{"model": "gpt-4o-mini", "us\\u0065r": "escaped", "messages": []}',
    b'{"model": "gpt-4o-mini", "org": "o1"}',
    b'{"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "line\\nline \\"q\\""}]}',
    b'{"model": "gpt-4o-mini", "a\\/b": "slash"}',  # the key "a/b" spelled with an escape
    b'{"model": "gpt-4o-mini", "\\u006detadata": {"feature": "esc-feature"}}',  # "metadata" spelled with \\u
    b"",
]


@pytest.mark.parametrize(
    "rules",
    [
        None,
        [],
        [Rule(source="body", target="tenant", key="org")],
        [Rule(source="jwt_claim", target="feature", key="sub")],
        [Rule(source="body", target="agent", key="org", pattern="o(\\d)")],
        [Rule(source="body", target="feature", key="a/b")],
    ],
    ids=["default", "none", "body", "jwt", "body-pattern", "body-slash"],
)
def test_engines_agree_on_ai_request_ids(rules):
    """The compiled engine skips the rule pass of an AI call only when the rules left cannot match (body rules whose
    keys the body does not name): ids, methods and rules must come out as the Python engine finds them."""
    config = Config() if rules is None else Config(rules=[*Config().rules, *rules]) if rules else Config(rules=[])
    exchanges = [_ai_exchange(b) for b in REQUEST_BODIES]
    exchanges += [_ai_exchange(b, "X-Tenant-ID: from-header\r\n") for b in REQUEST_BODIES]
    data = pcap_bytes(conversation(exchanges))
    results = [run_capture(BUILDS[b], io.BytesIO(data), config) for b in sorted(BUILDS)]
    assert results[0] == results[1]
    calls, stats, error = results[0]
    assert error is None and stats["errors"] == {} and stats["counters"]["ai_calls"] == len(exchanges)
    tenants = {c["tenant"] for c in calls}
    assert ("from-header" in tenants) == (rules != [])
    assert {"acme", "t9", "escaped", ""} <= tenants  # the AI body fallbacks apply with any rules; "" unallocated
    features = {c["feature"] for c in calls}
    assert {"search", "esc-feature"} <= features and "bot" in {c["agent"] for c in calls}
    assert ("slash" in features) == (rules is not None and rules != [] and rules[0].key == "a/b")
    assert ("o1" in tenants) == (rules is not None and rules != [] and rules[0].key == "org" and not rules[0].pattern)
    if rules and rules[0].pattern:
        assert "1" in {c["agent"] for c in calls}
