"""The billing service against a real PostgreSQL: imports a folder source and revenue, allocates each period with
observed consumption, replaces a period's result on re-run, and the API serves /v1/cost and /v1/pnl from it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
from aiohttp.test_utils import TestServer

from costmesh.api.app import make_app
from costmesh.billing import service
from costmesh.billing.pipeline import period_window
from costmesh.common import db
from costmesh.common.config import BillSource, Config, ResourceMapping
from costmesh.common.runtime import ServiceContext

from .conftest import SHARED_DATA, wait_for

SQS_LINE_AMOUNT = Decimal("0.00000080000")  # the first line of the sample: an SQS queue, 2024-09-18 22:00-23:00


async def _seed_consumption(pool) -> None:
    """The hourly rollup the attributor would have written (billing allocates from hours only)."""
    hour = datetime(2024, 9, 18, 22, tzinfo=UTC)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO consumption_hourly (hour, tenant, tenant_method, feature, agent, src_workload, dst,"
            " protocol, requests, errors, bytes_in, bytes_out, busy_us, tokens_in, tokens_out, tokens_cached,"
            " tokens_reasoning) VALUES ($1, $2, 'header', $3, '', 'api', 'orders-queue', 'kafka', 1, 0, 0, $4,"
            " 0, 0, 0, 0, 0)",
            [(hour, "acme", "checkout", 300), (hour, "globex", "search", 100)],
        )


async def test_service_imports_allocates_and_api_serves(fresh_dsn, tmp_path):
    revenue = tmp_path / "revenue.csv"
    revenue.write_text("customer,period,amount,currency\nacme,2024-09,0.000001,USD\nglobex,2024-09,0,USD\n")
    config = Config()
    config.billing.sources = [BillSource(name="focus", kind="folder", path=str(SHARED_DATA / "billing" / "focus"))]
    config.billing.revenue_files = [str(revenue)]
    config.resources = [ResourceMapping(resource="orders-queue", kind="queue", match="mibelllmel-i-032l64f2065481b12")]
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        await _seed_consumption(pool)
        ctx = ServiceContext("billing", config, "", fresh_dsn)
        task = asyncio.create_task(service.main(ctx))

        async def ran() -> bool:
            return int(ctx.health.get("allocation_runs", 0)) >= 1  # type: ignore[call-overload]

        await wait_for(ran, timeout=60)
        ctx.stopping.set()
        await asyncio.wait_for(task, 10)
        assert ctx.health["periods"] == ["2024-09", "2024-10"]

        async with pool.acquire() as conn:
            # four files, 1000 distinct charges: the split files repeat the all-providers file's rows
            assert await conn.fetchval("SELECT count(*) FROM cost_lines") == 1000
            mismatched = await conn.fetchval(
                "SELECT count(*) FROM cost_lines c LEFT JOIN"
                " (SELECT line_id, sum(amount) s FROM allocations GROUP BY 1) a USING (line_id)"
                " WHERE a.s IS DISTINCT FROM c.amount"
            )
            assert mismatched == 0
            rows = await conn.fetch(
                "SELECT tenant, feature, method, basis, amount FROM allocations WHERE resource = 'orders-queue'"
                " ORDER BY tenant"
            )
            assert [(r["tenant"], r["feature"], r["method"], r["basis"], r["amount"]) for r in rows] == [
                ("acme", "checkout", "direct", "bytes", SQS_LINE_AMOUNT * 3 / 4),
                ("globex", "search", "direct", "bytes", SQS_LINE_AMOUNT / 4),
            ]
            before = await conn.fetchval("SELECT count(*) FROM allocations")
        # a second run replaces, never adds
        await service.run_once(pool, config, first=True)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM allocations") == before

        server = TestServer(make_app(pool, ctx), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession(str(server.make_url(""))) as http:
                async with http.get("/v1/cost", params={"group_by": "tenant", "period": "2024-09"}) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                by_tenant = {r["tenant"]: r for r in body["rows"]}
                assert Decimal(by_tenant["acme"]["cost"]) == SQS_LINE_AMOUNT * 3 / 4
                assert by_tenant["acme"]["by_method"] == {"direct": by_tenant["acme"]["cost"]}
                assert set(by_tenant[""]["by_method"]) == {"unallocated"}
                async with http.get("/v1/cost", params={"group_by": "feature"}) as resp:
                    features = {r["feature"] for r in (await resp.json())["rows"]}
                    assert {"checkout", "search"} <= features
                for bad in ({"group_by": "color"}, {"period": "2024-9"}, {"limits": "3"}):
                    async with http.get("/v1/cost", params=bad) as resp:
                        assert resp.status == 400, bad
                        assert next(iter(bad)) in (await resp.json())["error"]
                async with http.get("/v1/pnl", params={"period": "2024-09"}) as resp:
                    assert resp.status == 200
                    pnl = await resp.json()
                assert [c["customer"] for c in pnl["customers"]] == ["globex", "acme"]
                acme = pnl["customers"][1]
                assert Decimal(acme["margin"]) == Decimal("0.000001") - SQS_LINE_AMOUNT * 3 / 4
                total = sum(Decimal(c["cost"]) for c in pnl["customers"]) + Decimal(pnl["unallocated"])
                assert total == Decimal(pnl["billed"])
                async with http.get("/v1/pnl") as resp:
                    assert resp.status == 400
        finally:
            await server.close()
    finally:
        await pool.close()


def test_month_window():
    w = period_window("2024-12")
    assert (w.end_us - w.start_us) == 31 * 86_400_000_000


async def test_unmatched_from_the_database(fresh_dsn, capsys):
    import argparse

    from costmesh.billing import store
    from costmesh.billing.commands import unmatched
    from costmesh.billing.focus import read_focus

    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        await _seed_consumption(pool)
        async with pool.acquire() as conn:
            await store.import_file(
                conn, read_focus(SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_oci.csv"), "f"
            )
    finally:
        await pool.close()
    config = Config()
    config.resources = [ResourceMapping(resource="x", kind="compute", match="anzwuljr9foqhxicrmnkosbza1kyjx8")]
    args = argparse.Namespace(bill=[], capture=[], dsn=fresh_dsn, period="2024-09", limit=3)
    assert await asyncio.to_thread(unmatched, args, config) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "5 cost line(s) match no observed resource; the 3 largest:"  # 6 in 2024-09, one mapped
    assert len(out) == 5 and all("was not observed" in line for line in out[2:])
