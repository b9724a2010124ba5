"""Storage upkeep that PostgreSQL does not do by itself: partitions, rollups and retention.

Reads: ``storage_flavour`` (written by migration 3), ``dirty_minutes`` and the per-minute tables. Writes: daily
partitions of ``consumption_minute`` (plain flavour), ``consumption_hourly`` / ``consumption_daily`` (plain flavour;
with TimescaleDB they are continuous aggregates refreshed by its own policies), ``queue_hourly`` and
``ai_usage_hourly`` (both flavours), and deletes what is past retention. The hourly tables carry every dimension
allocation reads, so billing allocates from them alone and a period allocates the same after its minutes expired.

Two flavours, one schema (``costmesh.common.migrations``):

- ``timescaledb``: hypertable, continuous aggregates, compression and retention policies run inside the database;
  nothing to do here but the retention of the attributor's smaller side tables.
- ``partitioned``: daily range partitions ``consumption_minute_pYYYYMMDD`` created ``partitions_ahead_days`` ahead and
  dropped once wholly past retention; a DEFAULT partition catches rows outside every partition (old replays).

Retention counts back from the *newest data held* when that is older than now (``least(now, newest)``), so replaying an
old capture for offline analysis is not deleted on arrival; live data ages out by the wall clock as usual.
All times are UTC (the maintenance session sets ``TimeZone`` so that hour and day buckets are UTC buckets).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from costmesh.common.config import AttributorConfig
from costmesh.common.schemas import COUNTERS

log = logging.getLogger(__name__)

_MEASURES = ", ".join(COUNTERS)
_SUMS = ", ".join(f"sum({m})" for m in COUNTERS)
_DIMS = "tenant, tenant_method, feature, agent, src_workload, dst, protocol"

#: Side tables keyed by ``minute`` that follow the per-minute retention.
MINUTE_TABLES = ("graph_edge_minute", "queue_minute", "ai_usage_minute")
#: Hourly rollups of side tables, kept as long as ``consumption_hourly``: (table, minute source, dimensions, sums).
SIDE_ROLLUPS: tuple[tuple[str, str, str, str], ...] = (
    (
        "queue_hourly",
        "queue_minute",
        "topic, role, workload, tenant, tenant_method, feature, agent",
        "requests, bytes",
    ),
    (
        "ai_usage_hourly",
        "ai_usage_minute",
        "tenant, tenant_method, feature, agent, src_workload, dst, provider, model",
        "requests, tokens_in, tokens_out, tokens_cached, tokens_reasoning, cost_micros",
    ),
)

#: Tables written per hour straight away (``apply``: compute samples, node capacity), kept as long as the rollups.
HOURLY_TABLES = ("compute_hourly", "node_capacity_hourly")


@dataclass
class Upkeep:
    """What one maintenance pass did (for logs, health and tests)."""

    flavour: str = ""
    partitions_created: list[str] = field(default_factory=list)
    partitions_dropped: list[str] = field(default_factory=list)
    hours_refreshed: int = 0
    days_refreshed: int = 0
    rows_expired: int = 0


async def flavour(conn: asyncpg.Connection) -> str:
    return await conn.fetchval("SELECT flavour FROM storage_flavour")


def partition_name(day: date) -> str:
    return f"consumption_minute_p{day:%Y%m%d}"


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


async def retention_base(conn: asyncpg.Connection, now: datetime) -> datetime:
    """``least(now, newest minute held)``: the point retention counts back from."""
    newest = await conn.fetchval("SELECT max(minute) FROM consumption_minute")
    return min(now, newest) if newest is not None else now


async def ensure_partitions(conn: asyncpg.Connection, cfg: AttributorConfig, now: datetime, up: Upkeep) -> None:
    """Create the daily partitions from the retention horizon to ``partitions_ahead_days`` ahead (plain flavour).

    Rows of a new partition's day already in the DEFAULT partition are moved into it in the same transaction, with
    the table locked against writers so that no row of that day slips in between.
    """
    existing = {
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'consumption_minute'"
        )
    }
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=cfg.retention_minute_days)
    for offset in range((today - first).days + cfg.partitions_ahead_days + 1):
        day = first + timedelta(days=offset)
        name = partition_name(day)
        if name in existing:
            continue
        lo, hi = _midnight(day), _midnight(day + timedelta(days=1))
        async with conn.transaction():
            # Writers wait for the few milliseconds this takes: an INSERT planned before the ATTACH would still
            # route this day's rows to DEFAULT, whose constraint no longer allows them.
            await conn.execute("LOCK TABLE consumption_minute IN SHARE ROW EXCLUSIVE MODE")
            await conn.execute("LOCK TABLE consumption_minute_default IN ACCESS EXCLUSIVE MODE")
            await conn.execute(
                f"CREATE TABLE {name} (LIKE consumption_minute INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
                "WITH (fillfactor = 70)"
            )
            await conn.execute(
                f"INSERT INTO {name} SELECT * FROM consumption_minute_default WHERE minute >= $1 AND minute < $2",
                lo,
                hi,
            )
            await conn.execute("DELETE FROM consumption_minute_default WHERE minute >= $1 AND minute < $2", lo, hi)
            await conn.execute(
                f"ALTER TABLE consumption_minute ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
        up.partitions_created.append(name)


async def expire(conn: asyncpg.Connection, cfg: AttributorConfig, now: datetime, plain: bool, up: Upkeep) -> None:
    """Drop what is past retention: whole partitions (plain flavour), rows of the DEFAULT partition, hourly rows,
    and the side tables. Daily rollups are kept.

    The retention base and the deletes read one snapshot (REPEATABLE READ): rows committed while the pass runs (an old
    capture replayed into an empty store as the first pass starts) are neither behind the base nor deleted by it."""
    async with conn.transaction(isolation="repeatable_read"):
        base = await retention_base(conn, now)
        cutoff = base - timedelta(days=cfg.retention_minute_days)
        if plain:
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'consumption_minute' "
                "AND c.relname LIKE 'consumption\\_minute\\_p%'"
            ):
                day = datetime.strptime(r["relname"][-8:], "%Y%m%d").replace(tzinfo=UTC)
                if day + timedelta(days=1) <= cutoff:
                    await conn.execute(f"DROP TABLE {r['relname']}")
                    up.partitions_dropped.append(r["relname"])
            status = await conn.execute("DELETE FROM consumption_minute_default WHERE minute < $1", cutoff)
            up.rows_expired += int(status.split()[-1])
            status = await conn.execute(
                "DELETE FROM consumption_hourly WHERE hour < $1", base - timedelta(days=cfg.retention_hourly_days)
            )
            up.rows_expired += int(status.split()[-1])
        for table in MINUTE_TABLES:
            status = await conn.execute(f"DELETE FROM {table} WHERE minute < $1", cutoff)
            up.rows_expired += int(status.split()[-1])
        status = await conn.execute("DELETE FROM graph_node WHERE last_seen < $1", cutoff)
        up.rows_expired += int(status.split()[-1])
        status = await conn.execute(
            "DELETE FROM applied_batches WHERE applied_at < $1", now - timedelta(days=cfg.applied_batches_keep_days)
        )
        up.rows_expired += int(status.split()[-1])
        for table in (*(t for t, *_ in SIDE_ROLLUPS), *HOURLY_TABLES):
            status = await conn.execute(
                f"DELETE FROM {table} WHERE hour < $1", base - timedelta(days=cfg.retention_hourly_days)
            )
            up.rows_expired += int(status.split()[-1])


async def refresh_rollups(conn: asyncpg.Connection, minutes: list[datetime], up: Upkeep) -> None:
    """Recompute the hourly rows of every hour holding one of ``minutes``, then the daily rows of their days.

    Recomputing a whole bucket (rather than adding deltas) keeps rollups exact whatever arrives late, at the cost of
    re-reading the hour; the caller runs this in the transaction that clears those minutes from ``dirty_minutes``.
    """
    hours = sorted({m.replace(minute=0, second=0, microsecond=0) for m in minutes})
    days = sorted({h.replace(hour=0) for h in hours})
    for buckets, table, column, source, source_column, width in (
        (hours, "consumption_hourly", "hour", "consumption_minute", "minute", "1 hour"),
        (days, "consumption_daily", "day", "consumption_hourly", "hour", "1 day"),
    ):
        for bucket in buckets:
            await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", bucket)
            await conn.execute(
                f"INSERT INTO {table} ({column}, {_DIMS}, {_MEASURES}) "
                f"SELECT $1::timestamptz, {_DIMS}, {_SUMS} FROM {source} "
                f"WHERE {source_column} >= $1 AND {source_column} < $1::timestamptz + interval '{width}' "
                f"GROUP BY {_DIMS}",
                bucket,
            )
    up.hours_refreshed += len(hours)
    up.days_refreshed += len(days)


async def refresh_side_rollups(conn: asyncpg.Connection, minutes: list[datetime]) -> None:
    """Recompute ``queue_hourly`` and ``ai_usage_hourly`` for every hour holding one of ``minutes`` (both flavours),
    whole buckets as ``refresh_rollups`` does, in the caller's transaction."""
    hours = sorted({m.replace(minute=0, second=0, microsecond=0) for m in minutes})
    for table, source, dims, measures in SIDE_ROLLUPS:
        sums = ", ".join(f"sum({m})" for m in measures.split(", "))
        for hour in hours:
            await conn.execute(f"DELETE FROM {table} WHERE hour = $1", hour)
            await conn.execute(
                f"INSERT INTO {table} (hour, {dims}, {measures}) SELECT $1::timestamptz, {dims}, {sums} FROM {source} "
                f"WHERE minute >= $1 AND minute < $1::timestamptz + interval '1 hour' GROUP BY {dims}",
                hour,
            )
