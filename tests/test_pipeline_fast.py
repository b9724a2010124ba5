"""``pipeline.run`` gives the same result through the vectorised path (``fast.allocate_columns``) as through the
per-line engine: the same allocation rows in the same order (so per line the same tenants, methods and amounts, summing
to the line's amount exactly), the same targets and unmatched lines. On the real FOCUS sample with a synthetic usage
set, and on hypothesis-generated lines (credits, zero amounts, mixed precisions, several currencies)."""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmesh.billing import pipeline
from costmesh.billing.fast import columns_from_lines
from costmesh.billing.focus import read_focus
from costmesh.billing.mapping import line_ids
from costmesh.billing.model import CostLine, Usage, Window
from costmesh.common.config import BillingConfig, Config, RateCard, ResourceMapping, Workload

from .conftest import SHARED_DATA

HOUR_US = 3_600_000_000
T0 = 1725148800_000000  # 2024-09-01T00:00Z


def assert_same_runs(lines, usage, config, **kwargs) -> pipeline.Run:
    fast = pipeline.run(lines, usage, config, fast=True, **kwargs)
    slow = pipeline.run(lines, usage, config, fast=False, **kwargs)
    assert fast.lines == slow.lines
    assert fast.targets == slow.targets
    assert fast.unmatched == slow.unmatched
    # row for row, in order, with the same Decimal forms (so reports print the same text)
    assert fast.allocations == slow.allocations
    assert [str(a.amount) for a in fast.allocations] == [str(a.amount) for a in slow.allocations]
    # the invariant, checked directly: every line's parts sum to its amount exactly, in its currency
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for a in fast.allocations:
        sums[a.line_id] += a.amount
    for line in fast.lines:
        assert sums[line.line_id] == line.amount, line.line_id
        assert all(a.currency == line.currency for a in fast.allocations if a.line_id == line.line_id)
    return fast


def _sample_usage(lines: list[CostLine], seed: int) -> tuple[list[Usage], list[ResourceMapping]]:
    """Consumption of a third of the sample's resources (by their ARN tail, as observed names) over the month: tagged
    calls, untagged calls through a gateway (propagated), background work (platform), hourly and daily rows."""
    rng = random.Random(seed)
    chosen = rng.sample([x for x in lines if x.resource_id], 400)
    observed = sorted({line_ids(x)[-1] for x in chosen})
    tenants = ["acme", "globex", "initech", "hooli", "umbrella"]
    usage: list[Usage] = []
    for line in chosen:  # rows over the line's hour, or the 6 hours or the day around it
        for _ in range(rng.randrange(1, 7)):
            hours = rng.choice([1, 1, 6, 24])
            start = T0 + (line.window.start_us - T0) // (hours * HOUR_US) * hours * HOUR_US
            kind = rng.random()
            src, tenant, method = (
                ("api", rng.choice(tenants), rng.choice(["header", "jwt", "trace"]))
                if kind < 0.6
                else ("gateway", "", "unallocated")
                if kind < 0.85
                else ("cron", "", rng.choice(["unallocated", "platform"]))
            )
            usage.append(Usage(src_workload=src, dst=line_ids(line)[-1], tenant=tenant, tenant_method=method,
                               start_us=start, end_us=start + hours * HOUR_US, requests=rng.randrange(0, 40),
                               busy_us=rng.randrange(0, 3) * rng.randrange(1, 10**6),
                               bytes_out=rng.randrange(0, 10**7)))  # fmt: skip
    for day in range(30):  # the gateway's inbound mix, per day
        for tenant in rng.sample(tenants, 3):
            start = T0 + day * 24 * HOUR_US
            usage.append(
                Usage(
                    src_workload="lb",
                    dst="gateway",
                    tenant=tenant,
                    tenant_method="header",
                    start_us=start,
                    end_us=start + 24 * HOUR_US,
                    requests=rng.randrange(1, 100),
                )
            )
    rules = [
        ResourceMapping(resource="nat", kind="nat_gateway", usage_type="NatGateway"),
        ResourceMapping(resource=observed[0], kind="database", match=f"{observed[0]}$"),
    ]
    return usage, rules


