"""PostgreSQL persistence for billing: imported files, cost lines, allocation rows, revenue.

Reads and writes the tables of schema migrations 100+. Every write that replaces something (a restated billing period,
an allocation run, a revenue import) happens in one transaction, so readers see the old state or the new one, never a
mix. Amounts travel as ``Decimal`` into ``numeric`` columns: exact.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from costmesh.common import allocation_summary
from costmesh.common.usage import HOUR_US, ComputeUse, Consumption, NodeCapacity, QueueUse, hourly_usage

from .model import Allocation, CostLine, ImportResult, Usage, Window
from .revenue import Revenue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_LINE_COLUMNS = (
    "line_id",
    "source",
    "billing_period",
    "charge_start",
    "charge_end",
    "amount",
    "currency",
    "provider",
    "account",
    "service",
    "resource_id",
    "resource_name",
    "resource_type",
    "usage_type",
    "operation",
    "charge_category",
    "description",
    "sku",
    "sku_meter",
    "pricing_unit",
    "region",
    "zone",
    "quantity",
    "unit",
    "tags",
    "import_sha256",
)


def to_dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def to_us(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _line_record(line: CostLine, sha: str) -> tuple:
    return (
        line.line_id,
        line.source,
        line.billing_period,
        to_dt(line.window.start_us),
        to_dt(line.window.end_us),
        line.amount,
        line.currency,
        line.provider,
        line.account,
        line.service,
        line.resource_id,
        line.resource_name,
        line.resource_type,
        line.usage_type,
        line.operation,
        line.charge_category,
        line.description,
        line.sku,
        line.sku_meter,
        line.pricing_unit,
        line.region,
        line.zone,
        line.quantity,
        line.unit,
        json.dumps(line.tags, sort_keys=True),
        sha,
    )


async def _insert_lines(conn: asyncpg.Connection, lines: Sequence[CostLine], sha: str) -> int:
    """Insert lines whose id is new; returns how many were new. A staging table keeps it one COPY + one INSERT."""
    if not lines:
        return 0
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _cost_lines_in (LIKE cost_lines INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await conn.execute("TRUNCATE _cost_lines_in")
    await conn.copy_records_to_table(
        "_cost_lines_in", records=[_line_record(line, sha) for line in lines], columns=_LINE_COLUMNS
    )
    status = await conn.execute(
        "INSERT INTO cost_lines SELECT DISTINCT ON (line_id) * FROM _cost_lines_in ON CONFLICT (line_id) DO NOTHING"
    )
    return int(status.split()[-1])


async def import_file(conn: asyncpg.Connection, result: ImportResult, source: str) -> int:
    """Store a file's good lines once: a file whose content was imported before changes nothing. Returns new lines."""
    async with conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO billing_imports (sha256, file, source, rows, lines, problems) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (sha256) DO NOTHING RETURNING true",
            result.sha256,
            result.file,
            source,
            result.rows,
            len(result.lines),
            len(result.problems),
        )
        if not fresh:
            return 0
        return await _insert_lines(conn, result.lines, result.sha256)


async def replace_period(
    conn: asyncpg.Connection, source: str, period: str, results: Sequence[ImportResult], version: str
) -> int:
    """Replace every line of ``source`` in billing ``period`` with the lines of ``results``, atomically.

    This is how a restated CUR period lands: the old rows disappear in the same transaction that adds the new ones.
    ``version`` (e.g. the manifest's assembly id) identifies the restatement, so applying the same one again is a no-op.
    """
    key = f"{source}|{period}|{version}"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{source}|{period}")
        if await conn.fetchval("SELECT true FROM billing_imports WHERE sha256 = $1", key):
            return 0
        await conn.execute("DELETE FROM cost_lines WHERE source = $1 AND billing_period = $2", source, period)
        await conn.execute("DELETE FROM billing_imports WHERE source = $1 AND file LIKE $2", source, f"{period}|%")
        lines = [line for r in results for line in r.lines if line.billing_period == period]
        await conn.execute(
            "INSERT INTO billing_imports (sha256, file, source, rows, lines, problems) VALUES ($1, $2, $3, $4, $5, $6)",
            key,
            f"{period}|{version}",
            source,
            sum(r.rows for r in results),
            len(lines),
            sum(len(r.problems) for r in results),
        )
        return await _insert_lines(conn, lines, key)


