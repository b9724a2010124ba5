"""The gateway: the SaaS's edge. Identifies the tenant of each request (``X-Tenant-ID``, a signed JWT whose
``org_id`` claim names it, or W3C ``baggage``), then calls the service behind it with the app's session (and, in
direct mode, the tenant in ``X-Tenant-ID``)."""

from __future__ import annotations

from aiohttp import web

from ..context import ContextError, verify_jwt
from .base import Workload

#: Edge route → (operation, service, method, path).
ROUTES = {
    ("GET", "/api/orders"): ("browse", "orders", "GET", "/orders"),
    ("POST", "/api/orders"): ("checkout", "orders", "POST", "/orders"),
    ("GET", "/api/reports/revenue"): ("report", "orders", "GET", "/reports/revenue"),
    ("POST", "/api/assist"): ("assist", "assistant", "POST", "/assist"),
}


def edge_tenant(request: web.Request, jwt_key: str) -> str:
    """The tenant an edge request says it is for; 401 when it says nothing valid."""
    if tenant := request.headers.get("X-Tenant-ID", ""):
        return tenant
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        try:
            return verify_jwt(jwt_key, auth[7:])
        except ContextError as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from None
    for item in request.headers.get("baggage", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "tenant" and value.strip():
            return value.split(";", 1)[0].strip()
    raise web.HTTPUnauthorized(text="no tenant")


async def main(w: Workload) -> None:
    async with w.client() as http:

        async def forward(request: web.Request) -> web.Response:
            operation, service, method, path = ROUTES[(request.method, request.path)]
            tenant = edge_tenant(request, w.plan.jwt_key)
            request["tenant"], request["operation"] = tenant, operation
            body = await request.read()
            async with http.request(
                method,
                w.plan.url(service) + path,
                data=body or None,
                headers={**w.downstream_headers(tenant), "Content-Type": "application/json"},
            ) as resp:
                payload = await resp.read()
                return web.Response(body=payload, status=resp.status, content_type="application/json")

        app = web.Application(middlewares=[w.timed()])
        for method, path in ROUTES:
            app.router.add_route(method, path, forward)
        await w.serve_until_stopped(app)
