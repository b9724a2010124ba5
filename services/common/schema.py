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
        100,
        "billing: imported files, cost lines, allocations per period, revenue",
        """
        CREATE TABLE billing_imports (
            sha256          text PRIMARY KEY,
            file            text NOT NULL,
            source          text NOT NULL,
            rows            integer NOT NULL,
            lines           integer NOT NULL,
            problems        integer NOT NULL,
            imported_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE cost_lines (
            line_id         text PRIMARY KEY,
            source          text NOT NULL,
            billing_period  text NOT NULL,
            charge_start    timestamptz NOT NULL,
            charge_end      timestamptz NOT NULL,
            amount          numeric NOT NULL,
            currency        text NOT NULL,
            provider        text NOT NULL DEFAULT '',
            account         text NOT NULL DEFAULT '',
            service         text NOT NULL DEFAULT '',
            resource_id     text NOT NULL DEFAULT '',
            resource_name   text NOT NULL DEFAULT '',
            resource_type   text NOT NULL DEFAULT '',
            usage_type      text NOT NULL DEFAULT '',
            operation       text NOT NULL DEFAULT '',
            charge_category text NOT NULL DEFAULT '',
            description     text NOT NULL DEFAULT '',
            region          text NOT NULL DEFAULT '',
            zone            text NOT NULL DEFAULT '',
            quantity        numeric,
            unit            text NOT NULL DEFAULT '',
            tags            jsonb NOT NULL DEFAULT '{}',
            import_sha256   text NOT NULL DEFAULT ''
        );
        CREATE INDEX cost_lines_period ON cost_lines (billing_period, source);
        CREATE TABLE allocations (
            billing_period  text NOT NULL,
            line_id         text NOT NULL,
            tenant          text NOT NULL,
            feature         text NOT NULL DEFAULT '',
            agent           text NOT NULL DEFAULT '',
            method          text NOT NULL
                CHECK (method IN ('direct', 'trace', 'propagated', 'platform', 'unallocated')),
            basis           text NOT NULL DEFAULT '',
            resource        text NOT NULL DEFAULT '',
            service         text NOT NULL DEFAULT '',
            amount          numeric NOT NULL,
            currency        text NOT NULL,
            charge_start    timestamptz NOT NULL
        );
        CREATE INDEX allocations_period ON allocations (billing_period, tenant);
        CREATE TABLE allocation_runs (
            billing_period  text PRIMARY KEY,
            lines           integer NOT NULL,
            allocations     integer NOT NULL,
            run_at          timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE revenue (
            customer        text NOT NULL,
            period          text NOT NULL,
            currency        text NOT NULL,
            amount          numeric NOT NULL,
            PRIMARY KEY (customer, period, currency)
        );
        """,
    ),
]
