"""Node compute lines split by the CPU and memory of the workloads on the node, OpenCost's way. Pure: no I/O.

Reads hourly ``ComputeUse`` rows (cgroup or process CPU time and memory per workload, requests from the pod spec)
and ``NodeCapacity`` rows; emits each workload's exact weight in a node line and the idle weight.

The rule (OpenCost's allocation of a node): a workload holds the **larger of what it used and what it requested**,
for CPU and for memory apart (a pod that requests 2 cores and idles has reserved them; one that bursts past its
request has used the rest). Each resource is priced by the node's CPU:memory price ratio (OpenCost's defaults, or the
config's ``cluster`` prices), so a workload's weight is ``max(cpu used, cpu requested) × CPU price + max(memory used,
memory requested) × memory price``. What the node could give (its capacity) and no workload held is **idle**, its
own category. Without a capacity reading (a node whose sensor does not report it), or when the workloads hold more
than it (requests beyond allocatable, counter skew), the workloads share the whole line and idle is zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction

from costmesh.common.usage import ComputeUse, NodeCapacity

from .model import Window

#: OpenCost's default prices when a node's are not known: USD per vCPU-hour and per GiB-hour. Only their ratio
#: matters here (the bill line gives the amount).
DEFAULT_CPU_PRICE = Decimal("0.031611")
DEFAULT_MEMORY_PRICE = Decimal("0.004237")

_CORE_HOUR_US = 3_600 * 1_000_000
_GIB_HOUR_BYTE_S = 3_600 * 2**30


def node_rows(
    uses: Iterable[ComputeUse], capacity: Iterable[NodeCapacity], names: set[str], window: Window
) -> tuple[list[ComputeUse], list[NodeCapacity]]:
    """The rows a node line pays for: every workload on a node it names (and that node's capacity), else the
    workloads it names one by one (then no capacity: the line is theirs alone)."""
    uses = [u for u in uses if window.overlaps(u.start_us, u.end_us)]
    on_node = [u for u in uses if u.node in names]
    if on_node:
        nodes = {u.node for u in on_node}
        caps = [c for c in capacity if c.node in nodes and window.overlaps(c.start_us, c.end_us)]
        return on_node, caps
    return [u for u in uses if u.workload in names], []


def weights(
    uses: Sequence[ComputeUse],
    capacity: Sequence[NodeCapacity],
    *,
    cpu_price: Decimal = DEFAULT_CPU_PRICE,
    memory_price: Decimal = DEFAULT_MEMORY_PRICE,
) -> tuple[list[tuple[ComputeUse, Fraction]], Fraction]:
    """Each row's weight (``max(used, requested)`` per resource, priced) and the idle weight, exactly."""
    cpu_p = Fraction(cpu_price) / _CORE_HOUR_US
    mem_p = Fraction(memory_price) / _GIB_HOUR_BYTE_S
    out: list[tuple[ComputeUse, Fraction]] = []
    held_cpu: dict[tuple[str, int], int] = defaultdict(int)
    held_mem: dict[tuple[str, int], int] = defaultdict(int)
    for u in uses:
        cpu = max(u.cpu_usage_us, u.cpu_request_us)
        mem = max(u.memory_byte_s, u.memory_request_byte_s)
        held_cpu[(u.node, u.start_us)] += cpu
        held_mem[(u.node, u.start_us)] += mem
        out.append((u, cpu * cpu_p + mem * mem_p))
    idle = Fraction(0)
    for c in capacity:
        key = (c.node, c.start_us)
        if key not in held_cpu:
            continue  # a node hour with no workload reading: the sensor saw nothing to split, not an idle node
        idle += max(c.cpu_us - held_cpu[key], 0) * cpu_p + max(c.memory_byte_s - held_mem[key], 0) * mem_p
    return out, idle
