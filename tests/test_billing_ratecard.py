"""Rate cards and token prices: cost lines before any invoice, allocated like billed lines."""

from __future__ import annotations

from decimal import Decimal

from costmesh.billing.allocate import Allocator
from costmesh.billing.model import Usage, Window
from costmesh.billing.ratecard import price_from_config, rate_card_lines, token_cost_lines
from costmesh.common.config import Price, RateCard

HOUR = 3_600_000_000


def u(src, dst, tenant, **kw) -> Usage:
    return Usage(src_workload=src, dst=dst, tenant=tenant, tenant_method="header", start_us=0, end_us=60_000_000, **kw)


def test_rate_card_prices_hours_exactly_and_allocates_by_server_time():
    window = Window(0, 30 * 24 * HOUR + HOUR // 2)  # 720.5 hours
    card = RateCard(resource="node-1", price_per_hour="0.0416", kind="compute", endpoints=["api", "worker"])
    [(line, target)] = rate_card_lines([card], window)
    assert line.amount == Decimal("29.9728") and line.quantity == Decimal("720.5")
    usage = [u("lb", "api", "acme", busy_us=3), u("lb", "worker", "globex", busy_us=1)]
    allocs = Allocator(usage).allocate(line, target)
    assert {(a.tenant, a.amount) for a in allocs} == {("acme", Decimal("22.4796")), ("globex", Decimal("7.4932"))}


def test_token_lines_priced_per_model_and_split_by_tenant():
    prices = [
        Price(provider="openai", model="gpt-4o-mini", input_micros_per_mtok=150_000, output_micros_per_mtok=600_000),
        Price(provider="anthropic", model="*", input_micros_per_mtok=3_000_000, output_micros_per_mtok=15_000_000),
    ]
    price = price_from_config(prices)
    assert price("OpenAI", "gpt-4o-mini", 1_000_000, 1_000_000, 0, 0) == 750_000
    assert price("openai", "unknown", 10**9, 0, 0, 0) == 0
    usage = [
        u("api", "api.openai.com", "acme", provider="openai", model="gpt-4o-mini", tokens_in=2_000_000, tokens_out=0),
        u("api", "api.openai.com", "globex", provider="openai", model="gpt-4o-mini", tokens_in=0, tokens_out=1_000_000),
        u("bot", "api.anthropic.com", "acme", provider="anthropic", model="claude", tokens_in=1000, tokens_out=100),
    ]
    lines = token_cost_lines(usage, price, Window(0, HOUR))
    assert [(line.resource_id, line.amount) for line, _ in lines] == [
        ("ai:anthropic/claude", Decimal("0.0045")),
        ("ai:openai/gpt-4o-mini", Decimal("0.9")),
    ]
    line, target = lines[1]
    allocs = Allocator(usage, price=price).allocate(line, target)
    assert {(a.tenant, a.method, a.amount, a.basis) for a in allocs} == {
        ("acme", "direct", Decimal("0.3"), "tokens_cost"),
        ("globex", "direct", Decimal("0.6"), "tokens_cost"),
    }
