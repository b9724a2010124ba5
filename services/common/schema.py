"""The database schema, owned here and only here, as an ordered list of versioned migrations.

Each migration is applied once, in order, inside a transaction, and recorded in ``schema_migrations``; start-up runs
``db.migrate`` so every service sees the schema it was built for. Add a migration; never edit an applied one.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[list[tuple[int, str, str]]] = [
    (
        1,
        "applied batches and per-minute consumption",
        """
        CREATE TABLE applied_batches (
            batch_id    text PRIMARY KEY,
            node        text NOT NULL,
            seq         bigint NOT NULL,
            records     integer NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE consumption_minute (
            minute          timestamptz NOT NULL,
            tenant          text NOT NULL,
            tenant_method   text NOT NULL,
            feature         text NOT NULL,
            agent           text NOT NULL,
            src_workload    text NOT NULL,
            dst             text NOT NULL,
            protocol        text NOT NULL,
            requests        bigint NOT NULL DEFAULT 0,
            errors          bigint NOT NULL DEFAULT 0,
            bytes_in        bigint NOT NULL DEFAULT 0,
            bytes_out       bigint NOT NULL DEFAULT 0,
            busy_us         bigint NOT NULL DEFAULT 0,
            tokens_in       bigint NOT NULL DEFAULT 0,
            tokens_out      bigint NOT NULL DEFAULT 0,
            tokens_cached   bigint NOT NULL DEFAULT 0,
            tokens_reasoning bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (minute, tenant, tenant_method, feature, agent, src_workload, dst, protocol)
        );
        CREATE INDEX consumption_minute_tenant ON consumption_minute (tenant, minute);
        """,
    ),
]
