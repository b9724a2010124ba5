"""The background job: platform work for no tenant (a daily-stats rollup and a retention scan), every
``cron_every_s`` seconds. costmesh is told it is background work, so what it uses is modeled as platform."""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..database import DbPools
from ..truth import Served
from .base import Workload, elapsed_us

ROLLUP = """
INSERT INTO daily_stats (day, tenant, orders, revenue_cents)
SELECT current_date, tenant, count(*), coalesce(sum(total_cents), 0) FROM orders GROUP BY tenant
ON CONFLICT (day, tenant) DO UPDATE SET orders = EXCLUDED.orders, revenue_cents = EXCLUDED.revenue_cents
"""
RETENTION = "SELECT count(*) FROM events WHERE at < now() - interval '60 days'"


async def main(w: Workload) -> None:
    db = DbPools(w.plan, w.truth, size=1)
    w.on_ready()
    try:
        while not w.stopping.is_set():
            start = time.perf_counter_ns()
            async with (await db.pool("")).acquire() as conn:
                await conn.execute(ROLLUP)
                await conn.fetchval(RETENTION)
            w.truth.write(Served(w.name, "", "rollup", elapsed_us(start)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.stopping.wait(), w.plan.cron_every_s)
    finally:
        await db.close()
