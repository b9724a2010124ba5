"""The web console in a real headless Chromium (Debian's, driven by Playwright; no downloaded browser) against the API
on a seeded store: the token prompt works with auth on, every page loads without a console error, and the numbers on
each page equal the API's (the exact amount in ``data-amount``, and its text rounded to cents as finance rounds).

``COSTMESH_UPDATE_SCREENSHOTS=1`` also writes each page's screenshot to ``docs/console/`` (shown in the README).
"""

from __future__ import annotations

import os
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from .api_harness import TOKENS, running_api, seeded_database
from .conftest import REPO
from .store_seed import PERIOD

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "docs" / "console"


def money(text: str, currency: str) -> str:
    """The console's formatting (format.js), independently: half away from zero to cents, grouped, sign in front."""
    value = Decimal(text).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    body = f"{abs(value):,.2f}"
    body = f"${body}" if currency == "USD" else f"{body} {currency}"
    return f"−{body}" if value < 0 else body


@pytest.fixture(scope="module")
async def pool(postgres):
    async with seeded_database(postgres) as pool:
        yield pool


@pytest.fixture
async def browser(tmp_path):
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: `make test` installs it (scripts/debian-packages.d)"
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1440, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


class Watched:
    """A page whose console errors and uncaught exceptions are collected (the tests require none)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def open(self, base: str, route: str) -> None:
        await self.page.goto(f"{base}/#/{route}")
        await self.ready()

    async def ready(self) -> None:
        await self.page.wait_for_selector("main[data-ready=true]", timeout=15000)
        text = await self.page.inner_text("main")
        assert "notice bad" not in await self.page.inner_html("main"), text[:500]

    async def amounts(self, selector: str) -> list[tuple[str, str, str]]:
        """(exact amount, currency, shown text) of every amount under ``selector``."""
        return await self.page.eval_on_selector_all(
            f"{selector} .amount",
            "els => els.map(e => [e.dataset.amount, e.dataset.currency, e.textContent.trim()])",
        )

    async def amount(self, selector: str) -> str:
        (value, currency, shown), *_ = await self.amounts(selector)
        assert shown == money(value, currency)
        return value

    async def every_amount_is_formatted(self) -> int:
        found = await self.amounts("main")
        for value, currency, shown in found:
            assert shown == money(value, currency), (value, shown)
        return len(found)

    async def shot(self, name: str, tmp: Path) -> None:
        await self.page.screenshot(path=str(tmp / f"{name}.png"), full_page=True)
        if os.environ.get("COSTMESH_UPDATE_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def sign_in(w: Watched, base: str, token: str) -> None:
    await w.page.goto(base + "/")
    dialog = w.page.locator("#token-dialog")
    await dialog.wait_for(state="visible")
    await w.page.fill("#token-input", "not-the-right-token-at-all")
    await w.page.click("#token-submit")
    await w.page.wait_for_selector("#token-error:not([hidden])")
    assert "not accepted" in await w.page.inner_text("#token-error")
    await w.page.fill("#token-input", token)
    await w.page.click("#token-submit")
    await w.ready()
    assert not await dialog.is_visible()


async def test_token_prompt_then_every_page_shows_the_apis_numbers(pool, browser, tmp_path):
    async with running_api(pool) as api:
        base = api.base
        w = Watched(await browser.new_page())
        await sign_in(w, base, TOKENS["finance"])
        assert "Signed in as finance" in await w.page.inner_text("#who")

        # customers, ranked by margin with the negative ones first
        pnl = await api.get("/v1/pnl", {"period": PERIOD}, role="finance")
        rows = await w.page.eval_on_selector_all("#customers tbody tr", "rs => rs.map(r => r.dataset.customer)")
        assert rows == [c["customer"] for c in pnl["customers"]]
        for c in pnl["customers"]:
            row = f'#customers tr[data-customer="{c["customer"]}"]'
            for col in ("revenue", "cost", "margin"):
                assert await w.amount(f'{row} td[data-col="{col}"]') == c[col]
            assert await w.page.inner_text(f'{row} td[data-col="margin_pct"]') == f"{c['margin_pct']}%"
        assert await w.amount('[data-kpi="billed"]') == pnl["billed"]
        assert await w.amount('[data-kpi="unallocated"]') == pnl["unallocated"]
        losing = sum(Decimal(c["margin"]) < 0 for c in pnl["customers"])
        assert await w.page.inner_text('[data-kpi="losing"] [data-count]') == str(losing) and losing > 0
        assert await w.every_amount_is_formatted() > 20
        await w.shot("customers", tmp_path)

        # one customer, reached by clicking its row
        worst = pnl["customers"][0]["customer"]
        await w.page.click(f'#customers tr[data-customer="{worst}"] a')
        await w.ready()
        assert w.page.url.endswith(f"#/customer/{worst}")
        await w.open(base, "customer/acme")
        detail = await api.get("/v1/customers/acme", {"period": PERIOD, "step": "day"}, template="/v1/customers/{id}")
        assert await w.amount('[data-kpi="cost"]') == detail["totals"][0]["cost"]
        for facet, box in (("by_resource", "#by-resource"), ("by_feature", "#by-feature"), ("by_agent", "#by-agent")):
            for s in detail[facet][:8]:
                assert await w.amount(f'{box} .bar[data-key="{s["key"]}"]') == s["amount"], (facet, s)
        drivers = [v for v, _c, _t in await w.amounts("#drivers tbody")]
        assert drivers == [d["amount"] for d in detail["drivers"]]
        bars = await w.page.locator("svg.chart rect title").count()
        assert bars > 0
        await w.every_amount_is_formatted()
        await w.shot("customer", tmp_path)

        # the dependency graph, drawn as a graph
        await w.open(base, "graph")
        graph = await api.get("/v1/graph", {"window_s": "3600"})
        nodes = await w.page.eval_on_selector_all("svg.graph g.node", "ns => ns.map(n => n.dataset.name)")
        assert sorted(nodes) == sorted(n["name"] for n in graph["nodes"])
        edges = await w.page.locator("svg.graph path.edge").count()
        assert edges == len(graph["edges"])
        calls = await w.page.eval_on_selector_all(
            "#edges tbody tr", "rs => rs.map(r => [r.dataset.edge, r.children[3].textContent])"
        )
        assert {e: int(c.replace(",", "")) for e, c in calls} == {
            f"{e['src']}→{e['dst']}": e["calls"] for e in graph["edges"]
        }
        await w.shot("graph", tmp_path)

        # coverage per period, with the unallocated lines
        await w.open(base, "coverage")
        cov = await api.get("/v1/coverage", {"limit": "15"})
        for p in cov["periods"]:
            card = f'[data-period="{p["period"]}"][data-currency="{p["currency"]}"]'
            for part in ("billed", "attributed", "propagated", "modeled", "unallocated"):
                assert await w.amount(f'{card} [data-kpi="{part}"]') == p[part]
        shown = await w.page.eval_on_selector_all("#unallocated tbody tr", "rs => rs.map(r => r.dataset.line)")
        assert shown == [line["line_id"] for line in cov["unallocated_lines"]]
        await w.every_amount_is_formatted()
        await w.shot("coverage", tmp_path)

        # AI cost by model and agent
        await w.open(base, "ai")
        models = await api.get("/v1/ai-cost", {"group_by": "model"})
        for r in models["rows"]:
            assert await w.amount(f'#models tr[data-model="{r["model"]}"]') == r["cost"]
        agents = await api.get("/v1/ai-cost", {"group_by": "agent"})
        for r in agents["rows"]:
            assert await w.amount(f'#ai-agent .bar[data-key="{r["agent"]}"]') == r["cost"]
        total = Decimal(sum(r["cost_micros"] for r in models["rows"])) / 1_000_000
        assert Decimal(await w.amount('[data-kpi="ai-total"]')) == total
        await w.shot("ai-cost", tmp_path)

        # alerts
        await w.open(base, "alerts")
        alerts = await api.get("/v1/alerts")
        ids = await w.page.eval_on_selector_all("#alerts tbody tr", "rs => rs.map(r => r.dataset.alert)")
        assert ids == [a["alert_id"] for a in alerts["alerts"]]
        assert await w.page.inner_text('[data-kpi="firing"] .value') == str(alerts["firing"])
        assert await w.page.inner_text("#alert-count") == str(alerts["firing"])
        await w.shot("alerts", tmp_path)

        # a resource: who consumes it
        await w.open(base, "resource/orders-db")
        res = await api.get("/v1/resources/orders-db", {"period": PERIOD}, template="/v1/resources/{id}")
        assert await w.amount('[data-kpi="cost"]') == res["totals"][0]["cost"]
        await w.every_amount_is_formatted()
        assert w.errors == [], w.errors


async def test_a_viewer_sees_cost_without_margin_and_no_refusal(pool, browser):
    async with running_api(pool) as api:
        base = api.base
        w = Watched(await browser.new_page())
        refused: list[str] = []
        w.page.on("response", lambda r: refused.append(r.url) if r.status in (401, 403) else None)
        await sign_in(w, base, TOKENS["viewer"])
        assert "finance" in await w.page.inner_text(".notice")
        cost = await api.get("/v1/cost", {"group_by": "tenant", "period": PERIOD}, role="viewer")
        for r in cost["rows"]:
            if r["tenant"]:
                assert await w.amount(f'#customers tr[data-customer="{r["tenant"]}"] td[data-col="cost"]') == r["cost"]
        await w.open(base, "customer/globex")
        assert await w.page.locator('[data-kpi="margin"]').count() == 0
        assert refused == [] and w.errors == [], (refused, w.errors)


async def test_open_api_on_loopback_needs_no_token(postgres, browser):
    async with seeded_database(postgres) as pool, running_api(pool, tokens=False) as api:
        base = api.base
        w = Watched(await browser.new_page())
        await w.open(base, "customers")
        assert not await w.page.locator("#token-dialog").is_visible()
        assert "loopback" in await w.page.inner_text("#who")
        assert await w.every_amount_is_formatted() > 0
        assert w.errors == []
