"""PostgreSQL helpers: connecting within a deadline and applying the versioned migrations of ``migrations``."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from .config import PostgresConfig, resolve_secret
from .migrations import MIGRATIONS
from .natsio import within_deadline

log = logging.getLogger(__name__)

#: Errors that mean "the database is not there right now": wait and retry, never drop work because of them.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)

#: A fixed key for ``pg_advisory_xact_lock`` so that two services starting together do not migrate twice.
_MIGRATION_LOCK = 0x636F73746D657368  # "costmesh"


def dsn_of(cfg: PostgresConfig, override: str = "") -> str:
    return override or resolve_secret(cfg.dsn_env, "postgres.dsn_env") or cfg.dsn


def _redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return dsn


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """Open a pool; raises ``Unreachable`` naming the server within ``CONNECT_DEADLINE_S``."""
    last: list[BaseException] = []

    async def attempt() -> asyncpg.Pool:
        while True:
            try:
                return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=2)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                last[:] = [exc]
                await asyncio.sleep(0.5)

    return await within_deadline(attempt(), last, f"PostgreSQL at {_redacted(dsn)}")


async def migrate(pool: asyncpg.Pool) -> int:
    """Apply pending migrations in order; returns the schema version now in force."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)", version, description
            )
            log.info("applied migration %d: %s", version, description)
        return max(v for v, _, _ in MIGRATIONS)
