"""The attributor's periodic pass: partitions ahead, hourly rollups of settled minutes, retention.

Reads: ``dirty_minutes`` (minutes a committed batch touched, with a generation counter), the per-minute tables.
Writes: see ``storage``. One pass at a time across all attributor replicas (a session advisory lock); a minute leaves
``dirty_minutes`` only in the transaction that rolled it up, and only if no batch touched it meanwhile (same
generation), so late data is never missed. Tenants are not resolved here: allocation solves them from the hourly
rows with the one solver (``costmesh.common.attribution``), wherever it runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg

from costmesh.common.config import Config

from . import storage

log = logging.getLogger(__name__)

#: Advisory lock key of the maintenance pass ("cm-maint").
MAINTENANCE_LOCK = 0x636D2D6D61696E74
#: At most this many minutes are processed per pass, oldest first, so that one pass stays short.
MAX_MINUTES_PER_PASS = 240


async def prepare(conn: asyncpg.Connection) -> None:
    """Session settings of the maintenance connection: UTC buckets."""
    await conn.execute("SET TIME ZONE 'UTC'")


async def run_pass(conn: asyncpg.Connection, cfg: Config, now: datetime) -> storage.Upkeep | None:
    """One maintenance pass; ``None`` when another replica holds the lock. ``now`` is explicit for tests."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
        return None
    try:
        up = storage.Upkeep(flavour=await storage.flavour(conn))
        plain = up.flavour == "partitioned"
        if plain:
            await storage.ensure_partitions(conn, cfg.attributor, now, up)
        while True:
            dirty = await conn.fetch(
                "SELECT minute, gen FROM dirty_minutes WHERE minute < $1 ORDER BY minute LIMIT $2",
                now - timedelta(seconds=cfg.attributor.settle_s),
                MAX_MINUTES_PER_PASS,
            )
            if not dirty:
                break
            minutes = [r["minute"] for r in dirty]
            async with conn.transaction():
                if plain:
                    await storage.refresh_rollups(conn, minutes, up)
                await storage.refresh_side_rollups(conn, minutes)
                await conn.execute(
                    "DELETE FROM dirty_minutes d USING unnest($1::timestamptz[], $2::bigint[]) AS x(m, g) "
                    "WHERE d.minute = x.m AND d.gen = x.g",
                    minutes,
                    [r["gen"] for r in dirty],
                )
            if len(dirty) < MAX_MINUTES_PER_PASS:
                break
        await storage.expire(conn, cfg.attributor, now, plain, up)
        return up
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