async def has_version(conn: asyncpg.Connection, source: str, period: str, version: str) -> bool:
    """True when this restatement of ``period`` from ``source`` is already the one stored."""
    key = f"{source}|{period}|{version}"
    return bool(await conn.fetchval("SELECT true FROM billing_imports WHERE sha256 = $1", key))


def _row_line(r: asyncpg.Record) -> CostLine:
    return CostLine(
        line_id=r["line_id"],
        source=r["source"],
        billing_period=r["billing_period"],
        window=Window(to_us(r["charge_start"]), to_us(r["charge_end"])),
        amount=r["amount"],
        currency=r["currency"],
        provider=r["provider"],
        account=r["account"],
        service=r["service"],
        resource_id=r["resource_id"],
        resource_name=r["resource_name"],
        resource_type=r["resource_type"],
        usage_type=r["usage_type"],
        operation=r["operation"],
        charge_category=r["charge_category"],
        description=r["description"],
        sku=r["sku"],
        sku_meter=r["sku_meter"],
        pricing_unit=r["pricing_unit"],
        region=r["region"],
        zone=r["zone"],
        quantity=r["quantity"],
        unit=r["unit"],
        tags=json.loads(r["tags"]) if isinstance(r["tags"], str) else dict(r["tags"]),
    )


async def load_lines(conn: asyncpg.Connection, period: str | None = None) -> list[CostLine]:
    rows = await conn.fetch(
        "SELECT * FROM cost_lines WHERE $1::text IS NULL OR billing_period = $1 ORDER BY line_id", period
    )
    return [_row_line(r) for r in rows]


async def periods(conn: asyncpg.Connection) -> list[str]:
    return [r["billing_period"] for r in await conn.fetch("SELECT DISTINCT billing_period FROM cost_lines ORDER BY 1")]


_CALLS_BY_HOUR = """
SELECT hour, tenant, tenant_method, feature, agent, src_workload, dst, protocol, requests, bytes_in, bytes_out,
    busy_us, tokens_in, tokens_out, tokens_cached, tokens_reasoning
FROM consumption_hourly WHERE hour >= $1 AND hour < $2
"""
_QUEUES_BY_HOUR = """
SELECT hour, topic, role, workload, tenant, tenant_method, feature, agent, requests, bytes
FROM queue_hourly WHERE hour >= $1 AND hour < $2
"""
_AI_BY_HOUR = """
SELECT hour, tenant, tenant_method, feature, agent, src_workload, dst, provider, model, requests, tokens_in, tokens_out,
    tokens_cached, tokens_reasoning
FROM ai_usage_hourly WHERE hour >= $1 AND hour < $2
"""
_COMPUTE_BY_HOUR = """
SELECT hour, node, workload, zone, tenant, tenant_method, feature, cpu_usage_us, cpu_request_us, memory_byte_s,
    memory_request_byte_s
FROM compute_hourly WHERE hour >= $1 AND hour < $2 ORDER BY hour, node, workload, tenant, tenant_method, feature
"""
_CAPACITY_BY_HOUR = """
SELECT hour, node, zone, cpu_us, memory_byte_s FROM node_capacity_hourly WHERE hour >= $1 AND hour < $2
ORDER BY hour, node
"""


