"""Sends the sensor's records (and, live, the kernel's flow volumes) to the node's redactor, confirmed.

Emits: ``CallBatch`` on ``costmesh.raw.<node>`` as a request that the redactor answers only after JetStream has stored
the batch, so a batch is retried until it is safe and never lost; retries carry the same batch id, which JetStream
de-duplicates. Sending stops retrying when the service is told to stop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, RECORDS
from costmesh.common.schemas import CallBatch, CapacitySample, Codec, ComputeSample, FlowVolume, ObservedCall

log = logging.getLogger(__name__)


class BatchSender:
    """Chunks records and flows into batches of at most ``batch_records`` items and sends each until the redactor
    confirms it."""

    def __init__(self, nc, node: str, batch_records: int) -> None:
        self.nc = nc
        self.node = node
        self.subject = natsio.RAW_SUBJECT.format(node=node)
        self.batch_records = batch_records
        self.codec = Codec()
        self.seq = 0
        self.run_id = uuid.uuid4().hex[:12]

    async def send(
        self,
        records: Sequence[ObservedCall],
        stopping: asyncio.Event,
        flows: Sequence[FlowVolume] = (),
        compute: Sequence[ComputeSample] = (),
        capacity: Sequence[CapacitySample] = (),
    ) -> int:
        """Send ``records`` then ``flows``, records first in each batch, and a window's compute samples and node
        capacity (a few per window) in a batch of their own; returns the number of batches."""
        sent, size = 0, self.batch_records
        r = f = 0
        if compute or capacity:
            self.seq += 1
            batch = CallBatch(
                batch_id=f"{self.node}-{self.run_id}-{self.seq}",
                node=self.node,
                seq=self.seq,
                compute=list(compute),
                capacity=list(capacity),
            )
            await self._deliver(batch, stopping)
            sent += 1
        while r < len(records) or f < len(flows):
            take_r = list(records[r : r + size])
            take_f = list(flows[f : f + size - len(take_r)])
            r, f = r + len(take_r), f + len(take_f)
            self.seq += 1
            batch = CallBatch(
                batch_id=f"{self.node}-{self.run_id}-{self.seq}",
                node=self.node,
                seq=self.seq,
                records=take_r,
                flows=take_f,
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
