"""The edge: the tenants' browsers and scripts. Sends every tenant's planned requests to the gateway in a shuffled
order (fixed seed) from ``concurrency`` connections, each tenant identifying itself its own way (``X-Tenant-ID``, a
JWT bearer token, W3C baggage), until all are sent or the deadline passes; then exits."""

from __future__ import annotations

import asyncio
import json
import random
import time

from ..context import make_jwt
from ..plan import Tenant, call_kind
from ..truth import Edge
from .base import Workload

ROUTES = {
    "browse": ("GET", "/api/orders"),
    "checkout": ("POST", "/api/orders"),
    "report": ("GET", "/api/reports/revenue"),
    "assist": ("POST", "/api/assist"),
}


def identity(tenant: Tenant, jwt_key: str) -> dict[str, str]:
    if tenant.edge == "jwt":
        return {"Authorization": "Bearer " + make_jwt(jwt_key, tenant.name, f"user@{tenant.name}")}
    if tenant.edge == "baggage":
        return {"baggage": f"tenant={tenant.name},plan=pro"}
    return {"X-Tenant-ID": tenant.name}


def body(tenant: Tenant, operation: str, n: int, rng: random.Random, https: bool) -> bytes | None:
    if operation == "checkout":
        items = [{"product": rng.randrange(1, 51), "qty": rng.randrange(1, 4)} for _ in range(rng.randrange(1, 6))]
        return json.dumps({"items": items}).encode()
    if operation == "assist":
        stream, secure = call_kind(n)
        ask = {
            "prompt_words": tenant.ai.prompt_words,
            "max_tokens": tenant.ai.max_tokens,
            "stream": stream,
            "https": https and secure,
        }
        return json.dumps(ask).encode()
    return None


async def main(w: Workload) -> None:
    plan = w.plan
    rng = random.Random(plan.seed)
    work = [(t, op) for t in plan.tenants for op, count in sorted(t.requests.items()) for _ in range(count)]
    rng.shuffle(work)
    heads = {t.name: identity(t, plan.jwt_key) for t in plan.tenants}
    sent: dict[tuple[str, str], int] = {}
    pending = iter(work)
    end = time.monotonic() + plan.deadline_s
    base = plan.url("gateway")
    w.on_ready()

    async def run_one(http) -> None:
        for tenant, operation in pending:
            if time.monotonic() > end or w.stopping.is_set():
                return
            n = sent[(tenant.name, operation)] = sent.get((tenant.name, operation), 0) + 1
            method, path = ROUTES[operation]
            data = body(tenant, operation, n, rng, plan.https)
            headers = {**heads[tenant.name], "Content-Type": "application/json"}
            async with http.request(method, base + path, data=data, headers=headers) as resp:
                await resp.read()
                w.truth.write(Edge(tenant.name, operation, resp.status))

    async with w.client(limit=plan.concurrency) as http:
        await asyncio.gather(*(run_one(http) for _ in range(plan.concurrency)))
