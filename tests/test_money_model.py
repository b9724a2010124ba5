"""The one attribution model end to end: the exact queue-aware solver, AI lines split by the token kind they meter,
re-allocation of a period after its minutes expired, and the same consumption giving the same allocation from the
live path (attributor tables → hourly rollups → billing service) and from ``costmesh report``'s path.

Each test here failed on the code before the single model (b85bdd1): the queue worker's cost was unallocated on the
bill, an output-token line was split by total tokens, and a period re-allocated after retention lost its usage.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmesh.attributor import maintenance
from costmesh.attributor.apply import apply_batches, prepare
from costmesh.billing import service, store, tokenkind
from costmesh.billing.allocate import Allocator, Target
from costmesh.billing.model import CostLine, ImportResult, Window
from costmesh.billing.pipeline import period_window, run
from costmesh.common import db
from costmesh.common.attribution import inbound_mixes
from costmesh.common.config import Config, ResourceMapping, Workload
from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CallBatch, ObservedCall
from costmesh.common.usage import QueueUse, Usage, hourly_from_records

T = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
HOUR = 3_600_000_000


def us(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000


def call(src: str, dst: str, requests: int, tenant: str = "", method: str = "unallocated", **kw) -> ObservedCall:
    start = us(T) + kw.pop("offset_s", 0) * 1_000_000
    return ObservedCall(
        window_start_us=start,
        window_end_us=start + 1_000_000,
        node="n",
        src_workload=src,
        dst=dst,
        protocol=kw.pop("protocol", "http"),
        tenant=tenant,
        tenant_method=method,
        requests=requests,
        **kw,
    )


# -- the solver --------------------------------------------------------------------------------------------------


def use(src: str, dst: str, requests: int, tenant: str = "", method: str = "header") -> Usage:
    return Usage(src_workload=src, dst=dst, tenant=tenant, tenant_method=method if tenant else "", requests=requests)


def test_cycle_is_solved_exactly():
    mixes = inbound_mixes(
        [
            use("gw", "web", 30, "acme"),
            use("gw", "web", 10, "globex"),
            use("web", "orders", 20),
            use("pricing", "orders", 4),
            use("orders", "pricing", 4),
        ]
    )
    for w in ("orders", "pricing"):
        assert mixes[w] == {
            ("acme", "", "", "propagated"): Fraction(3, 4),
            ("globex", "", "", "propagated"): Fraction(1, 4),
        }


def test_queue_consumer_takes_the_producers_mix_through_untagged_producers_too():
    usage = [use("gw", "web", 2, "acme"), use("gw", "web", 6, "globex")]
    queues = [
        QueueUse(topic="jobs", role="producer", workload="api", tenant="acme", tenant_method="header", requests=1),
        QueueUse(topic="jobs", role="producer", workload="web", requests=4),  # untagged: web's mix, 1:3
        QueueUse(topic="jobs", role="consumer", workload="worker", requests=7),
    ]
    mix = inbound_mixes(usage, queues)["worker"]
    # 1 acme message + 4 of web's (1 acme : 3 globex) = 2 acme : 3 globex
    assert mix == {("acme", "", "", "propagated"): Fraction(2, 5), ("globex", "", "", "propagated"): Fraction(3, 5)}


# -- the live path: records → attributor → hourly rollups → billing ------------------------------------------------

CFG = Config(
    workloads=[Workload(address="10.0.0.9", name="cron", background=True)],
    resources=[
        ResourceMapping(resource="orders-db", kind="database", match="^db-orders$", endpoints=["orders-db:5432"]),
        ResourceMapping(resource="smtp", kind="other", match="^smtp$", endpoints=["smtp.example.com:25"]),
        ResourceMapping(resource="openai", kind="ai_api", match="^openai$", endpoints=["api.openai.com"]),
    ],
)

RECORDS = [
    call("gateway", "web", 30, "acme", "header"),
    call("gateway", "web", 10, "globex", "header"),
    call("web", "orders", 20, busy_us=2000),
    call("orders", "orders-db:5432", 8, protocol="postgres", busy_us=801),
    call("orders", "pricing", 4),
    call("pricing", "orders", 4),
    # produced by tagged calls in the hour before, consumed untagged now: the worker's mail is theirs
    call("orders", "kafka:9092", 3, "acme", "header", protocol="kafka", operation="produce mails", offset_s=-60),
    call("orders", "kafka:9092", 1, "globex", "header", protocol="kafka", operation="produce mails", offset_s=-60),
    call("mailer", "kafka:9092", 2, protocol="kafka", operation="fetch mails", bytes_in=400),
    call("mailer", "smtp.example.com:25", 8),
    call("cron", "orders-db:5432", 5, protocol="postgres", busy_us=100),
    call("stray", "orders-db:5432", 7, protocol="postgres", busy_us=99),
    # a reader (long prompts) and a writer (long answers) on one model
    call(
        "web",
        "api.openai.com",
        1,
        "acme",
        "header",
        protocol="tls",
        provider="openai",
        model="gpt-4o",
        tokens_in=900_000,
        tokens_out=10_000,
    ),
    call(
        "web",
        "api.openai.com",
        1,
        "globex",
        "header",
        protocol="tls",
        provider="openai",
        model="gpt-4o",
        tokens_in=100_000,
        tokens_out=90_000,
    ),
]


def bill_line(line_id: str, resource: str, amount: str, window: Window | None = None, **kw) -> CostLine:
    return CostLine(
        line_id=line_id,
        source="focus",
        billing_period="2026-03",
        window=window or Window(us(T), us(T) + HOUR),
        amount=Decimal(amount),
        currency="USD",
        resource_id=resource,
        **kw,
    )


LINES = [
    bill_line("db", "db-orders", "10.00"),
    bill_line("mail", "smtp", "4.00"),
    bill_line("ai-in", "openai", "2.50", sku_meter="gpt-4o Input Tokens", pricing_unit="1M Tokens"),
    bill_line("ai-out", "openai", "1.00", sku_meter="gpt-4o Output Tokens", pricing_unit="1M Tokens"),
    bill_line("ai-all", "openai", "3.40", description="gpt-4o usage"),
]


async def _live(dsn: str, records: list[ObservedCall], lines: list[CostLine], cfg: Config = CFG):
    """Apply ``records`` as the attributor does, roll them up, import ``lines`` and allocate their period as the
    billing service does; returns the connection pair and the allocations read back from the table."""
    writer = await asyncpg.connect(dsn)
    await prepare(writer)
    upkeep = await asyncpg.connect(dsn)
    await maintenance.prepare(upkeep)
    await apply_batches(writer, [CallBatch(batch_id="b", node="n", seq=1, records=records)], PriceTable())
    await maintenance.run_pass(upkeep, cfg, T + timedelta(hours=3))
    await store.import_file(upkeep, ImportResult("bill.csv", "sha-bill", lines, []), "focus")
    await service.allocate_period(upkeep, "2026-03", cfg)
    return writer, upkeep, await store.load_allocations(upkeep, "2026-03")


def _rows(allocations) -> set[tuple]:
    return {(a.line_id, a.tenant, a.method, a.amount, a.basis, a.feature, a.agent) for a in allocations}


def _by(allocations, line_id: str) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for a in allocations:
        if a.line_id == line_id:
            out[(a.tenant, a.method)] = out.get((a.tenant, a.method), Decimal(0)) + a.amount
    return out


async def _schema(dsn: str) -> None:
    pool = await db.create_pool(dsn)
    await db.migrate(pool)
    await pool.close()


async def test_live_path_follows_queues_splits_ai_by_kind_and_reallocates_after_expiry(fresh_dsn):
    await _schema(fresh_dsn)
    writer, upkeep, first = await _live(fresh_dsn, RECORDS, LINES)
    try:
        # the DB: orders' 801 µs by its inbound mix 3:1 (web's, through the orders↔pricing cycle), cron modeled,
        # the stray caller explicit
        assert _by(first, "db") == {
            ("acme", "propagated"): Decimal("6.007500"),
            ("globex", "propagated"): Decimal("2.002500"),
            ("", "platform"): Decimal("1.000000"),
            ("", "unallocated"): Decimal("0.990000"),
        }
        # the queue worker's mail goes by the producers' mix of the hour before (3 acme : 1 globex)
        assert _by(first, "mail") == {
            ("acme", "propagated"): Decimal("3.00"),
            ("globex", "propagated"): Decimal("1.00"),
        }
        # input by input tokens (900k : 100k), output by output tokens (10k : 90k), a mixed line by price
        assert _by(first, "ai-in") == {("acme", "direct"): Decimal("2.25"), ("globex", "direct"): Decimal("0.25")}
        assert _by(first, "ai-out") == {("acme", "direct"): Decimal("0.10"), ("globex", "direct"): Decimal("0.90")}
        # acme 900k × 2.50 + 10k × 10 = 2.35 $, globex 100k × 2.50 + 90k × 10 = 1.15 $ of 3.50 $
        mixed = _by(first, "ai-all")
        assert mixed == {("acme", "direct"): Decimal("2.282857"), ("globex", "direct"): Decimal("1.117143")}
        assert {a.basis for a in first if a.line_id.startswith("ai-")} == {"tokens_in", "tokens_out", "tokens_cost"}

        # the same report path (records summed in memory, the same run) gives the very same rows
        report = run(LINES, hourly_from_records(RECORDS), CFG, window=period_window("2026-03"))
        assert _rows(report.allocations) == _rows(first)

        # 20 days later: the minutes of T are past the 14-day retention, the hours are kept
        later = T + timedelta(days=20)
        fresh = ObservedCall(
            window_start_us=us(later), window_end_us=us(later) + 1, node="n", src_workload="x", dst="y",
            protocol="http", requests=1,
        )  # fmt: skip
        await apply_batches(writer, [CallBatch(batch_id="later", node="n", seq=2, records=[fresh])], PriceTable())
        await maintenance.run_pass(upkeep, CFG, later + timedelta(hours=1))
        for table in ("consumption_minute", "queue_minute", "ai_usage_minute"):
            assert await upkeep.fetchval(f"SELECT count(*) FROM {table} WHERE minute < $1", T + timedelta(hours=1)) == 0
        await service.allocate_period(upkeep, "2026-03", CFG)
        again = await store.load_allocations(upkeep, "2026-03")
        assert _rows(again) == _rows(first)
    finally:
        await writer.close()
        await upkeep.close()


# -- property: the live path and the report path agree on any consumption ------------------------------------------

TENANTS = st.sampled_from(["", "", "acme", "globex", "initech"])
WORKLOADS = ["gateway", "web", "orders", "worker", "cron"]


@st.composite
def records(draw) -> list[ObservedCall]:
    out = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["http", "db", "produce", "fetch", "ai"]))
        src = draw(st.sampled_from(WORKLOADS))
        tenant = draw(TENANTS)
        offset = draw(st.integers(-2 * 3600, 2 * 3600 - 1))
        common = {
            "window_start_us": us(T) + offset * 1_000_000,
            "window_end_us": us(T) + offset * 1_000_000 + 1_000_000,
            "node": "n",
            "src_workload": src,
            "tenant": tenant,
            "tenant_method": "header" if tenant else "unallocated",
            "requests": draw(st.integers(1, 50)),
        }
        if kind == "http":
            dst = draw(st.sampled_from([w for w in WORKLOADS if w != src] + ["smtp.example.com:25"]))
            out.append(ObservedCall(dst=dst, protocol="http", **common))
        elif kind == "db":
            out.append(ObservedCall(dst="orders-db:5432", protocol="postgres", busy_us=draw(st.integers(0, 10**6)),
                                    **common))  # fmt: skip
        elif kind in ("produce", "fetch"):
            topic = draw(st.sampled_from(["mails", "jobs"]))
            out.append(ObservedCall(dst="kafka:9092", protocol="kafka", operation=f"{kind} {topic}",
                                    bytes_in=draw(st.integers(0, 10**4)), bytes_out=draw(st.integers(0, 10**4)),
                                    **common))  # fmt: skip
        else:
            out.append(ObservedCall(dst="api.openai.com", protocol="tls", provider="openai",
                                    model=draw(st.sampled_from(["gpt-4o", "gpt-4o-mini"])),
                                    tokens_in=draw(st.integers(0, 10**6)), tokens_out=draw(st.integers(0, 10**5)),
                                    tokens_cached=draw(st.integers(0, 10**5)), **common))  # fmt: skip
    return out


PROPERTY_LINES = [
    *LINES,
    bill_line("db-early", "db-orders", "7.77", window=Window(us(T) - HOUR, us(T))),
    bill_line("db-day", "db-orders", "123.456789", window=Window(us(T) - 2 * HOUR, us(T) + 2 * HOUR)),
    bill_line("mail-late", "smtp", "0.05", window=Window(us(T) + HOUR, us(T) + 2 * HOUR)),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records())
def test_same_consumption_same_allocation_live_and_report(postgres, recs):
    async def live() -> set[tuple]:
        admin = await asyncpg.connect(postgres.dsn)
        name = f"prop_{id(recs)}"
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
        try:
            await _schema(dsn)
            writer, upkeep, got = await _live(dsn, recs, PROPERTY_LINES)
            await writer.close()
            await upkeep.close()
            return _rows(got)
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            await admin.close()

    live_rows = asyncio.run(live())
    report = run(PROPERTY_LINES, hourly_from_records(recs), CFG, window=period_window("2026-03"))
    assert _rows(report.allocations) == live_rows
    for line in PROPERTY_LINES:
        assert sum(a.amount for a in report.allocations if a.line_id == line.line_id) == line.amount


# -- which token kind a line meters, in the providers' own words ---------------------------------------------------


def kind_of(**fields) -> str | None:
    return tokenkind.token_kind(bill_line("x", "r", "1", **fields))


def test_token_kind_from_provider_line_shapes():
    # AWS CUR usage types for Bedrock
    assert kind_of(usage_type="USE1-NovaMicro-input-tokens") == "input"
    assert kind_of(usage_type="USE1-Claude4.5Sonnet-output-tokens") == "output"
    assert kind_of(usage_type="USE1-Claude4.5Haiku-cache-read-input-token-count") == "cache_read"
    assert kind_of(usage_type="USE1-Claude4.5Haiku-CacheWriteInputTokenCount") == "cache_write"
    # Azure OpenAI meters (FOCUS SkuMeter / ChargeDescription)
    assert kind_of(sku_meter="gpt-4o-0806-Inp-glbl", pricing_unit="1K") == "input"
    assert kind_of(description="gpt 4o 0806 Outp glbl Tokens") == "output"
    assert kind_of(sku_meter="gpt-4o-0806-cached-Inp-glbl") == "cache_read"
    # Vertex AI / Gemini SKU descriptions
    assert kind_of(description="Gemini 2.0 Flash Input Text Tokens", unit="Count") == "input"
    assert kind_of(description="Gemini 2.0 Flash Output Text Tokens") == "output"
    # a line of several kinds, or of none, is split by price-weighted tokens
    assert kind_of(description="gpt-4o input and output tokens") is None
    assert kind_of(description="Azure OpenAI") is None


def test_a_line_naming_a_model_is_split_over_that_models_calls_only():
    window = Window(0, HOUR)
    ai = [
        Usage(
            src_workload="a",
            dst="api.openai.com",
            tenant="acme",
            tenant_method="header",
            start_us=0,
            end_us=HOUR,
            provider="openai",
            model="gpt-4o-2024-08-06",
            tokens_in=10,
        ),
        Usage(
            src_workload="a",
            dst="api.openai.com",
            tenant="globex",
            tenant_method="header",
            start_us=0,
            end_us=HOUR,
            provider="openai",
            model="gpt-4o-mini",
            tokens_in=990,
        ),
    ]
    line = CostLine(line_id="l", source="focus", billing_period="1970-01", window=window, amount=Decimal("1"),
                    currency="USD", sku_meter="gpt-4o-0806-Inp-glbl")  # fmt: skip
    allocs = Allocator([], ai=ai).allocate(line, Target("openai", "ai_api", frozenset({"api.openai.com"})))
    assert [(a.tenant, a.amount, a.basis) for a in allocs] == [("acme", Decimal("1"), "tokens_in")]
