"""The live dependency graph: nodes appear without configuration, queues read producer → topic → consumer, idle nodes
age out; served by ``/v1/graph``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer

from costmesh.api.app import make_app
from costmesh.attributor.apply import apply_batches, prepare
from costmesh.common import db
from costmesh.common.config import Config
from costmesh.common.graph import live_graph
from costmesh.common.prices import PriceTable
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, ObservedCall

T = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def call(at: datetime, src: str, dst: str, protocol: str = "http", **kw) -> ObservedCall:
    start = int(at.timestamp()) * 1_000_000
    return ObservedCall(
        window_start_us=start,
        window_end_us=start + 1_000_000,
        node="n",
        src_workload=src,
        dst=dst,
        protocol=protocol,
        **kw,
    )


async def test_graph_grows_by_itself_and_ages_out(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    await db.migrate(pool)
    conn = await asyncpg.connect(fresh_dsn)
    await prepare(conn)
    try:
        first = [
            call(T, "web", "orders", requests=10, bytes_out=1000, busy_us=5000),
            call(T, "orders", "orders-db:5432", "postgres", requests=30, busy_us=9000),
            call(T, "orders", "kafka:9092", "kafka", operation="produce order-events", requests=3, bytes_out=300),
            call(T, "mailer", "kafka:9092", "kafka", operation="fetch order-events", requests=2, bytes_in=280),
            call(T + timedelta(seconds=30), "web", "orders", requests=5, bytes_out=500, busy_us=2500),
        ]
        await apply_batches(conn, [CallBatch(batch_id="1", node="n", seq=1, records=first)], PriceTable())
        g = await live_graph(conn, at=T + timedelta(minutes=5))
        assert {n["name"]: n["kind"] for n in g["nodes"]} == {
            "web": "workload",
            "orders": "workload",
            "mailer": "workload",
            "orders-db:5432": "database",
            "topic:order-events": "topic",
        }
        edges = {(e["src"], e["dst"]): e for e in g["edges"]}
        assert set(edges) == {
            ("web", "orders"),
            ("orders", "orders-db:5432"),
            ("orders", "topic:order-events"),
            ("topic:order-events", "mailer"),
        }
        assert (edges[("web", "orders")]["calls"], edges[("web", "orders")]["busy_us"]) == (15, 7500)
        assert edges[("orders", "orders-db:5432")]["busy_us"] == 9000

        # two hours later a new workload shows up on its own; those idle for more than an hour are gone
        later = T + timedelta(hours=2)
        await apply_batches(
            conn,
            [CallBatch(batch_id="2", node="n", seq=2, records=[call(later, "reports", "orders", requests=1)])],
            PriceTable(),
        )
        g = await live_graph(conn, at=later + timedelta(minutes=1), idle_s=3600)
        assert {n["name"] for n in g["nodes"]} == {"reports", "orders"}
        assert [(e["src"], e["dst"], e["calls"]) for e in g["edges"]] == [("reports", "orders", 1)]

        server = TestServer(make_app(pool, ServiceContext("api", Config(), "", fresh_dsn)))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(server.make_url("/v1/graph")) as resp:  # as of the newest data
                    body = await resp.json()
                    assert resp.status == 200
                    assert {n["name"] for n in body["nodes"]} == {"reports", "orders"}
                at = (T + timedelta(minutes=5)).isoformat()
                async with http.get(server.make_url("/v1/graph"), params={"at": at, "window_s": "600"}) as resp:
                    assert len((await resp.json())["edges"]) == 4
                async with http.get(server.make_url("/v1/graph"), params={"window_s": "-1"}) as resp:
                    assert resp.status == 400 and "window_s" in (await resp.json())["error"]
        finally:
            await server.close()
    finally:
        await conn.close()
        await pool.close()
