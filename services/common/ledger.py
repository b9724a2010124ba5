"""Allocated cost and revenue as billing stores them and the API reads them: the allocation categories, one
``Allocation`` row, one ``Revenue`` figure, and their readers for a billing period.

Billing writes the ``allocations`` and ``revenue`` tables (``costmesh.billing.store``); the API and the P&L
(``costmesh.common.pnl``) read them through here, so neither service imports the other. Money is ``Decimal`` exactly as
stored in ``numeric`` columns, never float.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import msgspec

from .usage import CATEGORIES, Category

__all__ = ["CATEGORIES", "Allocation", "Category", "Revenue", "load_allocations", "load_revenue"]


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """A part of one cost line given to one tenant (``""`` when unallocated) by one ``method``.

    ``basis`` names the signal the split used (``busy_us``, ``bytes``, ``tokens_cost``, ``tag:customer``…) so that
    finance can tell measured from modeled.
    """

    line_id: str
    tenant: str
    method: Category
    amount: Decimal
    currency: str
    feature: str = ""
    agent: str = ""
    resource: str = ""
    basis: str = ""


class Revenue(msgspec.Struct, frozen=True):
    """What one customer paid for one billing period (``YYYY-MM``), in one currency."""

    customer: str
    period: str
    amount: Decimal
    currency: str


async def load_revenue(conn: asyncpg.Connection, period: str) -> list[Revenue]:
    """The revenue of one billing period, per customer and currency."""
    rows = await conn.fetch("SELECT * FROM revenue WHERE period = $1 ORDER BY customer, currency", period)
    return [Revenue(r["customer"], r["period"], r["amount"], r["currency"]) for r in rows]


async def load_allocations(conn: asyncpg.Connection, period: str) -> list[Allocation]:
    """Every allocation row of one billing period (the last allocation run's)."""
    rows = await conn.fetch("SELECT * FROM allocations WHERE billing_period = $1", period)
    return [
        Allocation(
            line_id=r["line_id"],
            tenant=r["tenant"],
            method=r["method"],
            amount=r["amount"],
            currency=r["currency"],
            feature=r["feature"],
            agent=r["agent"],
            resource=r["resource"],
            basis=r["basis"],
        )
        for r in rows
    ]
