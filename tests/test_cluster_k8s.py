"""Kubernetes signals for allocation (issue 16), against a loopback API server answering recorded-shape objects
(tests/data/k8s/): a ClusterIP names the workload behind its EndpointSlices (the Service when its endpoints are
not one workload's); container owners carry the pod spec's requests and limits; a Job's ``costmesh.io/tenant`` label
and ``costmesh.io/feature`` annotation go on every call it makes and on its CPU, also in the window after its pod is
gone; and the container's CPU is read from its real cgroup on this machine, found by the container id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from aiohttp import web
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from costmesh.common.config import ClusterConfig, Config
from costmesh.common.schemas import ObservedCall
from costmesh.sensor.live.compute import ComputeSampler, Owner, cgroup2_root
from costmesh.sensor.live.identity_k8s import KubernetesIdentity

from .conftest import DATA

K8S = DATA / "k8s"
CHECKOUT_CID, EXPORT_CID = "1" * 64, "2" * 64


@pytest.fixture
async def api_server():
    def answer(name: str) -> web.Response:
        return web.Response(body=(K8S / name).read_bytes(), headers={"Content-Type": "application/json"})

    def missing() -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        return web.Response(body=json.dumps(body).encode(), status=404, headers={"Content-Type": "application/json"})

    async def owner(request: web.Request) -> web.Response:
        kind = "replicaset" if "replicasets" in request.path else "job"
        path = K8S / f"{kind}-{request.match_info['ns']}-{request.match_info['name']}.json"
        return answer(path.name) if path.exists() else missing()

    def serve(name: str):
        async def handler(request: web.Request) -> web.Response:
            return answer(name.format(**request.match_info))

        return handler

    app = web.Application()
    app.router.add_get("/api/v1/pods", serve("cluster-pods.json"))
    app.router.add_get("/api/v1/services", serve("services.json"))
    app.router.add_get("/apis/discovery.k8s.io/v1/endpointslices", serve("endpointslices.json"))
    app.router.add_get("/api/v1/nodes/{name}", serve("node-{name}.json"))
    app.router.add_get("/apis/apps/v1/namespaces/{ns}/replicasets/{name}", owner)
    app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs/{name}", owner)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    k8s = KubernetesIdentity.for_server(f"http://127.0.0.1:{port}")
    try:
        assert await k8s.refresh() == 3
        assert await k8s.refresh_endpoints() == 2
        yield k8s
    finally:
        await k8s.close()
        await runner.cleanup()


async def test_a_cluster_ip_is_the_workload_behind_it(api_server):
    k8s = api_server
    assert k8s.pod_of_ip("10.96.0.50", 80) == "shop/checkout"  # both endpoints, in two zones, are checkout's
    assert k8s.pod_of_ip("10.96.0.1", 443) == "default/kubernetes"  # endpoints outside the pods: the Service
    assert k8s.pod_of_ip("10.244.2.31") == "shop/checkout" and k8s.by_ip["10.244.2.31"].zone == "eu-west-1b"
    # the watch removes the Service's slice: no workload behind the ClusterIP, so it is named as the Service
    (es,) = [s for s in _slices() if s.metadata.name == "checkout-svc-x7d2k"]
    await k8s.apply_slice("DELETED", es)
    assert k8s.pod_of_ip("10.96.0.50") == "shop/checkout-svc"
    await k8s.apply_slice("ADDED", es)
    assert k8s.pod_of_ip("10.96.0.50") == "shop/checkout"
    assert k8s.zone_of_node("worker-1") == "eu-west-1a"


def _slices() -> list[EndpointSlice]:
    return [EndpointSlice.from_dict(x) for x in json.loads((K8S / "endpointslices.json").read_text())["items"]]


async def test_containers_carry_requests_limits_and_the_label_tenant(api_server):
    owners = api_server.container_owners()
    assert owners[CHECKOUT_CID] == Owner(
        workload="shop/checkout",
        cpu_request_millicores=500,
        cpu_limit_millicores=1000,
        memory_request_bytes=256 * 2**20,
        memory_limit_bytes=512 * 2**20,
    )
    assert owners[EXPORT_CID] == Owner(
        workload="batch/export-acme", tenant="acme", feature="export", cpu_request_millicores=250
    )


async def test_a_labelled_jobs_calls_carry_its_tenant_also_after_its_pod_is_gone(api_server):
    k8s = api_server

    def calls() -> list[ObservedCall]:
        return [
            ObservedCall(window_start_us=0, window_end_us=1, node="worker-1", src_workload="batch/export-acme",
                         dst="shop/db", protocol="postgres", requests=3),
            ObservedCall(window_start_us=0, window_end_us=1, node="worker-1", src_workload="batch/export-acme",
                         dst="shop/checkout", protocol="http", tenant="globex", tenant_method="header", requests=1),
            ObservedCall(window_start_us=0, window_end_us=1, node="worker-1", src_workload="shop/checkout",
                         dst="shop/db", protocol="postgres", requests=2),
        ]  # fmt: skip

    records = calls()
    assert k8s.label_records(records) == 1
    assert [(r.tenant, r.tenant_method, r.tenant_rule, r.feature) for r in records] == [
        ("acme", "label", "label:costmesh.io/tenant", "export"),
        ("globex", "header", "", "export"),  # the call's own tenant wins; the feature label still applies
        ("", "unallocated", "", ""),
    ]
    # the Job finished and its pod went within a second: its last window's calls still carry the label, for keep_s
    pods = json.loads((K8S / "cluster-pods.json").read_text())["items"]
    export = Pod.from_dict(next(p for p in pods if p["metadata"]["name"].startswith("export")))
    k8s.keep_s = 2.0
    await k8s.apply("DELETED", export)
    assert EXPORT_CID not in k8s.container_owners()
    records = calls()
    assert k8s.label_records(records) == 1 and records[0].tenant == "acme"
    time.sleep(2.1)
    records = calls()
    assert k8s.label_records(records) == 0 and records[0].tenant == ""


BURNER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
t0 = time.process_time()
while time.process_time() - t0 < 0.4:
    pass
print(time.process_time() - t0, flush=True)
sys.stdin.readline()
"""


