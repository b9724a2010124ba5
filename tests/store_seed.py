"""A realistic store for the API, the console and ``loadtests/bench_api.py``: a month of daily bill lines over shared
resources split over customers by every method, revenue with some customers under water, a live graph, AI usage per
model and agent, consumption minutes, alerts. Deterministic for a seed; sized by ``Scale``.

Written straight into the tables the API reads (the contracts of billing and the attributor), with exact amounts:
the allocations of every line sum to its amount, as the billing service guarantees.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from costmesh.common import allocation_summary

PERIOD = "2026-01"
PERIOD_START = datetime(2026, 1, 1, tzinfo=UTC)
#: The live window: graph edges, AI usage and consumption end here (the last day of the period).
LIVE_END = datetime(2026, 1, 31, 18, 0, tzinfo=UTC)
NAMED = ["acme", "globex", "initech", "umbrella", "hooli", "stark-industries", "wayne-enterprises", "wonka"]
FEATURES = ["checkout", "search", "reports", "assistant"]
AGENTS = ["", "", "support-bot", "sql-copilot", "summarizer"]
#: resource, billed service, usage type, daily cost range in dollars, basis
RESOURCES = [
    ("orders-db", "Amazon Relational Database Service", "InstanceUsage:db.r6g.4xlarge", (300, 370), "busy_us"),
    ("events-kafka", "Amazon Managed Streaming for Apache Kafka", "Kafka.m5.2xlarge", (160, 200), "bytes"),
    ("nat-egress", "Amazon Virtual Private Cloud", "NatGateway-Bytes", (70, 140), "bytes"),
    ("cross-az", "AWS Data Transfer", "DataTransfer-Regional-Bytes", (30, 70), "bytes"),
    ("node-pool", "Amazon Elastic Compute Cloud", "BoxUsage:m7g.8xlarge", (480, 580), "busy_us"),
    ("openai", "OpenAI", "gpt-4o tokens", (140, 440), "tokens_cost"),
]
#: Monthly lines no observed resource explains (unmatched).
UNMATCHED = [
    ("Amazon CloudWatch", "arn:aws:logs:eu-west-1:123456789012:log-group:platform", "DataProcessing-Bytes", (90, 140)),
    ("Amazon Simple Storage Service", "arn:aws:s3:::backups-eu-west-1", "TimedStorage-ByteHrs", (60, 80)),
    ("AWS Key Management Service", "arn:aws:kms:eu-west-1:123456789012:key/4f1c", "KMS-Requests", (8, 12)),
]
MODELS = [
    ("openai", "gpt-4o", 2500, 10000),
    ("openai", "gpt-4o-mini", 150, 600),
    ("anthropic", "claude-sonnet-4", 3000, 15000),
]
GRAPH = [
    ("web", "api-gateway", "http"),
    ("api-gateway", "orders", "http"),
    ("api-gateway", "search", "http"),
    ("orders", "orders-db", "postgres"),
    ("orders", "topic:order-events", "kafka"),
    ("topic:order-events", "billing-worker", "kafka"),
    ("billing-worker", "orders-db", "postgres"),
    ("search", "redis-cache", "redis"),
    ("api-gateway", "assistant", "http"),
    ("assistant", "api.openai.com", "tls"),
]
KINDS = {
    "orders-db": "database",
    "redis-cache": "database",
    "topic:order-events": "topic",
    "api.openai.com": "external",
}


@dataclass(frozen=True)
class Scale:
    tenants: int = len(NAMED)
    days: int = 31
    #: Extra allocation rows per (line, tenant) beyond one, spread over features and agents.
    splits: int = 1
    consumption_rows: int = 9000
    ai_rows: int = 1500
    seed: int = 7


def tenant_names(n: int) -> list[str]:
    return NAMED[:n] if n <= len(NAMED) else [*NAMED, *(f"tenant-{i:05d}" for i in range(n - len(NAMED)))]


def _split(amount: Decimal, weights: list[int], quantum: Decimal = Decimal("0.000001")) -> list[Decimal]:
    """Parts of ``amount`` in proportion to ``weights``, in ``quantum`` units, summing to ``amount`` exactly."""
    units = int(amount / quantum)
    total = sum(weights)
    parts = [units * w // total for w in weights]
    for i in range(units - sum(parts)):
        parts[i % len(parts)] += 1
    return [p * quantum for p in parts]


async def seed(conn: asyncpg.Connection, scale: Scale = Scale()) -> dict[str, int]:
    """Fill an empty, migrated database; returns how many rows went into each table."""
    rnd = random.Random(scale.seed)
    tenants = tenant_names(scale.tenants)
    weight = {t: rnd.randint(5, 100) if i >= len(NAMED) else (120 - 14 * i) for i, t in enumerate(tenants)}
    lines, allocations = [], []
    for day in range(scale.days):
        start = PERIOD_START + timedelta(days=day)
        end = start + timedelta(days=1)
        for resource, service, usage, (lo, hi), basis in RESOURCES:
            amount = Decimal(rnd.randint(lo * 100, hi * 100)) / 100
            line_id = f"{PERIOD}:{resource}:{day:02d}"
            lines.append((line_id, service, start, end, amount, f"arn:aws:{resource}", resource, usage))
            users = [t for t in tenants if rnd.random() < 0.9] or tenants[:1]
            keys = []
            for t in users:
                for _ in range(scale.splits):
                    method = rnd.choices(["direct", "trace", "propagated"], [80, 8, 12])[0]
                    feature = rnd.choice(FEATURES)
                    agent = rnd.choice(AGENTS) if resource == "openai" or feature == "assistant" else ""
                    keys.append((t, feature, agent, method, basis, weight[t] * rnd.randint(50, 150)))
            keys.append(("", "", "", "platform", "background work", sum(k[5] for k in keys) // 25))
            if resource == "nat-egress":
                keys.append(("", "", "", "unallocated", "bytes to no known caller", sum(k[5] for k in keys) // 12))
            for (t, feature, agent, method, why, _w), part in zip(
                keys, _split(amount, [k[5] for k in keys]), strict=True
            ):
                allocations.append((PERIOD, line_id, t, feature, agent, method, why, resource, service, part, start))
    month_end = PERIOD_START + timedelta(days=scale.days)
    for n, (service, rid, usage, (lo, hi)) in enumerate(UNMATCHED):
        amount = Decimal(rnd.randint(lo * 100, hi * 100)) / 100
        line_id = f"{PERIOD}:unmatched:{n}"
        lines.append((line_id, service, PERIOD_START, month_end, amount, rid, "", usage))
        allocations.append((PERIOD, line_id, "", "", "", "unallocated", "unmatched", "", service, amount, PERIOD_START))
    await conn.copy_records_to_table(
        "cost_lines",
        records=[
            (
                lid,
                "seed",
                PERIOD,
                s,
                e,
                amt,
                "USD",
                "AWS",
                "123456789012",
                svc,
                rid,
                name,
                usage,
                "Usage",
                f"{usage}, {s:%b %d}" if e - s <= timedelta(days=1) else f"{usage}, whole month",
            )
            for (lid, svc, s, e, amt, rid, name, usage) in lines
        ],
        columns=(
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
            "usage_type",
            "charge_category",
            "description",
        ),
    )
    await conn.copy_records_to_table(
        "allocations",
        records=[(*row[:9], row[9], "USD", row[10]) for row in allocations],
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
        "INSERT INTO allocation_runs (billing_period, lines, allocations, run_at) VALUES ($1, $2, $3, $4)",
        PERIOD,
        len(lines),
        len(allocations),
        LIVE_END,
    )
    await allocation_summary.refresh(conn, PERIOD)  # as billing does when a run completes
    await conn.execute(
        "INSERT INTO billing_imports (sha256, file, source, rows, lines, problems, imported_at) "
        "VALUES ('seed-sha', 'bills/focus-2026-01.csv', 'seed', $1, $1, 0, $2)",
        len(lines),
        LIVE_END,
    )
    costs = {
        r["tenant"]: r["cost"]
        for r in await conn.fetch("SELECT tenant, sum(amount) AS cost FROM allocations WHERE tenant <> '' GROUP BY 1")
    }
    factors = [Decimal("0.72"), Decimal("0.94")] + [Decimal(rnd.randint(115, 320)) / 100 for _ in tenants]
    revenue = [
        (t, PERIOD, "USD", (costs.get(t, Decimal(1)) * factors[(i + 3) % len(factors)]).quantize(Decimal(1)))
        for i, t in enumerate(tenants)
    ]
    await conn.executemany("INSERT INTO revenue (customer, period, currency, amount) VALUES ($1, $2, $3, $4)", revenue)

    # the live graph over the last hour, with the consumption and AI usage behind it
    minutes = [LIVE_END - timedelta(minutes=m) for m in range(1, 61)]
    nodes = {n for e in GRAPH for n in e[:2]}
    await conn.executemany(
        "INSERT INTO graph_node (name, kind, first_seen, last_seen) VALUES ($1, $2, $3, $4)",
        [(n, KINDS.get(n, "workload"), PERIOD_START, LIVE_END - timedelta(minutes=1)) for n in sorted(nodes)],
    )
    await conn.copy_records_to_table(
        "graph_edge_minute",
        records=[
            (m, src, dst, proto, calls, calls // 97 if src == "orders" else 0, calls * 310, calls * 920, calls * 2100)
            for src, dst, proto in GRAPH
            for m in minutes
            for calls in [rnd.randint(200, 900) if proto == "http" else rnd.randint(80, 400)]
        ],
        columns=("minute", "src", "dst", "protocol", "calls", "errors", "bytes_in", "bytes_out", "busy_us"),
    )
    # a fixed set of call keys (tenant, feature, agent, edge) seen minute after minute, as live traffic is
    consumption = {}
    edges = [e for e in GRAPH if not e[0].startswith("topic:")]
    keys_n = max(1, min(1000, scale.consumption_rows // 180))  # at least three hours of minutes
    call_keys = set()
    while len(call_keys) < keys_n:
        src, dst, proto = rnd.choice(edges)
        t = rnd.choices(tenants, [weight[x] for x in tenants])[0]
        call_keys.add((t, "header", rnd.choice(FEATURES), rnd.choice(AGENTS), src, dst, proto))
    ordered = sorted(call_keys)
    minute = LIVE_END
    while len(consumption) < scale.consumption_rows:
        minute -= timedelta(minutes=1)
        for key in ordered[: scale.consumption_rows - len(consumption)]:
            req = rnd.randint(1, 400)
            consumption[(minute, *key)] = (
                req,
                req // 90,
                req * 300,
                req * 900,
                req * rnd.randint(400, 4000),
                0,
                0,
                0,
                0,
            )
    await conn.copy_records_to_table(
        "consumption_minute",
        records=[(*k, *v) for k, v in consumption.items()],
        columns=(
            "minute",
            "tenant",
            "tenant_method",
            "feature",
            "agent",
            "src_workload",
            "dst",
            "protocol",
            "requests",
            "errors",
            "bytes_in",
            "bytes_out",
            "busy_us",
            "tokens_in",
            "tokens_out",
            "tokens_cached",
            "tokens_reasoning",
        ),
    )
    ai = {}
    ai_span = max(60, scale.ai_rows // 20)
    while len(ai) < scale.ai_rows:
        minute = LIVE_END - timedelta(minutes=rnd.randint(1, ai_span))
        provider, model, price_in, price_out = rnd.choice(MODELS)
        t = rnd.choices(tenants, [weight[x] for x in tenants])[0]
        agent = rnd.choice(AGENTS[2:])
        key = (minute, t, "header", "assistant", agent, "assistant", provider, model)
        tin, tout = rnd.randint(800, 9000), rnd.randint(100, 1800)
        cached = tin // rnd.randint(3, 9)
        ai[key] = (rnd.randint(1, 6), tin, tout, cached, 0, (tin * price_in + tout * price_out) * 15 // 1000)
    await conn.copy_records_to_table(
        "ai_usage_minute",
        records=[(*k, *v) for k, v in ai.items()],
        columns=(
            "minute",
            "tenant",
            "tenant_method",
            "feature",
            "agent",
            "src_workload",
            "provider",
            "model",
            "requests",
            "tokens_in",
            "tokens_out",
            "tokens_cached",
            "tokens_reasoning",
            "cost_micros",
        ),
    )
    alerts = [
        ("budget", "firing", tenants[0], "assistant", "support-bot", LIVE_END - timedelta(minutes=12), None),
        ("spike", "firing", tenants[2], "assistant", "sql-copilot", LIVE_END - timedelta(minutes=4), None),
        (
            "spike",
            "resolved",
            tenants[1],
            "assistant",
            "summarizer",
            LIVE_END - timedelta(hours=5),
            LIVE_END - timedelta(hours=4, minutes=20),
        ),
        (
            "budget",
            "resolved",
            tenants[3 % len(tenants)],
            "assistant",
            "",
            LIVE_END - timedelta(days=2),
            LIVE_END - timedelta(days=2) + timedelta(minutes=35),
        ),
    ]
    await conn.executemany(
        "INSERT INTO alert_state (rule_key, tenant, feature, agent, reason, state, alert_id, started_at, window_s, "
        "resolved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 300, $9)",
        [
            (json.dumps([t, f, g, 5_000_000, 3.0, 300]), t, f, g, reason, st, f"al-{i:04d}", at, done)
            for i, (reason, st, t, f, g, at, done) in enumerate(alerts)
        ],
    )
    return {
        "cost_lines": len(lines),
        "allocations": len(allocations),
        "consumption_minute": len(consumption),
        "ai_usage_minute": len(ai),
    }
