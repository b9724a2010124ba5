"""``costmesh report``: a chargeback report from bill files, without any deployment.

Reads bill files (FOCUS, CUR), optionally captures (through the sensor's own parsing, handed in as ``observe``), a
revenue CSV and the config; prints a table, JSON or CSV. From bills alone the only signal is a tenant tag on the line
(``billing.tag_keys``); the rest is shown as unallocated. The JSON carries every amount as an exact decimal string and
reconciles: the customers' costs plus ``unallocated`` equal ``billed``, exactly.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from costmesh.common.config import Config
from costmesh.common.errors import InputError
from costmesh.common.pnl import customer_pnl

from .bills import BillError, read_bill
from .capture import Observe, consumption_from_captures
from .model import CATEGORIES, Allocation, CostLine
from .pipeline import periods_window, run
from .revenue import Revenue, RevenueError, read_revenue

CENT = Decimal("0.01")
#: The categories no customer carries: modeled background work, a node's idle capacity, and the rest.
NOT_CARRIED = ("platform", "idle", "unallocated")


class ReportError(InputError):
    """Input that makes a report impossible (unreadable files, mixed currencies); the message says which."""


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _period(lines: Sequence[CostLine]) -> str:
    periods = sorted({x.billing_period for x in lines})
    if not periods:
        return ""
    return periods[0] if len(periods) == 1 else f"{periods[0]}..{periods[-1]}"


def build_report(
    bills: Sequence[Path],
    config: Config,
    *,
    captures: Sequence[Path] = (),
    observe: Observe | None = None,
    revenue_file: Path | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    lines: list[CostLine] = []
    problems: list[str] = []
    for path in bills:
        try:
            result = read_bill(path, cost_column=config.billing.cost_column)
        except BillError as exc:
            raise ReportError(str(exc)) from exc
        lines.extend(result.lines)
        problems.extend(str(p) for p in result.problems)
    currencies = sorted({x.currency for x in lines})
    if currency is None:
        if len(currencies) > 1:
            raise ReportError(
                f"the bills are in several currencies ({', '.join(currencies)}): choose one with --currency"
            )
        currency = currencies[0] if currencies else "USD"
    lines = [x for x in lines if x.currency == currency]
    consumption = consumption_from_captures(captures, config, observe)
    result = run(lines, consumption, config, window=periods_window(lines))
    revenue: list[Revenue] = []
    if revenue_file is not None:
        try:
            revenue, bad = read_revenue(revenue_file)
        except RevenueError as exc:
            raise ReportError(str(exc)) from exc
        problems.extend(str(p) for p in bad)
        periods = {x.billing_period for x in result.lines}
        revenue = [r for r in revenue if r.period in periods]
    pnl = customer_pnl(result.allocations, revenue, currency)
    by_line: dict[str, list[Allocation]] = {}
    for a in result.allocations:
        by_line.setdefault(a.line_id, []).append(a)
    by_category = dict.fromkeys(CATEGORIES, Decimal(0))
    for a in result.allocations:
        by_category[a.method] += a.amount
    return {
        "period": _period(result.lines),
        "currency": currency,
        "billed": _s(pnl.billed),
        "customers": {
            c.customer: {
                "cost": _s(c.cost),
                "by_category": {k: _s(v) for k, v in c.by_category.items()},
                "revenue": _s(c.revenue),
                "margin": _s(c.margin),
                "margin_pct": _s(c.margin_pct),
            }
            for c in pnl.customers
        },
        "unallocated": _s(pnl.not_allocated),
        "unallocated_by_category": {k: _s(pnl.not_allocated_by_category[k]) for k in NOT_CARRIED},
        "by_category": {k: _s(v) for k, v in by_category.items()},
        "revenue": _s(pnl.revenue),
        "sources": {"bills": [str(p) for p in bills], "captures": [str(p) for p in captures]},
        "unmatched_lines": len({a.line_id for a in result.allocations if a.basis == "unmatched"}),
        "problems": problems,
        "lines": [
            {
                "line_id": x.line_id,
                "billing_period": x.billing_period,
                "provider": x.provider,
                "service": x.service,
                "resource_id": x.resource_id,
                "usage_type": x.usage_type,
                "amount": _s(x.amount),
                "currency": x.currency,
                "allocations": [
                    {
                        "tenant": a.tenant,
                        "method": a.method,
                        "basis": a.basis,
                        "resource": a.resource,
                        "feature": a.feature,
                        "agent": a.agent,
                        "amount": _s(a.amount),
                    }
                    for a in by_line.get(x.line_id, [])
                ],
            }
            for x in result.lines
        ],
    }


COLUMNS = ["customer", "revenue", "cost", *CATEGORIES, "margin", "margin_pct"]


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for customer, c in report["customers"].items():
        rows.append(
            [
                customer,
                c["revenue"],
                c["cost"],
                *(c["by_category"][k] for k in CATEGORIES),
                c["margin"],
                c["margin_pct"] or "",
            ]
        )
    rest = report["unallocated_by_category"]
    zero = "0"
    rows.append(["(not allocated)", "", report["unallocated"], *(rest.get(k) or zero for k in CATEGORIES), "", ""])
    rows.append(
        ["(total billed)", report["revenue"], report["billed"], *(report["by_category"][k] for k in CATEGORIES), "", ""]
    )
    return rows


def render_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["period", "currency", *COLUMNS])
    for row in _rows(report):
        writer.writerow([report["period"], report["currency"], *row])
    return out.getvalue()


def from_api_pnl(pnl: dict[str, Any]) -> dict[str, Any]:
    """The report's structure from the API's ``GET /v1/pnl`` answer, so that the deployed pipeline's P&L prints with
    the same table (``costmesh demo``). The API does not say how many lines matched nothing: ``unmatched_lines`` is
    None."""
    customers = {
        c["customer"]: {k: c[k] for k in ("revenue", "cost", "by_category", "margin", "margin_pct")}
        for c in pnl["customers"]
    }
    rest = pnl["unallocated_by_category"]
    by_category = {
        k: _s(sum((Decimal(c["by_category"][k]) for c in customers.values()), Decimal(rest.get(k) or 0)))
        for k in CATEGORIES
    }
    return {
        "period": pnl["period"],
        "currency": pnl["currency"],
        "billed": pnl["billed"],
        "customers": customers,
        "unallocated": pnl["unallocated"],
        "unallocated_by_category": {k: rest.get(k) or "0" for k in NOT_CARRIED},
        "by_category": by_category,
        "revenue": pnl["revenue"],
        "unmatched_lines": None,
    }


def render_table(
    report: dict[str, Any], note: str = "Amounts rounded to cents here; --format json or csv gives them exactly."
) -> str:
    def cents(text: str) -> str:
        if text in ("", None):
            return ""
        return format(Decimal(text).quantize(CENT, ROUND_HALF_EVEN), ",f")

    head = (
        f"Chargeback {report['period'] or '(no lines)'} in {report['currency']}: billed {cents(report['billed'])}, "
        f"{len(report['customers'])} customer(s), unallocated {cents(report['unallocated'])}"
    )
    if report["unmatched_lines"] is not None:
        head += f", {report['unmatched_lines']} line(s) matched no observed resource"
    body = [[r[0], *(cents(v) if i < len(COLUMNS) - 2 else v for i, v in enumerate(r[1:]))] for r in _rows(report)]
    for row in body:
        row[-1] = f"{row[-1]}%" if row[-1] else ""
    cells = [[*COLUMNS[:-1], "margin %"], *body]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(COLUMNS))]
    lines = [head, ""]
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(note)
    return "\n".join(lines)


def main(args: Any, config: Config, observe: Observe | None = None) -> int:
    try:
        report = build_report(
            [Path(p) for p in args.bill],
            config,
            captures=[Path(p) for p in args.capture],
            observe=observe,
            revenue_file=Path(args.revenue) if args.revenue else None,
            currency=args.currency,
        )
    except ReportError as exc:
        print(f"costmesh: {exc}", file=sys.stderr)
        return 2
    for problem in report["problems"]:
        print(f"costmesh: skipped {problem}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    elif args.format == "csv":
        sys.stdout.write(render_csv(report))
    else:
        print(render_table(report))
    return 0
