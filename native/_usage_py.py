"""Pure-Python twin of ``_usage.pyx`` (same scan, same answers, same refusals): the AI usage fast path.

Reads: a response body, its ``Content-Type`` and ``Content-Encoding``; a request target and ``Host``. Emits:
``(model, tokens_in, tokens_out, tokens_cached, tokens_reasoning)`` or None where the full path
(``costmesh.sensor.core.ai``) must decide; ``provider`` as ``ai.provider_of`` gives it. Why a twin: the parser tests
run both builds and require the same output, so the compiled scanner's rules are written out once more here, readable,
and checked against it. The pure-Python engine does not call it (the full path through msgspec is faster than this in
Python).
"""

from __future__ import annotations

MAX_DEPTH = 48
MAX_HOST = 256
MODEL_MAX = 256

SLOT = (
    b"prompt_tokens",
    b"completion_tokens",
    b"prompt_tokens_details.cached_tokens",
    b"completion_tokens_details.reasoning_tokens",
    b"input_tokens_details.cached_tokens",
    b"input_tokens",
    b"total_tokens",
    b"output_tokens",
    b"output_tokens_details.reasoning_tokens",
    b"cache_creation_input_tokens",
    b"cache_read_input_tokens",
    b"inputTokens",
    b"outputTokens",
    b"cacheWriteInputTokens",
    b"cacheReadInputTokens",
    b"inputTokenCount",
    b"outputTokenCount",
    b"cacheWriteInputTokenCount",
    b"cacheReadInputTokenCount",
    b"promptTokenCount",
    b"candidatesTokenCount",
    b"cachedContentTokenCount",
    b"thoughtsTokenCount",
)
SLOT_INDEX = {name: i for i, name in enumerate(SLOT)}
PREFIX = (b"prompt_tokens_details", b"completion_tokens_details", b"input_tokens_details", b"output_tokens_details")
PREFIX_INDEX = {name: i for i, name in enumerate(PREFIX)}
TOP_OTHER = frozenset(
    (b"modelVersion", b"modelId", b"usageMetadata", b"amazon-bedrock-invocationMetrics", b"response", b"message",
     b"metadata")
)  # fmt: skip
NESTED = frozenset((b"response", b"message", b"metadata"))
PROVIDERS = (b"azure-openai", b"anthropic", b"bedrock", b"vertex", b"gemini", b"openai")

_WS = frozenset(b" \t\r\n")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _Uncertain(Exception):
    """The scan cannot be sure: the full path decides."""


def _ws(b: bytes, i: int) -> int:
    n = len(b)
    while i < n and b[i] in _WS:
        i += 1
    return i


def _utf8(b: bytes, i: int) -> int:
    n = len(b)
    c = b[i]
    lo, hi = 0x80, 0xBF
    if 0xC2 <= c <= 0xDF:
        if i + 1 < n and 0x80 <= b[i + 1] <= 0xBF:
            return 2
        raise _Uncertain
    if 0xE0 <= c <= 0xEF:
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        if i + 2 < n and lo <= b[i + 1] <= hi and 0x80 <= b[i + 2] <= 0xBF:
            return 3
        raise _Uncertain
    if 0xF0 <= c <= 0xF4:
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if i + 3 < n and lo <= b[i + 1] <= hi and 0x80 <= b[i + 2] <= 0xBF and 0x80 <= b[i + 3] <= 0xBF:
            return 4
        raise _Uncertain
    raise _Uncertain


def _unit(b: bytes, i: int, n: int) -> bool:
    """``b[i:i+6]`` is a \\uXXXX escape outside the surrogates."""
    return (
        b[i + 1 : i + 2] == b"u"
        and i + 5 < n
        and all(x in _HEX for x in b[i + 2 : i + 6])
        and not (b[i + 2] in b"dD" and b[i + 3] in b"89abcdefABCDEF")
    )


def _harmless(b: bytes, i: int, key: bytes) -> bool:
    """A nested document the Python path searches (``key`` in ``NESTED``) whose value at ``i`` is not an object, or an
    empty one: nothing there for it."""
    if key not in NESTED or i >= len(b):
        return False
    if b[i] != 123:
        return True
    j = _ws(b, i + 1)
    return j < len(b) and b[j] == 125


