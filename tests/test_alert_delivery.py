"""Notifications on their way out: Slack Block Kit messages within Slack's limits, delivered from the outbox to a
local receiver that answers as Slack does (429 + Retry-After, invalid_blocks, 404), at one message per second; the
generic webhook's HMAC signature; and the whole path from a published AI call to Slack and NATS, through a restart
of the attributor that sends nothing twice."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import aiohttp
import asyncpg
import nats
import pytest

from costmesh.attributor import blockkit, service
from costmesh.attributor.delivery import Sender, Target, signature
from costmesh.attributor.notify import Notification, NotifiedAlert
from costmesh.common import natsio
from costmesh.common.config import AlertingConfig, AlertRule, Config, NatsConfig, SlackConfig
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import Alert, CallBatch, Codec, ObservedCall

from .conftest import metric, wait_for
from .slack_like import SlackLike, slack_refusal


def alert(i: int = 0, tenant: str = "acme", state: str = "firing", **kw) -> NotifiedAlert:
    values = dict(
        fingerprint=f"fp{i:014d}", alert_id=f"id{i:022d}", state=state, reason="budget", tenant=tenant,
        feature="chat", agent=f"agent-{i}", rate_micros_per_hour=12_345_678, threshold_micros_per_hour=1_000_000,
        budget_micros_per_hour=1_000_000, baseline_micros_per_hour=0, window_s=300, window_requests=42,
        started_at_us=1_772_445_600_000_000,
    )  # fmt: skip
    values.update(kw)
    return NotifiedAlert(**values)


def notification(
    alerts: list[NotifiedAlert], status: str = "firing", console: str = "https://cm.example"
) -> Notification:
    firing = sum(a.state == "firing" for a in alerts)
    return Notification(
        notification_id="n1", status=status, kind="firing" if status == "firing" else "resolved",
        group_key='[["tenant","acme"]]', group={"tenant": alerts[0].tenant}, alerts=alerts, firing=firing,
        resolved=len(alerts) - firing, top_model="openai gpt-4o", top_agent="agent-0",
        console_url=f"{console}/#/customer/{alerts[0].tenant}" if console else "", at_us=1,
    )  # fmt: skip


def texts(block: dict) -> list[str]:
    out = [block.get("text", {}).get("text", "")] + [f["text"] for f in block.get("fields", [])]
    out += [e.get("text", "") for e in block.get("elements", [])]
    return out


def test_block_kit_message_has_header_fields_link_and_text_fallback():
    msg = blockkit.message(notification([alert()]))
    header, section, context, top, link = msg["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "Runaway AI spend" in header["text"]["text"] and "acme" in header["text"]["text"]
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in section["fields"]}
    assert fields["*Scope*"] == "tenant acme, feature chat, agent agent-0"
    assert fields["*Rate*"] == "$12.34/h over 300 s (42 calls); budget $1.00/h, 12.3×"
    assert fields["*Since*"].startswith("<!date^1772445600^") and "2026-03-02 10:00:00 UTC" in fields["*Since*"]
    assert fields["*State*"] == "FIRING (over budget)"
    assert context["type"] == "context" and "id" + "0" * 22 in context["elements"][0]["text"]
    assert [f["text"] for f in top["fields"]] == ["*Top model*\nopenai gpt-4o", "*Top agent*\nagent-0"]
    assert link["text"]["text"] == "<https://cm.example/#/customer/acme|Open the scope in the costmesh console>"
    assert msg["text"].startswith("[FIRING:1] 🚨 Runaway AI spend: tenant acme")
    assert "$12.34/h" in msg["text"] and slack_refusal(msg) == ""
    resolved = blockkit.message(
        notification([alert(state="resolved", resolved_at_us=1_772_449_200_000_000)], "resolved")
    )
    assert resolved["blocks"][0]["text"]["text"].startswith("✅ Resolved")
    assert "*Resolved*" in " ".join(texts(resolved["blocks"][1]))


def test_block_kit_stays_within_slack_limits_and_escapes_names():
    many = blockkit.message(notification([alert(i) for i in range(40)]))
    assert len(many["blocks"]) <= blockkit.MAX_BLOCKS and slack_refusal(many) == ""
    shown = sum(1 for b in many["blocks"] if b.get("fields", [{}])[0].get("text", "").startswith("*Scope*"))
    assert many["blocks"][-1]["elements"][0]["text"] == f"…and {40 - shown} more alerts (see the console)"
    hostile = "<!channel> & <https://evil.example|click>" + "x" * 5000
    msg = blockkit.message(notification([alert(tenant=hostile, agent="a" * 3000)], console=""))
    assert slack_refusal(msg) == ""
    assert len(msg["blocks"][0]["text"]["text"]) <= blockkit.MAX_HEADER
    assert msg["blocks"][0]["text"]["type"] == "plain_text"  # shown as written: Slack parses no mention there
    for block in msg["blocks"][1:]:
        for text in texts(block):
            assert len(text) <= blockkit.MAX_SECTION_TEXT
            assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in msg["blocks"][1]["fields"][0]["text"]
    assert len(msg["text"]) <= blockkit.MAX_TEXT and "<!channel>" not in msg["text"]


@pytest.fixture
async def conn(migrated):
    return migrated


async def queue(conn, receiver: str, *bodies: dict) -> None:
    for body in bodies:
        await conn.execute(
            "INSERT INTO alert_outbox (receiver, group_key, kind, body) VALUES ($1, 'g', 'firing', $2::jsonb)",
            receiver,
            json.dumps(body),
        )


async def deliver(dsn: str, target: Target, until) -> None:
    """Run a sender (on a connection of its own, as the leader does) until ``until()`` holds (or 30 s pass)."""
    stopping = asyncio.Event()
    own = await asyncpg.connect(dsn)
    async with aiohttp.ClientSession() as session:
        sender = Sender(target, own, session)
        task = asyncio.create_task(sender.run(stopping))
        try:
            await wait_for(until, timeout=30)
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)
            await own.close()


async def outcome(conn) -> list[tuple]:
    return [
        tuple(r) for r in await conn.fetch("SELECT attempts, sent_at IS NOT NULL, failed FROM alert_outbox ORDER BY 1")
    ]


async def test_slack_429_is_retried_after_retry_after_and_messages_keep_one_per_second(conn, fresh_dsn):
    hook = await SlackLike(script=[(429, None, "2")]).start()
    bodies = [blockkit.message(notification([alert(i)])) for i in range(3)]
    await queue(conn, "slack", *bodies)
    try:

        async def all_sent():
            return await conn.fetchval("SELECT count(*) FROM alert_outbox WHERE sent_at IS NOT NULL") == 3

        await deliver(fresh_dsn, Target("slack", hook.url), all_sent)
        assert len(hook.requests) == 4 and [r.body for r in hook.accepted] == bodies  # in order, after the 429
        assert hook.requests[1].at - hook.requests[0].at >= 2.0  # Retry-After honoured
        gaps = [b.at - a.at for a, b in zip(hook.accepted, hook.accepted[1:], strict=False)]
        assert min(gaps) >= 0.99  # one message per second per webhook
        assert await outcome(conn) == [(1, True, None), (1, True, None), (2, True, None)]
    finally:
        await hook.stop()


async def test_slack_refusing_blocks_gets_the_text_and_a_dead_webhook_is_recorded_failed(conn, fresh_dsn):
    hook = await SlackLike(script=[(400, "invalid_blocks", None), (200, None, None), (404, "no_service", None)]).start()
    body = blockkit.message(notification([alert()]))
    await queue(conn, "slack", body, body)
    refused_before = metric("costmesh_input_errors_total", service="attributor", kind="slack_blocks_refused")
    try:

        async def both_done():
            return (
                await conn.fetchval("SELECT count(*) FROM alert_outbox WHERE sent_at IS NOT NULL OR failed IS NOT NULL")
                == 2
            )

        await deliver(fresh_dsn, Target("slack", hook.url), both_done)
        assert hook.requests[1].body == {"text": body["text"]}  # the plain fallback, after invalid_blocks
        assert await outcome(conn) == [(1, False, "HTTP 404: no_service"), (2, True, None)]
        assert (
            metric("costmesh_input_errors_total", service="attributor", kind="slack_blocks_refused")
            == refused_before + 1
        )
    finally:
        await hook.stop()


async def test_generic_webhook_bodies_are_signed_with_hmac(conn, fresh_dsn):
    hook = await SlackLike(path="/hooks/costmesh", script=[(503, "busy", None)]).start()
    body = {"notification_id": "n1", "status": "firing", "alerts": []}
    await queue(conn, "webhook", body)
    key = b"webhook-secret"
    try:

        async def sent():
            return await conn.fetchval("SELECT count(*) FROM alert_outbox WHERE sent_at IS NOT NULL") == 1

        await deliver(fresh_dsn, Target("webhook", hook.url, key), sent)
        got = hook.accepted[0]
        assert json.loads(got.raw) == body and got.headers["X-Costmesh-Delivery"] == "1"
        stamp, mac = (p.split("=", 1)[1] for p in got.headers["X-Costmesh-Signature"].split(","))
        assert abs(int(stamp) - time.time()) < 60
        assert mac == hmac.new(key, stamp.encode() + b"." + got.raw, hashlib.sha256).hexdigest()
        assert got.headers["X-Costmesh-Signature"] == signature(key, int(stamp), got.raw)
        assert len(hook.requests) == 2  # the 503 was retried
    finally:
        await hook.stop()


async def test_runaway_alert_reaches_slack_and_nats_once_across_a_restart(nats_server, fresh_dsn, monkeypatch):
    hook = await SlackLike(script=[(429, None, "1")]).start()
    monkeypatch.setenv("COSTMESH_TEST_SLACK_URL", hook.url)
    cfg = Config(
        node="test",
        nats=NatsConfig(url=nats_server.url),
        slack=SlackConfig(webhook_url_env="COSTMESH_TEST_SLACK_URL"),
        alerting=AlertingConfig(console_url="http://127.0.0.1:8080"),
        alert_rules=[AlertRule(budget_micros_per_hour=1_000_000, window_s=300)],
    )
    nc = await nats.connect(nats_server.url)
    seen: list[Alert] = []
    codec = Codec()

    async def on_alert(msg) -> None:
        seen.append(codec.decode(msg.data))

    await nc.subscribe(natsio.ALERTS_SUBJECT, cb=on_alert)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)

    async def attributor() -> tuple[ServiceContext, asyncio.Task]:
        ctx = ServiceContext("attributor", cfg, nats_server.url, fresh_dsn)
        return ctx, asyncio.create_task(service.main(ctx))

    ctx, task = await attributor()
    try:
        now_us = int(time.time()) * 1_000_000
        call = ObservedCall(
            window_start_us=now_us, window_end_us=now_us + 1_000_000, node="n", src_workload="agent",
            dst="api.openai.com", protocol="tls", tenant="acme", tenant_method="header", agent="researcher",
            requests=1, provider="openai", model="gpt-4o", tokens_in=10_000, tokens_out=200_000,
        )  # fmt: skip  # $2.025 in one call
        batch = CallBatch(batch_id="ai-1", node="n", seq=1, records=[call])
        await natsio.publish_batch(js, "costmesh.events.n", batch.batch_id, codec.encode(batch))

        async def delivered():
            return len(hook.accepted) == 1 and seen

        await wait_for(delivered, timeout=60)
        (event,) = seen
        assert (event.state, event.reason, event.tenant, event.agent) == ("firing", "budget", "acme", "researcher")
        message = hook.accepted[0].body
        assert message["blocks"][0]["type"] == "header" and "acme" in message["blocks"][0]["text"]["text"]
        conn = await asyncpg.connect(fresh_dsn)
        stored = await conn.fetchrow("SELECT rate_micros_per_hour, alert_id FROM alert_state")
        await conn.close()
        rate_field = message["blocks"][1]["fields"][1]["text"]
        assert f"{blockkit.dollars(stored['rate_micros_per_hour'])}/h" in rate_field  # Slack says what the store says
        assert stored["alert_id"] in message["blocks"][2]["elements"][0]["text"]
        assert "top model" in message["text"] and "openai gpt-4o" in message["text"]
        assert "http://127.0.0.1:8080/#/customer/acme" in json.dumps(message)
        await asyncio.sleep(0.6)  # several more passes: still one alert
        assert len(seen) == 1 and len(hook.accepted) == 1

        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
        ctx, task = await attributor()  # a restart: the alert still fires, and nothing is sent twice

        async def leading():
            return ctx.health.get("alert_leader")

        await wait_for(leading, timeout=30)
        await asyncio.sleep(1.5)
        assert len(seen) == 1 and len(hook.accepted) == 1 and len(hook.requests) == 2
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
        await nc.close()
        await hook.stop()
