"""Consumption as the attribution model reads it: hourly rows of calls, queue traffic and AI tokens.

The attributor stores these per minute and rolls them up per hour (``consumption_hourly``, ``queue_hourly``,
``ai_usage_hourly``); billing allocates from the hourly rows only, so a billing period allocates the same whether its
minutes are still kept or long expired. ``costmesh report`` builds the very same hourly rows from call records in
memory (``hourly_from_records``), so a report and the live system read identical consumption.

Times are integer microseconds since the epoch; every measure is an integer.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import msgspec

from .schemas import CONSUMPTION_KEY, CapacitySample, ComputeSample, ObservedCall

HOUR_US: Final = 3_600_000_000

#: The allocation categories, always all shown: measured on the call (``direct``), joined by trace id (``trace``),
#: through the caller's inbound tenant mix (``propagated``), modeled background work (``platform``), node capacity
#: no workload used or requested (``idle``, OpenCost's idle: a node line's part beyond its workloads), and the rest.
Category = Literal["direct", "trace", "propagated", "platform", "idle", "unallocated"]
CATEGORIES: Final[tuple[Category, ...]] = ("direct", "trace", "propagated", "platform", "idle", "unallocated")

#: Tenant methods (``schemas.TenantMethod``, plus a bill's ``tag``) that read the tenant on the call itself; a
#: workload label (``label``: ``costmesh.io/tenant`` on the pod) names the tenant of everything the workload does.
DIRECT_METHODS: Final = frozenset(
    {"header", "baggage", "jwt", "query", "path", "body", "db", "sni", "host", "tag", "label"}
)

#: Protocols whose destination is a topic or queue: kept as producer → topic → consumer.
QUEUE_PROTOCOLS: Final = ("kafka", "amqp", "nats")
CONSUME_VERBS: Final = frozenset({"fetch", "consume", "subscribe", "receive", "get", "deliver", "poll", "pull"})
PRODUCE_VERBS: Final = frozenset({"produce", "publish", "send", "put", "push"})


class Window(msgspec.Struct, frozen=True):
    """A half-open time interval ``[start_us, end_us)``."""

    start_us: int
    end_us: int

    def __post_init__(self) -> None:
        if self.end_us < self.start_us:
            raise ValueError(f"window ends ({self.end_us}) before it starts ({self.start_us})")

    def overlaps(self, start_us: int, end_us: int) -> bool:
        return start_us < self.end_us and end_us > self.start_us


class Usage(msgspec.Struct, kw_only=True):
    """Consumption of one destination by one caller for one tenant/feature/agent over a window (summed records).

    The fields of ``consumption_hourly`` (and of ``ai_usage_hourly`` for AI rows, which also name ``provider`` and
    ``model``). Token fields mean what ``ObservedCall`` says they mean.
    """

    src_workload: str
    dst: str
    protocol: str = ""
    tenant: str = ""
    tenant_method: str = "unallocated"
    feature: str = ""
    agent: str = ""
    start_us: int = 0
    end_us: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    busy_us: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_reasoning: int = 0
    provider: str = ""
    model: str = ""


class QueueUse(msgspec.Struct, kw_only=True):
    """Messages one workload produced to or consumed from one topic for one tenant, feature and agent over a window
    (``queue_hourly``): a consumer's work goes to the features and agents its messages were produced for."""

    topic: str
    role: Literal["producer", "consumer"]
    workload: str
    tenant: str = ""
    tenant_method: str = "unallocated"
    feature: str = ""
    agent: str = ""
    start_us: int = 0
    end_us: int = 0
    requests: int = 0
    bytes: int = 0


class ComputeUse(msgspec.Struct, kw_only=True):
    """CPU and memory one workload used and requested on one node over a window (``compute_hourly``), for one
    tenant when a workload label names it (else ``tenant`` is empty and the workload's inbound mix decides).

    Units in the names: ``cpu_usage_us`` is CPU time used (cgroup ``cpu.stat usage_usec``, or a process's
    ``utime + stime``), ``cpu_request_us`` the CPU time its request reserves (requested cores × time observed);
    memory in byte-seconds (bytes held × seconds), used (``memory.current`` / RSS) and requested.
    """

    node: str
    workload: str
    zone: str = ""
    tenant: str = ""
    tenant_method: str = "unallocated"
    feature: str = ""
    start_us: int = 0
    end_us: int = 0
    cpu_usage_us: int = 0
    cpu_request_us: int = 0
    memory_byte_s: int = 0
    memory_request_byte_s: int = 0


