"""deploy/kubernetes/ cannot be applied here (no cluster), so its structure is checked: every file is in the
kustomization, every costmesh service runs with a real subcommand and valid options, the sensor DaemonSet has host
network and PID and exactly the capabilities it documents (the redactor beside it none), the sensor's service
account may read what identity needs and nothing more, and the ConfigMap is a valid costmesh config."""

from __future__ import annotations

import re

import pytest
import yaml

from costmesh.cli import SERVICES, build_parser
from costmesh.common.config import load_config

from .conftest import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
SENSOR_CAPS = {"BPF", "PERFMON", "NET_RAW", "SYS_RESOURCE", "SYS_PTRACE"}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def _of(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def _containers(docs):
    for d in _of(docs, "DaemonSet") + _of(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            yield d, c


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert kust["namespace"] == "costmesh"


def test_every_object_is_well_formed(docs):
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"].get("namespace") == "costmesh", d["metadata"]
    for d in _of(docs, "DaemonSet") + _of(docs, "Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), d["metadata"]["name"]


def test_every_service_runs_a_real_subcommand(docs):
    parser = build_parser()
    seen = set()
    for _d, c in _containers(docs):
        assert c["command"][0] == "costmesh"
        args = parser.parse_args(c["command"][1:])  # exits (fails) on an unknown option or subcommand
        seen.add(args.command)
        port = args.metrics_port
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                assert c[probe]["httpGet"] == {"path": "/healthz", "port": port}, (c["name"], probe)
        assert "readinessProbe" in c, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        assert args.config == "/etc/costmesh/costmesh.toml"
        assert any(m["mountPath"] == args.config for m in c["volumeMounts"]), c["name"]
    assert seen == set(SERVICES)


def test_sensor_daemonset_host_namespaces_and_only_documented_capabilities(docs):
    (ds,) = _of(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # cluster DNS (NATS) from the host network
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"sensor", "redactor"}
    sensor = containers["sensor"]["securityContext"]
    assert sensor.get("privileged") is False
    assert sensor["capabilities"]["drop"] == ["ALL"]
    assert set(sensor["capabilities"]["add"]) == SENSOR_CAPS
    header = (DEPLOY / "sensor-daemonset.yaml").read_text().split("apiVersion:", 1)[0]
    for cap in SENSOR_CAPS:  # each capability is explained where it is granted
        assert re.search(rf"^#\s+{cap}\s+\S", header, re.M), cap
    redactor = containers["redactor"]["securityContext"]
    assert redactor["capabilities"] == {"drop": ["ALL"]} and redactor["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in containers["sensor"]["volumeMounts"]}
    for path in ("/lib/modules", "/usr/src"):
        assert mounts[path]["readOnly"] is True
    assert "/sys/kernel/tracing" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in containers["sensor"]["volumeMounts"]:
        assert m["name"] in volumes
    # Sensor and redactor agree on the node name (the raw subject) through the same downward-API variable.
    for c in containers.values():
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["COSTMESH_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["serviceAccountName"] == "costmesh-sensor"
    for _d, c in _containers(docs):
        if c["name"] != "sensor":
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]


def test_sensor_rbac_is_read_only_and_covers_identity(docs):
    (role,) = [r for r in _of(docs, "ClusterRole") if r["metadata"]["name"] == "costmesh-sensor"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("", "pods"),
        ("", "nodes"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in role["rules"])
    (binding,) = _of(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "costmesh-sensor"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "costmesh-sensor", "namespace": "costmesh"}]


def test_configmap_is_a_valid_config_whose_secrets_are_provided(docs, tmp_path):
    (cm,) = _of(docs, "ConfigMap")
    path = tmp_path / "costmesh.toml"
    path.write_text(cm["data"]["costmesh.toml"])
    config = load_config(path)
    assert config.sensor.identity == "kubernetes"
    assert config.sensor.interfaces
    env_names = {e["name"] for _d, c in _containers(docs) for e in c.get("env", [])}
    for needed in (config.postgres.dsn_env, config.redactor.tenant_hmac_key_env, config.api.tokens_env):
        assert needed in env_names, needed
