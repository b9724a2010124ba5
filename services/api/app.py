"""API service (aiohttp): usage and cost queries over the consumption store, plus ``/metrics`` and ``/healthz``.

Reads: PostgreSQL. Every query parameter is checked: an unknown parameter or a bad value is a 400 that names it, so a
typo never silently returns the unfiltered answer.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from decimal import Decimal

import asyncpg
from aiohttp import web

from costmesh.common import db
from costmesh.common.metrics import ERRORS, metrics_routes
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import COUNTERS

log = logging.getLogger(__name__)

POOL = web.AppKey("pool", asyncpg.Pool)

#: Dimensions a usage query may group by; the values are the column names (never interpolated from the request).
GROUPS = {
    "tenant": "tenant",
    "feature": "feature",
    "agent": "agent",
    "src_workload": "src_workload",
    "dst": "dst",
    "protocol": "protocol",
    "tenant_method": "tenant_method",
}
MEASURES = COUNTERS


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        ERRORS.labels("api", "bad_request").inc()
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _params(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return dict(request.query)


def _time(params: dict[str, str], name: str) -> datetime | None:
    if name not in params:
        return None
    try:
        value = datetime.fromisoformat(params[name].replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"parameter {name!r}: not an ISO 8601 time: {params[name]!r}") from None
    if value.tzinfo is None:
        raise BadRequest(f"parameter {name!r}: give a time zone (e.g. Z)")
    return value


async def usage(request: web.Request) -> web.Response:
    """``GET /v1/usage?group_by=tenant[&from=ISO][&to=ISO]``: consumption summed per group."""
    params = _params(request, {"group_by", "from", "to"})
    group = params.get("group_by", "tenant")
    if group not in GROUPS:
        raise BadRequest(f"parameter 'group_by': unknown dimension {group!r}; one of {', '.join(GROUPS)}")
    start, end = _time(params, "from"), _time(params, "to")
    column = GROUPS[group]
    sums = ", ".join(f"sum({m})::bigint AS {m}" for m in MEASURES)
    sql = (
        f"SELECT {column} AS key, {sums} FROM consumption_minute "
        "WHERE ($1::timestamptz IS NULL OR minute >= $1) AND ($2::timestamptz IS NULL OR minute < $2) "
        f"GROUP BY {column} ORDER BY requests DESC, key"
    )
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, start, end)
    return web.json_response(
        {"group_by": group, "rows": [{group: r["key"], **{m: r[m] for m in MEASURES}} for r in rows]}
    )


async def ingest(request: web.Request) -> web.Response:
    """``GET /v1/ingest``: how many batches and records the attributor has applied (for supervisors and demos)."""
    _params(request, set())
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT count(*) AS batches, coalesce(sum(records), 0)::bigint AS records FROM applied_batches"
        )
    return web.json_response({"applied_batches": row["batches"], "applied_records": row["records"]})


#: Dimensions a cost query may group by → column of ``allocations`` (never interpolated from the request).
COST_GROUPS = {
    "tenant": "tenant",
    "feature": "feature",
    "agent": "agent",
    "service": "service",
    "resource": "resource",
    "method": "method",
}
_PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _period(params: dict[str, str], required: bool = False) -> str | None:
    period = params.get("period")
    if period is None:
        if required:
            raise BadRequest("parameter 'period' is required (YYYY-MM)")
        return None
    if not _PERIOD_RE.match(period):
        raise BadRequest(f"parameter 'period': not a YYYY-MM billing period: {period!r}")
    return period


async def cost(request: web.Request) -> web.Response:
    """``GET /v1/cost?group_by=tenant|feature|agent|service|resource|method[&period=YYYY-MM][&from=ISO][&to=ISO]``.

    Allocated cost per group and currency, split by allocation method; amounts are exact decimal strings.
    """
    params = _params(request, {"group_by", "period", "from", "to"})
    group = params.get("group_by", "tenant")
    if group not in COST_GROUPS:
        raise BadRequest(f"parameter 'group_by': unknown dimension {group!r}; one of {', '.join(COST_GROUPS)}")
    period = _period(params)
    start, end = _time(params, "from"), _time(params, "to")
    column = COST_GROUPS[group]
    sql = (
        f"SELECT {column} AS key, currency, method, sum(amount) AS amount FROM allocations "
        "WHERE ($1::text IS NULL OR billing_period = $1) AND ($2::timestamptz IS NULL OR charge_start >= $2) "
        "AND ($3::timestamptz IS NULL OR charge_start < $3) "
        f"GROUP BY {column}, currency, method ORDER BY 1, 2, 3"
    )
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, period, start, end)
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        entry = out.setdefault(
            (r["key"], r["currency"]),
            {group: r["key"], "currency": r["currency"], "cost": Decimal(0), "by_method": {}},
        )
        entry["cost"] += r["amount"]
        entry["by_method"][r["method"]] = format(r["amount"], "f")
    result = sorted(out.values(), key=lambda e: (-e["cost"], e[group], e["currency"]))
    for entry in result:
        entry["cost"] = format(entry["cost"], "f")
    return web.json_response({"group_by": group, "period": period, "rows": result})


async def pnl(request: web.Request) -> web.Response:
    """``GET /v1/pnl?period=YYYY-MM[&currency=USD]``: customer P&L, negative margins first; amounts as strings."""
    from costmesh.common import ledger
    from costmesh.common.pnl import customer_pnl

    params = _params(request, {"period", "currency"})
    period = _period(params, required=True)
    assert period is not None
    currency = params.get("currency", "USD").upper()
    if not (len(currency) == 3 and currency.isalpha()):
        raise BadRequest(f"parameter 'currency': not a currency code: {currency!r}")
    async with request.app[POOL].acquire() as conn:
        allocations = [a for a in await ledger.load_allocations(conn, period) if a.currency == currency]
        revenue = await ledger.load_revenue(conn, period)
    report = customer_pnl(allocations, revenue, currency)

    def s(value: Decimal | None) -> str | None:
        return None if value is None else format(value, "f")

    return web.json_response(
        {
            "period": period,
            "currency": currency,
            "billed": s(report.billed),
            "revenue": s(report.revenue),
            "unallocated": s(report.not_allocated),
            "unallocated_by_category": {k: s(v) for k, v in report.not_allocated_by_category.items()},
            "customers": [
                {
                    "customer": c.customer,
                    "revenue": s(c.revenue),
                    "cost": s(c.cost),
                    "by_category": {k: s(v) for k, v in c.by_category.items()},
                    "margin": s(c.margin),
                    "margin_pct": s(c.margin_pct),
                }
                for c in report.customers
            ],
        }
    )


async def graph(request: web.Request) -> web.Response:
    """``GET /v1/graph[?at=ISO][&window_s=300][&idle_s=3600]``: the live dependency graph (common.graph)."""
    from costmesh.common.graph import live_graph

    params = _params(request, {"at", "window_s", "idle_s"})
    numbers = {}
    for name, default in (("window_s", 300), ("idle_s", 3600)):
        raw = params.get(name, str(default))
        if not raw.isdigit() or not 0 < int(raw) <= 400 * 86400:
            raise BadRequest(f"parameter {name!r}: a whole number of seconds between 1 and 34560000, not {raw!r}")
        numbers[name] = int(raw)
    async with request.app[POOL].acquire() as conn:
        body = await live_graph(conn, _time(params, "at"), numbers["window_s"], numbers["idle_s"])
    return web.json_response(body)


AI_GROUPS = {"tenant": "tenant", "feature": "feature", "agent": "agent", "provider": "provider", "model": "model"}


async def ai_cost(request: web.Request) -> web.Response:
    """``GET /v1/ai-cost?group_by=tenant[&from=ISO][&to=ISO]``: AI token cost (integer micro-dollars, priced by the
    attributor minutes after the calls) and tokens per group."""
    params = _params(request, {"group_by", "from", "to"})
    group = params.get("group_by", "tenant")
    if group not in AI_GROUPS:
        raise BadRequest(f"parameter 'group_by': unknown dimension {group!r}; one of {', '.join(AI_GROUPS)}")
    start, end = _time(params, "from"), _time(params, "to")
    column = AI_GROUPS[group]
    sql = (
        f"SELECT {column} AS key, sum(cost_micros)::bigint AS cost_micros, sum(requests)::bigint AS requests, "
        "sum(tokens_in)::bigint AS tokens_in, sum(tokens_out)::bigint AS tokens_out, "
        "sum(tokens_cached)::bigint AS tokens_cached, sum(tokens_reasoning)::bigint AS tokens_reasoning "
        "FROM ai_usage_minute WHERE ($1::timestamptz IS NULL OR minute >= $1) AND "
        f"($2::timestamptz IS NULL OR minute < $2) GROUP BY {column} ORDER BY cost_micros DESC, key"
    )
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(sql, start, end)
    fields = ("cost_micros", "requests", "tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning")
    return web.json_response(
        {"group_by": group, "rows": [{group: r["key"], **{f: r[f] for f in fields}} for r in rows]}
    )


def make_app(pool: asyncpg.Pool, ctx: ServiceContext) -> web.Application:
    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/v1/ingest", ingest)
    app.router.add_get("/v1/cost", cost)
    app.router.add_get("/v1/pnl", pnl)
    app.router.add_get("/v1/graph", graph)
    app.router.add_get("/v1/ai-cost", ai_cost)
    metrics_routes(app, ctx.health_state)
    return app


async def main(ctx: ServiceContext) -> None:
    pool = await db.create_pool(ctx.dsn)
    await db.migrate(pool)
    runner = web.AppRunner(make_app(pool, ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctx.config.api.host, ctx.config.api.port)
    await site.start()
    log.info("api listening", extra={"host": ctx.config.api.host, "port": ctx.config.api.port})
    ctx.ready = True
    try:
        await ctx.stopping.wait()
    finally:
        await runner.cleanup()
        await pool.close()
