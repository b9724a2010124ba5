"""One allocation run from config: mapping, rate cards, token lines and the engine, wired the same way for the
billing service and for ``costmesh report`` (so a report from files and the live system give the same answer).

Reads cost lines, consumption (calls, queue traffic and AI tokens: ``costmesh.common.usage.Consumption``) and the
config; emits a ``Run`` (all lines incl. generated ones, allocations, unmatched lines). Pure: no I/O, no clock.

Two engines give the same rows (tested): the per-line ``Allocator`` and, from ``FAST_PATH_MIN_LINES`` bill lines on,
the vectorised ``fast.allocate_columns`` (lines grouped by descriptor and consumption epoch, numpy largest remainders),
which is what lets a million-line bill allocate in well under a minute. Generated lines (rate cards, tokens: a handful)
always take the per-line engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import numpy as np

from costmesh.common.config import Config
from costmesh.common.prices import PriceTable
from costmesh.common.usage import Consumption

from .allocate import Allocator, Target
from .fast import FastPathUnavailable, allocate_columns, columns_from_lines, to_line_allocations
from .mapping import Mapper, Unmatched
from .model import Allocation, CostLine, Usage, Window
from .ratecard import rate_card_lines, token_cost_lines

#: Bill lines from which ``run`` uses the vectorised path. Both give the same rows; measured through ``run`` on the
#: benchmark's bill (2,000 resources, daily consumption), the per-line engine is faster up to ~3,000 lines (0.44 s vs
#: 0.50 s at 500, 0.69 s vs 0.87 s at 2,000), the vectorised one from ~5,000 (1.2 s vs 1.7 s; 1.0 s vs 5.7 s at 40,000).
FAST_PATH_MIN_LINES = 5_000


class Run(msgspec.Struct):
    lines: list[CostLine]
    allocations: list[Allocation]
    targets: dict[str, Target | None]
    unmatched: list[Unmatched]


def period_window(period: str) -> Window:
    """The month of a ``YYYY-MM`` billing period, as a window (UTC)."""
    year, month = (int(x) for x in period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return Window(_us(start), _us(end))


def periods_window(lines: Sequence[CostLine]) -> Window | None:
    """From the first billing period's month start to the last one's end: the window the billing service prices
    rate cards and tokens over, period by period, and so the one ``costmesh report`` uses too."""
    periods = sorted({line.billing_period for line in lines})
    if not periods:
        return None
    return Window(period_window(periods[0]).start_us, period_window(periods[-1]).end_us)


def _us(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def span(lines: Sequence[CostLine]) -> Window | None:
    if not lines:
        return None
    return Window(min(x.window.start_us for x in lines), max(x.window.end_us for x in lines))


def run(
    lines: Sequence[CostLine],
    consumption: Consumption | Sequence[Usage],
    config: Config,
    *,
    window: Window | None = None,
    prices: PriceTable | None = None,
    fast: bool | None = None,
) -> Run:
    """Allocate ``lines`` (plus rate-card and token lines over ``window``) against ``consumption`` (a plain list is
    calls alone: no queue traffic, AI tokens read from the calls).

    ``fast`` chooses the engine for the bill lines: ``None`` by ``FAST_PATH_MIN_LINES``, ``True``/``False`` forces
    the vectorised or the per-line one (tests compare them). The result is the same either way.
    """
    if not isinstance(consumption, Consumption):
        consumption = Consumption(usage=list(consumption), ai=[u for u in consumption if _has_tokens(u)])
    usage = consumption.usage
    prices = prices or PriceTable.from_config(config)
    mapper = Mapper(config.resources, observed_names(consumption, config))
    if fast is None:
        fast = len(lines) >= FAST_PATH_MIN_LINES
    columns: list[tuple[list[int], Any, list[Target | Unmatched]]] | None = None
    if fast and lines:
        try:
            targets, unmatched, columns = _map_columns(lines, mapper)
        except FastPathUnavailable:
            columns = None
    if columns is None:
        targets, unmatched = mapper.map_all(lines)
    all_lines = list(lines)
    window = window or span(lines)
    extra_lines: list[CostLine] = []
    if window is not None:
        extra = rate_card_lines(config.billing.rate_cards, window)
        if config.billing.price_tokens:
            currency = lines[0].currency if lines else "USD"
            extra += token_cost_lines(consumption.ai, prices, window, currency)
        for line, target in extra:
            extra_lines.append(line)
            targets[line.line_id] = target
    all_lines += extra_lines
    internal = {u.src_workload for u in usage} | {w.name for w in config.workloads}
    internal |= {u.workload for u in consumption.compute}
    for rule in config.resources:
        # an AI API or a NAT gateway is outside, whatever names it is mapped by: the calls to it are the egress
        if rule.kind not in ("nat_gateway", "ai_api"):
            internal |= {rule.resource, *rule.endpoints}
    for target in set(targets.values()):
        if target is not None and target.kind not in ("nat_gateway", "ai_api"):
            internal |= {target.resource, *target.endpoints}
    kwargs: dict[str, Any] = {
        "queues": consumption.queues,
        "ai": consumption.ai,
        "queue_window_us": config.attributor.queue_window_s * 1_000_000,
        "prices": prices,
        "background": {w.name for w in config.workloads if w.background},
        "zones": {w.name: w.zone for w in config.workloads if w.zone},
        "internal": internal,
        "tag_keys": config.billing.tag_keys,
        "queue_endpoints": queue_endpoints(config),
        "compute": consumption.compute,
        "capacity": consumption.capacity,
        "cpu_price": Decimal(config.cluster.cpu_price_per_core_hour),
        "memory_price": Decimal(config.cluster.memory_price_per_gib_hour),
        "cluster_cidrs": config.cluster.cidrs,
    }
    if columns is None:
        return Run(all_lines, Allocator(usage, **kwargs).allocate_all(all_lines, targets), targets, unmatched)
    allocations = _allocate_columns(lines, columns, usage, mapper, kwargs)
    if extra_lines:
        allocations += Allocator(usage, **kwargs).allocate_all(extra_lines, targets)
    return Run(all_lines, allocations, targets, unmatched)


def queue_endpoints(config: Config) -> set[str]:
    """Destinations that are queues: the names of the config's ``queue`` resources and their endpoints (a queue
    behind an HTTP API is followed producer → worker through them; see ``costmesh.common.attribution``)."""
    return {name for rule in config.resources if rule.kind == "queue" for name in (rule.resource, *rule.endpoints)}


def observed_names(consumption: Consumption, config: Config) -> set[str]:
    """Every name consumption was seen under (callers, destinations, AI endpoints, queue workloads) and the
    configured workloads: what a bill line's resource can be mapped to."""
    names = {u.dst for u in consumption.usage} | {u.src_workload for u in consumption.usage}
    names |= {u.dst for u in consumption.ai} | {q.workload for q in consumption.queues}
    names |= {w.name for w in config.workloads}
    names.discard("")
    return names