async def test_a_containers_cgroup_is_found_by_its_id_and_read_with_its_requests(api_server):
    """The container cgroup as containerd names it (``cri-containerd-<id>.scope``), made on this machine's real
    cgroup tree; a process in it burns 0.4 CPU-s."""
    root = cgroup2_root()
    if root is None:
        print("no cgroup v2 mount on this machine")
        pytest.skip("no cgroup v2 mount on this machine")
    parent = root / f"costmesh-test-k8s-{os.getpid()}"
    scope = parent / f"cri-containerd-{CHECKOUT_CID}.scope"
    try:
        scope.mkdir(parents=True)
    except OSError as exc:
        print(f"the cgroup filesystem refused a child cgroup under {root}: {exc}")
        pytest.skip(f"the cgroup filesystem refused a child cgroup under {root}: {exc}")
    proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (scope / "cgroup.procs").write_text(str(proc.pid))
        k8s = api_server
        config = Config(cluster=ClusterConfig(compute="cgroup"))
        sampler = ComputeSampler(
            config, "worker-1", cgroup_root=root, containers=k8s.container_owners, zone=lambda: "eu-west-1a"
        )
        sampler.sample(0, 1_000_000)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        burnt = float(proc.stdout.readline())
        samples, capacity = sampler.sample(1_000_000, 2_000_000)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()
        for d in (scope, parent):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
    (s,) = [x for x in samples if x.workload == "shop/checkout"]
    print(f"burnt {burnt:.4f} CPU-s, read {s.cpu_usage_us / 1e6:.4f} CPU-s from {scope.name}")
    assert abs(s.cpu_usage_us / 1e6 - burnt) <= 0.02 * burnt
    assert (s.cpu_request_millicores, s.memory_limit_bytes, s.zone) == (500, 512 * 2**20, "eu-west-1a")
    assert capacity[0].zone == "eu-west-1a"
