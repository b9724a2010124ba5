"""Prometheus cost metrics in the style of OpenCost's (``node_total_hourly_cost``, ``container_cpu_allocation``):
allocated cost per tenant, resource and method, cost no tenant carries, the bill, and AI token cost per model and
agent, for the newest billing periods.

Reads (every ``api.metrics_refresh_s``): ``allocation_runs``, ``allocations`` and ``ai_usage_minute``, summed by
PostgreSQL exactly; a scrape only reads the last snapshot. Values are micro-units of the currency (the exact decimal
times 10^6, so they equal the API's amounts); they are gauges, not counters: a restated bill may lower them.

Cardinality is bounded: the ``api.metrics_top_tenants`` costliest tenants (and agents) of a period keep their own
label, the rest are summed under ``__other__``; periods are the ``api.metrics_periods`` newest; resources, methods,
providers and models are bounded by the config and the price list.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from costmesh.common.config import ApiConfig

OTHER = "__other__"
MICROS = Decimal(1_000_000)

TENANT_COST = "costmesh_tenant_cost_micros"
UNALLOCATED_COST = "costmesh_unallocated_cost_micros"
BILLED_COST = "costmesh_billed_cost_micros"
AI_COST = "costmesh_ai_cost_micros"
REFRESHED = "costmesh_cost_metrics_refreshed_timestamp_seconds"
#: Every metric this collector exports (the Grafana dashboard's queries are checked against these).
NAMES = (TENANT_COST, UNALLOCATED_COST, BILLED_COST, AI_COST, REFRESHED)

Key = tuple[str, ...]


def top(totals: Mapping[str, Decimal | int], n: int) -> set[str]:
    """The ``n`` largest keys (ties by name), the ones that keep their own label."""
    return {k for k, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]}


def bounded(rows: Iterable[tuple[Key, Decimal | int]], positions: Iterable[int], n: int, within: int = 0) -> dict:
    """Sum ``rows`` (label tuples → value) after replacing, at each of ``positions``, every value outside the top
    ``n`` (ranked within each value of the label at ``within``, the period) by ``OTHER``."""
    rows = list(rows)
    keep: dict[int, dict[str, set[str]]] = {}
    for pos in positions:
        totals: dict[str, dict[str, Decimal | int]] = defaultdict(lambda: defaultdict(int))
        for key, value in rows:
            totals[key[within]][key[pos]] += value
        keep[pos] = {group: top(t, n) for group, t in totals.items()}
    out: dict[Key, Decimal | int] = defaultdict(int)
    for key, value in rows:
        labels = list(key)
        for pos, kept in keep.items():
            if labels[pos] not in kept[key[within]]:
                labels[pos] = OTHER
        out[tuple(labels)] += value
    return dict(out)


class CostMetrics(Collector):
    """The snapshot and its collector; ``refresh`` replaces the snapshot in one step."""

    def __init__(self, cfg: ApiConfig | None = None) -> None:
        self.cfg = cfg or ApiConfig()
        self.tenant: dict[Key, Decimal] = {}
        self.unallocated: dict[Key, Decimal] = {}
        self.billed: dict[Key, Decimal] = {}
        self.ai: dict[Key, int] = {}
        self.refreshed = 0.0
        self.refreshes = 0

    async def refresh(self, conn: asyncpg.Connection) -> None:
        periods = [
            r["billing_period"]
            for r in await conn.fetch(
                "SELECT billing_period FROM allocation_runs ORDER BY billing_period DESC LIMIT $1",
                self.cfg.metrics_periods,
            )
        ]
        rows = await conn.fetch(
            "SELECT billing_period, tenant, resource, method, currency, sum(amount) AS amount FROM allocations "
            "WHERE billing_period = ANY($1::text[]) GROUP BY 1, 2, 3, 4, 5",
            periods,
        )
        tenant_rows = [
            ((r["billing_period"], r["tenant"], r["resource"], r["method"], r["currency"]), r["amount"])
            for r in rows
            if r["tenant"]
        ]
        unallocated: dict[Key, Decimal] = defaultdict(Decimal)
        billed: dict[Key, Decimal] = defaultdict(Decimal)
        for r in rows:
            billed[(r["billing_period"], r["currency"])] += r["amount"]
            if not r["tenant"]:
                unallocated[(r["billing_period"], r["resource"], r["method"], r["currency"])] += r["amount"]
        ai_rows = await conn.fetch(
            "SELECT to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM') AS period, tenant, provider, model, agent, "
            "sum(cost_micros)::bigint AS cost FROM ai_usage_minute GROUP BY 1, 2, 3, 4, 5"
        )
        ai_periods = set(sorted({r["period"] for r in ai_rows}, reverse=True)[: self.cfg.metrics_periods])
        n = self.cfg.metrics_top_tenants
        self.tenant = bounded(tenant_rows, positions=[1], n=n)
        self.unallocated, self.billed = dict(unallocated), dict(billed)
        self.ai = bounded(
            (
                ((r["period"], r["tenant"], r["provider"], r["model"], r["agent"]), r["cost"])
                for r in ai_rows
                if r["period"] in ai_periods
            ),
            positions=[1, 4],
            n=n,
        )
        self.refreshed = time.time()
        self.refreshes += 1

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = (
            (
                TENANT_COST,
                "Allocated cost of a tenant in a billing period, micro-units of currency.",
                self.tenant,
                ["period", "tenant", "resource", "method", "currency"],
            ),
            (
                UNALLOCATED_COST,
                "Cost no tenant carries (method platform or unallocated), micro-units.",
                self.unallocated,
                ["period", "resource", "method", "currency"],
            ),
            (
                BILLED_COST,
                "Billed cost of a period (the sum of all its allocations), micro-units.",
                self.billed,
                ["period", "currency"],
            ),
        )
        for name, doc, values, labels in families:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for key, amount in sorted(values.items()):
                family.add_metric(list(key), float(amount * MICROS))
            yield family
        ai = GaugeMetricFamily(
            AI_COST,
            "AI token cost priced in real time, micro-dollars, per month held.",
            labels=["period", "tenant", "provider", "model", "agent"],
        )
        for key, micros in sorted(self.ai.items()):
            ai.add_metric(list(key), float(micros))
        yield ai
        yield GaugeMetricFamily(
            REFRESHED, "When the cost metrics were last read from the store (Unix time).", value=self.refreshed
        )
