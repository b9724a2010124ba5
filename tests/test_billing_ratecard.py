"""Rate cards and token prices: cost lines before any invoice, allocated like billed lines."""

from __future__ import annotations

from decimal import Decimal

from costmesh.billing.allocate import Allocator
from costmesh.billing.model import Usage, Window
from costmesh.billing.ratecard import rate_card_lines, token_cost_lines
from costmesh.common.config import Price, RateCard
from costmesh.common.prices import PriceTable

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


def test_token_lines_priced_per_model_and_kind_and_split_by_that_kind():
    prices = PriceTable.from_config(
        [
            Price(
                provider="openai", model="gpt-4o-mini", input_micros_per_mtok=150_000, output_micros_per_mtok=600_000
            ),
            Price(provider="anthropic", model="*", input_micros_per_mtok=3_000_000, output_micros_per_mtok=15_000_000),
        ]
    )
    assert prices.cost_micros("OpenAI", "gpt-4o-mini", 1_000_000, 1_000_000) == 750_000
    assert prices.lookup("openai", "unknown") is None
    usage = [
        u("api", "api.openai.com", "acme", provider="openai", model="gpt-4o-mini", tokens_in=2_000_000, tokens_out=0),
        u("api", "api.openai.com", "globex", provider="openai", model="gpt-4o-mini", tokens_in=0, tokens_out=1_000_000),
        u("bot", "api.anthropic.com", "acme", provider="anthropic", model="claude", tokens_in=1000, tokens_out=100),
    ]
    lines = token_cost_lines(usage, prices, Window(0, HOUR))
    assert [(line.resource_id, line.usage_type, line.amount) for line, _ in lines] == [
        ("ai:anthropic/claude", "Tokens-input", Decimal("0.003")),
        ("ai:anthropic/claude", "Tokens-output", Decimal("0.0015")),
        ("ai:openai/gpt-4o-mini", "Tokens-input", Decimal("0.3")),
        ("ai:openai/gpt-4o-mini", "Tokens-output", Decimal("0.6")),
    ]
    alloc = Allocator(usage, ai=usage, prices=prices)
    got = {
        (line.usage_type, a.tenant, a.method, a.amount, a.basis)
        for line, target in lines[2:]
        for a in alloc.allocate(line, target)
    }
    # each tenant pays for exactly the tokens it used of the kind the line meters
    assert got == {
        ("Tokens-input", "acme", "direct", Decimal("0.3"), "tokens_in"),
        ("Tokens-output", "globex", "direct", Decimal("0.6"), "tokens_out"),
    }
