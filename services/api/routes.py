"""The API's routes, declared once: path, role needed, parameters, answer type, CSV or not. The same table routes the
requests, checks the roles (``auth``), parses the parameters (``params``) and generates the OpenAPI document
(``openapi``), so none of them can disagree with the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
from aiohttp import web

from costmesh.common import alerting
from costmesh.common.config import Config

from . import answers as a
from . import queries, tables
from .answer_cache import AnswerCache
from .auth import ROLE
from .params import (
    COST_FILTER_NAMES,
    COST_FILTERS,
    FORMAT,
    FROM,
    LIMIT,
    PERIOD,
    STEP,
    TO,
    BadRequest,
    Choice,
    Currency,
    Param,
    Text,
    Whole,
    filters,
    many,
    parse,
)

POOL = web.AppKey("pool", asyncpg.Pool)
CONFIG = web.AppKey("config", Config)
#: Whether bearer tokens are enforced by this app.
AUTH_REQUIRED = web.AppKey("auth_required", bool)
#: Answers built from the allocation summaries, per app (so per database).
CACHE = web.AppKey("answer_cache", AnswerCache)


@dataclass
class Call:
    """One request, parsed: its parameters by name, a database connection and the service's config."""

    args: dict[str, Any]
    conn: asyncpg.Connection
    config: Config
    #: The caller's role (``None``: no or an unknown token, on a public route).
    role: a.Role | None = None
    auth_required: bool = False
    cache: AnswerCache | None = None


Handler = Callable[[Call], Awaitable[msgspec.Struct | None]]


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    #: The least role that may read the route; ``None``: public.
    role: a.Role | None
    answer: type[msgspec.Struct]
    summary: str
    params: Sequence[Param] = ()
    #: What a 404 means on this route (path parameters only).
    not_found: str = ""
    #: ``post`` routes change something; their JSON body is decoded into ``body`` (``args["body"]``).
    method: Literal["get", "post"] = "get"
    body: type[msgspec.Struct] | None = None

    @property
    def csv(self) -> bool:
        return tables.supports(self.answer)

    def all_params(self) -> list[Param]:
        return [*self.params, FORMAT] if self.csv else list(self.params)


def _group(choices: Sequence[str], default: str) -> Param:
    return Param("group_by", Choice(values=tuple(choices)), "Dimension the rows are grouped by.", default=default)


# -- handlers -------------------------------------------------------------------------------------------------------


async def _usage(c: Call) -> msgspec.Struct:
    f = filters(c.args, ("tenant", "feature", "agent"))
    return await queries.usage(c.conn, c.args["group_by"], c.args["from"], c.args["to"], f)


async def _ingest(c: Call) -> msgspec.Struct:
    return await queries.ingest(c.conn)


async def _cost(c: Call) -> msgspec.Struct:
    x = c.args
    return await queries.cost(
        c.conn,
        x["group_by"],
        x["period"],
        x["from"],
        x["to"],
        x["step"],
        filters(x, COST_FILTER_NAMES),
        x["limit"],
        c.cache,
    )


async def _pnl(c: Call) -> msgspec.Struct:
    return await queries.pnl(c.conn, c.args["period"], c.args["currency"], c.args["tenant"], c.cache)


async def _revenue(c: Call) -> msgspec.Struct:
    return await queries.revenue(c.conn, c.args["period"], c.args["tenant"])


async def _customer(c: Call) -> msgspec.Struct | None:
    x = c.args
    f = filters(x, tuple(n for n in COST_FILTER_NAMES if n != "tenant"))
    return await queries.customer(c.conn, x["id"], x["period"], x["from"], x["to"], x["step"], f)


async def _resource(c: Call) -> msgspec.Struct | None:
    x = c.args
    f = filters(x, tuple(n for n in COST_FILTER_NAMES if n != "resource"))
    return await queries.resource(c.conn, x["id"], x["period"], x["from"], x["to"], f, x["limit"], c.cache)


async def _coverage(c: Call) -> msgspec.Struct:
    f = filters(c.args, COST_FILTER_NAMES)
    return await queries.coverage(c.conn, c.args["period"], f, c.args["limit"], c.cache)


