"""How a service process runs: logging, uvloop, signal handling, the health/metrics listener, clean shutdown.

Every service is an ``async def main(ctx)`` that returns when ``ctx.stopping`` is set; ``run_service`` owns the loop,
so no service writes its own ``while True`` or signal code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import uvloop

from .config import Config, ConfigError
from .logs import setup_logging
from .metrics import UP, HealthServer
from .natsio import Unreachable

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service needs to run: its config, where NATS and PostgreSQL are, and the stop signal."""

    name: str
    config: Config
    nats_url: str
    dsn: str
    metrics_port: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Extra fields the service adds to its ``/healthz`` answer (counters a supervisor may wait on).
    health: dict[str, object] = field(default_factory=dict)
    ready: bool = False

    def health_state(self) -> dict[str, object]:
        return {"ok": self.ready and not self.stopping.is_set(), "service": self.name, **self.health}


#: How long a stopping service may take to finish in-flight work before it is cancelled (the supervisor waits 15 s).
SHUTDOWN_GRACE_S = 10.0

ServiceMain = Callable[[ServiceContext], Awaitable[None]]


async def _serve(ctx: ServiceContext, main: ServiceMain) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ctx.stopping.set)
    health = HealthServer(ctx.config.metrics.host, ctx.metrics_port, ctx.health_state)
    port = await health.start()
    log.info("service starting", extra={"metrics_port": port})
    UP.labels(ctx.name).set(1)
    task = asyncio.create_task(main(ctx), name=f"{ctx.name}-main")
    stop = asyncio.create_task(ctx.stopping.wait(), name=f"{ctx.name}-stop")
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await _finish(task)
        if not task.cancelled():
            await task  # re-raises what the service raised (Unreachable, ConfigError: run_service reports them)
    finally:
        stop.cancel()
        UP.labels(ctx.name).set(0)
        await health.stop()
        log.info("service stopped")


async def _finish(task: asyncio.Task[None]) -> None:
    """Give a stopping service ``SHUTDOWN_GRACE_S`` to finish its own way, then cancel it; if even that hangs (a
    cleanup waiting on a server that is gone), leave at once: a service must never outlive its stop."""
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_S)
    if done:
        return
    log.error("service did not stop within %.0f s; cancelling it", SHUTDOWN_GRACE_S)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        log.error("service did not finish after cancellation; exiting")
        logging.shutdown()
        os._exit(1)


def run_service(ctx: ServiceContext, main: ServiceMain) -> int:
    """Run one service until SIGINT/SIGTERM; returns the process exit status."""
    setup_logging(ctx.name, ctx.config.log_level)
    try:
        uvloop.run(_serve(ctx, main))
    except (Unreachable, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    return 0
