"""The one tenant solver: who a call without a tenant was made for, exactly, through cycles and through queues.

Reads consumption rows (``usage.Usage``) and queue traffic (``usage.QueueUse``) of a span of time; emits each
workload's inbound tenant mix as exact fractions, and the shares of any weighted set of rows. Billing (every cost
line), ``costmesh report`` (the same code on rows built from a capture) and the API (``attribute`` over usage rows)
call it; nothing else derives tenants from consumption.

Each untagged call goes to tenants, in order: by the tenant it carries (``direct`` for a tenant read on the call,
``trace``/``propagated`` as the sensor joined it); else by its caller's inbound tenant mix (``propagated``), where a
workload's inbound is the calls into it — tagged calls by their tenant, untagged ones by *their* caller's mix — and a
queue consumer's inbound is the producer mix of the queues it consumed; else ``platform`` when the caller is
background work; else ``unallocated``. A mix is of (tenant, feature, agent): what a consumer or a callee does is
charged to the features and agents its work came from, unless its own call names one.

Queues, two shapes. A broker protocol (kafka, amqp, nats: ``QueueUse`` rows) names producers and consumers of a
topic; producers count over ``queue_window_us`` before the span as well as in it (what a consumer works off was
queued earlier). A queue behind an HTTP API (SQS-like: producers POST messages, a worker polls for them) is a
destination named as a ``queue`` resource in the config (``queue_endpoints``): every caller of it is a producer
except an untagged caller that nothing with a tenant reaches by calls — a worker, which nobody calls — and which is
not background work: that one is its consumer. Read to a fixed point, so a worker that consumes one queue and
produces to another is that queue's producer. (An HTTP queue's traffic carries no topic here, so several queues
behind one endpoint are one queue.)

Weights of a mix (why): a workload's inbound calls weigh by the server time they took (``busy_us``) when every one
of them measured it, requests otherwise. Server time is the cost a request drove through the workload — its own
handling and the downstream calls it waited for — so a tenant whose few requests are expensive upstream is charged
for what they cause downstream, where counting requests would charge it as much as a cheap one. A queue's mix
weighs by messages (a message is a job, whatever the send cost), a consumer's inbound from queues by messages
received (a consumer with calls into it as well weighs everything by requests: one unit for all its inbound).

Exact: the mixes are the solution of T_w = D_w + Σ_src a(src→w) T_src over the workloads and topics that pass a mix
on, solved as a linear system in fractions (Gauss-Jordan). Every node there is reachable from a tagged call, so the
system is that of an absorbing chain and has one solution, cycles included. No float, no tolerance, no iteration cap.
Billing needs the shares of a resource only up to proportion: ``weights`` gives them as the smallest integers in the
exact proportion (each solved mix held once as integer numerators over one denominator), which is what a
largest-remainder split reads, at integer speed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from fractions import Fraction

from .usage import DIRECT_METHODS, QUEUE_PROTOCOLS, Category, QueueUse, Usage

#: (tenant, feature, agent, category): whom a share goes to and how that was found.
Key = tuple[str, str, str, Category]
Mix = dict[Key, Fraction]
#: (tenant, feature, agent): what a mix is of.
Who = tuple[str, str, str]

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


class _Inbound:
    """The inbound of one node: tagged weight per key and untagged weight per caller, in requests and server time."""

    __slots__ = ("calls", "direct", "queue", "timed")

    def __init__(self) -> None:
        self.direct: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
        self.calls: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.timed = True  # every inbound row measured server time
        self.queue = False  # a queue, or a consumer of one: weighs by messages

    def add(self, key: Key | None, src: str, requests: int, busy_us: int) -> None:
        cell = self.direct[key] if key is not None else self.calls[src]
        cell[0] += requests
        cell[1] += busy_us
        if busy_us <= 0:
            self.timed = False

    def weights(self) -> tuple[dict[Key, int], dict[str, int]]:
        by = 1 if self.timed and not self.queue else 0
        return {k: v[by] for k, v in self.direct.items()}, {s: v[by] for s, v in self.calls.items()}


class Solution:
    """Solved inbound mixes of one span: ``mix`` (exact fractions) and ``integer_mix`` of any workload or topic,
    computed when first asked (a span has thousands of resources; billing reads the mixes of callers only).

    ``direct``/``calls``: the weighed inbound of the nodes that pass a mix on (callers of untagged calls, queues and
    their consumers); ``rest``: the rows into every other node, read only when that node's mix is asked for.
    """

    def __init__(
        self,
        direct: Mapping[str, Mapping[Key, int]],
        calls: Mapping[str, Mapping[str, int]],
        rest: Iterable[Usage] = (),
        passers: Collection[str] = (),
    ) -> None:
        self._direct, self._calls = direct, calls
        self._rest = list(rest)
        self._rest_by_dst: dict[str, list[Usage]] | None = None
        callees: dict[str, set[str]] = defaultdict(set)
        for dst, srcs in calls.items():
            for src in srcs:
                callees[src].add(dst)
        self.known = _reach(direct, callees)
        # Unknowns are only the nodes that pass a mix on (callers of untagged calls): every other node's mix follows
        # from theirs directly. Solving over all of ``known`` (every resource called) would be the same answer in
        # O(resources^3) fraction work per span: minutes instead of milliseconds for a few thousand resources.
        order = sorted(w for w in self.known if w in callees or w in passers)
        index = {w: i for i, w in enumerate(order)}
        empty: dict[str, int] = {}
        matrix = [[Fraction(int(i == j)) for j in range(len(order))] for i in range(len(order))]
        rhs: list[dict[Who, Fraction]] = [defaultdict(Fraction) for _ in order]
        for w in order:
            i = index[w]
            known_calls = {s: r for s, r in calls.get(w, empty).items() if s in self.known and r}
            total = sum(direct.get(w, empty).values()) + sum(known_calls.values())
            for src, r in known_calls.items():
                matrix[i][index[src]] -= Fraction(r, total)
            for key, r in direct.get(w, {}).items():
                if r:
                    rhs[i][key[:3]] += Fraction(r, total)
        self._shares: dict[str, dict[Who, Fraction]] = dict(zip(order, _solve(matrix, rhs), strict=True))
        self._mixes: dict[str, Mix] = {}
        self._ints: dict[str, tuple[int, list[tuple[Who, int]]]] = {}

    def mix(self, w: str) -> Mix:
        """Tenant shares of the inbound of ``w`` (summing to 1); ``{}`` when nothing with a tenant reaches it."""
        got = self._mixes.get(w)
        if got is None:
            got = self._mixes[w] = self._mix(w)
        return got

    def _mix(self, w: str) -> Mix:
        if w in self._direct or w in self._calls:
            direct, calls = self._direct.get(w, {}), self._calls.get(w, {})
        else:
            if self._rest_by_dst is None:
                self._rest_by_dst = defaultdict(list)
                for u in self._rest:
                    self._rest_by_dst[u.dst].append(u)
            inbound = _Inbound()
            for u in self._rest_by_dst.get(w, ()):
                inbound.add(tagged(u), u.src_workload, u.requests, u.busy_us)
            direct, calls = inbound.weights()
        known_calls = {s: r for s, r in calls.items() if s in self._shares and r}
        total = sum(direct.values()) + sum(known_calls.values())
        if not total:
            return {}
        mix: Mix = defaultdict(Fraction)
        for key, r in direct.items():
            if r:
                mix[key] += Fraction(r, total)
        for src, r in known_calls.items():
            for who, share in self._shares[src].items():
                mix[(*who, "propagated")] += share * r / total
        return {k: v for k, v in mix.items() if v}

    def integer_mix(self, w: str) -> tuple[int, list[tuple[Who, int]]]:
        """The mix ``w`` passes on, as (denominator, [(tenant/feature/agent, numerator)]): integers, for ``weights``."""
        got = self._ints.get(w)
        if got is None:
            by_who: dict[Who, Fraction] = defaultdict(Fraction)
            for key, share in self.mix(w).items():
                by_who[key[:3]] += share
            d = math.lcm(*(f.denominator for f in by_who.values())) if by_who else 1
            got = self._ints[w] = (d, [(who, f.numerator * (d // f.denominator)) for who, f in sorted(by_who.items())])
        return got

    def all_mixes(self) -> dict[str, Mix]:
        nodes = set(self._direct) | set(self._calls) | {u.dst for u in self._rest}
        return {w: m for w in sorted(nodes) if (m := self.mix(w))}


def _reach(direct: Iterable[str], callees: Mapping[str, set[str]]) -> set[str]:
    known = set(direct)
    frontier = list(known)
    while frontier:
        for dst in callees.get(frontier.pop(), ()):
            if dst not in known:
                known.add(dst)
                frontier.append(dst)
    return known


def solve(
    usage: Iterable[Usage],
    queues: Iterable[QueueUse] = (),
    *,
    queue_endpoints: Collection[str] = (),
    background: Collection[str] = (),
) -> Solution:
    """The inbound mixes of a span (see the module docstring for the weights and the two shapes of queue).

    ``usage``: the calls of the span; ``queues``: the queue traffic to read topics from (producers over the queue
    window, consumers in the span: the caller chooses the rows); ``queue_endpoints``: destinations that are queues
    behind an HTTP API; ``background``: workloads whose work is platform (never a queue's consumer). Callers
    reachable from no tagged call have no mix and are left out of a workload's total, as unknown.
    """
    usage = list(usage)
    rows = [u for u in usage if u.requests > 0]
    queue_rows = [q for q in queues if q.requests > 0]
    # the nodes whose inbound decides a mix passed on: callers of untagged calls, queues, consumers of topics
    passers = {u.src_workload for u in usage if tagged(u) is None}
    passers |= {q.workload for q in queue_rows if q.role == "consumer" or tagged(q) is None}
    passers |= {u.dst for u in rows if u.dst in queue_endpoints and u.protocol not in QUEUE_PROTOCOLS}
    inbound: dict[str, _Inbound] = defaultdict(_Inbound)
    to_queue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # untagged HTTP queue callers
    rest: list[Usage] = []
    for u in rows:
        if u.dst not in passers:
            rest.append(u)
            continue
        key = tagged(u)
        if u.dst in queue_endpoints and u.protocol not in QUEUE_PROTOCOLS:
            inbound[u.dst].queue = True
            if key is None:
                to_queue[u.dst][u.src_workload] += u.requests
                continue
        inbound[u.dst].add(key, u.src_workload, u.requests, u.busy_us)
    for q in queue_rows:
        topic = TOPIC_PREFIX + q.topic
        if q.role == "consumer":
            inbound[q.workload].add(None, topic, q.requests, 0)
            inbound[q.workload].queue = True
            continue
        inbound[topic].add(tagged(q), q.workload, q.requests, 0)
        inbound[topic].queue = True
    if to_queue:
        for q, src, role in _queue_roles(inbound, to_queue, frozenset(background)):
            requests = to_queue[q][src]
            if role == "producer":
                inbound[q].add(None, src, requests, 0)
            else:
                inbound[src].add(None, q, requests, 0)
                inbound[src].queue = True
    direct: dict[str, dict[Key, int]] = {}
    calls: dict[str, dict[str, int]] = {}
    for node, inb in inbound.items():
        d, c = inb.weights()
        if d:
            direct[node] = d
        if c:
            calls[node] = c
    return Solution(direct, calls, rest, passers)


def _queue_roles(
    inbound: Mapping[str, _Inbound], to_queue: Mapping[str, Mapping[str, int]], background: frozenset[str]
) -> list[tuple[str, str, str]]:
    """(queue, caller, role) of the untagged callers of HTTP queues, read to the fixed point: a caller that a tagged
    call reaches is a producer (an edge caller → queue); one that none reaches is a consumer (queue → caller) of each
    queue with a mix, unless it is background work; a queue's mix and its consumers' then reach further callers."""
    callees: dict[str, set[str]] = defaultdict(set)
    for dst, inb in inbound.items():
        for src in inb.calls:
            callees[src].add(dst)
    tagged_nodes = [n for n, inb in inbound.items() if inb.direct]
    decided: dict[tuple[str, str], str] = {}
    while True:
        known = _reach(tagged_nodes, callees)
        changed = False
        for q, callers in to_queue.items():
            for src in callers:
                if (q, src) in decided:
                    continue
                if src in known:
                    decided[q, src] = "producer"
                    callees[src].add(q)
                    changed = True
                elif q in known and src not in background:
                    decided[q, src] = "consumer"
                    callees[q].add(src)
                    changed = True
        if not changed:
            return [(q, src, role) for (q, src), role in sorted(decided.items())]


def inbound_mixes(
    usage: Iterable[Usage],
    queues: Iterable[QueueUse] = (),
    *,
    queue_endpoints: Collection[str] = (),
    background: Collection[str] = (),
) -> dict[str, Mix]:
    """Inbound tenant mix of every workload (and topic) the rows reach from a tagged call, in exact fractions
    (``solve`` says which rows count and how they weigh). What arrives through a caller or a queue is ``propagated``."""
    return solve(usage, queues, queue_endpoints=queue_endpoints, background=background).all_mixes()


def _solve(matrix: list[list[Fraction]], rhs: list[dict[Who, Fraction]]) -> list[dict[Who, Fraction]]:
    """Solve ``matrix · X = rhs`` exactly (Gauss-Jordan on fractions, ``rhs`` rows sparse); the caller guarantees
    ``matrix`` invertible."""
    n = len(matrix)
    a = [row[:] for row in matrix]
    b = [dict(row) for row in rhs]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        b[col], b[pivot] = b[pivot], b[col]
        lead = a[col][col]
        if lead != 1:
            a[col] = [v / lead for v in a[col]]
            b[col] = {k: v / lead for k, v in b[col].items()}
        for r in range(n):
            factor = a[r][col]
            if r != col and factor:
                a[r] = [v - factor * p for v, p in zip(a[r], a[col], strict=True)]
                row = b[r]
                for k, v in b[col].items():
                    row[k] = row.get(k, 0) - factor * v
    return [{k: v for k, v in row.items() if v} for row in b]


def attribute(
    consumed: Iterable[tuple[Usage, int | Fraction]],
    mixes: Mapping[str, Mix] | Solution,
    background: Collection[str] = frozenset(),
) -> dict[Key, Fraction]:
    """Exact shares of weighted rows per (tenant, feature, agent, category): each row by its own tenant, else by its
    caller's inbound mix (its own feature/agent win over the mix's), else platform or unallocated."""
    mix_of = mixes.mix if isinstance(mixes, Solution) else (lambda w: mixes.get(w, {}))
    acc: dict[Key, Fraction] = defaultdict(Fraction)
    for u, weight in consumed:
        if weight <= 0:
            continue
        own = tagged(u)
        if own is not None:
            acc[own] += weight
            continue
        if u.tenant_method != "platform":
            mix = mix_of(u.src_workload)
            if mix:
                for (tenant, feature, agent, _m), share in mix.items():
                    acc[(tenant, u.feature or feature, u.agent or agent, "propagated")] += share * weight
                continue
        acc[_unattributed(u, background)] += weight
    return dict(acc)


def weights(
    consumed: Iterable[tuple[Usage, int]], solution: Solution, background: Collection[str] = frozenset()
) -> dict[Key, int]:
    """``attribute`` of integer-weighted rows as the smallest positive integers in the same proportion (keys with
    no share left out): what a largest-remainder split needs, without a fraction per row."""
    own: list[tuple[Key, int]] = []
    passed: list[tuple[Usage, int, tuple[int, list[tuple[Who, int]]]]] = []
    lcm = 1
    for u, weight in consumed:
        if weight <= 0:
            continue
        key = tagged(u)
        if key is None and u.tenant_method != "platform":
            mix = solution.integer_mix(u.src_workload)
            if mix[1]:
                lcm = math.lcm(lcm, mix[0])
                passed.append((u, weight, mix))
                continue
        own.append((key or _unattributed(u, background), weight))
    acc: dict[Key, int] = defaultdict(int)
    for key, weight in own:
        acc[key] += weight * lcm
    for u, weight, (d, nums) in passed:
        scale = weight * (lcm // d)
        for (tenant, feature, agent), num in nums:
            acc[(tenant, u.feature or feature, u.agent or agent, "propagated")] += num * scale
    g = math.gcd(*acc.values()) if acc else 1
    return {k: v // g for k, v in acc.items() if v}


def _unattributed(u: Usage, background: Collection[str]) -> Key:
    if u.tenant_method == "platform" or u.src_workload in background:
        return ("", u.feature, u.agent, "platform")
    return ("", u.feature, u.agent, "unallocated")
