"""Applying call batches to the consumption store, exactly once in effect.

Reads: decoded ``CallBatch`` messages (several per transaction). Writes, in ONE transaction per group of batches:
``applied_batches`` (one row per batch id), ``consumption_minute`` (per-minute sums), the live graph
(``graph_node``, ``graph_edge_minute``), queue producer/consumer volumes (``queue_minute``), AI token cost
(``ai_usage_minute``), CPU/memory per workload and node capacity (``compute_hourly``, ``node_capacity_hourly``:
few rows, summed per hour straight away, since node lines are split per hour) and the minutes whose rollups and tenant
resolution must be recomputed (``dirty_minutes``).

Why it is exactly once in effect: the batch ids are inserted first with ``ON CONFLICT DO NOTHING RETURNING``; only the
records of batches whose id was new go on to be written, and all of it commits or none of it does. A batch seen again
(JetStream redelivery after a crash, a copy re-sent after the server's de-duplication window) finds its id and changes
nothing. The caller acknowledges the messages only after the commit.

Why it is fast: the records of a whole group are summed per (window, key) straight from the msgpack payloads in C
(``costmesh.native.fold``: no Python object per record), sent with COPY into a temporary staging table, and folded
into each target by ``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`` statements sent together in one round
trip -- the per-minute aggregation happens inside PostgreSQL, not row by row.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS, CallBatch, ObservedCall
from costmesh.common.usage import CONSUME_VERBS, PRODUCE_VERBS, QUEUE_PROTOCOLS, hourly_compute
from costmesh.native.fold import Folder

#: The columns of ``staging_agg``, in COPY order: what ``costmesh.native.fold`` emits per (minute, key), the operation
#: kept for queue calls only (it names the topic), the counters summed, the first and last window start.
AGG_COLUMNS: tuple[str, ...] = (
    "m",
    *CONSUMPTION_KEY,
    "operation",
    *COUNTERS,
    "first_us",
    "last_us",
)


CREATE_STAGING = """
SET temp_buffers = '256MB';
SET work_mem = '256MB';
CREATE TEMP TABLE IF NOT EXISTS staging_agg (
    m bigint NOT NULL, tenant text NOT NULL, tenant_method text NOT NULL, feature text NOT NULL, agent text NOT NULL,
    src_workload text NOT NULL, dst text NOT NULL, protocol text NOT NULL, operation text NOT NULL,
    requests bigint NOT NULL, errors bigint NOT NULL, bytes_in bigint NOT NULL, bytes_out bigint NOT NULL,
    busy_us bigint NOT NULL, tokens_in bigint NOT NULL, tokens_out bigint NOT NULL, tokens_cached bigint NOT NULL,
    tokens_reasoning bigint NOT NULL, first_us bigint NOT NULL, last_us bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_edges (
    m bigint NOT NULL, src_workload text NOT NULL, dst text NOT NULL, protocol text NOT NULL, operation text NOT NULL,
    calls bigint NOT NULL, errors bigint NOT NULL, bytes_in bigint NOT NULL, bytes_out bigint NOT NULL,
    busy_us bigint NOT NULL, first_us bigint NOT NULL, last_us bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS staging_ai (
    minute timestamptz NOT NULL, tenant text NOT NULL, tenant_method text NOT NULL, feature text NOT NULL,
    agent text NOT NULL, src_workload text NOT NULL, dst text NOT NULL, provider text NOT NULL, model text NOT NULL,
    requests bigint NOT NULL, tokens_in bigint NOT NULL, tokens_out bigint NOT NULL, tokens_cached bigint NOT NULL,
    tokens_reasoning bigint NOT NULL, cost_micros bigint NOT NULL
) ON COMMIT DELETE ROWS;
"""

_MEASURES = COUNTERS
_KEY = ("minute", *CONSUMPTION_KEY)

MERGE_CONSUMPTION = f"""
INSERT INTO consumption_minute AS c ({", ".join(_KEY)}, {", ".join(_MEASURES)})
SELECT to_timestamp(m * 60), {", ".join(CONSUMPTION_KEY)},
    {", ".join(f"sum({m})" for m in _MEASURES)}
FROM staging_agg GROUP BY m, {", ".join(CONSUMPTION_KEY)}
ON CONFLICT ({", ".join(_KEY)}) DO UPDATE SET
    {", ".join(f"{m} = c.{m} + EXCLUDED.{m}" for m in _MEASURES)}
"""

#: A queue call's topic: the operation without its verb (``produce orders`` → ``orders``), else the destination
#: (``usage.queue_topic`` is the same rule for records in memory).
_TOPIC_SQL = (
    "CASE WHEN operation = '' THEN dst WHEN position(' ' in operation) > 0 "
    "THEN split_part(operation, ' ', 2) ELSE operation END"
)
#: A queue call's role: by its verb when it has one, else by direction (more bytes sent than received: producing);
#: ``usage.queue_role`` is the same rule for records in memory.
_ROLE_SQL = (
    f"CASE WHEN lower(split_part(operation, ' ', 1)) IN {tuple(sorted(CONSUME_VERBS))!r} THEN 'consumer' "
    f"WHEN lower(split_part(operation, ' ', 1)) IN {tuple(sorted(PRODUCE_VERBS))!r} THEN 'producer' "
    "WHEN bytes_out >= bytes_in THEN 'producer' ELSE 'consumer' END"
)

#: Everything keyed by edge (graph edges, nodes, dirty minutes) reads this even smaller table.
FILL_EDGES = """
INSERT INTO staging_edges
SELECT m, src_workload, dst, protocol, operation,
    sum(requests), sum(errors), sum(bytes_in), sum(bytes_out), sum(busy_us), min(first_us), max(last_us)
FROM staging_agg GROUP BY 1, 2, 3, 4, 5
"""

#: Edges per minute. A queue consumer's edge points from the topic to the consumer, so that the graph reads
#: producer → topic → consumer.
MERGE_EDGES = f"""
WITH e AS (
    SELECT to_timestamp(m * 60) AS minute,
        CASE WHEN protocol IN {QUEUE_PROTOCOLS!r} AND {_ROLE_SQL} = 'consumer' THEN 'topic:' || {_TOPIC_SQL}
             ELSE src_workload END AS src,
        CASE WHEN protocol IN {QUEUE_PROTOCOLS!r} AND {_ROLE_SQL} = 'consumer' THEN src_workload
             WHEN protocol IN {QUEUE_PROTOCOLS!r} THEN 'topic:' || {_TOPIC_SQL}
             ELSE dst END AS dst,
        protocol, calls, errors, bytes_in, bytes_out, busy_us
    FROM staging_edges
)
INSERT INTO graph_edge_minute AS g (minute, src, dst, protocol, calls, errors, bytes_in, bytes_out, busy_us)
SELECT minute, src, dst, protocol, sum(calls), sum(errors), sum(bytes_in), sum(bytes_out), sum(busy_us)
FROM e GROUP BY 1, 2, 3, 4
ON CONFLICT (minute, src, dst, protocol) DO UPDATE SET
    calls = g.calls + EXCLUDED.calls, errors = g.errors + EXCLUDED.errors, bytes_in = g.bytes_in + EXCLUDED.bytes_in,
    bytes_out = g.bytes_out + EXCLUDED.bytes_out, busy_us = g.busy_us + EXCLUDED.busy_us
"""

#: Nodes appear on first sight, with no configuration; ``last_seen`` lets idle ones age out of the live graph.
MERGE_NODES = f"""
WITH n AS (
    SELECT src_workload AS name, 'workload' AS kind, first_us, last_us FROM staging_edges
    UNION ALL
    SELECT CASE WHEN protocol IN {QUEUE_PROTOCOLS!r} THEN 'topic:' || {_TOPIC_SQL} ELSE dst END,
        CASE WHEN protocol IN {QUEUE_PROTOCOLS!r} THEN 'topic'
             WHEN protocol IN ('postgres', 'redis', 'mongodb') THEN 'database'
             WHEN protocol = 'tls' OR dst ~ '[a-zA-Z]\\.[a-zA-Z]' THEN 'external'
             ELSE 'service' END,
        first_us, last_us
    FROM staging_edges
)
INSERT INTO graph_node AS g (name, kind, first_seen, last_seen)
SELECT name, CASE WHEN bool_or(kind = 'workload') THEN 'workload' ELSE min(kind) END,
    to_timestamp(min(first_us) / 1000000.0), to_timestamp(max(last_us) / 1000000.0)
FROM n WHERE name <> '' GROUP BY name
ON CONFLICT (name) DO UPDATE SET
    kind = CASE WHEN g.kind = 'workload' OR EXCLUDED.kind = 'workload' THEN 'workload' ELSE g.kind END,
    first_seen = least(g.first_seen, EXCLUDED.first_seen), last_seen = greatest(g.last_seen, EXCLUDED.last_seen)
"""

MERGE_QUEUES = f"""
INSERT INTO queue_minute AS q (minute, topic, role, workload, tenant, tenant_method, feature, agent, requests, bytes)
SELECT to_timestamp(m * 60), {_TOPIC_SQL}, {_ROLE_SQL}, src_workload, tenant, tenant_method, feature, agent,
    sum(requests), sum(bytes_in + bytes_out)
FROM staging_agg WHERE protocol IN {QUEUE_PROTOCOLS!r} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
ON CONFLICT (minute, topic, role, workload, tenant, tenant_method, feature, agent) DO UPDATE SET
    requests = q.requests + EXCLUDED.requests, bytes = q.bytes + EXCLUDED.bytes
"""

MERGE_AI = """
INSERT INTO ai_usage_minute AS a (minute, tenant, tenant_method, feature, agent, src_workload, dst, provider, model,
    requests, tokens_in, tokens_out, tokens_cached, tokens_reasoning, cost_micros)
SELECT minute, tenant, tenant_method, feature, agent, src_workload, dst, provider, model, sum(requests),
    sum(tokens_in), sum(tokens_out), sum(tokens_cached), sum(tokens_reasoning), sum(cost_micros)
FROM staging_ai GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
ON CONFLICT (minute, tenant, tenant_method, feature, agent, src_workload, dst, provider, model) DO UPDATE SET
    requests = a.requests + EXCLUDED.requests, tokens_in = a.tokens_in + EXCLUDED.tokens_in,
    tokens_out = a.tokens_out + EXCLUDED.tokens_out, tokens_cached = a.tokens_cached + EXCLUDED.tokens_cached,
    tokens_reasoning = a.tokens_reasoning + EXCLUDED.tokens_reasoning,
    cost_micros = a.cost_micros + EXCLUDED.cost_micros
"""

MARK_DIRTY = """
INSERT INTO dirty_minutes AS d (minute) SELECT DISTINCT to_timestamp(m * 60) FROM staging_edges
ON CONFLICT (minute) DO UPDATE SET gen = d.gen + 1
"""

#: Every statement after the COPY, in order, as one simple-protocol message: one round trip per group.
MERGE_ALL = ";\n".join((MERGE_CONSUMPTION, FILL_EDGES, MERGE_EDGES, MERGE_NODES, MERGE_QUEUES, MARK_DIRTY))

#: Compute rows are additive sums per hour (``usage.hourly_compute``): a new batch's rows add to what is there.
MERGE_COMPUTE = """
INSERT INTO compute_hourly AS c (hour, node, workload, tenant, tenant_method, feature, zone, cpu_usage_us,
    cpu_request_us, memory_byte_s, memory_request_byte_s)
SELECT to_timestamp(h::bigint / 1000000), n, w, t, tm, f, z, cu, cr, mb, mr
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
    $9::bigint[], $10::bigint[], $11::bigint[]) AS x(h, n, w, t, tm, f, z, cu, cr, mb, mr)
ON CONFLICT (hour, node, workload, tenant, tenant_method, feature) DO UPDATE SET
    zone = CASE WHEN EXCLUDED.zone = '' THEN c.zone ELSE EXCLUDED.zone END,
    cpu_usage_us = c.cpu_usage_us + EXCLUDED.cpu_usage_us, cpu_request_us = c.cpu_request_us + EXCLUDED.cpu_request_us,
    memory_byte_s = c.memory_byte_s + EXCLUDED.memory_byte_s,
    memory_request_byte_s = c.memory_request_byte_s + EXCLUDED.memory_request_byte_s
"""

MERGE_CAPACITY = """
INSERT INTO node_capacity_hourly AS c (hour, node, zone, cpu_us, memory_byte_s)
SELECT to_timestamp(h::bigint / 1000000), n, z, cu, mb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS x(h, n, z, cu, mb)
ON CONFLICT (hour, node) DO UPDATE SET
    zone = CASE WHEN EXCLUDED.zone = '' THEN c.zone ELSE EXCLUDED.zone END,
    cpu_us = c.cpu_us + EXCLUDED.cpu_us, memory_byte_s = c.memory_byte_s + EXCLUDED.memory_byte_s
"""

_RECORD_IDS = """
WITH ins AS (
    INSERT INTO applied_batches (batch_id, node, seq, records)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::integer[])
    ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id
) SELECT coalesce(array_agg(batch_id), '{}') FROM ins
"""

_MINUTE_US = 60_000_000


@dataclass(frozen=True, slots=True)
class AiCost:
    """The priced cost of one AI call record, handed to the runaway-cost detector after the commit."""

    at_us: int
    tenant: str
    feature: str
    agent: str
    cost_micros: int
    requests: int = 0


#: Called inside the apply transaction with the group's priced AI calls (the runaway-cost detector's feed).
SpendHook = Callable[[asyncpg.Connection, list[AiCost]], Awaitable[None]]


@dataclass(slots=True)
class Applied:
    """What one group did: which batches were new, how many records they held, and the AI costs they carried."""

    fresh: set[str]
    duplicates: int
    records: int
    ai_costs: list[AiCost]


def ai_rows(records: Sequence[ObservedCall], prices: PriceTable) -> tuple[list[tuple], list[AiCost]]:
    """Price the records that carry tokens (few of them): rows for ``staging_ai`` and costs for the detector."""
    rows: list[tuple] = []
    costs: list[AiCost] = []
    for r in records:
        if not (r.tokens_in or r.tokens_out or r.tokens_cached or r.tokens_reasoning):
            continue
        cost = prices.cost_micros(r.provider, r.model, r.tokens_in, r.tokens_out, r.tokens_cached, r.tokens_reasoning)
        minute = r.window_start_us - r.window_start_us % _MINUTE_US
        rows.append(
            (
                minute,
                r.tenant,
                r.tenant_method,
                r.feature,
                r.agent,
                r.src_workload,
                r.dst,
                r.provider,
                r.model,
                r.requests,
                r.tokens_in,
                r.tokens_out,
                r.tokens_cached,
                r.tokens_reasoning,
                cost,
            )
        )
        costs.append(AiCost(r.window_start_us, r.tenant, r.feature, r.agent, cost, r.requests))
    return rows, costs


async def prepare(conn: asyncpg.Connection) -> None:
    """Create this connection's staging tables (temporary: private to the session, emptied at each commit)."""
    await conn.execute(CREATE_STAGING)


