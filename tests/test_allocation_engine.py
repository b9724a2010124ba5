"""The allocation engine: the consumption metric per resource kind, the tenant methods and categories, and the
invariant that every cost line's allocations sum to its amount exactly (property-tested, credits included)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from costmesh.billing.allocate import Allocator, Target, split
from costmesh.billing.model import CATEGORIES, CostLine, Usage, Window
from costmesh.common.money import largest_remainder
from costmesh.common.prices import ModelPrice, PriceTable

HOUR = 3_600_000_000
W = Window(0, HOUR)


def line(amount: str | Decimal, line_id: str = "l1", tags: dict[str, str] | None = None) -> CostLine:
    return CostLine(
        line_id=line_id,
        source="t",
        billing_period="1970-01",
        window=W,
        amount=Decimal(amount),
        currency="USD",
        tags=tags or {},
    )


def use(src: str, dst: str, tenant: str = "", method: str = "", **kw) -> Usage:
    return Usage(
        src_workload=src,
        dst=dst,
        tenant=tenant,
        tenant_method=method or ("header" if tenant else "unallocated"),
        start_us=0,
        end_us=60_000_000,
        **kw,
    )


def by_tenant(allocs) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    for a in allocs:
        out[(a.tenant, a.method)] = out.get((a.tenant, a.method), Decimal(0)) + a.amount
    return out


#: Model "m" at 2 µ$ per input token and 8 µ$ per output token (micro-dollars per million tokens).
PRICES = PriceTable({("openai", "m"): ModelPrice(2_000_000, 8_000_000)})


DB = Target("orders-db", "database", frozenset({"orders-db:5432"}))


def test_database_by_server_time_direct():
    usage = [
        use("api", "orders-db:5432", "acme", busy_us=3000, requests=1),
        use("api", "orders-db:5432", "globex", busy_us=1000, requests=100),
    ]
    allocs = Allocator(usage).allocate(line("10.00"), DB)
    assert by_tenant(allocs) == {("acme", "direct"): Decimal("7.5"), ("globex", "direct"): Decimal("2.5")}
    assert {a.basis for a in allocs} == {"busy_us"} and {a.resource for a in allocs} == {"orders-db"}


def test_database_falls_back_to_queries():
    usage = [use("api", "orders-db", "acme", requests=1), use("api", "orders-db", "globex", requests=3)]
    allocs = Allocator(usage).allocate(line("4"), DB)
    assert by_tenant(allocs) == {("acme", "direct"): 1, ("globex", "direct"): 3}
    assert allocs[0].basis == "requests"


def test_propagated_through_the_graph_and_platform_and_unallocated():
    usage = [
        # the gateway sees tenants on inbound calls: acme 3, globex 1
        use("lb", "api", "acme", requests=3),
        use("lb", "api", "globex", requests=1),
        # api → worker untagged; worker → db untagged: the mix travels two hops
        use("api", "worker", requests=10),
        use("worker", "orders-db", busy_us=800),
        # trace-joined work, background work, and an unknown caller
        use("batch", "orders-db", "initech", "trace", busy_us=100),
        use("cron", "orders-db", busy_us=50),
        use("ghost", "orders-db", busy_us=50),
    ]
    allocs = Allocator(usage, background={"cron"}).allocate(line("10"), DB)
    assert by_tenant(allocs) == {
        ("acme", "propagated"): Decimal("6"),
        ("globex", "propagated"): Decimal("2"),
        ("initech", "trace"): Decimal("1"),
        ("", "platform"): Decimal("0.5"),
        ("", "unallocated"): Decimal("0.5"),
    }
    assert {a.method for a in allocs} <= set(CATEGORIES)


def test_cycles_do_not_loop():
    usage = [
        use("lb", "a", "acme", requests=1),
        use("a", "b", requests=1),
        use("b", "a", requests=1),
        use("b", "orders-db", busy_us=10),
    ]
    allocs = Allocator(usage).allocate(line("1"), DB)
    assert by_tenant(allocs) == {("acme", "propagated"): Decimal("1")}


def test_kinds_use_their_metric():
    zones = {"api": "az1", "db": "az2", "worker": "az1"}
    usage = [
        use("api", "orders-topic", "acme", bytes_out=900, requests=1),
        use("worker", "orders-topic", "globex", bytes_in=100, requests=9),
        use("api", "api.stripe.com", "acme", bytes_out=10, bytes_in=10),
        use("worker", "db", "globex", bytes_out=30, bytes_in=10),
        use("api", "worker", "acme", bytes_out=1000),  # same zone: no cross-AZ cost
        use("api", "api.openai.com", "acme", provider="openai", model="m", tokens_in=100, tokens_out=10),
        use("worker", "api.openai.com", "globex", provider="openai", model="m", tokens_in=10, tokens_out=100),
    ]
    alloc = Allocator(usage, zones=zones, prices=PRICES)
    queue = alloc.allocate(line("10"), Target("orders-topic", "queue"))
    assert by_tenant(queue) == {("acme", "direct"): 9, ("globex", "direct"): 1}
    cross = alloc.allocate(line("8"), Target("cross-az", "cross_az"))
    assert by_tenant(cross) == {("globex", "direct"): 8}
    ai = alloc.allocate(line("1.000000"), Target("openai", "ai_api", frozenset({"api.openai.com"})))
    # acme 100*2+10*8 = 280, globex 10*2+100*8 = 820
    assert by_tenant(ai) == {("acme", "direct"): Decimal("0.254545"), ("globex", "direct"): Decimal("0.745455")}
    assert {a.basis for a in ai} == {"tokens_cost"}


def test_nat_counts_only_external_destinations():
    usage = [
        use("api", "api.stripe.com", "acme", bytes_out=30, bytes_in=10),
        use("worker", "s3.amazonaws.com", "globex", bytes_in=60),
        use("api", "worker", "acme", bytes_out=10_000),
        use("api", "orders-topic", "acme", bytes_out=10_000),
        use("api", "10.0.3.4:5432", "acme", bytes_out=10_000),
    ]
    assert Allocator(usage).is_external("8.8.8.8:53") and not Allocator(usage).is_external("[::1]")
    alloc = Allocator(usage, internal={"api", "worker", "orders-topic"})
    nat = alloc.allocate(line("10"), Target("nat-1", "nat_gateway"))
    assert by_tenant(nat) == {("acme", "direct"): 4, ("globex", "direct"): 6}


def test_tag_on_the_line_wins_and_unmatched_and_unobserved_are_unallocated():
    alloc = Allocator([use("api", "orders-db", "acme", busy_us=1)])
    tagged = alloc.allocate(line("5", tags={"Customer": "globex"}), DB)
    assert [(a.tenant, a.method, a.basis, a.amount) for a in tagged] == [("globex", "direct", "tag:customer", 5)]
    assert [(a.method, a.basis) for a in alloc.allocate(line("5"), None)] == [("unallocated", "unmatched")]
    other = Target("other-db", "database")
    assert [(a.method, a.basis) for a in alloc.allocate(line("5"), other)] == [("unallocated", "no requests observed")]


def test_consumption_outside_the_window_does_not_count():
    late = Usage(src_workload="api", dst="orders-db", tenant="late", tenant_method="header", busy_us=5)
    late = Usage(**{**{f: getattr(late, f) for f in late.__struct_fields__}, "start_us": HOUR, "end_us": HOUR + 60})
    usage = [use("api", "orders-db", "acme", busy_us=1), late]
    assert by_tenant(Allocator(usage).allocate(line("3"), DB)) == {("acme", "direct"): 3}


def test_rounding_is_largest_remainder_and_deterministic():
    shares = {("a", "", "", "direct"): 1, ("b", "", "", "direct"): 1, ("c", "", "", "direct"): 1}
    allocs = split(line("0.01"), shares, "requests")
    # 0.01 at micro scale = 10000 units over 3: 3334, 3333, 3333 (the earliest key gets the extra unit)
    assert [(a.tenant, a.amount) for a in allocs] == [
        ("a", Decimal("0.003334")),
        ("b", Decimal("0.003333")),
        ("c", Decimal("0.003333")),
    ]
    assert split(line("0.01"), dict(reversed(list(shares.items()))), "requests") == allocs
    assert largest_remainder(-7, [1, 1]) == [-4, -3]
    assert largest_remainder(0, [5, 0]) == [0, 0]


# ---- property tests -------------------------------------------------------------------------------------------

amounts = st.decimals(
    min_value=Decimal("-1000000"), max_value=Decimal("1000000"), places=11, allow_nan=False, allow_infinity=False
)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(-(10**15), 10**15), weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=50))
def test_largest_remainder_sums_exactly_and_is_fair(total, weights):
    if sum(weights) == 0:
        weights = [*weights[:-1], 1]
    parts = largest_remainder(total, weights)
    assert sum(parts) == total
    wsum = sum(weights)
    for w, p in zip(weights, parts, strict=True):
        exact = Fraction(total * w, wsum)
        assert abs(p - exact) < 1  # never more than one unit from the exact share
        if w == 0:
            assert p == 0


tenants = st.sampled_from(["", "acme", "globex", "initech", "umbrella"] + [f"t{i}" for i in range(40)])
methods = st.sampled_from(["header", "jwt", "trace", "propagated", "platform", "unallocated"])
workloads = st.sampled_from(["lb", "api", "worker", "cron", "orders-db", "ghost"])
usage_rows = st.builds(
    lambda src, dst, tenant, method, busy, req, bin_, bout: use(
        src,
        dst,
        tenant,
        method if tenant or method in ("platform", "unallocated") else "unallocated",
        busy_us=busy,
        requests=req,
        bytes_in=bin_,
        bytes_out=bout,
    ),
    workloads,
    workloads,
    tenants,
    methods,
    st.integers(0, 10**6),
    st.integers(0, 1000),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
kinds = st.sampled_from(["database", "queue", "nat_gateway", "cross_az", "compute", "storage", "other"])


@settings(max_examples=300, deadline=None)
@given(amount=amounts, usage=st.lists(usage_rows, max_size=30), kind=kinds)
def test_every_line_sums_to_its_amount_exactly(amount, usage, kind):
    zones = {"lb": "a", "api": "a", "worker": "b", "orders-db": "c"}
    alloc = Allocator(usage, background={"cron"}, zones=zones)
    target = Target("orders-db", kind)
    allocs = alloc.allocate(line(amount), target)
    assert sum((a.amount for a in allocs), Decimal(0)) == amount
    assert all(a.method in CATEGORIES for a in allocs)
    assert all(a.amount == 0 or (a.amount < 0) == (amount < 0) for a in allocs)  # credits stay credits
    assert Allocator(list(reversed(usage)), background={"cron"}, zones=zones).allocate(line(amount), target) == allocs


@settings(max_examples=100, deadline=None)
@given(amount=amounts, n=st.integers(1, 1000), seed=st.integers(0, 2**32))
def test_many_tenants_sum_exactly(amount, n, seed):
    import random

    rng = random.Random(seed)
    shares = {(f"t{i:04d}", "", "", "direct"): rng.choice([0, 1, rng.randrange(1, 10**12)]) for i in range(n)}
    allocs = split(line(amount), shares, "requests")
    assert sum((a.amount for a in allocs), Decimal(0)) == amount
    assert {a.tenant for a in allocs} <= {k[0] for k, v in shares.items() if v} | {""}


def test_cyclic_mixes_do_not_depend_on_query_order():
    usage = [
        use("lb", "a", "acme", requests=1),
        use("lb", "b", "globex", requests=1),
        use("a", "b", requests=1),
        use("b", "a", requests=3),
        use("a", "orders-db", busy_us=10),
        use("b", "other-db", busy_us=10),
    ]
    first, second = line("1", "l1"), line("1", "l2")
    db2 = Target("other-db", "database")
    one = Allocator(usage)
    forward = one.allocate(first, DB) + one.allocate(second, db2)
    two = Allocator(usage)
    backward = two.allocate(second, db2)
    backward = two.allocate(first, DB) + backward
    assert forward == backward
    # The cycle solved: T_a = 1/4 acme + 3/4 T_b and T_b = 1/2 globex + 1/2 T_a, so T_a = 2/5 acme + 3/5 globex
    # (and T_b = 1/5 acme + 4/5 globex). Cutting the cycle instead would have given a 1/4 acme, 3/4 globex.
    assert by_tenant(forward[:2]) == {
        ("acme", "propagated"): Decimal("0.4"),
        ("globex", "propagated"): Decimal("0.6"),
    }
    assert by_tenant(forward[2:]) == {
        ("acme", "propagated"): Decimal("0.2"),
        ("globex", "propagated"): Decimal("0.8"),
    }


WORKLOADS = ["a", "b", "c", "d"]


@settings(max_examples=150, deadline=None)
@given(
    tagged=st.lists(st.tuples(st.sampled_from(WORKLOADS), st.sampled_from(["acme", "globex"]), st.integers(1, 9))),
    untagged=st.lists(st.tuples(st.sampled_from(WORKLOADS), st.sampled_from(WORKLOADS), st.integers(1, 9))),
)
def test_propagated_mixes_solve_the_graph_with_cycles(tagged, untagged):
    """Every mix sums to 1 and is the fixed point T_w = D_w + sum a(src→w) T_src, also through cycles and self-calls."""
    usage = [use("lb", dst, tenant, requests=n) for dst, tenant, n in tagged]
    usage += [use(src, dst, requests=n) for src, dst, n in untagged]
    alloc = Allocator(usage)
    window = line("1").window
    mixes = alloc.window_mixes(window)

    def tenant_share(mix):
        out: dict[str, Fraction] = {}
        for (tenant, _f, _a, _m), share in mix.items():
            out[tenant] = out.get(tenant, Fraction(0)) + share
        return out

    for w, mix in mixes.items():
        assert sum(mix.values()) == 1
        inbound = [(u.src_workload, u.tenant, u.requests) for u in usage if u.dst == w]
        known = [(s, t, n) for s, t, n in inbound if t or s in mixes]
        total = sum(n for _s, _t, n in known)
        expected: dict[str, Fraction] = {}
        for src, tenant, n in known:
            parts = {tenant: Fraction(1)} if tenant else tenant_share(mixes[src])
            for t, share in parts.items():
                expected[t] = expected.get(t, Fraction(0)) + share * n / total
        assert tenant_share(mix) == expected
    tagged_into = {dst for dst, _t, _n in tagged}
    assert set(mixes) >= tagged_into
