"""Customer P&L: revenue, allocated cost by category, margin and margin %, negative margins first. Pure.

Reads allocations and revenue of one currency (``ledger``: the API from the database, ``costmesh report`` from its
own allocation run); emits ``CustomerPnl`` rows plus what no customer carries (platform and
unallocated), so that customers' cost + not allocated = billed, exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import msgspec

from .ledger import CATEGORIES, Allocation, Revenue

ZERO = Decimal(0)


class CustomerPnl(msgspec.Struct, kw_only=True):
    customer: str
    revenue: Decimal
    cost: Decimal
    by_category: dict[str, Decimal]
    margin: Decimal
    #: Margin as a percentage of revenue, two decimals; None without revenue.
    margin_pct: Decimal | None


class Pnl(msgspec.Struct, kw_only=True):
    currency: str
    billed: Decimal
    customers: list[CustomerPnl]
    #: Cost no customer carries, by category (``platform``, ``idle`` and ``unallocated``); ``not_allocated`` is their
    #: sum.
    not_allocated_by_category: dict[str, Decimal]
    not_allocated: Decimal
    revenue: Decimal
    #: Revenue rows in another currency than the costs (not converted; listed so they are not silently lost).
    skipped_revenue: list[Revenue] = []


def customer_pnl(allocations: Iterable[Allocation], revenue: Iterable[Revenue], currency: str) -> Pnl:
    cost: dict[str, dict[str, Decimal]] = {}
    rest = dict.fromkeys(CATEGORIES, ZERO)
    billed = ZERO
    for a in allocations:
        if a.currency != currency:
            raise ValueError(f"allocation of line {a.line_id} is in {a.currency}, not {currency}")
        billed += a.amount
        if a.tenant:
            cats = cost.setdefault(a.tenant, dict.fromkeys(CATEGORIES, ZERO))
            cats[a.method] += a.amount
        else:
            rest[a.method] += a.amount
    income: dict[str, Decimal] = {}
    skipped = []
    for r in revenue:
        if r.currency != currency:
            skipped.append(r)
            continue
        income[r.customer] = income.get(r.customer, ZERO) + r.amount
    rows = []
    for customer in sorted(set(cost) | set(income)):
        cats = cost.get(customer, dict.fromkeys(CATEGORIES, ZERO))
        total = sum(cats.values(), ZERO)
        rev = income.get(customer, ZERO)
        margin = rev - total
        pct = (margin * 100 / rev).quantize(Decimal("0.01")) if rev else None
        rows.append(
            CustomerPnl(customer=customer, revenue=rev, cost=total, by_category=cats, margin=margin, margin_pct=pct)
        )
    rows.sort(key=lambda r: (r.margin >= 0, r.margin, r.customer))
    return Pnl(
        currency=currency,
        billed=billed,
        customers=rows,
        not_allocated_by_category=rest,
        not_allocated=sum(rest.values(), ZERO),
        revenue=sum(income.values(), ZERO),
        skipped_revenue=skipped,
    )
