"""The SaaS's own PostgreSQL (the embedded one, on the ``db`` workload's address): schema, roles, sample data, the
sessions workloads open, and the statement log that is the database's ground truth.

PostgreSQL logs the duration of every statement (``log_min_duration_statement = 0``) with the session's
``application_name`` in front (``log_line_prefix = '%a|'``). Every session a workload opens is for one tenant or
for platform work and gets an opaque application name recorded in the truth (``DbSession``): the name tells
costmesh nothing, the truth joins on it. Only what is logged after the set-up counts (``log_offset``).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg

from costmesh.common.embedded import EmbeddedPostgres

from .plan import Plan, db_role
from .truth import DbSession, TruthWriter

DATABASE = "saas"
LOG_SETTINGS = {
    "log_min_duration_statement": "0",
    "log_line_prefix": "%a|",
    "log_checkpoints": "off",
    "log_connections": "off",
    "log_disconnections": "off",
}

SCHEMA = """
CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL, price_cents integer NOT NULL);
CREATE TABLE orders (
    id bigserial PRIMARY KEY, tenant text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'new', total_cents integer NOT NULL DEFAULT 0
);
CREATE INDEX orders_tenant ON orders (tenant, created_at DESC);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders, product_id integer NOT NULL REFERENCES products,
    qty integer NOT NULL, price_cents integer NOT NULL
);
CREATE TABLE shipments (order_id bigint PRIMARY KEY REFERENCES orders, label text NOT NULL, created_at timestamptz);
CREATE TABLE events (tenant text NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, amount_cents integer);
CREATE INDEX events_tenant ON events (tenant);
CREATE TABLE daily_stats (
    day date NOT NULL, tenant text NOT NULL, orders integer NOT NULL, revenue_cents bigint NOT NULL,
    PRIMARY KEY (day, tenant)
);
INSERT INTO products (name, price_cents) SELECT 'product ' || i, 100 + (i * 37) % 900 FROM generate_series(1, 50) i;
"""


class SaasDatabase:
    """The PostgreSQL of the SaaS: started, set up, and read back for the truth."""

    def __init__(self, data_dir: Path, host: str) -> None:
        self.server = EmbeddedPostgres(data_dir, host=host, durable=False, settings=LOG_SETTINGS)
        self.log_offset = 0

    @property
    def log_file(self) -> Path:
        return self.server.data_dir / "server.log"

    async def start(self, plan: Plan) -> int:
        """Start the server, create roles, schema and sample data; returns the port."""
        self.server.start()
        hba = self.server.data_dir / "pg_hba.conf"
        hba.write_text(
            hba.read_text()
            + "\n# the demo's workloads, each on its own loopback address\nhost all all 127.0.0.0/8 trust\n"
        )
        admin = await asyncpg.connect(self.server.dsn, server_settings={"application_name": "demo-setup"})
        try:
            await admin.execute("SELECT pg_reload_conf()")
            await admin.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await admin.close()
        dsn = self.server.dsn.rsplit("/", 1)[0] + "/" + DATABASE
        conn = await asyncpg.connect(dsn, server_settings={"application_name": "demo-setup"})
        try:
            await conn.execute(SCHEMA)
            roles = {"app"} | {db_role(plan, t.name) for t in plan.tenants}
            for role in sorted(roles):
                await conn.execute(f"CREATE ROLE {role} LOGIN")
                await conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
                await conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
            for t in plan.tenants:
                await conn.execute(
                    "INSERT INTO events SELECT $1, now() - (i % 90) * interval '1 day', "
                    "(ARRAY['view', 'cart', 'sale'])[1 + i % 3], (i::bigint * 7919) % 10000 "
                    "FROM generate_series(1, $2) i",
                    t.name,
                    t.report_rows,
                )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        self.log_offset = self.log_file.stat().st_size
        return self.server.port

    def statement_log(self) -> bytes:
        """What PostgreSQL logged after the set-up."""
        with open(self.log_file, "rb") as f:
            f.seek(self.log_offset)
            return f.read()

    def stop(self) -> None:
        self.server.stop()


class DbPools:
    """A workload's database pools, one per tenant it works for (and one for platform work), each a session with
    an opaque application name that the truth maps to the tenant. ``tenant_roles``: log in as the tenant's own role
    where the plan's mode has one (the services do; the queue worker and the background job never do)."""

    def __init__(self, plan: Plan, truth: TruthWriter, *, size: int = 2, tenant_roles: bool = False) -> None:
        self.plan = plan
        self.truth = truth
        self.size = size
        self.tenant_roles = tenant_roles
        #: One pool per tenant, created once even when its first requests come together.
        self._pools: dict[str, asyncio.Future[asyncpg.Pool]] = {}

    def pool(self, tenant: str) -> asyncio.Future[asyncpg.Pool]:
        found = self._pools.get(tenant)
        if found is None:
            app_name = f"s-{secrets.token_hex(6)}"
            self.truth.write(DbSession(app_name, tenant))
            found = self._pools[tenant] = asyncio.ensure_future(
                asyncpg.create_pool(
                    host=self.plan.addresses["db"],
                    port=self.plan.ports["db"],
                    user=db_role(self.plan, tenant) if self.tenant_roles else "app",
                    database=DATABASE,
                    min_size=1,
                    max_size=self.size,
                    server_settings={"application_name": app_name},
                )
            )
        return found

    async def close(self) -> None:
        for found in self._pools.values():
            await (await found).close()
