"""The one tenant solver: who a call without a tenant was made for, exactly, through cycles and through queues.

Reads consumption rows (``usage.Usage``) and queue traffic (``usage.QueueUse``) of a span of time; emits each
workload's inbound tenant mix as exact fractions, and the shares of any weighted set of rows. Billing (every cost
line), ``costmesh report`` (the same code on rows built from a capture) and the API (``attribute`` over usage rows)
call it; nothing else derives tenants from consumption.

Each untagged call goes to tenants, in order: by the tenant it carries (``direct`` for a tenant read on the call,
``trace``/``propagated`` as the sensor joined it); else by its caller's inbound tenant mix (``propagated``), where a
workload's inbound is the calls into it — tagged calls by their tenant, untagged ones by *their* caller's mix — and a
queue consumer's inbound is the producer tenant mix of the topics it consumed (producers over ``queue_window_us``
before the span as well as in it: what it works off was queued earlier); else ``platform`` when the caller is
background work; else ``unallocated``. Weights are requests (calls, messages).

Exact: the mixes are the solution of T_w = D_w + Σ_src a(src→w) T_src over the workloads and topics that pass a mix
on, solved as a linear system in fractions (Gauss-Jordan). Every node there is reachable from a tagged call, so the
system is that of an absorbing chain and has one solution, cycles included. No float, no tolerance, no iteration cap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from fractions import Fraction

from .usage import DIRECT_METHODS, Category, QueueUse, Usage

#: (tenant, feature, agent, category): whom a share goes to and how that was found.
Key = tuple[str, str, str, Category]
Mix = dict[Key, Fraction]

#: Graph name of a topic (as in the live graph), so a topic and a workload never share a node.
TOPIC_PREFIX = "topic:"


def tagged(u: Usage | QueueUse) -> Key | None:
    """The tenant a row carries itself, with its category, or None when it has none."""
    if not u.tenant:
        return None
    feature = getattr(u, "feature", "")
    agent = getattr(u, "agent", "")
    if u.tenant_method in DIRECT_METHODS:
        return (u.tenant, feature, agent, "direct")
    if u.tenant_method in ("trace", "propagated"):
        return (u.tenant, feature, agent, u.tenant_method)  # type: ignore[return-value]
    return None


def inbound_mixes(usage: Iterable[Usage], queues: Iterable[QueueUse] = ()) -> dict[str, Mix]:
    """Inbound tenant mix of every workload (and topic) the rows reach from a tagged call, in exact fractions.

    ``usage``: the calls of the span; ``queues``: the queue traffic to read topics from (producers over the queue
    window, consumers in the span: the caller chooses the rows). Callers reachable from no tagged call have no mix
    and are left out of a workload's total, as unknown. What arrives through a caller or a topic is ``propagated``.
    """
    direct: dict[str, dict[Key, int]] = defaultdict(lambda: defaultdict(int))
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u in usage:
        if u.requests <= 0:
            continue
        key = tagged(u)
        if key is not None:
            direct[u.dst][key] += u.requests
        else:
            calls[u.dst][u.src_workload] += u.requests
    for q in queues:
        if q.requests <= 0:
            continue
        topic = TOPIC_PREFIX + q.topic
        if q.role == "consumer":
            calls[q.workload][topic] += q.requests
            continue
        key = tagged(q)
        if key is not None:
            direct[topic][key] += q.requests
        else:
            calls[topic][q.workload] += q.requests
    return _solve_mixes(direct, calls)


def _solve_mixes(direct: Mapping[str, Mapping[Key, int]], calls: Mapping[str, Mapping[str, int]]) -> dict[str, Mix]:
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
    # Unknowns are only the nodes that pass a mix on (callers of untagged calls): every other node's mix follows
    # from theirs directly. Solving over all of ``known`` (every resource called) would be the same answer in
    # O(resources^3) fraction work per span: minutes instead of milliseconds for a few thousand resources.
    order = sorted(w for w in known if w in callees)
    index = {w: i for i, w in enumerate(order)}
    tenants = sorted({k[:3] for d in direct.values() for k in d})
    column = {t: j for j, t in enumerate(tenants)}
    empty: dict[str, int] = {}
    totals = {
        w: sum(direct.get(w, empty).values()) + sum(r for src, r in calls.get(w, empty).items() if src in known)
        for w in known
    }
    matrix = [[Fraction(int(i == j)) for j in range(len(order))] for i in range(len(order))]
    rhs = [[Fraction(0)] * len(tenants) for _ in order]
    for w in order:
        i, total = index[w], totals[w]
        for src, r in calls.get(w, empty).items():
            if src in known:
                matrix[i][index[src]] -= Fraction(r, total)
        for key, r in direct.get(w, {}).items():
            rhs[i][column[key[:3]]] += Fraction(r, total)
    shares = _solve(matrix, rhs)
    mixes: dict[str, Mix] = {}
    for w in sorted(known):
        total = totals[w]
        mix: Mix = defaultdict(Fraction)
        for key, r in direct.get(w, {}).items():
            mix[key] += Fraction(r, total)
        for src, r in calls.get(w, empty).items():
            if src in known:
                for t, share in zip(tenants, shares[index[src]], strict=True):
                    if share:
                        mix[(*t, "propagated")] += share * r / total
        mixes[w] = dict(mix)
    return mixes


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


def attribute(
    consumed: Iterable[tuple[Usage, int | Fraction]], mixes: Mapping[str, Mix], background: frozenset[str] = frozenset()
) -> dict[Key, Fraction]:
    """Exact shares of weighted rows per (tenant, feature, agent, category): each row by its own tenant, else by its
    caller's inbound mix (its own feature/agent win over the mix's), else platform or unallocated."""
    acc: dict[Key, Fraction] = defaultdict(Fraction)
    for u, weight in consumed:
        if weight <= 0:
            continue
        own = tagged(u)
        if own is not None:
            acc[own] += weight
            continue
        if u.tenant_method != "platform":
            mix = mixes.get(u.src_workload)
            if mix:
                for (tenant, feature, agent, _m), share in mix.items():
                    acc[(tenant, u.feature or feature, u.agent or agent, "propagated")] += share * weight
                continue
        if u.tenant_method == "platform" or u.src_workload in background:
            acc[("", u.feature, u.agent, "platform")] += weight
        else:
            acc[("", u.feature, u.agent, "unallocated")] += weight
    return dict(acc)
