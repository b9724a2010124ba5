"""Runaway-AI-cost detector: per tenant, feature and agent, the token-cost rate over sliding windows against a budget
and against a baseline, with de-duplication, cooldown and a resolved event when the rate falls back.

Reads: ``ai_usage_minute`` (cost in integer micro-dollars, written by the apply step minutes after the call) and
``config.alert_rules``. Writes: ``alert_state`` (so that de-duplication and cooldown survive restarts and replicas).
Emits: ``Alert`` messages (firing/resolved) for NATS ``costmesh.alerts`` and the Slack notifier.

Stateless about money: every pass recomputes the rates and the baseline from the store, so a restarted attributor
says exactly what the old one would have. Rates are micro-dollars per hour (integers). The baseline is an EWMA over
the past complete hours (``baseline_alpha``); a spike is a rate above ``spike_factor`` times the baseline. Only one
replica evaluates at a time (advisory lock).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

import asyncpg

from costmesh.common.config import AlertRule, Config
from costmesh.common.schemas import Alert

#: Advisory lock key of the detector pass ("cm-alert").
DETECTOR_LOCK = 0x636D2D616C657274
#: Hours of history the EWMA baseline looks back over.
BASELINE_HOURS = 24

Scope = tuple[str, str, str]  # tenant, feature, agent


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


@dataclass
class Evaluation:
    """The rates of one scope under one rule at one moment."""

    rates: dict[int, int]  # window seconds → micro-dollars per hour
    baseline: int

    def over(self, threshold: Fraction | int) -> int:
        """The longest window whose rate exceeds ``threshold``; 0 if none does."""
        hits = [w for w, r in self.rates.items() if r > threshold]
        return max(hits) if hits else 0


async def _costs(conn: asyncpg.Connection, now: datetime, since: datetime) -> dict[Scope, dict[datetime, int]]:
    rows = await conn.fetch(
        "SELECT minute, tenant, feature, agent, sum(cost_micros)::bigint AS c FROM ai_usage_minute "
        "WHERE minute >= $1 AND minute < $2 GROUP BY 1, 2, 3, 4",
        since,
        now,
    )
    out: dict[Scope, dict[datetime, int]] = defaultdict(dict)
    for r in rows:
        out[(r["tenant"], r["feature"], r["agent"])][r["minute"]] = r["c"]
    return out


def evaluate_scope(minutes: dict[datetime, int], now: datetime, windows: list[int], alpha: float) -> Evaluation:
    rates = {}
    for w in windows:
        start = now - timedelta(seconds=w)
        total = sum(c for m, c in minutes.items() if m >= start)
        rates[w] = total * 3600 // w
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    hourly: dict[datetime, int] = defaultdict(int)
    for m, c in minutes.items():
        if m < this_hour:
            hourly[m.replace(minute=0, second=0, microsecond=0)] += c
    first = min(hourly) if hourly else this_hour
    hours = []
    h = first
    while h < this_hour:
        hours.append(hourly.get(h, 0))
        h += timedelta(hours=1)
    return Evaluation(rates=rates, baseline=ewma(hours, alpha))


def _alert_id(key: str, scope: Scope, reason: str, started: datetime) -> str:
    digest = hashlib.sha256(json.dumps([key, *scope, reason, started.isoformat()]).encode()).hexdigest()
    return digest[:24]


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


async def run_pass(conn: asyncpg.Connection, cfg: Config, now: datetime) -> list[Alert] | None:
    """Evaluate every rule for every scope; returns the events to send (``None`` if another replica holds the lock).

    The state change and the decision to send commit together; a crash after commit and before sending loses at most
    that notification, never produces two.
    """
    rules = cfg.alert_rules
    if not rules:
        return []
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", DETECTOR_LOCK):
            return None
        windows_of = {rule_key(r): sorted({*cfg.attributor.detector_windows_s, r.window_s}) for r in rules}
        longest = max(max(w) for w in windows_of.values())
        since = min(now - timedelta(seconds=longest), now.replace(minute=0, second=0, microsecond=0)) - timedelta(
            hours=BASELINE_HOURS
        )
        costs = await _costs(conn, now, since)
        state = {
            (r["rule_key"], r["tenant"], r["feature"], r["agent"], r["reason"]): r
            for r in await conn.fetch("SELECT * FROM alert_state")
        }
        events: list[Alert] = []
        for rule in rules:
            key = rule_key(rule)
            scopes = {s for s in costs if matches(rule, s)}
            scopes |= {(t, f, a) for (k, t, f, a, _r), row in state.items() if k == key and row["state"] == "firing"}
            for scope in sorted(scopes):
                ev = evaluate_scope(costs.get(scope, {}), now, windows_of[key], cfg.attributor.baseline_alpha)
                checks = []
                if rule.budget_micros_per_hour > 0:
                    checks.append(("budget", ev.over(rule.budget_micros_per_hour)))
                if ev.baseline > 0:
                    checks.append(("spike", ev.over(Fraction(str(rule.spike_factor)) * ev.baseline)))
                for reason, window in checks:
                    events += await _transition(conn, rule, key, scope, reason, window, ev, state, now)
        return events


async def _transition(
    conn: asyncpg.Connection,
    rule: AlertRule,
    key: str,
    scope: Scope,
    reason: str,
    window: int,
    ev: Evaluation,
    state: dict,
    now: datetime,
) -> list[Alert]:
    row = state.get((key, *scope, reason))
    firing = row is not None and row["state"] == "firing"
    tenant, feature, agent = scope

    def alert(state_name: str, alert_id: str, started: datetime, w: int, message: str) -> Alert:
        return Alert(
            alert_id=alert_id,
            state=state_name,
            reason=reason,
            tenant=tenant,
            feature=feature,
            agent=agent,
            rate_micros_per_hour=ev.rates.get(w, max(ev.rates.values())),
            budget_micros_per_hour=rule.budget_micros_per_hour,
            baseline_micros_per_hour=ev.baseline,
            window_s=w,
            started_at_us=_us(started),
            at_us=_us(now),
            message=message,
        )

    if window and not firing:
        if (
            row is not None
            and row["resolved_at"] is not None
            and now < row["resolved_at"] + timedelta(seconds=rule.cooldown_s)
        ):
            return []  # cooling down after the last episode
        alert_id = _alert_id(key, scope, reason, now)
        await conn.execute(
            "INSERT INTO alert_state (rule_key, tenant, feature, agent, reason, state, alert_id, started_at, "
            "window_s) VALUES ($1, $2, $3, $4, $5, 'firing', $6, $7, $8) "
            "ON CONFLICT (rule_key, tenant, feature, agent, reason) DO UPDATE SET state = 'firing', "
            "alert_id = EXCLUDED.alert_id, started_at = EXCLUDED.started_at, window_s = EXCLUDED.window_s, "
            "resolved_at = NULL",
            key,
            *scope,
            reason,
            alert_id,
            now,
            window,
        )
        what = "over budget" if reason == "budget" else "a spike over its baseline"
        return [alert("firing", alert_id, now, window, f"AI token spend of {_name(scope)} is {what}")]
    if not window and firing:
        await conn.execute(
            "UPDATE alert_state SET state = 'resolved', resolved_at = $6 "
            "WHERE rule_key = $1 AND tenant = $2 AND feature = $3 AND agent = $4 AND reason = $5",
            key,
            *scope,
            reason,
            now,
        )
        return [
            alert(
                "resolved",
                row["alert_id"],
                row["started_at"],
                row["window_s"],
                f"AI token spend of {_name(scope)} is back to normal",
            )
        ]
    return []


def _name(scope: Scope) -> str:
    tenant, feature, agent = scope
    parts = [f"tenant {tenant or '(none)'}"]
    if feature:
        parts.append(f"feature {feature}")
    if agent:
        parts.append(f"agent {agent}")
    return ", ".join(parts)
