"""Alert identity and silences, shared by the runaway-AI-cost detector (attributor) and the API.

An alert is one (rule, scope, reason): its **fingerprint** is a digest of exactly those labels, stable across episodes,
as in Alertmanager; each episode (firing → resolved) also has its own ``alert_id``. A **silence** mutes one
fingerprint from ``starts_at`` until ``ends_at``: while it holds, the alert still fires and resolves in
``alert_state`` (the console shows it) but no notification names it. Silencing by an episode's ``alert_id`` silences
its fingerprint, so a flapping alert stays quiet for the whole silence.

Reads and writes: ``alert_state`` (lookup), ``alert_silences``.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg
import msgspec

#: Bounds of one silence: long enough to sleep on, short enough that nothing is muted and forgotten.
MIN_SILENCE_S = 60
MAX_SILENCE_S = 30 * 86_400


class SilenceError(ValueError):
    """A silence that cannot be made; the message says which field and why."""


class UnknownAlert(LookupError):
    """No alert has this id or fingerprint."""


class Silence(msgspec.Struct, kw_only=True):
    silence_id: str
    fingerprint: str
    alert_id: str
    starts_at: datetime
    ends_at: datetime
    created_by: str = ""
    comment: str = ""


def fingerprint(rule_key: str, tenant: str, feature: str, agent: str, reason: str) -> str:
    """The stable identity of an alert (migration 30 computes the same digest in SQL for older rows)."""
    text = "\x1f".join((rule_key, tenant, feature, agent, reason))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def create_silence(
    conn: asyncpg.Connection,
    alert_ref: str,
    duration_s: int,
    now: datetime,
    created_by: str = "",
    comment: str = "",
) -> Silence:
    """Silence the alert named by ``alert_ref`` (an episode's ``alert_id`` or a fingerprint) for ``duration_s``.

    Raises ``UnknownAlert`` when no alert has that id, ``SilenceError`` for a duration out of bounds or a comment
    too long to be a comment.
    """
    if not MIN_SILENCE_S <= duration_s <= MAX_SILENCE_S:
        raise SilenceError(f"duration_s: must be between {MIN_SILENCE_S} and {MAX_SILENCE_S} seconds, not {duration_s}")
    if len(comment) > 1000:
        raise SilenceError("comment: at most 1000 characters")
    row = await conn.fetchrow(
        "SELECT fingerprint, alert_id FROM alert_state WHERE alert_id = $1 OR fingerprint = $1 LIMIT 1", alert_ref
    )
    if row is None:
        raise UnknownAlert(alert_ref)
    silence = Silence(
        silence_id=secrets.token_hex(8),
        fingerprint=row["fingerprint"],
        alert_id=row["alert_id"],
        starts_at=now,
        ends_at=now + timedelta(seconds=duration_s),
        created_by=created_by,
        comment=comment,
    )
    await conn.execute(
        "INSERT INTO alert_silences (silence_id, fingerprint, alert_id, starts_at, ends_at, created_by, comment) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        silence.silence_id,
        silence.fingerprint,
        silence.alert_id,
        silence.starts_at,
        silence.ends_at,
        silence.created_by,
        silence.comment,
    )
    return silence


async def active_silences(conn: asyncpg.Connection, now: datetime) -> set[str]:
    """The fingerprints that a silence holds at ``now`` (the table holds few rows: read whole)."""
    rows = await conn.fetch(
        "SELECT DISTINCT fingerprint FROM alert_silences WHERE starts_at <= $1 AND ends_at > $1", now
    )
    return {r["fingerprint"] for r in rows}
