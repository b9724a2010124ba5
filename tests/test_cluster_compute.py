"""CPU per workload on this machine's real cgroup tree and process table, and the node line split by it (issue 16).

Two workloads burn known CPU (each a process that spins until its own CPU clock, ``time.process_time``, has
advanced by a set amount, and says how much it spent): once each in a child cgroup the test makes under the cgroup v2
mount, once as plain processes named by the workloads table through the address their socket is bound to. The
sampler's readings (``cpu.stat usage_usec``; ``/proc/<pid>/stat``) must match what they burnt, and a node line
allocated with those readings must split within 2% of their shares, the rest of the node's capacity idle. Also:
OpenCost's rule (the larger of used and requested) on recorded-shape rows, and the samples' way through the
redactor and the attributor into the hourly table billing reads.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from costmesh.attributor.apply import apply_batches, prepare
from costmesh.attributor.fold import BatchRef, Meta, fold_group
from costmesh.billing.allocate import Allocator, Target
from costmesh.billing.compute import weights
from costmesh.billing.model import CostLine, Window
from costmesh.billing.store import load_consumption
from costmesh.common.config import CgroupWorkload, ClusterConfig, Config, Workload
from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CallBatch, CapacitySample, Codec, ComputeSample
from costmesh.common.usage import HOUR_US, ComputeUse, NodeCapacity, Usage, hourly_compute
from costmesh.redactor.records import RecordRedactor
from costmesh.sensor.live.compute import ComputeSampler, cgroup2_root, read_cgroup
from costmesh.sensor.live.identity import ProcessWorkloads, ProcIdentity, StaticIdentity

#: Spins until its CPU clock has advanced by argv[1] seconds once told to go (a line on stdin), prints what it spent,
#: then waits to be stopped (a process that exits would add its teardown to the reading). With argv[2], it first
#: binds a TCP socket on that address: the workloads table names it by that address.
BURNER = """
import socket, sys, time
if len(sys.argv) > 2:
    s = socket.socket(); s.bind((sys.argv[2], 0)); s.listen()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.process_time()
while time.process_time() - t0 < float(sys.argv[1]):
    pass
