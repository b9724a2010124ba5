"""Prometheus metrics and the ``/metrics`` + ``/healthz`` listener every service runs.

Each process has one registry (``REGISTRY``); services declare their metrics here or in their own module against it,
so a metric name is defined exactly once. Label values never carry free text, only bounded sets (service, kind,
reason). The one exception is the API's cost metrics (``costmesh.api.costmetrics``): tenant ids as they are stored
(pseudonymised when the redactor is keyed), bounded to the top N per period plus ``__other__``.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

ERRORS = Counter(
    "costmesh_input_errors_total",
    "Malformed input seen and skipped, by service and kind.",
    ["service", "kind"],
    registry=REGISTRY,
)
BATCHES = Counter(
    "costmesh_batches_total", "Call batches handled, by service and outcome.", ["service", "outcome"], registry=REGISTRY
)
RECORDS = Counter("costmesh_records_total", "ObservedCall records handled, by service.", ["service"], registry=REGISTRY)
UP = Gauge("costmesh_up", "1 while the service runs its main loop.", ["service"], registry=REGISTRY)


def metrics_routes(app: web.Application, health: Callable[[], dict[str, object]]) -> None:
    """Add ``/metrics`` and ``/healthz`` to an aiohttp app; ``health`` returns a dict with at least ``ok``."""

    async def metrics(_request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def healthz(_request: web.Request) -> web.Response:
        state = health()
        return web.json_response(state, status=200 if state.get("ok") else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)


class HealthServer:
    """The small HTTP listener of a service that has no other HTTP surface."""

    def __init__(self, host: str, port: int, health: Callable[[], dict[str, object]]) -> None:
        self.host, self.port = host, port
        self.app = web.Application()
        metrics_routes(self.app, health)
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (useful when asked for port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