async def _periods(c: Call) -> msgspec.Struct:
    return await queries.periods(c.conn)


async def _ai_cost(c: Call) -> msgspec.Struct:
    f = filters(c.args, ("tenant", "feature", "agent", "provider", "model"))
    return await queries.ai_cost(c.conn, c.args["group_by"], c.args["from"], c.args["to"], f)


async def _alerts(c: Call) -> msgspec.Struct:
    return await queries.alerts(
        c.conn, c.args["state"], filters(c.args, ("tenant", "feature", "agent")), c.args["limit"]
    )


async def _silence(c: Call) -> msgspec.Struct | None:
    body: a.SilenceRequest = c.args["body"]
    try:
        silence = await alerting.create_silence(
            c.conn, c.args["id"], body.duration_s, datetime.now(UTC), created_by=c.role or "", comment=body.comment
        )
    except alerting.UnknownAlert:
        return None
    except alerting.SilenceError as exc:
        raise BadRequest(f"body: {exc}") from None
    return a.SilenceAnswer(**msgspec.structs.asdict(silence))


async def _graph(c: Call) -> msgspec.Struct:
    return await queries.graph(c.conn, c.args["at"], c.args["window_s"], c.args["idle_s"])


async def _imports(c: Call) -> msgspec.Struct:
    return await queries.imports(c.conn, c.args["limit"])


async def _me(c: Call) -> msgspec.Struct:
    return a.Me(auth_required=c.auth_required, role=c.role)


async def _config(c: Call) -> msgspec.Struct:
    return a.ConfigAnswer(config=queries.redact_urls(msgspec.to_builtins(c.config)))


_TENANT_ETC = (many("tenant", "these tenants"), many("feature", "these features"), many("agent", "these AI agents"))
_ID = Param("id", Text(), "The id.", location="path")
_DEFAULT_LIMIT = 50

