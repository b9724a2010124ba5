"""Synthetic call batches with a known oracle, for the fault tests and the attributor benchmark.

Emits encoded ``CallBatch`` payloads (msgpack, as the redactor publishes them) and, alongside, the exact per-tenant
totals they carry, so a test can compare what reached PostgreSQL with what was sent. Seeded, so a failing run can be
repeated; the cardinality (tenants × workloads × destinations per minute) is that of a mid-size SaaS, which is what
decides how much the per-minute merge compacts.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from costmesh.common.schemas import CallBatch, Codec, ObservedCall

WORKLOADS = [f"svc-{i}" for i in range(10)]
DESTINATIONS = [*WORKLOADS, "orders-db:5432", "api.openai.com", "cache:6379"]


@dataclass
class Oracle:
    """Exact totals sent, per tenant: what the store must show after everything is applied once."""

    requests: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    records: int = 0
    batches: int = 0


def generate(
    n_batches: int,
    per_batch: int,
    *,
    seed: int = 1,
    tenants: int = 100,
    start_us: int = 1_767_225_600_000_000,  # 2026-01-01T00:00:00Z
    batches_per_second: int = 4,
    node: str = "synth",
    prefix: str = "b",
) -> tuple[list[tuple[str, bytes]], Oracle]:
    """``n_batches`` encoded batches of ``per_batch`` records, as (batch id, payload), and their oracle."""
    rng = random.Random(seed)
    codec = Codec()
    oracle = Oracle()
    names = [f"tenant-{i:03d}" for i in range(tenants)]
    out: list[tuple[str, bytes]] = []
    for i in range(n_batches):
        window = start_us + (i // batches_per_second) * 1_000_000
        records = []
        for _ in range(per_batch):
            tenant = rng.choice(names)
            req = rng.randint(1, 20)
            bout = rng.randint(100, 5000)
            records.append(
                ObservedCall(
                    window_start_us=window,
                    window_end_us=window + 1_000_000,
                    node=node,
                    src_workload=rng.choice(WORKLOADS),
                    dst=rng.choice(DESTINATIONS),
                    protocol="http",
                    tenant=tenant,
                    tenant_method="header",
                    requests=req,
                    bytes_out=bout,
                    bytes_in=bout // 2,
                    busy_us=req * 150,
                )
            )
            oracle.requests[tenant] += req
            oracle.bytes_out[tenant] += bout
        batch_id = f"{prefix}-{seed}-{i}"
        out.append((batch_id, codec.encode(CallBatch(batch_id=batch_id, node=node, seq=i, records=records))))
        oracle.records += per_batch
        oracle.batches += 1
    return out, oracle
