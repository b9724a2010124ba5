"""The sensor's id folding of an HTTP operation (``sensor.collapse_ids``): the redactor's own cache key, taken early.

Reads: an HTTP operation as the engine builds it (``b"METHOD /path?query"``, at most 2 KiB). Emits: the same with
every path segment that is a number or a UUID canonicalised (``0`` or the nil UUID; 36 digits give the nil UUID too)
and every query value removed with its ``=`` — exactly ``costmesh.redactor.shapes.cache_key("http", op)``. The
redactor computes everything it emits for an HTTP operation from that key, and the key of a key is itself, so the
redactor's output is the same whether the sensor folded ids or not; only records that the key makes equal are merged
earlier (per window, in the engine), which is what makes the sensor's output small when paths carry ids.

Only operations of printable ASCII (0x20-0x7E) are folded, where the redactor's ``\\s`` can only be a space; any other
operation is left as seen and the redactor folds it itself. This is the twin of ``_collapse`` in ``_engine.pyx``.
"""

from __future__ import annotations

import re

__all__ = ["collapse_http_op"]

_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_ID_SEGMENT = re.compile(
    rb"(?<=/)(?:[0-9]+|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})(?=[/;?# ]|$)"
)
_QUERY_VALUE = re.compile(rb"=[^&;# ]*")
_NIL_UUID = b"00000000-0000-0000-0000-000000000000"


def _canonical(m: re.Match[bytes]) -> bytes:
    return b"0" if len(m.group()) != 36 else _NIL_UUID


def collapse_http_op(op: bytes) -> bytes:
    if _NOT_PRINTABLE.search(op):
        return op
    path, sep, query = op.partition(b"?")
    path = _ID_SEGMENT.sub(_canonical, path)
    if not sep:
        return path
    return path + b"?" + _QUERY_VALUE.sub(b"", query)
