"""Kubernetes workload identity: pod IP and container id → pod → owner workload, namespace, labels, node zone.

Reads: the Kubernetes API through lightkube (pods of the cluster, the ReplicaSets and Jobs that own them, nodes for
their zone label), in-cluster with the service account of the sensor's DaemonSet. Emits: ``PodIdentity`` entries
and names ``"<namespace>/<workload>"`` for ``IdentityResolver``.

Lookups are synchronous against a snapshot, so naming a flow never waits on the API server. ``follow`` keeps it current
the way Kubernetes controllers do: one pod list, then a watch from the list's resource version that applies each pod
change as it comes (a re-list every few seconds would decode every pod of the cluster on every node). Owners and
nodes are read once each. Host-network pods share their node's IP, so they are found by container id only, never by
IP.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from httpx2 import HTTPError
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import OnErrorAction, OnErrorResult

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
    #: (namespace, pod) → the IPs and container ids it put in by_ip/by_container (so that a change removes them).
    _keys: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    #: The resource version of the last list: where the watch starts.
    version: str = ""

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
        """Rebuild the snapshot from one pod list (swapped in whole: lookups meanwhile see the previous one); returns
        the number of pods."""
        by_ip: dict[str, PodIdentity] = {}
        by_container: dict[str, PodIdentity] = {}
        keys: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        pods = self.client.list(Pod, namespace="*")
        count = 0
        async for pod in pods:
            count += 1
            await self._add(pod, by_ip, by_container, keys)
        self.by_ip, self.by_container, self._keys = by_ip, by_container, keys
        self.version = pods.resourceVersion
        return count

    async def follow(self, backoff_s: float = 1.0) -> None:
        """Keep the snapshot current until cancelled: list, then watch from the list's version. lightkube resumes a
        watch the server ends from the last version seen; an expired version (410 Gone) or an API server away
        brings a new list after a back-off (doubling up to a minute). Errors are counted, never raised."""
        delay = backoff_s
        while True:
            try:
                await self.refresh()
                delay = backoff_s
                async for kind, pod in self.client.watch(
                    Pod, namespace="*", resource_version=self.version, on_error=_relist_on_gone
                ):
                    await self.apply(kind, pod)
            except (ApiError, HTTPError) as exc:
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.warning("kubernetes pod watch interrupted, listing again in %.1f s: %s", delay, exc)
            except Exception:  # an answer lightkube cannot read, say: naming must never stop the capture
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.exception("kubernetes pod watch failed, listing again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def apply(self, kind: str, pod: Pod) -> None:
        """One watch event: the pod's previous entries go; unless it was deleted, its current ones come in."""
        meta = pod.metadata
        key = (meta.namespace or "default", meta.name or "")
        ips, containers = self._keys.pop(key, ((), ()))
        for index, names in ((self.by_ip, ips), (self.by_container, containers)):
            for name in names:
                held = index.get(name)
                if held is not None and (held.namespace, held.pod) == key:  # an IP may belong to a newer pod now
                    del index[name]
        if kind != "DELETED":
            await self._add(pod, self.by_ip, self.by_container, self._keys)

    async def _add(
        self,
        pod: Pod,
        by_ip: dict[str, PodIdentity],
        by_container: dict[str, PodIdentity],
        keys: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        ident = await self._identity(pod)
        spec, status = pod.spec, pod.status
        ips: set[str] = set()
        containers: list[str] = []
        if status is not None and status.phase not in ("Succeeded", "Failed"):  # a finished pod's IP is reused
            if status.podIP and not (spec is not None and spec.hostNetwork):
                ips = {status.podIP, *(p.ip for p in (status.podIPs or []))}
            for cs in [*(status.containerStatuses or []), *(status.initContainerStatuses or [])]:
                if cs.containerID:
                    containers.append(cs.containerID.split("://", 1)[-1])
        for ip in ips:
            by_ip[ip] = ident
        for cid in containers:
            by_container[cid] = ident
        keys[(ident.namespace, ident.pod)] = (tuple(sorted(ips)), tuple(containers))

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


def _relist_on_gone(exc: Exception, count: int) -> OnErrorResult:
    """A watch whose version has expired (410 Gone) cannot be resumed without missing deletions: stop it, so that
    ``follow`` lists again. Other errors are retried a few times, then they too bring a new list."""
    if (isinstance(exc, ApiError) and exc.status.code == 410) or count > 3:
        return OnErrorResult(OnErrorAction.RAISE)
    ERRORS.labels("sensor", "kubernetes_api").inc()
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(2.0**count, 30.0))
