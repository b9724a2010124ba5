"""AI token prices: what a call's tokens cost, in integer micro-dollars, minutes after the call (before any invoice).

Shared by the attributor (real-time AI cost, the runaway-cost detector) and billing (the AI price list). Reads the
shipped defaults below, overridden per (provider, model) by ``config.prices``. Emits integers only: never float money.

Token conventions (those of the OpenAI/Azure ``usage`` object, which the sensor follows for every provider):
``tokens_in`` counts all input tokens *including* ``tokens_cached``; ``tokens_out`` counts all output tokens
*including* ``tokens_reasoning``. So cached tokens are priced at the cached rate instead of the input rate, and
reasoning tokens at the reasoning rate instead of the output rate. A rate of 0 for cached or reasoning tokens means
"no separate rate": they cost what plain input or output tokens cost.

Shipped defaults: list prices in US dollars per million tokens (standard tier, prompts up to 200k tokens where the
price has tiers), transcribed from the providers' public pricing pages as they stood in 2025-10 —
openai.com/api/pricing, anthropic.com/pricing (API), aws.amazon.com/bedrock/pricing (on-demand, us-east-1),
ai.google.dev/gemini-api/docs/pricing. They were not re-checked online from the build machine (no internet there).
Prices change: override them in config (``[[prices]]``) rather than trusting these for invoices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .config import Config, Price

_MTOK: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Micro-dollars per million tokens of one model."""

    input: int
    output: int
    cached: int = 0
    reasoning: int = 0


def _usd(value: str) -> int:
    """Dollars per million tokens, written as a decimal string, to integer micro-dollars per million tokens."""
    whole, _, frac = value.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def _p(inp: str, out: str, cached: str = "0", reasoning: str = "0") -> ModelPrice:
    return ModelPrice(_usd(inp), _usd(out), _usd(cached), _usd(reasoning))


#: (provider, model) → price. Model names match exactly or as the longest prefix (dated variants such as
#: ``gpt-4o-2024-08-06`` take ``gpt-4o``'s price).
DEFAULT_PRICES: Final[dict[tuple[str, str], ModelPrice]] = {
    # OpenAI (reasoning tokens are billed as output tokens: no separate rate)
    ("openai", "gpt-5"): _p("1.25", "10.00", "0.125"),
    ("openai", "gpt-5-mini"): _p("0.25", "2.00", "0.025"),
    ("openai", "gpt-5-nano"): _p("0.05", "0.40", "0.005"),
    ("openai", "gpt-4.1"): _p("2.00", "8.00", "0.50"),
    ("openai", "gpt-4.1-mini"): _p("0.40", "1.60", "0.10"),
    ("openai", "gpt-4.1-nano"): _p("0.10", "0.40", "0.025"),
    ("openai", "gpt-4o"): _p("2.50", "10.00", "1.25"),
    ("openai", "gpt-4o-mini"): _p("0.15", "0.60", "0.075"),
    ("openai", "o3"): _p("2.00", "8.00", "0.50"),
    ("openai", "o3-mini"): _p("1.10", "4.40", "0.55"),
    ("openai", "o4-mini"): _p("1.10", "4.40", "0.275"),
    ("openai", "o1"): _p("15.00", "60.00", "7.50"),
    ("openai", "text-embedding-3-small"): _p("0.02", "0"),
    ("openai", "text-embedding-3-large"): _p("0.13", "0"),
    # Anthropic (cached = cache reads; cache writes are not separated in the usage the sensor reports)
    ("anthropic", "claude-opus-4-1"): _p("15.00", "75.00", "1.50"),
    ("anthropic", "claude-opus-4"): _p("15.00", "75.00", "1.50"),
    ("anthropic", "claude-sonnet-4-5"): _p("3.00", "15.00", "0.30"),
    ("anthropic", "claude-sonnet-4"): _p("3.00", "15.00", "0.30"),
    ("anthropic", "claude-3-7-sonnet"): _p("3.00", "15.00", "0.30"),
    ("anthropic", "claude-haiku-4-5"): _p("1.00", "5.00", "0.10"),
    ("anthropic", "claude-3-5-haiku"): _p("0.80", "4.00", "0.08"),
    ("anthropic", "claude-3-haiku"): _p("0.25", "1.25", "0.03"),
    # Amazon Bedrock (on-demand model ids)
    ("bedrock", "anthropic.claude-sonnet-4-5"): _p("3.00", "15.00", "0.30"),
    ("bedrock", "anthropic.claude-sonnet-4"): _p("3.00", "15.00", "0.30"),
    ("bedrock", "anthropic.claude-3-7-sonnet"): _p("3.00", "15.00", "0.30"),
    ("bedrock", "anthropic.claude-3-5-haiku"): _p("0.80", "4.00", "0.08"),
    ("bedrock", "anthropic.claude-opus-4-1"): _p("15.00", "75.00", "1.50"),
    ("bedrock", "amazon.nova-pro"): _p("0.80", "3.20", "0.20"),
    ("bedrock", "amazon.nova-lite"): _p("0.06", "0.24", "0.015"),
    ("bedrock", "amazon.nova-micro"): _p("0.035", "0.14", "0.00875"),
    ("bedrock", "meta.llama3-3-70b-instruct"): _p("0.72", "0.72"),
    # Google Gemini (thinking tokens are reported apart and billed at the output rate)
    ("gemini", "gemini-2.5-pro"): _p("1.25", "10.00", "0.31"),
    ("gemini", "gemini-2.5-flash"): _p("0.30", "2.50", "0.075"),
    ("gemini", "gemini-2.5-flash-lite"): _p("0.10", "0.40", "0.025"),
    ("gemini", "gemini-2.0-flash"): _p("0.10", "0.40", "0.025"),
    ("gemini", "gemini-2.0-flash-lite"): _p("0.075", "0.30"),
}