class NodeCapacity(msgspec.Struct, kw_only=True):
    """What one node could give over a window (``node_capacity_hourly``): CPU time (allocatable cores × time
    observed) and memory byte-seconds. What its workloads did not use or request of it is idle."""

    node: str
    zone: str = ""
    start_us: int = 0
    end_us: int = 0
    cpu_us: int = 0
    memory_byte_s: int = 0


class Consumption(msgspec.Struct):
    """What allocation reads for a span of time: calls, queue traffic (for propagation through topics), AI tokens by
    provider and model (for AI lines), and container/process CPU and memory with node capacity (for node lines)."""

    usage: list[Usage] = []
    queues: list[QueueUse] = []
    ai: list[Usage] = []
    compute: list[ComputeUse] = []
    capacity: list[NodeCapacity] = []


def queue_topic(operation: str, dst: str) -> str:
    """A queue call's topic: the operation without its verb (``produce orders`` → ``orders``), else the destination.
    The attributor's SQL (``apply._TOPIC_SQL``) says the same."""
    if not operation:
        return dst
    return operation.split(" ")[1] if " " in operation else operation


def queue_role(operation: str, bytes_in: int, bytes_out: int) -> Literal["producer", "consumer"]:
    """A queue call's role: by its verb when it has one, else by direction (more bytes sent: producing). The
    attributor's SQL (``apply._ROLE_SQL``) says the same."""
    verb = operation.split(" ", 1)[0].lower()
    if verb in CONSUME_VERBS:
        return "consumer"
    if verb in PRODUCE_VERBS:
        return "producer"
    return "producer" if bytes_out >= bytes_in else "consumer"


_TOKENS: Final = ("tokens_in", "tokens_out", "tokens_cached", "tokens_reasoning")


def hourly_usage(hour_us: int, fields: Mapping[str, str | int]) -> Usage:
    """A ``Usage`` row of the hour starting at ``hour_us`` from its named dimensions and measures (a database record
    of an hourly table or a sum in memory: the same row either way)."""
    return Usage(start_us=hour_us, end_us=hour_us + HOUR_US, **fields)  # type: ignore[arg-type]


def _hour(us: int) -> int:
    return us - us % HOUR_US


def hourly_from_records(records: Iterable[ObservedCall]) -> Consumption:
    """Hourly consumption, queue and AI rows from call records, summed exactly as the attributor's tables and their
    hourly rollups sum them (keys and measures alike)."""
    calls: dict[tuple, list[int]] = {}
    queues: dict[tuple, list[int]] = {}
    ai: dict[tuple, list[int]] = {}
    queue_minutes: dict[tuple, list[int]] = {}
    dims = operator.attrgetter(*CONSUMPTION_KEY)
    for r in records:
        hour = _hour(r.window_start_us)
        s = calls.setdefault((hour, *dims(r)), [0] * 8)
        s[0] += r.requests
        s[1] += r.bytes_in
        s[2] += r.bytes_out
        s[3] += r.busy_us
        s[4] += r.tokens_in
        s[5] += r.tokens_out
        s[6] += r.tokens_cached
        s[7] += r.tokens_reasoning
        if r.protocol in QUEUE_PROTOCOLS:
            # a role without a verb is read from the minute's summed bytes per key, as the attributor's SQL reads it
            minute = r.window_start_us - r.window_start_us % 60_000_000
            q = queue_minutes.setdefault((minute, *dims(r), r.operation), [0, 0, 0])
            q[0] += r.requests
            q[1] += r.bytes_in
            q[2] += r.bytes_out
        if r.tokens_in or r.tokens_out or r.tokens_cached or r.tokens_reasoning:
            key = (hour, r.tenant, r.tenant_method, r.feature, r.agent, r.src_workload, r.dst, r.provider, r.model)
            a = ai.setdefault(key, [0] * 5)
            a[0] += r.requests
            a[1] += r.tokens_in
            a[2] += r.tokens_out
            a[3] += r.tokens_cached
            a[4] += r.tokens_reasoning
    for (minute, tenant, method, feature, agent, src, dst, _p, operation), (
        requests,
        b_in,
        b_out,
    ) in queue_minutes.items():
        role = queue_role(operation, b_in, b_out)
        key = (_hour(minute), queue_topic(operation, dst), role, src, tenant, method, feature, agent)
        q = queues.setdefault(key, [0, 0])
        q[0] += requests
        q[1] += b_in + b_out
    out = Consumption()
    call_names = ("tenant", "tenant_method", "feature", "agent", "src_workload", "dst", "protocol")
    call_measures = ("requests", "bytes_in", "bytes_out", "busy_us", *_TOKENS)
    for (hour, *dims_), m in sorted(calls.items()):
        out.usage.append(
            hourly_usage(
                hour, {**dict(zip(call_names, dims_, strict=True)), **dict(zip(call_measures, m, strict=True))}
            )
        )
    for (hour, topic, role, workload, tenant, method, feature, agent), (requests, nbytes) in sorted(queues.items()):
        out.queues.append(
            QueueUse(
                topic=topic,
                role=role,
                workload=workload,
                tenant=tenant,
                tenant_method=method,
                feature=feature,
                agent=agent,
                start_us=hour,
                end_us=hour + HOUR_US,
                requests=requests,
                bytes=nbytes,
            )
        )
    ai_names = ("tenant", "tenant_method", "feature", "agent", "src_workload", "dst", "provider", "model")
    for (hour, *dims_), m in sorted(ai.items()):
        out.ai.append(
            hourly_usage(
                hour, {**dict(zip(ai_names, dims_, strict=True)), **dict(zip(("requests", *_TOKENS), m, strict=True))}
            )
        )
    return out