def fold(batches: Sequence[CallBatch]) -> Folder:
    """The records of ``batches`` summed per (minute, key) into ``staging_agg`` rows (``AGG_COLUMNS``).

    Records of one key and minute arrive from many nodes, batches and windows; folding them here sends PostgreSQL a
    fraction of the rows to copy and aggregate. A batch that still holds its payload (``fold.BatchRef``) is folded
    straight from the msgpack bytes in C (``costmesh.native.fold``); decoded records are folded into the same rows.
    """
    folder = Folder()
    for b in batches:
        payload = getattr(b, "payload", None)
        if payload is None or folder.add(payload) is None:
            folder.add_records(b.records)
    return folder


def staging_rows(batches: Sequence[CallBatch]) -> list[tuple]:
    """``fold(batches)`` as tuples, in order of first appearance."""
    return fold(batches).rows()


def staging_copy(batches: Sequence[CallBatch]) -> bytes:
    """``fold(batches)`` as binary COPY data for ``staging_agg`` (``b""`` when there is nothing to copy)."""
    return fold(batches).copy_data()


async def apply_batches(
    conn: asyncpg.Connection,
    batches: Sequence[CallBatch],
    prices: PriceTable,
    prepared: bytes | None = None,
    spend: SpendHook | None = None,
) -> Applied:
    """Apply a group of batches in one transaction; batches applied before (or repeated in the group) change nothing.

    ``prepared`` may hold ``staging_copy(batches)``, built ahead of time; it is used only when every batch turns out
    new and none is repeated in the group (otherwise the rows are folded again from the new batches alone).
    ``batches`` may also be ``fold.BatchRef``s (identity and size known, records decoded only when needed). The
    connection must have been ``prepare``d. ``spend`` receives the priced AI calls in the same transaction.
    Raises what asyncpg raises; on any error nothing was written.
    """
    unique: dict[str, CallBatch] = {}
    for b in sorted(batches, key=lambda b: b.batch_id):  # one lock order for every replica: no deadlock on ids
        unique.setdefault(b.batch_id, b)
    async with conn.transaction():
        fresh_ids = await conn.fetchval(
            _RECORD_IDS,
            list(unique),
            [b.node for b in unique.values()],
            [b.seq for b in unique.values()],
            [_count(b) for b in unique.values()],
        )
        fresh = set(fresh_ids)
        ai: list[tuple] = []
        costs: list[AiCost] = []
        new = [b for batch_id, b in unique.items() if batch_id in fresh]
        records = sum(_count(b) for b in new)
        data = prepared if prepared is not None and len(new) == len(batches) else staging_copy(new)
        for b in new:
            flag = getattr(b, "has_tokens", None)  # known without decoding for a BatchRef
            if flag if flag is not None else _has_tokens(b.records):
                more_rows, more_costs = ai_rows(b.records, prices)
                ai.extend(more_rows)
                costs.extend(more_costs)
        if data:
            # a memoryview: asyncpg would take plain bytes for a file path
            await conn.copy_to_table("staging_agg", source=memoryview(data), columns=AGG_COLUMNS, format="binary")
            await conn.execute(MERGE_ALL)
        if ai:
            await conn.executemany(
                "INSERT INTO staging_ai VALUES (to_timestamp($1::bigint / 1000000), $2, $3, $4, $5, $6, $7, $8, $9, "
                "$10, $11, $12, $13, $14, $15)",
                ai,
            )
            await conn.execute(MERGE_AI)
            if spend is not None:
                await spend(conn, costs)
        await _apply_compute(conn, new)
    return Applied(fresh=fresh, duplicates=len(batches) - len(fresh), records=records, ai_costs=costs)


