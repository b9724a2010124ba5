"""Cost lines before (or without) an invoice: rate cards for self-managed infrastructure and AI tokens × price.

Reads ``config.billing.rate_cards`` (a price per hour for an observed resource, e.g. the EC2 instance type of a node)
and AI usage rows (tokens by provider and model); emits ``CostLine``s with their ``Target`` so they flow through the
same allocation as billed lines. Tokens are priced by the one pricer (``costmesh.common.prices``), one line per
(provider, model, token kind) as an invoice would list them, so each kind is split by the tenants' tokens of that kind.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from costmesh.common.config import RateCard
from costmesh.common.money import parse_amount
from costmesh.common.prices import PriceTable, round_micros

from .allocate import Target
from .focus import period_of
from .model import CostLine, Usage, Window

_HOUR_US = 3_600_000_000


def _line_id(*parts: str) -> str:
    return "ratecard:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def rate_card_lines(cards: Iterable[RateCard], window: Window) -> list[tuple[CostLine, Target]]:
    """One line per card: its hourly price × the hours of ``window`` (exact), for its observed resource."""
    hours = Decimal(window.end_us - window.start_us) / Decimal(_HOUR_US)
    out = []
    for card in cards:
        amount = (parse_amount(card.price_per_hour) * hours).normalize()
        line = CostLine(
            line_id=_line_id(card.resource, str(window.start_us), str(window.end_us)),
            source="ratecard",
            billing_period=period_of(window.start_us),
            window=window,
            amount=amount,
            currency=card.currency,
            service=card.description or "rate card",
            resource_id=card.resource,
            usage_type="RateCard-Hours",
            charge_category="Usage",
            quantity=hours,
            unit="Hours",
        )
        out.append((line, Target(card.resource, card.kind, frozenset(card.endpoints), "rate card")))
    return out


_KIND_WORDS = {"input": "input", "output": "output", "cache_read": "cache read"}


def token_cost_lines(
    usage: Iterable[Usage], prices: PriceTable, window: Window, currency: str = "USD"
) -> list[tuple[CostLine, Target]]:
    """AI spend priced in real time: one line per (provider, model, token kind) from observed tokens × list price,
    each the exact sum over the calls rounded once to the micro-unit. Models without a price make no line."""
    exact: dict[tuple[str, str, str], int] = defaultdict(int)
    endpoints: dict[tuple[str, str], set[str]] = defaultdict(set)
    for u in usage:
        if not (u.tokens_in or u.tokens_out or u.tokens_cached):
            continue
        if not window.overlaps(u.start_us, u.end_us):
            continue
        provider = u.provider or u.dst
        weights = prices.weights(provider, u.model, u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning)
        if weights is None:
            continue
        for kind, value in weights.items():
            exact[(provider, u.model, kind)] += value
        endpoints[(provider, u.model)].add(u.dst)
    out = []
    for (provider, model, kind), total in sorted(exact.items()):
        micros = round_micros(total)
        if not micros:
            continue
        resource = f"ai:{provider}/{model}"
        line = CostLine(
            line_id=_line_id(resource, kind, str(window.start_us), str(window.end_us)),
            source="ai-prices",
            billing_period=period_of(window.start_us),
            window=window,
            amount=Decimal(micros).scaleb(-6),
            currency=currency,
            provider=provider,
            service=f"{provider} {model}".strip(),
            resource_id=resource,
            usage_type=f"Tokens-{kind}",
            description=f"{model} {_KIND_WORDS[kind]} tokens",
            charge_category="Usage",
        )
        out.append((line, Target(resource, "ai_api", frozenset(endpoints[(provider, model)]), "AI price list")))
    return out