async def load_consumption(conn: asyncpg.Connection, window: Window, queue_window_s: int = 0) -> Consumption:
    """Consumption in ``window`` from the attributor's hourly rollups only (queue traffic from ``queue_window_s``
    earlier): never from the per-minute tables, so a period allocates the same once its minutes have expired. Bills
    charge by the hour at the finest, so hour rows give the shares minute rows would for hour-aligned charges."""
    lo, hi = _hour_floor(window.start_us), window.end_us
    calls = await conn.fetch(_CALLS_BY_HOUR, to_dt(lo), to_dt(hi))
    queues = await conn.fetch(_QUEUES_BY_HOUR, to_dt(_hour_floor(lo - queue_window_s * 1_000_000)), to_dt(hi))
    ai = await conn.fetch(_AI_BY_HOUR, to_dt(lo), to_dt(hi))
    out = Consumption(
        usage=[hourly_usage(to_us(r["hour"]), {k: v for k, v in r.items() if k != "hour"}) for r in calls],
        queues=[
            QueueUse(
                start_us=to_us(r["hour"]),
                end_us=to_us(r["hour"]) + HOUR_US,
                **{k: v for k, v in r.items() if k != "hour"},
            )
            for r in queues
        ],
        ai=[hourly_usage(to_us(r["hour"]), {k: v for k, v in r.items() if k != "hour"}) for r in ai],
        compute=[
            ComputeUse(start_us=to_us(r["hour"]), end_us=to_us(r["hour"]) + HOUR_US, **_but_hour(r))
            for r in await conn.fetch(_COMPUTE_BY_HOUR, to_dt(lo), to_dt(hi))
        ],
        capacity=[
            NodeCapacity(start_us=to_us(r["hour"]), end_us=to_us(r["hour"]) + HOUR_US, **_but_hour(r))
            for r in await conn.fetch(_CAPACITY_BY_HOUR, to_dt(lo), to_dt(hi))
        ],
    )
    # one order whatever the database returned: the allocation is deterministic in its input
    out.usage.sort(key=_usage_order)
    out.ai.sort(key=_usage_order)
    out.queues.sort(
        key=lambda q: (q.start_us, q.topic, q.role, q.workload, q.tenant, q.tenant_method, q.feature, q.agent)
    )
    return out


def _but_hour(r: asyncpg.Record) -> dict:
    return {k: v for k, v in r.items() if k != "hour"}


def _hour_floor(us: int) -> int:
    return us - us % HOUR_US


def _usage_order(u: Usage) -> tuple:
    return (u.start_us, u.tenant, u.tenant_method, u.feature, u.agent, u.src_workload, u.dst, u.protocol, u.provider,
            u.model)  # fmt: skip


async def replace_allocations(
    conn: asyncpg.Connection, period: str, lines: Sequence[CostLine], allocations: Iterable[Allocation]
) -> int:
    """Make ``allocations`` the result for ``period``: earlier rows of the period go in the same transaction."""
    by_id = {line.line_id: line for line in lines}
    records = [
        (
            period,
            a.line_id,
            a.tenant,
            a.feature,
            a.agent,
            a.method,
            a.basis,
            a.resource,
            by_id[a.line_id].service,
            a.amount,
            a.currency,
            to_dt(by_id[a.line_id].window.start_us),
        )
        for a in allocations
    ]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "allocation|" + period)
        await conn.execute("DELETE FROM allocations WHERE billing_period = $1", period)
        if records:
            await conn.copy_records_to_table(
                "allocations",
                records=records,
                columns=(
                    "billing_period",
                    "line_id",
                    "tenant",
                    "feature",
                    "agent",
                    "method",
                    "basis",
                    "resource",
                    "service",
                    "amount",
                    "currency",
                    "charge_start",
                ),
            )
        await conn.execute(
            "INSERT INTO allocation_runs (billing_period, lines, allocations) VALUES ($1, $2, $3)"
            " ON CONFLICT (billing_period) DO UPDATE SET lines = EXCLUDED.lines,"
            " allocations = EXCLUDED.allocations, run_at = now()",
            period,
            len(lines),
            len(records),
        )
        await allocation_summary.refresh(conn, period)  # the run is complete: the API's summaries follow it
    return len(records)


async def replace_revenue(conn: asyncpg.Connection, rows: Sequence[Revenue]) -> int:
    """Store revenue; a customer's figure for a period and currency is replaced by the newer import."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO revenue (customer, period, currency, amount) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (customer, period, currency) DO UPDATE SET amount = EXCLUDED.amount",
            [(r.customer, r.period, r.currency, r.amount) for r in rows],
        )
    return len(rows)