def test_real_focus_sample_same_allocations_both_ways():
    seed = random.randrange(2**32)
    print("seed", seed)
    lines = read_focus(SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_aws.csv").lines
    assert len(lines) == 942
    usage, rules = _sample_usage(lines, seed)
    workloads = [Workload(address="10.0.0.9", name="cron", background=True, zone="a"),
                 Workload(address="10.0.0.8", name="api", zone="b")]  # fmt: skip
    config = Config(workloads=workloads, resources=rules)
    run = assert_same_runs(lines, usage, config)
    methods = {a.method for a in run.allocations}
    assert {"direct", "propagated", "platform", "unallocated"} <= methods, methods
    assert len({a.tenant for a in run.allocations}) > 3
    # the bill's own tags as the signal, with a rate card line (per-line engine) alongside
    tagged = Config(
        workloads=workloads,
        resources=rules,
        billing=BillingConfig(
            tag_keys=["business_unit"], rate_cards=[RateCard(resource="api", price_per_hour="0.0123", kind="compute")]
        ),
    )
    run = assert_same_runs(lines, usage, tagged)
    assert any(a.basis == "tag:business_unit" for a in run.allocations)
    assert len(run.lines) == len(lines) + 1


def test_columns_from_lines_groups_descriptors_and_tags():
    lines = read_focus(SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_aws.csv").lines
    cols = columns_from_lines(lines)
    assert len(cols) == len(lines) and cols.scale == 10 and cols.currency == "USD"
    assert cols.line_scale is not None
    for i in range(0, len(lines), 37):
        line, d = lines[i], cols.descriptors[int(cols.desc[i])]
        assert (d.resource_id, d.resource_name, d.resource_type, d.usage_type, d.service) == (
            line.resource_id, line.resource_name, line.resource_type, line.usage_type, line.service)  # fmt: skip
        assert Decimal(int(cols.units[i])).scaleb(-int(cols.line_scale[i])) == line.amount
        assert (int(cols.start_us[i]), int(cols.end_us[i])) == (line.window.start_us, line.window.end_us)
    assert len(cols.descriptors) < len(lines) and len(cols.tag_texts) < len(lines)


_AMOUNTS = st.one_of(
    st.just(Decimal(0)),
    st.just(Decimal("0.00")),
    st.decimals(min_value=-1000, max_value=10**6, places=2),
    st.decimals(min_value=-1000, max_value=10**6, places=6),
    st.decimals(min_value=-1, max_value=10, places=11),
    st.integers(-(10**15), 10**15).map(Decimal),  # whole amounts; at micro-units beyond int64 for the largest
)
_RESOURCES = ["db-1", "arn:aws:sqs:us-east-1:1:topic-1", "i-0node", "nat-1", "unknown-1", ""]


@st.composite
def _lines(draw) -> list[CostLine]:
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        hour = draw(st.integers(0, 5))
        length = draw(st.sampled_from([1, 1, 2]))
        rid = draw(st.sampled_from(_RESOURCES))
        tags = draw(st.sampled_from([{}, {}, {"customer": "acme"}, {"Customer": "hooli", "team": "x"}, {"team": "y"}]))
        out.append(
            CostLine(
                line_id=f"l{i}",
                source="focus",
                billing_period="2024-09",
                window=Window(T0 + hour * HOUR_US, T0 + (hour + length) * HOUR_US),
                amount=draw(_AMOUNTS),
                currency=draw(st.sampled_from(["USD", "USD", "EUR"])),
                resource_id=rid,
                service=draw(st.sampled_from(["Amazon RDS", "Amazon SQS", "svc"])),
                usage_type="USE1-NatGateway-Bytes" if rid == "nat-1" else "Usage",
                charge_category=draw(st.sampled_from(["Usage", "Credit"])),
                tags=tags,
            )
        )
    return out


def _random_usage(seed: int) -> list[Usage]:
    rng = random.Random(seed)
    rows = []
    for _ in range(80):
        start = T0 + rng.randrange(6 * 60) * 60_000_000
        tenant = rng.choice(["", "acme", "globex", "initech"])
        rows.append(
            Usage(
                src_workload=rng.choice(["lb", "api", "worker", "cron"]),
                dst=rng.choice(["db-1", "topic-1", "api", "worker", "stripe.com", "node"]),
                tenant=tenant,
                tenant_method=rng.choice(["header", "trace"]) if tenant else rng.choice(["unallocated", "platform"]),
                start_us=start,
                end_us=start + rng.choice([60_000_000, HOUR_US]),
                requests=rng.randrange(0, 50),
                busy_us=rng.randrange(0, 5000),
                bytes_out=rng.randrange(0, 10**6),
            )
        )
    return rows


_CONFIG = Config(
    workloads=[Workload(address="10.0.0.9", name="cron", background=True)],
    resources=[
        ResourceMapping(resource="db-1", kind="database", match="^db-1$"),
        ResourceMapping(resource="node", kind="compute", match="^i-0node$", endpoints=["api", "worker"]),
    ],
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_lines(), seed=st.integers(0, 2**32 - 1))
def test_generated_lines_same_allocations_both_ways(lines, seed):
    assert_same_runs(lines, _random_usage(seed), _CONFIG)


def test_threshold_chooses_the_vectorised_path(monkeypatch):
    calls = []
    real = pipeline.allocate_columns
    monkeypatch.setattr(pipeline, "allocate_columns", lambda *a, **k: calls.append(1) or real(*a, **k))
    line = CostLine(line_id="x", source="focus", billing_period="2024-09", window=Window(T0, T0 + HOUR_US),
                    amount=Decimal("1.5"), currency="USD")  # fmt: skip
    monkeypatch.setattr(pipeline, "FAST_PATH_MIN_LINES", 2)
    pipeline.run([line], [], Config())
    assert calls == []
    many = [CostLine(line_id=str(i), source="focus", billing_period="2024-09", window=Window(T0, T0 + HOUR_US),
                     amount=Decimal("1.5"), currency="USD") for i in range(2)]  # fmt: skip
    run = pipeline.run(many, [], Config())
    assert calls == [1] and [a.amount for a in run.allocations] == [Decimal("1.5")] * 2
