"""Alert groups and their notifications, with Alertmanager's route semantics.

Alerts with equal ``alerting.group_by`` labels (by default the whole scope: tenant, feature, agent) form a group, and
a group is what a notification is about. A group that changes (an alert fires, resolves, or its silence ends) waits
``group_wait_s`` for more before its first notification, and ``group_interval_s`` after a notification before the
next; a group still firing, unchanged, is notified again every ``repeat_interval_s``; when its alerts resolve, a
resolved notification follows (``send_resolved``). Silenced alerts are left out; a notification with nothing left
to say is not sent.

Reads and writes: ``alert_groups`` (timing, mirrored in memory by the leader), ``alert_state`` (``notified_state``:
what the receivers were last told of each alert, and the numbers they were told), ``alert_outbox`` (one row per
receiver per notification, written in the same transaction; ``delivery`` sends them). So a restart neither repeats a
notification that was decided nor loses one: both live in the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import quote

import asyncpg
import msgspec

from costmesh.common.config import AlertingConfig

from . import blockkit
from .detector import AlertRow, epoch_us, save

Receiver = Literal["slack", "webhook"]


class NotifiedAlert(msgspec.Struct, kw_only=True):
    """One alert as a notification states it (micro-dollars per hour; times in µs since the epoch)."""

    fingerprint: str
    alert_id: str
    state: Literal["firing", "resolved"]
    reason: Literal["budget", "spike"]
    tenant: str
    feature: str
    agent: str
    rate_micros_per_hour: int
    threshold_micros_per_hour: int
    budget_micros_per_hour: int
    baseline_micros_per_hour: int
    window_s: int
    window_requests: int
    started_at_us: int
    resolved_at_us: int = 0


class Notification(msgspec.Struct, kw_only=True):
    """What a receiver is told about one group; the generic webhook's JSON body, and what Slack's blocks show."""

    notification_id: str
    status: Literal["firing", "resolved"]
    #: ``firing``: something new fires (or resolves while others still fire); ``resolved``: nothing fires any more;
    #: ``repeat``: still firing, unchanged, after ``repeat_interval_s``.
    kind: Literal["firing", "resolved", "repeat"]
    group_key: str
    group: dict[str, str]
    alerts: list[NotifiedAlert]
    firing: int
    resolved: int
    #: Provider/model and agent with the most spend in the group's scope over the alerts' longest window.
    top_model: str
    top_agent: str
    #: The console page of the group's tenant ('' when ``alerting.console_url`` is not set).
    console_url: str
    at_us: int


@dataclass(slots=True)
class Group:
    group_key: str
    tenant: str
    feature: str
    agent: str
    changed_at: datetime | None = None
    last_notified_at: datetime | None = None
    notifications: int = 0

    @property
    def labels(self) -> dict[str, str]:
        """The labels the group is grouped by (only those)."""
        return dict(json.loads(self.group_key))


_GROUP_COLUMNS = tuple(Group.__dataclass_fields__)
_SAVE_GROUP = f"""
INSERT INTO alert_groups ({", ".join(_GROUP_COLUMNS)}) VALUES ({", ".join(f"${i}" for i in range(1, 8))})
ON CONFLICT (group_key) DO UPDATE SET changed_at = EXCLUDED.changed_at,
    last_notified_at = EXCLUDED.last_notified_at, notifications = EXCLUDED.notifications
"""

_TOP = """
SELECT provider || ' ' || model AS model, agent, sum(cost_micros)::bigint AS c FROM ai_usage_minute
WHERE minute >= $1 AND tenant = ANY($2::text[]) AND ($3::text IS NULL OR feature = $3)
    AND ($4::text IS NULL OR agent = $4)
