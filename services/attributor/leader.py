"""The alerting leader: one attributor replica at a time detects runaway AI spend and notifies.

Every replica runs ``run``; the one that holds the session advisory lock ``DETECTOR_LOCK`` leads until its
connection ends (the lock goes with it, and another replica takes over within ``RETRY_LOCK_S``). A new leader loads
its state from the store (``Detector.start``, ``Grouper.load``), so a restart or a change of leader neither repeats
nor loses an alert.

Each pass (every ``attributor.detector_interval_s``): take the spend buckets changed since the last pass, judge the
scopes they touched and the scopes already firing, write state changes and their groups' marks, flush the groups
that are due into the outbox -- one transaction -- then publish the events on ``costmesh.alerts`` and wake the
senders (``delivery``). Baselines are refreshed hourly on a connection of their own, so a slow refresh never holds
up a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from costmesh.common import db, natsio
from costmesh.common.alerting import active_silences
from costmesh.common.config import Config, ConfigError, resolve_secret
from costmesh.common.metrics import ERRORS
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Alert, Codec

from . import spend
from .delivery import Sender, Target
from .detector import DETECTOR_LOCK, AlertRow, Detector, save
from .notify import Grouper, Receiver

log = logging.getLogger(__name__)

#: How often a replica that is not the leader tries the lock.
RETRY_LOCK_S = 2.0
#: Seconds between drops of buckets that no window needs any more.
EXPIRE_EVERY_S = 10.0


def targets(cfg: Config) -> list[Target]:
    """The receivers the config names, with their secrets read from the environment."""
    out = []
    slack = resolve_secret(cfg.slack.webhook_url_env, "slack.webhook_url_env")
    if slack:
        out.append(Target("slack", slack))
    hook = resolve_secret(cfg.webhook.url_env, "webhook.url_env")
    if hook:
        key = resolve_secret(cfg.webhook.hmac_key_env, "webhook.hmac_key_env")
        if not key:
            raise ConfigError("webhook.hmac_key_env: a generic webhook needs an HMAC key")
        out.append(Target("webhook", hook, key.encode()))
    return out


#: After an unexpected error the replica leads anew (from the store) after this long.
RESTART_S = 5.0


async def run(ctx: ServiceContext, nc, receivers: list[Target]) -> None:
    """Lead when the lock is free, follow otherwise, until the service stops; a database outage only delays, and an
    unexpected error is logged, counted and followed by a new start from the store."""
    cfg = ctx.config
    if not cfg.alert_rules:
        return
    ctx.health.update(alerts_sent=0, notifications=0, alert_leader=False)
    while not ctx.stopping.is_set():
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(ctx.dsn, timeout=5)
            while not ctx.stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", DETECTOR_LOCK):
                    ctx.health["alert_leader"] = True
                    await _lead(ctx, conn, nc, receivers)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ctx.stopping.wait(), RETRY_LOCK_S)
        except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("alerting pass failed; retrying", extra={"why": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), 1.0)
        except Exception:
            ERRORS.labels("attributor", "alerting_failed").inc()
            log.exception("alerting failed; starting again from the store")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), RESTART_S)
        finally:
            ctx.health["alert_leader"] = False
            if conn is not None:
                conn.terminate()


class Leader:
    """The leader's state and one pass of it, with the time given (tests drive it with their own clock)."""

    def __init__(self, cfg: Config, receivers: list[Receiver]) -> None:
        self.detector = Detector(cfg)
        self.grouper = Grouper(cfg.alerting, receivers)
        self.silenced: set[str] = set()

    async def start(self, conn: asyncpg.Connection, now: datetime) -> None:
        orphans = await self.detector.start(conn, now)
        await self.grouper.load(conn)
        if orphans:
            await self.grouper.save(conn, self.grouper.mark(orphans, now))
        self.silenced = await active_silences(conn, now)

    async def step(self, conn: asyncpg.Connection, now: datetime) -> tuple[list[Alert], int]:
        """One pass at ``now``: returns the events to publish and how many notifications went to the outbox."""
        detector, grouper = self.detector, self.grouper
        touched = detector.ingest(await spend.take_changes(conn))
        changed, events = detector.evaluate(touched | detector.firing_scopes(), now)
        still = await active_silences(conn, now)
        unmuted = [a for a in detector.alerts.values() if a.fingerprint in self.silenced - still]
        self.silenced = still
        async with conn.transaction():
            if changed:
                await save(conn, changed)
            marked = grouper.mark([*changed, *unmuted], now)
            if marked:
                await grouper.save(conn, marked)
            sent = await self._flush(conn, now)
        return events, sent

    async def expire(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Drop the buckets no window needs any more, in the store and in memory."""
        now_s = int(now.timestamp())
        await spend.expire(conn, now_s - self.detector.windows.longest_s - 2 * spend.BUCKET_S)
        self.detector.windows.prune(now_s * 1_000_000, self.detector.firing_scopes())

    async def _flush(self, conn: asyncpg.Connection, now: datetime) -> int:
        """Flush the groups that are due; returns how many notifications were written."""
        grouper = self.grouper
        repeat = timedelta(seconds=grouper.cfg.repeat_interval_s)
        candidates = [
            g
            for g in grouper.groups.values()
            if g.changed_at is not None or (g.last_notified_at is not None and now >= g.last_notified_at + repeat)
        ]
        if not candidates:
            return 0
        by_group: dict[str, list[AlertRow]] = defaultdict(list)
        for row in self.detector.alerts.values():
            by_group[row.group_key].append(row)
        written = 0
        for group in candidates:
            rows = by_group.get(group.group_key, [])
            notified = any(r.state == "firing" and r.notified_state == "firing" for r in rows)
            if not grouper.due(group, notified, now):
                continue
            if await grouper.flush(conn, group, rows, self.silenced, now) is not None:
                written += 1
            if not any(r.state == "firing" or r.notified_state == "firing" for r in rows):
                await conn.execute("DELETE FROM alert_groups WHERE group_key = $1", group.group_key)
                del grouper.groups[group.group_key]  # all resolved and told: the next episode starts a new group
        return written


async def _lead(ctx: ServiceContext, conn: asyncpg.Connection, nc, receivers: list[Target]) -> None:
    cfg = ctx.config
    now = datetime.now(UTC)
    lead = Leader(cfg, [t.receiver for t in receivers])
    await lead.start(conn, now)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    senders: list[Sender] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for target in receivers:
            sender = Sender(target, await asyncpg.connect(ctx.dsn, timeout=5), session)
            senders.append(sender)
            tasks.append(asyncio.create_task(sender.run(ctx.stopping), name=f"alert-sender-{target.receiver}"))
        tasks.append(asyncio.create_task(_baselines(ctx, lead.detector, now), name="alert-baselines"))
        codec = Codec()
        last_expire = time.monotonic()
        while not ctx.stopping.is_set():
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # a sender or the baselines lost their connection: lead anew
            events, sent = await lead.step(conn, datetime.now(UTC))
            for event in events:
                try:
                    await nc.publish(natsio.ALERTS_SUBJECT, codec.encode(event))
                except Exception as exc:  # NATS away: the receivers still get it, and the state is recorded
                    log.warning("could not publish an alert", extra={"why": repr(exc)})
            ctx.health["alerts_sent"] = int(ctx.health["alerts_sent"]) + len(events)
            if sent:
                ctx.health["notifications"] = int(ctx.health["notifications"]) + sent
                for sender in senders:
                    sender.wake.set()
            if time.monotonic() - last_expire > EXPIRE_EVERY_S:
                last_expire = time.monotonic()
                await lead.expire(conn, datetime.now(UTC))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), cfg.attributor.detector_interval_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sender in senders:
            sender.conn.terminate()
        await session.close()


async def _baselines(ctx: ServiceContext, detector: Detector, now: datetime) -> None:
    """Refresh the detector's baselines now and at each new hour, on a connection of its own."""
    conn = await asyncpg.connect(ctx.dsn, timeout=5)
    try:
        while not ctx.stopping.is_set():
            started = time.monotonic()
            await detector.refresh_baselines(conn, now)
            log.info(
                "baselines refreshed", extra={"scopes": len(detector.baselines or {}), "s": time.monotonic() - started}
            )
            now = datetime.now(UTC)
            next_hour = (now.replace(minute=0, second=0, microsecond=0).timestamp() + 3600) - now.timestamp()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), next_hour + 1)
            now = datetime.now(UTC)
    finally:
        conn.terminate()
