"""The one AI token pricer: what a call's tokens cost, in integer micro-dollars, minutes after the call.

Shared by the attributor (real-time AI cost, the runaway-cost detector), billing (AI price-list lines, and the
price weights that split an AI invoice line mixing token kinds) and the API. Reads the list prices shipped in
``data/ai_prices.toml`` (sources named there), overridden per (provider, model) by ``config.prices``. Emits integers
only: never float money.

What each token field of ``ObservedCall`` means is stated once, in ``costmesh.common.schemas.ObservedCall``; this
module prices exactly those fields and nothing else: ``tokens_in`` × input + ``tokens_cached`` × cache read +
``tokens_out`` × output (reasoning is inside ``tokens_out``; a configured reasoning rate, if any, re-prices that part
instead of adding to it). A call's cost is that sum rounded half up once, to the micro-dollar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Final, Literal

import msgspec

from .config import Config, Price

_MTOK: Final = 1_000_000
PRICE_FILE: Final = Path(__file__).with_name("data") / "ai_prices.toml"

#: The kinds of token a provider meters apart, each with its own rate.
TokenKind = Literal["input", "output", "cache_read", "cache_write"]
TOKEN_KINDS: Final[tuple[TokenKind, ...]] = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Micro-dollars per million tokens of one model. ``cache_read``/``cache_write`` of ``None``: no separate rate
    listed (those tokens cost the input rate). ``reasoning`` of ``None``: reasoning costs the output rate."""

    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None

    def rate(self, kind: TokenKind) -> int:
        if kind == "output":
            return self.output
        if kind == "cache_read" and self.cache_read is not None:
            return self.cache_read
        if kind == "cache_write" and self.cache_write is not None:
            return self.cache_write
        return self.input


class _ListedPrice(msgspec.Struct, forbid_unknown_fields=True):
    provider: str
    model: str
    input: str
    output: str
    cache_read: str | None = None
    cache_write: str | None = None


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    prices: list[_ListedPrice]


def usd_per_mtok(value: str) -> int:
    """Dollars per million tokens, written as decimal text, as integer micro-dollars per million tokens (exact:
    finer than a micro-dollar per million tokens is refused)."""
    micros = Decimal(value).scaleb(6)
    if micros != micros.to_integral_value():
        raise ValueError(f"price {value!r} is finer than one micro-dollar per million tokens")
    return int(micros)


@cache
def listed_prices(path: Path = PRICE_FILE) -> dict[tuple[str, str], ModelPrice]:
    """The shipped list prices, by (provider, model key)."""
    doc = msgspec.toml.decode(path.read_bytes(), type=_PriceFile)
    out: dict[tuple[str, str], ModelPrice] = {}
    for p in doc.prices:
        out[(p.provider, model_key(p.provider, p.model))] = ModelPrice(
            usd_per_mtok(p.input),
            usd_per_mtok(p.output),
            None if p.cache_read is None else usd_per_mtok(p.cache_read),
            None if p.cache_write is None else usd_per_mtok(p.cache_write),
        )
    return out


#: Providers that resell another's models at the same list price (sensor names on the left).
PROVIDER_ALIASES: Final[dict[str, str]] = {
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "google": "gemini",
    "vertex_ai": "vertex",
    "aws": "bedrock",
}

_DATE = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest|-\d{3})$")
_BEDROCK_REGION = re.compile(r"^(us|eu|apac|au|ca|jp|us-gov|global)\.")
_BEDROCK_VENDOR = re.compile(r"^(anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai|qwen|writer)\.")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")


def model_key(provider: str, model: str) -> str:
    """The name a model is priced under: lower case, without a date stamp or ``-latest``; for Bedrock also without
    the inference-profile region, the vendor and the ``-v1:0`` version. Only these suffixes are dropped: a model the
    table does not name is unpriced, never priced as a name it happens to start with (``gpt-5.4`` is not ``gpt-5``).
    """
    name = model.strip().lower()
    if provider == "bedrock":
        name = _BEDROCK_VENDOR.sub("", _BEDROCK_REGION.sub("", name))
        name = _BEDROCK_VERSION.sub("", name)
    return _DATE.sub("", name)


def round_micros(numerator: int) -> int:
    """Micro-dollars from micro-dollars × tokens per million tokens, rounded half up (away from zero) once."""
    sign = -1 if numerator < 0 else 1
    return sign * ((abs(numerator) + _MTOK // 2) // _MTOK)


def kind_weights(
    price: ModelPrice, tokens_in: int, tokens_out: int, tokens_cached: int = 0, tokens_reasoning: int = 0
) -> dict[TokenKind, int]:
    """The exact cost of each token kind of a call, in micro-dollars × 10⁻⁶ (integers: sums stay exact).

    No ``cache_write`` entry: the contract has no cache-write counter yet (cache writes are inside ``tokens_in``,
    see ``ObservedCall``), so they are priced at the input rate.
    """
    reasoning = min(max(tokens_reasoning, 0), max(tokens_out, 0)) if price.reasoning is not None else 0
    output = (tokens_out - reasoning) * price.output + reasoning * (price.reasoning or 0)
    return {
        "input": tokens_in * price.rate("input"),
        "output": output,
        "cache_read": tokens_cached * price.rate("cache_read"),
    }


def cost_of(
    price: ModelPrice, tokens_in: int, tokens_out: int, tokens_cached: int = 0, tokens_reasoning: int = 0
) -> int:
    """Micro-dollars for one call's tokens (the fields of ``ObservedCall``), rounded half up once."""
    return round_micros(sum(kind_weights(price, tokens_in, tokens_out, tokens_cached, tokens_reasoning).values()))


class PriceTable:
    """Prices by (provider, model): the shipped list prices, then ``config.prices`` on top."""

    def __init__(self, prices: dict[tuple[str, str], ModelPrice] | None = None) -> None:
        self._prices = dict(listed_prices() if prices is None else prices)
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
                    p.cached_micros_per_mtok or None,
                    None,
                    p.reasoning_micros_per_mtok or None,
                ),
            )
        return table

    def set(self, provider: str, model: str, price: ModelPrice) -> None:
        provider = provider.lower()
        self._prices[(provider, model_key(provider, model))] = price
        self._cache.clear()

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of a model under the provider or the provider it resells; None when none is known."""
        key = (provider.lower(), model)
        if key in self._cache:
            return self._cache[key]
        found = None
        for prov in dict.fromkeys((key[0], PROVIDER_ALIASES.get(key[0], key[0]))):
            found = self._prices.get((prov, model_key(prov, model))) or self._prices.get((prov, "*"))
            if found is not None:
                break
        self._cache[key] = found
        return found

    def weights(
        self, provider: str, model: str, tokens_in: int, tokens_out: int, tokens_cached: int = 0, reasoning: int = 0
    ) -> dict[TokenKind, int] | None:
        """``kind_weights`` under this table's price of the model; None for a model without a price."""
        price = self.lookup(provider, model)
        return None if price is None else kind_weights(price, tokens_in, tokens_out, tokens_cached, reasoning)

    def cost_micros(
        self,
        provider: str,
        model: str,
        tokens_in: int,
        tokens_out: int,
        tokens_cached: int = 0,
        tokens_reasoning: int = 0,
    ) -> int:
        """Integer micro-dollars for the tokens; 0 for a model without a price (``lookup`` tells them apart)."""
        price = self.lookup(provider, model)
        if price is None:
            return 0
        return cost_of(price, tokens_in, tokens_out, tokens_cached, tokens_reasoning)