def hourly_compute(
    samples: Iterable[ComputeSample], capacity: Iterable[CapacitySample] = ()
) -> tuple[list[ComputeUse], list[NodeCapacity]]:
    """Hourly CPU/memory rows and node capacity from the sensor's per-window samples, summed exactly as the
    attributor stores them (``compute_hourly``, ``node_capacity_hourly``): CPU time as is, requests and memory times
    the window's length (a request of 500 millicores held for 2 s reserves 1 CPU-second). A window is counted in the
    hour it starts in."""
    uses: dict[tuple, list[int]] = {}
    zones: dict[tuple, str] = {}
    for s in samples:
        key = (_hour(s.window_start_us), s.node, s.workload, s.tenant, s.tenant_method, s.feature)
        span = max(s.window_end_us - s.window_start_us, 0)
        m = uses.setdefault(key, [0, 0, 0, 0])
        m[0] += s.cpu_usage_us
        m[1] += s.cpu_request_millicores * span // 1000
        m[2] += s.memory_bytes * span // 1_000_000
        m[3] += s.memory_request_bytes * span // 1_000_000
        if s.zone:
            zones[key] = s.zone
    nodes: dict[tuple[int, str], list[int]] = {}
    node_zones: dict[tuple[int, str], str] = {}
    for c in capacity:
        key2 = (_hour(c.window_start_us), c.node)
        span = max(c.window_end_us - c.window_start_us, 0)
        n = nodes.setdefault(key2, [0, 0])
        n[0] += c.cpu_millicores * span // 1000
        n[1] += c.memory_bytes * span // 1_000_000
        if c.zone:
            node_zones[key2] = c.zone
    compute = [
        ComputeUse(
            node=node,
            workload=workload,
            zone=zones.get((hour, node, workload, tenant, method, feature), ""),
            tenant=tenant,
            tenant_method=method,
            feature=feature,
            start_us=hour,
            end_us=hour + HOUR_US,
            cpu_usage_us=m[0],
            cpu_request_us=m[1],
            memory_byte_s=m[2],
            memory_request_byte_s=m[3],
        )
        for (hour, node, workload, tenant, method, feature), m in sorted(uses.items())
    ]
    caps = [
        NodeCapacity(
            node=node,
            zone=node_zones.get((hour, node), ""),
            start_us=hour,
            end_us=hour + HOUR_US,
            cpu_us=n[0],
            memory_byte_s=n[1],
        )
        for (hour, node), n in sorted(nodes.items())
    ]
    return compute, caps
