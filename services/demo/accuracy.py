"""How right costmesh's allocation of a demo run is: per customer, its allocated cost beside the true cost and beside
two splits a spreadsheet would make, each with its error.

- ``truth``: each bill line split by the truth quantity of its kind (``truth`` module docstring): its amount times the
  tenant's share of that quantity; platform work (no tenant) keeps its share as ``platform``.
- ``costmesh``: what the allocation gave the customer (every method: direct, trace, propagated).
- ``even``: each line split evenly over the customers.
- ``requests``: each line split by the customers' requests at the edge.

The error of a method for a customer is (method − truth) / truth over the customer's whole bill. Coverage is the
share of the bill costmesh attributed to a customer or explicitly modeled as platform (the rest is unallocated).
Amounts are exact (``Fraction`` until shown); errors are ratios, shown in percent.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from fractions import Fraction

import msgspec

from .run import RunResult

METHODS = ("costmesh", "even", "requests")
PLATFORM = "(platform)"
UNALLOCATED = "(unallocated)"


class CustomerRow(msgspec.Struct):
    customer: str
    truth: str
    costs: dict[str, str]
    errors_pct: dict[str, float | None]
    #: Per bill line: truth and costmesh (decimal text), for finding where an error comes from.
    lines: dict[str, dict[str, str]]


class ScenarioAccuracy(msgspec.Struct):
    scenario: str
    title: str
    mode: str
    capture: str
    capture_note: str
    target_pct: float
    billed: str
    coverage_pct: float
    worst_pct: dict[str, float]
    #: costmesh's worst error per customer on each bill line alone (where the error comes from).
    line_worst_pct: dict[str, float]
    passed: bool
    customers: list[CustomerRow]
    #: What the truth and costmesh gave to platform work and left unallocated.
    platform: dict[str, str]
    unallocated: str
    traffic_s: float
    failed_requests: int
    ring_drops: int
    truth_unexplained: dict[str, int]
    line_amounts: dict[str, str]


def _dec(x: Fraction | Decimal | int) -> str:
    if isinstance(x, Fraction):
        x = Decimal(x.numerator) / Decimal(x.denominator)
    return format(Decimal(x).quantize(Decimal("0.000001")), "f")


def _pct(value: Fraction, truth: Fraction) -> float | None:
    if truth == 0:
        return None
    return round(float((value - truth) / truth * 100), 2)


def assess(result: RunResult, *, title: str, mode: str, target_pct: float, customers: list[str]) -> ScenarioAccuracy:
    truth_q, edge = result.truth.quantities, result.truth.quantities.get("edge", {})
    edge_total = sum(edge.get(c, 0) for c in customers)
    per: dict[str, dict[str, Fraction]] = {m: defaultdict(Fraction) for m in ("truth", *METHODS)}
    per_line: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    exact: dict[tuple[str, str], tuple[Fraction, Fraction]] = {}
    platform = {"truth": Fraction(0), "costmesh": Fraction(0)}
    unallocated = Fraction(0)
    billed = Fraction(0)
    for line in result.bill.lines:
        key, amount = line.spec.key, Fraction(line.amount)
        billed += amount
        q = truth_q.get(key, {})
        total = sum(q.values())
        allocated = result.allocated.get(key, {})
        for c in customers:
            truth = amount * q.get(c, 0) / total if total else Fraction(0)
            mine = sum((Fraction(v) for v in allocated.get(c, {}).values()), Fraction(0))
            per["truth"][c] += truth
            per["costmesh"][c] += mine
            per["even"][c] += amount / len(customers)
            per["requests"][c] += amount * edge.get(c, 0) / edge_total if edge_total else Fraction(0)
            per_line[c][key] = {"truth": _dec(truth), "costmesh": _dec(mine)}
            exact[(c, key)] = (truth, mine)
        platform["truth"] += amount * q.get("", 0) / total if total else Fraction(0)
        for method, value in allocated.get("", {}).items():
            if method == "platform":
                platform["costmesh"] += Fraction(value)
            else:
                unallocated += Fraction(value)
        # tenants costmesh named that are not customers of the scenario (foreign traffic) count as unallocated here
        for tenant, methods in allocated.items():
            if tenant and tenant not in customers:
                unallocated += sum((Fraction(v) for v in methods.values()), Fraction(0))
    line_worst: dict[str, float] = {}
    for line in result.bill.lines:
        key = line.spec.key
        errors = [_pct(exact[(c, key)][1], exact[(c, key)][0]) for c in customers]
        line_worst[key] = max((abs(e) for e in errors if e is not None), default=0.0)
    rows = []
    worst = dict.fromkeys(METHODS, 0.0)
    for c in customers:
        truth = per["truth"][c]
        errors = {m: _pct(per[m][c], truth) for m in METHODS}
        for m, e in errors.items():
            if e is not None:
                worst[m] = max(worst[m], abs(e))
        rows.append(
            CustomerRow(
                customer=c,
                truth=_dec(truth),
                costs={m: _dec(per[m][c]) for m in METHODS},
                errors_pct=errors,
                lines=per_line[c],
            )
        )
    coverage = round(float((billed - unallocated) / billed * 100), 2) if billed else 0.0
    return ScenarioAccuracy(
        scenario=result.scenario,
        title=title,
        mode=mode,
        capture=result.capture,
        capture_note=result.capture_note,
        target_pct=target_pct,
        billed=_dec(billed),
        coverage_pct=coverage,
        worst_pct=worst,
        line_worst_pct=line_worst,
        passed=worst["costmesh"] <= target_pct and coverage >= 99.0,
        customers=rows,
        platform={k: _dec(v) for k, v in platform.items()},
        unallocated=_dec(unallocated),
        traffic_s=result.traffic_s,
        failed_requests=result.failed_requests,
        ring_drops=result.ring_drops,
        truth_unexplained=result.truth.unexplained,
        line_amounts={line.spec.key: _dec(line.amount) for line in result.bill.lines},
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _err(e: float | None) -> str:
    return "n/a" if e is None else f"{e:+.2f}%"


def render_scenario(a: ScenarioAccuracy) -> str:
    head = ["customer", "truth $", "costmesh $", "error", "even split $", "error", "by edge requests $", "error"]
    rows = [
        [
            r.customer,
            r.truth,
            r.costs["costmesh"],
            _err(r.errors_pct["costmesh"]),
            r.costs["even"],
            _err(r.errors_pct["even"]),
            r.costs["requests"],
            _err(r.errors_pct["requests"]),
        ]
        for r in a.customers
    ]
    rows.append([PLATFORM, a.platform["truth"], a.platform["costmesh"], "", "0.000000", "", "0.000000", ""])
    rows.append([UNALLOCATED, "0.000000", a.unallocated, "", "", "", "", ""])
    verdict = "PASS" if a.passed else "FAIL"
    title = (
        f"{a.scenario}: {a.title} [{a.mode} mode, {a.capture} capture, {a.traffic_s:.1f} s of traffic, "
        f"{a.failed_requests} failed requests, {a.ring_drops} ring drops, billed ${a.billed}]\n"
        f"  worst error per customer: costmesh {a.worst_pct['costmesh']:.2f}% (target {a.target_pct:g}%), "
        f"even {a.worst_pct['even']:.2f}%, by requests {a.worst_pct['requests']:.2f}%; attributed or modeled "
        f"{a.coverage_pct:.2f}% (target 99%): {verdict}"
    )
    lines = ", ".join(f"{k} {v:.2f}%" for k, v in a.line_worst_pct.items())
    return title + "\n" + _table(head, rows) + f"\n  costmesh's worst error per customer on each line alone: {lines}"


def render_summary(results: list[ScenarioAccuracy]) -> str:
    head = ["scenario", "target", "costmesh worst", "even worst", "by requests worst", "attributed+modeled", "result"]
    rows = [
        [
            a.scenario,
            f"{a.target_pct:g}%",
            f"{a.worst_pct['costmesh']:.2f}%",
            f"{a.worst_pct['even']:.2f}%",
            f"{a.worst_pct['requests']:.2f}%",
            f"{a.coverage_pct:.2f}%",
            "pass" if a.passed else "FAIL",
        ]
        for a in results
    ]
    return _table(head, rows)
