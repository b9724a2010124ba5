"""Runaway-AI-cost detector: per tenant, feature and agent, the token-cost rate over sliding windows against a budget
and against a baseline; an alert per (rule, scope, reason) that fires, resolves, and cools down.

Reads: ``spend`` buckets (written in the apply transaction, seconds after the calls) through ``windows`` in memory;
``ai_usage_minute`` for the hourly baseline; ``config.alert_rules``. Writes: ``alert_state`` (the alerts, their
episode ids, the numbers they fired with). Emits: ``Alert`` events (firing/resolved) for NATS ``costmesh.alerts``.

Only the leader (``leader``: one replica holding a session advisory lock) runs a ``Detector``; it starts from the
store (``start``), so a restarted or new leader says what the old one would have: every alert's state is in
``alert_state``, and the windows are rebuilt from the buckets. Rates are integer micro-dollars per hour. The baseline
is an EWMA over the past complete hours (``baseline_alpha``), refreshed once an hour; a spike is a rate above
``spike_factor`` times the baseline, with at least ``min_requests`` calls in the window (a new tenant's first calls
over a baseline of almost nothing are no spike).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg

from costmesh.common.alerting import fingerprint
from costmesh.common.config import AlertRule, Config
from costmesh.common.schemas import Alert

from . import spend
from .spend import Scope
from .windows import Rate, SpendWindows

#: Advisory lock key of the alerting leader ("cm-alert").
DETECTOR_LOCK = 0x636D2D616C657274
#: Hours of history the EWMA baseline looks back over.
BASELINE_HOURS = 24


def rule_key(rule: AlertRule) -> str:
    """A stable name for a rule (its fields), so that state follows the rule, not its position in the config."""
    return json.dumps(
        [rule.tenant, rule.feature, rule.agent, rule.budget_micros_per_hour, rule.spike_factor, rule.window_s],
        separators=(",", ":"),
    )


def matches(rule: AlertRule, scope: Scope) -> bool:
    tenant, feature, agent = scope
    return (
        (not rule.tenant or rule.tenant == tenant)
        and (not rule.feature or rule.feature == feature)
        and (not rule.agent or rule.agent == agent)
    )


def ewma(hourly: list[int], alpha: float) -> int:
    """EWMA of hourly costs, oldest first, in exact fractions; the first hour seeds it. 0 with no history."""
    if not hourly:
        return 0
    a = Fraction(str(alpha))
    value = Fraction(hourly[0])
    for cost in hourly[1:]:
        value = a * cost + (1 - a) * value
    return int(value)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One reason's judgement of a scope: the longest window over the threshold, or ``None``."""

    over: Rate | None
    threshold: int
    #: The rate shown when nothing is over (the rule's own window).
    shown: Rate


def judge(rule: AlertRule, rates: list[Rate], baseline: int | None) -> dict[str, Verdict]:
    """Budget and spike verdicts for one scope. ``baseline`` ``None``: not known yet, so spikes are not judged (no
    firing, no resolving); 0: no history, so there is nothing to spike over."""
    shown = next(r for r in rates if r.window_s == rule.window_s)
    out: dict[str, Verdict] = {}
    if rule.budget_micros_per_hour > 0:
        hits = [r for r in rates if r.micros_per_hour > rule.budget_micros_per_hour]
        out["budget"] = Verdict(
            max(hits, key=lambda r: r.window_s) if hits else None, rule.budget_micros_per_hour, shown
        )
    if baseline:
        threshold = Fraction(str(rule.spike_factor)) * baseline
        hits = [r for r in rates if r.micros_per_hour > threshold and r.requests >= rule.min_requests]
        out["spike"] = Verdict(max(hits, key=lambda r: r.window_s) if hits else None, int(threshold), shown)
    return out


