"""Billing service: imports the configured bill sources and revenue on a schedule and allocates each billing period.

Reads: ``config.billing.sources`` (folders of FOCUS/CUR files, S3 exports), ``config.billing.revenue_files``, the
attributor's hourly rollups (``store.load_consumption``). Writes: ``cost_lines``, ``revenue``, and per period the
``allocations`` rows (each with its method) that ``/v1/cost`` and ``/v1/pnl`` read. Each run of a period replaces its
earlier result in one transaction and is deterministic, so re-running (new traffic, restated bills) is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from costmesh.common import db
from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.prices import PriceTable
from costmesh.common.runtime import ServiceContext

from . import store
from .importer import import_source
from .model import Window
from .pipeline import period_window, run, span
from .revenue import RevenueError, read_revenue

log = logging.getLogger(__name__)


async def import_all(conn: asyncpg.Connection, config: Config) -> set[str]:
    """Import every source and revenue file; returns the billing periods whose lines changed."""
    changed: set[str] = set()
    for source in config.billing.sources:
        changed |= await import_source(conn, source)
    for path in config.billing.revenue_files:
        try:
            rows, _problems = read_revenue(path)
        except RevenueError as exc:
            ERRORS.labels("billing", "revenue_file").inc()
            log.error("%s", exc)
            continue
        await store.replace_revenue(conn, rows)
    return changed


async def allocate_period(
    conn: asyncpg.Connection, period: str, config: Config, prices: PriceTable | None = None
) -> int:
    """Allocate one billing period from what is stored; returns the number of allocation rows written."""
    lines = await store.load_lines(conn, period)
    month = period_window(period)
    lines_span = span(lines) or month
    window = Window(min(month.start_us, lines_span.start_us), max(month.end_us, lines_span.end_us))
    consumption = await store.load_consumption(conn, window, config.attributor.queue_window_s)
    result = run(lines, consumption, config, window=month, prices=prices)
    written = await store.replace_allocations(conn, period, result.lines, result.allocations)
    log.info(
        "allocated billing period",
        extra={"period": period, "lines": len(result.lines), "rows": written, "unmatched": len(result.unmatched)},
    )
    return written


async def run_once(pool: asyncpg.Pool, config: Config, first: bool, prices: PriceTable | None = None) -> list[str]:
    """One cycle: import, then allocate the changed periods and the two latest (where traffic still arrives)."""
    async with pool.acquire() as conn:
        changed = await import_all(conn, config)
        known = await store.periods(conn)
        todo = set(known) if first else (changed | set(known[-2:]))
        for period in sorted(todo):
            await allocate_period(conn, period, config, prices)
    return sorted(todo)


async def main(ctx: ServiceContext) -> None:
    pool = await db.create_pool(ctx.dsn)
    try:
        await db.migrate(pool)
        ctx.health.update(allocation_runs=0, periods=[])
        ctx.ready = True
        if not ctx.config.billing.sources:
            log.info("no bill sources configured; allocating what is stored on each cycle")
        first = True
        while not ctx.stopping.is_set():
            try:
                done = await run_once(pool, ctx.config, first)
                first = False
                ctx.health["allocation_runs"] = int(ctx.health["allocation_runs"]) + 1  # type: ignore[call-overload]
                ctx.health["periods"] = done
            except db.TRANSIENT_ERRORS as exc:
                log.warning("database unavailable, retrying next cycle", extra={"why": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), ctx.config.billing.interval_s)
    finally:
        await pool.close()
