"""Kubernetes workload identity: pod IP and container id → pod → owner workload, namespace, labels, node zone.

Reads: the Kubernetes API through lightkube (pods of the cluster, the ReplicaSets and Jobs that own them, nodes for
their zone label), in-cluster with the service account of the sensor's DaemonSet. Emits: ``PodIdentity`` entries
and names ``"<namespace>/<workload>"`` for ``IdentityResolver``.

Lookups are synchronous against a snapshot that ``refresh`` rebuilds (one pod list, then only the owners and nodes not
seen before), so naming a flow never waits on the API server. Host-network pods share their node's IP, so they are
found by container id only, never by IP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from httpx2 import HTTPError
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod

from costmesh.common.metrics import ERRORS

log = logging.getLogger(__name__)

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")


@dataclass(frozen=True, slots=True)
class PodIdentity:
    namespace: str
    pod: str
    workload_kind: str  # Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod
    workload: str
    node: str = ""
    zone: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.workload}"


@dataclass
class KubernetesIdentity:
    """A snapshot of the cluster's pods, refreshed by ``refresh``; lookups never do I/O."""

    client: AsyncClient
    by_ip: dict[str, PodIdentity] = field(default_factory=dict)
    by_container: dict[str, PodIdentity] = field(default_factory=dict)
    _owners: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)  # (kind, ns, name) → owner
    _zones: dict[str, str] = field(default_factory=dict)

    @classmethod
    def in_cluster(cls) -> KubernetesIdentity:
        return cls(AsyncClient(KubeConfig.from_service_account()))

    @classmethod
    def for_server(cls, url: str, token: str = "") -> KubernetesIdentity:
        """A client for an explicit API server URL (out-of-cluster runs, tests), with an optional bearer token."""
        config = KubeConfig.from_one(cluster=Cluster(server=url), user=User(token=token or None))
        return cls(AsyncClient(config, trust_env=False))

    async def close(self) -> None:
        await self.client.close()

    async def refresh(self) -> int:
        """Rebuild the snapshot from one pod list; returns the number of pods."""
        by_ip: dict[str, PodIdentity] = {}
        by_container: dict[str, PodIdentity] = {}
        count = 0
        async for pod in self.client.list(Pod, namespace="*"):
            count += 1
            ident = await self._identity(pod)
            spec, status = pod.spec, pod.status
            if status is not None:
                if status.podIP and not (spec is not None and spec.hostNetwork):
                    for ip in {status.podIP, *(p.ip for p in (status.podIPs or []))}:
                        by_ip[ip] = ident
                for cs in [*(status.containerStatuses or []), *(status.initContainerStatuses or [])]:
                    if cs.containerID:
                        by_container[cs.containerID.split("://", 1)[-1]] = ident
        self.by_ip, self.by_container = by_ip, by_container
        return count

    async def _identity(self, pod: Pod) -> PodIdentity:
        meta = pod.metadata
        namespace, name = meta.namespace or "default", meta.name or ""
        kind, workload = "Pod", name
        owner = next((o for o in (meta.ownerReferences or []) if o.controller), None)
        if owner is not None:
            kind, workload = owner.kind, owner.name
            if kind in ("ReplicaSet", "Job"):
                kind, workload = await self._owner_of(kind, namespace, workload)
        node = pod.spec.nodeName if pod.spec is not None and pod.spec.nodeName else ""
        return PodIdentity(
            namespace=namespace,
            pod=name,
            workload_kind=kind,
            workload=workload,
            node=node,
            zone=await self._zone(node),
            labels=tuple(sorted((meta.labels or {}).items())),
        )

    async def _owner_of(self, kind: str, namespace: str, name: str) -> tuple[str, str]:
        """A ReplicaSet's Deployment or a Job's CronJob (itself when it has no controller or is gone)."""
        key = (kind, namespace, name)
        if key not in self._owners:
            resource = ReplicaSet if kind == "ReplicaSet" else Job
            try:
                obj = await self.client.get(resource, name, namespace=namespace)
                owner = next((o for o in (obj.metadata.ownerReferences or []) if o.controller), None)
                self._owners[key] = (owner.kind, owner.name) if owner is not None else (kind, name)
            except (ApiError, HTTPError) as exc:
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.warning("cannot read %s %s/%s: %s", kind, namespace, name, exc)
                return kind, name
        return self._owners[key]

    async def _zone(self, node: str) -> str:
        if not node:
            return ""
        if node not in self._zones:
            try:
                labels = (await self.client.get(Node, node)).metadata.labels or {}
            except (ApiError, HTTPError) as exc:
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.warning("cannot read node %s: %s", node, exc)
                return ""
            self._zones[node] = next((labels[k] for k in ZONE_LABELS if k in labels), "")
        return self._zones[node]

    def pod_of_ip(self, addr: str, _port: int = 0) -> str:
        ident = self.by_ip.get(addr)
        return ident.name if ident else ""

    def pod_of_container(self, container_id: str) -> str:
        ident = self.by_container.get(container_id)
        return ident.name if ident else ""