@dataclass(slots=True)
class AlertRow:
    """One ``alert_state`` row, mirrored in memory by the leader (the only writer)."""

    rule_key: str
    tenant: str
    feature: str
    agent: str
    reason: str
    state: str
    alert_id: str
    started_at: datetime
    window_s: int
    fingerprint: str
    group_key: str
    resolved_at: datetime | None = None
    rate_micros_per_hour: int = 0
    threshold_micros_per_hour: int = 0
    budget_micros_per_hour: int = 0
    baseline_micros_per_hour: int = 0
    window_requests: int = 0
    notified_state: str | None = None

    @property
    def scope(self) -> Scope:
        return (self.tenant, self.feature, self.agent)

    def event(self, at: datetime, message: str) -> Alert:
        return Alert(
            alert_id=self.alert_id,
            state=self.state,  # type: ignore[arg-type]
            reason=self.reason,  # type: ignore[arg-type]
            tenant=self.tenant,
            feature=self.feature,
            agent=self.agent,
            rate_micros_per_hour=self.rate_micros_per_hour,
            budget_micros_per_hour=self.budget_micros_per_hour,
            baseline_micros_per_hour=self.baseline_micros_per_hour,
            window_s=self.window_s,
            started_at_us=epoch_us(self.started_at),
            at_us=epoch_us(at),
            message=message,
            fingerprint=self.fingerprint,
        )


_COLUMNS = tuple(AlertRow.__dataclass_fields__)
#: All but ``fingerprint``, which PostgreSQL generates from the labels (the same digest).
_WRITTEN = tuple(c for c in _COLUMNS if c != "fingerprint")

_SAVE = f"""
INSERT INTO alert_state ({", ".join(_WRITTEN)}, updated_at)
VALUES ({", ".join(f"${i}" for i in range(1, len(_WRITTEN) + 1))}, now())
ON CONFLICT (rule_key, tenant, feature, agent, reason) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _WRITTEN[5:])}, updated_at = now()
"""


async def save(conn: asyncpg.Connection, rows: Iterable[AlertRow]) -> None:
    """Write alert rows as they are in memory (one statement, pipelined)."""
    await conn.executemany(_SAVE, [tuple(getattr(r, c) for c in _WRITTEN) for r in rows])


def group_key_of(group_by: list[str], scope: Scope) -> str:
    tenant, feature, agent = scope
    labels = {"tenant": tenant, "feature": feature, "agent": agent}
    return json.dumps([[k, labels[k]] for k in sorted(group_by)], separators=(",", ":"))


