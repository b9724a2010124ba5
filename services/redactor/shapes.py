"""Shapes, not values: what an operation *is*, without the values it carried.

Reads: the raw ``ObservedCall.operation`` of the sensor — HTTP ``"METHOD /path?query"``, PostgreSQL SQL text (maybe
cut at 2 KiB), a Kafka/AMQP/NATS topic, a Redis command. Emits: a route template (``/users/{id}/orders/{uuid}``) with
the query's parameter names only (sorted, each once), a SQL fingerprint (comments and literals removed, ``IN`` lists
and ``VALUES`` rows collapsed, whitespace folded), a topic with id-like parts replaced, a Redis command name.

Only the first line of an HTTP operation is read, so header lines (``Authorization``, ``Cookie``, ``Set-Cookie``,
``X-Api-Key``…) that a buggy sensor might append never leave in any form. Shaping runs on text the scanner already
redacted, so ``[REDACTED:<kind>]`` placeholders are kept as they are.
"""

from __future__ import annotations

import re
from typing import Final

_METHOD = re.compile(r"[A-Z]{3,12}")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_HEX = re.compile(r"[0-9A-Fa-f]{16,}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+Z?)?")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-\[\]]{0,63}|\[REDACTED:[a-z_]+\]")
_PLACEHOLDER = "[REDACTED:"
#: Longest path segment kept as text; longer ones are data (slugs, blobs, encoded payloads).
MAX_SEGMENT: Final = 48


def shape_segment(seg: str) -> str:
    """One path segment (or topic part): keep words, replace ids, UUIDs, hashes, dates, tokens and long blobs."""
    if not seg or seg.startswith("{"):
        return seg
    if _PLACEHOLDER in seg:
        return seg
    if seg.isdigit():
        return "{id}"
    if _UUID.fullmatch(seg):
        return "{uuid}"
    if _DATE.fullmatch(seg):
        return "{date}"
    digits = sum(c.isdigit() for c in seg)
    if digits and _HEX.fullmatch(seg):
        return "{hex}"
    if len(seg) > MAX_SEGMENT:
        return "{blob}"
    if digits >= 3:
        return "{id}"
    if len(seg) >= 16 and digits and any(c.isupper() for c in seg) and any(c.islower() for c in seg):
        return "{token}"
    return seg


def _shape_path(path: str) -> str:
    parts = []
    for seg in path.split("/"):
        base, sep, params = seg.partition(";")  # matrix parameters (;jsessionid=…): names only
        shaped = shape_segment(base)
        if sep:
            shaped += ";" + ";".join(sorted({_param_name(p) for p in params.split(";") if p}))
        parts.append(shaped)
    return "/".join(parts)


def _param_name(item: str) -> str:
    name = item.split("=", 1)[0]
    return name if _PARAM_NAME.fullmatch(name) else "{param}"


def shape_query(query: str) -> str:
    """``a=1&b=2&a=3`` → ``a&b``: the names that were present, sorted, each once; values never."""
    names = {_param_name(item) for item in query.replace(";", "&").split("&") if item}
    return "&".join(sorted(names))


def shape_http(op: str) -> str:
    """``"GET /users/42/orders?id=7&x=1 HTTP/1.1\\r\\nCookie: …"`` → ``"GET /users/{id}/orders?id&x"``."""
    line = op.split("\n", 1)[0].split("\r", 1)[0].strip()
    method, sep, target = line.partition(" ")
    if not sep:
        method, target = "", line
    elif not _METHOD.fullmatch(method):
        method = "{method}"
    target = target.strip().split(" ", 1)[0]  # drops " HTTP/1.1"
    target = target.split("#", 1)[0]
    path, qsep, query = target.partition("?")
    origin = ""
    if "://" in path[:16]:  # absolute-form target: keep scheme://host, shape the path
        scheme, _, rest = path.partition("://")
        host, slash, path = rest.partition("/")
        origin = f"{scheme}://{host}"
        path = slash + path
    elif not path.startswith("/") and method == "CONNECT":
        return f"CONNECT {path}"
    shaped = origin + _shape_path(path)
    if qsep:
        shaped += "?" + shape_query(query)
    return f"{method} {shaped}" if method else shaped


