"""The solver's weights and queue shapes: inbound mixes weigh by the server time the calls drove (requests when a
call did not measure it), queues behind an HTTP API pass their producers' mix (tenant, feature, agent) to the worker
that polls them, and the integer weights billing splits by are the exact shares' proportions."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from costmesh.billing.model import CostLine, Window
from costmesh.billing.pipeline import run
from costmesh.common.attribution import attribute, inbound_mixes, solve, weights
from costmesh.common.config import Config, ResourceMapping
from costmesh.common.schemas import ObservedCall
from costmesh.common.usage import QueueUse, Usage, hourly_from_records


def use(src: str, dst: str, requests: int, tenant: str = "", busy_us: int = 0, **kw) -> Usage:
    return Usage(src_workload=src, dst=dst, tenant=tenant, tenant_method="header" if tenant else "unallocated",
                 requests=requests, busy_us=busy_us, protocol=kw.pop("protocol", "http"), **kw)  # fmt: skip


def tenants(mix: dict) -> dict[str, Fraction]:
    out: dict[str, Fraction] = {}
    for (tenant, _f, _a, _m), share in mix.items():
        out[tenant] = out.get(tenant, Fraction(0)) + share
    return out


# -- weights ---------------------------------------------------------------------------------------------------


def test_inbound_weighs_by_server_time_the_calls_drove():
    """Few but expensive requests: acme's 2 requests took 9 s of the gateway's time, globex's 18 took 1 s. What the
    gateway calls downstream is charged 90% to acme, not 10% (as counting requests would)."""
    usage = [
        use("lb", "gateway", 2, "acme", busy_us=9_000_000),
        use("lb", "gateway", 18, "globex", busy_us=1_000_000),
        use("gateway", "orders", 20, busy_us=5_000_000),
    ]
    mixes = inbound_mixes(usage)
    assert tenants(mixes["gateway"]) == {"acme": Fraction(9, 10), "globex": Fraction(1, 10)}
    assert tenants(mixes["orders"]) == {"acme": Fraction(9, 10), "globex": Fraction(1, 10)}


def test_inbound_weighs_by_requests_when_a_call_did_not_measure_server_time():
    usage = [
        use("lb", "gateway", 2, "acme", busy_us=9_000_000),
        use("lb", "gateway", 18, "globex"),  # no server time: one unit for the whole inbound, requests
        use("gateway", "orders", 20),
    ]
    assert tenants(inbound_mixes(usage)["orders"]) == {"acme": Fraction(1, 10), "globex": Fraction(9, 10)}


# -- HTTP queues -----------------------------------------------------------------------------------------------

QUEUE = frozenset({"jobs-queue"})


def http_queue(worker_extra: list[Usage] | None = None) -> list[Usage]:
    return [
        use("gateway", "orders", 3, "acme", busy_us=300, feature="checkout"),
        use("gateway", "orders", 1, "globex", busy_us=100, feature="checkout"),
        use("orders", "jobs-queue", 4, busy_us=40),  # untagged producer: orders' mix
        use("api", "jobs-queue", 4, "initech", busy_us=40, feature="import"),  # tagged producer
        use("worker", "jobs-queue", 50, busy_us=900),  # polls: no tenant, nobody calls the worker
        use("worker", "db", 8, busy_us=8000, protocol="postgres"),
        *(worker_extra or []),
    ]


def test_worker_polling_an_http_queue_takes_its_producers_mix_with_features():
    mix = inbound_mixes(http_queue(), queue_endpoints=QUEUE)["worker"]
    assert mix == {
        ("acme", "checkout", "", "propagated"): Fraction(3, 8),
        ("globex", "checkout", "", "propagated"): Fraction(1, 8),
        ("initech", "import", "", "propagated"): Fraction(1, 2),
    }
    # the same rows without the config naming the queue: the worker is reached by nothing
    assert "worker" not in inbound_mixes(http_queue())


def test_a_worker_that_produces_to_a_second_queue_is_its_producer():
    rows = http_queue([use("worker", "late-queue", 5), use("mailer", "late-queue", 9), use("mailer", "smtp", 9)])
    mixes = inbound_mixes(rows, queue_endpoints=QUEUE | {"late-queue"})
    assert mixes["mailer"] == mixes["worker"] == mixes["late-queue"]


def test_background_work_calling_a_queue_is_not_its_consumer():
    rows = http_queue([use("cron", "jobs-queue", 3), use("cron", "db", 1, protocol="postgres")])
    solution = solve(rows, queue_endpoints=QUEUE, background={"cron"})
    assert solution.mix("cron") == {}
    assert weights([(rows[-1], 1)], solution, {"cron"}) == {("", "", "", "platform"): 1}


def test_broker_protocol_calls_to_a_queue_endpoint_stay_with_the_topics():
    """A kafka broker named as a queue resource: its calls are topic traffic (``QueueUse``), never read twice."""
    rows = [use("api", "kafka:9092", 4, "acme", protocol="kafka"), use("worker", "kafka:9092", 4, protocol="kafka")]
    assert "worker" not in inbound_mixes(rows, queue_endpoints={"kafka:9092"})


def test_billing_follows_an_http_queue_named_by_a_queue_resource():
    config = Config(
        resources=[
            ResourceMapping(resource="jobs-queue", kind="queue", match="^jobs$", endpoints=["jobs-queue"]),
            ResourceMapping(resource="db", kind="database", match="^db$", endpoints=["db"]),
        ]
    )
    start = 1_700_000_000_000_000
    rows = [
        Usage(**{**{f: getattr(u, f) for f in u.__struct_fields__}, "start_us": start, "end_us": start + 3_600_000_000})
        for u in http_queue()
    ]
    line = CostLine(line_id="db-1", source="t", billing_period="2023-11", window=Window(start, start + 3_600_000_000),
                    amount=Decimal("8.00"), currency="USD", resource_id="db")  # fmt: skip
    got = {(a.tenant, a.feature, a.method): a.amount for a in run([line], rows, config).allocations}
    assert got == {
        ("acme", "checkout", "propagated"): Decimal("3.00"),
        ("globex", "checkout", "propagated"): Decimal("1.00"),
        ("initech", "import", "propagated"): Decimal("4.00"),
    }


# -- integer weights ---------------------------------------------------------------------------------------------

NODES = ["a", "b", "c", "q"]


@settings(max_examples=150, deadline=None)
@given(
    tagged=st.lists(
        st.tuples(st.sampled_from(NODES), st.sampled_from(["acme", "globex"]), st.integers(1, 9), st.integers(0, 9))
    ),
    untagged=st.lists(
        st.tuples(st.sampled_from([*NODES, "w"]), st.sampled_from(NODES), st.integers(1, 9), st.integers(0, 9))
    ),
    consumed=st.lists(st.tuples(st.sampled_from([*NODES, "w", "ghost"]), st.integers(1, 99)), min_size=1),
)
def test_integer_weights_are_the_exact_shares_proportions(tagged, untagged, consumed):
    usage = [use("lb", dst, n, tenant, busy_us=b) for dst, tenant, n, b in tagged]
    usage += [use(src, dst, n, busy_us=b) for src, dst, n, b in untagged]
    solution = solve(usage, queue_endpoints={"q"})
    rows = [(use(src, "db", 1), w) for src, w in consumed]
    exact = attribute(rows, solution)
    ints = weights(rows, solution)
    assert set(ints) == {k for k, v in exact.items() if v}
    total_e, total_i = sum(exact.values()), sum(ints.values())
    assert all(Fraction(ints[k], total_i) == exact[k] / total_e for k in ints)
    for mix in solution.all_mixes().values():
        assert sum(mix.values()) == 1


def test_a_topic_passes_its_producers_features_and_agents():
    def produce(tenant: str, feature: str, agent: str = "") -> QueueUse:
        return QueueUse(topic="jobs", role="producer", workload="api", tenant=tenant, tenant_method="header",
                        feature=feature, agent=agent, requests=2)  # fmt: skip

    queues = [produce("acme", "export", "bot"), produce("globex", "import"),
              QueueUse(topic="jobs", role="consumer", workload="worker", requests=4)]  # fmt: skip
    assert inbound_mixes([], queues)["worker"] == {
        ("acme", "export", "bot", "propagated"): Fraction(1, 2),
        ("globex", "import", "", "propagated"): Fraction(1, 2),
    }


def test_queue_rows_from_records_keep_feature_and_agent():
    record = ObservedCall(window_start_us=0, window_end_us=1_000_000, node="n", src_workload="api", dst="kafka:9092",
                          protocol="kafka", operation="produce jobs", tenant="acme", tenant_method="header",
                          feature="export", agent="bot", requests=3, bytes_out=300)  # fmt: skip
    (row,) = hourly_from_records([record]).queues
    assert (row.topic, row.role, row.tenant, row.feature, row.agent, row.requests) == (
        "jobs", "producer", "acme", "export", "bot", 3)  # fmt: skip
