"""Attributor service: the durable JetStream consumer that turns redacted call batches into the attribution model.

Reads: ``COSTMESH_EVENTS`` through the durable pull consumer (all replicas share it as one work queue). Writes, through
``apply.apply_batches``: consumption, graph, queue, AI usage and applied-batch rows in PostgreSQL, several fetched
messages per transaction. A message is acknowledged (double ack: the server confirms) only after its transaction
committed, so a crash at any point leads to redelivery, and redelivery to no change.

When PostgreSQL is unreachable the fetched messages are held, kept alive with ``in_progress`` and retried with
back-off; JetStream keeps the backlog. Maintenance (partitions, rollups, retention, tenant resolution) and the
runaway-AI-cost alerting (``leader``) run beside the consumer loop as named tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from costmesh.common import db, natsio
from costmesh.common.metrics import BATCHES, ERRORS, RECORDS
from costmesh.common.prices import PriceTable
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch

from . import leader, maintenance, spend, storage
from .apply import Applied, SpendHook, apply_batches, prepare
from .fold import BatchRef, die_with_parent, fold_group

log = logging.getLogger(__name__)

#: Back-off bounds while PostgreSQL is away, seconds.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 3.0
#: How often held messages are kept alive (``in_progress``) while PostgreSQL is away; well inside the ack wait.
KEEPALIVE_S = 10.0


class Writer:
    """One PostgreSQL connection that applies groups of batches, reconnecting and retrying until they commit."""

    def __init__(
        self,
        dsn: str,
        prices: PriceTable,
        health: dict[str, object] | None = None,
        spend_hook: SpendHook | None = None,
    ) -> None:
        self.dsn = dsn
        self.health = health if health is not None else {}
        self.prices = prices
        self.spend_hook = spend_hook
        self.conn: asyncpg.Connection | None = None
        self.retries = 0

    async def _connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await prepare(conn)
            except BaseException:
                conn.terminate()
                raise
            self.conn = conn
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def apply(
        self,
        batches: Sequence[CallBatch],
        stopping: asyncio.Event,
        keepalive: Callable[[], Awaitable[None]] | None = None,
        prepared: bytes | None = None,
    ) -> Applied | None:
        """Apply until committed; ``None`` when asked to stop first (nothing acknowledged: the batches come back)."""
        delay = RETRY_MIN_S
        last_keepalive = time.monotonic()
        while True:
            try:
                conn = await self._connection()
                return await apply_batches(conn, batches, self.prices, prepared, self.spend_hook)
            except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                if isinstance(exc, asyncpg.PostgresError) and not _retryable(exc):
                    raise
                self.retries += 1
                self.health["db_retries"] = self.retries
                self._drop()
                log.warning(
                    "database unavailable, holding %d batches and retrying", len(batches), extra={"why": repr(exc)}
                )
            if keepalive is not None and time.monotonic() - last_keepalive > KEEPALIVE_S:
                last_keepalive = time.monotonic()
                try:
                    await keepalive()
                except Exception as exc:  # NATS away too: the messages will simply be redelivered
                    log.warning("could not extend the ack wait", extra={"why": repr(exc)})
            try:
                await asyncio.wait_for(stopping.wait(), delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, RETRY_MAX_S)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close(timeout=2)
            self.conn = None


def _retryable(exc: asyncpg.PostgresError) -> bool:
    """Server errors that mean "not now" (shutting down, starting up, serialization, deadlock, out of resources)."""
    state = getattr(exc, "sqlstate", "") or ""
    if state == "23514" and "partition constraint" in str(exc):
        return True  # a partition was attached under a running statement: the retry routes the rows anew
    return state.startswith(("08", "40", "53", "57P")) or isinstance(
        exc, (asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError)
    )


def _malformed(msg, reason: str) -> None:
    ERRORS.labels("attributor", "schema").inc()
    seq = getattr(getattr(msg, "metadata", None), "sequence", None)
    log.error(
        "terminating a message that does not match the contract",
        extra={"subject": getattr(msg, "subject", "?"), "stream_seq": getattr(seq, "stream", None), "reason": reason},
    )


@dataclass
class Prepared:
    """A fetched group, folded, with its staging rows built (binary COPY data): what the writer applies in one
    transaction."""

    msgs: list
    batches: list[BatchRef]
    copy: bytes


async def feed(
    ctx: ServiceContext, sub, groups: asyncio.Queue[Prepared], folders: Executor, max_payload: int = 1024 * 1024
) -> None:
    """Fetch groups and fold them on ``folders`` (a thread: the compiled fold runs without the GIL; or worker
    processes); malformed messages are terminated here. Up to ``max(fold_processes, 1)`` groups fold at once, and the
    writer takes them in whatever order they finish."""
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(max(ctx.config.attributor.fold_processes, 1))
    pending: set[asyncio.Task[None]] = set()

    async def fold(msgs: list) -> None:
        try:
            payloads = [m.data for m in msgs]
            folded = await loop.run_in_executor(folders, fold_group, payloads)
            good, refs = [], []
            for msg, meta, payload in zip(msgs, folded.metas, payloads, strict=True):
                if isinstance(meta, str):
                    _malformed(msg, meta)
                    await msg.term()
                else:
                    good.append(msg)
                    refs.append(BatchRef(meta, payload))
            if refs:
                await groups.put(Prepared(good, refs, folded.copy))
        except Exception as exc:  # e.g. sums past a bigint (PostgreSQL could not hold them either): not silently
            log.error("a group could not be folded; its messages will be redelivered", extra={"why": repr(exc)})
        finally:
            in_flight.release()
            pending.discard(asyncio.current_task())

    try:
        await _fetch_loop(ctx, sub, in_flight, pending, fold, PullSizer(max_payload))
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


#: The consumer's ``max_ack_pending`` (``natsio.ensure_consumer``): unacknowledged messages the server lets us hold.
MAX_ACK_PENDING = 4096


def fetch_size(cfg) -> int:
    """Messages per fetch, capped so that every group in the pipeline (folding, one queued, being written, being
    acknowledged, and one of margin) fits in ``MAX_ACK_PENDING``; past it the server stops delivering and the
    pipeline stalls. The same bound limits memory: at most that many groups of payloads are held at once."""
    in_pipeline = max(cfg.attributor.fold_processes, 1) + 4
    return max(1, min(cfg.attributor.fetch_batch, MAX_ACK_PENDING // in_pipeline))


#: Bytes one pull request may bring. nats-server cuts a client whose unread data passes its ``max_pending`` (64 MB
#: by default) as a slow consumer; a group of 512 batches of 500 records is ~50 MB, and a single pull for ~800 of them
#: stalled delivery for an ack wait here. So a group is collected with several pulls, each sized by the payloads
#: seen so far to a quarter of that limit, and never more than half of it even if every payload had the maximum size.
PULL_BYTES = 16 * 1024 * 1024
WORST_PULL_BYTES = 32 * 1024 * 1024


class PullSizer:
    """How many messages one pull may ask for, from the average payload size seen and the server's maximum."""

    def __init__(self, max_payload: int = 1024 * 1024) -> None:
        self.avg_bytes = 0.0
        self.cap = max(1, WORST_PULL_BYTES // max(max_payload, 1))

    def count(self, wanted: int) -> int:
        typical = int(PULL_BYTES // self.avg_bytes) if self.avg_bytes > 0 else self.cap
        return max(1, min(wanted, typical, self.cap))

    def observe(self, msgs: Sequence) -> None:
        if msgs:
            size = sum(len(m.data) for m in msgs) / len(msgs)
            self.avg_bytes = size if self.avg_bytes <= 0 else 0.8 * self.avg_bytes + 0.2 * size


#: How long a pull waits for its messages. A pull that brings fewer than it asked for ends the group (the stream
#: ran dry); one cut short by this deadline (a slow link) ends it too, and its late messages start the next group.
#: On a stream that is not backlogged, a pull holds the messages that arrive until it is full or this deadline passes
#: (nats-py waits for the whole batch), so the deadline is also how long fresh calls may wait here before they are
#: applied, and runaway-AI-cost alerts wait with them: 1 s added ~0.5 s to every alert; a backlog never waits on it.
PULL_TIMEOUT_S = 0.25


async def fetch_group(sub, size: int, sizer: PullSizer) -> list:
    """Up to ``size`` messages in byte-bounded pulls; raises ``TimeoutError`` when the first pull finds nothing.

    The next pull is sent only when the previous one was filled (a backlog): a pull that brings fewer messages than
    it asked for means the stream had no more, and the group is applied as it is.
    """
    asked = sizer.count(size)
    msgs = await sub.fetch(asked, timeout=PULL_TIMEOUT_S)
    sizer.observe(msgs)
    full = len(msgs) >= asked
    while full and len(msgs) < size:
        asked = sizer.count(size - len(msgs))
        try:
            more = await sub.fetch(asked, timeout=PULL_TIMEOUT_S)
        except TimeoutError:  # nats-py's own, or asyncio's when a pull's deadline ran out before it was sent
            break
        except Exception as exc:  # NATS reconnecting: apply what we have; the rest is fetched again later
            log.warning("fetch failed, applying the part of the group already fetched", extra={"why": repr(exc)})
            break
        sizer.observe(more)
        msgs += more
        full = len(more) >= asked
    return msgs


async def _fetch_loop(ctx, sub, in_flight, pending, fold, sizer: PullSizer) -> None:
    size = fetch_size(ctx.config)
    while not ctx.stopping.is_set():
        await in_flight.acquire()
        try:
            msgs = await fetch_group(sub, size, sizer)
        except TimeoutError:  # nats-py's own, or asyncio's when a pull's deadline ran out before it was sent
            in_flight.release()
            continue
        except Exception as exc:  # NATS reconnecting (cluster node lost): fetch again shortly
            in_flight.release()
            if ctx.stopping.is_set():
                break
            log.warning("fetch failed, retrying", extra={"why": repr(exc)})
            await asyncio.sleep(0.5)
            continue
        pending.add(asyncio.create_task(fold(msgs), name="attributor-fold"))


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config
    receivers = leader.targets(cfg) if cfg.alert_rules else []  # a missing secret stops the service, named
    pool = await db.create_pool(ctx.dsn)
    await db.migrate(pool)
    nc = await natsio.connect(cfg.nats, ctx.nats_url, "costmesh-attributor")
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    await natsio.ensure_consumer(js, cfg.nats.stream, cfg.attributor.durable)
    sub = await js.pull_subscribe(natsio.EVENTS_WILDCARD, durable=cfg.attributor.durable, stream=cfg.nats.stream)
    # AI spend goes to the detector's buckets only when there are rules to judge it by.
    writer = Writer(ctx.dsn, PriceTable.from_config(cfg), ctx.health, spend.record if cfg.alert_rules else None)
    ctx.health.update(applied_batches=0, duplicate_batches=0, applied_records=0, db_retries=0)
    async with pool.acquire() as conn:  # today's partitions exist before the first write (plain flavour)
        if await storage.flavour(conn) == "partitioned":
            await storage.ensure_partitions(conn, cfg.attributor, datetime.now(UTC), storage.Upkeep())
    upkeep = asyncio.create_task(maintenance_loop(ctx), name="attributor-maintenance")
    alerts = asyncio.create_task(leader.run(ctx, nc, receivers), name="attributor-alerting")
    ctx.ready = True
    # A pipeline: the feeder fetches the next group and folds it (in a thread, without the GIL) while the writer's
    # transaction for the current group runs in PostgreSQL and the previous group is acknowledged. One folded group
    # waits at most: a deeper queue only held more payloads in memory, it did not add throughput.
    groups: asyncio.Queue[Prepared] = asyncio.Queue(maxsize=1)
    folders: Executor = (
        ProcessPoolExecutor(
            cfg.attributor.fold_processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=die_with_parent,
        )
        if cfg.attributor.fold_processes > 0
        else ThreadPoolExecutor(1, thread_name_prefix="attributor-fold")
    )
    feeder = asyncio.create_task(
        feed(ctx, sub, groups, folders, nc.max_payload or 1024 * 1024), name="attributor-feeder"
    )
    acking: asyncio.Task[None] | None = None
    try:
        while not ctx.stopping.is_set():
            getter = asyncio.ensure_future(groups.get())
            stopper = asyncio.ensure_future(ctx.stopping.wait())
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not getter.done():
                getter.cancel()
                break
            group = getter.result()

            async def keepalive(held=group.msgs) -> None:
                await asyncio.gather(*(m.in_progress() for m in held))

            applied = await writer.apply(group.batches, ctx.stopping, keepalive, group.copy)
            if applied is None:
                break
            if acking is not None:
                await acking
            acking = asyncio.create_task(_ack_all(group.msgs), name="attributor-ack")
            fresh = len(applied.fresh)
            ctx.health["applied_batches"] = int(ctx.health["applied_batches"]) + fresh
            ctx.health["duplicate_batches"] = int(ctx.health["duplicate_batches"]) + applied.duplicates
            ctx.health["applied_records"] = int(ctx.health["applied_records"]) + applied.records
            BATCHES.labels("attributor", "applied").inc(fresh)
            BATCHES.labels("attributor", "duplicate").inc(applied.duplicates)
            RECORDS.labels("attributor").inc(applied.records)
        if acking is not None:
            await acking
    finally:
        feeder.cancel()
        upkeep.cancel()
        alerts.cancel()
        await asyncio.gather(feeder, upkeep, alerts, return_exceptions=True)
        folders.shutdown(wait=True, cancel_futures=True)
        # close, not drain: a pull subscription never finishes draining, and nothing is in flight once the loop ends.
        await writer.close()
        try:
            await sub.unsubscribe()
        except Exception as exc:  # the connection may already be gone; nothing to release then
            log.debug("unsubscribe failed", extra={"why": repr(exc)})
        await nc.close()
        await pool.close()


async def _ack_all(msgs: Sequence) -> None:
    """Double-ack every message of a committed group; a lost ack only means a redelivery that changes nothing."""
    results = await asyncio.gather(*(m.ack_sync(timeout=5) for m in msgs), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        log.warning("%d acks not confirmed; those batches will be redelivered and skipped", len(failed))


async def maintenance_loop(ctx: ServiceContext) -> None:
    """Run a maintenance pass now and every ``maintenance_interval_s``; a database outage only delays it."""
    cfg = ctx.config
    conn: asyncpg.Connection | None = None
    ctx.health.update(maintenance_passes=0)
    while not ctx.stopping.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(ctx.dsn, timeout=5)
                await maintenance.prepare(conn)
            up = await maintenance.run_pass(conn, cfg, datetime.now(UTC))
            if up is not None:
                ctx.health["maintenance_passes"] = int(ctx.health["maintenance_passes"]) + 1
                if up.partitions_created or up.partitions_dropped or up.rows_expired:
                    log.info(
                        "maintenance",
                        extra={
                            "created": len(up.partitions_created),
                            "dropped": len(up.partitions_dropped),
                            "expired": up.rows_expired,
                        },
                    )
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("maintenance pass failed; retrying later", extra={"why": repr(exc)})
            if conn is not None:
                conn.terminate()
                conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), cfg.attributor.maintenance_interval_s)
    if conn is not None:
        conn.terminate()
