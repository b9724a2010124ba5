"""Kubernetes identity through lightkube against a local aiohttp server on 127.0.0.1 that answers with Kubernetes API
responses (tests/data/k8s/): pod IPs and container ids resolve to owner workloads through ReplicaSets and Jobs, with
namespace, labels and node zone; the pod list is paged; unknown owners and API errors degrade, never fail. After one
list, a watch keeps the snapshot current (pods added, changed and deleted), and an expired watch (410 Gone) brings a
new list."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
from aiohttp import web

from costmesh.common.config import Config
from costmesh.sensor.live.identity import IdentityResolver
from costmesh.sensor.live.identity_k8s import KubernetesIdentity

from .conftest import DATA, wait_for

K8S = DATA / "k8s"


def _pod(name: str, ip: str, container: str, resource_version: str) -> dict:
    """A pod of the orders Deployment (as in pods-page1.json) under another name, IP and container id."""
    pod = copy.deepcopy(json.loads((K8S / "pods-page1.json").read_text())["items"][0])
    pod["metadata"].update(name=name, uid=f"uid-{name}", resourceVersion=resource_version)
    pod["status"].update(podIP=ip, podIPs=[{"ip": ip}])
    pod["status"]["containerStatuses"][0]["containerID"] = f"containerd://{container}"
    pod["status"]["initContainerStatuses"] = []
    return pod


def _debug_pod() -> dict:
    items = json.loads((K8S / "pods-page2.json").read_text())["items"]
    return next(p for p in items if p["metadata"]["name"] == "debug")


#: What successive watch requests stream: a pod added, the same pod moved to another IP, the bare debug pod deleted,
#: then (resuming from the last version) 410 Gone, then (after a new list) nothing, held open.
WATCHES = [
    [
        {"type": "ADDED", "object": _pod("orders-7d9f8c6b5-n3w", "10.244.3.7", "c0ffee00" * 8, "90211")},
        {"type": "MODIFIED", "object": _pod("orders-7d9f8c6b5-n3w", "10.244.3.8", "c0ffee00" * 8, "90212")},
        {
            "type": "DELETED",
            "object": {**_debug_pod(), "metadata": {**_debug_pod()["metadata"], "resourceVersion": "90213"}},
        },
    ],
    [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 90213 (95000)",
                "reason": "Expired",
                "code": 410,
            },
        }
    ],
]


@pytest.fixture
async def api_server():
    """Serves the recorded responses; records every request path+query so the test can see what was asked."""
    seen: list[str] = []
    closing = asyncio.Event()

    def reply(obj: dict, status: int = 200) -> web.Response:
        # As the API server does: exactly "application/json" (lightkube reads error Status bodies only then).
        return web.Response(body=json.dumps(obj).encode(), status=status, headers={"Content-Type": "application/json"})

    def answer(name: str) -> web.Response:
        return reply(json.loads((K8S / name).read_text()))

    async def pods(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if request.headers.get("Authorization") != "Bearer sensor-token":
            return reply({"kind": "Status", "apiVersion": "v1", "code": 401, "reason": "Unauthorized"}, 401)
        if request.query.get("watch") == "true":
            return await watch(request)
        return answer("pods-page2.json" if request.query.get("continue") else "pods-page1.json")

    async def watch(request: web.Request) -> web.StreamResponse:
        n = sum(1 for p in seen if "watch=true" in p) - 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for event in WATCHES[n] if n < len(WATCHES) else []:
            await resp.write(json.dumps(event).encode() + b"\n")
        if n >= len(WATCHES):
            await closing.wait()  # a watch with nothing to say stays open
        await resp.write_eof()
        return resp

    async def replicaset(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        ns, name = request.match_info["ns"], request.match_info["name"]
        path = K8S / f"replicaset-{ns}-{name}.json"
        if not path.exists():
            return reply(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": f'replicasets.apps "{name}" not found',
                    "metadata": {},
                },
                404,
            )
        return answer(path.name)

    async def job(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return answer(f"job-{request.match_info['ns']}-{request.match_info['name']}.json")

    async def node(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return answer(f"node-{request.match_info['name']}.json")

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    app.router.add_get("/apis/apps/v1/namespaces/{ns}/replicasets/{name}", replicaset)
    app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", job)
    app.router.add_get("/api/v1/nodes/{name}", node)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    closing.set()
    await runner.cleanup()


async def test_pods_resolve_to_owner_workloads_with_zone_and_labels(api_server):
    url, seen = api_server
    k8s = KubernetesIdentity.for_server(url, token="sensor-token")
    try:
        assert await k8s.refresh() == 5
        # A second refresh asks for the pods again but not for owners or nodes already known.
        asked = len(seen)
        await k8s.refresh()
        assert [p for p in seen[asked:] if not p.startswith("/api/v1/pods")] == []
    finally:
        await k8s.close()

    orders = k8s.by_ip["10.244.1.17"]
    assert (orders.namespace, orders.workload_kind, orders.workload, orders.zone) == (
        "shop",
        "Deployment",
        "orders",
        "eu-west-1a",
    )
    assert dict(orders.labels)["app"] == "orders"
    assert orders.name == "shop/orders"
    assert k8s.pod_of_container("a1b2c3d4" * 8) == "shop/orders"
    assert k8s.pod_of_container("d4e5f6a7" * 8) == "shop/orders"  # an init container counts too
    assert k8s.pod_of_ip("10.244.1.23") == "shop/postgres"  # StatefulSet: no lookup needed
    report = k8s.by_ip["10.244.2.5"]
    assert (report.workload_kind, report.workload, report.zone) == ("CronJob", "report", "eu-west-1b")
    assert k8s.pod_of_ip("10.244.2.99") == "default/debug"  # a bare pod is its own workload
    # Host-network pods share the node IP: only their container id names them.
    assert k8s.pod_of_ip("192.168.1.10") == ""
    assert k8s.pod_of_container("e5f6a7b8" * 8) == "costmesh/costmesh-sensor"
    assert any("continue=" in p for p in seen), "the second page of pods was not read"

    resolver = IdentityResolver(Config(), pod_of_ip=k8s.pod_of_ip, pod_of_container=k8s.pod_of_container)
    assert resolver.name("10.244.1.17", 8080) == "shop/orders"
    assert resolver.name("10.9.9.9", 80) == ""


async def test_a_missing_owner_degrades_to_the_replicaset(api_server, tmp_path):
    url, _seen = api_server
    k8s = KubernetesIdentity.for_server(url, token="sensor-token")
    try:
        kind, name = await k8s._owner_of("ReplicaSet", "shop", "gone-123")
    finally:
        await k8s.close()
    assert (kind, name) == ("ReplicaSet", "gone-123")


async def test_a_watch_keeps_the_snapshot_current_and_an_expired_one_lists_again(api_server):
    url, seen = api_server
    k8s = KubernetesIdentity.for_server(url, token="sensor-token")
    following = asyncio.create_task(k8s.follow(backoff_s=0.05))
    try:

        async def moved() -> bool:
            return k8s.pod_of_ip("10.244.3.8") == "shop/orders"

        await wait_for(moved, timeout=10)
        # The pod added by the watch, then moved: only its current IP names it; the deleted bare pod is gone.
        assert k8s.pod_of_ip("10.244.3.7") == "" and k8s.pod_of_container("c0ffee00" * 8) == "shop/orders"

        async def listed_again() -> bool:
            lists = [p for p in seen if p.startswith("/api/v1/pods") and "watch" not in p and "continue" not in p]
            return len(lists) >= 2 and sum("watch=true" in p for p in seen) >= 3

        await wait_for(listed_again, timeout=10)
    finally:
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following
        await k8s.close()
    watches = [p for p in seen if "watch=true" in p]
    assert "resourceVersion=90210" in watches[0]  # the first watch starts where the list was made
    assert "resourceVersion=90213" in watches[1]  # the server ended it: resumed from the last event seen
    # After 410 Gone, a new list: the snapshot is the list's again (the debug pod is back, the watched pod gone).
    assert k8s.pod_of_ip("10.244.2.99") == "default/debug"
    assert k8s.pod_of_ip("10.244.3.8") == ""
    assert k8s.pod_of_ip("10.244.1.17") == "shop/orders"


async def test_a_deleted_pod_does_not_take_a_newer_pods_ip_with_it():
    """Pod IPs are reused: a finished pod lingers (Jobs) while a new pod gets its IP. Deleting the old one must not
    unname the new one; a finished pod names nothing."""
    from lightkube.models.core_v1 import Container, PodSpec, PodStatus
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Pod

    def pod(name: str, phase: str) -> Pod:
        return Pod(
            metadata=ObjectMeta(name=name, namespace="default"),
            spec=PodSpec(containers=[Container(name="main")]),
            status=PodStatus(phase=phase, podIP="10.9.0.5"),
        )

    k8s = KubernetesIdentity.for_server("http://127.0.0.1:9")  # bare pods on no node: nothing is asked of it
    try:
        await k8s.apply("ADDED", pod("report-1", "Running"))
        assert k8s.pod_of_ip("10.9.0.5") == "default/report-1"
        await k8s.apply("MODIFIED", pod("report-1", "Succeeded"))
        assert k8s.pod_of_ip("10.9.0.5") == ""
        await k8s.apply("ADDED", pod("web", "Running"))
        await k8s.apply("DELETED", pod("report-1", "Succeeded"))
        assert k8s.pod_of_ip("10.9.0.5") == "default/web"
        await k8s.apply("ADDED", pod("web-2", "Running"))  # the IP moved on while web's deletion is still to come
        await k8s.apply("DELETED", pod("web", "Running"))
        assert k8s.pod_of_ip("10.9.0.5") == "default/web-2"
    finally:
        await k8s.close()
