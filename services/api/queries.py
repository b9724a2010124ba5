"""The API's reads: SQL over the store, answered as the types of ``answers``.

Reads: ``allocations`` and ``cost_lines`` (billing), ``revenue``, ``allocation_runs``, ``billing_imports``,
``consumption_minute`` with its rollups ``consumption_hourly`` (settled whole hours; see ``consumption_parts``),
``ai_usage_minute``, ``alert_state`` and the graph tables. Sums are done by PostgreSQL in ``numeric`` (exact); column
names are never taken from a request (every grouping goes through a fixed mapping).

The indexes these queries rely on are migration 200 (``costmesh.common.migrations``); ``loadtests/bench_api.py``
measures them over 1 M consumption rows and 100 k allocation rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from costmesh.common.graph import live_graph
from costmesh.common.ledger import Allocation, Revenue
from costmesh.common.pnl import customer_pnl
from costmesh.common.schemas import COUNTERS

from . import answers as a
from .params import BadRequest

ZERO = Decimal(0)
METHODS: Final = ("direct", "trace", "propagated", "platform", "idle", "unallocated")
#: At most this many buckets in one series (e.g. 41 days of hours); more is a 400 asking for a coarser step.
MAX_BUCKETS = 1000


class Sql:
    """A parameter list that hands out ``$n`` placeholders, so conditions compose without counting by hand."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def any_of(self, column: str, values: Sequence[str]) -> str:
        return f"{column} = ANY({self(list(values))}::text[])"


def pct(part: Decimal, whole: Decimal) -> Decimal:
    """``part`` in percent of ``whole``, two decimals (0 of nothing is 0)."""
    return (part * 100 / whole).quantize(Decimal("0.01")) if whole else Decimal("0.00")


# -- time buckets ---------------------------------------------------------------------------------------------------


def floor_to(t: datetime, step: a.Step) -> datetime:
    t = t.astimezone(UTC)
    if step == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if step == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_bucket(t: datetime, step: a.Step) -> datetime:
    if step == "hour":
        return t + timedelta(hours=1)
    if step == "day":
        return t + timedelta(days=1)
    return t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)


def buckets(start: datetime, end: datetime, step: a.Step) -> list[datetime]:
    """Bucket starts covering ``[start, end)``; a 400 when there would be more than ``MAX_BUCKETS``."""
    out = []
    t = floor_to(start, step)
    while t < end:
        out.append(t)
        if len(out) > MAX_BUCKETS:
            raise BadRequest(
                f"parameter 'step': more than {MAX_BUCKETS} {step}s between from and to; use a coarser step"
            )
        t = next_bucket(t, step)
    return out


def month_bounds(period: str) -> tuple[datetime, datetime]:
    start = datetime(int(period[:4]), int(period[5:7]), 1, tzinfo=UTC)
    return start, next_bucket(start, "month")


# -- conditions on allocations ----------------------------------------------------------------------------------------


def allocation_where(
    q: Sql,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
    alias: str = "",
) -> str:
    """``WHERE`` over ``allocations``: billing period, charge start in ``[start, end)``, and filters (each a list of
    accepted values of a column of the same name: tenant, feature, agent, service, resource, method)."""
    col = f"{alias}." if alias else ""
    parts = ["true"]
    if period is not None:
        parts.append(f"{col}billing_period = {q(period)}")
    if start is not None:
        parts.append(f"{col}charge_start >= {q(start)}")
    if end is not None:
        parts.append(f"{col}charge_start < {q(end)}")
    for name, values in filters.items():
        parts.append(q.any_of(col + name, values))
    return " AND ".join(parts)


def _bucket_sql(q: Sql, step: a.Step, column: str = "charge_start") -> str:
    return f"date_trunc({q(step)}, {column}, 'UTC')"


def _series(points: Mapping[datetime, Decimal], grid: Sequence[datetime]) -> list[Decimal]:
    return [points.get(b, ZERO) for b in grid]


# -- allocated cost ---------------------------------------------------------------------------------------------------

#: ``group_by`` → column of ``allocations``.
COST_GROUPS: Final = {g: g for g in ("tenant", "feature", "agent", "service", "resource", "method")}


