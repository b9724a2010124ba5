"""The thin real path, end to end: capture → sensor → redactor → JetStream → attributor → PostgreSQL → API, with
every service a real ``costmesh`` process against a real nats-server and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import urllib.error

import psutil
import pytest

from costmesh.common.config import load_config
from costmesh.common.embedded import free_port
from costmesh.common.supervisor import Stack, http_json

from .conftest import DATA, wait_for


@pytest.fixture
def config_file(tmp_path, nats_server, fresh_dsn):
    api_port = free_port()
    path = tmp_path / "costmesh.toml"
    path.write_text(
        f'node = "node-a"\n[nats]\nurl = "{nats_server.url}"\n[postgres]\ndsn = "{fresh_dsn}"\n'
        f"[api]\nport = {api_port}\n"
    )
    return path


async def test_capture_reaches_the_api_per_tenant(config_file, tmp_path):
    truth = json.loads((DATA / "demo_tenants.truth.json").read_text())
    stack = Stack(load_config(config_file), str(config_file), tmp_path / "data", [str(DATA / "demo_tenants.pcap")])
    await asyncio.to_thread(stack.start)
    pids = [proc.pid for proc, _port in stack.children.values()]
    try:
        base = f"http://127.0.0.1:{stack.api_port}"

        async def all_applied():
            sensor = await asyncio.to_thread(stack.health, "sensor")
            ingest = await asyncio.to_thread(http_json, base + "/v1/ingest")
            return sensor["replay_done"] and ingest["applied_batches"] == sensor["batches_published"] > 0

        await wait_for(all_applied)
        usage = await asyncio.to_thread(http_json, base + "/v1/usage?group_by=tenant")
        by_tenant = {row["tenant"]: row["requests"] for row in usage["rows"]}
        assert by_tenant == truth["requests_by_tenant"]
        assert sum(row["errors"] for row in usage["rows"]) == truth["errors"]
        methods = await asyncio.to_thread(http_json, base + "/v1/usage?group_by=tenant_method")
        assert {r["tenant_method"]: r["requests"] for r in methods["rows"]} == {
            "header": sum(truth["requests_by_tenant"].values()) - truth["requests_by_tenant"][""],
            "unallocated": truth["requests_by_tenant"][""],
        }
        with pytest.raises(urllib.error.HTTPError) as err:
            await asyncio.to_thread(http_json, base + "/v1/usage?group_by=tenant&tenantt=acme")
        assert err.value.code == 400
        assert "tenantt" in json.loads(err.value.read())["error"]
    finally:
        await asyncio.to_thread(stack.stop)
    assert not [pid for pid in pids if psutil.pid_exists(pid)], "a service process outlived stop()"
