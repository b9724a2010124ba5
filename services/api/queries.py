"""The API's reads: SQL over the store, answered as the types of ``answers``.

Reads: ``allocations`` and ``cost_lines`` (billing), their summaries per allocation run
(``costmesh.common.allocation_summary``), ``revenue``, ``allocation_runs``, ``billing_imports``, ``consumption_minute``
and ``ai_usage_minute`` with their rollups ``consumption_hourly`` and ``ai_usage_hourly`` (settled whole hours; see
``consumption_parts``), ``alert_state`` and the graph tables. Sums are done by PostgreSQL in ``numeric`` (exact);
column names are never taken from a request (every grouping goes through a fixed mapping).

A question over allocations is answered from the summaries when they are those of the current run and carry every
column filtered on, else from ``allocations`` with migration 200's indexes; both give the same bytes (tested). An
answer built from the summaries is kept per allocation run (``answer_cache``). ``loadtests/bench_api.py`` measures
every route over 1 M consumption rows and 100 k allocation rows; the README's API section states the plans.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from costmesh.common import allocation_summary
from costmesh.common.allocation_summary import SummaryState
from costmesh.common.graph import live_graph
from costmesh.common.ledger import Allocation, Revenue
from costmesh.common.pnl import customer_pnl
from costmesh.common.schemas import COUNTERS

from . import answers as a
from .answer_cache import AnswerCache
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


def summary_where(
    q: Sql,
    dim: str | None,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    keys: Sequence[str] | None = None,
) -> str:
    """``WHERE`` over ``allocation_series`` (``allocation_totals`` without ``start``/``end``): one dimension, the
    billing period, charge start in ``[start, end)``, and the accepted keys of the dimension."""
    parts = ["true"] if dim is None else [f"dim = {q(dim)}"]
    if period is not None:
        parts.append(f"billing_period = {q(period)}")
    if start is not None:
        parts.append(f"charge_start >= {q(start)}")
    if end is not None:
        parts.append(f"charge_start < {q(end)}")
    if keys is not None:
        parts.append(q.any_of("key", keys))
    return " AND ".join(parts)


async def summaries_answer(
    conn: asyncpg.Connection, period: str | None, filters: Mapping[str, Sequence[str]], carried: Iterable[str] = ()
) -> SummaryState | None:
    """The state of the allocation summaries (``costmesh.common.allocation_summary``) when they answer this question:
    they are those of the current run of ``period`` (every period when ``None``), and they carry every column
    filtered on; else ``None`` (read ``allocations``)."""
    if not set(filters) <= set(carried):
        return None
    state = await allocation_summary.summarized(conn)
    return state if state.covers(period) else None


def _cache_key(*parts: Any) -> tuple:
    return tuple(tuple((k, tuple(v)) for k, v in sorted(p.items())) if isinstance(p, Mapping) else p for p in parts)


async def _kept(
    cache: AnswerCache | None, state: SummaryState, key: tuple, compute: Callable[[], Awaitable[Any]]
) -> Any:
    return await (compute() if cache is None else cache.get(state, key, compute))


async def cost(
    conn: asyncpg.Connection,
    group: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step | None,
    filters: Mapping[str, Sequence[str]],
    limit: int | None,
    cache: AnswerCache | None = None,
) -> a.CostAnswer:
    """Cost per group; from the summaries (and then computed once per allocation run) when they carry the filters."""
    state = await summaries_answer(conn, period, filters, carried=[group])
    if state is None:
        return await _cost(conn, group, period, start, end, step, filters, limit, summary=False)
    key = _cache_key("cost", group, period, start, end, step, filters, limit)
    return await _kept(
        cache, state, key, lambda: _cost(conn, group, period, start, end, step, filters, limit, summary=True)
    )


async def _cost(
    conn: asyncpg.Connection,
    group: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step | None,
    filters: Mapping[str, Sequence[str]],
    limit: int | None,
    summary: bool,
) -> a.CostAnswer:
    column = COST_GROUPS[group]
    keys = filters.get(group)
    q = Sql()
    if not summary:
        where = allocation_where(q, period, start, end, filters)
        sql = (
            f"SELECT {column} AS key, currency, method, sum(amount) AS amount, min(charge_start) AS first, "
            f"max(charge_start) AS last FROM allocations WHERE {where} GROUP BY 1, 2, 3"
        )
    elif start is None and end is None and period is not None:  # one row per group already
        sql = (
            "SELECT key, currency, method, amount, first_start AS first, last_start AS last FROM allocation_totals "
            f"WHERE {summary_where(q, group, period, None, None, keys)}"
        )
    elif start is None and end is None:
        sql = (
            "SELECT key, currency, method, sum(amount) AS amount, min(first_start) AS first, max(last_start) AS last "
            f"FROM allocation_totals WHERE {summary_where(q, group, period, None, None, keys)} GROUP BY 1, 2, 3"
        )
    else:
        sql = (
            "SELECT key, currency, method, sum(amount) AS amount, min(charge_start) AS first, "
            "max(charge_start) AS last FROM allocation_series "
            f"WHERE {summary_where(q, group, period, start, end, keys)} GROUP BY 1, 2, 3"
        )
    rows = await conn.fetch(sql, *q.args)
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
    kept_keys = [key for (key, _cur), _m in kept]
    if summary:
        per_row, per_currency = await _summary_series(conn, group, period, start, end, step, keys, kept_keys)
    else:
        per_row, per_currency = await _allocation_series(conn, column, period, start, end, step, filters, kept_keys)
    for row, ((key, cur), _m) in zip(out_rows, kept, strict=True):
        row.series = _series(per_row[(key, cur)], grid)
    for total in out_totals:
        total.series = _series(per_currency[total.currency], grid)
    return answer


Points = dict[datetime, Decimal]


async def _allocation_series(
    conn: asyncpg.Connection,
    column: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step,
    filters: Mapping[str, Sequence[str]],
    kept: Sequence[str],
) -> tuple[dict[tuple[str, str], Points], dict[str, Points]]:
    """Cost per bucket of each kept (key, currency) and of each currency, summed over ``allocations``."""
    q = Sql()
    where = allocation_where(q, period, start, end, filters)
    bucket = _bucket_sql(q, step)
    series = await conn.fetch(
        f"SELECT {column} = ANY({q(kept)}::text[]) AS kept, CASE WHEN {column} = ANY({q(kept)}::text[]) THEN "
        f"{column} END AS key, currency, {bucket} AS bucket, sum(amount) AS amount FROM allocations "
        f"WHERE {where} GROUP BY 1, 2, 3, 4",
        *q.args,
    )
    per_row: dict[tuple[str, str], Points] = defaultdict(dict)
    per_currency: dict[str, Points] = defaultdict(lambda: defaultdict(Decimal))
    for r in series:
        if r["kept"]:
            per_row[(r["key"], r["currency"])][r["bucket"]] = r["amount"]
        per_currency[r["currency"]][r["bucket"]] += r["amount"]
    return per_row, per_currency


async def _summary_series(
    conn: asyncpg.Connection,
    group: str,
    period: str | None,
    start: datetime | None,
    end: datetime | None,
    step: a.Step,
    keys: Sequence[str] | None,
    kept: Sequence[str],
) -> tuple[dict[tuple[str, str], Points], dict[str, Points]]:
    """The same from ``allocation_series``: the kept keys by the primary key, and the currency totals from the small
    ``method`` dimension (every allocation has one method) unless the group's keys are filtered."""
    q = Sql()
    rows = await conn.fetch(
        f"SELECT key, currency, {_bucket_sql(q, step)} AS bucket, sum(amount) AS amount FROM allocation_series "
        f"WHERE {summary_where(q, group, period, start, end, kept)} GROUP BY 1, 2, 3",
        *q.args,
    )
    per_row: dict[tuple[str, str], Points] = defaultdict(dict)
    for r in rows:
        per_row[(r["key"], r["currency"])][r["bucket"]] = r["amount"]
    q = Sql()
    where = (
        summary_where(q, group, period, start, end, keys) if keys else summary_where(q, "method", period, start, end)
    )
    rows = await conn.fetch(
        f"SELECT currency, {_bucket_sql(q, step)} AS bucket, sum(amount) AS amount FROM allocation_series "
        f"WHERE {where} GROUP BY 1, 2",
        *q.args,
    )
    per_currency: dict[str, Points] = defaultdict(dict)
    for r in rows:
        per_currency[r["currency"]][r["bucket"]] = r["amount"]
    return per_row, per_currency


