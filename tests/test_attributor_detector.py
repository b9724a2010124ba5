"""Runaway-AI-cost detection: budget and EWMA-baseline spikes over sliding windows, de-duplication, cooldown, resolved
events; delivery on ``costmesh.alerts`` and to a Slack webhook that rate-limits like Slack (429 + Retry-After)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import nats
from aiohttp import web

from costmesh.attributor import detector, service
from costmesh.attributor.slack import SlackNotifier
from costmesh.common import db, natsio
from costmesh.common.config import AlertRule, Config, NatsConfig, SlackConfig
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Alert, CallBatch, Codec, ObservedCall

from .conftest import wait_for

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


async def _db(dsn: str) -> asyncpg.Connection:
    pool = await db.create_pool(dsn)
    await db.migrate(pool)
    await pool.close()
    return await asyncpg.connect(dsn)


async def _cost(conn, minute: datetime, micros: int, tenant: str, feature: str = "", agent: str = "") -> None:
    await conn.execute(
        "INSERT INTO ai_usage_minute (minute, tenant, tenant_method, feature, agent, src_workload, provider, model, "
        "requests, cost_micros) VALUES ($1, $2, 'header', $3, $4, 'app', 'openai', 'gpt-4o', 1, $5)",
        minute,
        tenant,
        feature,
        agent,
        micros,
    )


def test_ewma_is_exact_integer_arithmetic():
    assert detector.ewma([], 0.3) == 0
    assert detector.ewma([1000], 0.3) == 1000
    assert detector.ewma([1000, 2000], 0.5) == 1500
    assert detector.ewma([600_000, 600_000, 600_000], 0.3) == 600_000


async def test_budget_dedup_resolve_and_cooldown(fresh_dsn):
    conn = await _db(fresh_dsn)
    cfg = Config(alert_rules=[AlertRule(tenant="acme", budget_micros_per_hour=1_000_000, window_s=300, cooldown_s=900)])
    try:
        for m in range(5, 10):
            await _cost(conn, T0 + timedelta(minutes=m), 200_000, "acme")  # $1 in 5 minutes: $12/h
        await _cost(conn, T0 + timedelta(minutes=9), 1_000, "globex")  # not in the rule's scope
        now = T0 + timedelta(minutes=10)
        (fired,) = await detector.run_pass(conn, cfg, now)
        assert (fired.state, fired.reason, fired.tenant, fired.window_s) == ("firing", "budget", "acme", 300)
        assert fired.rate_micros_per_hour == 12_000_000 and fired.budget_micros_per_hour == 1_000_000
        assert await detector.run_pass(conn, cfg, now + timedelta(seconds=15)) == []  # de-duplicated

        (resolved,) = await detector.run_pass(conn, cfg, T0 + timedelta(minutes=30))
        assert (resolved.state, resolved.alert_id) == ("resolved", fired.alert_id)
        assert await detector.run_pass(conn, cfg, T0 + timedelta(minutes=31)) == []

        await _cost(conn, T0 + timedelta(minutes=35), 1_000_000, "acme")
        assert await detector.run_pass(conn, cfg, T0 + timedelta(minutes=36)) == []  # still cooling down
        await _cost(conn, T0 + timedelta(minutes=46), 1_000_000, "acme")
        (again,) = await detector.run_pass(conn, cfg, T0 + timedelta(minutes=47))
        assert again.state == "firing" and again.alert_id != fired.alert_id
        assert again.window_s == 300  # the longest window over budget: 60 s and 300 s both are
    finally:
        await conn.close()


async def test_spike_over_ewma_baseline_per_feature_and_agent(fresh_dsn):
    conn = await _db(fresh_dsn)
    cfg = Config(alert_rules=[AlertRule(spike_factor=3.0, window_s=300)])
    try:
        for m in range(-180, 0):  # three hours at 10,000 µ$/minute = 600,000 µ$/h
            await _cost(conn, T0 + timedelta(minutes=m), 10_000, "globex", "chat", "bot")
        for m in range(0, 5):
            await _cost(conn, T0 + timedelta(minutes=m), 12_000, "globex", "chat", "bot")
        assert await detector.run_pass(conn, cfg, T0 + timedelta(minutes=5)) == []  # 720,000/h < 3 × 600,000/h
        for m in range(5, 10):
            await _cost(conn, T0 + timedelta(minutes=m), 50_000, "globex", "chat", "bot")
        (spike,) = await detector.run_pass(conn, cfg, T0 + timedelta(minutes=10))
        assert (spike.reason, spike.tenant, spike.feature, spike.agent) == ("spike", "globex", "chat", "bot")
        assert spike.baseline_micros_per_hour == 600_000 and spike.rate_micros_per_hour == 3_000_000
    finally:
        await conn.close()


class SlackLike:
    """A local webhook that answers as Slack does: 429 + Retry-After first, then 200 ``ok``."""

    def __init__(self, limited: int = 1, status: int = 429) -> None:
        self.limited = limited
        self.status = status
        self.requests: list[dict] = []
        self.accepted: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if len(self.requests) <= self.limited:
            if self.status == 429:
                return web.Response(status=429, text="rate_limited", headers={"Retry-After": "1"})
            return web.Response(status=self.status, text="invalid_token")
        self.accepted.append(body)
        return web.Response(text="ok")

    async def start(self) -> SlackLike:
        app = web.Application()
        app.router.add_post("/services/T000/B000/XXXX", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/services/T000/B000/XXXX"
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def _alert() -> Alert:
    return Alert(
        alert_id="a1",
        state="firing",
        reason="budget",
        tenant="acme",
        rate_micros_per_hour=12_345_678,
        budget_micros_per_hour=1_000_000,
        window_s=300,
        started_at_us=1,
        at_us=1,
        message="runaway",
    )


async def test_slack_retries_after_429_and_drops_a_rejected_webhook():
    hook = await SlackLike(limited=1).start()
    notifier = SlackNotifier(hook.url)
    await notifier.start()
    try:
        started = time.monotonic()
        notifier.send(_alert())
        await asyncio.wait_for(notifier.flush(), 30)
        assert time.monotonic() - started >= 1.0  # Retry-After was honoured
        assert len(hook.requests) == 2 and len(hook.accepted) == 1
        assert "$12.34/h" in hook.accepted[0]["text"] and "acme" in hook.accepted[0]["text"]
        assert notifier.delivered == 1
    finally:
        await notifier.close()
        await hook.stop()
    gone = await SlackLike(limited=5, status=404).start()
    notifier = SlackNotifier(gone.url)
    await notifier.start()
    try:
        notifier.send(_alert())
        await asyncio.wait_for(notifier.flush(), 30)
        assert len(gone.requests) == 1 and notifier.dropped == 1  # a 404 is not retried
    finally:
        await notifier.close()
        await gone.stop()


async def test_runaway_alert_reaches_nats_and_slack(nats_server, fresh_dsn, monkeypatch):
    hook = await SlackLike(limited=1).start()
    monkeypatch.setenv("COSTMESH_TEST_SLACK_URL", hook.url)
    cfg = Config(
        node="test",
        nats=NatsConfig(url=nats_server.url),
        slack=SlackConfig(webhook_url_env="COSTMESH_TEST_SLACK_URL"),
        alert_rules=[AlertRule(budget_micros_per_hour=1_000_000, window_s=300)],
    )
    cfg.attributor.detector_interval_s = 0.2
    nc = await nats.connect(nats_server.url)
    seen: list[Alert] = []
    codec = Codec()

    async def on_alert(msg) -> None:
        seen.append(codec.decode(msg.data))

    await nc.subscribe(natsio.ALERTS_SUBJECT, cb=on_alert)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    ctx = ServiceContext("attributor", cfg, nats_server.url, fresh_dsn)
    task = asyncio.create_task(service.main(ctx))
    try:
        now_us = int(time.time()) * 1_000_000
        call = ObservedCall(
            window_start_us=now_us,
            window_end_us=now_us + 1_000_000,
            node="n",
            src_workload="agent",
            dst="api.openai.com",
            protocol="tls",
            tenant="acme",
            tenant_method="header",
            agent="researcher",
            requests=1,
            provider="openai",
            model="gpt-4o",
            tokens_in=10_000,
            tokens_out=200_000,
        )  # $2.025 in one call
        batch = CallBatch(batch_id="ai-1", node="n", seq=1, records=[call])
        await natsio.publish_batch(js, "costmesh.events.n", batch.batch_id, codec.encode(batch))

        async def delivered():
            return len(hook.accepted) == 1 and seen

        await wait_for(delivered, timeout=60)
        (alert,) = seen
        assert (alert.state, alert.reason, alert.tenant, alert.agent) == ("firing", "budget", "acme", "researcher")
        assert alert.rate_micros_per_hour > 1_000_000
        assert "acme" in hook.accepted[0]["text"] and len(hook.requests) == 2
        await asyncio.sleep(0.6)  # several more passes: still one alert (de-duplicated)
        assert len(seen) == 1
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
        await nc.close()
        await hook.stop()