async def cost(
    conn: asyncpg.Connection,
    group: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step | None,
    filters: Mapping[str, Sequence[str]],
    limit: int | None,
) -> a.CostAnswer:
    column = COST_GROUPS[group]
    q = Sql()
    where = allocation_where(q, period, start, end, filters)
    rows = await conn.fetch(
        f"SELECT {column} AS key, currency, method, sum(amount) AS amount, min(charge_start) AS first, "
        f"max(charge_start) AS last FROM allocations WHERE {where} GROUP BY 1, 2, 3",
        *q.args,
    )
    groups: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(dict)
    totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in rows:
        groups[(r["key"], r["currency"])][r["method"]] = r["amount"]
        totals[r["currency"]][r["method"]] += r["amount"]
    ranked = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values(), ZERO), kv[0]))
    kept = ranked[:limit] if limit else ranked
    out_rows = [
        a.CostRow(**{group: key}, currency=cur, cost=sum(m.values(), ZERO), by_method=dict(sorted(m.items())))
        for (key, cur), m in kept
    ]
    out_totals = [
        a.CostTotal(currency=cur, cost=sum(m.values(), ZERO), by_method=dict(sorted(m.items())))
        for cur, m in sorted(totals.items())
    ]
    answer = a.CostAnswer(
        group_by=group, period=period, from_=start, to=end, step=step, rows=out_rows, totals=out_totals
    )
    answer.rows_left_out = len(ranked) - len(kept)
    if step is None or not rows:
        if step is not None:
            answer.buckets = []
            for row in out_rows:
                row.series = []
        return answer
    lo = start or min(r["first"] for r in rows)
    hi = end or next_bucket(floor_to(max(r["last"] for r in rows), step), step)
    if start is None and period is not None:
        lo = min(lo, month_bounds(period)[0])
    grid = buckets(lo, hi, step)
    answer.from_, answer.to, answer.buckets = grid[0], hi, grid
    q = Sql()
    where = allocation_where(q, period, start, end, filters)
    bucket = _bucket_sql(q, step)
    keys = [key for (key, _cur), _m in kept]
    series = await conn.fetch(
        f"SELECT {column} = ANY({q(keys)}::text[]) AS kept, CASE WHEN {column} = ANY({q(keys)}::text[]) THEN "
        f"{column} END AS key, currency, {bucket} AS bucket, sum(amount) AS amount FROM allocations "
        f"WHERE {where} GROUP BY 1, 2, 3, 4",
        *q.args,
    )
    per_row: dict[tuple[str, str], dict[datetime, Decimal]] = defaultdict(dict)
    per_currency: dict[str, dict[datetime, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for r in series:
        if r["kept"]:
            per_row[(r["key"], r["currency"])][r["bucket"]] = r["amount"]
        per_currency[r["currency"]][r["bucket"]] += r["amount"]
    for row, ((key, cur), _m) in zip(out_rows, kept, strict=True):
        row.series = _series(per_row[(key, cur)], grid)
    for total in out_totals:
        total.series = _series(per_currency[total.currency], grid)
    return answer


async def pnl(conn: asyncpg.Connection, period: str, currency: str, tenants: Sequence[str]) -> a.PnlAnswer:
    """Customer P&L through the one P&L rule (``customer_pnl``), fed with the period's allocations summed per tenant
    and method by the database (the same sums as row by row, without loading every row)."""

    q = Sql()
    where = allocation_where(
        q, period, None, None, {"currency": [currency], **({"tenant": tenants} if tenants else {})}
    )
    sums = await conn.fetch(
        f"SELECT tenant, method, sum(amount) AS amount FROM allocations WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2",
        *q.args,
    )
    q = Sql()
    cond = f"period = {q(period)}" + (f" AND {q.any_of('customer', tenants)}" if tenants else "")
    income = await conn.fetch(f"SELECT customer, period, amount, currency FROM revenue WHERE {cond}", *q.args)
    report = customer_pnl(
        (
            Allocation(line_id="", tenant=r["tenant"], method=r["method"], amount=r["amount"], currency=currency)
            for r in sums
        ),
        (Revenue(r["customer"], r["period"], r["amount"], r["currency"]) for r in income),
        currency,
    )
    return a.PnlAnswer(
        period=period,
        currency=currency,
        billed=report.billed,
        revenue=report.revenue,
        unallocated=report.not_allocated,
        unallocated_by_category=report.not_allocated_by_category,
        customers=[
            a.CustomerPnlRow(
                customer=c.customer,
                revenue=c.revenue,
                cost=c.cost,
                by_category=c.by_category,
                margin=c.margin,
                margin_pct=c.margin_pct,
            )
            for c in report.customers
        ],
    )


async def revenue(conn: asyncpg.Connection, period: str | None, tenants: Sequence[str]) -> a.RevenueAnswer:
    q = Sql()
    parts = ["true"]
    if period is not None:
        parts.append(f"period = {q(period)}")
    if tenants:
        parts.append(q.any_of("customer", tenants))
    rows = await conn.fetch(
        f"SELECT customer, period, currency, amount FROM revenue WHERE {' AND '.join(parts)} "
        "ORDER BY period DESC, customer, currency",
        *q.args,
    )
    return a.RevenueAnswer(period=period, rows=[a.RevenueRow(**dict(r)) for r in rows])


def _slices(parts: Mapping[tuple[str, str], Decimal], totals: Mapping[str, Decimal]) -> list[a.Slice]:
    out = [
        a.Slice(key=key, currency=cur, amount=amount, share_pct=pct(amount, totals[cur]))
        for (key, cur), amount in parts.items()
    ]
    out.sort(key=lambda s: (s.currency, -s.amount, s.key))
    return out


async def customer(
    conn: asyncpg.Connection,
    tenant: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step,
    filters: Mapping[str, Sequence[str]],
    top: int = 10,
) -> a.CustomerAnswer | None:
    """One customer's cost taken apart; ``None`` when the customer has no allocated cost in the range."""
    q = Sql()
    where = allocation_where(q, period, start, end, {**filters, "tenant": [tenant]})
    rows = await conn.fetch(
        "SELECT resource, service, feature, agent, method, basis, currency, sum(amount) AS amount, "
        f"min(charge_start) AS first, max(charge_start) AS last FROM allocations WHERE {where} "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7",
        *q.args,
    )
    if not rows:
        return None
    by_method_total: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    facets: dict[str, dict[tuple[str, str], Decimal]] = {
        f: defaultdict(Decimal) for f in ("resource", "service", "feature", "agent", "method")
    }
    for r in rows:
        by_method_total[r["currency"]][r["method"]] += r["amount"]
        for f, parts in facets.items():
            parts[(r[f], r["currency"])] += r["amount"]
    totals = {cur: sum(m.values(), ZERO) for cur, m in by_method_total.items()}
    drivers = sorted(rows, key=lambda r: (-r["amount"], r["resource"], r["feature"], r["agent"], r["method"]))[:top]

    resources = sorted({r["resource"] for r in rows if r["resource"]})
    q = Sql()
    where = allocation_where(q, period, start, end, {"resource": resources})
    shared = await conn.fetch(
        "SELECT resource, currency, sum(amount) AS amount, count(DISTINCT tenant) FILTER (WHERE tenant <> '') AS "
        f"tenants FROM allocations WHERE {where} GROUP BY 1, 2",
        *q.args,
    )
    own = facets["resource"]
    shared_rows = [
        a.SharedResource(
            resource=s["resource"],
            currency=s["currency"],
            amount=own[(s["resource"], s["currency"])],
            resource_cost=s["amount"],
            share_pct=pct(own[(s["resource"], s["currency"])], s["amount"]),
            tenants=s["tenants"],
        )
        for s in shared
        if s["tenants"] > 1 and (s["resource"], s["currency"]) in own
    ]
    shared_rows.sort(key=lambda s: (-s.amount, s.resource))

    lo = start or (month_bounds(period)[0] if period else floor_to(min(r["first"] for r in rows), step))
    hi = end or (month_bounds(period)[1] if period else next_bucket(floor_to(max(r["last"] for r in rows), step), step))
    grid = buckets(lo, hi, step)
    q = Sql()
    where = allocation_where(q, period, start, end, {**filters, "tenant": [tenant]})
    points = await conn.fetch(
        f"SELECT resource, currency, {_bucket_sql(q, step)} AS bucket, sum(amount) AS amount FROM allocations "
        f"WHERE {where} GROUP BY 1, 2, 3",
        *q.args,
    )
    largest = {key for (key, _cur), _amt in sorted(own.items(), key=lambda kv: -kv[1])[:5]}
    series: dict[tuple[str, str], dict[datetime, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for p in points:
        key = p["resource"] if p["resource"] in largest else "(other)"
        series[(key or "(unmatched)", p["currency"])][p["bucket"]] += p["amount"]

    operations = await top_operations(conn, tenant, lo, hi, top)
    return a.CustomerAnswer(
        customer=tenant,
        period=period,
        from_=lo,
        to=hi,
        totals=[
            a.CostTotal(currency=cur, cost=totals[cur], by_method=dict(sorted(m.items())))
            for cur, m in sorted(by_method_total.items())
        ],
        by_resource=_slices(facets["resource"], totals),
        by_service=_slices(facets["service"], totals),
        by_feature=_slices(facets["feature"], totals),
        by_agent=_slices(facets["agent"], totals),
        by_method=_slices(facets["method"], totals),
        drivers=[
            a.Driver(
                resource=r["resource"],
                service=r["service"],
                feature=r["feature"],
                agent=r["agent"],
                method=r["method"],
                basis=r["basis"],
                currency=r["currency"],
                amount=r["amount"],
                share_pct=pct(r["amount"], totals[r["currency"]]),
            )
            for r in drivers
        ],
        shared_resources=shared_rows,
        operations=operations,
        step=step,
        buckets=grid,
        series=[
            a.Series(key=key, currency=cur, values=_series(points_of, grid))
            for (key, cur), points_of in sorted(series.items(), key=lambda kv: -sum(kv[1].values(), ZERO))
        ],
    )


async def resource(
    conn: asyncpg.Connection,
    name: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
    limit: int,
) -> a.ResourceAnswer | None:
    q = Sql()
    where = allocation_where(q, period, start, end, {**filters, "resource": [name]})
    rows = await conn.fetch(
        "SELECT tenant, feature, agent, method, basis, currency, sum(amount) AS amount FROM allocations "
        f"WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6",
        *q.args,
    )
    if not rows:
        return None
    by_method: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    by_tenant: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for r in rows:
        by_method[r["currency"]][r["method"]] += r["amount"]
        by_tenant[(r["tenant"], r["currency"])] += r["amount"]
    totals = {cur: sum(m.values(), ZERO) for cur, m in by_method.items()}
    consumers = sorted(rows, key=lambda r: (r["currency"], -r["amount"], r["tenant"], r["feature"], r["agent"]))
    lines = await conn.fetch(
        "SELECT c.line_id, c.billing_period, c.service, c.resource_id, c.usage_type, c.description, c.currency, "
        f"c.amount FROM cost_lines c WHERE c.line_id IN (SELECT line_id FROM allocations WHERE {where}) "
        f"ORDER BY c.amount DESC, c.line_id LIMIT {int(limit)}",
        *q.args,
    )
    return a.ResourceAnswer(
        resource=name,
        period=period,
        totals=[
            a.CostTotal(currency=cur, cost=totals[cur], by_method=dict(sorted(m.items())))
            for cur, m in sorted(by_method.items())
        ],
        consumers=[
            a.Consumer(
                tenant=r["tenant"],
                feature=r["feature"],
                agent=r["agent"],
                method=r["method"],
                basis=r["basis"],
                currency=r["currency"],
                amount=r["amount"],
                share_pct=pct(r["amount"], totals[r["currency"]]),
            )
            for r in consumers[:limit]
        ],
        by_tenant=_slices(by_tenant, totals),
        lines=[a.BillLine(**dict(r)) for r in lines],
    )


_UNMATCHED_REASON = "no observed resource matches this line"


async def coverage(
    conn: asyncpg.Connection, period: str | None, filters: Mapping[str, Sequence[str]], limit: int
) -> a.CoverageAnswer:
    """Per period and currency: attributed (direct + trace) / propagated / modeled (platform) / unallocated, and the
    lines that carry unallocated cost. A line is *unmatched* when its allocation names no resource and is
    unallocated whole."""
    q = Sql()
    where = allocation_where(q, period, None, None, filters)
    sums = await conn.fetch(
        "SELECT billing_period, currency, method, sum(amount) AS amount, "
        "sum(amount) FILTER (WHERE resource = '') AS unmatched FROM allocations "
        f"WHERE {where} GROUP BY 1, 2, 3",
        *q.args,
    )
    q = Sql()
    where = allocation_where(q, period, None, None, filters, alias="a")
    unallocated = await conn.fetch(
        "SELECT a.line_id, a.billing_period, a.currency, a.resource, min(a.basis) AS basis, sum(a.amount) AS amount "
        f"FROM allocations a WHERE a.method = 'unallocated' AND {where} GROUP BY 1, 2, 3, 4",
        *q.args,
    )
    unmatched: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for r in unallocated:
        if not r["resource"]:
            unmatched[(r["billing_period"], r["currency"])].append(r["amount"])
    runs = {
        r["billing_period"]: r["lines"] for r in await conn.fetch("SELECT billing_period, lines FROM allocation_runs")
    }
    cells: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(METHODS, ZERO))
    for r in sums:
        cells[(r["billing_period"], r["currency"])][r["method"]] += r["amount"]
    periods = []
    for (per, cur), m in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1]), reverse=True):
        billed = sum(m.values(), ZERO)
        parts = {
            "attributed": m["direct"] + m["trace"],
            "propagated": m["propagated"],
            "modeled": m["platform"] + m["idle"],  # explicit, not attributed: background work and idle capacity
            "unallocated": m["unallocated"],
        }
        periods.append(
            a.CoveragePeriod(
                period=per,
                currency=cur,
                billed=billed,
                **parts,
                **{f"{k}_pct": pct(v, billed) for k, v in parts.items()},
                lines=runs.get(per, 0),
                unmatched_lines=len(unmatched[(per, cur)]),
                unmatched_amount=sum(unmatched[(per, cur)], ZERO),
            )
        )
    largest = sorted(unallocated, key=lambda r: (-r["amount"], r["line_id"]))[:limit]
    details = {
        r["line_id"]: r
        for r in await conn.fetch(
            "SELECT line_id, service, resource_id, usage_type, description, amount FROM cost_lines "
            "WHERE line_id = ANY($1::text[])",
            [r["line_id"] for r in largest],
        )
    }
    lines = []
    for r in largest:
        d = details.get(r["line_id"])
        lines.append(
            a.UnallocatedLine(
                line_id=r["line_id"],
                period=r["billing_period"],
                service=d["service"] if d else "",
                resource_id=d["resource_id"] if d else "",
                resource=r["resource"],
                usage_type=d["usage_type"] if d else "",
                description=d["description"] if d else "",
                currency=r["currency"],
                amount=d["amount"] if d else r["amount"],
                unallocated=r["amount"],
                matched=bool(r["resource"]),
                reason=_UNMATCHED_REASON if not r["resource"] else r["basis"],
            )
        )
    return a.CoverageAnswer(periods=periods, unallocated_lines=lines)


