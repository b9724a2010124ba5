"""The orders service: lists and places orders and runs revenue reports in PostgreSQL, in a session opened for the
request's tenant; with the queue on, each placed order also becomes a fulfilment job on the queue (the producer)."""

from __future__ import annotations

import json
import random

from aiohttp import web

from ..database import DbPools
from ..truth import Enqueued
from .base import Workload

LIST = """
SELECT o.id, o.created_at, o.status, o.total_cents, count(i.*) AS items
FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
WHERE o.tenant = $1 GROUP BY o.id ORDER BY o.created_at DESC LIMIT 20
"""
PLACE = "INSERT INTO orders (tenant) VALUES ($1) RETURNING id"
ITEMS = """
INSERT INTO order_items (order_id, product_id, qty, price_cents)
SELECT $1, p.id, q.qty, p.price_cents
FROM unnest($2::int[], $3::int[]) AS q(product, qty) JOIN products p ON p.id = q.product
"""
TOTAL = (
    "UPDATE orders SET total_cents = (SELECT sum(qty * price_cents) FROM order_items WHERE order_id = $1) WHERE id = $1"
)
#: The expensive one: a quarter of daily revenue by kind over the tenant's whole event history.
REPORT = """
SELECT date_trunc('day', at) AS day, kind, count(*) AS n, sum(amount_cents) AS cents,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY amount_cents) AS median
FROM events WHERE tenant = $1 GROUP BY 1, 2 ORDER BY 1, 2
"""
QUEUE_PATH = "/v1/queues/jobs/messages"


async def main(w: Workload) -> None:
    db = DbPools(w.plan, w.truth, tenant_roles=True)
    async with w.client() as http:

        async def browse(request: web.Request) -> web.Response:
            tenant = w.tenant_of(request)
            async with (await db.pool(tenant)).acquire() as conn:
                rows = await conn.fetch(LIST, tenant)
            return web.json_response({"orders": len(rows)})

        async def checkout(request: web.Request) -> web.Response:
            tenant = w.tenant_of(request)
            items = (await request.json())["items"]
            async with (await db.pool(tenant)).acquire() as conn, conn.transaction():
                order = await conn.fetchval(PLACE, tenant)
                await conn.execute(ITEMS, order, [i["product"] for i in items], [i["qty"] for i in items])
                await conn.execute(TOTAL, order)
            if w.plan.queue:
                job = {"session": w.sessions.seal(tenant), "order": order, "note": "x" * random.randrange(200, 800)}
                async with http.post(
                    w.plan.url("queue") + QUEUE_PATH,
                    data=json.dumps(job),
                    headers={**w.downstream_headers(tenant), "Content-Type": "application/json"},
                ) as resp:
                    resp.raise_for_status()
                    w.truth.write(Enqueued((await resp.json())["id"], tenant))
            return web.json_response({"order": order}, status=201)

        async def report(request: web.Request) -> web.Response:
            tenant = w.tenant_of(request)
            async with (await db.pool(tenant)).acquire() as conn:
                rows = await conn.fetch(REPORT, tenant)
            return web.json_response({"days": len(rows)})

        app = web.Application(middlewares=[w.timed()])
        app.router.add_get("/orders", browse)
        app.router.add_post("/orders", checkout)
        app.router.add_get("/reports/revenue", report)
        try:
            await w.serve_until_stopped(app)
        finally:
            await db.close()
