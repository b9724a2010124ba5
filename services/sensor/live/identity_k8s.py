"""Kubernetes workload identity: pod IP and container id → pod → owner workload, namespace, labels, node zone.

Reads: the Kubernetes API through lightkube (pods of the cluster, the ReplicaSets and Jobs that own them, nodes for
their zone label, Services and their EndpointSlices), in-cluster with the service account of the sensor's
DaemonSet. Emits: ``PodIdentity`` entries and names ``"<namespace>/<workload>"`` for ``IdentityResolver``; the
owners of containers (workload, requests and limits from the pod spec, a tenant label) for the compute sampler.

A ClusterIP is named by the workload behind it: the sensor sees a client's packets before kube-proxy's address
translation, so a call to a Service's ClusterIP is a call to the pods of its EndpointSlices (the workload they all
belong to; the Service itself when they belong to several), and zones and cross-zone bytes are those of the real
endpoints. Services and slices are listed with the pods and kept current by their own watch.

Labels and annotations named by ``cluster.tenant_labels``/``feature_labels`` (``costmesh.io/tenant``) give the
tenant of everything a workload does (``label_records``), when its pods agree on it; a finished pod's labels are kept
``keep_s`` longer, so that the last window of a job that lived seconds still carries its tenant.

Lookups are synchronous against a snapshot, so naming a flow never waits on the API server. ``follow`` keeps it current
the way Kubernetes controllers do: one pod list, then a watch from the list's resource version that applies each pod
change as it comes (a re-list every few seconds would decode every pod of the cluster on every node). Owners and
nodes are read once each. Host-network pods share their node's IP, so they are found by container id only, never by
IP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from httpx2 import HTTPError
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import OnErrorAction, OnErrorResult
from lightkube.utils.quantity import parse_quantity

from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import ObservedCall

from .compute import Owner

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
    tenant_labels: tuple[str, ...] = ("costmesh.io/tenant",)
    feature_labels: tuple[str, ...] = ("costmesh.io/feature",)
    #: How long a deleted or finished pod's labels still name its workload's tenant (seconds).
    keep_s: float = 60.0
    #: container id → its owner (workload, requests, limits, label tenant), for the compute sampler.
    containers: dict[str, Owner] = field(default_factory=dict)
    #: (namespace, pod) → (workload name, tenant, feature, label key) of pods whose labels name a tenant.
    _pod_tenants: dict[tuple[str, str], tuple[str, str, str, str]] = field(default_factory=dict)
    #: the same for pods gone, with the monotonic time until which they count
    _gone_tenants: dict[tuple[str, str], tuple[tuple[str, str, str, str], float]] = field(default_factory=dict)
    #: ClusterIP → (namespace, service); (namespace, service) → the pod IPs of its EndpointSlices, per slice
    _service_ips: dict[str, tuple[str, str]] = field(default_factory=dict)
    _slices: dict[tuple[str, str], tuple[tuple[str, str], tuple[str, ...]]] = field(default_factory=dict)
    endpoints_version: str = ""

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
        previous = self._pod_tenants
        self._pod_tenants, self.containers = {}, {}
        pods = self.client.list(Pod, namespace="*")
        count = 0
        async for pod in pods:
            count += 1
            await self._add(pod, by_ip, by_container, keys)
        for key, value in previous.items():  # pods gone between lists keep their tenant a while too
            if key not in self._pod_tenants:
                self._gone_tenants[key] = (value, time.monotonic() + self.keep_s)
        self.by_ip, self.by_container, self._keys = by_ip, by_container, keys
        self.version = pods.resourceVersion
        return count

    async def refresh_endpoints(self) -> int:
        """Rebuild the ClusterIP → Service map and the Services' endpoints from one list each; returns the slices."""
        service_ips: dict[str, tuple[str, str]] = {}
        async for svc in self.client.list(Service, namespace="*"):
            spec = svc.spec
            if spec is None:
                continue
            key = (svc.metadata.namespace or "default", svc.metadata.name or "")
            for ip in {spec.clusterIP, *(spec.clusterIPs or [])}:
                if ip and ip != "None":
                    service_ips[ip] = key
        slices: dict[tuple[str, str], tuple[tuple[str, str], tuple[str, ...]]] = {}
        listed = self.client.list(EndpointSlice, namespace="*")
        async for es in listed:
            _put_slice(slices, es)
        self._service_ips, self._slices = service_ips, slices
        self.endpoints_version = listed.resourceVersion
        return len(slices)

    async def follow(self, backoff_s: float = 1.0) -> None:
        """Keep the snapshot current until cancelled: pods and, beside them, Services' endpoints (``_follow``)."""
        await asyncio.gather(
            self._follow("pod", Pod, self.refresh, lambda: self.version, self.apply, backoff_s),
            self._follow(
                "endpoints",
                EndpointSlice,
                self.refresh_endpoints,
                lambda: self.endpoints_version,
                self.apply_slice,
                backoff_s,
            ),
        )

    async def _follow(
        self,
        what: str,
        resource: type,
        relist: Callable[[], object],
        version: Callable[[], str],
        apply: Callable[[str, object], object],
        backoff_s: float,
    ) -> None:
        """List, then watch from the list's version. lightkube resumes a watch the server ends from the last
        version seen; an expired version (410 Gone) or an API server away brings a new list after a back-off
        (doubling up to a minute). Errors are counted, never raised."""
        delay = backoff_s
        while True:
            try:
                await relist()  # type: ignore[misc]
                delay = backoff_s
                async for kind, obj in self.client.watch(
                    resource, namespace="*", resource_version=version(), on_error=_relist_on_gone
                ):
                    await apply(kind, obj)  # type: ignore[misc]
            except (ApiError, HTTPError) as exc:
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.warning("kubernetes %s watch interrupted, listing again in %.1f s: %s", what, delay, exc)
            except Exception:  # an answer lightkube cannot read, say: naming must never stop the capture
                ERRORS.labels("sensor", "kubernetes_api").inc()
                log.exception("kubernetes %s watch failed, listing again in %.1f s", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def apply_slice(self, kind: str, es: EndpointSlice) -> None:
        """One EndpointSlice watch event: its endpoints replace the slice's previous ones (or go, when deleted)."""
        key = (es.metadata.namespace or "default", es.metadata.name or "")
        self._slices.pop(key, None)
        if kind != "DELETED":
            _put_slice(self._slices, es)

    async def apply(self, kind: str, pod: Pod) -> None:
        """One watch event: the pod's previous entries go; unless it was deleted, its current ones come in."""
        meta = pod.metadata
        key = (meta.namespace or "default", meta.name or "")
        ips, containers = self._keys.pop(key, ((), ()))
        for cid in containers:
            self.containers.pop(cid, None)
        tenant = self._pod_tenants.pop(key, None)
        if tenant is not None:
            self._gone_tenants[key] = (tenant, time.monotonic() + self.keep_s)
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
        marks = {**(pod.metadata.annotations or {}), **(pod.metadata.labels or {})}
        tenant_key = next((k for k in self.tenant_labels if marks.get(k)), "")
        tenant = marks.get(tenant_key, "") if tenant_key else ""
        feature = next((marks[k] for k in self.feature_labels if marks.get(k)), "")
        if tenant or feature:
            self._pod_tenants[(ident.namespace, ident.pod)] = (ident.name, tenant, feature, tenant_key)
            self._gone_tenants.pop((ident.namespace, ident.pod), None)
        if status is not None and spec is not None:
            specs = {c.name: c for c in [*(spec.containers or []), *(spec.initContainers or [])]}
            for cs in [*(status.containerStatuses or []), *(status.initContainerStatuses or [])]:
                if cs.containerID and cs.containerID.split("://", 1)[-1] in containers:
                    self.containers[cs.containerID.split("://", 1)[-1]] = _owner(
                        ident.name, tenant, feature, specs.get(cs.name)
                    )

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
        """The workload of a pod IP, or of a ClusterIP: the workload behind the Service (see the module docstring)."""
        ident = self.by_ip.get(addr)
        if ident is not None:
            return ident.name
        service = self._service_ips.get(addr)
        return self._behind(service) if service is not None else ""

    def _behind(self, service: tuple[str, str]) -> str:
        names = {
            ident.name
            for svc, ips in self._slices.values()
            if svc == service
            for ip in ips
            if (ident := self.by_ip.get(ip)) is not None
        }
        return names.pop() if len(names) == 1 else f"{service[0]}/{service[1]}"

    def container_owners(self) -> dict[str, Owner]:
        return self.containers

    def zone_of_node(self, node: str) -> str:
        """A node's zone as its label says, "" when not read (yet)."""
        return self._zones.get(node, "")

    def tenant_of(self, workload: str) -> tuple[str, str, str] | None:
        """(tenant, feature, label key) of a workload whose current and recently finished pods agree on them."""
        now = time.monotonic()
        for key, (_value, until) in list(self._gone_tenants.items()):
            if until < now:
                del self._gone_tenants[key]
        found = {v[1:] for v in self._pod_tenants.values() if v[0] == workload}
        found |= {v[1:] for v, _until in self._gone_tenants.values() if v[0] == workload}
        return found.pop() if len(found) == 1 else None

    def label_records(self, records: Iterable[ObservedCall]) -> int:
        """Give the calls of labelled workloads that carry no tenant their label's tenant (``tenant_method``
        ``label``) and feature; returns how many records got one."""
        done = 0
        cache: dict[str, tuple[str, str, str] | None] = {}
        for r in records:
            if r.tenant and r.feature:
                continue
            if r.src_workload not in cache:
                cache[r.src_workload] = self.tenant_of(r.src_workload)
            found = cache[r.src_workload]
            if found is None:
                continue
            tenant, feature, key = found
            if tenant and not r.tenant:
                r.tenant, r.tenant_method, r.tenant_rule = tenant, "label", f"label:{key}"
                done += 1
            if feature and not r.feature:
                r.feature = feature
        return done

    def pod_of_container(self, container_id: str) -> str:
        ident = self.by_container.get(container_id)
        return ident.name if ident else ""


def _put_slice(slices: dict, es: EndpointSlice) -> None:
    """An EndpointSlice's ready endpoints' addresses under its Service (label ``kubernetes.io/service-name``)."""
    meta = es.metadata
    service = (meta.labels or {}).get("kubernetes.io/service-name", "")
    if not service:
        return
    ips = tuple(
        sorted(
            addr
            for ep in es.endpoints or []
            if ep.conditions is None or ep.conditions.ready is not False
            for addr in ep.addresses
        )
    )
    slices[(meta.namespace or "default", meta.name or "")] = ((meta.namespace or "default", service), ips)


def _millis(quantity: object) -> int:
    value = parse_quantity(quantity)
    return int(value * 1000) if value is not None else 0


def _bytes(quantity: object) -> int:
    value = parse_quantity(quantity)
    return int(value) if value is not None else 0


def _owner(workload: str, tenant: str, feature: str, container: object) -> Owner:
    """A container's owner with the requests and limits of its spec (0 where none is set)."""
    resources = getattr(container, "resources", None)
    requests = (resources.requests if resources is not None else None) or {}
    limits = (resources.limits if resources is not None else None) or {}
    return Owner(
        workload=workload,
        tenant=tenant,
        feature=feature,
        cpu_request_millicores=_millis(requests["cpu"]) if "cpu" in requests else 0,
        cpu_limit_millicores=_millis(limits["cpu"]) if "cpu" in limits else 0,
        memory_request_bytes=_bytes(requests["memory"]) if "memory" in requests else 0,
        memory_limit_bytes=_bytes(limits["memory"]) if "memory" in limits else 0,
    )


def _relist_on_gone(exc: Exception, count: int) -> OnErrorResult:
    """A watch whose version has expired (410 Gone) cannot be resumed without missing deletions: stop it, so that
    ``follow`` lists again. Other errors are retried a few times, then they too bring a new list."""
    if (isinstance(exc, ApiError) and exc.status.code == 410) or count > 3:
        return OnErrorResult(OnErrorAction.RAISE)
    ERRORS.labels("sensor", "kubernetes_api").inc()
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(2.0**count, 30.0))