async def periods(conn: asyncpg.Connection) -> a.PeriodsAnswer:
    currencies: dict[str, list[str]] = defaultdict(list)
    for r in await conn.fetch("SELECT DISTINCT billing_period, currency FROM cost_lines ORDER BY 1, 2"):
        currencies[r["billing_period"]].append(r["currency"])
    rows = await conn.fetch(
        "SELECT billing_period, lines, allocations, run_at FROM allocation_runs ORDER BY billing_period DESC"
    )
    return a.PeriodsAnswer(
        periods=[
            a.PeriodRow(
                period=r["billing_period"],
                lines=r["lines"],
                allocations=r["allocations"],
                run_at=r["run_at"],
                currencies=currencies.get(r["billing_period"], []),
            )
            for r in rows
        ]
    )


# -- consumption ----------------------------------------------------------------------------------------------------

USAGE_GROUPS: Final = {g: g for g in ("tenant", "feature", "agent", "src_workload", "dst", "protocol", "tenant_method")}
_SUMS: Final = ", ".join(f"sum({m})::bigint AS {m}" for m in COUNTERS)


def _hour_ceil(t: datetime) -> datetime:
    floor = floor_to(t, "hour")
    return floor if floor == t else floor + timedelta(hours=1)


async def consumption_parts(
    conn: asyncpg.Connection, q: Sql, start: datetime | None, end: datetime | None
) -> tuple[str, str]:
    """Where to read consumption in ``[start, end)``: conditions on ``consumption_hourly`` and ``consumption_minute``
    that together cover the range exactly once.

    Whole hours come from the hourly rollup when it holds them: up to its newest hour (plain PostgreSQL: rolled up by
    the attributor as minutes settle) or up to ``end`` (TimescaleDB: a real-time continuous aggregate, migration
    200), minus the hours that still have dirty (not yet rolled up) minutes. Everything else, and the partial hours
    at both ends, is read from the minutes. A month of usage is then ~700 rollup rows per key instead of ~43,000.
    """
    flavour = await conn.fetchval("SELECT flavour FROM storage_flavour")
    newest = await conn.fetchval("SELECT max(hour) FROM consumption_hourly") if flavour == "partitioned" else None
    lo = _hour_ceil(start) if start is not None else None
    if flavour == "timescaledb":
        hi = floor_to(end, "hour") if end is not None else None
        dirty: list[datetime] = []
    elif newest is None:
        return "false", _range(q, "minute", start, end)
    else:
        hi = newest + timedelta(hours=1)
        if end is not None:
            hi = min(hi, floor_to(end, "hour"))
        dirty = [
            r["hour"]
            for r in await conn.fetch(
                "SELECT DISTINCT date_trunc('hour', minute, 'UTC') AS hour FROM dirty_minutes "
                "WHERE ($1::timestamptz IS NULL OR minute >= $1) AND ($2::timestamptz IS NULL OR minute < $2)",
                lo,
                hi,
            )
        ]
    if lo is not None and hi is not None and lo >= hi:
        return "false", _range(q, "minute", start, end)
    hourly = _range(q, "hour", lo, hi) + (f" AND hour <> ALL({q(dirty)}::timestamptz[])" if dirty else "")
    minute_ranges = []
    if lo is not None and (start is None or start < lo):
        minute_ranges.append(_range(q, "minute", start, lo))
    if hi is not None and (end is None or hi < end):
        minute_ranges.append(_range(q, "minute", hi, end))
    minute_ranges += [_range(q, "minute", h, h + timedelta(hours=1)) for h in dirty]
    return hourly, "(" + " OR ".join(f"({r})" for r in minute_ranges) + ")" if minute_ranges else "false"


