"""The API on a seeded store: the OpenAPI document is valid and describes every route, parameter and answer; every
answer validates against its schema; roles are enforced route by route and every refusal is counted; the numbers
equal independent sums over the tables; filters, series and CSV agree with the plain answers."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from openapi_spec_validator import validate

from costmesh.api import auth, queries
from costmesh.api.routes import ROUTES
from costmesh.common.config import ApiConfig, Config, ConfigError

from .api_harness import TOKEN_TEXT, TOKENS, running_api, seeded_database
from .conftest import metric
from .store_seed import LIVE_END, PERIOD

ROLE_RANK = {"viewer": 0, "finance": 1, "admin": 2}
#: A valid call of every route (path, template, params).
CALLS = [
    ("/v1/me", "/v1/me", {}),
    ("/v1/usage", "/v1/usage", {"group_by": "dst"}),
    ("/v1/ingest", "/v1/ingest", {}),
    ("/v1/cost", "/v1/cost", {"group_by": "resource", "period": PERIOD}),
    ("/v1/pnl", "/v1/pnl", {"period": PERIOD}),
    ("/v1/revenue", "/v1/revenue", {"period": PERIOD}),
    ("/v1/customers/acme", "/v1/customers/{id}", {"period": PERIOD}),
    ("/v1/resources/orders-db", "/v1/resources/{id}", {"period": PERIOD}),
    ("/v1/coverage", "/v1/coverage", {}),
    ("/v1/periods", "/v1/periods", {}),
    ("/v1/ai-cost", "/v1/ai-cost", {"group_by": "model"}),
    ("/v1/alerts", "/v1/alerts", {"state": "firing"}),
    ("/v1/alerts/al-0000/silence", "/v1/alerts/{id}/silence", {}),
    ("/v1/graph", "/v1/graph", {"window_s": "3600"}),
    ("/v1/imports", "/v1/imports", {}),
    ("/v1/config", "/v1/config", {}),
]

#: The method of each route, and the body of those that take one.
METHOD = {r.path: r.method for r in ROUTES}
BODIES = {"/v1/alerts/{id}/silence": {"duration_s": 3600, "comment": "planned load test"}}


@pytest.fixture(scope="module")
async def pool(postgres):
    async with seeded_database(postgres) as pool:
        yield pool


@pytest.fixture
async def api(pool):
    async with running_api(pool) as api:
        yield api


def test_every_route_has_a_call_here():
    assert {template for _p, template, _q in CALLS} == {r.path for r in ROUTES}


async def test_openapi_document_is_valid_and_complete(api):
    doc = api.document
    validate(doc)  # raises on any violation of OpenAPI 3.1
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {r.path for r in ROUTES}
    for route in ROUTES:
        op = doc["paths"][route.path][route.method]
        documented = {p["name"] for p in op["parameters"]}
        assert documented == {p.name for p in route.all_params()}, route.path
        assert op["x-costmesh-role"] == (route.role or "public")
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(route.answer.__name__)
    # the app serves exactly the documented API routes
    served = {r.resource.canonical for r in api.app.router.routes() if r.resource.canonical.startswith("/v1/")}
    assert served == set(doc["paths"]) | {"/v1/openapi.json"}


@pytest.mark.parametrize(("path", "template", "params"), CALLS)
async def test_each_route_answers_by_its_schema_for_each_role(api, path, template, params):
    route = next(r for r in ROUTES if r.path == template)
    for role in ROLE_RANK:
        allowed = route.role is None or ROLE_RANK[role] >= ROLE_RANK[route.role]
        body = await api.call(
            route.method, path, params, role, template, 200 if allowed else 403, json=BODIES.get(template)
        )
        if not allowed:
            assert body["required_role"] == route.role and route.role in body["error"]
    before = metric("costmesh_api_refusals_total", route=template, reason="missing_token")
    if route.role is None:
        assert (await api.get(path, params, role=None, template=template))["role"] is None
        return
    body = await api.call(route.method, path, params, None, template, 401, json=BODIES.get(template))
    assert body["required_role"] == route.role
    assert metric("costmesh_api_refusals_total", route=template, reason="missing_token") == before + 1
    bad = {"Authorization": "Bearer not-a-token"}
    async with api.http.request(route.method.upper(), path, params=params, headers=bad) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert metric("costmesh_api_refusals_total", route=template, reason="bad_token") >= 1


#: A value of every query parameter that finds data in the seed.
SAMPLE = {
    "from": "2026-01-01T00:00:00Z",
    "to": "2026-02-01T00:00:00Z",
    "period": PERIOD,
    "step": "day",
    "limit": "5",
    "tenant": "acme",
    "feature": "assistant",
    "agent": "support-bot",
    "service": "Amazon Relational Database Service",
    "resource": "orders-db",
    "provider": "openai",
    "model": "gpt-4o",
    "currency": "USD",
    "state": "firing",
    "at": "2026-01-31T18:00:00Z",
    "window_s": "3600",
    "idle_s": "3600",
    "format": "json",
}


async def test_every_documented_parameter_is_accepted_and_others_refused(api):
    for path, template, base in CALLS:
        op = api.document["paths"][template][METHOD[template]]
        for p in op["parameters"]:
            if p["in"] == "path":
                continue
            enum = p["schema"].get("items", p["schema"]).get("enum")
            params = {
                **base,
                p["name"]: enum[-1] if p["name"] == "group_by" else SAMPLE.get(p["name"], enum and enum[0]),
            }
            # a filter may leave one customer or resource with nothing: then its route says so with a 404
            allowed = {200, 404} if template.endswith("{id}") else {200}
            await api.call(METHOD[template], path, params, template=template, status=allowed, json=BODIES.get(template))
        error = await api.call(
            METHOD[template], path, {**base, "colour": "red"}, template=template, status=400, json=BODIES.get(template)
        )
        assert "colour" in error["error"]


async def test_bad_values_are_400s_naming_the_parameter(api):
    for params in (
        {"group_by": "colour"},
        {"period": "2026-13"},
        {"from": "yesterday"},
        {"to": "2026-01-01T00:00:00"},
        {"step": "week"},
        {"limit": "0"},
        {"period": [PERIOD, PERIOD], "group_by": "tenant"},
    ):
        before = metric("costmesh_input_errors_total", service="api", kind="bad_request")
        body = await api.get("/v1/cost", params, status=400)
        name = next(iter(params))
        assert name in body["error"], body
        assert metric("costmesh_input_errors_total", service="api", kind="bad_request") == before + 1
    assert "required" in (await api.get("/v1/pnl", {}, status=400))["error"]
    assert "currency" in (await api.get("/v1/pnl", {"period": PERIOD, "currency": "US"}, status=400))["error"]
    body = await api.get("/v1/cost", {"step": "hour", "from": "2025-01-01T00:00:00Z"}, status=400)
    assert "coarser step" in body["error"]
    await api.get("/v1/customers/nobody", {"period": PERIOD}, template="/v1/customers/{id}", status=404)
    await api.get("/v1/resources/nothing", {}, template="/v1/resources/{id}", status=404)


async def _allocation_sums(pool, column: str, where: str = "true", *args):
    rows = await pool.fetch(
        f"SELECT {column} AS key, currency, method, sum(amount) AS amount FROM allocations WHERE {where} "
        "GROUP BY 1, 2, 3",
        *args,
    )
    out: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(dict)
    for r in rows:
        out[(r["key"], r["currency"])][r["method"]] = r["amount"]
    return out


async def test_cost_equals_the_allocations_and_series_add_up(api, pool):
    for group in queries.COST_GROUPS:
        body = await api.get("/v1/cost", {"group_by": group, "period": PERIOD})
        expected = await _allocation_sums(pool, group, "billing_period = $1", PERIOD)
        got = {(r[group], r["currency"]): {m: Decimal(v) for m, v in r["by_method"].items()} for r in body["rows"]}
        assert got == expected, group
        assert all(Decimal(r["cost"]) == sum(Decimal(v) for v in r["by_method"].values()) for r in body["rows"])
    billed = await pool.fetchval("SELECT sum(amount) FROM cost_lines WHERE billing_period = $1", PERIOD)
    assert [Decimal(t["cost"]) for t in body["totals"]] == [billed]

    series = await api.get("/v1/cost", {"group_by": "tenant", "period": PERIOD, "step": "day", "limit": "3"})
    assert len(series["buckets"]) == 31 and series["buckets"][0] == "2026-01-01T00:00:00Z"
    assert len(series["rows"]) == 3 and series["rows_left_out"] == 9 - 3  # 8 customers and no customer ("")
    for row in series["rows"]:
        assert sum(Decimal(v) for v in row["series"]) == Decimal(row["cost"])
    total = series["totals"][0]
    assert sum(Decimal(v) for v in total["series"]) == Decimal(total["cost"]) == billed
    day = await pool.fetchval(
        "SELECT sum(amount) FROM allocations WHERE tenant = $1 AND charge_start >= $2 AND charge_start < $3",
        series["rows"][0]["tenant"],
        datetime(2026, 1, 5, tzinfo=UTC),
        datetime(2026, 1, 6, tzinfo=UTC),
    )
    assert Decimal(series["rows"][0]["series"][4]) == day

    hourly = await api.get(
        "/v1/cost",
        {"group_by": "resource", "step": "hour", "from": "2026-01-02T00:00:00Z", "to": "2026-01-03T00:00:00Z"},
    )
    assert len(hourly["buckets"]) == 24
    months = await api.get("/v1/cost", {"group_by": "method", "step": "month"})
    assert months["buckets"] == ["2026-01-01T00:00:00Z"]


async def test_filters_take_several_values_and_csv_matches_json(api, pool):
    params = [("group_by", "feature"), ("period", PERIOD), ("tenant", "acme"), ("tenant", "globex")]
    params += [("resource", "orders-db"), ("resource", "openai")]
    body = await api.get("/v1/cost", params)
    expected = await _allocation_sums(
        pool,
        "feature",
        "billing_period = $1 AND tenant = ANY($2) AND resource = ANY($3)",
        PERIOD,
        ["acme", "globex"],
        ["orders-db", "openai"],
    )
    assert {(r["feature"], r["currency"]): Decimal(r["cost"]) for r in body["rows"]} == {
        k: sum(v.values()) for k, v in expected.items()
    }
    text = await api.get("/v1/cost", [*params, ("format", "csv")])
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["feature"], r["cost"]) for r in table] == [(r["feature"], r["cost"]) for r in body["rows"]]
    for path, template, query in CALLS:
        route = next(r for r in ROUTES if r.path == template)
        if route.csv:
            text = await api.get(path, {**query, "format": "csv"}, template=template)
            assert text.count("\n") >= 1, path


async def test_pnl_is_the_one_pnl_rule_over_every_row(api, pool):
    from costmesh.common import ledger
    from costmesh.common.pnl import customer_pnl

    body = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
    async with pool.acquire() as conn:
        report = customer_pnl(
            await ledger.load_allocations(conn, PERIOD), await ledger.load_revenue(conn, PERIOD), "USD"
        )
    assert [c["customer"] for c in body["customers"]] == [c.customer for c in report.customers]
    assert [Decimal(c["margin"]) for c in body["customers"]] == [c.margin for c in report.customers]
    assert Decimal(body["billed"]) == report.billed and Decimal(body["unallocated"]) == report.not_allocated
    assert Decimal(body["customers"][0]["margin"]) < 0  # the seed has customers under water: they come first
    only = await api.get("/v1/pnl", {"period": PERIOD, "tenant": ["acme", "wonka"]}, role="finance")
    assert {c["customer"] for c in only["customers"]} == {"acme", "wonka"}


async def test_customer_drill_down_adds_up(api, pool):
    body = await api.get("/v1/customers/acme", {"period": PERIOD}, template="/v1/customers/{id}")
    total = await pool.fetchval(
        "SELECT sum(amount) FROM allocations WHERE tenant = 'acme' AND billing_period = $1", PERIOD
    )
    assert Decimal(body["totals"][0]["cost"]) == total
    for facet in ("by_resource", "by_service", "by_feature", "by_agent", "by_method"):
        assert sum(Decimal(s["amount"]) for s in body[facet]) == total, facet
    resources = {s["key"]: Decimal(s["amount"]) for s in body["by_resource"]}
    for shared in body["shared_resources"]:
        whole = await pool.fetchval(
            "SELECT sum(amount) FROM allocations WHERE resource = $1 AND billing_period = $2",
            shared["resource"],
            PERIOD,
        )
        assert Decimal(shared["resource_cost"]) == whole
        assert Decimal(shared["amount"]) == resources[shared["resource"]]
        assert Decimal(shared["share_pct"]) == (resources[shared["resource"]] * 100 / whole).quantize(Decimal("0.01"))
    assert sum(Decimal(v) for s in body["series"] for v in s["values"]) == total
    assert body["drivers"] == sorted(body["drivers"], key=lambda d: -Decimal(d["amount"]))
    calls = {
        (r["src_workload"], r["dst"], r["protocol"]): r["requests"]
        for r in await pool.fetch(
            "SELECT src_workload, dst, protocol, sum(requests) AS requests FROM consumption_minute "
            "WHERE tenant = 'acme' GROUP BY 1, 2, 3"
        )
    }
    assert body["operations"] and all(
        calls[(o["src_workload"], o["dst"], o["protocol"])] == o["requests"] for o in body["operations"]
    )
    assert [o["busy_us"] for o in body["operations"]] == sorted(
        (o["busy_us"] for o in body["operations"]), reverse=True
    )
    by_feature = await api.get(
        "/v1/customers/acme", {"period": PERIOD, "feature": "search"}, template="/v1/customers/{id}"
    )
    assert {s["key"] for s in by_feature["by_feature"]} == {"search"}


async def test_resource_drill_down_and_coverage(api, pool):
    body = await api.get("/v1/resources/orders-db", {"period": PERIOD, "limit": "500"}, template="/v1/resources/{id}")
    total = await pool.fetchval("SELECT sum(amount) FROM allocations WHERE resource = 'orders-db'")
    assert Decimal(body["totals"][0]["cost"]) == total == sum(Decimal(c["amount"]) for c in body["consumers"])
    assert sum(Decimal(s["amount"]) for s in body["by_tenant"]) == total
    assert sum(Decimal(line["amount"]) for line in body["lines"]) == total  # the seed's lines go to one resource each

    cov = await api.get("/v1/coverage", {"limit": "100"})
    (period,) = cov["periods"]
    sums = dict(await pool.fetch("SELECT method, sum(amount) FROM allocations GROUP BY 1"))
    assert Decimal(period["attributed"]) == sums["direct"] + sums["trace"]
    assert Decimal(period["propagated"]) == sums["propagated"]
    assert Decimal(period["modeled"]) == sums["platform"]
    assert Decimal(period["unallocated"]) == sums["unallocated"]
    assert Decimal(period["billed"]) == sum(sums.values())
    parts = ("attributed_pct", "propagated_pct", "modeled_pct", "unallocated_pct")
    assert abs(sum(Decimal(period[p]) for p in parts) - 100) <= Decimal("0.02")
    unmatched = await pool.fetch("SELECT amount FROM cost_lines WHERE resource_name = ''")
    assert period["unmatched_lines"] == len(unmatched)
    assert Decimal(period["unmatched_amount"]) == sum(r["amount"] for r in unmatched)
    flagged = [line for line in cov["unallocated_lines"] if not line["matched"]]
    assert len(flagged) == len(unmatched) and all(line["reason"] for line in flagged)
    assert any(line["matched"] for line in cov["unallocated_lines"])  # NAT bytes nobody is known to have sent


async def test_alerts_ai_cost_and_graph(api, pool):
    alerts = await api.get("/v1/alerts")
    assert (alerts["firing"], alerts["resolved"]) == (2, 2)
    assert [a["state"] for a in alerts["alerts"]] == ["firing", "firing", "resolved", "resolved"]
    firing = await api.get("/v1/alerts", {"state": "resolved"})
    assert {a["state"] for a in firing["alerts"]} == {"resolved"}
    ai = await api.get("/v1/ai-cost", {"group_by": "agent"})
    micros = await pool.fetchval("SELECT sum(cost_micros) FROM ai_usage_minute")
    assert sum(r["cost_micros"] for r in ai["rows"]) == micros
    assert all(Decimal(r["cost"]) == Decimal(r["cost_micros"]) / 1_000_000 for r in ai["rows"])
    one = await api.get("/v1/ai-cost", {"group_by": "model", "model": ["gpt-4o", "gpt-4o-mini"]})
    assert {r["model"] for r in one["rows"]} == {"gpt-4o", "gpt-4o-mini"}
    graph = await api.get("/v1/graph", {"window_s": "3600"})
    assert graph["to"] == LIVE_END.isoformat().replace("+00:00", "Z")
    assert len(graph["nodes"]) == 10 and len(graph["edges"]) == 10


async def test_usage_reads_rollups_for_settled_hours_and_minutes_for_the_rest(postgres):
    """Settled hours come from the hourly rollup (so usage survives the minutes' retention), the partial and dirty
    hours from the minutes; either way the sums are those of the minutes."""
    from costmesh.attributor import storage

    async with seeded_database(postgres) as pool, running_api(pool) as api, pool.acquire() as conn:
        before = await api.get("/v1/usage", {"group_by": "tenant"})
        start = datetime(2026, 1, 31, 15, 37, tzinfo=UTC)  # a partial hour, a settled hour, a dirty hour
        sql = (
            "SELECT dst, sum(requests) FROM consumption_minute WHERE tenant = 'acme' AND minute >= $1 AND minute < $2 "
            "GROUP BY 1"
        )
        window = dict(await conn.fetch(sql, start, LIVE_END))
        minutes = [r["minute"] for r in await conn.fetch("SELECT DISTINCT minute FROM consumption_minute")]
        await storage.refresh_rollups(conn, minutes, storage.Upkeep())
        assert await conn.fetchval("SELECT count(*) FROM consumption_hourly") > 0
        newest = await conn.fetchval("SELECT max(minute) FROM consumption_minute")
        await conn.execute("INSERT INTO dirty_minutes (minute) VALUES ($1)", newest)
        params = {"group_by": "dst", "from": start.isoformat(), "to": LIVE_END.isoformat(), "tenant": "acme"}
        part = await api.get("/v1/usage", params)
        assert {r["dst"]: r["requests"] for r in part["rows"]} == window
        # a settled hour's rollup row is what is read: change it, and the answer changes with it
        await conn.execute(
            "UPDATE consumption_hourly SET requests = requests + 1 WHERE hour = $1 AND tenant = 'acme'",
            datetime(2026, 1, 31, 16, tzinfo=UTC),
        )
        changed = await api.get("/v1/usage", params)
        assert sum(r["requests"] for r in changed["rows"]) > sum(window.values())
        await conn.execute(
            "UPDATE consumption_hourly SET requests = requests - 1 WHERE hour = $1 AND tenant = 'acme'",
            datetime(2026, 1, 31, 16, tzinfo=UTC),
        )
        # the minutes of settled hours expire; the rollup still answers for them
        await conn.execute("DELETE FROM consumption_minute WHERE minute < date_trunc('hour', $1::timestamptz)", newest)
        assert await api.get("/v1/usage", {"group_by": "tenant"}) == before

        # AI cost likewise, from ai_usage_hourly
        ai_params = [{"group_by": "model"}, {"group_by": "tenant", "from": start.isoformat(), "agent": "summarizer"}]
        ai_before = [await api.get("/v1/ai-cost", p) for p in ai_params]
        ai_minutes = [r["minute"] for r in await conn.fetch("SELECT DISTINCT minute FROM ai_usage_minute")]
        await storage.refresh_side_rollups(conn, ai_minutes)
        assert await conn.fetchval("SELECT count(*) FROM ai_usage_hourly") > 0
        assert [await api.get("/v1/ai-cost", p) for p in ai_params] == ai_before
        newest_ai = await conn.fetchval("SELECT max(minute) FROM ai_usage_minute")
        await conn.execute("INSERT INTO dirty_minutes (minute) VALUES ($1) ON CONFLICT DO NOTHING", newest_ai)
        await conn.execute("DELETE FROM ai_usage_minute WHERE minute < date_trunc('hour', $1::timestamptz)", newest_ai)
        assert [await api.get("/v1/ai-cost", p) for p in ai_params] == ai_before


async def test_cost_metrics_equal_the_api_and_stay_bounded(pool):
    from costmesh.api.app import COST_METRICS
    from costmesh.common.metrics import REGISTRY

    async with running_api(pool, Config(api=ApiConfig(metrics_top_tenants=3))) as api:
        async with pool.acquire() as conn:
            await COST_METRICS.refresh(conn)
        body = await api.get("/v1/cost", {"group_by": "tenant", "period": PERIOD})
        tenants = {r["tenant"]: r for r in body["rows"] if r["tenant"]}
        top = sorted(tenants, key=lambda t: -Decimal(tenants[t]["cost"]))[:3]
        samples = [s for fam in REGISTRY.collect() if fam.name == "costmesh_tenant_cost_micros" for s in fam.samples]
        labels = {s.labels["tenant"] for s in samples}
        assert labels == {*top, "__other__"}
        for t in top:
            value = sum(s.value for s in samples if s.labels["tenant"] == t)
            assert value == pytest.approx(float(Decimal(tenants[t]["cost"]) * 1_000_000), abs=1e-3)
            for method, amount in tenants[t]["by_method"].items():
                one = sum(s.value for s in samples if s.labels["tenant"] == t and s.labels["method"] == method)
                assert one == pytest.approx(float(Decimal(amount) * 1_000_000), abs=1e-3)
        rest = sum(Decimal(r["cost"]) for t, r in tenants.items() if t not in top)
        other = sum(s.value for s in samples if s.labels["tenant"] == "__other__")
        assert other == pytest.approx(float(rest * 1_000_000), abs=1e-3)
        pnl = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
        not_allocated = metric_sum("costmesh_unallocated_cost_micros")
        assert not_allocated == pytest.approx(float(Decimal(pnl["unallocated"]) * 1_000_000), abs=1e-3)
        assert metric("costmesh_billed_cost_micros", period=PERIOD, currency="USD") == pytest.approx(
            float(Decimal(pnl["billed"]) * 1_000_000), abs=1e-3
        )
        ai = await api.get("/v1/ai-cost", {"group_by": "model"})
        assert metric_sum("costmesh_ai_cost_micros") == sum(r["cost_micros"] for r in ai["rows"])
        agents = {
            s.labels["agent"]
            for fam in REGISTRY.collect()
            if fam.name == "costmesh_ai_cost_micros"
            for s in fam.samples
        }
        assert len(agents - {"__other__"}) <= 3
        # /metrics on the API port is for viewers and up
        async with api.http.get("/metrics") as resp:
            assert resp.status == 401
        async with api.http.get("/metrics", headers={"Authorization": f"Bearer {TOKENS['viewer']}"}) as resp:
            assert resp.status == 200 and "costmesh_tenant_cost_micros{" in await resp.text()


def metric_sum(name: str) -> float:
    from costmesh.common.metrics import REGISTRY

    return sum(s.value for fam in REGISTRY.collect() if fam.name == name for s in fam.samples)


def test_tokens_are_parsed_strictly_and_compared_by_digest():
    tokens = auth.Tokens.parse(TOKEN_TEXT, "env")
    assert tokens.role_of("viewer-token-0123456789abcdef") == "viewer"
    assert tokens.role_of("viewer-token-0123456789abcdeX") is None
    for bad, reason in (
        ("short:viewer", "16 characters"),
        ("0123456789abcdefgh:root", "unknown role"),
        ("0123456789abcdefgh", "not token:role"),
        (" , ", "no token:role pair"),
    ):
        with pytest.raises(ConfigError, match=reason) as err:
            auth.Tokens.parse(bad, "api.tokens_env (X)")
        assert "0123456789abcdefgh" not in str(err.value)  # a token is never echoed


def test_an_open_api_binds_loopback_only_and_named_tokens_must_exist(monkeypatch):
    assert auth.check_bind(ApiConfig(host="127.0.0.1"), auth.Tokens({})) == "none (loopback only)"
    assert auth.check_bind(ApiConfig(host="::1"), auth.Tokens({})) == "none (loopback only)"
    with pytest.raises(ConfigError, match="not a loopback address"):
        auth.check_bind(ApiConfig(host="0.0.0.0"), auth.Tokens({}))
    assert auth.check_bind(ApiConfig(host="0.0.0.0"), auth.Tokens.parse(TOKEN_TEXT, "x")) == "tokens"
    monkeypatch.delenv("COSTMESH_TEST_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="not set"):
        auth.Tokens.from_config(ApiConfig(tokens_env="COSTMESH_TEST_TOKENS"))
    monkeypatch.setenv("COSTMESH_TEST_TOKENS", "  ")
    with pytest.raises(ConfigError, match="is empty"):
        auth.Tokens.from_config(ApiConfig(tokens_env="COSTMESH_TEST_TOKENS"))
    monkeypatch.setenv("COSTMESH_TEST_TOKENS", TOKEN_TEXT)
    assert auth.Tokens.from_config(ApiConfig(tokens_env="COSTMESH_TEST_TOKENS")).enabled


async def test_health_says_the_auth_mode(pool):
    async with running_api(pool, tokens=False) as api:
        async with api.http.get("/healthz") as resp:
            assert (await resp.json())["auth"] == "none (loopback only)"
        assert (await api.get("/v1/me", role=None)) == {"auth_required": False, "role": "admin"}
        assert "/v1/pnl" in api.document["paths"]
    async with running_api(pool) as api, api.http.get("/healthz") as resp:
        assert (await resp.json())["auth"] == "tokens"


@pytest.mark.parametrize("path", ["compose/costmesh.toml", "deploy/kubernetes/configmap.yaml"])
def test_deployed_configs_serve_beyond_loopback_only_with_tokens(path, tmp_path):
    import yaml

    from costmesh.common.config import load_config

    from .conftest import REPO

    file = REPO / path
    if file.suffix == ".yaml":
        data = yaml.safe_load(file.read_text())["data"]
        file = tmp_path / "costmesh.toml"
        file.write_text(next(v for k, v in data.items() if k.endswith(".toml")))
    api = load_config(file).api
    assert auth.is_loopback(api.host) or api.tokens_env, f"{path}: a public api.host without api.tokens_env"


async def test_an_admin_silences_an_alert_and_the_alerts_answer_shows_it(api):
    firing = [a for a in (await api.get("/v1/alerts", {"state": "firing"}))["alerts"] if a["alert_id"] != "al-0000"]
    target = firing[0]
    assert target["silenced_until"] is None
    template = "/v1/alerts/{id}/silence"
    made = await api.call(
        "post", f"/v1/alerts/{target['alert_id']}/silence", template=template, json={"duration_s": 600, "comment": "ok"}
    )
    assert (made["fingerprint"], made["alert_id"], made["created_by"]) == (
        target["fingerprint"],
        target["alert_id"],
        "admin",
    )
    shown = next(a for a in (await api.get("/v1/alerts"))["alerts"] if a["alert_id"] == target["alert_id"])
    assert shown["silenced_until"] == made["ends_at"]  # the API says what the silence says
    by_fingerprint = await api.call(
        "post", f"/v1/alerts/{target['fingerprint']}/silence", template=template, json={"duration_s": 60}
    )
    assert by_fingerprint["fingerprint"] == target["fingerprint"]
    missing = await api.call("post", "/v1/alerts/nope/silence", template=template, status=404, json={"duration_s": 60})
    assert "no alert" in missing["error"]
    for body, named in (
        ({"duration_s": 5}, "duration_s"),
        ({"duration_s": 60, "colour": "red"}, "colour"),
        ({}, "duration_s"),
    ):
        error = await api.call(
            "post", f"/v1/alerts/{target['alert_id']}/silence", template=template, status=400, json=body
        )
        assert named in error["error"], error
    await api.call(
        "post", f"/v1/alerts/{target['alert_id']}/silence", role="viewer", template=template, status=403,
        json={"duration_s": 60},
    )  # fmt: skip


#: Calls whose answers the allocation summaries give (no filter they do not carry); each is also asked of the
#: allocations themselves, and the two answers must be the same to the byte.
SUMMARY_CALLS = [
    *(("/v1/cost", "/v1/cost", {"group_by": g, "period": PERIOD}) for g in queries.COST_GROUPS),
    ("/v1/cost", "/v1/cost", {"group_by": "tenant", "period": PERIOD, "step": "day", "limit": "3"}),
    ("/v1/cost", "/v1/cost", {"group_by": "tenant", "tenant": ["acme", "wonka"], "step": "day"}),
    ("/v1/cost", "/v1/cost", {"group_by": "resource", "step": "hour", "from": "2026-01-02T00:00:00Z",
                              "to": "2026-01-03T06:30:00Z"}),
    ("/v1/cost", "/v1/cost", {"group_by": "method", "step": "month"}),
    ("/v1/cost", "/v1/cost", {"group_by": "feature", "from": "2026-01-10T00:00:00Z", "limit": "2"}),
    ("/v1/pnl", "/v1/pnl", {"period": PERIOD}),
    ("/v1/pnl", "/v1/pnl", {"period": PERIOD, "tenant": ["acme", "globex"]}),
    ("/v1/coverage", "/v1/coverage", {}),
    ("/v1/coverage", "/v1/coverage", {"period": PERIOD, "limit": "3"}),
    ("/v1/customers/acme", "/v1/customers/{id}", {"period": PERIOD}),
    ("/v1/customers/globex", "/v1/customers/{id}", {}),
    ("/v1/resources/orders-db", "/v1/resources/{id}", {"period": PERIOD}),
    ("/v1/resources/nat-egress", "/v1/resources/{id}", {"limit": "7"}),
]  # fmt: skip


async def _answers(api, calls) -> list[bytes]:
    out = []
    for path, _template, params in calls:
        async with api.http.get(path, params=params, headers={"Authorization": f"Bearer {TOKENS['admin']}"}) as r:
            assert r.status == 200, (path, params, await r.text())
            out.append(await r.read())
    return out


async def test_summaries_answer_exactly_as_the_allocations_do(pool):
    from costmesh.api.routes import CACHE

    async with running_api(pool) as api:
        summarized = await _answers(api, SUMMARY_CALLS)
        assert api.app[CACHE].misses > 0
        hits = api.app[CACHE].hits
        assert await _answers(api, SUMMARY_CALLS) == summarized  # the second time from the cache
        assert api.app[CACHE].hits > hits
        # summaries that are not those of the current run are not read: the same calls now sum the allocations
        await pool.execute("UPDATE allocation_summary_runs SET run_at = run_at - interval '1 second'")
        try:
            misses = api.app[CACHE].misses
            from_allocations = await _answers(api, SUMMARY_CALLS)
            assert api.app[CACHE].misses == misses  # nothing computed from the summaries
        finally:
            await pool.execute("UPDATE allocation_summary_runs SET run_at = run_at + interval '1 second'")
    for call, one, other in zip(SUMMARY_CALLS, summarized, from_allocations, strict=True):
        assert one == other, call


async def test_a_new_allocation_run_is_answered_at_once(postgres):
    """A run that rewrites a period is seen by the next request: stale summaries are passed over until they are
    rebuilt, and what was kept from the previous run is not answered again."""
    from costmesh.common import allocation_summary

    async with seeded_database(postgres) as pool, running_api(pool) as api:
        params = {"group_by": "tenant", "period": PERIOD}
        before = {r["tenant"]: Decimal(r["cost"]) for r in (await api.get("/v1/cost", params))["rows"]}
        pnl_before = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
        async with pool.acquire() as conn, conn.transaction():  # a run giving acme one more dollar of a line
            line = await conn.fetchval("SELECT min(line_id) FROM allocations WHERE tenant = 'acme'")
            await conn.execute(
                "UPDATE allocations SET amount = amount + 1 WHERE ctid = (SELECT min(ctid) FROM allocations "
                "WHERE tenant = 'acme' AND line_id = $1)",
                line,
            )
            await conn.execute("UPDATE allocation_runs SET run_at = now() WHERE billing_period = $1", PERIOD)
        stale = {r["tenant"]: Decimal(r["cost"]) for r in (await api.get("/v1/cost", params))["rows"]}
        assert stale == {**before, "acme": before["acme"] + 1}
        async with pool.acquire() as conn:
            await allocation_summary.refresh(conn, PERIOD)
            assert (await allocation_summary.summarized(conn)).covers(PERIOD)
        rebuilt = {r["tenant"]: Decimal(r["cost"]) for r in (await api.get("/v1/cost", params))["rows"]}
        assert rebuilt == stale
        pnl_after = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
        acme = {c["customer"]: c for c in pnl_after["customers"]}["acme"]
        old = {c["customer"]: c for c in pnl_before["customers"]}["acme"]
        assert Decimal(acme["cost"]) == Decimal(old["cost"]) + 1
        # revenue is imported apart from runs: a new figure is answered at once too
        await pool.execute("UPDATE revenue SET amount = amount + 5 WHERE customer = 'acme' AND period = $1", PERIOD)
        pnl_revenue = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
        acme_now = {c["customer"]: c for c in pnl_revenue["customers"]}["acme"]
        assert Decimal(acme_now["revenue"]) == Decimal(acme["revenue"]) + 5
