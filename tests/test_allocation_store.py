"""Allocation rows in PostgreSQL: a run for a period replaces the earlier one whole, and sums match the bill."""

from __future__ import annotations

from decimal import Decimal

from costmesh.billing import store
from costmesh.billing.allocate import Allocator
from costmesh.billing.focus import read_focus
from costmesh.common import db

from .conftest import SHARED_DATA

ALL = SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_1000_all-providers.csv"


async def test_rerun_replaces_the_period(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        result = read_focus(ALL)
        async with pool.acquire() as conn:
            await store.import_file(conn, result, "focus")
            lines = await store.load_lines(conn, "2024-09")
            allocs = Allocator([], tag_keys=("business_unit",)).allocate_all(lines, {})
            first = await store.replace_allocations(conn, "2024-09", lines, allocs)
            again = await store.replace_allocations(conn, "2024-09", lines, allocs)
            assert first == again == len(allocs)
            n, total = await conn.fetchrow(
                "SELECT count(*), sum(amount) FROM allocations WHERE billing_period = $1", "2024-09"
            )
            assert n == len(allocs)
            assert total == sum((x.amount for x in lines), Decimal(0))
            methods = {r[0] for r in await conn.fetch("SELECT DISTINCT method FROM allocations")}
            assert methods == {"direct", "unallocated"}
            # per line, allocation rows sum to the billed amount exactly, in the database too
            bad = await conn.fetchval(
                "SELECT count(*) FROM cost_lines c JOIN (SELECT line_id, sum(amount) s FROM allocations GROUP BY 1) a"
                " USING (line_id) WHERE c.amount <> a.s"
            )
            assert bad == 0
    finally:
        await pool.close()
