"""Kubernetes identity through lightkube against a local aiohttp server on 127.0.0.1 that answers with Kubernetes API
responses (tests/data/k8s/): pod IPs and container ids resolve to owner workloads through ReplicaSets and Jobs, with
namespace, labels and node zone; the pod list is paged; unknown owners and API errors degrade, never fail."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from costmesh.common.config import Config
from costmesh.sensor.identity import IdentityResolver
from costmesh.sensor.identity_k8s import KubernetesIdentity

from .conftest import DATA

K8S = DATA / "k8s"


@pytest.fixture
async def api_server():
    """Serves the recorded responses; records every request path+query so the test can see what was asked."""
    seen: list[str] = []

    def reply(obj: dict, status: int = 200) -> web.Response:
        # As the API server does: exactly "application/json" (lightkube reads error Status bodies only then).
        return web.Response(body=json.dumps(obj).encode(), status=status, headers={"Content-Type": "application/json"})

    def answer(name: str) -> web.Response:
        return reply(json.loads((K8S / name).read_text()))

    async def pods(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if request.headers.get("Authorization") != "Bearer sensor-token":
            return reply({"kind": "Status", "apiVersion": "v1", "code": 401, "reason": "Unauthorized"}, 401)
        return answer("pods-page2.json" if request.query.get("continue") else "pods-page1.json")

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
