"""Summaries of a billing period's allocations, rebuilt once when its allocation run completes, so that the API's
period-wide answers read a few thousand summary rows instead of every allocation row.

Allocations change only when an allocation run replaces a period (``costmesh.billing.store.replace_allocations``, which
calls ``refresh`` in the transaction that writes the run), so the summaries are exact, not approximate: each holds
``sum(amount)`` of the allocation rows of its group, and a sum of those sums is the same ``numeric`` value, at the same
scale, as the sum of the rows (PostgreSQL adds ``numeric`` exactly; a sum's scale is the largest of its terms').

``allocation_summary_runs`` records which run (``allocation_runs.run_at``) each period's summaries were built from. A
reader uses the summaries of a period only while that matches the period's run (``summarized``); a period written by
anything that did not call ``refresh`` is read from ``allocations`` itself, slower but still right.

Tables (migration 201), and who reads them (``costmesh.api.queries``):

- ``allocation_totals``: per dimension (tenant, feature, agent, service, resource, method), key, currency and method:
  the amount and the first and last charge start. Cost grouped by one dimension, the P&L, coverage.
- ``allocation_series``: the same per charge start. Cost over time, cost between two instants.
- ``allocation_consumers``: per resource, the (tenant, feature, agent, method, basis, currency) parts.
  Who consumes a resource.
- ``allocation_resource_tenants``: per resource, tenant and currency. Who consumes a resource, by tenant.
- ``allocation_resources``: per resource and currency, the amount and the number of tenants (not ``""``) consuming
  it. A customer's share of each shared resource.
- ``allocation_resource_lines``: which bill lines pay for a resource.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import asyncpg
import msgspec

#: The dimensions of ``allocation_totals`` and ``allocation_series``: columns of ``allocations`` a cost is grouped by.
DIMENSIONS: Final = ("tenant", "feature", "agent", "service", "resource", "method")
TABLES: Final = (
    "allocation_totals",
    "allocation_series",
    "allocation_consumers",
    "allocation_resource_tenants",
    "allocation_resources",
    "allocation_resource_lines",
)

#: The dimension a row of a ``GROUPING SETS`` result is grouped by (the others are NULL there), and its key.
_DIM = "CASE " + " ".join(f"WHEN GROUPING({d}) = 0 THEN '{d}'" for d in DIMENSIONS[:-1]) + " ELSE 'method' END"
_KEY = f"coalesce({', '.join(DIMENSIONS)})"
#: One statement per table over the period's rows (``$1``): the series reads the allocations once for all six
#: dimensions (one grouping set each; ``method`` is grouped in all of them), the totals are grouped from the series,
#: the per-resource sums from the consumers.
_REBUILD: Final = (
    "INSERT INTO allocation_series (billing_period, dim, key, currency, method, charge_start, amount) "
    f"SELECT $1, {_DIM}, {_KEY}, currency, method, charge_start, sum(amount) FROM allocations "
    "WHERE billing_period = $1 GROUP BY currency, method, charge_start, "
    f"GROUPING SETS ({', '.join(f'({d})' for d in DIMENSIONS[:-1])}, ())",
    "INSERT INTO allocation_totals (billing_period, dim, key, currency, method, amount, first_start, last_start) "
    "SELECT $1, dim, key, currency, method, sum(amount), min(charge_start), max(charge_start) FROM allocation_series "
    "WHERE billing_period = $1 GROUP BY dim, key, currency, method",
    "INSERT INTO allocation_consumers (billing_period, resource, tenant, feature, agent, method, basis, currency, "
    "amount) SELECT $1, resource, tenant, feature, agent, method, basis, currency, sum(amount) "
    "FROM allocations WHERE billing_period = $1 GROUP BY 2, 3, 4, 5, 6, 7, 8",
    "INSERT INTO allocation_resource_tenants (billing_period, resource, tenant, currency, amount) "
    "SELECT $1, resource, tenant, currency, sum(amount) FROM allocation_consumers WHERE billing_period = $1 "
    "GROUP BY 2, 3, 4",
    "INSERT INTO allocation_resources (billing_period, resource, currency, amount, tenants) "
    "SELECT $1, resource, currency, sum(amount), count(*) FILTER (WHERE tenant <> '') FROM allocation_resource_tenants "
    "WHERE billing_period = $1 GROUP BY 2, 3",
    "INSERT INTO allocation_resource_lines (billing_period, resource, line_id) "
    "SELECT DISTINCT $1, resource, line_id FROM allocations WHERE billing_period = $1",
)


async def refresh(conn: asyncpg.Connection, period: str) -> None:
    """Rebuild the summaries of ``period`` from its allocations and mark them as of its current run; call it in the
    transaction that completes the run (after ``allocation_runs`` is written), so readers never see a half."""
    async with conn.transaction():
        for table in TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE billing_period = $1", period)
        for statement in _REBUILD:
            await conn.execute(statement, period)
        await conn.execute(
            "INSERT INTO allocation_summary_runs (billing_period, run_at) "
            "SELECT billing_period, run_at FROM allocation_runs WHERE billing_period = $1 "
            "ON CONFLICT (billing_period) DO UPDATE SET run_at = EXCLUDED.run_at",
            period,
        )


class SummaryState(msgspec.Struct, frozen=True):
    """Which periods' summaries are those of their current run, read in one statement."""

    #: (period, run_at) of every period whose summaries are current: what an answer built from them depends on.
    version: tuple[tuple[str, datetime], ...]
    #: Whether that is every period with a run.
    everything: bool

    def covers(self, period: str | None) -> bool:
        """Whether the summaries answer for ``period`` (``None``: every period)."""
        return self.everything if period is None else any(p == period for p, _at in self.version)


async def summarized(conn: asyncpg.Connection) -> SummaryState:
    rows = await conn.fetch(
        "SELECT r.billing_period, r.run_at, s.run_at IS NOT DISTINCT FROM r.run_at AS current FROM allocation_runs r "
        "LEFT JOIN allocation_summary_runs s USING (billing_period) ORDER BY 1"
    )
    version = tuple((r["billing_period"], r["run_at"]) for r in rows if r["current"])
    return SummaryState(version=version, everything=len(version) == len(rows))
