"""Sensor service: reads traffic (live through eBPF, or replayed capture files), aggregates it into ``ObservedCall``
records per window and hands them to the node's redactor.

Reads: capture files given with ``--replay``, else live traffic (``live_service``: eBPF on ``sensor.interfaces``).
Emits: ``CallBatch`` on ``costmesh.raw.<node>`` as a request that the
redactor answers only after JetStream has stored the batch, so a batch is retried until it is safe and never lost;
retries carry the same batch id, which JetStream de-duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, Codec, ObservedCall

from .pcap_http import CaptureError, MinimalHttpSensor, read_pcap

log = logging.getLogger(__name__)


class BatchSender:
    """Chunks records into batches and sends each until the redactor confirms it."""

    def __init__(self, nc, node: str, batch_records: int) -> None:
        self.nc = nc
        self.node = node
        self.subject = natsio.RAW_SUBJECT.format(node=node)
        self.batch_records = batch_records
        self.codec = Codec()
        self.seq = 0
        self.run_id = uuid.uuid4().hex[:12]

    async def send(self, records: list[ObservedCall], stopping: asyncio.Event) -> int:
        sent = 0
        for start in range(0, len(records), self.batch_records):
            self.seq += 1
            batch = CallBatch(
                batch_id=f"{self.node}-{self.run_id}-{self.seq}",
                node=self.node,
                seq=self.seq,
                records=records[start : start + self.batch_records],
            )
            await self._deliver(batch, stopping)
            sent += 1
        return sent

    async def _deliver(self, batch: CallBatch, stopping: asyncio.Event) -> None:
        payload = self.codec.encode(batch)
        delay = 0.2
        while not stopping.is_set():
            try:
                reply = await self.nc.request(self.subject, payload, timeout=5)
            except (NoRespondersError, NatsTimeout) as exc:
                BATCHES.labels("sensor", "retry").inc()
                log.warning(
                    "redactor did not confirm batch, retrying",
                    extra={"batch_id": batch.batch_id, "why": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if reply.data == b"ok":
                BATCHES.labels("sensor", "sent").inc()
                RECORDS.labels("sensor").inc(len(batch.records))
                return
            BATCHES.labels("sensor", "rejected").inc()
            log.error("redactor rejected batch", extra={"batch_id": batch.batch_id, "reason": reply.data.decode()})
            return


def replay(path: Path, sensor: MinimalHttpSensor) -> list[ObservedCall]:
    """Run one capture through the parser; a broken file keeps what was read before the break."""
    try:
        for ts_us, frame in read_pcap(path):
            sensor.feed(ts_us, frame)
    except CaptureError as exc:
        ERRORS.labels("sensor", "capture").inc()
        log.error("%s", exc)
    return sensor.drain()


async def main(ctx: ServiceContext, replay_files: list[Path], print_bpf: bool = False) -> None:
    node = ctx.config.node_name()
    nc = await natsio.connect(ctx.config.nats, ctx.nats_url, f"costmesh-sensor-{node}")
    sender = BatchSender(nc, node, ctx.config.sensor.batch_records)
    ctx.health.update(replay_done=False, batches_published=0, records_published=0)
    ctx.ready = True
    try:
        for path in replay_files:
            records = replay(path, MinimalHttpSensor(ctx.config, node, int(ctx.config.sensor.window_s * 1e6)))
            batches = await sender.send(records, ctx.stopping)
            ctx.health["batches_published"] = int(ctx.health["batches_published"]) + batches
            ctx.health["records_published"] = int(ctx.health["records_published"]) + len(records)
            log.info("replayed capture", extra={"file": str(path), "records": len(records), "batches": batches})
        ctx.health["replay_done"] = True
        if not replay_files:
            from .live_service import run_live

            await run_live(ctx, nc, print_programs=print_bpf)
        await ctx.stopping.wait()
    finally:
        await nc.drain()