#: Providers that resell another's models at the same list price.
PROVIDER_ALIASES: Final[dict[str, str]] = {
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "vertex": "gemini",
    "vertex_ai": "gemini",
    "google": "gemini",
    "aws": "bedrock",
}


def cost_of(
    price: ModelPrice, tokens_in: int, tokens_out: int, tokens_cached: int = 0, tokens_reasoning: int = 0
) -> int:
    """Micro-dollars for one call's tokens, rounded half up once (integer arithmetic throughout)."""
    cached = min(max(tokens_cached, 0), max(tokens_in, tokens_cached))
    plain_in = max(tokens_in - cached, 0)
    reasoning = max(tokens_reasoning, 0)
    plain_out = max(tokens_out - reasoning, 0)
    numerator = (
        plain_in * price.input
        + cached * (price.cached or price.input)
        + plain_out * price.output
        + reasoning * (price.reasoning or price.output)
    )
    return (numerator + _MTOK // 2) // _MTOK


class PriceTable:
    """Prices by (provider, model): the shipped defaults, then ``config.prices`` on top."""

    def __init__(self, prices: dict[tuple[str, str], ModelPrice] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._cache: dict[tuple[str, str], ModelPrice | None] = {}

    @classmethod
    def from_config(cls, cfg: Config | list[Price]) -> PriceTable:
        table = cls()
        for p in cfg.prices if isinstance(cfg, Config) else cfg:
            table.set(
                p.provider,
                p.model,
                ModelPrice(
                    p.input_micros_per_mtok,
                    p.output_micros_per_mtok,
                    p.cached_micros_per_mtok,
                    p.reasoning_micros_per_mtok,
                ),
            )
        return table

    def set(self, provider: str, model: str, price: ModelPrice) -> None:
        self._prices[(provider.lower(), model.lower())] = price
        self._cache.clear()

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of a model: exact match, else the longest model-name prefix, under the provider or its alias."""
        key = (provider.lower(), model.lower())
        if key in self._cache:
            return self._cache[key]
        found = self._find(*key)
        self._cache[key] = found
        return found

    def _find(self, provider: str, model: str) -> ModelPrice | None:
        for prov in dict.fromkeys((provider, PROVIDER_ALIASES.get(provider, provider))):
            exact = self._prices.get((prov, model))
            if exact is not None:
                return exact
            best: tuple[int, ModelPrice] | None = None
            for (p, m), price in self._prices.items():
                if p == prov and model.startswith(m) and (best is None or len(m) > best[0]):
                    best = (len(m), price)
            if best is not None:
                return best[1]
        return None

    def cost_micros(
        self,
        provider: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        tokens_cached: int = 0,
        tokens_reasoning: int = 0,
    ) -> int:
        """Integer micro-dollars for the tokens; 0 for a model without a price (see ``lookup`` to tell them apart)."""
        price = self.lookup(provider, model)
        if price is None:
            return 0
        return cost_of(price, tokens_in, tokens_out, tokens_cached, tokens_reasoning)