def _range(q: Sql, column: str, start: datetime | None, end: datetime | None) -> str:
    parts = ["true"]
    if start is not None:
        parts.append(f"{column} >= {q(start)}")
    if end is not None:
        parts.append(f"{column} < {q(end)}")
    return " AND ".join(parts)


async def usage(
    conn: asyncpg.Connection,
    group: str,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
) -> a.UsageAnswer:
    column = USAGE_GROUPS[group]
    q = Sql()
    hourly, minutely = await consumption_parts(conn, q, start, end)
    cond = "".join(f" AND {q.any_of(name, values)}" for name, values in filters.items())
    measures = ", ".join(COUNTERS)
    rows = await conn.fetch(
        f"SELECT key, {_SUMS} FROM ("
        f"SELECT {column} AS key, {measures} FROM consumption_hourly WHERE {hourly}{cond} UNION ALL "
        f"SELECT {column} AS key, {measures} FROM consumption_minute WHERE {minutely}{cond}"
        ") u GROUP BY key ORDER BY requests DESC, key",
        *q.args,
    )
    return a.UsageAnswer(
        group_by=group, rows=[a.UsageRow(**{group: r["key"]}, **{m: r[m] for m in COUNTERS}) for r in rows]
    )


#: What the customer page shows per edge: the counters ``answers.Operation`` declares, in contract order.
OPERATION_MEASURES: Final = tuple(f.name for f in msgspec.structs.fields(a.Operation) if f.name in COUNTERS)