def _str_end(b: bytes, i: int) -> tuple[int, bool]:
    """``i`` just after an opening quote: (offset after the closing quote, had an escape)."""
    n = len(b)
    esc = False
    while i < n:
        c = b[i]
        if c == 34:
            return i + 1, esc
        if c == 92:
            if i + 1 < n and b[i + 1] in _SIMPLE_ESCAPES:
                esc = True
                i += 2
                continue
            # \uXXXX outside the surrogates: always one character (surrogates: left to the full decoder)
            if _unit(b, i, n):
                esc = True
                i += 6
                continue
            raise _Uncertain
        if c < 0x20:
            raise _Uncertain
        i += 1 if c < 0x80 else _utf8(b, i)
    raise _Uncertain


def _num_end(b: bytes, i: int) -> tuple[int, bool]:
    n = len(b)
    start = i
    integer = True
    if i < n and b[i] == 45:
        i += 1
    if i >= n:
        raise _Uncertain
    if b[i] == 48:
        i += 1
    elif 49 <= b[i] <= 57:
        d = i
        while i < n and b[i] in _DIGITS:
            i += 1
        if i - d > 18:
            raise _Uncertain
    else:
        raise _Uncertain
    if i < n and b[i] == 46:
        integer = False
        i += 1
        d = i
        while i < n and b[i] in _DIGITS:
            i += 1
        if i == d:
            raise _Uncertain
    if i < n and b[i] in (101, 69):
        integer = False
        i += 1
        if i < n and b[i] in (43, 45):
            i += 1
        d = i
        while i < n and b[i] in _DIGITS:
            i += 1
        if i == d or i - d > 2:
            raise _Uncertain
    if i - start > 40:
        raise _Uncertain
    return i, integer


