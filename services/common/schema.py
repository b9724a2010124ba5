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
    (
        2,
        "live dependency graph, queue volumes, AI usage, dirty minutes",
        """
        CREATE TABLE graph_node (
            name        text PRIMARY KEY,
            kind        text NOT NULL,
            first_seen  timestamptz NOT NULL,
            last_seen   timestamptz NOT NULL
        );
        CREATE TABLE graph_edge_minute (
            minute      timestamptz NOT NULL,
            src         text NOT NULL,
            dst         text NOT NULL,
            protocol    text NOT NULL,
            calls       bigint NOT NULL DEFAULT 0,
            errors      bigint NOT NULL DEFAULT 0,
            bytes_in    bigint NOT NULL DEFAULT 0,
            bytes_out   bigint NOT NULL DEFAULT 0,
            busy_us     bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (minute, src, dst, protocol)
        );
        CREATE TABLE queue_minute (
            minute          timestamptz NOT NULL,
            topic           text NOT NULL,
            role            text NOT NULL CHECK (role IN ('producer', 'consumer')),
            workload        text NOT NULL,
            tenant          text NOT NULL,
            tenant_method   text NOT NULL,
            requests        bigint NOT NULL DEFAULT 0,
            bytes           bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (minute, topic, role, workload, tenant, tenant_method)
        );
        CREATE TABLE ai_usage_minute (
            minute          timestamptz NOT NULL,
            tenant          text NOT NULL,
            tenant_method   text NOT NULL,
            feature         text NOT NULL,
            agent           text NOT NULL,
            src_workload    text NOT NULL,
            provider        text NOT NULL,
            model           text NOT NULL,
            requests        bigint NOT NULL DEFAULT 0,
            tokens_in       bigint NOT NULL DEFAULT 0,
            tokens_out      bigint NOT NULL DEFAULT 0,
            tokens_cached   bigint NOT NULL DEFAULT 0,
            tokens_reasoning bigint NOT NULL DEFAULT 0,
            cost_micros     bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (minute, tenant, tenant_method, feature, agent, src_workload, provider, model)
        );
        CREATE TABLE dirty_minutes (
            minute      timestamptz PRIMARY KEY
        );
        """,
    ),
]