async def top_operations(
    conn: asyncpg.Connection, tenant: str, start: datetime, end: datetime, limit: int
) -> list[a.Operation]:
    q = Sql()
    hourly, minutely = await consumption_parts(conn, q, start, end)
    who = f" AND tenant = {q(tenant)}"
    fields = ", ".join(("src_workload", "dst", "protocol", *OPERATION_MEASURES))
    sums = ", ".join(f"sum({m})::bigint AS {m}" for m in OPERATION_MEASURES)
    rows = await conn.fetch(
        f"SELECT src_workload, dst, protocol, {sums} FROM ("
        f"SELECT {fields} FROM consumption_hourly WHERE {hourly}{who} UNION ALL "
        f"SELECT {fields} FROM consumption_minute WHERE {minutely}{who}"
        f") u GROUP BY 1, 2, 3 ORDER BY busy_us DESC, requests DESC, 1, 2, 3 LIMIT {int(limit)}",
        *q.args,
    )
    return [a.Operation(**dict(r)) for r in rows]


async def ingest(conn: asyncpg.Connection) -> a.IngestAnswer:
    row = await conn.fetchrow(
        "SELECT count(*) AS batches, coalesce(sum(records), 0)::bigint AS records FROM applied_batches"
    )
    return a.IngestAnswer(applied_batches=row["batches"], applied_records=row["records"])


