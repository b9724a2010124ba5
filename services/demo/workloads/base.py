"""What every demo workload process shares: outgoing connections from its own address, the truth writer, the
app's tenant context on incoming and outgoing calls, and the middleware that records server time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import uvloop
from aiohttp import web

from ..context import SESSION_HEADER, ContextError, Sessions
from ..plan import Plan
from ..truth import Served, TruthWriter
from ..wire import serve


class PodLoop(uvloop.Loop):
    """An event loop whose outgoing TCP connections leave from the workload's own address (as a pod's leave from
    its IP), so that costmesh names the caller from the address. aiohttp sessions are bound by their connector;
    this covers asyncpg, which has no option for a source address."""

    source_address = ""

    async def create_connection(self, protocol_factory, host=None, port=None, **kwargs):  # type: ignore[override]
        if self.source_address and kwargs.get("sock") is None and kwargs.get("local_addr") is None:
            kwargs["local_addr"] = (self.source_address, 0)
        return await super().create_connection(protocol_factory, host, port, **kwargs)


@dataclass
class Workload:
    """One running workload: its plan, name, truth and stop signal."""

    plan: Plan
    name: str
    truth: TruthWriter
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    on_ready: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.plan.session_key)

    @property
    def address(self) -> str:
        return self.plan.addresses[self.name]

    def client(self, limit: int = 16) -> aiohttp.ClientSession:
        """A client session whose connections leave from this workload's address (kept alive, as services do)."""
        connector = aiohttp.TCPConnector(local_addr=(self.address, 0), limit=limit)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))

    def downstream_headers(self, tenant: str) -> dict[str, str]:
        """Headers of a call made for ``tenant``: always the app's sealed session; in direct mode also the tenant
        in the clear, where costmesh reads it."""
        headers = {SESSION_HEADER: self.sessions.seal(tenant)}
        if self.plan.mode == "direct":
            headers["X-Tenant-ID"] = tenant
        return headers

    def tenant_of(self, request: web.Request) -> str:
        """The tenant of an incoming service call, from the app's session (what the app itself relies on)."""
        try:
            tenant = self.sessions.open(request.headers.get(SESSION_HEADER, ""))
        except ContextError as exc:
            raise web.HTTPUnauthorized(text=str(exc)) from None
        request["tenant"] = tenant
        return tenant

    def timed(self) -> Callable:
        """Middleware: the server time of every request that named its tenant (``request["tenant"]``) goes to the
        truth, from handler entry to the response's return."""
        workload, truth = self.name, self.truth

        @web.middleware
        async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
            start = time.perf_counter_ns()
            try:
                return await handler(request)
            finally:
                tenant = request.get("tenant")
                if tenant is not None:
                    us = (time.perf_counter_ns() - start) // 1000
                    truth.write(Served(workload, tenant, request.get("operation", request.path), us))

        return middleware

    async def serve_until_stopped(self, app: web.Application) -> None:
        """Serve ``app`` on this workload's address and port until the stop signal."""
        runner, server = await serve(app, self.address, self.plan.ports[self.name])
        self.on_ready()
        try:
            await self.stopping.wait()
        finally:
            server.close()
            await runner.cleanup()


def elapsed_us(start_ns: int) -> int:
    return (time.perf_counter_ns() - start_ns) // 1000
