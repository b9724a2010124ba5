"""Sensor service: reads traffic (live through eBPF, or replayed capture files), aggregates it into ``ObservedCall``
records per window and hands them to the node's redactor.

Reads: capture files given with ``--replay`` (``replay``), else live traffic (``live``: eBPF on
``sensor.interfaces``), both through the same parsing core (``core``). Emits: ``CallBatch`` on ``costmesh.raw.<node>``
through ``sender.BatchSender``, confirmed by the redactor.
"""

from __future__ import annotations

import logging
from pathlib import Path

from costmesh.common import natsio
from costmesh.common.runtime import ServiceContext

from .core import Sensor
from .replay import replay_and_send
from .sender import BatchSender

log = logging.getLogger(__name__)


async def main(ctx: ServiceContext, replay_files: list[Path], print_bpf: bool = False) -> None:
    node = ctx.config.node_name()
    nc = await natsio.connect(ctx.config.nats, ctx.nats_url, f"costmesh-sensor-{node}")
    sender = BatchSender(nc, node, ctx.config.sensor.batch_records)
    ctx.health.update(replay_done=False, batches_published=0, records_published=0)
    ctx.ready = True
    try:
        for path in replay_files:
            batches, records = await replay_and_send(path, Sensor(ctx.config, node), sender, ctx.stopping)
            ctx.health["batches_published"] = int(ctx.health["batches_published"]) + batches
            ctx.health["records_published"] = int(ctx.health["records_published"]) + records
            log.info("replayed capture", extra={"file": str(path), "records": records, "batches": batches})
        ctx.health["replay_done"] = True
        if not replay_files:
            from .live.service import run_live  # the live machinery and its metrics load only for live capture

            await run_live(ctx, nc, print_programs=print_bpf)
        await ctx.stopping.wait()
    finally:
        await natsio.drain_or_close(nc)
