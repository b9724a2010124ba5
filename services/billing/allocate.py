"""The allocation engine: splits each cost line over tenants by observed consumption. Pure: no I/O, no clock.

Reads cost lines, the observed resource each maps to (``Target``, from ``mapping``) and the consumption in the line's
charge window (``Usage`` rows); emits ``Allocation`` rows, each with its ``method`` and ``basis``.

For a line of resource R over window P (DESIGN.md, "Allocation, in one paragraph"):
1. Who consumed R in P, by the metric fitting R's kind: database → server time (``busy_us``) when measured, else
   requests; queue → bytes per topic; NAT gateway → bytes to destinations outside the cluster; cross-AZ → bytes between
   workloads in different zones; compute → the CPU and memory the node's workloads used or requested, whichever is
   larger, with the rest of the node's capacity as ``idle`` (``compute``, OpenCost's rule), where the sensor read
   them, each workload's part over the calls it served by their server time; else server time of the workloads on
   the node (a CPU proxy), else requests;
   AI API → the tokens of the kind the line meters (``tokenkind``: input by ``tokens_in``, output by ``tokens_out``,
   cache reads by ``tokens_cached``), a line of several kinds by price-weighted tokens (``costmesh.common.prices``);
   storage → bytes; other → requests.
2. Each consuming record goes to a tenant by the tenant on the call (``direct``), by trace id (``trace``), by the
   inbound tenant mix of the calling workload in P, recursively along the graph and through queues
   (``propagated``; the one solver, ``costmesh.common.attribution``), else to ``platform`` when the caller is
   background work, else ``unallocated``.
3. A tenant tag on the bill line itself (``tenant``/``customer``…) is a direct signal and wins; a line mapped to no
   observed resource, or with no consumption in P, is ``unallocated`` whole.
4. Shares are exact until the end — the solver's integer weights, the smallest integers in the exact fractions'
   proportion (``attribution.weights``) — then split with largest remainders in integer units of the line's own
   precision, so **the allocations of a line sum to its amount exactly**. Keys are sorted first: deterministic.
5. Queues behind an HTTP API are the config's ``queue`` resources (``queue_endpoints``): their workers take the
   producers' mix, as topic consumers do (``costmesh.common.attribution``).
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction

import msgspec

from costmesh.common.attribution import Key, Mix, Solution, attribute, solve
from costmesh.common.attribution import weights as share_weights
from costmesh.common.money import from_units, largest_remainder, scale_of, to_units
from costmesh.common.prices import PriceTable
from costmesh.common.usage import ComputeUse, NodeCapacity, QueueUse

from . import compute as node_compute
from . import tokenkind
from .model import Allocation, Category, CostLine, ResourceKind, Usage, Window

#: Bill tags read as the tenant of a line, first found wins (case-insensitive keys).
DEFAULT_TAG_KEYS: tuple[str, ...] = ("tenant", "tenant_id", "customer", "customer_id", "costmesh:tenant")

_Key = Key
#: What each token kind of a line is split by.
_KIND_BASIS = {"input": "tokens_in", "cache_write": "tokens_in", "output": "tokens_out", "cache_read": "tokens_cached"}


class Target(msgspec.Struct, frozen=True):
    """The observed resource a cost line is for: its name, kind and the names it is seen under (``Usage.dst``)."""

    resource: str
    kind: ResourceKind
    endpoints: frozenset[str] = frozenset()
    reason: str = ""


def _bytes(u: Usage) -> int:
    return u.bytes_in + u.bytes_out


class Allocator:
    """Allocates lines against one span of consumption; caches per-window indexes and inbound mixes.

    ``usage``: calls (hourly rows); ``queues``: queue traffic, read for propagation through topics over
    ``queue_window_us`` before each window as well; ``ai``: AI tokens by provider and model (``ai_usage_hourly``),
    what AI lines are split by — without it, the token fields of ``usage`` are (rows without a model then).
    """

    def __init__(
        self,
        usage: Iterable[Usage],
        *,
        queues: Iterable[QueueUse] = (),
        ai: Iterable[Usage] | None = None,
        queue_window_us: int = 0,
        prices: PriceTable | None = None,
        background: Iterable[str] = (),
        zones: Mapping[str, str] | None = None,
        internal: Iterable[str] | None = None,
        tag_keys: Sequence[str] = DEFAULT_TAG_KEYS,
        queue_endpoints: Iterable[str] = (),
        compute: Iterable[ComputeUse] = (),
        capacity: Iterable[NodeCapacity] = (),
        cpu_price: Decimal = node_compute.DEFAULT_CPU_PRICE,
        memory_price: Decimal = node_compute.DEFAULT_MEMORY_PRICE,
        cluster_cidrs: Sequence[str] = (),
    ) -> None:
        self.usage = sorted(usage, key=lambda u: (u.start_us, u.src_workload, u.dst, u.tenant, u.feature, u.agent))
        # Rows sorted by start plus the longest row's length bound the rows a window can overlap (bisect, not scan).
        self._starts = [u.start_us for u in self.usage]
        self._longest = max((u.end_us - u.start_us for u in self.usage), default=0)
        self.queues = sorted(queues, key=lambda q: (q.start_us, q.topic, q.role, q.workload, q.tenant))
        self._queue_starts = [q.start_us for q in self.queues]
        self._queue_longest = max((q.end_us - q.start_us for q in self.queues), default=0)
        self.queue_window_us = queue_window_us
        self.ai = None if ai is None else sorted(ai, key=lambda u: (u.start_us, u.dst, u.provider, u.model, u.tenant))
        self.prices = prices if prices is not None else PriceTable()
        self.background = frozenset(background)
        self.zones = dict(zones or {})
        # Names that are workloads of ours: anything called by a workload that is not among them is outside.
        self.internal = (
            frozenset(internal)
            if internal is not None
            else frozenset(u.src_workload for u in self.usage) | frozenset(self.zones)
        )
        self.tag_keys = tuple(k.lower() for k in tag_keys)
        # Destinations that are queues behind an HTTP API (``queue`` resources of the config): producer → consumer.
        self.queue_endpoints = frozenset(queue_endpoints)
        self.compute = list(compute)
        self.capacity = list(capacity)
        self.cpu_price, self.memory_price = cpu_price, memory_price
        # Addresses of the cluster (pods, services, nodes): never egress, private or not.
        self.cluster_networks = [ipaddress.ip_network(c, strict=False) for c in cluster_cidrs]
        # Zones the sensors read off the nodes (Kubernetes labels) where the config names none.
        for u in self.compute:
            if u.zone:
                self.zones.setdefault(u.workload, u.zone)
        self._windows: dict[Window, tuple[list[Usage], dict[str, list[Usage]]]] = {}
        self._solutions: dict[Window, Solution] = {}

    # -- consumption ---------------------------------------------------------------------------------------------
    def _in(self, window: Window) -> tuple[list[Usage], dict[str, list[Usage]]]:
        cached = self._windows.get(window)
        if cached is None:
            lo = bisect.bisect_right(self._starts, window.start_us - self._longest)
            hi = bisect.bisect_left(self._starts, window.end_us)
            rows = [u for u in self.usage[lo:hi] if window.overlaps(u.start_us, u.end_us)]
            by_dst: dict[str, list[Usage]] = defaultdict(list)
            for u in rows:
                by_dst[u.dst].append(u)
            cached = self._windows[window] = (rows, dict(by_dst))
        return cached

    def queues_for(self, window: Window) -> list[QueueUse]:
        """Queue rows that feed ``window``: consumers in it, producers in it or ``queue_window_us`` before it."""
        lo = bisect.bisect_right(self._queue_starts, window.start_us - self.queue_window_us - self._queue_longest)
        hi = bisect.bisect_left(self._queue_starts, window.end_us)
        early = window.start_us - self.queue_window_us
        return [
            q
            for q in self.queues[lo:hi]
            if (q.start_us < window.end_us and q.end_us > (early if q.role == "producer" else window.start_us))
        ]

    def _ai_rows(self, target: Target, window: Window) -> list[Usage]:
        names = target.endpoints | {target.resource}
        if self.ai is None:
            rows = [u for u in self._in(window)[0] if u.tokens_in or u.tokens_out or u.tokens_cached]
        else:
            rows = [u for u in self.ai if window.overlaps(u.start_us, u.end_us)]
        mine = [u for u in rows if u.dst in names]
        return mine or [u for u in rows if u.provider and u.provider in names]

    def consumption(
        self, target: Target, window: Window, line: CostLine | None = None
    ) -> tuple[str, list[tuple[Usage, int]]]:
        """The records that consumed ``target`` in ``window`` with their weight, and the metric's name. For an AI
        line, the weight is the tokens of the kind the line meters (of the model it names, when it names one)."""
        kind = target.kind
        if kind == "ai_api":
            return self._tokens(target, window, line)
        rows, by_dst = self._in(window)
        names = target.endpoints | {target.resource}
        to_target = [u for name in sorted(names) for u in by_dst.get(name, ())]
        if kind == "database" or kind == "compute":
            if any(u.busy_us for u in to_target):
                return "busy_us", [(u, u.busy_us) for u in to_target]
            return "requests", [(u, u.requests) for u in to_target]
        if kind == "queue" or kind == "storage":
            return "bytes", [(u, _bytes(u)) for u in to_target]
        if kind == "nat_gateway":
            out = [u for u in rows if u.src_workload in self.internal and self.is_external(u.dst)]
            return "egress_bytes", [(u, _bytes(u)) for u in out]
        if kind == "cross_az":
            cross = [
                u
                for u in rows
                if self.zones.get(u.src_workload)
                and self.zones.get(u.dst)
                and self.zones[u.src_workload] != self.zones[u.dst]
            ]
            return "cross_zone_bytes", [(u, _bytes(u)) for u in cross]
        return "requests", [(u, u.requests) for u in to_target]

    def _tokens(self, target: Target, window: Window, line: CostLine | None) -> tuple[str, list[tuple[Usage, int]]]:
        rows = self._ai_rows(target, window)
        token = None
        if line is not None:
            rows = tokenkind.for_model(line, rows)
            token = tokenkind.token_kind(line)
        if token is not None:
            basis = _KIND_BASIS[token]
            return basis, [(u, getattr(u, basis)) for u in rows]
        priced = []
        for u in rows:
            weights = self.prices.weights(u.provider, u.model, u.tokens_in, u.tokens_out, u.tokens_cached)
            priced.append((u, sum(weights.values()) if weights is not None else None))
        if priced and all(w is not None for _, w in priced) and any(priced_w for _, priced_w in priced):
            return "tokens_cost", priced  # type: ignore[return-value]
        return "tokens", [(u, u.tokens_in + u.tokens_cached + u.tokens_out) for u in rows]

    def is_external(self, name: str) -> bool:
        """A destination outside the cluster: not a known workload or resource, not a private address."""
        if name in self.internal:
            return False
        host = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return True
        if any(address in net for net in self.cluster_networks if net.version == address.version):
            return False
        return not (address.is_private or address.is_loopback or address.is_link_local)

    # -- tenants -------------------------------------------------------------------------------------------------
    def solution(self, window: Window) -> Solution:
        """The solved inbound mixes of ``window`` (``attribution.solve`` over its calls and the queue traffic that
        feeds it), cached per window."""
        cached = self._solutions.get(window)
        if cached is None:
            cached = self._solutions[window] = solve(
                self._in(window)[0],
                self.queues_for(window),
                queue_endpoints=self.queue_endpoints,
                background=self.background,
            )
        return cached

    def window_mixes(self, window: Window) -> dict[str, Mix]:
        """Inbound tenant mix of every workload in ``window``."""
        return self.solution(window).all_mixes()

    def inbound_mix(self, workload: str, window: Window) -> Mix:
        """Tenant shares of the calls into ``workload`` in ``window``; ``{}`` when nothing is known."""
        return self.solution(window).mix(workload)

    def shares(self, target: Target, window: Window, line: CostLine | None = None) -> tuple[str, dict[Key, Fraction]]:
        """Exact shares of ``target`` in ``window`` per (tenant, feature, agent, method), and the metric's name."""
        if target.kind == "compute":
            found = self._compute_shares(target, window)
            if found is not None:
                return found
        metric, consumed = self.consumption(target, window, line)
        if not any(w > 0 for _, w in consumed):
            return metric, {}
        return metric, attribute(consumed, self.solution(window), self.background)

    def weights(self, target: Target, window: Window, line: CostLine | None = None) -> tuple[str, dict[Key, int]]:
        """``shares`` as the smallest integers in their exact proportion (what a split reads), and the metric."""
        if target.kind == "compute":
            found = self._compute_shares(target, window)
            if found is not None:
                return found[0], _integer_weights(found[1])
        metric, consumed = self.consumption(target, window, line)
        return metric, share_weights(consumed, self.solution(window), self.background)

    def _compute_shares(self, target: Target, window: Window) -> tuple[str, dict[Key, Fraction]] | None:
        """A node line by its workloads' CPU and memory (``compute``), idle apart; None when the sensors read none
        for it (the line then falls back to server time)."""
        uses, caps = node_compute.node_rows(self.compute, self.capacity, target.endpoints | {target.resource}, window)
        held, idle = node_compute.weights(uses, caps, cpu_price=self.cpu_price, memory_price=self.memory_price)
        if not any(w > 0 for _, w in held) and not idle:
            return None
        by_dst = self._in(window)[1]
        consumed: list[tuple[Usage, Fraction]] = []
        for u, w in held:
            inbound = [x for x in by_dst.get(u.workload, ()) if x.busy_us > 0 or x.requests > 0]
            if inbound and not u.tenant:
                # what the workload spent its CPU on: the calls it served, by the time it took to serve each (by
                # requests when no time was measured); each call goes by its own tenant, else its caller's mix
                timed = any(x.busy_us for x in inbound)
                served = [(x, x.busy_us if timed else x.requests) for x in inbound]
                total = sum(v for _, v in served)
                consumed += [(x, w * v / total) for x, v in served if v > 0]
                continue
            # no calls served (a queue worker, a job) or a label's tenant: the workload's own row, by its label's
            # tenant, else its inbound mix (queues), else platform for background work (``attribute``)
            own = Usage(
                src_workload=u.workload,
                dst=u.node,
                tenant=u.tenant,
                tenant_method=u.tenant_method,
                feature=u.feature,
                start_us=u.start_us,
                end_us=u.end_us,
            )
            consumed.append((own, w))
        out = attribute(consumed, self.solution(window), self.background)
        if idle:
            out[("", "", "", "idle")] = out.get(("", "", "", "idle"), Fraction(0)) + idle
        return "cpu_memory", out

    # -- lines ---------------------------------------------------------------------------------------------------
    def tag_tenant(self, line: CostLine) -> tuple[str, str] | None:
        lowered = {k.lower(): v for k, v in line.tags.items()}
        for key in self.tag_keys:
            value = lowered.get(key, "").strip()
            if value:
                return key, value
        return None

    def allocate(self, line: CostLine, target: Target | None) -> list[Allocation]:
        """The allocations of one line; they sum to ``line.amount`` exactly."""
        resource = target.resource if target else ""
        tagged = self.tag_tenant(line)
        if tagged is not None:
            key, tenant = tagged
            return [_whole(line, tenant, "direct", f"tag:{key}", resource)]
        if target is None:
            return [_whole(line, "", "unallocated", "unmatched", "")]
        metric, shares = self.weights(target, line.window, line)
        if not shares:
            return [_whole(line, "", "unallocated", f"no {metric} observed", resource)]
        return split(line, shares, metric, resource)

    def allocate_all(self, lines: Iterable[CostLine], targets: Mapping[str, Target | None]) -> list[Allocation]:
        out: list[Allocation] = []
        for line in lines:
            out.extend(self.allocate(line, targets.get(line.line_id)))
        return out


