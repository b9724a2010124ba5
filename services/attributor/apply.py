"""Applying one batch to the consumption store, exactly once in effect.

The batch id is inserted into ``applied_batches`` in the same transaction as the batch's rows; a batch seen again
(JetStream redelivery, a re-sent duplicate past the de-duplication window) finds its id there and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from costmesh.common.schemas import CallBatch, ObservedCall

_MINUTE_US = 60_000_000

_UPSERT = """
INSERT INTO consumption_minute AS c (minute, tenant, tenant_method, feature, agent, src_workload, dst, protocol,
    requests, errors, bytes_in, bytes_out, busy_us, tokens_in, tokens_out, tokens_cached, tokens_reasoning)
VALUES (to_timestamp($1::bigint / 1000000.0), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT (minute, tenant, tenant_method, feature, agent, src_workload, dst, protocol) DO UPDATE SET
    requests = c.requests + EXCLUDED.requests, errors = c.errors + EXCLUDED.errors,
    bytes_in = c.bytes_in + EXCLUDED.bytes_in, bytes_out = c.bytes_out + EXCLUDED.bytes_out,
    busy_us = c.busy_us + EXCLUDED.busy_us, tokens_in = c.tokens_in + EXCLUDED.tokens_in,
    tokens_out = c.tokens_out + EXCLUDED.tokens_out, tokens_cached = c.tokens_cached + EXCLUDED.tokens_cached,
    tokens_reasoning = c.tokens_reasoning + EXCLUDED.tokens_reasoning
"""


def per_minute(records: Iterable[ObservedCall]) -> list[tuple]:
    """Sum records into per-minute rows keyed like ``consumption_minute``'s primary key."""
    acc: dict[tuple, list[int]] = {}
    for r in records:
        key = (
            r.window_start_us - r.window_start_us % _MINUTE_US,
            r.tenant,
            r.tenant_method,
            r.feature,
            r.agent,
            r.src_workload,
            r.dst,
            r.protocol,
        )
        s = acc.get(key)
        if s is None:
            s = acc[key] = [0] * 9
        s[0] += r.requests
        s[1] += r.errors
        s[2] += r.bytes_in
        s[3] += r.bytes_out
        s[4] += r.busy_us
        s[5] += r.tokens_in
        s[6] += r.tokens_out
        s[7] += r.tokens_cached
        s[8] += r.tokens_reasoning
    return [(*k, *v) for k, v in sorted(acc.items())]


async def apply_batch(conn: asyncpg.Connection, batch: CallBatch) -> bool:
    """Apply a batch in one transaction; returns False when it had been applied before (nothing changes)."""
    async with conn.transaction():
        fresh = await conn.fetchval(
            "INSERT INTO applied_batches (batch_id, node, seq, records) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING true",
            batch.batch_id,
            batch.node,
            batch.seq,
            len(batch.records),
        )
        if not fresh:
            return False
        rows = per_minute(batch.records)
        if rows:
            await conn.executemany(_UPSERT, rows)
        return True
