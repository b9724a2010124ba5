"""Query parameters: each route declares its parameters once (``Param``), and the same declaration parses a request
and describes the parameter in the OpenAPI document.

An unknown parameter, a bad value or a single-valued parameter given twice is a 400 that names it (and is counted),
so a typo never silently returns the unfiltered answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from costmesh.common.metrics import ERRORS

from .answers import Error

_PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
#: Longest accepted free-text value (tenant ids, resource names); longer is a 400, not a slow query.
MAX_TEXT = 256


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(Error(error=message, **extra)), content_type="application/json"
    )


class BadRequest(web.HTTPBadRequest):
    """A 400 with a JSON body naming the parameter; counted as ``costmesh_input_errors_total{kind=bad_request}``."""

    def __init__(self, message: str) -> None:
        ERRORS.labels("api", "bad_request").inc()
        super().__init__(text=msgspec.json.encode(Error(error=message)).decode(), content_type="application/json")


@dataclass(frozen=True)
class Kind:
    """How one value is parsed; ``schema`` is its JSON schema in the document."""

    schema: dict[str, Any]

    def parse(self, name: str, raw: str) -> Any:
        return raw


@dataclass(frozen=True)
class Text(Kind):
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string", "maxLength": MAX_TEXT})

    def parse(self, name: str, raw: str) -> str:
        if len(raw) > MAX_TEXT:
            raise BadRequest(f"parameter {name!r}: longer than {MAX_TEXT} characters")
        return raw


@dataclass(frozen=True)
class Choice(Kind):
    values: tuple[str, ...] = ()
    schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", {"type": "string", "enum": list(self.values)})

    def parse(self, name: str, raw: str) -> str:
        if raw not in self.values:
            raise BadRequest(f"parameter {name!r}: unknown value {raw!r}; one of {', '.join(self.values)}")
        return raw


@dataclass(frozen=True)
class Time(Kind):
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string", "format": "date-time"})

    def parse(self, name: str, raw: str) -> datetime:
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"parameter {name!r}: not an ISO 8601 time: {raw!r}") from None
        if value.tzinfo is None:
            raise BadRequest(f"parameter {name!r}: give a time zone (e.g. Z)")
        return value


@dataclass(frozen=True)
class Period(Kind):
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string", "pattern": _PERIOD_RE.pattern})

    def parse(self, name: str, raw: str) -> str:
        if not _PERIOD_RE.match(raw):
            raise BadRequest(f"parameter {name!r}: not a YYYY-MM billing period: {raw!r}")
        return raw


@dataclass(frozen=True)
class Currency(Kind):
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string", "pattern": "^[A-Za-z]{3}$"})

    def parse(self, name: str, raw: str) -> str:
        if not (len(raw) == 3 and raw.isascii() and raw.isalpha()):
            raise BadRequest(f"parameter {name!r}: not a currency code: {raw!r}")
        return raw.upper()


@dataclass(frozen=True)
class Whole(Kind):
    low: int = 1
    high: int = 1000
    schema: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", {"type": "integer", "minimum": self.low, "maximum": self.high})

    def parse(self, name: str, raw: str) -> int:
        if not raw.isdigit() or not self.low <= int(raw) <= self.high:
            raise BadRequest(f"parameter {name!r}: a whole number between {self.low} and {self.high}, not {raw!r}")
        return int(raw)


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    description: str
    default: Any = None
    required: bool = False
    #: May be given several times (``?tenant=a&tenant=b``); parsed into a list.
    many: bool = False
    location: str = "query"

    def openapi(self) -> dict[str, Any]:
        schema = {"type": "array", "items": self.kind.schema} if self.many else dict(self.kind.schema)
        if self.default is not None:
            schema["default"] = self.default
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "required": self.required or self.location == "path",
            "schema": schema,
        }
        if self.many:
            out["style"], out["explode"] = "form", True
        return out


def parse(request: web.Request, params: Sequence[Param]) -> dict[str, Any]:
    """The request's parameters by name (defaults filled in), or a 400 naming the first bad one."""
    known = {p.name: p for p in params}
    unknown = sorted(set(request.query) - {p.name for p in params if p.location == "query"})
    if unknown:
        allowed = ", ".join(sorted(n for n, p in known.items() if p.location == "query")) or "none"
        raise BadRequest(f"unknown parameter {unknown[0]!r}; allowed: {allowed}")
    out: dict[str, Any] = {}
    for p in params:
        if p.location == "path":
            out[p.name] = p.kind.parse(p.name, request.match_info[p.name])
            continue
        values = request.query.getall(p.name, [])
        if not values:
            if p.required:
                raise BadRequest(f"parameter {p.name!r} is required")
            out[p.name] = [] if p.many else p.default
        elif p.many:
            out[p.name] = [p.kind.parse(p.name, v) for v in values]
        elif len(values) > 1:
            raise BadRequest(f"parameter {p.name!r}: given {len(values)} times; it takes one value")
        else:
            out[p.name] = p.kind.parse(p.name, values[0])
    return out


def filters(args: Mapping[str, Any], names: Sequence[str]) -> dict[str, list[str]]:
    """The multi-valued filters that were given, by name."""
    return {n: args[n] for n in names if args.get(n)}


# -- parameters several routes share -------------------------------------------------------------------------------

FROM = Param("from", Time(), "Start of the time range (inclusive), ISO 8601 with a zone.")
TO = Param("to", Time(), "End of the time range (exclusive), ISO 8601 with a zone.")
PERIOD = Param("period", Period(), "Billing period, YYYY-MM.")
STEP = Param("step", Choice(values=("hour", "day", "month")), "Bucket size of the series over time (UTC buckets).")
FORMAT = Param("format", Choice(values=("json", "csv")), "Answer as JSON (default) or as CSV.", default="json")
LIMIT = Param("limit", Whole(low=1, high=10000), "At most this many rows (the largest first).")


def many(name: str, what: str) -> Param:
    return Param(name, Text(), f"Only {what} (repeat the parameter for several values).", many=True)


#: Filters of every route over allocated cost (columns of ``allocations``).
COST_FILTERS = (
    many("tenant", "these tenants"),
    many("feature", "these features"),
    many("agent", "these AI agents"),
    many("service", "these billed services"),
    many("resource", "these observed resources"),
)
COST_FILTER_NAMES = tuple(p.name for p in COST_FILTERS)
