"""Attributor service: the durable JetStream consumer that turns redacted call batches into consumption rows.

Reads: ``COSTMESH_EVENTS`` through the durable pull consumer (all replicas share it as one work queue). Writes:
``consumption_minute`` and ``applied_batches`` in PostgreSQL. A message is acknowledged (double ack: the server
confirms) only after its transaction committed, so a crash at any point leads to redelivery, and redelivery to no
change.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from costmesh.common import db, natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Codec

from .apply import apply_batch

log = logging.getLogger(__name__)


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config
    pool = await db.create_pool(ctx.dsn)
    await db.migrate(pool)
    nc = await natsio.connect(cfg.nats, ctx.nats_url, "costmesh-attributor")
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    await natsio.ensure_consumer(js, cfg.nats.stream, cfg.attributor.durable)
    sub = await js.pull_subscribe(natsio.EVENTS_WILDCARD, durable=cfg.attributor.durable, stream=cfg.nats.stream)
    codec = Codec()
    ctx.health.update(applied_batches=0, duplicate_batches=0)
    ctx.ready = True
    try:
        while not ctx.stopping.is_set():
            try:
                msgs = await sub.fetch(cfg.attributor.fetch_batch, timeout=1)
            except NatsTimeout:
                continue
            for msg in msgs:
                try:
                    batch = codec.decode_batch(msg.data)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    ERRORS.labels("attributor", "schema").inc()
                    log.error("terminating a message that does not match the contract", extra={"reason": str(exc)})
                    await msg.term()
                    continue
                try:
                    async with pool.acquire() as conn:
                        fresh = await apply_batch(conn, batch)
                except db.TRANSIENT_ERRORS as exc:
                    log.warning("database unavailable, batch left for redelivery", extra={"why": repr(exc)})
                    await asyncio.sleep(1)
                    break
                await msg.ack_sync()
                key = "applied_batches" if fresh else "duplicate_batches"
                ctx.health[key] = int(ctx.health[key]) + 1
                BATCHES.labels("attributor", "applied" if fresh else "duplicate").inc()
                if fresh:
                    RECORDS.labels("attributor").inc(len(batch.records))
    finally:
        # close, not drain: a pull subscription never finishes draining, and nothing is in flight once the loop ends.
        await sub.unsubscribe()
        await nc.close()
        await pool.close()
