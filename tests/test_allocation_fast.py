"""The vectorised allocation path gives the row engine's answer: ``split_rows`` equals ``largest_remainder`` row by
row (int64 and the Python-integer fallback), and a random bill allocated both ways gives the same rows."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from costmesh.billing.allocate import Allocator
from costmesh.billing.fast import allocate_columns, read_focus_columns, split_rows, to_allocations
from costmesh.billing.focus import read_focus
from costmesh.billing.mapping import Mapper
from costmesh.billing.model import Usage
from costmesh.common.config import ResourceMapping
from costmesh.common.money import largest_remainder


@settings(max_examples=200, deadline=None)
@given(
    units=st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=20),
    weights=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
    huge=st.booleans(),
)
def test_split_rows_is_largest_remainder_per_row(units, weights, huge):
    if sum(weights) == 0:
        weights[0] = 1
    if huge:  # forces the Python-integer path
        weights = [w * 10**12 for w in weights]
    got = split_rows(np.array(units, dtype=np.int64), weights)
    for row, total in zip(got.tolist(), units, strict=True):
        assert row == largest_remainder(total, weights)


HEADER = ["BilledCost", "BillingCurrency", "BillingPeriodStart", "ChargePeriodStart", "ChargePeriodEnd", "ResourceId",
          "ServiceName", "x_UsageType", "Tags"]  # fmt: skip


def _bill(rng: random.Random, n: int) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for _ in range(n):
        hour = rng.randrange(6)
        amount = Decimal(rng.randrange(-(10**6), 10**8)).scaleb(-6) if rng.random() > 0.05 else Decimal(0)
        tags = json.dumps({"customer": rng.choice(["acme", "hooli"])}) if rng.random() < 0.1 else "NULL"
        rid = rng.choice(["db-1", "db-2", "topic-1", "i-0node", "nat-1", "unknown-1"])
        usage_type = "USE1-NatGateway-Bytes" if rid == "nat-1" else "Usage"
        w.writerow([str(amount), "USD", "2024-09-01 00:00:00", f"2024-09-01 {hour:02d}:00:00",
                    f"2024-09-01 {hour + 1:02d}:00:00", rid, "svc", usage_type, tags])  # fmt: skip
    return out.getvalue().encode()


def _usage(rng: random.Random) -> list[Usage]:
    base = 1725148800_000000  # 2024-09-01T00:00Z
    rows = []
    for _ in range(120):
        start = base + rng.randrange(6 * 60) * 60_000_000
        tenant = rng.choice(["", "acme", "globex", "initech"])
        rows.append(
            Usage(
                src_workload=rng.choice(["lb", "api", "worker", "cron"]),
                dst=rng.choice(["db-1", "db-2", "topic-1", "api", "worker", "stripe.com"]),
                tenant=tenant,
                tenant_method=rng.choice(["header", "trace"]) if tenant else rng.choice(["unallocated", "platform"]),
                start_us=start,
                end_us=start + 60_000_000,
                requests=rng.randrange(0, 50),
                busy_us=rng.randrange(0, 5000),
                bytes_out=rng.randrange(0, 10**6),
            )
        )
    return rows


def test_random_bill_same_rows_both_ways(tmp_path):
    seed = random.randrange(2**32)
    print("seed", seed)
    rng = random.Random(seed)
    data = _bill(rng, 600)
    usage = _usage(rng)
    rules = [
        ResourceMapping(resource="db-1", kind="database", match="^db-1$"),
        ResourceMapping(resource="db-2", kind="database", match="^db-2$"),
        ResourceMapping(resource="topic-1", kind="queue", match="^topic-1$"),
        ResourceMapping(resource="node", kind="compute", match="^i-0node$", endpoints=["api", "worker"]),
    ]
    mapper = Mapper(rules, {u.dst for u in usage} | {u.src_workload for u in usage})
    kwargs = {"background": {"cron"}, "internal": {"lb", "api", "worker", "cron", "db-1", "db-2", "topic-1"}}
    rows = read_focus("bill.csv", data=data)
    targets, _ = mapper.map_all(rows.lines)
    expected = Allocator(usage, **kwargs).allocate_all(rows.lines, targets)
    cols = read_focus_columns("bill.csv", data=data)
    assert cols.scale == 6 and len(cols) == len(rows.lines)
    result = allocate_columns(cols, usage, mapper, **kwargs)
    got = to_allocations(cols, result, [line.line_id for line in rows.lines])
    assert Counter(got) == Counter(expected)
    sums = np.zeros(len(cols), dtype=np.int64)
    np.add.at(sums, result.line, result.units.astype(np.int64))
    assert np.array_equal(sums, cols.units)


def test_columns_of_the_real_sample_match_the_row_reader():
    from .conftest import SHARED_DATA

    path = SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_1000_all-providers.csv"
    rows = read_focus(path)
    cols = read_focus_columns(path)
    assert cols.scale == 12 and len(cols) == len(rows.lines) == 1000 and cols.problems == []
    assert int(cols.units.sum()) == int(sum(line.amount for line in rows.lines).scaleb(12))
    assert cols.billing_period == ["2024-09", "2024-10"]
    assert [int(x) for x in cols.start_us[:3]] == [line.window.start_us for line in rows.lines[:3]]
    mapper = Mapper([], set())
    result = allocate_columns(cols, [], mapper, tag_keys=("business_unit",))
    got = to_allocations(cols, result, [line.line_id for line in rows.lines])
    expected = Allocator([], tag_keys=("business_unit",)).allocate_all(rows.lines, mapper.map_all(rows.lines)[0])
    assert sorted((a.line_id, a.tenant, a.method, a.amount) for a in got) == sorted(
        (a.line_id, a.tenant, a.method, a.amount) for a in expected
    )