async def _apply_compute(conn: asyncpg.Connection, new: Sequence[CallBatch]) -> None:
    """The new batches' compute samples and node capacity, summed per hour, added to the hourly tables."""
    with_compute = [b for b in new if getattr(b, "has_compute", True) and (b.compute or b.capacity)]
    if not with_compute:
        return
    uses, caps = hourly_compute(
        [s for b in with_compute for s in b.compute], [c for b in with_compute for c in b.capacity]
    )
    if uses:
        columns = [
            [u.start_us for u in uses], [u.node for u in uses], [u.workload for u in uses], [u.tenant for u in uses],
            [u.tenant_method for u in uses], [u.feature for u in uses], [u.zone for u in uses],
            [u.cpu_usage_us for u in uses], [u.cpu_request_us for u in uses], [u.memory_byte_s for u in uses],
            [u.memory_request_byte_s for u in uses],
        ]  # fmt: skip
        await conn.execute(MERGE_COMPUTE, *columns)
    if caps:
        await conn.execute(
            MERGE_CAPACITY,
            [c.start_us for c in caps],
            [c.node for c in caps],
            [c.zone for c in caps],
            [c.cpu_us for c in caps],
            [c.memory_byte_s for c in caps],
        )


def _count(batch: CallBatch) -> int:
    """Records in a batch, without decoding a ``BatchRef``'s records."""
    n = getattr(batch, "n_records", None)
    return len(batch.records) if n is None else n


_TOKEN_GETTERS = tuple(operator.attrgetter(f) for f in ("tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning"))


def _has_tokens(records: Sequence[ObservedCall]) -> bool:
    """Whether any record carries tokens; ``any`` over C-level getters keeps the common no-AI batch cheap."""
    return any(any(map(get, records)) for get in _TOKEN_GETTERS)