@dataclass
class Detector:
    """The leader's detector: windows, baselines and alerts in memory, the store as the truth."""

    cfg: Config
    windows: SpendWindows = field(init=False)
    alerts: dict[tuple[str, str, str, str, str], AlertRow] = field(default_factory=dict)
    baselines: dict[Scope, int] | None = None
    baseline_hour: datetime | None = None
    unjudged: set[Scope] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rules = [(rule_key(r), r) for r in self.cfg.alert_rules]
        self.windows_of = {k: sorted({*self.cfg.attributor.detector_windows_s, r.window_s}) for k, r in self.rules}
        longest = max((max(w) for w in self.windows_of.values()), default=60)
        self.windows = SpendWindows(longest)

    async def start(self, conn: asyncpg.Connection, now: datetime) -> list[AlertRow]:
        """Load the alerts and the windows from the store; returns firing alerts whose rule is gone, now resolved
        (their groups are due a resolved notification)."""
        self.alerts = {}
        for r in await conn.fetch(f"SELECT {', '.join(_COLUMNS)} FROM alert_state"):
            row = AlertRow(**dict(r))
            row.group_key = group_key_of(self.cfg.alerting.group_by, row.scope)  # group_by may have changed
            self.alerts[(row.rule_key, *row.scope, row.reason)] = row
        since = int(now.timestamp()) - self.windows.longest_s - spend.BUCKET_S
        self.unjudged = set()
        for b in await spend.load(conn, since):
            self.windows.set(b.scope, b.at_s, b.cost_micros, b.requests)
            self.unjudged.add(b.scope)  # what changed while no leader ran: judged on the first pass
        keys = {k for k, _ in self.rules}
        orphans = [a for a in self.alerts.values() if a.state == "firing" and a.rule_key not in keys]
        for a in orphans:
            a.state, a.resolved_at = "resolved", now
        if orphans:
            await save(conn, orphans)
        return orphans

    def firing_scopes(self) -> set[Scope]:
        return {a.scope for a in self.alerts.values() if a.state == "firing"}

    async def refresh_baselines(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Hourly costs per scope over the past ``BASELINE_HOURS`` complete hours, but the scope's first → EWMA
        (exact integers)."""
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        rows = await conn.fetch(
            "SELECT tenant, feature, agent, date_trunc('hour', minute) AS h, sum(cost_micros)::bigint AS c "
            "FROM ai_usage_minute WHERE minute >= $1 AND minute < $2 GROUP BY 1, 2, 3, 4",
            this_hour - timedelta(hours=BASELINE_HOURS),
            this_hour,
        )
        hourly: dict[Scope, dict[datetime, int]] = defaultdict(dict)
        for r in rows:
            hourly[(r["tenant"], r["feature"], r["agent"])][r["h"]] = r["c"]
        alpha = self.cfg.attributor.baseline_alpha
        baselines = {}
        for scope, hours in hourly.items():
            # A scope's first hour is most likely partial (it started mid-hour): a baseline from it would make its
            # second hour a spike. So the series starts with the first hour after it; one hour of history is none.
            h, series = min(hours) + timedelta(hours=1), []
            while h < this_hour:
                series.append(hours.get(h, 0))
                h += timedelta(hours=1)
            baselines[scope] = ewma(series, alpha)
        self.baselines, self.baseline_hour = baselines, this_hour

    def ingest(self, buckets: Iterable[spend.Bucket]) -> set[Scope]:
        """Set the buckets read from the store; returns the scopes to judge (those, and any loaded but unjudged)."""
        touched, self.unjudged = self.unjudged, set()
        for b in buckets:
            self.windows.set(b.scope, b.at_s, b.cost_micros, b.requests)
            touched.add(b.scope)
        return touched

    def evaluate(self, scopes: Iterable[Scope], now: datetime) -> tuple[list[AlertRow], list[Alert]]:
        """Judge ``scopes`` under every matching rule at ``now``; returns the rows that changed state (to save, in
        the same transaction as their groups' marks) and the events to publish after the commit. Rows that stay as
        they are get their latest numbers in memory only (a notification writes them)."""
        now_us = epoch_us(now)
        changed: list[AlertRow] = []
        events: list[Alert] = []
        group_by = self.cfg.alerting.group_by
        for scope in scopes:
            baseline = None if self.baselines is None else self.baselines.get(scope, 0)
            for key, rule in self.rules:
                if not matches(rule, scope):
                    continue
                rates = self.windows.rates(scope, now_us, self.windows_of[key])
                for reason, verdict in judge(rule, rates, baseline).items():
                    row = self.alerts.get((key, *scope, reason))
                    firing = row is not None and row.state == "firing"
                    rate = verdict.over or verdict.shown
                    if verdict.over and not firing:
                        if (
                            row is not None
                            and row.resolved_at
                            and now < row.resolved_at + timedelta(seconds=rule.cooldown_s)
                        ):
                            continue  # cooling down after the last episode
                        fp = fingerprint(key, *scope, reason)
                        row = AlertRow(
                            key, *scope, reason, "firing", _alert_id(fp, now), now, rate.window_s, fp,
                            group_key_of(group_by, scope),
                        )  # fmt: skip
                        self.alerts[(key, *scope, reason)] = row
                    elif not verdict.over and firing:
                        row.state, row.resolved_at = "resolved", now
                    elif row is None or not firing:
                        continue
                    _numbers(row, rate, verdict, rule, baseline)
                    if verdict.over and firing:
                        continue  # still firing: numbers refreshed, no event
                    changed.append(row)
                    events.append(row.event(now, _message(row)))
        return changed, events


def _numbers(row: AlertRow, rate: Rate, verdict: Verdict, rule: AlertRule, baseline: int | None) -> None:
    if row.state == "firing":
        row.window_s = rate.window_s
    row.rate_micros_per_hour = rate.micros_per_hour
    row.window_requests = rate.requests
    row.threshold_micros_per_hour = verdict.threshold
    row.budget_micros_per_hour = rule.budget_micros_per_hour
    row.baseline_micros_per_hour = baseline or 0


def _alert_id(fp: str, started: datetime) -> str:
    return hashlib.sha256(f"{fp}@{started.isoformat()}".encode()).hexdigest()[:24]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(t: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float on the way)."""
    return (t - _EPOCH) // timedelta(microseconds=1)


def scope_name(scope: Scope) -> str:
    tenant, feature, agent = scope
    parts = [f"tenant {tenant or '(none)'}"]
    if feature:
        parts.append(f"feature {feature}")
    if agent:
        parts.append(f"agent {agent}")
    return ", ".join(parts)


def _message(row: AlertRow) -> str:
    if row.state == "resolved":
        return f"AI token spend of {scope_name(row.scope)} is back to normal"
    what = "over budget" if row.reason == "budget" else "a spike over its baseline"
    return f"AI token spend of {scope_name(row.scope)} is {what}"