AI_GROUPS: Final = {g: g for g in ("tenant", "feature", "agent", "provider", "model", "src_workload")}
_AI_FIELDS: Final = ("requests", "tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning")
MICRO: Final = Decimal("0.000001")


async def ai_cost(
    conn: asyncpg.Connection,
    group: str,
    start: datetime | None,
    end: datetime | None,
    filters: Mapping[str, Sequence[str]],
) -> a.AiCostAnswer:
    column = AI_GROUPS[group]
    q = Sql()
    where = _range(q, "minute", start, end) + "".join(f" AND {q.any_of(n, v)}" for n, v in filters.items())
    sums = ", ".join(f"sum({f})::bigint AS {f}" for f in _AI_FIELDS)
    rows = await conn.fetch(
        f"SELECT {column} AS key, sum(cost_micros)::bigint AS cost_micros, {sums} FROM ai_usage_minute "
        f"WHERE {where} GROUP BY 1 ORDER BY cost_micros DESC, key",
        *q.args,
    )
    return a.AiCostAnswer(
        group_by=group,
        rows=[
            a.AiCostRow(
                **{group: r["key"]},
                cost_micros=r["cost_micros"],
                cost=r["cost_micros"] * MICRO,
                currency="USD",
                **{f: r[f] for f in _AI_FIELDS},
            )
            for r in rows
        ],
    )