def _integer_weights(shares: Mapping[Key, Fraction]) -> dict[Key, int]:
    """Exact fractions as the smallest positive integers in the same proportion (zero shares left out)."""
    positive = {k: v for k, v in shares.items() if v > 0}
    if not positive:
        return {}
    lcm = math.lcm(*(v.denominator for v in positive.values()))
    scaled = {k: v.numerator * (lcm // v.denominator) for k, v in positive.items()}
    g = math.gcd(*scaled.values())
    return {k: v // g for k, v in scaled.items()}


def _whole(line: CostLine, tenant: str, method: Category, basis: str, resource: str) -> Allocation:
    return Allocation(
        line_id=line.line_id,
        tenant=tenant,
        method=method,
        amount=line.amount,
        currency=line.currency,
        resource=resource,
        basis=basis,
    )


def integer_weights(shares: Sequence[Fraction | int]) -> list[int]:
    """Positive shares as integers in the same proportion (integers as they are)."""
    if all(type(v) is int for v in shares):
        return list(shares)  # type: ignore[arg-type]
    fractions = [Fraction(v) for v in shares]
    denominator = math.lcm(*(f.denominator for f in fractions))
    return [f.numerator * (denominator // f.denominator) for f in fractions]


def split(line: CostLine, shares: Mapping[_Key, Fraction | int], basis: str, resource: str = "") -> list[Allocation]:
    """Split ``line.amount`` by exact ``shares`` with largest remainders; parts sum to the amount exactly.

    Zero parts are dropped (a tenant whose share rounds to nothing gets no row); a line of amount 0 keeps one row
    so that it stays visible.
    """
    keys = sorted(k for k, v in shares.items() if v > 0)
    if not keys:
        return [_whole(line, "", "unallocated", f"no {basis} observed", resource)]
    scale = scale_of(line.amount)
    parts = largest_remainder(to_units(line.amount, scale), integer_weights([shares[k] for k in keys]))
    out = [
        Allocation(
            line_id=line.line_id,
            tenant=tenant,
            method=method,
            amount=from_units(part, scale) if part else Decimal(0),
            currency=line.currency,
            feature=feature,
            agent=agent,
            resource=resource,
            basis=basis,
        )
        for (tenant, feature, agent, method), part in zip(keys, parts, strict=True)
        if part
    ]
    return out or [_whole(line, "", "unallocated", basis, resource)]
