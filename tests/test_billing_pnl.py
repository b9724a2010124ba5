"""Revenue import and customer P&L: margins, categories, negative margins first, totals that reconcile."""

from __future__ import annotations

from decimal import Decimal

import pytest

from costmesh.billing import store
from costmesh.billing.revenue import RevenueError, read_revenue
from costmesh.common import db, ledger
from costmesh.common.ledger import Allocation, Revenue
from costmesh.common.pnl import customer_pnl


def a(tenant: str, method: str, amount: str, currency: str = "USD") -> Allocation:
    return Allocation(line_id="l", tenant=tenant, method=method, amount=Decimal(amount), currency=currency)  # type: ignore[arg-type]


def test_revenue_csv_with_bad_rows(tmp_path):
    path = tmp_path / "rev.csv"
    path.write_text(
        "customer_id,month,revenue,currency\n"
        "acme,2024-09,100.00,USD\n"
        "acme,2024-09,20.50,usd\n"
        "globex,2024-9,5,USD\n"
        ",2024-09,5,USD\n"
        "initech,2024-09,lots,USD\n"
        "umbrella,2024-09,7.25,EUR\n"
    )
    rows, problems = read_revenue(path)
    assert rows == [
        Revenue("acme", "2024-09", Decimal("120.50"), "USD"),
        Revenue("umbrella", "2024-09", Decimal("7.25"), "EUR"),
    ]
    assert [(p.row, p.column) for p in problems] == [(4, "month"), (5, "customer_id"), (6, "revenue")]
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\n")
    with pytest.raises(RevenueError, match="no customer column"):
        read_revenue(bad)


def test_pnl_orders_negative_margins_first_and_reconciles():
    allocs = [
        a("acme", "direct", "30"),
        a("acme", "propagated", "10.005"),
        a("globex", "trace", "50"),
        a("", "platform", "4"),
        a("", "unallocated", "6"),
        a("initech", "direct", "-1"),  # a credit
    ]
    revenue = [
        Revenue("acme", "2024-09", Decimal("100"), "USD"),
        Revenue("globex", "2024-09", Decimal("40"), "USD"),
        Revenue("hooli", "2024-09", Decimal("9"), "USD"),
        Revenue("acme", "2024-09", Decimal("5"), "EUR"),
    ]
    pnl = customer_pnl(allocs, revenue, "USD")
    assert [c.customer for c in pnl.customers] == ["globex", "initech", "hooli", "acme"]
    globex, initech, hooli, acme = pnl.customers
    assert (globex.margin, globex.margin_pct) == (Decimal("-10"), Decimal("-25.00"))
    assert (acme.cost, acme.margin, acme.margin_pct) == (Decimal("40.005"), Decimal("59.995"), Decimal("60.00"))
    assert acme.by_category == {
        "direct": 30,
        "trace": 0,
        "propagated": Decimal("10.005"),
        "platform": 0,
        "idle": 0,
        "unallocated": 0,
    }
    assert (initech.revenue, initech.margin_pct, hooli.cost) == (0, None, 0)
    assert pnl.not_allocated_by_category == {
        "direct": 0,
        "trace": 0,
        "propagated": 0,
        "platform": 4,
        "idle": 0,
        "unallocated": 6,
    }
    assert sum(c.cost for c in pnl.customers) + pnl.not_allocated == pnl.billed == Decimal("99.005")
    assert [r.currency for r in pnl.skipped_revenue] == ["EUR"]


async def test_revenue_store_replaces(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            await store.replace_revenue(conn, [Revenue("acme", "2024-09", Decimal("1.5"), "USD")])
            await store.replace_revenue(conn, [Revenue("acme", "2024-09", Decimal("2.5"), "USD")])
            assert await ledger.load_revenue(conn, "2024-09") == [Revenue("acme", "2024-09", Decimal("2.5"), "USD")]
    finally:
        await pool.close()
