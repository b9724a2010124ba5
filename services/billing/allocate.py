"""The allocation engine: splits each cost line over tenants by observed consumption. Pure: no I/O, no clock.

Reads cost lines, the observed resource each maps to (``Target``, from ``mapping``) and the consumption in the line's
charge window (``Usage`` rows); emits ``Allocation`` rows, each with its ``method`` and ``basis``.

For a line of resource R over window P (DESIGN.md, "Allocation, in one paragraph"):
1. Who consumed R in P, by the metric fitting R's kind: database → server time (``busy_us``) when measured, else
   requests; queue → bytes per topic; NAT gateway → bytes to destinations outside the cluster; cross-AZ → bytes between
   workloads in different zones; compute → server time of the workloads on the node (CPU proxy), else requests;
   AI API → tokens × price (``price`` argument); storage → bytes; other → requests.
2. Each consuming record goes to a tenant by the tenant on the call (``direct``), by trace id (``trace``), by the
   inbound tenant mix of the calling workload in P, recursively along the graph (``propagated``; cycles are solved
   exactly as a linear system over the workloads, see ``Allocator.window_mixes``), else to ``platform`` when the
   caller is background work, else ``unallocated``.
3. A tenant tag on the bill line itself (``tenant``/``customer``…) is a direct signal and wins; a line mapped to no
   observed resource, or with no consumption in P, is ``unallocated`` whole.
4. Shares are exact fractions until the end, then split with largest remainders in integer units of the line's own
   precision, so **the allocations of a line sum to its amount exactly**. Keys are sorted first: deterministic.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from fractions import Fraction

import msgspec

from costmesh.common.money import from_units, largest_remainder, scale_of, to_units

from .model import DIRECT_METHODS, Allocation, Category, CostLine, ResourceKind, Usage, Window

#: ``price(provider, model, tokens_in, tokens_out, tokens_cached, tokens_reasoning) -> micro-units``; the shape of
#: ``PriceTable.cost_micros`` (attributor issue), passed in so the engine does not depend on where prices come from.
PriceFn = Callable[[str, str, int, int, int, int], int]

#: Bill tags read as the tenant of a line, first found wins (case-insensitive keys).
DEFAULT_TAG_KEYS: tuple[str, ...] = ("tenant", "tenant_id", "customer", "customer_id", "costmesh:tenant")

_Key = tuple[str, str, str, Category]  # tenant, feature, agent, method


def no_price(_provider: str, _model: str, _ti: int, _to: int, _tc: int, _tr: int) -> int:
    return 0


class Target(msgspec.Struct, frozen=True):
    """The observed resource a cost line is for: its name, kind and the names it is seen under (``Usage.dst``)."""

    resource: str
    kind: ResourceKind
    endpoints: frozenset[str] = frozenset()
    reason: str = ""


def _bytes(u: Usage) -> int:
    return u.bytes_in + u.bytes_out


class Allocator:
    """Allocates lines against one set of consumption rows; caches per-window indexes and inbound mixes."""

    def __init__(
        self,
        usage: Iterable[Usage],
        *,
        price: PriceFn = no_price,
        background: Iterable[str] = (),
        zones: Mapping[str, str] | None = None,
        internal: Iterable[str] | None = None,
        tag_keys: Sequence[str] = DEFAULT_TAG_KEYS,
    ) -> None:
        self.usage = sorted(usage, key=lambda u: (u.start_us, u.src_workload, u.dst, u.tenant, u.feature, u.agent))
        # Rows sorted by start plus the longest row's length bound the rows a window can overlap (bisect, not scan).
        self._starts = [u.start_us for u in self.usage]
        self._longest = max((u.end_us - u.start_us for u in self.usage), default=0)
        self.price = price
        self.background = frozenset(background)
        self.zones = dict(zones or {})
        # Names that are workloads of ours: anything called by a workload that is not among them is outside.
        self.internal = (
            frozenset(internal)
            if internal is not None
            else frozenset(u.src_workload for u in self.usage) | frozenset(self.zones)
        )
        self.tag_keys = tuple(k.lower() for k in tag_keys)
        self._windows: dict[Window, tuple[list[Usage], dict[str, list[Usage]]]] = {}
        self._mixes: dict[Window, dict[str, dict[_Key, Fraction]]] = {}

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

    def consumption(self, target: Target, window: Window) -> tuple[str, list[tuple[Usage, int]]]:
        """The records that consumed ``target`` in ``window`` with their weight, and the metric's name."""
        rows, by_dst = self._in(window)
        names = target.endpoints | {target.resource}
        to_target = [u for name in sorted(names) for u in by_dst.get(name, ())]
        kind = target.kind
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
        if kind == "ai_api":
            ai = to_target or [u for u in rows if u.provider and u.provider in names]
            priced = [
                (u, self.price(u.provider, u.model, u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning))
                for u in ai
            ]
            if any(w for _, w in priced):
                return "tokens_cost", priced
            return "tokens", [(u, u.tokens_in + u.tokens_out + u.tokens_reasoning) for u in ai]
        return "requests", [(u, u.requests) for u in to_target]

    def is_external(self, name: str) -> bool:
        """A destination outside the cluster: not a known workload or resource, not a private address."""
        if name in self.internal:
            return False
        host = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return True
        return not (address.is_private or address.is_loopback or address.is_link_local)

    # -- tenants -------------------------------------------------------------------------------------------------
    def window_mixes(self, window: Window) -> dict[str, dict[_Key, Fraction]]:
        """Inbound tenant mix of every workload in ``window`` (by requests), cycles included, in exact fractions.

        A workload's tenant share is its tagged inbound calls plus its untagged inbound calls weighted by each caller's
        own share: T_w = D_w + sum_src a(src→w) T_src. Over the workloads reachable from a tagged call this is
        (I - A) T = D, solved exactly by Gaussian elimination (the system is that of an absorbing chain: every such
        workload leads back to a tagged call, so I - A is invertible). Callers reachable from no tagged call have no
        mix and are left out of a workload's total, as unknown. Keys carry the method the tenant was found by on the
        inbound call; what arrives through a caller is ``propagated``.
        """
        cached = self._mixes.get(window)
        if cached is not None:
            return cached
        _, by_dst = self._in(window)
        direct: dict[str, dict[_Key, int]] = defaultdict(lambda: defaultdict(int))
        calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for dst, rows in by_dst.items():
            for u in rows:
                if not u.requests:
                    continue
                key = _tagged(u)
                if key is not None:
                    direct[dst][key] += u.requests
                else:
                    calls[dst][u.src_workload] += u.requests
        callees: dict[str, set[str]] = defaultdict(set)
        for dst, srcs in calls.items():
            for src in srcs:
                callees[src].add(dst)
        known, frontier = set(direct), list(direct)
        while frontier:
            for dst in callees.get(frontier.pop(), ()):
                if dst not in known:
                    known.add(dst)
                    frontier.append(dst)
        # Unknowns are only the workloads that pass a mix on (callers of untagged calls): every other workload's mix
        # follows from theirs directly. Solving over all of ``known`` (every resource called) is the same answer in
        # O(resources^3) Fraction work per window: minutes instead of milliseconds for a few thousand resources.
        order = sorted(w for w in known if w in callees)
        index = {w: i for i, w in enumerate(order)}
        tenants = sorted({k[:3] for d in direct.values() for k in d})
        column = {t: j for j, t in enumerate(tenants)}
        totals = {
            w: sum(direct[w].values()) + sum(r for src, r in calls[w].items() if src in known) for w in sorted(known)
        }
        matrix = [[Fraction(int(i == j)) for j in range(len(order))] for i in range(len(order))]
        rhs = [[Fraction(0)] * len(tenants) for _ in order]
        for w in order:
            i, total = index[w], totals[w]
            for src, r in calls[w].items():
                if src in known:
                    matrix[i][index[src]] -= Fraction(r, total)
            for key, r in direct[w].items():
                rhs[i][column[key[:3]]] += Fraction(r, total)
        shares = _solve(matrix, rhs)
        mixes: dict[str, dict[_Key, Fraction]] = {}
        for w in sorted(known):
            total = totals[w]
            mix: dict[_Key, Fraction] = defaultdict(Fraction)
            for key, r in direct[w].items():
                mix[key] += Fraction(r, total)
            for src, r in calls[w].items():
                if src in known:
                    for t, share in zip(tenants, shares[index[src]], strict=True):
                        if share:
                            mix[(*t, "propagated")] += share * r / total
            mixes[w] = dict(mix)
        self._mixes[window] = mixes
        return mixes

    def inbound_mix(self, workload: str, window: Window) -> dict[_Key, Fraction]:
        """Tenant shares of the calls into ``workload`` in ``window``; ``{}`` when nothing is known."""
        return self.window_mixes(window).get(workload, {})

    def _shares(self, consumed: list[tuple[Usage, int]], window: Window) -> dict[_Key, Fraction]:
        acc: dict[_Key, Fraction] = defaultdict(Fraction)
        for u, weight in consumed:
            if weight <= 0:
                continue
            direct = _tagged(u)
            if direct is not None:
                tenant, feature, agent, method = direct
                acc[(tenant, feature, agent, method)] += weight
                continue
            if u.tenant_method != "platform":
                mix = self.inbound_mix(u.src_workload, window)
                if mix:
                    for (tenant, feature, agent, _m), share in mix.items():
                        acc[(tenant, u.feature or feature, u.agent or agent, "propagated")] += share * weight
                    continue
            if u.tenant_method == "platform" or u.src_workload in self.background:
                acc[("", u.feature, u.agent, "platform")] += weight
            else:
                acc[("", u.feature, u.agent, "unallocated")] += weight
        return acc

    def shares(self, target: Target, window: Window) -> tuple[str, dict[_Key, Fraction]]:
        """Exact shares of ``target`` in ``window`` per (tenant, feature, agent, method), and the metric's name."""
        metric, consumed = self.consumption(target, window)
        return metric, self._shares(consumed, window)

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
        metric, shares = self.shares(target, line.window)
        if not shares:
            return [_whole(line, "", "unallocated", f"no {metric} observed", resource)]
        return split(line, shares, metric, resource)

    def allocate_all(self, lines: Iterable[CostLine], targets: Mapping[str, Target | None]) -> list[Allocation]:
        out: list[Allocation] = []
        for line in lines:
            out.extend(self.allocate(line, targets.get(line.line_id)))
        return out


