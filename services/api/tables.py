"""``format=csv``: each answer as one table (header + rows), the shape a spreadsheet expects.

Amounts stay exact decimal strings; a series becomes one column per bucket (its start, ISO 8601).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from functools import singledispatch
from typing import Any

import msgspec

from . import answers as a
from .queries import AI_GROUPS, METHODS, USAGE_GROUPS

Table = tuple[list[str], list[list[Any]]]


def render(answer: msgspec.Struct) -> bytes:
    header, rows = table(answer)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else _text(v) for v in row] for row in rows])
    return out.getvalue().encode()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode().strip('"')


def _fields(struct: type[msgspec.Struct]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(struct)]


def _plain(rows: Sequence[msgspec.Struct], struct: type[msgspec.Struct], skip: Sequence[str] = ()) -> Table:
    names = [f for f in _fields(struct) if f not in skip]
    builtins = [msgspec.to_builtins(r) for r in rows]
    return names, [[b.get(n) for n in names] for b in builtins]


def supports(answer_type: type) -> bool:
    return answer_type in table.registry  # type: ignore[attr-defined]


@singledispatch
def table(answer: msgspec.Struct) -> Table:
    raise TypeError(f"no CSV form for {type(answer).__name__}")


@table.register
def _(answer: a.UsageAnswer) -> Table:
    return _plain(answer.rows, a.UsageRow, skip=[g for g in USAGE_GROUPS if g != answer.group_by])


@table.register
def _(answer: a.CostAnswer) -> Table:
    buckets = answer.buckets if answer.buckets is not msgspec.UNSET else []
    header = [answer.group_by, "currency", "cost", *METHODS, *(b.isoformat() for b in buckets)]
    rows = []
    for r in answer.rows:
        series = r.series if r.series is not msgspec.UNSET else []
        rows.append(
            [getattr(r, answer.group_by), r.currency, r.cost, *(r.by_method.get(m, 0) for m in METHODS), *series]
        )
    return header, rows


@table.register
def _(answer: a.PnlAnswer) -> Table:
    header = ["customer", "currency", "revenue", "cost", *METHODS, "margin", "margin_pct"]
    rows = [
        [
            c.customer,
            answer.currency,
            c.revenue,
            c.cost,
            *(c.by_category.get(m, 0) for m in METHODS),
            c.margin,
            c.margin_pct,
        ]
        for c in answer.customers
    ]
    return header, rows


@table.register
def _(answer: a.RevenueAnswer) -> Table:
    return _plain(answer.rows, a.RevenueRow)


@table.register
def _(answer: a.CustomerAnswer) -> Table:
    return _plain(answer.drivers, a.Driver)


@table.register
def _(answer: a.ResourceAnswer) -> Table:
    return _plain(answer.consumers, a.Consumer)


@table.register
def _(answer: a.CoverageAnswer) -> Table:
    return _plain(answer.periods, a.CoveragePeriod)


@table.register
def _(answer: a.AiCostAnswer) -> Table:
    return _plain(answer.rows, a.AiCostRow, skip=[g for g in AI_GROUPS if g != answer.group_by])


@table.register
def _(answer: a.AlertsAnswer) -> Table:
    return _plain(answer.alerts, a.Alert)
