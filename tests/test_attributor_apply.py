"""The apply step against a real PostgreSQL: one transaction per group, duplicates inside and across groups change
nothing, the graph and queue tables fill from the same staging rows, AI tokens are priced in integer micro-dollars."""

from __future__ import annotations

import asyncpg

from costmesh.attributor.apply import apply_batches, prepare
from costmesh.common import db
from costmesh.common.config import Config, Price
from costmesh.common.prices import ModelPrice, PriceTable, cost_of
from costmesh.common.schemas import CallBatch, ObservedCall

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def call(**kw) -> ObservedCall:
    base = dict(window_start_us=T0, window_end_us=T0 + 1_000_000, node="n", src_workload="web", dst="db:5432")
    base.update(protocol="http")
    base.update(kw)
    return ObservedCall(**base)


async def _conn(dsn: str) -> asyncpg.Connection:
    pool = await db.create_pool(dsn)
    await db.migrate(pool)
    await pool.close()
    conn = await asyncpg.connect(dsn)
    await prepare(conn)
    return conn


async def test_group_applies_once_and_skips_repeats(fresh_dsn):
    conn = await _conn(fresh_dsn)
    try:
        a = CallBatch(
            batch_id="a", node="n", seq=1, records=[call(tenant="t1", requests=2), call(tenant="t2", requests=3)]
        )
        b = CallBatch(
            batch_id="b", node="n", seq=2, records=[call(tenant="t1", requests=5, window_start_us=T0 + 59_000_000)]
        )
        done = await apply_batches(conn, [a, b, a], PriceTable())
        assert done.fresh == {"a", "b"} and done.duplicates == 1 and done.records == 3
        again = await apply_batches(conn, [b], PriceTable())
        assert again.fresh == set() and again.records == 0
        rows = await conn.fetch("SELECT tenant, minute, requests FROM consumption_minute ORDER BY tenant")
        assert [(r["tenant"], r["requests"]) for r in rows] == [("t1", 7), ("t2", 3)]
        assert rows[0]["minute"].timestamp() * 1_000_000 == T0
        assert await conn.fetchval("SELECT count(*) FROM applied_batches") == 2
        assert await conn.fetchval("SELECT count(*) FROM dirty_minutes") == 1
    finally:
        await conn.close()


async def test_prepared_rows_of_a_group_with_a_repeated_batch_count_it_once(fresh_dsn):
    """The feeder folds every fetched message; when one batch id comes twice in a group (a copy re-sent after the
    de-duplication window, fetched together with the first), those rows hold it twice and must not be used."""
    from costmesh.attributor.apply import staging_copy

    conn = await _conn(fresh_dsn)
    try:
        a = CallBatch(batch_id="a", node="n", seq=1, records=[call(tenant="t1", requests=2)])
        b = CallBatch(batch_id="b", node="n", seq=2, records=[call(tenant="t1", requests=5)])
        group = [a, b, a]
        done = await apply_batches(conn, group, PriceTable(), staging_copy(group))
        assert done.fresh == {"a", "b"} and done.duplicates == 1 and done.records == 2
        assert await conn.fetchval("SELECT requests FROM consumption_minute") == 7
    finally:
        await conn.close()


async def test_graph_and_queue_edges(fresh_dsn):
    conn = await _conn(fresh_dsn)
    try:
        records = [
            call(src_workload="web", dst="orders", requests=4, busy_us=400),
            call(src_workload="orders", dst="orders-db:5432", protocol="postgres", requests=8, busy_us=900),
            call(
                src_workload="orders",
                dst="kafka:9092",
                protocol="kafka",
                operation="produce order-events",
                tenant="t1",
                tenant_method="header",
                requests=3,
                bytes_out=300,
            ),
            call(
                src_workload="mailer",
                dst="kafka:9092",
                protocol="kafka",
                operation="fetch order-events",
                requests=2,
                bytes_in=280,
            ),
            call(src_workload="orders", dst="api.openai.com", protocol="tls", requests=1),
        ]
        await apply_batches(conn, [CallBatch(batch_id="g", node="n", seq=1, records=records)], PriceTable())
        edges = {
            (r["src"], r["dst"]): r["calls"] for r in await conn.fetch("SELECT src, dst, calls FROM graph_edge_minute")
        }
        assert edges == {
            ("web", "orders"): 4,
            ("orders", "orders-db:5432"): 8,
            ("orders", "topic:order-events"): 3,
            ("topic:order-events", "mailer"): 2,
            ("orders", "api.openai.com"): 1,
        }
        kinds = {r["name"]: r["kind"] for r in await conn.fetch("SELECT name, kind FROM graph_node")}
        assert kinds == {
            "web": "workload",
            "orders": "workload",
            "mailer": "workload",
            "orders-db:5432": "database",
            "topic:order-events": "topic",
            "api.openai.com": "external",
        }
        queue = {(r["role"], r["workload"]): r["requests"] for r in await conn.fetch("SELECT * FROM queue_minute")}
        assert queue == {("producer", "orders"): 3, ("consumer", "mailer"): 2}
    finally:
        await conn.close()


