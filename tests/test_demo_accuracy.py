"""The demo SaaS end to end, so that the published accuracy figure cannot rot: one small scenario (tenant on every
call, a few seconds of traffic) captured live with eBPF where the kernel allows it, else recorded and replayed,
through every costmesh service, its bill allocated and compared with the truth the SaaS wrote itself.

Asserted: the bill is allocated whole, at least 99% of it attributed or modeled, every AI call seen with its tenant,
and the naive splits further off than costmesh. Not asserted yet: the 1% per customer, which costmesh still misses by
1-10% here on a loaded machine (the database line: PostgreSQL's backend spends ~1.3-2x its logged statement time
between reading a query and answering it, and costmesh measures that span; see loadtests/bench_accuracy.py). It
becomes an assertion when it holds; as an expected failure it would pass by chance on a quiet machine.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from costmesh.demo.accuracy import ScenarioAccuracy, assess, render_scenario
from costmesh.demo.run import CaptureUnavailable, DemoRun, RunResult
from costmesh.demo.scenarios import SMALL

from .conftest import processes_marked

MARK = "demo-accuracy"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, ScenarioAccuracy]:
    mp = pytest.MonkeyPatch()
    mp.setenv("COSTMESH_TEST_MARK", MARK)
    try:
        with DemoRun(SMALL, tmp_path_factory.mktemp("demo")) as run:
            try:
                result = run.run(timeout_s=150)
            except CaptureUnavailable as exc:
                pytest.skip(f"no way to capture here: {exc}")
    finally:
        mp.undo()
    customers = [t.name for t in SMALL.tenants]
    accuracy = assess(result, title=SMALL.title, mode=SMALL.mode, target_pct=SMALL.target_pct, customers=customers)
    print(render_scenario(accuracy))
    return result, accuracy


def test_the_run_is_complete_and_every_line_allocated_to_the_cent(small_run):
    result, accuracy = small_run
    assert result.failed_requests == 0
    assert not result.truth.unexplained, result.truth.unexplained
    assert set(accuracy.line_amounts) == {"database", "node", "nat", "ai_input", "ai_output"}
    for line in result.bill.lines:
        parts = result.allocated[line.spec.key]
        assert sum(Decimal(v) for methods in parts.values() for v in methods.values()) == line.amount, line.spec.key
    assert not processes_marked(MARK), "the demo left processes running"


def test_at_least_99_percent_of_the_bill_is_attributed_or_modeled(small_run):
    _result, accuracy = small_run
    assert accuracy.coverage_pct >= 99.0, render_scenario(accuracy)


def test_every_ai_call_is_seen_with_its_tenant(small_run):
    """JSON and SSE answers, over HTTP and over HTTPS (uprobes, or plain HTTP when replayed), each with the OpenAI
    ``user`` field: the token lines come out exactly as the model endpoint billed them per tenant."""
    _result, accuracy = small_run
    assert accuracy.line_worst_pct["ai_input"] <= 0.5, render_scenario(accuracy)
    assert accuracy.line_worst_pct["ai_output"] <= 0.5, render_scenario(accuracy)


def test_naive_splits_are_further_off_than_costmesh(small_run):
    _result, accuracy = small_run
    worst = accuracy.worst_pct
    assert min(worst["even"], worst["requests"]) > worst["costmesh"], render_scenario(accuracy)
