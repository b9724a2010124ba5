"""OTLP exporter service: the redacted event stream to a customer's OpenTelemetry collector (``otlp``; off by default).

Reads: ``COSTMESH_EVENTS`` through its own durable pull consumer (``otlp.durable``; replicas share it as one work
queue), i.e. exactly what the redactors published, never raw records. Emits: OTLP metrics (and logs) over gRPC or
HTTP, with TLS and a bearer token (``exporter.otlp``). A message is acknowledged only after the collector accepted the
export that carried it; a refused or failed export puts the messages back (``nak`` with a growing delay), so the
collector gets every batch at least once -- twice only when an export succeeded and its acknowledgement was lost.
Malformed messages are terminated and counted, as in the attributor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Codec

from .otlp import OtlpSink, make_exporters

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config
    if not cfg.otlp.enabled:
        log.info("otlp export is off (otlp.enabled = false); idling")
        ctx.ready = True
        await ctx.stopping.wait()
        return
    metrics, logs = make_exporters(cfg.otlp)
    sink = OtlpSink(cfg.otlp, cfg.node_name(), metrics, logs)
    nc = await natsio.connect(cfg.nats, ctx.nats_url, "costmesh-exporter")
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    await natsio.ensure_consumer(js, cfg.nats.stream, cfg.otlp.durable, ack_wait_s=max(30.0, 3 * cfg.otlp.timeout_s))
    sub = await js.pull_subscribe(natsio.EVENTS_WILDCARD, durable=cfg.otlp.durable, stream=cfg.nats.stream)
    codec = Codec()
    ctx.health.update(exported_batches=0, export_failures=0)
    ctx.ready = True
    delay = RETRY_MIN_S
    try:
        while not ctx.stopping.is_set():
            try:
                msgs = await sub.fetch(cfg.otlp.batch_messages, timeout=1.0)
            except NatsTimeout:
                continue
            except Exception as exc:  # NATS reconnecting: fetch again shortly
                log.warning("fetch failed, retrying", extra={"why": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            good, batches = [], []
            for msg in msgs:
                try:
                    batches.append(codec.decode_batch(msg.data))
                    good.append(msg)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                    ERRORS.labels("exporter", "schema").inc()
                    log.error("terminating a message that does not match the contract", extra={"subject": msg.subject})
                    await msg.term()
            if not good:
                continue
            if await asyncio.to_thread(sink.export, batches):
                await asyncio.gather(*(m.ack() for m in good), return_exceptions=True)
                BATCHES.labels("exporter", "exported").inc(len(good))
                RECORDS.labels("exporter").inc(sum(len(b.records) for b in batches))
                ctx.health["exported_batches"] = int(ctx.health["exported_batches"]) + len(good)
                delay = RETRY_MIN_S
            else:
                BATCHES.labels("exporter", "export_failed").inc(len(good))
                ctx.health["export_failures"] = int(ctx.health["export_failures"]) + 1
                log.warning("the collector did not take an export; its batches come back", extra={"wait_s": delay})
                await asyncio.gather(*(m.nak(delay=delay) for m in good), return_exceptions=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ctx.stopping.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await nc.close()
        await asyncio.to_thread(sink.shutdown)