_SQL_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>[EeNnBbXxUu]?&?'(?:''|\\.|[^'\\])*(?:'|\Z))
  | (?P<dollar>\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\$.*?(?:\$(?P=tag)\$|\Z))
  | (?P<ident>"(?:""|[^"])*(?:"|\Z))
  | (?P<param>\$[0-9]+|\?)
  | (?P<number>(?<![A-Za-z0-9_$.])(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_]))
  | (?P<space>\s+)
  | (?P<placeholder>\[REDACTED:[a-z_]+\])
    """,
    re.VERBOSE | re.DOTALL,
)
_IN_LIST = re.compile(r"(?i)\b(IN|ANY|ALL)\s*\(\s*\?(?:\s*,\s*\?)*\s*\)")
_ARRAY = re.compile(r"(?i)\bARRAY\s*\[\s*\?(?:\s*,\s*\?)*\s*\]")
_ROWS = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+")


def _sql_token(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "space" or kind == "comment":
        return " "
    if kind in ("string", "dollar", "number", "param", "placeholder"):
        return "?"
    return m.group()  # quoted identifiers are names, not values


def shape_sql(sql: str) -> str:
    """A fingerprint: ``SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'x'`` → ``… id IN (?) AND name = ?``.

    A literal cut off by the 2 KiB limit (no closing quote) is removed to the end, never kept.
    """
    text = _SQL_TOKEN.sub(_sql_token, sql)
    text = _IN_LIST.sub(lambda m: f"{m.group(1).upper()} (?)", text)
    text = _ARRAY.sub("ARRAY[?]", text)
    text = _ROWS.sub(lambda m: m.group(1), text)
    return " ".join(text.split())


def shape_topic(topic: str) -> str:
    """``orders.tenant-42.7f3e…`` style names: dot-separated parts shaped like path segments."""
    return ".".join(shape_segment(p) for p in topic.strip().split("."))


def shape_redis(command: str) -> str:
    """Only the command name: keys and values of a Redis command are data."""
    word = command.strip().split(None, 1)[0] if command.strip() else ""
    return word.upper() if word.isalpha() else "{command}" if word else ""


def shape(protocol: str, op: str) -> str:
    """The shape of an operation for its protocol; unknown protocols get the topic shaping (ids replaced)."""
    if not op:
        return op
    if protocol == "http":
        return shape_http(op)
    if protocol == "postgres":
        return shape_sql(op)
    if protocol == "redis":
        return shape_redis(op)
    return shape_topic(op)


_ID_SEGMENT = re.compile(
    r"(?<=/)(?:[0-9]+|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})(?=[/;?#\s]|$)"
)
_QUERY_VALUE = re.compile(r"=[^&;#\s]*")
_SQL_LITERAL = re.compile(
    r"""(?P<keep>"(?:""|[^"])*(?:"|\Z))|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |[EeXxBbNn]?'(?:''|\\.|[^'\\])*(?:'|\Z)
    |\$\$.*?(?:\$\$|\Z)|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\$.*?(?:\$(?P=tag)\$|\Z)
    |(?<![A-Za-z0-9_$.])(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_])""",
    re.DOTALL | re.VERBOSE,
)


def _sql_literal(m: re.Match[str]) -> str:
    if m.group("keep"):
        return m.group()
    return " " if m.group("comment") else "?"


_CANONICAL_UUID = "00000000-0000-0000-0000-000000000000"


def _canonical_id(m: re.Match[str]) -> str:
    return "0" if len(m.group()) != 36 else _CANONICAL_UUID


def cache_key(protocol: str, op: str) -> str:
    """A cheaper, coarser form of an operation that has the same shape: what the redactor's caches are keyed by.

    HTTP: the request line with ids in path segments (numbers, UUIDs) canonicalised and query values removed —
    shaping turns those into ``{id}``/``{uuid}`` and drops query values anyway, so every request to one route shares
    one key. PostgreSQL: string and number literals replaced by ``?`` — the fingerprint removes them anyway. A
    canonical id keeps the character class of what it replaces, so a detector match spanning it still spans it.
    """
    if protocol == "http":
        line = op.split("\n", 1)[0].split("\r", 1)[0]
        path, sep, query = line.partition("?")
        path = _ID_SEGMENT.sub(_canonical_id, path)
        if not sep:
            return path
        return path + "?" + _QUERY_VALUE.sub("", query)
    if protocol == "postgres":
        return _SQL_LITERAL.sub(_sql_literal, op)
    return op
