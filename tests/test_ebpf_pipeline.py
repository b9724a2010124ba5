"""Live capture through the whole pipeline: ``costmesh up`` without a capture to replay runs the sensor live on
``lo``; requests of a local service with tenant headers reach the API as usage per tenant, through the real redactor,
JetStream and attributor processes (batches carry the kernel flow volumes too).

lo is shared with other work on this machine, so the tenants are unique to this run and only they are compared."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from costmesh.common.config import load_config
from costmesh.common.embedded import free_port
from costmesh.common.supervisor import Stack, http_json

from .conftest import wait_for


@pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (CAP_BPF/CAP_PERFMON/CAP_NET_RAW)")
async def test_live_capture_reaches_the_api_per_tenant(tmp_path, nats_server, fresh_dsn):
    port, api_port = free_port(), free_port()
    path = tmp_path / "costmesh.toml"
    path.write_text(
        f'node = "node-live"\n[nats]\nurl = "{nats_server.url}"\n[postgres]\ndsn = "{fresh_dsn}"\n'
        f'[api]\nport = {api_port}\n[sensor]\ninterfaces = ["lo"]\nhttp_ports = [{port}]\ntls_capture = false\n'
    )
    stack = Stack(load_config(path), str(path), tmp_path / "data", [])
    await asyncio.to_thread(stack.start)
    try:
        health = await asyncio.to_thread(stack.health, "sensor")
        if str(health.get("live", "")).startswith("unavailable"):
            pytest.skip(f"live capture unavailable here: {health['live']}")
        run = uuid.uuid4().hex[:8]
        sent = Counter({f"acme-{run}": 6, f"globex-{run}": 3})
        app = web.Application()

        async def order(_request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/orders/{id}", order)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        async with aiohttp.ClientSession() as client:
            for tenant, n in sent.items():
                for i in range(n):
                    async with client.get(f"http://127.0.0.1:{port}/orders/{i}", headers={"X-Tenant-ID": tenant}) as r:
                        assert r.status == 200
        await runner.cleanup()
        base = f"http://127.0.0.1:{stack.api_port}"

        async def arrived():
            rows = (await asyncio.to_thread(http_json, base + "/v1/usage?group_by=tenant"))["rows"]
            got = Counter({r["tenant"]: r["requests"] for r in rows if r["tenant"] in sent})
            return got == sent

        await wait_for(arrived, timeout=30)
        sensor = await asyncio.to_thread(stack.health, "sensor")
        assert sensor["live"] == "capturing" and sensor["flows_published"] > 0
    finally:
        await asyncio.to_thread(stack.stop)
