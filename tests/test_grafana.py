"""The Grafana dashboard under ``deploy/grafana/`` is valid JSON, and every query names only metrics that costmesh
exports (a renamed metric would otherwise leave a silently empty panel)."""

from __future__ import annotations

import importlib
import json
import re

import pytest

from .conftest import REPO

DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
#: Modules that declare metrics against the shared registry (importing them registers their metrics).
METRIC_MODULES = (
    "costmesh.common.metrics",
    "costmesh.api.app",
    "costmesh.redactor.metrics",
    "costmesh.sensor.live",
    "costmesh.sensor.live_service",
)
_METRIC = re.compile(r"\b(costmesh_[a-z0-9_]+)\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exported() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    from costmesh.common.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def queries(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [q for v in node.values() for q in queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in queries(v)]
    return []


def test_there_is_a_dashboard():
    assert DASHBOARDS, "deploy/grafana/ holds no dashboard"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_queries_exported_metrics(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = exported()
    found = queries(dashboard)
    assert len(found) >= len(dashboard["panels"])
    for expr in found:
        used = set(_METRIC.findall(expr))
        assert used, f"query names no costmesh metric: {expr}"
        assert used <= names, f"{path.name}: {sorted(used - names)} not exported (query {expr!r})"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    # the cost metrics themselves are on the dashboard
    from costmesh.api.costmetrics import NAMES

    assert set(NAMES) <= {n for q in found for n in _METRIC.findall(q)}
