"""Runaway-AI-cost alerting against a real PostgreSQL: spend buckets written by the apply step, sliding windows,
budget and spike alerts (with the minimum-volume guard), cooldown, grouping, repeat, resolve, silences, and restarts
of the leader that neither repeat nor lose an alert. The clock is explicit (``Leader.step(conn, now)``)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from costmesh.attributor import apply, spend
from costmesh.attributor.detector import ewma
from costmesh.attributor.leader import Leader
from costmesh.attributor.windows import SpendWindows
from costmesh.common.alerting import SilenceError, UnknownAlert, create_silence, fingerprint
from costmesh.common.config import AlertingConfig, AlertRule, Config
from costmesh.common.prices import ModelPrice, PriceTable
from costmesh.common.schemas import CallBatch, ObservedCall

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
#: One micro-dollar per input token: a call's tokens_in is its cost.
PRICES = PriceTable({("test", "small"): ModelPrice(1_000_000, 0), ("test", "large"): ModelPrice(1_000_000, 0)})
_ids = itertools.count()


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def call(at: datetime, tenant: str, micros: int, requests: int = 1, feature: str = "", agent: str = "",
         model: str = "small") -> ObservedCall:  # fmt: skip
    us = int(at.timestamp() * 1_000_000)
    return ObservedCall(
        window_start_us=us, window_end_us=us + 1_000_000, node="n", src_workload="app", dst="api.test",
        protocol="http", tenant=tenant, tenant_method="header", feature=feature, agent=agent, requests=requests,
        provider="test", model=model, tokens_in=micros,
    )  # fmt: skip


async def applied(conn: asyncpg.Connection, *calls: ObservedCall) -> None:
    """The calls through the real apply step, with the detector's hook (as the service wires it)."""
    batch = CallBatch(batch_id=f"b{next(_ids)}", node="n", seq=1, records=list(calls))
    await apply.apply_batches(conn, [batch], PRICES, spend=spend.record)


@pytest.fixture
async def conn(migrated):
    await apply.prepare(migrated)
    return migrated


def config(*rules: AlertRule, **alerting) -> Config:
    cfg = Config(alert_rules=list(rules), alerting=AlertingConfig(**alerting))
    cfg.attributor.detector_windows_s = [60, 300]
    return cfg


async def leader(conn, cfg: Config, now: datetime, baselines: bool = False) -> Leader:
    lead = Leader(cfg, ["slack", "webhook"])
    await lead.start(conn, now)
    if baselines:
        await lead.detector.refresh_baselines(conn, now)
    else:
        lead.detector.baselines = {}
    return lead


async def outbox(conn, receiver: str = "webhook") -> list[dict]:
    rows = await conn.fetch("SELECT body FROM alert_outbox WHERE receiver = $1 ORDER BY outbox_id", receiver)
    return [json.loads(r["body"]) for r in rows]


def test_ewma_is_exact_integer_arithmetic():
    assert ewma([], 0.3) == 0
    assert ewma([1000], 0.3) == 1000
    assert ewma([1000, 2000], 0.5) == 1500
    assert ewma([600_000, 600_000, 600_000], 0.3) == 600_000


def test_window_rates_sum_the_buckets_inside_the_window():
    w = SpendWindows(300)
    scope = ("acme", "", "")
    w.set(scope, 1000, 1000, 2)
    w.set(scope, 1005, 500, 1)
    w.set(scope, 940, 7, 1)  # starts before the 60-s window at 1010: only the 300-s window counts it
    r60, r300 = w.rates(scope, 1010 * 1_000_000, [60, 300])
    assert (r60.span_us, r60.micros_per_hour, r60.requests) == (60_000_000, 1500 * 60, 3)
    assert (r300.micros_per_hour, r300.requests) == (1507 * 12, 4)
    w.set(scope, 1005, 500, 1)  # a bucket read again: set, not added
    assert w.rates(scope, 1010 * 1_000_000, [60])[0].micros_per_hour == 1500 * 60
    (r,) = w.rates(scope, 1012_500_000, [60])  # window starts at 952.5 s: buckets from 955 s, 57.5 s of them
    assert r.span_us == 57_500_000 and r.micros_per_hour == 1500 * 3600 * 1_000_000 // 57_500_000
    (late,) = w.rates(scope, 1400 * 1_000_000, [300])  # everything slid out
    assert late.micros_per_hour == 0 and late.requests == 0
    assert w.prune(1400 * 1_000_000, set()) == 1 and not w.rings


