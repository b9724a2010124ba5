"""Billing service: owns cost ingest and the allocation runs.

Until bill sources are configured (issue "Billing and allocation") it only applies the schema and serves its
health and metrics, so that ``costmesh up`` runs the full set of services with their real wiring.
"""

from __future__ import annotations

import logging

from costmesh.common import db
from costmesh.common.runtime import ServiceContext

log = logging.getLogger(__name__)


async def main(ctx: ServiceContext) -> None:
    pool = await db.create_pool(ctx.dsn)
    try:
        await db.migrate(pool)
        ctx.ready = True
        log.info("no bill sources configured; billing waits")
        await ctx.stopping.wait()
    finally:
        await pool.close()
