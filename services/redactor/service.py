"""Redactor service: the only way off a node.

Reads: ``CallBatch`` requests on ``costmesh.raw.<node>``. Checks each against the event contract (a batch that does
not decode is refused and counted, never forwarded), re-encodes it from the typed structs (so fields outside the
contract cannot pass), and publishes it to JetStream on ``costmesh.events.<node>`` with ``Nats-Msg-Id`` = batch id.
Answers ``ok`` only after JetStream acknowledged the store.
"""

from __future__ import annotations

import logging

import msgspec

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Codec

log = logging.getLogger(__name__)


async def main(ctx: ServiceContext) -> None:
    node = ctx.config.node_name()
    nc = await natsio.connect(ctx.config.nats, ctx.nats_url, f"costmesh-redactor-{node}")
    js = nc.jetstream()
    await natsio.ensure_stream(js, ctx.config.nats)
    codec = Codec()
    out_subject = natsio.EVENTS_SUBJECT.format(node=node)

    async def on_raw(msg) -> None:
        try:
            batch = codec.decode_batch(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            ERRORS.labels("redactor", "schema").inc()
            log.error("refused a batch that does not match the contract", extra={"reason": str(exc)})
            await msg.respond(f"refused: {exc}".encode())
            return
        try:
            await natsio.publish_batch(js, out_subject, batch.batch_id, codec.encode(batch))
        except Exception as exc:  # any JetStream failure: do not confirm, the sensor retries the same batch id
            BATCHES.labels("redactor", "publish_failed").inc()
            log.warning("jetstream publish failed", extra={"batch_id": batch.batch_id, "why": repr(exc)})
            return
        BATCHES.labels("redactor", "forwarded").inc()
        RECORDS.labels("redactor").inc(len(batch.records))
        await msg.respond(b"ok")

    await nc.subscribe(natsio.RAW_SUBJECT.format(node="*"), queue="redactor", cb=on_raw)
    await nc.flush()
    ctx.ready = True
    try:
        await ctx.stopping.wait()
    finally:
        await nc.drain()