async def test_ai_tokens_priced_in_integer_micros(fresh_dsn):
    conn = await _conn(fresh_dsn)
    try:
        records = [
            call(
                dst="api.openai.com",
                protocol="tls",
                tenant="t1",
                provider="openai",
                model="gpt-4o-2024-08-06",
                requests=1,
                tokens_in=1000,
                tokens_out=500,
                tokens_cached=200,
            ),
            call(
                dst="api.openai.com",
                protocol="tls",
                tenant="t1",
                provider="openai",
                model="gpt-4o",
                requests=1,
                tokens_in=10,
                tokens_out=0,
            ),
        ]
        done = await apply_batches(conn, [CallBatch(batch_id="ai", node="n", seq=1, records=records)], PriceTable())
        # tokens_in excludes the cache reads (ObservedCall): 1000 × 2.50 + 200 × 1.25 + 500 × 10.00 $/Mtok
        # = 7750 µ$; 10 × 2.50 = 25 µ$
        assert [c.cost_micros for c in done.ai_costs] == [7750, 25]
        row = await conn.fetchrow(
            "SELECT sum(cost_micros)::bigint AS c, sum(tokens_in)::bigint AS t FROM ai_usage_minute"
        )
        assert (row["c"], row["t"]) == (7775, 1010)
    finally:
        await conn.close()


def test_prices_defaults_overrides_and_rounding():
    table = PriceTable()
    assert table.cost_micros("openai", "gpt-4o-mini", 1_000_000, 0) == 150_000
    assert table.cost_micros("azure", "gpt-4o", 0, 1_000_000) == 10_000_000  # alias to OpenAI's list price
    assert table.cost_micros("anthropic", "claude-sonnet-4-20250514", 1_000_000, 1_000_000) == 18_000_000
    assert table.cost_micros("bedrock", "amazon.nova-micro-v1:0", 1_000_000, 0) == 35_000
    assert table.cost_micros("gemini", "gemini-2.5-flash", 0, 100, 0, 100) == 250  # thinking tokens at output rate
    assert table.cost_micros("nobody", "unknown-model", 10**9, 10**9) == 0
    assert table.lookup("nobody", "unknown-model") is None
    # half up, once per call: 1 token of gpt-4o-mini input = 0.15 µ$ → 0; 4 tokens = 0.6 → 1
    assert table.cost_micros("openai", "gpt-4o-mini", 1, 0) == 0
    assert table.cost_micros("openai", "gpt-4o-mini", 4, 0) == 1
    # each token in one field: 10 input + 50 cached (no cache rate: the input rate) at 1 µ$, 6 plain output at 2 µ$
    # and the 4 reasoning tokens of the 10 output at their own configured rate of 5 µ$: 60 + 12 + 20 = 92 µ$
    assert cost_of(ModelPrice(1_000_000, 2_000_000, None, None, 5_000_000), 10, 10, 50, 4) == 92
    cfg = Config(prices=[Price(provider="openai", model="gpt-4o", input_micros_per_mtok=1, output_micros_per_mtok=2)])
    assert PriceTable.from_config(cfg).cost_micros("openai", "gpt-4o", 1_000_000, 1_000_000) == 3
    assert PriceTable.from_config(cfg).cost_micros("openai", "gpt-4o-mini", 1_000_000, 0) == 150_000


async def test_ai_cost_per_tenant_is_served_minutes_after_the_call(fresh_dsn):
    import aiohttp
    from aiohttp.test_utils import TestServer

    from costmesh.api.app import make_app
    from costmesh.common.runtime import ServiceContext

    conn = await _conn(fresh_dsn)
    pool = await db.create_pool(fresh_dsn)
    server = TestServer(make_app(pool, ServiceContext("api", Config(), "", fresh_dsn)))
    await server.start_server()
    try:
        records = [
            call(
                dst="api.anthropic.com",
                protocol="tls",
                tenant="acme",
                provider="anthropic",
                model="claude-sonnet-4-5",
                requests=2,
                tokens_in=1_000_000,
                tokens_out=100_000,
            ),
            call(
                dst="api.openai.com",
                protocol="tls",
                tenant="globex",
                provider="openai",
                model="gpt-4o-mini",
                requests=1,
                tokens_in=1_000_000,
                tokens_out=0,
            ),
        ]
        await apply_batches(conn, [CallBatch(batch_id="c", node="n", seq=1, records=records)], PriceTable())
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.make_url("/v1/ai-cost"), params={"group_by": "tenant"}) as resp,
        ):
            body = await resp.json()
        # $3.00 + 0.1 x $15.00 = $4.50 for acme; $0.15 for globex
        assert [(r["tenant"], r["cost_micros"]) for r in body["rows"]] == [("acme", 4_500_000), ("globex", 150_000)]
    finally:
        await server.close()
        await pool.close()
        await conn.close()


def test_staging_rows_fold_per_window_and_key():
    from costmesh.attributor.apply import staging_rows

    same = [CallBatch(batch_id=str(i), node="n", seq=i, records=[call(tenant="t", requests=1)] * 50) for i in range(4)]
    spread = [
        CallBatch(batch_id=f"s{i}", node="n", seq=i, records=[call(tenant=f"t{i}-{j}", requests=1) for j in range(50)])
        for i in range(4)
    ]
    folded = staging_rows(same)
    assert len(folded) == 1 and folded[0][9] == 200  # 200 records of one key and window: one row, requests summed
    assert len(staging_rows(spread)) == 200  # nothing to fold: one row per record
