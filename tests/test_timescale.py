"""The TimescaleDB storage flavour against TimescaleDB 2.23 compiled to WASM (PGlite + pglite-socket, installed by
``scripts/system.d/pglite.sh`` from ``tests/timescale/package.json``), served on a loopback port.

The same migrations as production run through ``db.migrate``; then: the flavour is ``timescaledb``, the hypertable,
both continuous aggregates and their refresh, compression and retention policies exist, and ``time_bucket`` queries
and the refreshed aggregates answer with the inserted sums. The server takes one connection at a time and crashes on
COPY, so rows are inserted with plain statements here (the COPY path is tested on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from costmesh.common import db
from costmesh.common.embedded import free_port

from .conftest import REPO

SERVER_DIR = REPO / "tests" / "timescale"


def _skip_reason() -> str:
    if shutil.which("node") is None:
        return "node is not installed (scripts/system.d/pglite.sh needs node and npm)"
    if not (SERVER_DIR / "node_modules" / "@unni-craftsman" / "pglite").is_dir():
        return "the PGlite TimescaleDB build is not installed: run `make deps` (scripts/system.d/pglite.sh)"
    return ""


@pytest.fixture
async def timescale_dsn() -> AsyncIterator[str]:
    reason = _skip_reason()
    if reason:
        print(f"SKIP TimescaleDB flavour: {reason}")
        pytest.skip(reason)
    port = free_port()
    proc = subprocess.Popen(
        ["node", "server.mjs", str(port)], cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
        assert line.startswith(b"READY"), line
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        proc.stdout.close()


class _OneConnection:
    """What ``db.migrate`` needs of a pool, over one connection: the server takes one connection at a time, and an
    asyncpg pool's connection reset (``RESET ALL`` …) leaves this WASM build without the extension's functions."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn


async def test_timescale_flavour_migrations_policies_and_time_bucket(timescale_dsn):
    conn = await asyncpg.connect(timescale_dsn, ssl=False)
    try:
        version = await db.migrate(_OneConnection(conn))
        assert version >= 3
        assert await conn.fetchval("SELECT flavour FROM storage_flavour") == "timescaledb"
        hypertables = {
            r[0] for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert "consumption_minute" in hypertables
        caggs = {r[0] for r in await conn.fetch("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
        assert caggs == {"consumption_hourly", "consumption_daily"}
        jobs = await conn.fetch(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs WHERE application_name "
            "NOT LIKE '%Telemetry%' AND application_name NOT LIKE '%Job History%'"
        )
        kinds = sorted(r["proc_name"] for r in jobs)
        assert kinds == [
            "policy_compression",
            "policy_refresh_continuous_aggregate",
            "policy_refresh_continuous_aggregate",
            "policy_retention",
            "policy_retention",
        ], kinds
        retention = {
            r["hypertable_name"]: r["config"] for r in jobs if r["proc_name"] == "policy_retention"
        }  # the cagg's retention is on its materialization hypertable
        assert any("14 days" in str(c) for c in retention.values()), retention
        assert any("396 days" in str(c) for c in retention.values()), retention

        t = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
        for i, (tenant, requests) in enumerate([("acme", 3), ("acme", 4), ("globex", 5)]):
            await conn.execute(
                "INSERT INTO consumption_minute (minute, tenant, tenant_method, feature, agent, src_workload, dst, "
                f"protocol, requests) VALUES ('{t.isoformat()}'::timestamptz + interval '{i} minutes', '{tenant}', "
                f"'header', '', '', 'web', 'db:5432', 'postgres', {requests})"
            )
        buckets = await conn.fetch(
            "SELECT time_bucket(INTERVAL '1 hour', minute) AS hour, tenant, sum(requests)::bigint AS r "
            "FROM consumption_minute GROUP BY 1, 2 ORDER BY 2"
        )
        assert [(b["hour"], b["tenant"], b["r"]) for b in buckets] == [(t, "acme", 7), (t, "globex", 5)]
        await conn.execute("CALL refresh_continuous_aggregate('consumption_hourly', NULL, NULL)")
        await conn.execute("CALL refresh_continuous_aggregate('consumption_daily', NULL, NULL)")
        hourly = await conn.fetch("SELECT hour, tenant, requests FROM consumption_hourly ORDER BY tenant")
        assert [(h["hour"], h["tenant"], h["requests"]) for h in hourly] == [(t, "acme", 7), (t, "globex", 5)]
        daily = await conn.fetchval("SELECT sum(requests)::bigint FROM consumption_daily")
        assert daily == 12
    finally:
        conn.terminate()  # the socket server never answers a graceful Terminate; close() would wait forever
