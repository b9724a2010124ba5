"""The queue worker: takes fulfilment jobs from the queue later, with no tenant on any of its calls (it reads the
tenant from the job's sealed session, as the app does, and opens its database session for that tenant), marks the
order shipped and, with ``worker_ai``, asks the model for the confirmation text."""

from __future__ import annotations

import time

from ..database import DbPools
from ..truth import Served
from .base import Workload, elapsed_us
from .model_client import ModelClient
from .queue import PATH

JOB_QUERIES = (
    "SELECT o.id, o.total_cents, count(i.*) FROM orders o JOIN order_items i ON i.order_id = o.id "
    "WHERE o.id = $1 GROUP BY o.id",
    "UPDATE orders SET status = 'shipped' WHERE id = $1",
)
SHIP = "INSERT INTO shipments (order_id, label, created_at) VALUES ($1, $2, now())"
#: The customer's lifetime sales for the shipping note: a scan of the tenant's events.
LIFETIME = "SELECT count(*), sum(amount_cents) FROM events WHERE tenant = $1 AND kind = 'sale'"


async def main(w: Workload) -> None:
    db = DbPools(w.plan, w.truth, size=1)
    model = ModelClient(w) if w.plan.worker_ai else None
    queue = w.plan.url("queue") + PATH
    jobs = 0
    w.on_ready()
    async with w.client(limit=2) as http:
        try:
            while not w.stopping.is_set():
                async with http.get(queue, params={"wait_ms": "500"}) as resp:
                    if resp.status == 204:
                        continue
                    message = await resp.json()
                start = time.perf_counter_ns()
                job = message["body"]
                tenant = w.sessions.open(job["session"])
                async with (await db.pool(tenant)).acquire() as conn:
                    for sql in JOB_QUERIES:
                        await conn.execute(sql, job["order"])
                    await conn.execute(SHIP, job["order"], f"label-{job['order']}")
                    await conn.fetchrow(LIFETIME, tenant)
                if model is not None:
                    jobs += 1
                    await model.ask(tenant, 40, 30, stream=jobs % 2 == 0, https=w.plan.https, user=False, seed=jobs)
                async with http.delete(f"{queue}/{message['id']}") as resp:
                    resp.raise_for_status()
                w.truth.write(Served(w.name, tenant, "fulfil", elapsed_us(start)))
        finally:
            if model is not None:
                await model.close()
            await db.close()
