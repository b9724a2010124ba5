"""Live mode of the sensor service (``costmesh sensor`` without ``--replay``): capture on the configured interfaces,
name both ends of every flow, and send each window's calls and flow volumes to the node's redactor.

Reads: ``LiveCapture`` windows (see ``capture``), workload identity (``identity``, ``identity_k8s``), CPU and memory
per workload (``compute``). Emits: ``CallBatch`` messages with ``records``, ``flows`` and ``compute``/``capacity``
samples on ``costmesh.raw.<node>``, through the same confirmed request/reply as replayed captures. Calls of a
workload whose pod names its tenant in a label (``cluster.tenant_labels``) carry that tenant.

The capture loop never waits for the network: windows go through a bounded queue to a separate sender task, and when
the redactor is away long enough for the queue to fill, whole windows are dropped and counted
(``costmesh_sensor_windows_dropped_total``) rather than slowing the capture (and through it, nothing on the host).
On stop, a window not yet confirmed by the redactor is not sent (``BatchSender`` stops retrying when told to stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from costmesh.common.config import Config
from costmesh.common.runtime import ServiceContext

from ..bpf import BpfUnavailable
from ..core import Sensor
from ..sender import BatchSender
from .capture import LiveCapture
from .compute import ComputeSampler
from .identity import IdentityResolver, ProcessWorkloads, ProcIdentity, StaticIdentity
from .metrics import WINDOWS_DROPPED
from .sinks import LiveWindow, SensorFrameSink
from .tls import TlsPlaintextSink

if TYPE_CHECKING:
    from .identity_k8s import KubernetesIdentity

log = logging.getLogger(__name__)

QUEUE_WINDOWS = 30


def _use_kubernetes(config: Config) -> bool:
    mode = config.sensor.identity
    return mode == "kubernetes" or (mode == "auto" and bool(os.environ.get("KUBERNETES_SERVICE_HOST")))


def build_capture(
    config: Config, node: str, *, print_programs: bool = False
) -> tuple[LiveCapture, KubernetesIdentity | None]:
    """The live capture as the sensor runs it: frames and TLS plaintext into the parsing engine, every endpoint and
    process named by the identity chain (workloads table, Kubernetes, /proc). Returns the capture (not opened) and the
    Kubernetes identity to follow (None off Kubernetes). The benchmark builds its sensor with this too."""
    window_us = int(config.sensor.window_s * 1_000_000)
    k8s = None
    pod_of_ip = pod_of_container = None
    if _use_kubernetes(config):
        from .identity_k8s import KubernetesIdentity

        k8s = KubernetesIdentity.in_cluster()
        pod_of_ip, pod_of_container = k8s.pod_of_ip, k8s.pod_of_container
    proc = ProcIdentity() if config.sensor.identity != "static" else None
    identity = IdentityResolver(config, proc=proc, pod_of_ip=pod_of_ip, pod_of_container=pod_of_container)
    frames = SensorFrameSink(Sensor(config, node, window_us, name_of=identity.name))
    tls = TlsPlaintextSink(
        config, node, window_us=window_us, name_of_pid=identity.name_of_pid, max_chunks=config.sensor.tls_max_chunks
    )
    capture = LiveCapture(config, node, frames, tls, name_of=identity.name, print_programs=print_programs)
    return capture, k8s


def build_sampler(config: Config, node: str, k8s: KubernetesIdentity | None) -> ComputeSampler | None:
    """The compute sampler of this node: containers by the pod watch, processes by the workloads table (the
    addresses of their sockets), the zone from the node's label or the config."""
    if config.cluster.compute == "off":
        return None
    processes = None
    if config.workloads and k8s is None:
        processes = ProcessWorkloads(StaticIdentity(config.workloads), ProcIdentity())
    return ComputeSampler(
        config,
        node,
        process_workload=processes,
        containers=k8s.container_owners if k8s is not None else None,
        zone=(lambda: k8s.zone_of_node(node) or config.cluster.zone) if k8s is not None else None,
    )


async def run_live(ctx: ServiceContext, nc, *, print_programs: bool = False) -> None:
    """Capture until ``ctx.stopping``; without BPF (not root, old kernel, no headers) log why and idle."""
    config, node = ctx.config, ctx.config.node_name()
    capture, k8s = build_capture(config, node, print_programs=print_programs)
    try:
        capture.open()
    except BpfUnavailable as exc:
        log.error("live capture unavailable, the sensor idles: %s", exc)
        ctx.health["live"] = f"unavailable: {exc}"
        await ctx.stopping.wait()
        return
    ctx.health.update(live="capturing", interfaces=list(config.sensor.interfaces), windows=0, ring_drops=0)
    if not config.sensor.tls_capture:
        ctx.health["tls"] = "off"
    elif capture.tls_error:
        ctx.health["tls"] = f"unavailable: {capture.tls_error}"
    else:
        ctx.health["tls"] = "probing " + ", ".join(capture.tls_files)
    ctx.health["server_reads"] = f"unavailable: {capture.reads_error}" if capture.reads_error else "following"
    sender = BatchSender(nc, node, config.sensor.batch_records)
    sampler = build_sampler(config, node, k8s)
    queue: asyncio.Queue[LiveWindow] = asyncio.Queue(QUEUE_WINDOWS)

    async def on_window(win: LiveWindow) -> None:
        ctx.health["windows"] = int(ctx.health["windows"]) + 1
        ctx.health["ring_drops"] = int(ctx.health["ring_drops"]) + win.counters.ring_drops
        if sampler is not None:
            # a read of /proc and the cgroup files: off the event loop, as the sends are
            win.compute, win.capacity = await asyncio.to_thread(sampler.sample, win.window_start_us, win.window_end_us)
        if k8s is not None:
            k8s.label_records(win.records)
        if not win.records and not win.flows and not win.compute:
            return
        try:
            queue.put_nowait(win)
        except asyncio.QueueFull:
            WINDOWS_DROPPED.inc()

    async def _send_loop() -> None:
        while True:
            win = await queue.get()
            batches = await sender.send(win.records, ctx.stopping, win.flows, win.compute, win.capacity)
            ctx.health["batches_published"] = int(ctx.health.get("batches_published", 0)) + batches
            ctx.health["records_published"] = int(ctx.health.get("records_published", 0)) + len(win.records)
            ctx.health["flows_published"] = int(ctx.health.get("flows_published", 0)) + len(win.flows)

    async def _k8s_loop() -> None:
        if k8s is not None:
            await k8s.follow()

    sending = asyncio.create_task(_send_loop(), name="live-send")
    refreshing = asyncio.create_task(_k8s_loop(), name="k8s-identity")
    try:
        await capture.run(on_window, ctx.stopping)
    finally:
        sending.cancel()
        refreshing.cancel()
        for task in (sending, refreshing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        capture.close()
        if k8s is not None:
            await k8s.close()
