"""The plain-PostgreSQL storage flavour on a real server: daily partitions ahead, the DEFAULT partition emptied into a
new partition, hourly/daily rollups equal to the per-minute sums, retention dropping whole partitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from costmesh.attributor import maintenance, storage
from costmesh.attributor.apply import apply_batches, prepare
from costmesh.common import db
from costmesh.common.config import Config
from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CallBatch, ObservedCall

NOW = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)


def us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000


def batch(batch_id: str, at: datetime, tenant: str, requests: int) -> CallBatch:
    call = ObservedCall(
        window_start_us=us(at),
        window_end_us=us(at) + 1_000_000,
        node="n",
        src_workload="web",
        dst="db:5432",
        protocol="postgres",
        tenant=tenant,
        tenant_method="header",
        requests=requests,
        busy_us=requests * 10,
    )
    return CallBatch(batch_id=batch_id, node="n", seq=1, records=[call])


async def _setup(dsn: str) -> tuple[asyncpg.Connection, asyncpg.Connection]:
    pool = await db.create_pool(dsn)
    await db.migrate(pool)
    await pool.close()
    writer = await asyncpg.connect(dsn)
    await prepare(writer)
    upkeep = await asyncpg.connect(dsn)
    await maintenance.prepare(upkeep)
    return writer, upkeep


async def _partition_of(conn: asyncpg.Connection, at: datetime) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS p FROM consumption_minute WHERE minute = $1", at
    )
    return [r["p"] for r in rows]


async def test_partitions_rollups_and_retention(fresh_dsn):
    writer, upkeep = await _setup(fresh_dsn)
    cfg = Config()
    prices = PriceTable()
    try:
        assert await storage.flavour(upkeep) == "partitioned"
        up = await maintenance.run_pass(upkeep, cfg, NOW)
        days = {storage.partition_name((NOW + timedelta(days=d)).date()) for d in range(-14, 4)}
        assert set(up.partitions_created) == days

        t1 = NOW.replace(minute=5, second=0, microsecond=0)
        t2 = t1 + timedelta(minutes=1)
        old = datetime(2026, 1, 1, tzinfo=UTC)
        await apply_batches(
            writer,
            [
                batch("a", t1, "acme", 3),
                batch("b", t2, "acme", 4),
                batch("c", t2, "globex", 5),
                batch("o", old, "x", 1),
            ],
            prices,
        )
        assert await _partition_of(upkeep, t1) == [storage.partition_name(t1.date())]
        assert await _partition_of(upkeep, old) == ["consumption_minute_default"]

        up = await maintenance.run_pass(upkeep, cfg, NOW + timedelta(minutes=30))
        assert up.hours_refreshed == 2 and up.days_refreshed == 2  # 12:00 on the 26th and 00:00 on 1 January
        hourly = await upkeep.fetch(
            "SELECT tenant, requests FROM consumption_hourly WHERE hour = $1 ORDER BY tenant", t1.replace(minute=0)
        )
        assert [(r["tenant"], r["requests"]) for r in hourly] == [("acme", 7), ("globex", 5)]
        daily = await upkeep.fetchval(
            "SELECT sum(requests) FROM consumption_daily WHERE day = $1", t1.replace(hour=0, minute=0)
        )
        assert daily == 12
        assert await upkeep.fetchval("SELECT count(*) FROM dirty_minutes") == 0
        # late data re-opens a rolled-up minute: the hour is recomputed, not double counted
        await apply_batches(writer, [batch("late", t1, "acme", 10)], prices)
        await maintenance.run_pass(upkeep, cfg, NOW + timedelta(minutes=31))
        assert (
            await upkeep.fetchval(
                "SELECT requests FROM consumption_hourly WHERE hour = $1 AND tenant = 'acme'", t1.replace(minute=0)
            )
            == 17
        )

        # 20 days on: data arrives for a day without a partition (it lands in DEFAULT), then the pass creates the
        # partition, moves the rows into it, and drops the partitions wholly past 14 days of retention.
        later = NOW + timedelta(days=20)
        await apply_batches(writer, [batch("d", later, "acme", 2)], prices)
        assert await _partition_of(upkeep, later) == ["consumption_minute_default"]
        up = await maintenance.run_pass(upkeep, cfg, later)
        assert storage.partition_name(later.date()) in up.partitions_created
        assert await _partition_of(upkeep, later) == [storage.partition_name(later.date())]
        cutoff = later - timedelta(days=14)
        assert up.partitions_dropped and all(
            datetime.strptime(p[-8:], "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1) <= cutoff
            for p in up.partitions_dropped
        )
        assert await upkeep.fetchval("SELECT count(*) FROM consumption_minute WHERE minute < $1", cutoff) == 0
        assert await upkeep.fetchval("SELECT count(*) FROM consumption_minute WHERE minute = $1", old) == 0
        # hourly rows are kept 13 months and daily rows for good
        assert await upkeep.fetchval("SELECT sum(requests) FROM consumption_hourly WHERE hour < $1", cutoff) == 23
        assert await upkeep.fetchval("SELECT sum(requests) FROM consumption_daily WHERE day < $1", cutoff) == 23
    finally:
        await writer.close()
        await upkeep.close()


async def test_old_replay_is_not_expired_on_arrival(fresh_dsn):
    writer, upkeep = await _setup(fresh_dsn)
    try:
        old = datetime(2026, 1, 1, 9, tzinfo=UTC)
        await apply_batches(writer, [batch("o", old, "acme", 1)], PriceTable())
        await maintenance.run_pass(upkeep, Config(), NOW)
        assert await upkeep.fetchval("SELECT sum(requests) FROM consumption_minute") == 1
        assert await upkeep.fetchval("SELECT sum(requests) FROM consumption_hourly") == 1
    finally:
        await writer.close()
        await upkeep.close()
