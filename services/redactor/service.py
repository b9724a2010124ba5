"""Redactor service: the only way off a node.

Reads: ``CallBatch`` requests on ``costmesh.raw.<node>`` (core NATS, node-local). Each batch is decoded against the
contract with unknown fields dropped and counted (``policy``); a batch that still does not decode is refused and
counted, never forwarded. Every record is then redacted (``records``: shapes, detectors, pseudonyms, merging).
Emits: the redacted batch to JetStream on ``costmesh.events.<node>`` with ``Nats-Msg-Id`` = its batch id, over the
configured TLS and credentials; answers ``ok`` only after JetStream acknowledged the store, so the sensor retries
until then (the retried batch redacts to the same bytes and id, which JetStream de-duplicates).
Logs carry batch ids and counts, never record contents; refusal reasons have quoted values removed.
"""

from __future__ import annotations

import logging

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Codec

from . import metrics
from .policy import Decoder, Refused
from .records import RecordRedactor, Stats

log = logging.getLogger(__name__)


def record_stats(stats: Stats) -> None:
    metrics.RECORDS_IN.inc(stats.records_in)
    metrics.RECORDS_OUT.inc(stats.records_out)
    for reason, n in stats.fields_dropped.items():
        metrics.FIELDS_DROPPED.labels(reason).inc(n)
    for kind, n in stats.redactions.items():
        metrics.REDACTIONS.labels(kind).inc(n)


async def main(ctx: ServiceContext) -> None:
    node = ctx.config.node_name()
    redactor = RecordRedactor(ctx.config, ctx.config.redactor.cache_entries)
    nc = await natsio.connect(ctx.config.nats, ctx.nats_url, f"costmesh-redactor-{node}")
    js = nc.jetstream()
    await natsio.ensure_stream(js, ctx.config.nats)
    decoder = Decoder()
    codec = Codec()
    ctx.health.update(batches_forwarded=0, batches_refused=0)

    async def on_raw(msg) -> None:
        try:
            raw, dropped = decoder.decode(msg.data)
        except Refused as exc:
            ERRORS.labels("redactor", "schema").inc()
            ctx.health["batches_refused"] = int(ctx.health["batches_refused"]) + 1
            log.error("refused a batch that does not match the contract", extra={"reason": str(exc)})
            await msg.respond(f"refused: {exc}".encode())
            return
        stats = Stats()
        if dropped:
            stats.fields_dropped["unknown_field"] = dropped
        try:
            batch, stats = redactor.redact_batch(raw, stats)
        except Exception as exc:  # a bug must neither leak a value (in a message) nor block the sensor forever
            ERRORS.labels("redactor", "internal").inc()
            ctx.health["batches_refused"] = int(ctx.health["batches_refused"]) + 1
            log.error("could not redact a batch; refused", extra={"error": type(exc).__name__})
            await msg.respond(b"refused: internal error")
            return
        try:
            await natsio.publish_batch(js, natsio.EVENTS_SUBJECT.format(node=node), batch.batch_id, codec.encode(batch))
        except Exception as exc:  # any JetStream failure: do not confirm, the sensor retries the same batch id
            BATCHES.labels("redactor", "publish_failed").inc()
            log.warning("jetstream publish failed", extra={"batch_id": batch.batch_id, "why": type(exc).__name__})
            return
        record_stats(stats)
        BATCHES.labels("redactor", "forwarded").inc()
        RECORDS.labels("redactor").inc(len(batch.records))
        ctx.health["batches_forwarded"] = int(ctx.health["batches_forwarded"]) + 1
        await msg.respond(b"ok")

    await nc.subscribe(natsio.RAW_SUBJECT.format(node="*"), queue="redactor", cb=on_raw)
    await nc.flush()
    ctx.ready = True
    try:
        await ctx.stopping.wait()
    finally:
        await natsio.drain_or_close(nc)