def _solve(matrix: list[list[Fraction]], rhs: list[list[Fraction]]) -> list[list[Fraction]]:
    """Solve ``matrix · X = rhs`` exactly (Gauss-Jordan on fractions); the caller guarantees ``matrix`` invertible."""
    n = len(matrix)
    a = [row[:] + extra[:] for row, extra in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        lead = a[col][col]
        a[col] = [v / lead for v in a[col]]
        for r in range(n):
            factor = a[r][col]
            if r != col and factor:
                a[r] = [v - factor * p for v, p in zip(a[r], a[col], strict=True)]
    return [row[n:] for row in a]


def _tagged(u: Usage) -> _Key | None:
    """The tenant a record carries itself, with its category, or None when it has none."""
    if not u.tenant:
        return None
    if u.tenant_method in DIRECT_METHODS:
        return (u.tenant, u.feature, u.agent, "direct")
    if u.tenant_method in ("trace", "propagated"):
        return (u.tenant, u.feature, u.agent, u.tenant_method)  # type: ignore[return-value]
    return None


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


def split(line: CostLine, shares: Mapping[_Key, Fraction | int], basis: str, resource: str = "") -> list[Allocation]:
    """Split ``line.amount`` by exact ``shares`` with largest remainders; parts sum to the amount exactly.

    Zero parts are dropped (a tenant whose share rounds to nothing gets no row); a line of amount 0 keeps one row
    so that it stays visible.
    """
    keys = sorted(k for k, v in shares.items() if v > 0)
    if not keys:
        return [_whole(line, "", "unallocated", f"no {basis} observed", resource)]
    fractions = [Fraction(shares[k]) for k in keys]
    denominator = math.lcm(*(f.denominator for f in fractions))
    weights = [f.numerator * (denominator // f.denominator) for f in fractions]
    scale = scale_of(line.amount)
    parts = largest_remainder(to_units(line.amount, scale), weights)
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