def _skip(b: bytes, i: int, depth: int) -> int:
    n = len(b)
    if i >= n:
        raise _Uncertain
    c = b[i]
    if c == 34:
        return _str_end(b, i + 1)[0]
    if c in (123, 91):
        if depth >= MAX_DEPTH:
            raise _Uncertain
        close = c + 2
        i = _ws(b, i + 1)
        if i < n and b[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or b[i] != 34:
                    raise _Uncertain
                i = _ws(b, _str_end(b, i + 1)[0])
                if i >= n or b[i] != 58:
                    raise _Uncertain
                i = _ws(b, i + 1)
            i = _ws(b, _skip(b, i, depth + 1))
            if i >= n:
                raise _Uncertain
            if b[i] == 44:
                i = _ws(b, i + 1)
                continue
            if b[i] == close:
                return i + 1
            raise _Uncertain
    for word in (b"true", b"false", b"null"):
        if c == word[0]:
            if b.startswith(word, i):
                return i + len(word)
            raise _Uncertain
    if c == 45 or c in _DIGITS:
        return _num_end(b, i)[0]
    raise _Uncertain


def _key(b: bytes, i: int) -> tuple[bytes, int]:
    n = len(b)
    if i >= n or b[i] != 34:
        raise _Uncertain
    e, esc = _str_end(b, i + 1)
    if esc:
        raise _Uncertain
    key = b[i + 1 : e - 1]
    i = _ws(b, e)
    if i >= n or b[i] != 58:
        raise _Uncertain
    return key, _ws(b, i + 1)


def _slot_value(b: bytes, i: int, raw: dict[int, int], seen: set[int], s: int) -> int:
    if s in seen:
        raise _Uncertain
    seen.add(s)
    if i < len(b) and b[i] in _DIGITS:
        e, integer = _num_end(b, i)
        if not integer:
            raise _Uncertain
        raw[s] = int(b[i:e])
        return e
    if i < len(b) and b[i] == 45:
        raise _Uncertain
    return _skip(b, i, 2)


def _members(b: bytes, i: int, raw: dict[int, int], seen: set[int], pseen: set[int], prefix: bytes | None) -> int:
    n = len(b)
    i = _ws(b, i + 1)
    if i < n and b[i] == 125:
        return i + 1
    while True:
        key, i = _key(b, i)
        s = SLOT_INDEX.get(key if prefix is None else prefix + b"." + key)
        if s is not None:
            i = _slot_value(b, i, raw, seen, s)
        else:
            p = PREFIX_INDEX.get(key) if prefix is None else None
            if p is not None:
                if p in pseen:
                    raise _Uncertain
                pseen.add(p)
                i = _members(b, i, raw, seen, pseen, key) if i < n and b[i] == 123 else _skip(b, i, 2)
            else:
                i = _skip(b, i, 2)
        i = _ws(b, i)
        if i >= n:
            raise _Uncertain
        if b[i] == 44:
            i = _ws(b, i + 1)
            continue
        if b[i] == 125:
            return i + 1
        raise _Uncertain


def _tokens(raw: dict[int, int]) -> tuple[int, int, int, int]:
    g = raw.get
    if 0 in raw or 1 in raw:
        cached = g(2, 0)
        return max(0, g(0, 0) - cached), g(1, 0), cached, g(3, 0)
    if 4 in raw or (5 in raw and 6 in raw):
        cached = g(4, 0)
        return max(0, g(5, 0) - cached), g(7, 0), cached, g(8, 0)
    if 5 in raw or 7 in raw:
        return g(5, 0) + g(9, 0), g(7, 0), g(10, 0), 0
    if 11 in raw or 12 in raw:
        return g(11, 0) + g(13, 0), g(12, 0), g(14, 0), 0
    if 15 in raw or 16 in raw:
        return g(15, 0) + g(17, 0), g(16, 0), g(18, 0), 0
    if 19 in raw or 20 in raw:
        cached = g(21, 0)
        return max(0, g(19, 0) - cached), g(20, 0) + g(22, 0), cached, g(22, 0)
    return 0, 0, 0, 0


def _scan(b: bytes) -> tuple[bytes, int, int, int, int] | None:
    n = len(b)
    raw: dict[int, int] = {}
    seen: set[int] = set()
    pseen: set[int] = set()
    model: bytes | None = None
    have_usage = False
    i = _ws(b, 0)
    if i >= n or b[i] != 123:
        return None
    i = _ws(b, i + 1)
    if i < n and b[i] == 125:
        return None
    while True:
        key, i = _key(b, i)
        if key == b"model":
            if model is not None or i >= n or b[i] != 34:
                return None
            e, esc = _str_end(b, i + 1)
            if esc or e - 1 - (i + 1) == 0:
                return None
            model = b[i + 1 : e - 1]
            i = e
        elif key == b"usage":
            if have_usage or i >= n or b[i] != 123:
                return None
            have_usage = True
            i = _members(b, i, raw, seen, pseen, None)
        else:
            if key in TOP_OTHER and not _harmless(b, i, key):
                return None
            i = _skip(b, i, 1)
        i = _ws(b, i)
        if i >= n:
            return None
        if b[i] == 44:
            i = _ws(b, i + 1)
            continue
        if b[i] == 125:
            break
        return None
    if _ws(b, i + 1) != n or model is None:
        return None
    return (model[:MODEL_MAX], *_tokens(raw))


def response_usage(body: bytes, content_type: bytes = b"", content_encoding: bytes = b""):
    """``(model, tokens_in, tokens_out, tokens_cached, tokens_reasoning)`` of a plain JSON body, or None."""
    if content_encoding or not body or b"event" in content_type.lower():
        return None
    try:
        return _scan(body)
    except _Uncertain:
        return None


def provider(target: bytes, host: bytes) -> bytes | None:
    """``ai.provider_of`` as bytes, or None (host too long for the compiled fast path)."""
    if len(host) > MAX_HOST:
        return None
    h = host.lower()
    if b"openai.azure.com" in h or b"/openai/deployments/" in target:
        return PROVIDERS[0]
    if b"anthropic" in h or target.startswith(b"/v1/messages"):
        return PROVIDERS[1]
    if b"bedrock-runtime" in h or b"/converse" in target or (target.startswith(b"/model/") and b"/invoke" in target):
        return PROVIDERS[2]
    if b"aiplatform.googleapis" in h or (b"/projects/" in target and b"/publishers/google/" in target):
        return PROVIDERS[3]
    if b"generativelanguage.googleapis" in h or b":generateContent" in target or b":streamGenerateContent" in target:
        return PROVIDERS[4]
    return PROVIDERS[5]