def _has_tokens(u: Usage) -> bool:
    return bool(u.tokens_in or u.tokens_out or u.tokens_cached)


def _map_columns(
    lines: Sequence[CostLine], mapper: Mapper
) -> tuple[dict[str, Target | None], list[Unmatched], list[tuple[list[int], Any, list[Target | Unmatched]]]]:
    """``Mapper.map_all`` once per descriptor instead of once per line, and the lines as ``Columns`` per currency.

    Returns the per-line targets and unmatched lines exactly as ``map_all`` gives them, and per currency (the split
    does not depend on it, a ``Columns`` holds one) the indexes of its lines, their columns and the descriptors'
    targets. An ``Unmatched`` reason also reads the line's charge category, so reasons are kept per (descriptor,
    charge category).
    """
    by_currency: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_currency.setdefault(line.currency, []).append(i)
    parts = []
    descriptor_target: list[list[Target | Unmatched]] = []
    for idx in by_currency.values():
        subset = lines if len(idx) == len(lines) else [lines[i] for i in idx]
        cols = columns_from_lines(subset)
        found = [mapper.map(d) for d in cols.descriptors]
        parts.append((idx, cols, found))
        descriptor_target.append(found)
    targets: dict[str, Target | None] = {}
    unmatched: list[Unmatched] = []
    reasons: dict[tuple[int, int, str], str] = {}
    per_line: list[tuple[int, int] | None] = [None] * len(lines)
    for p, (idx, cols, _found) in enumerate(parts):
        for i, d in zip(idx, cols.desc.tolist(), strict=True):
            per_line[i] = (p, d)
    for i, line in enumerate(lines):
        p, d = per_line[i]  # type: ignore[misc]
        target = descriptor_target[p][d]
        if isinstance(target, Unmatched):
            key = (p, d, line.charge_category)
            reason = reasons.get(key)
            if reason is None:
                got = mapper.map(line)
                assert isinstance(got, Unmatched)
                reason = reasons[key] = got.reason
            targets[line.line_id] = None
            unmatched.append(Unmatched(line, reason))
        else:
            targets[line.line_id] = target
    return targets, unmatched, parts


def _allocate_columns(
    lines: Sequence[CostLine],
    parts: list[tuple[list[int], Any, list[Target | Unmatched]]],
    usage: Sequence[Usage],
    mapper: Mapper,
    kwargs: dict[str, Any],
) -> list[Allocation]:
    """The bill lines' allocations through ``fast.allocate_columns``, in the per-line engine's order."""
    if len(parts) == 1:
        idx, cols, found = parts[0]
        result = allocate_columns(cols, usage, mapper, targets=found, **kwargs)
        return to_line_allocations(lines, cols, result)
    # several currencies: each allocated alone, then interleaved back into line order
    streams: list[tuple[Any, Any]] = []
    where: list[int] = [0] * len(lines)
    for p, (idx, cols, found) in enumerate(parts):
        subset = [lines[i] for i in idx]
        result = allocate_columns(cols, usage, mapper, targets=found, **kwargs)
        rows = to_line_allocations(subset, cols, result)
        counts = np.bincount(result.line, minlength=len(subset)).tolist()
        streams.append((iter(rows), iter(counts)))
        for i in idx:
            where[i] = p
    out: list[Allocation] = []
    for p in where:
        rows_it, counts_it = streams[p]
        out.extend(next(rows_it) for _ in range(next(counts_it)))
    return out
