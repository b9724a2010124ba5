"""HTTP helpers with one Python definition for both builds: the pure-Python engine calls them, the sensor's slow paths
(extraction rules, AI usage, the live AI-flow marker) call them, and the compiled engine has each of them in C
(``_http.pxd``, ``_engine.pyx``); the parser tests hold the two to the same answers.

- ``HTTP_METHODS``: the request heads a message start is recognised by (``http_method_start`` in C).
- ``AI_PATH_MARKERS``, ``AI_HOST_MARKERS``, ``is_ai_request``: which requests are AI API calls (``_is_ai`` in C).
- ``baggage_value``, ``query_value``: one value of a ``baggage`` header or a query string (``_baggage_value``,
  ``_query_value`` in C).
- ``collapse_http_op``: the id folding of an HTTP operation (``sensor.collapse_ids``, ``_collapse`` in C), below.

The id folding is the redactor's own cache key, taken early. It reads an HTTP operation as the engine builds it
(``b"METHOD /path?query"``, at most 2 KiB) and gives the same with every path segment that is a number or a UUID
canonicalised (``0`` or the nil UUID; 36 digits give the nil UUID too) and every query value removed with its ``=`` —
exactly ``costmesh.redactor.shapes.cache_key("http", op)``. The
redactor computes everything it emits for an HTTP operation from that key, and the key of a key is itself, so the
redactor's output is the same whether the sensor folded ids or not; only records that the key makes equal are merged
earlier (per window, in the engine), which is what makes the sensor's output small when paths carry ids.

Only operations of printable ASCII (0x20-0x7E) are folded, where the redactor's ``\\s`` can only be a space; any other
operation is left as seen and the redactor folds it itself.
"""

from __future__ import annotations

import re

__all__ = [
    "AI_HOST_MARKERS",
    "AI_PATH_MARKERS",
    "HTTP_METHODS",
    "baggage_value",
    "collapse_http_op",
    "is_ai_request",
    "query_value",
]

#: Request heads start with one of these (method and space); CONNECT and TRACE included, as in the compiled engine.
HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS ", b"CONNECT ", b"TRACE ")

#: Paths (substrings of the request target) that are AI API calls even on an unknown host (OpenAI-compatible servers).
AI_PATH_MARKERS: tuple[bytes, ...] = (
    b"/chat/completions",
    b"/v1/completions",
    b"/v1/responses",
    b"/openai/responses",
    b"/v1/messages",
    b"/v1/embeddings",
    b"/converse",
    b"/invoke",
    b":generateContent",
    b":streamGenerateContent",
)
#: Hosts (substrings of the ``Host`` header, lower case) of the hosted AI APIs.
AI_HOST_MARKERS: tuple[bytes, ...] = (
    b"openai",
    b"anthropic",
    b"bedrock-runtime",
    b"aiplatform.googleapis",
    b"generativelanguage.googleapis",
)


def is_ai_request(target: bytes, host: bytes) -> bool:
    """Same test as the compiled engine's: a known AI host, or a known AI path."""
    low = host.lower()
    return any(m in low for m in AI_HOST_MARKERS) or any(m in target for m in AI_PATH_MARKERS)


def baggage_value(value: bytes, key: bytes) -> bytes:
    """The value of ``key`` in a W3C ``baggage`` header (properties after ``;`` dropped), or b""."""
    for item in value.split(b","):
        k, sep, v = item.partition(b"=")
        if sep and k.strip(b" \t") == key:
            return v.split(b";", 1)[0].strip(b" \t")
    return b""


def query_value(target: bytes, key: bytes) -> bytes:
    """The value of parameter ``key`` in a request target's query string, or b""."""
    q = target.find(b"?")
    if q < 0:
        return b""
    query = target[q + 1 :].split(b"#", 1)[0]
    for pair in query.split(b"&"):
        k, _sep, v = pair.partition(b"=")
        if k == key:
            return v
    return b""


_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_ID_SEGMENT = re.compile(
    rb"(?<=/)(?:[0-9]+|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})(?=[/;?# ]|$)"
)
_QUERY_VALUE = re.compile(rb"=[^&;# ]*")
_NIL_UUID = b"00000000-0000-0000-0000-000000000000"


def _canonical(m: re.Match[bytes]) -> bytes:
    return b"0" if len(m.group()) != 36 else _NIL_UUID


def collapse_http_op(op: bytes) -> bytes:
    """``op`` with ids in its path folded and its query values dropped (see the module text)."""
    if _NOT_PRINTABLE.search(op):
        return op
    path, sep, query = op.partition(b"?")
    path = _ID_SEGMENT.sub(_canonical, path)
    if not sep:
        return path
    return path + b"?" + _QUERY_VALUE.sub(b"", query)
