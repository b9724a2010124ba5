"""AI spend per scope (tenant, feature, agent) in 5-second buckets: what the runaway-cost detector reads, seconds
after the calls.

Writes (``record``, called inside the apply transaction, so a batch counts once or not at all): ``ai_spend_bucket``
(absolute sums per bucket) and ``ai_spend_changed`` (the buckets changed since the detector last read them).
Reads (``take_changes``, ``load``): the detector's view. Retention (``expire``): buckets older than the longest window.

Why absolute sums and change marks rather than a stream of increments: the detector re-reads a changed bucket's
total, so reading a bucket twice, or after a restart, or on another replica, gives the same answer; nothing is
counted twice and nothing is lost when the leader changes.

Why the change marks are appended and taken in two statements: a mark is a row inserted by the transaction that
changed the bucket, so it becomes visible exactly when that change does. ``take_changes`` first deletes the marks it
sees, then reads those buckets in a new statement, whose snapshot includes every transaction whose mark it deleted
(and perhaps later ones: a bucket read with more than its marks said is still its true total). A transaction that
commits after the delete left its marks in place for the next pass. Nobody updates a mark, so writers and the reader
never lock each other.

Why 5 seconds: 5,000 calls/s over 10,000 scopes fill ~1,850 buckets a second (against ~3,900 for 1-second buckets),
and the detector holds 61 buckets per scope for a 5-minute window; a window's edge is placed to 5 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

#: Width of one bucket, seconds.
BUCKET_S = 5
#: Change marks taken per pass at most (a backlog is read over several passes).
MAX_CHANGES = 50_000

Scope = tuple[str, str, str]  # tenant, feature, agent


@dataclass(frozen=True, slots=True)
class Bucket:
    scope: Scope
    at_s: int
    requests: int
    cost_micros: int


_RECORD = """
WITH x AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
        AS x(tenant, feature, agent, at_s, requests, cost_micros)
    ORDER BY 1, 2, 3, 4
), up AS (
    INSERT INTO ai_spend_bucket AS b (tenant, feature, agent, at_s, requests, cost_micros)
    SELECT * FROM x
    ON CONFLICT (tenant, feature, agent, at_s) DO UPDATE SET
        requests = b.requests + EXCLUDED.requests, cost_micros = b.cost_micros + EXCLUDED.cost_micros
)
INSERT INTO ai_spend_changed (tenant, feature, agent, at_s) SELECT tenant, feature, agent, at_s FROM x
"""


async def record(conn: asyncpg.Connection, costs: Sequence) -> None:
    """Add priced AI calls (``apply.AiCost``: ``at_us``, scope, ``requests``, ``cost_micros``) to their buckets.

    Must run inside the transaction that applies the calls' batches."""
    sums: dict[tuple[str, str, str, int], list[int]] = {}
    for c in costs:
        key = (c.tenant, c.feature, c.agent, c.at_us // 1_000_000 // BUCKET_S * BUCKET_S)
        acc = sums.get(key)
        if acc is None:
            sums[key] = [c.requests, c.cost_micros]
        else:
            acc[0] += c.requests
            acc[1] += c.cost_micros
    if not sums:
        return
    keys = list(sums)
    await conn.execute(
        _RECORD,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [sums[k][0] for k in keys],
        [sums[k][1] for k in keys],
    )


_TAKE = """
DELETE FROM ai_spend_changed WHERE ctid = ANY(ARRAY(SELECT ctid FROM ai_spend_changed LIMIT $1))
RETURNING tenant, feature, agent, at_s
"""

_READ = """
SELECT b.tenant, b.feature, b.agent, b.at_s, b.requests, b.cost_micros
FROM ai_spend_bucket b
JOIN unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS k(tenant, feature, agent, at_s)
    ON b.tenant = k.tenant AND b.feature = k.feature AND b.agent = k.agent AND b.at_s = k.at_s
"""


async def take_changes(conn: asyncpg.Connection, limit: int = MAX_CHANGES) -> list[Bucket]:
    """The current totals of the buckets changed since the last call (see the module docstring for why this order
    loses nothing). Runs in autocommit: the delete commits before the read."""
    taken = {tuple(r) for r in await conn.fetch(_TAKE, limit)}
    if not taken:
        return []
    rows = await conn.fetch(
        _READ,
        [k[0] for k in taken],
        [k[1] for k in taken],
        [k[2] for k in taken],
        [k[3] for k in taken],
    )
    return [_bucket(r) for r in rows]


async def load(conn: asyncpg.Connection, since_s: int) -> list[Bucket]:
    """Every bucket from ``since_s`` on, after dropping the change marks (the load reads everything they named):
    what a new leader starts from."""
    while len(await conn.fetch(_TAKE, MAX_CHANGES)) == MAX_CHANGES:
        pass
    rows = await conn.fetch(
        "SELECT tenant, feature, agent, at_s, requests, cost_micros FROM ai_spend_bucket WHERE at_s >= $1", since_s
    )
    return [_bucket(r) for r in rows]


async def expire(conn: asyncpg.Connection, before_s: int) -> int:
    """Drop buckets (and marks) older than ``before_s``; returns the buckets dropped."""
    await conn.execute("DELETE FROM ai_spend_changed WHERE at_s < $1", before_s)
    status = await conn.execute("DELETE FROM ai_spend_bucket WHERE at_s < $1", before_s)
    return int(status.rsplit(" ", 1)[-1])


def _bucket(r: asyncpg.Record) -> Bucket:
    return Bucket((r["tenant"], r["feature"], r["agent"]), r["at_s"], r["requests"], r["cost_micros"])