async def test_budget_fires_once_resolves_and_cools_down(conn):
    cfg = config(AlertRule(tenant="acme", budget_micros_per_hour=1_000_000, window_s=300, cooldown_s=900))
    await applied(conn, *(call(s(5 + 10 * i), "acme", 20_000) for i in range(5)), call(s(6), "globex", 99_000))
    lead = await leader(conn, cfg, s(0))
    (fired,), sent = await lead.step(conn, s(50))
    assert (fired.state, fired.reason, fired.tenant, fired.window_s) == ("firing", "budget", "acme", 300)
    assert fired.rate_micros_per_hour == 100_000 * 12 and fired.budget_micros_per_hour == 1_000_000
    assert fired.fingerprint == fingerprint(lead.detector.rules[0][0], "acme", "", "", "budget")
    assert await conn.fetchval("SELECT fingerprint FROM alert_state") == fired.fingerprint  # PostgreSQL's digest
    assert sent == 0  # group_wait: not yet
    assert await lead.step(conn, s(51)) == ([], 1)  # de-duplicated; the group's first notification is due
    (note,) = await outbox(conn)
    assert (note["status"], note["kind"], note["firing"]) == ("firing", "firing", 1)
    rate_at_51 = 100_000 * 3600 // 296  # the 300-s window at 51 s holds the buckets from -245 s: 296 s
    assert note["alerts"][0]["rate_micros_per_hour"] == rate_at_51
    row = await conn.fetchrow("SELECT rate_micros_per_hour, notified_state FROM alert_state")
    assert tuple(row) == (rate_at_51, "firing")  # what the receivers were told is what the store says

    (resolved,), _ = await lead.step(conn, s(400))
    assert (resolved.state, resolved.alert_id) == ("resolved", fired.alert_id)
    assert await lead.step(conn, s(401)) == ([], 1)
    assert [n["status"] for n in await outbox(conn)] == ["firing", "resolved"]
    assert await conn.fetchval("SELECT count(*) FROM alert_groups") == 0  # all resolved and told

    await applied(conn, call(s(500), "acme", 200_000))
    assert (await lead.step(conn, s(505)))[0] == []  # still cooling down (900 s after 400)
    await applied(conn, call(s(1400), "acme", 200_000))
    (again,), _ = await lead.step(conn, s(1402))
    assert again.state == "firing" and again.alert_id != fired.alert_id and again.fingerprint == fired.fingerprint


async def test_spike_needs_a_baseline_and_the_minimum_volume(conn):
    cfg = config(AlertRule(spike_factor=3.0, window_s=300, min_requests=20))
    history = [call(s(-3 * 3600 + 60 * m), "globex", 10_000, agent="bot") for m in range(180)]  # 600,000 µ$/h
    history += [call(s(-1800 + 60 * m), "fresh", 1_000) for m in range(30)]  # started half an hour ago
    await applied(conn, *history)
    lead = await leader(conn, cfg, s(0), baselines=True)
    assert lead.detector.baselines[("globex", "", "bot")] == 600_000
    assert lead.detector.baselines[("fresh", "", "")] == 0  # one partial hour is no baseline: no spike over it
    await applied(conn, *(call(s(1 + i % 5), "fresh", 5_000) for i in range(25)))
    # Five expensive calls: 3,000,000 µ$/h over 60 s is 5x the baseline, but five calls are no spike yet.
    await applied(conn, *(call(s(1 + i), "globex", 10_000, agent="bot") for i in range(5)))
    await applied(conn, *(call(s(1 + i), "newco", 1_000_000) for i in range(30)))  # no history: nothing to spike
    assert (await lead.step(conn, s(20)))[0] == []
    await applied(conn, *(call(s(21 + i % 5), "globex", 1_000, agent="bot") for i in range(15)))
    (spike,), _ = await lead.step(conn, s(40))
    assert (spike.reason, spike.tenant, spike.agent, spike.window_s) == ("spike", "globex", "bot", 60)
    assert spike.baseline_micros_per_hour == 600_000 and spike.rate_micros_per_hour == 65_000 * 60


async def test_alerts_of_one_scope_share_a_notification_and_groups_wait_and_repeat(conn):
    cheap = AlertRule(tenant="acme", budget_micros_per_hour=100_000, window_s=60)
    dear = AlertRule(tenant="acme", budget_micros_per_hour=500_000, window_s=60)
    cfg = config(cheap, dear, group_interval_s=60, repeat_interval_s=600)
    await applied(conn, call(s(1), "acme", 20_000, feature="chat", agent="bot"))  # 1,200,000 µ$/h over 60 s
    lead = await leader(conn, cfg, s(0))
    events, _ = await lead.step(conn, s(2))
    assert len(events) == 2  # one alert per rule, both of the same scope
    await lead.step(conn, s(3))
    (note,) = await outbox(conn)
    assert note["firing"] == 2 and {a["budget_micros_per_hour"] for a in note["alerts"]} == {100_000, 500_000}
    assert note["group"] == {"agent": "bot", "feature": "chat", "tenant": "acme"}
    assert note["top_model"] == "test small" and note["top_agent"] == "bot"
    for t in range(10, 600, 50):  # spend held up, nothing changes: no notification until the repeat interval
        await applied(conn, call(s(t), "acme", 20_000, feature="chat", agent="bot"))
        assert (await lead.step(conn, s(t + 1)))[1] == 0
    await applied(conn, call(s(602), "acme", 20_000, feature="chat", agent="bot"))
    assert (await lead.step(conn, s(604)))[1] == 1
    assert [n["kind"] for n in await outbox(conn)] == ["firing", "repeat"]


