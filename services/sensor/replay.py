"""Capture files through the sensor's parsing core: for ``costmesh sensor --replay`` (sent to the redactor as the
live sensor sends its windows) and for tools that want the records themselves (``observe``: ``costmesh report
--capture`` and ``costmesh billing unmatched --capture``, through the CLI).

Reads: pcap/pcapng files. Emits: ``ObservedCall`` records; a broken file keeps what was read before the break, and
parse errors are counted by kind in ``costmesh_input_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import ObservedCall

from .core import CaptureError, Sensor
from .sender import BatchSender

log = logging.getLogger(__name__)


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


async def replay_and_send(path: Path, sensor: Sensor, sender: BatchSender, stopping: asyncio.Event) -> tuple[int, int]:
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


def observe(path: Path, config: Config) -> list[ObservedCall]:
    """Every record of one capture, through the sensor's parsing and tenant extraction as a replaying sensor runs them
    (the seam billing's capture path is given by the CLI)."""
    return replay(path, Sensor(config, config.node_name()))