ROUTES: tuple[Route, ...] = (
    Route("/v1/me", _me, None, a.Me, "Whether tokens are required, and the role of the token presented (public)."),
    Route(
        "/v1/usage",
        _usage,
        "viewer",
        a.UsageAnswer,
        "Observed consumption (requests, bytes, server time, tokens) summed per group.",
        (_group(list(queries.USAGE_GROUPS), "tenant"), FROM, TO, *_TENANT_ETC),
    ),
    Route("/v1/ingest", _ingest, "viewer", a.IngestAnswer, "Batches and records the attributor has applied."),
    Route(
        "/v1/cost",
        _cost,
        "viewer",
        a.CostAnswer,
        "Allocated cost per group and currency, split by method; with step, a series per group over time.",
        (_group(list(queries.COST_GROUPS), "tenant"), PERIOD, FROM, TO, STEP, LIMIT, *COST_FILTERS),
    ),
    Route(
        "/v1/pnl",
        _pnl,
        "finance",
        a.PnlAnswer,
        "Customer P&L of a billing period: revenue, cost by category, margin; negative margins first.",
        (
            Param("period", PERIOD.kind, PERIOD.description, required=True),
            Param("currency", Currency(), "Currency of the costs and revenue (ISO 4217).", default="USD"),
            many("tenant", "these customers"),
        ),
    ),
    Route(
        "/v1/revenue",
        _revenue,
        "finance",
        a.RevenueAnswer,
        "Imported revenue per customer and period.",
        (PERIOD, many("tenant", "these customers")),
    ),
    Route(
        "/v1/customers/{id}",
        _customer,
        "viewer",
        a.CustomerAnswer,
        "One customer's cost taken apart: by resource, service, feature, agent and method, what drives it, its share "
        "of each shared resource, its busiest calls and its cost over time by resource.",
        (
            _ID,
            PERIOD,
            FROM,
            TO,
            Param("step", STEP.kind, STEP.description, default="day"),
            *(p for p in COST_FILTERS if p.name != "tenant"),
        ),
        not_found="the customer has no allocated cost in this range",
    ),
    Route(
        "/v1/resources/{id}",
        _resource,
        "viewer",
        a.ResourceAnswer,
        "One observed resource: who consumes it and how much, and the bill lines that pay for it.",
        (
            _ID,
            PERIOD,
            FROM,
            TO,
            Param("limit", LIMIT.kind, LIMIT.description, default=_DEFAULT_LIMIT),
            *(p for p in COST_FILTERS if p.name != "resource"),
        ),
        not_found="no allocated cost names this resource in this range",
    ),
    Route(
        "/v1/coverage",
        _coverage,
        "viewer",
        a.CoverageAnswer,
        "Per period: the share of the bill attributed, propagated, modeled and unallocated, and the lines carrying "
        "unallocated cost (unmatched ones included).",
        (PERIOD, Param("limit", LIMIT.kind, LIMIT.description, default=20), *COST_FILTERS),
    ),
    Route("/v1/periods", _periods, "viewer", a.PeriodsAnswer, "Billing periods with an allocation run, newest first."),
    Route(
        "/v1/ai-cost",
        _ai_cost,
        "viewer",
        a.AiCostAnswer,
        "AI token cost priced in real time (micro-dollars and dollars) and tokens per group.",
        (
            _group(list(queries.AI_GROUPS), "tenant"),
            FROM,
            TO,
            *_TENANT_ETC,
            many("provider", "these AI providers"),
            many("model", "these models"),
        ),
    ),
    Route(
        "/v1/alerts",
        _alerts,
        "viewer",
        a.AlertsAnswer,
        "Runaway-AI-cost alerts (the detector's state): firing first, then newest.",
        (
            Param("state", Choice(values=("firing", "resolved")), "Only alerts in this state."),
            Param("limit", LIMIT.kind, LIMIT.description, default=200),
            *_TENANT_ETC,
        ),
    ),
    Route(
        "/v1/alerts/{id}/silence",
        _silence,
        "admin",
        a.SilenceAnswer,
        "Silence an alert (by its id or fingerprint) for duration_s: it still fires and resolves, but no notification "
        "names it until the silence ends.",
        (Param("id", Text(), "The alert's id (one episode) or fingerprint.", location="path"),),
        not_found="no alert has this id or fingerprint",
        method="post",
        body=a.SilenceRequest,
    ),
    Route(
        "/v1/graph",
        _graph,
        "viewer",
        a.GraphAnswer,
        "The live service-dependency graph: nodes seen within idle_s, edge totals over window_s.",
        (
            Param("at", FROM.kind, "The graph's now (default: the wall clock, never after the newest edge)."),
            Param("window_s", Whole(low=1, high=400 * 86400), "Seconds of edge traffic summed.", default=300),
            Param("idle_s", Whole(low=1, high=400 * 86400), "Nodes idle for longer drop out.", default=3600),
        ),
    ),
    Route(
        "/v1/imports",
        _imports,
        "admin",
        a.ImportsAnswer,
        "Imported bill files and restatements, newest first.",
        (Param("limit", LIMIT.kind, LIMIT.description, default=200),),
    ),
    Route("/v1/config", _config, "admin", a.ConfigAnswer, "The running config (no secrets; URL passwords masked)."),
)


def handler_of(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    params = route.all_params()

    async def handle(request: web.Request) -> web.StreamResponse:
        args = parse(request, params)
        if route.body is not None:
            try:
                args["body"] = msgspec.json.decode(await request.read(), type=route.body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BadRequest(f"body: {exc}") from None
        async with request.app[POOL].acquire() as conn:
            answer = await route.handler(
                Call(
                    args,
                    conn,
                    request.app[CONFIG],
                    request.get(ROLE),
                    request.app[AUTH_REQUIRED],
                    request.app[CACHE],
                )
            )
        if answer is None:
            raise web.HTTPNotFound(
                text=msgspec.json.encode(a.Error(error=f"{request.path}: {route.not_found}")).decode(),
                content_type="application/json",
            )
        if args.get("format") == "csv":
            return web.Response(body=tables.render(answer), content_type="text/csv", charset="utf-8")
        return web.Response(body=msgspec.json.encode(answer), content_type="application/json")

    handle.__doc__ = route.summary
    return handle
