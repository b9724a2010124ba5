"""Tenant resolution: every call of a minute gets a tenant, or says plainly why it has none.

Reads: ``consumption_minute`` rows of the minute, ``queue_minute`` (producer mixes over ``queue_window_s``, consumer
volumes), ``config.workloads`` (which workloads are background). Writes: ``attributed_minute`` for that minute (all of
it, replaced in the caller's transaction), each row with the method that produced it.

Order, per call without a tenant:

1. ``trace``: the sensor already joined it to a tagged request of the same trace (it arrives with a tenant).
2. ``propagated``: the calling workload's inbound tenant mix in that minute — weighted by inbound requests, where an
   untagged inbound call contributes *its* caller's mix, and a queue consumer's inbound is the producer tenant mix of
   the topics it consumed (over ``queue_window_s``). Mixes along cycles are solved by fixed-point iteration until no
   share moves by more than ``propagation_tolerance``.
3. ``platform``: the calling workload is named background in config.
4. ``unallocated``: nothing can be said.

Shares are floats while solving (they are ratios, never money); splitting counts uses integer weights and largest
remainders, so the parts of every measure add up exactly to the call's value.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from costmesh.common.config import Config
from costmesh.common.money import largest_remainder
from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS

if TYPE_CHECKING:
    from .storage import Upkeep

log = logging.getLogger(__name__)

MEASURES = COUNTERS
DIMS = CONSUMPTION_KEY
#: Integer resolution of shares when splitting counts (parts per 10^12).
SCALE = 10**12
MAX_ITERATIONS = 1000

Mix = dict[str, float]


def split(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split an integer count by integer weights with largest remainders (``money.largest_remainder``, the same rule
    that splits bills): the parts sum to ``total`` exactly, ties go to the name that sorts first."""
    names = sorted(weights)
    if total == 0 or sum(weights.values()) <= 0:
        return dict.fromkeys(names, 0)
    return dict(zip(names, largest_remainder(total, [weights[n] for n in names]), strict=True))


def integer_weights(mix: Mix) -> dict[str, int]:
    """Shares as integer weights (parts per ``SCALE``); zero shares are dropped."""
    out = {t: round(s * SCALE) for t, s in mix.items()}
    return {t: w for t, w in out.items() if w > 0}


def _normalize(acc: Mapping[str, float]) -> Mix:
    total = sum(acc.values())
    if total <= 0:
        return {}
    return {t: v / total for t, v in acc.items() if v > 0}


def solve_mixes(
    inbound_direct: Mapping[str, Mapping[str, float]],
    inbound_from: Mapping[str, Mapping[str, float]],
    topic_producers: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]],
    consumed: Mapping[str, Mapping[str, float]],
    tolerance: float,
) -> dict[str, Mix]:
    """Fixed point of the inbound tenant mixes of every workload.

    ``inbound_direct[w][tenant]``: weight of tagged calls into ``w``; ``inbound_from[w][src]``: weight of untagged
    calls into ``w`` from ``src`` (they carry ``src``'s mix); ``topic_producers[topic] = (tagged weight per tenant,
    untagged weight per producer workload)``; ``consumed[w][topic]``: weight of what ``w`` consumed from ``topic``.
    """
    workloads = set(inbound_direct) | set(inbound_from) | set(consumed)
    mixes: dict[str, Mix] = {w: _normalize(inbound_direct.get(w, {})) for w in workloads}
    for _ in range(MAX_ITERATIONS):
        topic_mix: dict[str, Mix] = {}
        for topic, (tagged, untagged) in topic_producers.items():
            acc: dict[str, float] = defaultdict(float, tagged)
            for producer, weight in untagged.items():
                for t, s in mixes.get(producer, {}).items():
                    acc[t] += weight * s
            topic_mix[topic] = _normalize(acc)
        moved = 0.0
        new: dict[str, Mix] = {}
        for w in workloads:
            acc = defaultdict(float, inbound_direct.get(w, {}))
            for src, weight in inbound_from.get(w, {}).items():
                for t, s in mixes.get(src, {}).items():
                    acc[t] += weight * s
            for topic, weight in consumed.get(w, {}).items():
                for t, s in topic_mix.get(topic, {}).items():
                    acc[t] += weight * s
            mix = _normalize(acc)
            old = mixes.get(w, {})
            for t in set(mix) | set(old):
                moved = max(moved, abs(mix.get(t, 0.0) - old.get(t, 0.0)))
            new[w] = mix
        mixes = new
        if moved <= tolerance:
            break
    else:
        log.warning("tenant propagation did not converge within %d iterations", MAX_ITERATIONS)
    return mixes


