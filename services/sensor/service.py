"""Sensor service: reads traffic (live through eBPF, or replayed capture files), aggregates it into ``ObservedCall``
records per window and hands them to the node's redactor.

Reads: capture files given with ``--replay`` (pcap/pcapng, through ``costmesh.native.sensor``), else live traffic
(``live_service``: eBPF on ``sensor.interfaces``), both through the same parsing core.
Emits: ``CallBatch`` on ``costmesh.raw.<node>`` as a request that the
redactor answers only after JetStream has stored the batch, so a batch is retried until it is safe and never lost;
retries carry the same batch id, which JetStream de-duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from pathlib import Path

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from costmesh.common import natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, Codec, ObservedCall
from costmesh.native.sensor import CaptureError, Sensor

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


def replay(path: Path, sensor: Sensor, on_records=None) -> list[ObservedCall]:
    """Run one capture through the parser; a broken file keeps what was read before the break. Closed windows go to
    ``on_records`` while the file is read (bounded memory); the rest is returned. Parse errors are counted by kind in
    ``costmesh_input_errors_total``."""
    try:
        sensor.feed_capture(path, on_records)
    except CaptureError as exc:
        log.error("%s", exc)
    except OSError as exc:
        ERRORS.labels("sensor", "capture_open").inc()
        log.error("%s: cannot read: %s", path, exc.strerror)
    records = sensor.drain(final=True)
    for kind, n in sensor.stats()["errors"].items():
        ERRORS.labels("sensor", kind).inc(n)
    return records


async def _replay_and_send(path: Path, sensor: Sensor, sender: BatchSender, stopping: asyncio.Event) -> tuple[int, int]:
    """Parse in a worker thread and send each chunk of closed windows as it comes: (batches, records) sent.

    The queue between them is small, so parsing never runs far ahead of what the redactor confirmed; when sending
    stops (service stopping, an error), the parser is told to stop and the queue is drained so the thread can end."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[ObservedCall] | None] = asyncio.Queue(maxsize=4)
    abort = threading.Event()

    class _Stopped(Exception):
        """Raised inside the parser thread to end a replay early."""

    def put(item: list[ObservedCall] | None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def produce() -> None:
        def hand_over(records: list[ObservedCall]) -> None:
            if stopping.is_set() or abort.is_set():
                raise _Stopped
            put(records)

        try:
            hand_over(replay(path, sensor, hand_over))
        except _Stopped:
            log.info("replay stopped early", extra={"file": str(path)})
        finally:
            put(None)

    worker = asyncio.create_task(asyncio.to_thread(produce), name="sensor-replay")
    batches = records = 0
    try:
        while (chunk := await queue.get()) is not None:
            batches += await sender.send(chunk, stopping)
            records += len(chunk)
    finally:
        abort.set()
        while not worker.done():
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.01)
        await worker
    return batches, records


async def main(ctx: ServiceContext, replay_files: list[Path], print_bpf: bool = False) -> None:
    node = ctx.config.node_name()
    nc = await natsio.connect(ctx.config.nats, ctx.nats_url, f"costmesh-sensor-{node}")
    sender = BatchSender(nc, node, ctx.config.sensor.batch_records)
    ctx.health.update(replay_done=False, batches_published=0, records_published=0)
    ctx.ready = True
    try:
        for path in replay_files:
            batches, records = await _replay_and_send(path, Sensor(ctx.config, node), sender, ctx.stopping)
            ctx.health["batches_published"] = int(ctx.health["batches_published"]) + batches
            ctx.health["records_published"] = int(ctx.health["records_published"]) + records
            log.info("replayed capture", extra={"file": str(path), "records": records, "batches": batches})
        ctx.health["replay_done"] = True
        if not replay_files:
            from .live_service import run_live

            await run_live(ctx, nc, print_programs=print_bpf)
        await ctx.stopping.wait()
    finally:
        await natsio.drain_or_close(nc)