# -- alerts, graph, imports -----------------------------------------------------------------------------------------


async def alerts(
    conn: asyncpg.Connection, state: str | None, filters: Mapping[str, Sequence[str]], limit: int
) -> a.AlertsAnswer:
    q = Sql()
    cond = "".join(f" AND {q.any_of(n, v)}" for n, v in filters.items())
    counts = dict(await conn.fetch(f"SELECT state, count(*) FROM alert_state WHERE true{cond} GROUP BY 1", *q.args))
    if state is not None:
        cond += f" AND state = {q(state)}"
    rows = await conn.fetch(
        "SELECT rule_key, tenant, feature, agent, reason, state, alert_id, started_at, window_s, resolved_at, "
        "fingerprint, rate_micros_per_hour, threshold_micros_per_hour, (SELECT max(s.ends_at) FROM alert_silences s "
        "WHERE s.fingerprint = alert_state.fingerprint AND s.starts_at <= now() AND s.ends_at > now()) AS "
        f"silenced_until FROM alert_state WHERE true{cond} ORDER BY state = 'firing' DESC, started_at DESC, alert_id "
        f"LIMIT {int(limit)}",
        *q.args,
    )
    return a.AlertsAnswer(
        firing=counts.get("firing", 0), resolved=counts.get("resolved", 0), alerts=[a.Alert(**dict(r)) for r in rows]
    )


async def graph(conn: asyncpg.Connection, at: datetime | None, window_s: int, idle_s: int) -> a.GraphAnswer:
    return msgspec.convert(await live_graph(conn, at, window_s, idle_s), a.GraphAnswer)


async def imports(conn: asyncpg.Connection, limit: int) -> a.ImportsAnswer:
    rows = await conn.fetch(
        "SELECT sha256, file, source, rows, lines, problems, imported_at FROM billing_imports "
        f"ORDER BY imported_at DESC, file LIMIT {int(limit)}"
    )
    return a.ImportsAnswer(imports=[a.BillImport(**dict(r)) for r in rows])


def redact_urls(value: Any, keys: Iterable[str] = ("dsn", "url", "endpoint_url")) -> Any:
    """A config as builtins with any password inside a URL or DSN replaced by ``***``."""
    names = set(keys)
    if isinstance(value, dict):
        return {k: _redact(v) if k in names and isinstance(v, str) else redact_urls(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_urls(v, names) for v in value]
    return value


def _redact(url: str) -> str:
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