print(time.process_time() - t0, flush=True)
sys.stdin.readline()
"""

#: CPU seconds the two workloads burn: shares 3/4 and 1/4.
BURN = {"shop/a": 0.9, "shop/b": 0.3}
NODE = "node-1"


@contextlib.contextmanager
def burners(cgroups: dict[str, Path] | None = None, addresses: dict[str, str] | None = None):
    """One burner per workload of ``BURN``, each in its cgroup (moved there before it burns) or bound to its
    address; yields a function that lets them burn together and returns the CPU seconds each reported."""
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, seconds in BURN.items():
            args = [sys.executable, "-c", BURNER, str(seconds)]
            if addresses:
                args.append(addresses[name])
            procs[name] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert procs[name].stdout.readline().strip() == "ready"
            if cgroups:
                (cgroups[name] / "cgroup.procs").write_text(str(procs[name].pid))

        def burn() -> dict[str, float]:
            for p in procs.values():
                p.stdin.write("go\n")
                p.stdin.flush()
            return {name: float(p.stdout.readline()) for name, p in procs.items()}

        yield burn, {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=10)
            p.stdin.close()
            p.stdout.close()


@pytest.fixture
def cgroup_parent():
    """A child cgroup of this test under the cgroup v2 mount, removed after; skipped (saying why) only when the
    kernel or the cgroup filesystem refuses."""
    root = cgroup2_root()
    if root is None:
        print("no cgroup v2 mount on this machine")
        pytest.skip("no cgroup v2 mount on this machine")
    parent = root / f"costmesh-test-{os.getpid()}"
    try:
        parent.mkdir()
        for name in ("a", "b"):
            (parent / name).mkdir()
    except OSError as exc:
        print(f"the cgroup filesystem refused a child cgroup under {root}: {exc}")
        pytest.skip(f"the cgroup filesystem refused a child cgroup under {root}: {exc}")
    try:
        yield root, parent
    finally:
        for child in (parent / "a", parent / "b", parent):
            for _ in range(50):  # a killed process leaves its cgroup a moment later
                try:
                    child.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def _now_us() -> int:
    return time.time_ns() // 1000


def _node_line(start_us: int, amount: str = "100.00") -> CostLine:
    hour = start_us - start_us % HOUR_US
    return CostLine(
        line_id="node-line",
        source="test",
        billing_period=datetime.fromtimestamp(hour / 1e6, UTC).strftime("%Y-%m"),
        window=Window(hour, hour + HOUR_US),
        amount=Decimal(amount),
        currency="USD",
        resource_id="i-0node1",
    )


def _mixes(start_us: int) -> list[Usage]:
    """acme calls shop/a, globex calls shop/b (what each workload burnt its CPU for)."""
    hour = start_us - start_us % HOUR_US
    return [
        Usage(src_workload="clients", dst=dst, tenant=t, tenant_method="header", requests=10, start_us=hour,
              end_us=hour + HOUR_US)
        for dst, t in (("shop/a", "acme"), ("shop/b", "globex"))
    ]  # fmt: skip


def _split(samples, capacity, start_us, config: Config) -> dict[str, Decimal]:
    compute, caps = hourly_compute(samples, capacity)
    alloc = Allocator(
        _mixes(start_us),
        compute=compute,
        capacity=caps,
        cpu_price=Decimal(config.cluster.cpu_price_per_core_hour),
        memory_price=Decimal(config.cluster.memory_price_per_gib_hour),
    )
    rows = alloc.allocate(_node_line(start_us), Target(NODE, "compute", frozenset({NODE})))
    assert sum(r.amount for r in rows) == Decimal("100.00")  # to the cent, by construction
    out: dict[str, Decimal] = {}
    for r in rows:
        out[r.tenant or r.method] = out.get(r.tenant or r.method, Decimal(0)) + r.amount
    return out


def _check(readings: dict[str, int], burnt: dict[str, float], split: dict[str, Decimal], window_us: int) -> None:
    total = sum(burnt.values())
    for name, seconds in burnt.items():
        measured = readings[name] / 1e6
        print(f"{name}: burnt {seconds:.4f} CPU-s (its own clock), read {measured:.4f} CPU-s")
        assert abs(measured - seconds) <= 0.02 * seconds
    known = {"acme": burnt["shop/a"] / total, "globex": burnt["shop/b"] / total}
    used = split["acme"] + split["globex"]
    for tenant, share in known.items():
        got = float(split[tenant] / used)
        print(
            f"{tenant}: share of the workloads' part {got:.4f}, known {share:.4f}, error {abs(got - share) / share:.2%}"
        )
        assert abs(got - share) <= 0.02 * share
    capacity_us = (os.cpu_count() or 1) * window_us
    for tenant, name in (("acme", "shop/a"), ("globex", "shop/b")):
        expected = Decimal(100) * Decimal(readings[name]) / Decimal(capacity_us)
        assert abs(split[tenant] - expected) <= Decimal("0.02")  # its CPU over the node's, of the line
    assert split["idle"] == Decimal("100.00") - used
    print(f"idle: {split['idle']} of 100.00 ({os.cpu_count()} CPUs over {window_us / 1e6:.2f} s)")


def test_two_cgroups_burning_known_cpu_split_the_node_line_by_their_shares(cgroup_parent):
    root, parent = cgroup_parent
    rel = parent.relative_to(root)
    config = Config(
        cluster=ClusterConfig(
            compute="cgroup",
            cgroups=[CgroupWorkload(path=f"{rel}/{x}", workload=f"shop/{x}") for x in "ab"],
            memory_price_per_gib_hour="0",  # this host's memory controller is on v1 or not: the split is CPU's
        )
    )  # fmt: skip
    sampler = ComputeSampler(config, NODE, cgroup_root=root)
    with burners(cgroups={"shop/a": parent / "a", "shop/b": parent / "b"}) as (burn, _pids):
        t0 = _now_us()
        first, _ = sampler.sample(t0 - 1_000_000, t0)
        assert all(s.cpu_usage_us <= 5_000 for s in first)  # what they did before they burnt: next to nothing
        burnt = burn()
        t1 = _now_us()
        samples, capacity = sampler.sample(t0, t1)
    readings = {s.workload: s.cpu_usage_us for s in samples}
    assert set(readings) == set(BURN) and all(s.node == NODE for s in samples)
    assert read_cgroup(parent / "a") is not None
    assert capacity and capacity[0].cpu_millicores == (os.cpu_count() or 1) * 1000
    _check(readings, burnt, _split(samples, capacity, t0, config), t1 - t0)


def test_processes_named_by_their_address_burning_known_cpu_split_the_node_line(tmp_path):
    """The demo's and bare hosts' case: workloads are processes; /proc/<pid>/stat gives their CPU."""
    addresses = {"shop/a": "127.0.0.61", "shop/b": "127.0.0.62"}
    try:
        for addr in addresses.values():
            with socket.socket() as s:
                s.bind((addr, 0))
    except OSError as exc:
        pytest.skip(f"cannot bind the loopback addresses 127.0.0.61/62: {exc}")
    workloads = [Workload(address=a, name=n) for n, a in addresses.items()]
    config = Config(workloads=workloads, cluster=ClusterConfig(compute="proc", memory_price_per_gib_hour="0"))
    names = ProcessWorkloads(StaticIdentity(workloads), ProcIdentity(), refresh_s=0.5)
    sampler = ComputeSampler(config, NODE, process_workload=names)
    with burners(addresses=addresses) as (burn, pids):
        assert {n: names(p) for n, p in pids.items()} == {n: n for n in pids}
        t0 = _now_us()
        sampler.sample(t0 - 1_000_000, t0)
        burnt = burn()
        t1 = _now_us()
        samples, capacity = sampler.sample(t0, t1)
    readings = {s.workload: s.cpu_usage_us for s in samples}
    assert set(readings) == set(BURN)
    assert all(s.memory_bytes > 1_000_000 for s in samples)  # a Python process's resident set
    _check(readings, burnt, _split(samples, capacity, t0, config), t1 - t0)


def test_the_larger_of_used_and_requested_and_idle_as_its_own_category():
    """OpenCost's rule on rows of the shape the store gives: a workload that requested 2 of 4 cores and used half of
    one holds 2; one that used 1.5 cores having requested 0.5 holds 1.5; the rest of the node (0.5 core) is idle."""
    hour = 0
    cap = [NodeCapacity(node=NODE, start_us=hour, end_us=HOUR_US, cpu_us=4 * HOUR_US)]
    uses = [
        ComputeUse(node=NODE, workload="shop/reserved", start_us=hour, end_us=HOUR_US, cpu_usage_us=HOUR_US // 2,
                   cpu_request_us=2 * HOUR_US),
        ComputeUse(node=NODE, workload="shop/burst", start_us=hour, end_us=HOUR_US, cpu_usage_us=3 * HOUR_US // 2,
                   cpu_request_us=HOUR_US // 2),
    ]  # fmt: skip
    held, idle = weights(uses, cap, memory_price=Decimal(0))
    total = sum(w for _, w in held) + idle
    assert [w / total for _, w in held] == [Fraction(2, 4), Fraction(3, 8)]
    assert idle / total == Fraction(1, 8)
    # a node whose workloads hold more than its capacity (requests beyond allocatable): no idle, shares by holding
    held, idle = weights(
        uses, [NodeCapacity(node=NODE, start_us=0, end_us=HOUR_US, cpu_us=3 * HOUR_US)], memory_price=Decimal(0)
    )
    assert idle == 0
    alloc = Allocator([], compute=uses, capacity=cap, background={"shop/burst"}, memory_price=Decimal(0))
    rows = alloc.allocate(_node_line(0, "8.00"), Target(NODE, "compute", frozenset({NODE})))
    got = {(r.tenant, r.method): r.amount for r in rows}
    # nothing says whom shop/reserved served: unallocated; shop/burst is background work: platform
    assert got == {
        ("", "unallocated"): Decimal("4.00"),
        ("", "platform"): Decimal("3.00"),
        ("", "idle"): Decimal("1.00"),
    }
    assert {r.basis for r in rows} == {"cpu_memory"}


def test_a_tenant_label_takes_the_workloads_compute(tmp_path):
    uses = [
        ComputeUse(node=NODE, workload="batch/export", tenant="acme", tenant_method="label", start_us=0,
                   end_us=HOUR_US, cpu_usage_us=HOUR_US),
    ]  # fmt: skip
    rows = Allocator([], compute=uses).allocate(_node_line(0, "5.00"), Target(NODE, "compute", frozenset({NODE})))
    assert [(r.tenant, r.method, r.amount) for r in rows] == [("acme", "direct", Decimal("5.00"))]


def _samples(start_us: int) -> CallBatch:
    return CallBatch(
        batch_id="node-1-compute-1",
        node=NODE,
        seq=1,
        compute=[
            ComputeSample(window_start_us=start_us, window_end_us=start_us + 1_000_000, node=NODE, workload=w,
                          zone="eu-west-1a", cpu_usage_us=cpu, memory_bytes=2**30, cpu_request_millicores=250,
                          tenant=tenant, tenant_method="label" if tenant else "unallocated")
            for w, cpu, tenant in (("shop/a", 300_000, ""), ("batch/export", 100_000, "acme"))
        ],
        capacity=[CapacitySample(window_start_us=start_us, window_end_us=start_us + 1_000_000, node=NODE,
                                 zone="eu-west-1a", cpu_millicores=2000, memory_bytes=8 * 2**30)],
    )  # fmt: skip


async def test_samples_pass_the_redactor_and_reach_the_hourly_table_exactly_once(migrated):
    start = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
    batch, _stats = RecordRedactor(Config()).redact_batch(_samples(start))
    assert [c.workload for c in batch.compute] == ["shop/a", "batch/export"] and batch.capacity[
        0
    ].cpu_millicores == 2000
    await prepare(migrated)
    # as the attributor's consumer gets it: the payload folded (the compiled fold declines the compute fields, so
    # msgspec decodes it and the batch is marked as holding samples), applied from its reference
    group = fold_group([Codec().encode(batch)])
    (meta,) = group.metas
    assert isinstance(meta, Meta) and meta.has_compute and meta.n_records == 0
    ref = BatchRef(meta, Codec().encode(batch))
    first = await apply_batches(migrated, [ref], PriceTable(), group.copy)
    again = await apply_batches(migrated, [batch], PriceTable())  # a redelivery changes nothing
    assert first.fresh == {batch.batch_id} and again.duplicates == 1
    got = await load_consumption(migrated, Window(start, start + HOUR_US))
    assert [(u.workload, u.cpu_usage_us, u.cpu_request_us, u.memory_byte_s, u.tenant, u.zone) for u in got.compute] == [
        ("batch/export", 100_000, 250_000, 2**30, "acme", "eu-west-1a"),
        ("shop/a", 300_000, 250_000, 2**30, "", "eu-west-1a"),
    ]
    assert [(c.node, c.cpu_us, c.memory_byte_s) for c in got.capacity] == [(NODE, 2_000_000, 8 * 2**30)]