GROUP BY 1, 2
"""


class Grouper:
    """The leader's groups, in memory and in ``alert_groups``; decides and writes notifications."""

    def __init__(self, cfg: AlertingConfig, receivers: list[Receiver]) -> None:
        self.cfg = cfg
        self.receivers = receivers
        self.groups: dict[str, Group] = {}

    async def load(self, conn: asyncpg.Connection) -> None:
        self.groups = {}
        for r in await conn.fetch(f"SELECT {', '.join(_GROUP_COLUMNS)} FROM alert_groups"):
            self.groups[r["group_key"]] = Group(**dict(r))

    def mark(self, rows: Iterable[AlertRow], now: datetime) -> list[Group]:
        """The groups of ``rows`` have changed at ``now`` (the earliest unnotified change is kept)."""
        marked = {}
        for row in rows:
            group = self.groups.get(row.group_key)
            if group is None:
                labels = dict(json.loads(row.group_key))
                group = self.groups[row.group_key] = Group(
                    row.group_key, labels.get("tenant", ""), labels.get("feature", ""), labels.get("agent", "")
                )
            if group.changed_at is None:
                group.changed_at = now
            marked[group.group_key] = group
        return list(marked.values())

    async def save(self, conn: asyncpg.Connection, groups: Iterable[Group]) -> None:
        await conn.executemany(_SAVE_GROUP, [tuple(getattr(g, c) for c in _GROUP_COLUMNS) for g in groups])

    def due(self, group: Group, firing_notified: bool, now: datetime) -> bool:
        """Whether ``group`` is to be flushed at ``now``: changed and past its wait, or firing and past its repeat."""
        if group.changed_at is not None:
            if group.last_notified_at is None:
                return now >= group.changed_at + timedelta(seconds=self.cfg.group_wait_s)
            return now >= max(
                group.changed_at + timedelta(seconds=self.cfg.group_wait_s),
                group.last_notified_at + timedelta(seconds=self.cfg.group_interval_s),
            )
        return (
            firing_notified
            and group.last_notified_at is not None
            and now >= group.last_notified_at + timedelta(seconds=self.cfg.repeat_interval_s)
        )

    async def flush(
        self, conn: asyncpg.Connection, group: Group, rows: list[AlertRow], silenced: set[str], now: datetime
    ) -> Notification | None:
        """Decide and write the group's notification (outbox rows, alert rows, the group), all in the caller's
        transaction; ``None`` when there is nothing to tell (the change was silenced, or resolved unseen)."""
        heard = [r for r in rows if r.fingerprint not in silenced]
        firing = [r for r in heard if r.state == "firing"]
        new = [r for r in firing if r.notified_state != "firing"]
        told_resolved = [r for r in heard if r.state == "resolved" and r.notified_state == "firing"]
        if not self.cfg.send_resolved:
            for r in told_resolved:
                r.notified_state = "resolved"  # never to be told
            told_resolved_shown: list[AlertRow] = []
        else:
            told_resolved_shown = told_resolved
        repeat = group.changed_at is None
        group.changed_at = None
        if not (new or told_resolved_shown or (repeat and firing)):
            if told_resolved:
                await save(conn, told_resolved)
            await self.save(conn, [group])
            return None
        kind = "resolved" if not firing else ("firing" if new or told_resolved_shown else "repeat")
        shown = sorted(firing, key=lambda r: -r.rate_micros_per_hour) + told_resolved_shown
        top_model, top_agent = await _top(conn, group, shown, now)
        group.notifications += 1
        group.last_notified_at = now
        notification = Notification(
            notification_id=f"{hashlib.sha256(group.group_key.encode()).hexdigest()[:12]}-{epoch_us(now)}",
            status="firing" if firing else "resolved",
            kind=kind,
            group_key=group.group_key,
            group=group.labels,
            alerts=[_notified(r) for r in shown],
            firing=len(firing),
            resolved=len(told_resolved_shown),
            top_model=top_model,
            top_agent=top_agent,
            console_url=console_link(self.cfg.console_url, group.tenant or shown[0].tenant),
            at_us=epoch_us(now),
        )
        for r in firing:
            r.notified_state = "firing"
        for r in told_resolved:
            r.notified_state = "resolved"
        await save(conn, [*firing, *told_resolved])
        await self.save(conn, [group])
        for receiver in self.receivers:
            body = blockkit.message(notification) if receiver == "slack" else msgspec.to_builtins(notification)
            await conn.execute(
                "INSERT INTO alert_outbox (receiver, group_key, kind, body) VALUES ($1, $2, $3, $4::jsonb)",
                receiver,
                group.group_key,
                kind,
                json.dumps(body),
            )
        return notification


def console_link(base: str, tenant: str) -> str:
    """The console's page of a customer (the console routes by URL fragment)."""
    if not base:
        return ""
    return f"{base.rstrip('/')}/#/customer/{quote(tenant, safe='')}" if tenant else f"{base.rstrip('/')}/#/alerts"


async def _top(conn: asyncpg.Connection, group: Group, rows: list[AlertRow], now: datetime) -> tuple[str, str]:
    window = max(r.window_s for r in rows)
    since = (now - timedelta(seconds=window)).replace(second=0, microsecond=0)
    labels = group.labels
    found = await conn.fetch(_TOP, since, sorted({r.tenant for r in rows}), labels.get("feature"), labels.get("agent"))
    models: dict[str, int] = {}
    agents: dict[str, int] = {}
    for r in found:
        models[r["model"]] = models.get(r["model"], 0) + r["c"]
        agents[r["agent"]] = agents.get(r["agent"], 0) + r["c"]
    return _largest(models), _largest(agents)


def _largest(spend: dict[str, int]) -> str:
    """The name with the most spend (ties: the first name in order); '' when there is none."""
    return max(sorted(spend), key=spend.__getitem__) if spend else ""


def _notified(r: AlertRow) -> NotifiedAlert:
    same = {f: getattr(r, f) for f in NotifiedAlert.__struct_fields__ if hasattr(r, f)}
    return NotifiedAlert(
        **same, started_at_us=epoch_us(r.started_at), resolved_at_us=epoch_us(r.resolved_at) if r.resolved_at else 0
    )