async def test_grouping_by_tenant_waits_for_the_group_interval(conn):
    cfg = config(AlertRule(tenant="acme", budget_micros_per_hour=100_000, window_s=60), group_by=["tenant"])
    await applied(conn, call(s(1), "acme", 20_000, agent="a1"), call(s(1), "acme", 60_000, agent="a2", model="large"))
    lead = await leader(conn, cfg, s(0))
    assert len((await lead.step(conn, s(2)))[0]) == 2
    assert (await lead.step(conn, s(3)))[1] == 1
    (first,) = await outbox(conn)
    assert first["group"] == {"tenant": "acme"} and first["firing"] == 2
    assert (first["top_agent"], first["top_model"]) == ("a2", "test large")
    assert [a["agent"] for a in first["alerts"]] == ["a2", "a1"]  # dearest first
    await applied(conn, call(s(10), "acme", 20_000, agent="a3"))
    assert len((await lead.step(conn, s(11)))[0]) == 1
    assert (await lead.step(conn, s(40)))[1] == 0  # changed, but notified less than group_interval ago
    assert (await lead.step(conn, s(63)))[1] == 1
    second = (await outbox(conn))[1]
    assert second["kind"] == "firing" and second["firing"] == 3


async def test_a_silenced_alert_is_not_notified_until_its_silence_ends(conn):
    cfg = config(AlertRule(tenant="acme", budget_micros_per_hour=100_000, window_s=300))
    await applied(conn, call(s(1), "acme", 20_000))
    lead = await leader(conn, cfg, s(0))
    (fired,), _ = await lead.step(conn, s(2))
    with pytest.raises(UnknownAlert):
        await create_silence(conn, "no-such-alert", 3600, s(2))
    with pytest.raises(SilenceError, match="duration_s"):
        await create_silence(conn, fired.alert_id, 5, s(2))
    silence = await create_silence(conn, fired.alert_id, 60, s(2.2), created_by="admin", comment="known load test")
    assert silence.fingerprint == fired.fingerprint and silence.ends_at == s(62.2)
    for t in (3, 10, 30, 62):
        assert await lead.step(conn, s(t)) == ([], 0)
    assert await outbox(conn) == []
    assert await lead.step(conn, s(63)) == ([], 0)  # the silence ended: the group changed, group_wait runs
    assert await lead.step(conn, s(64)) == ([], 1)
    (note,) = await outbox(conn)
    assert note["alerts"][0]["alert_id"] == fired.alert_id


async def test_a_restarted_leader_neither_repeats_nor_loses_alerts(conn):
    cfg = config(AlertRule(budget_micros_per_hour=100_000, window_s=300))
    await applied(conn, call(s(1), "acme", 20_000))
    first = await leader(conn, cfg, s(0))
    assert len((await first.step(conn, s(2)))[0]) == 1
    assert (await first.step(conn, s(3)))[1] == 1
    # The leader dies here, its notification decided but not delivered; a new one starts from the store.
    second = await leader(conn, cfg, s(4))
    assert await second.step(conn, s(5)) == ([], 0)
    assert (
        len(await outbox(conn)) == 1
        and await conn.fetchval("SELECT count(*) FROM alert_outbox WHERE sent_at IS NULL") == 2
    )
    # Spend that crosses while no leader runs is found by the next one (its windows are rebuilt from buckets).
    await applied(conn, call(s(6), "globex", 30_000))
    third = await leader(conn, cfg, s(7))
    (late,), _ = await third.step(conn, s(8))
    assert late.tenant == "globex"
    assert (await third.step(conn, s(9)))[1] == 1
    assert [n["alerts"][0]["tenant"] for n in await outbox(conn)] == ["acme", "globex"]


async def test_spend_marks_are_taken_once_and_buckets_expire(conn):
    await applied(conn, call(s(1), "acme", 5), call(s(2), "acme", 7), call(s(7), "acme", 1, requests=3))
    first = await spend.take_changes(conn)
    assert sorted((b.at_s - int(T0.timestamp()), b.cost_micros, b.requests) for b in first) == [(0, 12, 2), (5, 1, 3)]
    assert await spend.take_changes(conn) == []
    await applied(conn, call(s(3), "acme", 1))  # the same bucket again: its new total, once
    (b,) = await spend.take_changes(conn)
    assert (b.cost_micros, b.requests) == (13, 3)
    assert await spend.expire(conn, int(T0.timestamp()) + 5) == 1
    assert [x.at_s for x in await spend.load(conn, 0)] == [int(T0.timestamp()) + 5]
