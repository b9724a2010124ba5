"""The API under test: a seeded database, the app with one token per role on a loopback TestServer, and a client that
validates every JSON answer against the OpenAPI document's schema for that route and status."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer
from openapi_schema_validator import OAS31Validator

from costmesh.api import auth
from costmesh.api.app import make_app
from costmesh.common import db
from costmesh.common.config import Config
from costmesh.common.embedded import EmbeddedPostgres
from costmesh.common.runtime import ServiceContext

from .store_seed import Scale, seed

TOKENS = {
    "viewer": "viewer-token-0123456789abcdef",
    "finance": "finance-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef01",
}
TOKEN_TEXT = ",".join(f"{token}:{role}" for role, token in TOKENS.items())


@asynccontextmanager
async def seeded_database(postgres: EmbeddedPostgres, scale: Scale | None = None) -> AsyncIterator[asyncpg.Pool]:
    name = "api_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    pool = await db.create_pool(postgres.dsn.rsplit("/", 1)[0] + "/" + name)
    try:
        await db.migrate(pool)
        async with pool.acquire() as c:
            await seed(c, scale or Scale())
        yield pool
    finally:
        await pool.close()
        conn = await asyncpg.connect(postgres.dsn)
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await conn.close()


class Api:
    """A client of one running app; ``get`` checks the answer against the document unless told not to."""

    def __init__(self, http: aiohttp.ClientSession, document: dict[str, Any], app: Any, base: str) -> None:
        self.http, self.document, self.app, self.base = http, document, app, base
        self.checked: set[tuple[str, int]] = set()

    def schema_of(self, template: str, status: int) -> dict[str, Any] | None:
        response = self.document["paths"][template]["get"]["responses"].get(str(status))
        content = (response or {}).get("content", {}).get("application/json")
        if content is None:
            return None
        return {**content["schema"], "components": self.document["components"]}

    async def get(
        self,
        path: str,
        params: Any = None,
        role: str | None = "admin",
        template: str | None = None,
        status: int | set[int] = 200,
    ) -> Any:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
        async with self.http.get(path, params=params, headers=headers) as resp:
            body = await resp.read()
            assert resp.status in (status if isinstance(status, set) else {status}), (
                path,
                params,
                resp.status,
                body[:500],
            )
            if resp.content_type == "text/csv":
                return body.decode()
            data = await resp.json()
        template = template or path
        schema = self.schema_of(template, resp.status)
        assert schema is not None, f"{template} documents no JSON answer for {resp.status}"
        OAS31Validator(schema).validate(data)
        self.checked.add((template, resp.status))
        return data


@asynccontextmanager
async def running_api(pool: asyncpg.Pool, config: Config | None = None, tokens: bool = True) -> AsyncIterator[Api]:
    config = config or Config()
    ctx = ServiceContext("api", config, "", "")
    ctx.ready = True
    app = make_app(pool, ctx, auth.Tokens.parse(TOKEN_TEXT, "test") if tokens else auth.Tokens({}))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(str(server.make_url(""))) as http:
            async with http.get("/v1/openapi.json") as resp:
                document = await resp.json()
            yield Api(http, document, app, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()
