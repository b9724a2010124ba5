"""Tenant resolution: trace, propagation along the graph (with a cycle), queue consumers through the topic's
producer mix, platform for configured background work, unallocated otherwise; splits are exact integers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from costmesh.attributor import maintenance
from costmesh.attributor.apply import apply_batches, prepare
from costmesh.attributor.resolve import solve_mixes, split
from costmesh.common import db
from costmesh.common.config import Config, Workload
from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CallBatch, ObservedCall

T = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def test_split_largest_remainder():
    assert split(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert split(2, {"acme": 3, "globex": 1}) == {"acme": 2, "globex": 0}  # 1.5/0.5: the tie goes to the first name
    assert split(7, {"x": 5}) == {"x": 7}
    assert split(0, {"x": 1, "y": 2}) == {"x": 0, "y": 0}


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=st.dictionaries(st.text(min_size=1, max_size=4), st.integers(min_value=1, max_value=10**12), min_size=1),
)
def test_split_sums_exactly_and_stays_within_one_of_the_quota(total, weights):
    parts = split(total, weights)
    assert sum(parts.values()) == total
    wsum = sum(weights.values())
    for name, part in parts.items():
        assert abs(part * wsum - total * weights[name]) < wsum  # |part - exact quota| < 1, in integers


def test_cycle_converges_to_the_source_mix():
    mixes = solve_mixes(
        inbound_direct={"web": {"acme": 30.0, "globex": 10.0}},
        inbound_from={"orders": {"web": 20.0, "pricing": 4.0}, "pricing": {"orders": 4.0}},
        topic_producers={},
        consumed={},
        tolerance=1e-12,
    )
    for w in ("web", "orders", "pricing"):
        assert abs(mixes[w]["acme"] - 0.75) < 1e-9 and abs(mixes[w]["globex"] - 0.25) < 1e-9


def call(src: str, dst: str, requests: int, tenant: str = "", method: str = "unallocated", **kw) -> ObservedCall:
    start = int(T.timestamp()) * 1_000_000 + kw.pop("offset_s", 0) * 1_000_000
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


async def test_every_untagged_call_gets_a_tenant_or_a_reason(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    await db.migrate(pool)
    await pool.close()
    writer = await asyncpg.connect(fresh_dsn)
    await prepare(writer)
    upkeep = await asyncpg.connect(fresh_dsn)
    await maintenance.prepare(upkeep)
    cfg = Config(workloads=[Workload(address="10.0.0.9", name="cron", background=True)])
    records = [
        call("gateway", "web", 30, "acme", "header"),
        call("gateway", "web", 10, "globex", "header"),
        call("web", "orders", 20, busy_us=2000),
        call("orders", "orders-db:5432", 8, protocol="postgres", busy_us=801),
        call("orders", "pricing", 4),
        call("pricing", "orders", 4),
        call("orders", "api.openai.com", 1, "acme", "trace", protocol="tls"),
        # a topic produced by tagged calls in the minute before, consumed untagged now
        call(
            "orders",
            "kafka:9092",
            3,
            "acme",
            "header",
            protocol="kafka",
            operation="produce order-events",
            bytes_out=300,
            offset_s=-60,
        ),
        call(
            "orders",
            "kafka:9092",
            1,
            "globex",
            "header",
            protocol="kafka",
            operation="produce order-events",
            bytes_out=100,
            offset_s=-60,
        ),
        call("mailer", "kafka:9092", 2, protocol="kafka", operation="fetch order-events", bytes_in=400),
        call("mailer", "smtp.example.com:25", 8),
        call("cron", "orders-db:5432", 5, protocol="postgres"),
        call("stray", "orders-db:5432", 7, protocol="postgres"),
    ]
    try:
        await apply_batches(writer, [CallBatch(batch_id="r", node="n", seq=1, records=records)], PriceTable())
        up = await maintenance.run_pass(upkeep, cfg, T + timedelta(hours=1))
        assert up.minutes_resolved == 2
        rows = await upkeep.fetch(
            "SELECT src_workload, dst, tenant, tenant_method, requests, busy_us FROM attributed_minute "
            "WHERE minute = $1",
            T,
        )
        got = {(r["src_workload"], r["dst"], r["tenant"], r["tenant_method"]): r["requests"] for r in rows}
        assert got == {
            ("gateway", "web", "acme", "header"): 30,
            ("gateway", "web", "globex", "header"): 10,
            ("web", "orders", "acme", "propagated"): 15,
            ("web", "orders", "globex", "propagated"): 5,
            ("orders", "orders-db:5432", "acme", "propagated"): 6,
            ("orders", "orders-db:5432", "globex", "propagated"): 2,
            ("orders", "pricing", "acme", "propagated"): 3,
            ("orders", "pricing", "globex", "propagated"): 1,
            ("pricing", "orders", "acme", "propagated"): 3,
            ("pricing", "orders", "globex", "propagated"): 1,
            ("orders", "api.openai.com", "acme", "trace"): 1,
            ("mailer", "kafka:9092", "acme", "propagated"): 2,
            ("mailer", "kafka:9092", "globex", "propagated"): 0,
            ("mailer", "smtp.example.com:25", "acme", "propagated"): 6,
            ("mailer", "smtp.example.com:25", "globex", "propagated"): 2,
            ("cron", "orders-db:5432", "", "platform"): 5,
            ("stray", "orders-db:5432", "", "unallocated"): 7,
        }
        # a split keeps every measure whole: 801 µs over 3:1 is 601 + 200 (largest remainder), never 600.75 + 200.25
        busy = {
            r["tenant"]: r["busy_us"]
            for r in rows
            if r["src_workload"] == "orders" and r["dst"].startswith("orders-db")
        }
        assert busy == {"acme": 601, "globex": 200}
        # nothing is lost or invented: per edge, attributed totals equal consumed totals
        diff = await upkeep.fetchval(
            "SELECT count(*) FROM (SELECT minute, src_workload, dst, sum(requests) r, sum(busy_us) b "
            "FROM consumption_minute GROUP BY 1, 2, 3 EXCEPT SELECT minute, src_workload, dst, sum(requests), "
            "sum(busy_us) FROM attributed_minute GROUP BY 1, 2, 3) d"
        )
        assert diff == 0
    finally:
        await writer.close()
        await upkeep.close()
