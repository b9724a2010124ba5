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
    (
        3,
        "storage flavour: TimescaleDB hypertable + continuous aggregates + policies, else daily range partitions",
        """
        DO $flavour$
        DECLARE
            timescale boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
        BEGIN
            IF NOT timescale
               AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
               AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
                CREATE EXTENSION IF NOT EXISTS timescaledb;
                timescale := true;
            END IF;
            CREATE TABLE storage_flavour (
                only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
                flavour     text NOT NULL CHECK (flavour IN ('timescaledb', 'partitioned'))
            );
            INSERT INTO storage_flavour (flavour)
                VALUES (CASE WHEN timescale THEN 'timescaledb' ELSE 'partitioned' END);

            IF timescale THEN
                PERFORM create_hypertable('consumption_minute', by_range('minute', INTERVAL '1 day'),
                    migrate_data => true);
                EXECUTE $sql$
                    CREATE MATERIALIZED VIEW consumption_hourly WITH (timescaledb.continuous) AS
                    SELECT time_bucket(INTERVAL '1 hour', minute) AS hour, tenant, tenant_method, feature, agent,
                        src_workload, dst, protocol,
                        sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
                        sum(bytes_in)::bigint AS bytes_in, sum(bytes_out)::bigint AS bytes_out,
                        sum(busy_us)::bigint AS busy_us, sum(tokens_in)::bigint AS tokens_in,
                        sum(tokens_out)::bigint AS tokens_out, sum(tokens_cached)::bigint AS tokens_cached,
                        sum(tokens_reasoning)::bigint AS tokens_reasoning
                    FROM consumption_minute GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 WITH NO DATA
                $sql$;
                EXECUTE $sql$
                    CREATE MATERIALIZED VIEW consumption_daily WITH (timescaledb.continuous) AS
                    SELECT time_bucket(INTERVAL '1 day', hour) AS day, tenant, tenant_method, feature, agent,
                        src_workload, dst, protocol,
                        sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
                        sum(bytes_in)::bigint AS bytes_in, sum(bytes_out)::bigint AS bytes_out,
                        sum(busy_us)::bigint AS busy_us, sum(tokens_in)::bigint AS tokens_in,
                        sum(tokens_out)::bigint AS tokens_out, sum(tokens_cached)::bigint AS tokens_cached,
                        sum(tokens_reasoning)::bigint AS tokens_reasoning
                    FROM consumption_hourly GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 WITH NO DATA
                $sql$;
                PERFORM add_continuous_aggregate_policy('consumption_hourly', start_offset => INTERVAL '3 days',
                    end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '5 minutes');
                PERFORM add_continuous_aggregate_policy('consumption_daily', start_offset => INTERVAL '7 days',
                    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');
                ALTER TABLE consumption_minute SET (timescaledb.compress,
                    timescaledb.compress_segmentby = 'tenant', timescaledb.compress_orderby = 'minute');
                PERFORM add_compression_policy('consumption_minute', INTERVAL '2 days');
                PERFORM add_retention_policy('consumption_minute', INTERVAL '14 days');
                PERFORM add_retention_policy('consumption_hourly', INTERVAL '396 days');
            ELSE
                ALTER TABLE consumption_minute RENAME TO consumption_minute_v1;
                ALTER INDEX consumption_minute_tenant RENAME TO consumption_minute_v1_tenant;
                ALTER TABLE consumption_minute_v1 RENAME CONSTRAINT consumption_minute_pkey
                    TO consumption_minute_v1_pkey;
                CREATE TABLE consumption_minute (LIKE consumption_minute_v1 INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                    PRIMARY KEY (minute, tenant, tenant_method, feature, agent, src_workload, dst, protocol)
                ) PARTITION BY RANGE (minute);
                CREATE INDEX consumption_minute_tenant ON consumption_minute (tenant, minute);
                -- rows outside every daily partition (old replays, clock skew) land here until a partition exists
                CREATE TABLE consumption_minute_default PARTITION OF consumption_minute DEFAULT
                    WITH (fillfactor = 70);
                INSERT INTO consumption_minute SELECT * FROM consumption_minute_v1;
                DROP TABLE consumption_minute_v1;
                CREATE TABLE consumption_hourly (
                    hour timestamptz NOT NULL, tenant text NOT NULL, tenant_method text NOT NULL,
                    feature text NOT NULL, agent text NOT NULL, src_workload text NOT NULL, dst text NOT NULL,
                    protocol text NOT NULL, requests bigint NOT NULL, errors bigint NOT NULL,
                    bytes_in bigint NOT NULL, bytes_out bigint NOT NULL, busy_us bigint NOT NULL,
                    tokens_in bigint NOT NULL, tokens_out bigint NOT NULL, tokens_cached bigint NOT NULL,
                    tokens_reasoning bigint NOT NULL,
                    PRIMARY KEY (hour, tenant, tenant_method, feature, agent, src_workload, dst, protocol)
                );
                CREATE TABLE consumption_daily (
                    day timestamptz NOT NULL, tenant text NOT NULL, tenant_method text NOT NULL,
                    feature text NOT NULL, agent text NOT NULL, src_workload text NOT NULL, dst text NOT NULL,
                    protocol text NOT NULL, requests bigint NOT NULL, errors bigint NOT NULL,
                    bytes_in bigint NOT NULL, bytes_out bigint NOT NULL, busy_us bigint NOT NULL,
                    tokens_in bigint NOT NULL, tokens_out bigint NOT NULL, tokens_cached bigint NOT NULL,
                    tokens_reasoning bigint NOT NULL,
                    PRIMARY KEY (day, tenant, tenant_method, feature, agent, src_workload, dst, protocol)
                );
            END IF;
        END
        $flavour$;
        """,
    ),
    (
        4,
        "tenant resolution output and dirty-minute generations",
        """
        ALTER TABLE dirty_minutes ADD COLUMN gen bigint NOT NULL DEFAULT 0;
        CREATE TABLE attributed_minute (
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
        CREATE INDEX attributed_minute_tenant ON attributed_minute (tenant, minute);
        """,
    ),
    (
        5,
        "runaway-AI-cost detector state (de-duplication and cooldown across restarts)",
        """
        CREATE TABLE alert_state (
            rule_key    text NOT NULL,
            tenant      text NOT NULL,
            feature     text NOT NULL,
            agent       text NOT NULL,
            reason      text NOT NULL CHECK (reason IN ('budget', 'spike')),
            state       text NOT NULL CHECK (state IN ('firing', 'resolved')),
            alert_id    text NOT NULL,
            started_at  timestamptz NOT NULL,
            window_s    integer NOT NULL,
            resolved_at timestamptz,
            PRIMARY KEY (rule_key, tenant, feature, agent, reason)
        );
        CREATE INDEX ai_usage_minute_scope ON ai_usage_minute (tenant, feature, agent, minute);
        """,
    ),
    (
        6,
        "hourly rollups of queue traffic and AI usage (allocation reads hours only), AI usage by destination; "
        "the unread per-minute tenant resolution goes",
        """
        DROP TABLE attributed_minute;
        ALTER TABLE ai_usage_minute ADD COLUMN dst text NOT NULL DEFAULT '';
        ALTER TABLE ai_usage_minute DROP CONSTRAINT ai_usage_minute_pkey;
        ALTER TABLE ai_usage_minute ADD PRIMARY KEY
            (minute, tenant, tenant_method, feature, agent, src_workload, dst, provider, model);
        CREATE TABLE queue_hourly (
            hour            timestamptz NOT NULL,
            topic           text NOT NULL,
            role            text NOT NULL CHECK (role IN ('producer', 'consumer')),
            workload        text NOT NULL,
            tenant          text NOT NULL,
            tenant_method   text NOT NULL,
            requests        bigint NOT NULL,
            bytes           bigint NOT NULL,
            PRIMARY KEY (hour, topic, role, workload, tenant, tenant_method)
        );
        CREATE TABLE ai_usage_hourly (
            hour            timestamptz NOT NULL,
            tenant          text NOT NULL,
            tenant_method   text NOT NULL,
            feature         text NOT NULL,
            agent           text NOT NULL,
            src_workload    text NOT NULL,
            dst             text NOT NULL,
            provider        text NOT NULL,
            model           text NOT NULL,
            requests        bigint NOT NULL,
            tokens_in       bigint NOT NULL,
            tokens_out      bigint NOT NULL,
            tokens_cached   bigint NOT NULL,
            tokens_reasoning bigint NOT NULL,
            cost_micros     bigint NOT NULL,
            PRIMARY KEY (hour, tenant, tenant_method, feature, agent, src_workload, dst, provider, model)
        );
        """,
    ),
    (
        7,
        "queue traffic by feature and agent, so that a consumer's work goes to the features and agents its messages "
        "were produced for",
        """
        ALTER TABLE queue_minute ADD COLUMN feature text NOT NULL DEFAULT '';
        ALTER TABLE queue_minute ADD COLUMN agent text NOT NULL DEFAULT '';
        ALTER TABLE queue_minute DROP CONSTRAINT queue_minute_pkey;
        ALTER TABLE queue_minute ADD PRIMARY KEY (minute, topic, role, workload, tenant, tenant_method, feature, agent);
        ALTER TABLE queue_hourly ADD COLUMN feature text NOT NULL DEFAULT '';
        ALTER TABLE queue_hourly ADD COLUMN agent text NOT NULL DEFAULT '';
        ALTER TABLE queue_hourly DROP CONSTRAINT queue_hourly_pkey;
        ALTER TABLE queue_hourly ADD PRIMARY KEY (hour, topic, role, workload, tenant, tenant_method, feature, agent);
        """,
    ),
    (
        30,
        "alerting: AI spend per scope and 5-second bucket, its change marks, alert fingerprints, groups, silences, "
        "and the notification outbox",
        """
        -- Written in the apply transaction beside ai_usage_minute; read by the detector (absolute values, so a
        -- bucket read twice is harmless). Kept only as long as the longest detector window needs.
        CREATE TABLE ai_spend_bucket (
            tenant      text NOT NULL,
            feature     text NOT NULL,
            agent       text NOT NULL,
            at_s        bigint NOT NULL,
            requests    bigint NOT NULL DEFAULT 0,
            cost_micros bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant, feature, agent, at_s)
        );
        CREATE INDEX ai_spend_bucket_at ON ai_spend_bucket (at_s);
        -- Buckets some transaction changed since the detector last read them: appended, never updated (no key:
        -- repeats are merged by the reader), so writers take no row lock here and never wait on the reader.
        CREATE TABLE ai_spend_changed (
            tenant      text NOT NULL,
            feature     text NOT NULL,
            agent       text NOT NULL,
            at_s        bigint NOT NULL
        );
        ALTER TABLE alert_state
            -- the same digest as costmesh.common.alerting.fingerprint, kept by the database itself
            ADD COLUMN fingerprint text GENERATED ALWAYS AS (substr(md5(
                rule_key || chr(31) || tenant || chr(31) || feature || chr(31) || agent || chr(31) || reason), 1, 16))
                STORED,
            ADD COLUMN group_key text,
            ADD COLUMN rate_micros_per_hour bigint NOT NULL DEFAULT 0,
            ADD COLUMN threshold_micros_per_hour bigint NOT NULL DEFAULT 0,
            ADD COLUMN budget_micros_per_hour bigint NOT NULL DEFAULT 0,
            ADD COLUMN baseline_micros_per_hour bigint NOT NULL DEFAULT 0,
            ADD COLUMN window_requests bigint NOT NULL DEFAULT 0,
            ADD COLUMN notified_state text CHECK (notified_state IN ('firing', 'resolved')),
            ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
        CREATE UNIQUE INDEX alert_state_fingerprint ON alert_state (fingerprint);
        CREATE INDEX alert_state_alert_id ON alert_state (alert_id);
        CREATE TABLE alert_groups (
            group_key           text PRIMARY KEY,
            tenant              text NOT NULL,
            feature             text NOT NULL,
            agent               text NOT NULL,
            changed_at          timestamptz,
            last_notified_at    timestamptz,
            notifications       bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE alert_silences (
            silence_id  text PRIMARY KEY,
            fingerprint text NOT NULL,
            alert_id    text NOT NULL,
            starts_at   timestamptz NOT NULL,
            ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
            created_by  text NOT NULL DEFAULT '',
            comment     text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX alert_silences_fingerprint ON alert_silences (fingerprint, ends_at);
        CREATE TABLE alert_outbox (
            outbox_id   bigserial PRIMARY KEY,
            receiver    text NOT NULL CHECK (receiver IN ('slack', 'webhook')),
            group_key   text NOT NULL,
            kind        text NOT NULL CHECK (kind IN ('firing', 'resolved', 'repeat')),
            body        jsonb NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            attempts    integer NOT NULL DEFAULT 0,
            sent_at     timestamptz,
            failed      text
        );
        CREATE INDEX alert_outbox_pending ON alert_outbox (receiver, outbox_id)
            WHERE sent_at IS NULL AND failed IS NULL;
        """,
    ),
    (
        80,
        "cluster: CPU and memory per workload and node capacity per hour (node lines are split by them)",
        """
        CREATE TABLE compute_hourly (
            hour                    timestamptz NOT NULL,
            node                    text NOT NULL,
            workload                text NOT NULL,
            tenant                  text NOT NULL,
            tenant_method           text NOT NULL,
            feature                 text NOT NULL,
            zone                    text NOT NULL DEFAULT '',
            cpu_usage_us            bigint NOT NULL DEFAULT 0,
            cpu_request_us          bigint NOT NULL DEFAULT 0,
            memory_byte_s           bigint NOT NULL DEFAULT 0,
            memory_request_byte_s   bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, node, workload, tenant, tenant_method, feature)
        );
        CREATE TABLE node_capacity_hourly (
            hour            timestamptz NOT NULL,
            node            text NOT NULL,
            zone            text NOT NULL DEFAULT '',
            cpu_us          bigint NOT NULL DEFAULT 0,
            memory_byte_s   bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, node)
        );
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
    (
        101,
        "billing: the SKU, meter and pricing unit of a cost line (which AI token kind it meters)",
        """
        ALTER TABLE cost_lines ADD COLUMN sku text NOT NULL DEFAULT '';
        ALTER TABLE cost_lines ADD COLUMN sku_meter text NOT NULL DEFAULT '';
        ALTER TABLE cost_lines ADD COLUMN pricing_unit text NOT NULL DEFAULT '';
        """,
    ),
    (
        110,
        "billing: idle, a node's capacity no workload used or requested, is an allocation category of its own",
        """
        ALTER TABLE allocations DROP CONSTRAINT allocations_method_check;
        ALTER TABLE allocations ADD CONSTRAINT allocations_method_check
            CHECK (method IN ('direct', 'trace', 'propagated', 'platform', 'idle', 'unallocated'));
        """,
    ),
    (
        200,
        "api: indexes of the customer, resource and coverage queries; real-time hourly rollup with TimescaleDB",
        """
        CREATE INDEX allocations_tenant ON allocations (tenant, billing_period);
        CREATE INDEX allocations_resource ON allocations (resource, billing_period);
        CREATE INDEX allocations_unallocated ON allocations (billing_period) WHERE method = 'unallocated';
        DO $api$
        BEGIN
            IF (SELECT flavour FROM storage_flavour) = 'timescaledb' THEN
                -- hours not yet materialized are aggregated from the minutes at query time, so the API can read
                -- whole hours from the rollup up to now
                ALTER MATERIALIZED VIEW consumption_hourly SET (timescaledb.materialized_only = false);
            ELSE
                CREATE INDEX consumption_hourly_tenant ON consumption_hourly (tenant, hour);
            END IF;
        END
        $api$;
        """,
    ),
    (
        201,
        "api: summaries of each period's allocations, rebuilt when its allocation run completes "
        "(costmesh.common.allocation_summary)",
        """
        CREATE TABLE allocation_summary_runs (
            billing_period  text PRIMARY KEY,
            -- allocation_runs.run_at of the run summarized; another value there means the summaries are stale
            run_at          timestamptz NOT NULL
        );
        CREATE TABLE allocation_totals (
            billing_period  text NOT NULL,
            dim             text NOT NULL,
            key             text NOT NULL,
            currency        text NOT NULL,
            method          text NOT NULL,
            amount          numeric NOT NULL,
            first_start     timestamptz NOT NULL,
            last_start      timestamptz NOT NULL,
            PRIMARY KEY (billing_period, dim, key, currency, method)
        );
        CREATE TABLE allocation_series (
            billing_period  text NOT NULL,
            dim             text NOT NULL,
            key             text NOT NULL,
            currency        text NOT NULL,
            method          text NOT NULL,
            charge_start    timestamptz NOT NULL,
            amount          numeric NOT NULL,
            PRIMARY KEY (billing_period, dim, key, currency, method, charge_start)
        );
        CREATE TABLE allocation_consumers (
            billing_period  text NOT NULL,
            resource        text NOT NULL,
            tenant          text NOT NULL,
            feature         text NOT NULL,
            agent           text NOT NULL,
            method          text NOT NULL,
            basis           text NOT NULL,
            currency        text NOT NULL,
            amount          numeric NOT NULL,
            PRIMARY KEY (billing_period, resource, tenant, feature, agent, method, basis, currency)
        );
        -- a resource's largest consumers in the API's order, read from the top
        CREATE INDEX allocation_consumers_largest
            ON allocation_consumers (resource, billing_period, currency, amount DESC, tenant, feature, agent);
        CREATE TABLE allocation_resource_tenants (
            billing_period  text NOT NULL,
            resource        text NOT NULL,
            tenant          text NOT NULL,
            currency        text NOT NULL,
            amount          numeric NOT NULL,
            PRIMARY KEY (billing_period, resource, tenant, currency)
        );
        CREATE TABLE allocation_resources (
            billing_period  text NOT NULL,
            resource        text NOT NULL,
            currency        text NOT NULL,
            amount          numeric NOT NULL,
            tenants         integer NOT NULL,
            PRIMARY KEY (billing_period, resource, currency)
        );
        CREATE TABLE allocation_resource_lines (
            billing_period  text NOT NULL,
            resource        text NOT NULL,
            line_id         text NOT NULL,
            PRIMARY KEY (billing_period, resource, line_id)
        );
        """,
    ),
]
