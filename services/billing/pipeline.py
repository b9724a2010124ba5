"""One allocation run from config: mapping, rate cards, token lines and the engine, wired the same way for the
billing service and for ``costmesh report`` (so a report from files and the live system give the same answer).

Reads cost lines, consumption rows and the config; emits a ``Run`` (all lines incl. generated ones, allocations,
unmatched lines). Pure apart from the price function it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from costmesh.common.config import Config

from .allocate import Allocator, PriceFn, Target
from .mapping import Mapper, Unmatched
from .model import Allocation, CostLine, Usage, Window
from .ratecard import price_from_config, rate_card_lines, token_cost_lines


class Run(msgspec.Struct):
    lines: list[CostLine]
    allocations: list[Allocation]
    targets: dict[str, Target | None]
    unmatched: list[Unmatched]


def span(lines: Sequence[CostLine]) -> Window | None:
    if not lines:
        return None
    return Window(min(x.window.start_us for x in lines), max(x.window.end_us for x in lines))


def run(
    lines: Sequence[CostLine],
    usage: Sequence[Usage],
    config: Config,
    *,
    window: Window | None = None,
    price: PriceFn | None = None,
) -> Run:
    """Allocate ``lines`` (plus rate-card and token lines over ``window``) against ``usage``."""
    price = price or price_from_config(config.prices)
    observed = {u.dst for u in usage} | {u.src_workload for u in usage} | {w.name for w in config.workloads}
    observed.discard("")
    mapper = Mapper(config.resources, observed)
    targets, unmatched = mapper.map_all(lines)
    all_lines = list(lines)
    window = window or span(lines)
    if window is not None:
        extra = rate_card_lines(config.billing.rate_cards, window)
        if config.billing.price_tokens:
            currency = lines[0].currency if lines else "USD"
            extra += token_cost_lines(usage, price, window, currency)
        for line, target in extra:
            all_lines.append(line)
            targets[line.line_id] = target
    internal = {u.src_workload for u in usage} | {w.name for w in config.workloads}
    for rule in config.resources:
        internal |= {rule.resource, *rule.endpoints}
    for target in targets.values():
        if target is not None and target.kind not in ("nat_gateway", "ai_api"):
            internal |= {target.resource, *target.endpoints}
    allocator = Allocator(
        usage,
        price=price,
        background={w.name for w in config.workloads if w.background},
        zones={w.name: w.zone for w in config.workloads if w.zone},
        internal=internal,
        tag_keys=config.billing.tag_keys,
    )
    return Run(all_lines, allocator.allocate_all(all_lines, targets), targets, unmatched)
