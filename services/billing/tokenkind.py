"""Which kind of AI token a bill line meters, and which model it is for, read off the line's own words.

Reads a ``CostLine``'s FOCUS ``SkuId``/``SkuMeter``, ``ChargeDescription``, ``ConsumedUnit``/``PricingUnit`` and
``x_UsageType`` (CUR ``lineItem/UsageType``, ``pricing/unit``); emits a ``TokenKind`` or None (a line that names
several kinds, or none: it is split by price-weighted tokens). The shapes read, as the providers write them:

- AWS Bedrock (CUR usage types): ``USE1-NovaMicro-input-tokens``, ``USE1-Claude4.5Sonnet-output-tokens``,
  ``…-cache-read-input-token-count``, ``…-cache-write-input-token-count``, also CamelCase (``CacheReadInputTokens``);
- Azure OpenAI (meters): ``gpt-4o-0806-Inp-glbl``, ``gpt 4o 0806 Outp glbl``, ``… cached Inp …``;
- Google Vertex AI / Gemini (SKU descriptions): ``Gemini 2.0 Flash Input Text Tokens``, ``… Output …``,
  ``… Cached Input …``;
- OpenAI / Anthropic invoices as FOCUS: ``gpt-4o input tokens``, ``Claude Sonnet 4.5 - Prompt caching write``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from costmesh.common.prices import TokenKind, model_key

from .model import CostLine, Usage

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")

_OUTPUT = frozenset({"output", "outp", "out", "completion", "completions", "generated", "generation"})
_INPUT = frozenset({"input", "inp", "prompt", "prompts"})
_CACHE = frozenset({"cache", "caching", "cached", "cchd"})
_WRITE = frozenset({"write", "writes", "creation", "create"})
_READ = frozenset({"read", "reads", "hit", "hits", "cached", "cchd"})


def words(text: str) -> list[str]:
    """Lower-case words of a meter text: CamelCase, hyphens, dots and underscores all separate."""
    return [w for w in _NON_WORD.split(_CAMEL.sub(" ", text).lower()) if w]


def line_words(line: CostLine) -> list[str]:
    return words(" ".join((line.sku, line.sku_meter, line.usage_type, line.description, line.unit, line.pricing_unit)))


def token_kind(line: CostLine) -> TokenKind | None:
    """The one token kind a line meters, or None when it names several kinds or none."""
    w = set(line_words(line))
    if w & _CACHE and w & _WRITE:
        return "cache_write"
    if w & _CACHE and w & _READ:
        return "cache_read"
    out, inp = bool(w & _OUTPUT), bool(w & _INPUT)
    if out and not inp:
        return "output"
    if inp and not out:
        return "input"
    return None


def for_model(line: CostLine, rows: Sequence[Usage]) -> list[Usage]:
    """The rows of the model the line names (the longest model name among the rows' that its words contain), or all
    rows when it names none of them."""
    text = " " + " ".join(line_words(line)) + " "
    best = 0
    chosen: set[str] = set()
    for name in {model_key(u.provider, u.model) for u in rows if u.model}:
        phrase = " " + " ".join(words(name)) + " "
        if phrase.strip() and phrase in text:
            if len(phrase) > best:
                best, chosen = len(phrase), {name}
            elif len(phrase) == best:
                chosen.add(name)
    if not chosen:
        return list(rows)
    return [u for u in rows if u.model and model_key(u.provider, u.model) in chosen]