def resolve_rows(
    rows: Sequence[Mapping],
    mixes: Mapping[str, Mix],
    background: set[str],
) -> dict[tuple, list[int]]:
    """Attributed rows keyed by ``DIMS``: tagged rows as they are, untagged ones split or classified."""
    out: dict[tuple, list[int]] = {}

    def add(key: tuple, values: Iterable[int]) -> None:
        acc = out.get(key)
        if acc is None:
            out[key] = list(values)
        else:
            for i, v in enumerate(values):
                acc[i] += v

    weights_cache: dict[str, dict[str, int]] = {}
    for r in rows:
        values = [r[m] for m in MEASURES]
        rest = (r["feature"], r["agent"], r["src_workload"], r["dst"], r["protocol"])
        if r["tenant"]:
            add((r["tenant"], r["tenant_method"], *rest), values)
            continue
        src = r["src_workload"]
        if src not in weights_cache:
            weights_cache[src] = integer_weights(mixes.get(src, {}))
        weights = weights_cache[src]
        if weights:
            parts = [split(v, weights) for v in values]
            for tenant in sorted(weights):
                add((tenant, "propagated", *rest), [p[tenant] for p in parts])
        elif src in background:
            add(("", "platform", *rest), values)
        else:
            add(("", "unallocated", *rest), values)
    return out


async def resolve_minute(conn: asyncpg.Connection, cfg: Config, minute: datetime) -> int:
    """Recompute ``attributed_minute`` for one minute; returns the number of rows written."""
    rows = await conn.fetch(
        f"SELECT {', '.join(DIMS)}, {', '.join(MEASURES)} FROM consumption_minute WHERE minute = $1", minute
    )
    inbound_direct: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    inbound_from: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        weight = float(r["requests"] or 1)
        if r["tenant"]:
            inbound_direct[r["dst"]][r["tenant"]] += weight
        else:
            inbound_from[r["dst"]][r["src_workload"]] += weight
    topic_producers: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    consumed: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    consumers = await conn.fetch(
        "SELECT topic, workload, sum(greatest(bytes, requests))::float8 AS w FROM queue_minute "
        "WHERE minute = $1 AND role = 'consumer' GROUP BY topic, workload",
        minute,
    )
    if consumers:
        topics = sorted({c["topic"] for c in consumers})
        for c in consumers:
            consumed[c["workload"]][c["topic"]] += c["w"]
        producers = await conn.fetch(
            "SELECT topic, workload, tenant, sum(greatest(bytes, requests))::float8 AS w FROM queue_minute "
            "WHERE role = 'producer' AND topic = ANY($1) AND minute > $2 AND minute <= $3 "
            "GROUP BY topic, workload, tenant",
            topics,
            minute - timedelta(seconds=cfg.attributor.queue_window_s),
            minute,
        )
        for p in producers:
            tagged, untagged = topic_producers.setdefault(p["topic"], (defaultdict(float), defaultdict(float)))
            if p["tenant"]:
                tagged[p["tenant"]] += p["w"]
            else:
                untagged[p["workload"]] += p["w"]
    mixes = solve_mixes(inbound_direct, inbound_from, topic_producers, consumed, cfg.attributor.propagation_tolerance)
    background = {w.name for w in cfg.workloads if w.background}
    out = resolve_rows(rows, mixes, background)
    await conn.execute("DELETE FROM attributed_minute WHERE minute = $1", minute)
    if out:
        await conn.copy_records_to_table(
            "attributed_minute",
            records=[(minute, *key, *values) for key, values in out.items()],
            columns=("minute", *DIMS, *MEASURES),
        )
    return len(out)


async def resolve_minutes(conn: asyncpg.Connection, cfg: Config, minutes: Sequence[datetime], up: Upkeep) -> None:
    """Resolve each minute; the caller's transaction makes the whole set visible at once."""
    for minute in minutes:
        await resolve_minute(conn, cfg, minute)
    up.minutes_resolved += len(minutes)
