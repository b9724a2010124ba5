"""Cost lines before (or without) an invoice: rate cards for self-managed infrastructure and AI tokens × price.

Reads ``config.billing.rate_cards`` (a price per hour for an observed resource, e.g. the EC2 instance type of a node)
and consumption rows with tokens; emits ``CostLine``s with their ``Target`` so they flow through the same allocation
as billed lines. The token price is a parameter (``PriceFn``): ``price_from_config`` is a small stand-in over
``config.prices`` until the shared price table (``costmesh.common.prices``, attributor issue) is wired in its place.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from costmesh.common.config import Price, RateCard
from costmesh.common.money import parse_amount

from .allocate import PriceFn, Target
from .focus import period_of
from .model import CostLine, Usage, Window

_HOUR_US = 3_600_000_000


def price_from_config(prices: Sequence[Price]) -> PriceFn:
    """A ``PriceFn`` over ``config.prices`` (micro-units per million tokens); unknown models cost 0.

    Rounds each call's cost down to a whole micro-unit, like a meter would; the allocation itself is exact.
    """
    table = {(p.provider.lower(), p.model.lower()): p for p in prices}

    def price(provider: str, model: str, tin: int, tout: int, tcached: int, treasoning: int) -> int:
        p = table.get((provider.lower(), model.lower())) or table.get((provider.lower(), "*"))
        if p is None:
            return 0
        total = (
            tin * p.input_micros_per_mtok
            + tout * p.output_micros_per_mtok
            + tcached * p.cached_micros_per_mtok
            + treasoning * p.reasoning_micros_per_mtok
        )
        return total // 1_000_000

    return price


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


def token_cost_lines(
    usage: Iterable[Usage], price: PriceFn, window: Window, currency: str = "USD"
) -> list[tuple[CostLine, Target]]:
    """AI spend priced in real time: one line per (provider, model) from observed tokens × ``price``."""
    micros: dict[tuple[str, str], int] = defaultdict(int)
    endpoints: dict[tuple[str, str], set[str]] = defaultdict(set)
    for u in usage:
        if not (u.tokens_in or u.tokens_out or u.tokens_cached or u.tokens_reasoning):
            continue
        if not window.overlaps(u.start_us, u.end_us):
            continue
        key = (u.provider or u.dst, u.model)
        micros[key] += price(key[0], u.model, u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning)
        endpoints[key].add(u.dst)
    out = []
    for (provider, model), total in sorted(micros.items()):
        if not total:
            continue
        resource = f"ai:{provider}/{model}"
        line = CostLine(
            line_id=_line_id(resource, str(window.start_us), str(window.end_us)),
            source="ai-prices",
            billing_period=period_of(window.start_us),
            window=window,
            amount=Decimal(total).scaleb(-6),
            currency=currency,
            provider=provider,
            service=f"{provider} {model}".strip(),
            resource_id=resource,
            usage_type="Tokens",
            charge_category="Usage",
        )
        out.append((line, Target(resource, "ai_api", frozenset(endpoints[(provider, model)]), "AI price list")))
    return out
