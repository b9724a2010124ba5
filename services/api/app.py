"""API service (aiohttp): the routes of ``routes`` behind bearer-token auth, the OpenAPI document, the web console
at ``/``, Prometheus ``/metrics`` (pipeline and cost metrics) and ``/healthz``.

Reads: PostgreSQL (``queries``). Refuses to start on a non-loopback address without tokens, or with a
``tokens_env`` that names a missing, empty or malformed variable (``auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiohttp import web

from costmesh.common import db
from costmesh.common.metrics import REGISTRY, metrics_routes
from costmesh.common.runtime import ServiceContext

from . import auth, console, openapi
from .answer_cache import AnswerCache
from .costmetrics import CostMetrics
from .routes import AUTH_REQUIRED, CACHE, CONFIG, POOL, ROUTES, handler_of

log = logging.getLogger(__name__)

#: One cost-metrics collector per process (the registry is per process too); ``make_app`` gives it the config.
COST_METRICS = CostMetrics()
REGISTRY.register(COST_METRICS)


def make_app(pool: asyncpg.Pool, ctx: ServiceContext, tokens: auth.Tokens | None = None) -> web.Application:
    """The application; ``tokens`` default to ``api.tokens_env`` of the config (none: open, loopback only)."""
    tokens = tokens if tokens is not None else auth.Tokens.from_config(ctx.config.api)
    mode = auth.check_bind(ctx.config.api, tokens)
    ctx.health["auth"] = mode
    COST_METRICS.cfg = ctx.config.api
    app = web.Application(middlewares=[auth.middleware(tokens)])
    app[POOL] = pool
    app[CONFIG] = ctx.config
    app[AUTH_REQUIRED] = tokens.enabled
    app[CACHE] = AnswerCache()
    roles: dict[str, str | None] = {}
    for route in ROUTES:
        app.router.add_route(route.method.upper(), route.path, handler_of(route))
        roles[route.path] = route.role
    document = openapi.document(ROUTES, tokens.enabled)

    async def spec(_request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/v1/openapi.json", spec)
    metrics_routes(app, ctx.health_state)
    roles["/metrics"] = "viewer"  # cost per tenant: not for anyone who can reach the port
    console.add_routes(app)
    app[auth.ROUTE_ROLE] = roles
    return app


async def refresh_cost_metrics(pool: asyncpg.Pool, ctx: ServiceContext) -> None:
    """Re-read the cost metrics every ``api.metrics_refresh_s`` until the service stops; a failed read is logged
    and retried at the next tick (the last snapshot stays)."""
    while not ctx.stopping.is_set():
        try:
            async with pool.acquire() as conn:
                await COST_METRICS.refresh(conn)
            ctx.health["cost_metrics_refreshes"] = COST_METRICS.refreshes
        except (asyncpg.PostgresError, *db.TRANSIENT_ERRORS) as exc:
            log.warning("cost metrics not refreshed: %r", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), ctx.config.api.metrics_refresh_s)


async def main(ctx: ServiceContext) -> None:
    tokens = auth.Tokens.from_config(ctx.config.api)
    mode = auth.check_bind(ctx.config.api, tokens)  # before any connection: a refused start leaves nothing behind
    pool = await db.create_pool(ctx.dsn)
    await db.migrate(pool)
    runner = web.AppRunner(make_app(pool, ctx, tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctx.config.api.host, ctx.config.api.port)
    await site.start()
    log.info(
        "api listening on http://%s:%d/ (auth: %s)",
        ctx.config.api.host,
        ctx.config.api.port,
        mode,
        extra={"host": ctx.config.api.host, "port": ctx.config.api.port, "auth": mode},
    )
    ctx.ready = True
    refresher = asyncio.create_task(refresh_cost_metrics(pool, ctx), name="api-cost-metrics")
    try:
        await ctx.stopping.wait()
    finally:
        await refresher
        await runner.cleanup()
        await pool.close()