async def pnl(
    conn: asyncpg.Connection, period: str, currency: str, tenants: Sequence[str], cache: AnswerCache | None = None
) -> a.PnlAnswer:
    """Customer P&L through the one P&L rule (``customer_pnl``), fed with the period's allocations summed per tenant
    and method by the database (the same sums as row by row, without loading every row).

    From the summaries, the answer is kept per allocation run and revenue: a digest of the period's revenue, read in
    the same snapshot as the summaries' state and the figures, is part of the key (revenue is imported apart from
    allocation runs)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        state = await summaries_answer(conn, period, {})
        if state is None or cache is None:
            return await _pnl(conn, period, currency, tenants, summary=state is not None)
        digest = await conn.fetchval(
            "SELECT md5(coalesce(string_agg(customer || ' ' || currency || ' ' || amount::text, ','"
            " ORDER BY customer, currency), '')) FROM revenue WHERE period = $1",
            period,
        )
        key = _cache_key("pnl", period, currency, tuple(tenants), digest)
        return await cache.get(state, key, lambda: _pnl(conn, period, currency, tenants, summary=True))


async def _pnl(
    conn: asyncpg.Connection, period: str, currency: str, tenants: Sequence[str], summary: bool
) -> a.PnlAnswer:
    q = Sql()
    if summary:
        where = summary_where(q, "tenant", period, None, None, tenants or None) + f" AND currency = {q(currency)}"
        sql = f"SELECT key AS tenant, method, amount FROM allocation_totals WHERE {where} ORDER BY 1, 2"
    else:
        where = allocation_where(
            q, period, None, None, {"currency": [currency], **({"tenant": tenants} if tenants else {})}
        )
        sql = f"SELECT tenant, method, sum(amount) AS amount FROM allocations WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
    sums = await conn.fetch(sql, *q.args)
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


def _driver_order(r: Mapping[str, Any]) -> tuple:
    """Largest first; the names, then basis, service and currency, break ties."""
    return (-r["amount"], r["resource"], r["feature"], r["agent"], r["method"], r["basis"], r["service"], r["currency"])


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
    """One customer's cost taken apart; ``None`` when the customer has no allocated cost in the range.

    Its parts and its points over time are two groupings of the same few hundred rows (read by the tenant index),
    summed in one statement."""
    q = Sql()
    where = allocation_where(q, period, start, end, {**filters, "tenant": [tenant]})
    both = await conn.fetch(
        "SELECT GROUPING(service) = 1 AS point, resource, service, feature, agent, method, basis, currency, "
        f"{_bucket_sql(q, step)} AS bucket, sum(amount) AS amount, min(charge_start) AS first, "
        f"max(charge_start) AS last FROM allocations WHERE {where} "
        "GROUP BY GROUPING SETS ((resource, service, feature, agent, method, basis, currency), "
        "(resource, currency, bucket))",
        *q.args,
    )
    rows = [r for r in both if not r["point"]]
    points = [r for r in both if r["point"]]
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
    drivers = sorted(rows, key=_driver_order)[:top]

    resources = sorted({r["resource"] for r in rows if r["resource"]})
    q = Sql()
    summary = start is None and end is None and await summaries_answer(conn, period, {}) is not None
    if summary and period is not None:  # ready-made per resource
        sql = "SELECT resource, currency, amount, tenants FROM allocation_resources"
    else:
        table = "allocation_resource_tenants" if summary else "allocations"
        sql = (
            "SELECT resource, currency, sum(amount) AS amount, count(DISTINCT tenant) FILTER (WHERE tenant <> '') "
            f"AS tenants FROM {table}"
        )
    where = allocation_where(q, period, start, end, {"resource": resources})
    shared = await conn.fetch(
        f"{sql} WHERE {where}" + ("" if summary and period is not None else " GROUP BY 1, 2"), *q.args
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
    cache: AnswerCache | None = None,
) -> a.ResourceAnswer | None:
    """Who consumes one resource. Without a time range or filters, from the allocation summaries: the totals, the
    per-tenant sums and the largest consumers (read from the top of an index) come ready-made; else from
    ``allocations``, summed here."""
    q = Sql()
    state = None if start is not None or end is not None else await summaries_answer(conn, period, filters)
    if state is not None:
        key = _cache_key("resource", name, period, limit)
        parts = await _kept(cache, state, key, lambda: _resource_parts(conn, name, period, limit))
        if parts is None:
            return None
        where = allocation_where(q, period, None, None, {"resource": [name]})
        lines = await _resource_lines(conn, q, "allocation_resource_lines", where, limit)
        return _resource_answer(name, period, *parts, lines)
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
    consumers = sorted(rows, key=_consumer_order)[:limit]
    lines = await _resource_lines(conn, q, "allocations", where, limit)
    return _resource_answer(name, period, by_method, by_tenant, consumers, lines)


async def _resource_lines(conn: asyncpg.Connection, q: Sql, table: str, where: str, limit: int) -> list[asyncpg.Record]:
    """The largest bill lines paying for a resource: those with a row of ``table`` (``allocations`` or its summary
    ``allocation_resource_lines``) matching ``where``."""
    return await conn.fetch(
        "SELECT c.line_id, c.billing_period, c.service, c.resource_id, c.usage_type, c.description, c.currency, "
        f"c.amount FROM cost_lines c WHERE c.line_id IN (SELECT line_id FROM {table} WHERE {where}) "
        f"ORDER BY c.amount DESC, c.line_id LIMIT {int(limit)}",
        *q.args,
    )


def _consumer_order(r: Mapping[str, Any]) -> tuple:
    """Largest first within a currency; the names, then method and basis, break ties."""
    return (r["currency"], -r["amount"], r["tenant"], r["feature"], r["agent"], r["method"], r["basis"])


async def _resource_parts(
    conn: asyncpg.Connection, name: str, period: str | None, limit: int
) -> tuple[dict[str, dict[str, Decimal]], dict[tuple[str, str], Decimal], list[asyncpg.Record]] | None:
    """A resource's totals by currency and method, sums by tenant and largest consumers, from the summaries (one row
    per consumer within a period: read from the top of ``allocation_consumers_largest``)."""
    q = Sql()
    totals = await conn.fetch(
        "SELECT currency, method, sum(amount) AS amount FROM allocation_totals "
        f"WHERE {summary_where(q, 'resource', period, None, None, [name])} GROUP BY 1, 2",
        *q.args,
    )
    if not totals:
        return None
    by_method: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for r in totals:
        by_method[r["currency"]][r["method"]] = r["amount"]
    q = Sql()
    where = allocation_where(q, period, None, None, {"resource": [name]})
    if period is not None:  # one row per tenant and currency already
        per_tenant = f"SELECT tenant, currency, amount FROM allocation_resource_tenants WHERE {where}"
    else:
        per_tenant = (
            "SELECT tenant, currency, sum(amount) AS amount FROM allocation_resource_tenants "
            f"WHERE {where} GROUP BY 1, 2"
        )
    by_tenant = {(r["tenant"], r["currency"]): r["amount"] for r in await conn.fetch(per_tenant, *q.args)}
    columns = "tenant, feature, agent, method, basis, currency"
    if period is not None:
        source = f"SELECT {columns}, amount FROM allocation_consumers WHERE {where}"
    else:
        source = (
            f"SELECT {columns}, sum(amount) AS amount FROM allocation_consumers WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6"
        )
    consumers = await conn.fetch(
        f"{source} ORDER BY currency, amount DESC, tenant, feature, agent, method, basis LIMIT {int(limit)}", *q.args
    )
    return by_method, by_tenant, consumers


def _resource_answer(
    name: str,
    period: str | None,
    by_method: Mapping[str, Mapping[str, Decimal]],
    by_tenant: Mapping[tuple[str, str], Decimal],
    consumers: Sequence[Mapping[str, Any]],
    lines: Sequence[Mapping[str, Any]],
) -> a.ResourceAnswer:
    totals = {cur: sum(m.values(), ZERO) for cur, m in by_method.items()}
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
            for r in consumers
        ],
        by_tenant=_slices(by_tenant, totals),
        lines=[a.BillLine(**dict(r)) for r in lines],
    )


_UNMATCHED_REASON = "no observed resource matches this line"


async def coverage(
    conn: asyncpg.Connection,
    period: str | None,
    filters: Mapping[str, Sequence[str]],
    limit: int,
    cache: AnswerCache | None = None,
) -> a.CoverageAnswer:
    """Per period and currency: attributed (direct + trace) / propagated / modeled (platform) / unallocated, and the
    lines that carry unallocated cost. A line is *unmatched* when its allocation names no resource and is
    unallocated whole."""
    q = Sql()
    state = await summaries_answer(conn, period, filters)
    if state is not None:
        sql = (
            "SELECT billing_period, currency, method, sum(amount) AS amount FROM allocation_totals "
            f"WHERE {summary_where(q, 'method', period, None, None)} GROUP BY 1, 2, 3"
        )
        sums = await _kept(cache, state, _cache_key("coverage", period), lambda: conn.fetch(sql, *q.args))
    else:
        where = allocation_where(q, period, None, None, filters)
        sql = (
            "SELECT billing_period, currency, method, sum(amount) AS amount FROM allocations "
            f"WHERE {where} GROUP BY 1, 2, 3"
        )
        sums = await conn.fetch(sql, *q.args)
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


#: Hourly rollups of per-minute tables, and whether TimescaleDB keeps the rollup real-time (a continuous aggregate,
#: migration 200) rather than the attributor's maintenance rolling up settled hours.
CONSUMPTION_HOURLY: Final = ("consumption_hourly", True)
AI_HOURLY: Final = ("ai_usage_hourly", False)


async def consumption_parts(
    conn: asyncpg.Connection,
    q: Sql,
    start: datetime | None,
    end: datetime | None,
    rollup: tuple[str, bool] = CONSUMPTION_HOURLY,
) -> tuple[str, str]:
    """Where to read per-minute data in ``[start, end)``: conditions on the hourly rollup (``consumption_hourly`` or
    ``ai_usage_hourly``) and on the minutes that together cover the range exactly once.

    Whole hours come from the hourly rollup when it holds them: up to its newest hour (rolled up by the attributor as
    minutes settle) or up to ``end`` (consumption with TimescaleDB: a real-time continuous aggregate, migration
    200), minus the hours that still have dirty (not yet rolled up) minutes. Everything else, and the partial hours
    at both ends, is read from the minutes. A month of usage is then ~700 rollup rows per key instead of ~43,000,
    and hours whose minutes have expired are still answered.
    """
    table, realtime = rollup
    flavour, newest = await conn.fetchrow(
        f"SELECT flavour, CASE WHEN flavour = 'partitioned' OR NOT $1 THEN (SELECT max(hour) FROM {table}) END "
        "FROM storage_flavour",
        realtime,
    )
    lo = _hour_ceil(start) if start is not None else None
    if flavour == "timescaledb" and realtime:
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
    """AI cost per group: settled whole hours from ``ai_usage_hourly``, the rest from the minutes (as usage)."""
    column = AI_GROUPS[group]
    q = Sql()
    hourly, minutely = await consumption_parts(conn, q, start, end, AI_HOURLY)
    cond = "".join(f" AND {q.any_of(n, v)}" for n, v in filters.items())
    fields = ", ".join(("cost_micros", *_AI_FIELDS))
    sums = ", ".join(f"sum({f})::bigint AS {f}" for f in _AI_FIELDS)
    rows = await conn.fetch(
        f"SELECT key, sum(cost_micros)::bigint AS cost_micros, {sums} FROM ("
        f"SELECT {column} AS key, {fields} FROM ai_usage_hourly WHERE {hourly}{cond} UNION ALL "
        f"SELECT {column} AS key, {fields} FROM ai_usage_minute WHERE {minutely}{cond}"
        ") u GROUP BY 1 ORDER BY cost_micros DESC, key",
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
