"""The one pricer on every recorded AI response under ``shared/data/ai``: each cassette interaction is replayed on the
wire through the compiled sensor, and the cost of the call it emits equals the provider's published price × the
tokens the provider reported, to the micro-dollar.

The expected side is written independently of the sensor and the pricer: the raw usage numbers as the response
states them (uncached input, cache reads, cache writes, output incl. reasoning, each read off the file by hand) and
the list prices of the provider's pricing page (US$ per million tokens), rounded half up once.
"""

from __future__ import annotations

import io
from decimal import ROUND_HALF_UP, Decimal

import pytest

from costmesh.common.prices import PriceTable, model_key

from .test_native_parsers import BUILDS, conversation, pcap_bytes, run_capture
from .test_sensor_ai import CASSETTES, _interactions, _wire

#: (provider folder, cassette, interaction) → (published $/M (input, output, cache read, cache write) or None when
#: the model has no published price, raw usage (uncached input, cache read, cache write, output)).
RECORDED = {
    ("anthropic", "messages_claude-3-opus.yaml", 0): (("15", "75", "1.50", "18.75"), (20, 0, 0, 10)),
    ("anthropic", "messages_prompt_cache.yaml", 0): (("3", "15", "0.30", "3.75"), (3, 1111, 0, 406)),
    ("anthropic", "messages_prompt_cache.yaml", 1): (("3", "15", "0.30", "3.75"), (3, 1111, 418, 33)),
    ("anthropic", "messages_stream_claude-sonnet-4-5.yaml", 0): (("3", "15", "0.30", "3.75"), (20, 0, 0, 5)),
    ("azure-openai", "responses_gpt-5.4.yaml", 0): (None, (18, 0, 0, 5)),
    ("bedrock", "converse-stream_nova-micro.yaml", 0): (("0.035", "0.14", "0.00875", None), (13, 0, 0, 82)),
    ("bedrock", "converse_claude-sonnet-4-5.yaml", 0): (("3", "15", "0.30", "3.75"), (13, 0, 0, 12)),
    ("bedrock", "converse_nova-micro.yaml", 0): (("0.035", "0.14", "0.00875", None), (7, 0, 0, 30)),
    ("bedrock", "invoke_anthropic_prompt_cache.yaml", 0): (("1", "5", "0.10", "1.25"), (3, 9511, 0, 1944)),
    ("bedrock", "invoke_anthropic_prompt_cache.yaml", 1): (("1", "5", "0.10", "1.25"), (3, 9511, 1956, 44)),
    ("gemini-api", "stream_generate_content.yaml", 0): (None, (13, 0, 0, 8)),
    ("openai", "chat_gpt-4o-mini.yaml", 0): (("0.15", "0.60", "0.075", None), (8, 0, 0, 9)),
    ("openai", "chat_o3-mini_reasoning.yaml", 0): (("1.10", "4.40", "0.55", None), (7, 0, 0, 87)),
    ("openai", "chat_prompt_cache.yaml", 0): (None, (4020, 0, 0, 4)),
    ("openai", "chat_prompt_cache.yaml", 1): (None, (8, 4012, 0, 4)),
    ("openai", "chat_stream_include_usage.yaml", 0): (("0.15", "0.60", "0.075", None), (53, 0, 0, 15)),
    ("openai", "chat_stream_include_usage.yaml", 1): (("0.15", "0.60", "0.075", None), (78, 0, 0, 9)),
    ("openai", "responses_gpt-4o.yaml", 0): (("2.50", "10", "1.25", None), (14, 0, 0, 8)),
    ("openai", "responses_stream.yaml", 0): (("2.50", "10", "1.25", None), (255, 0, 0, 16)),
    ("openai", "responses_stream.yaml", 1): (("2.50", "10", "1.25", None), (278, 0, 0, 9)),
    ("vertex", "generate_content_gemini-2.0-flash.yaml", 0): (("0.15", "0.60", None, None), (13, 0, 0, 8)),
    ("vertex", "stream_generate_content.yaml", 0): (None, (5, 0, 0, 101)),
}
#: The two recorded calls that write the prompt cache: the contract has no cache-write counter (``ObservedCall``),
#: so their 418 / 1956 written tokens are priced at the input rate, 0.25× below the published write rate.
CACHE_WRITES = {("anthropic", "messages_prompt_cache.yaml", 1), ("bedrock", "invoke_anthropic_prompt_cache.yaml", 1)}


def published_micros(rates: tuple[str | None, ...], usage: tuple[int, int, int, int]) -> int:
    inp, out, read, write = (Decimal(r) if r is not None else None for r in rates)
    uncached, cache_read, cache_write, output = usage
    dollars = (
        uncached * inp
        + cache_read * (read if read is not None else inp)
        + cache_write * (write if write is not None else inp)
        + output * out
    ) / Decimal(1_000_000)
    return int((dollars * 1_000_000).quantize(Decimal(1), ROUND_HALF_UP))


def _recorded_calls():
    build = BUILDS[sorted(BUILDS)[0]]
    for path in CASSETTES:
        for i, (request, response) in enumerate(_interactions(path)):
            req, resp, _ = _wire(request, response)
            data = pcap_bytes(conversation([(req, resp)], sport=40100, dport=80, split=1400))
            calls, _stats, error = run_capture(build, io.BytesIO(data))
            assert error is None
            (call,) = calls
            yield (path.parent.parent.name, path.name, i), call


CALLS = dict(_recorded_calls())


def test_every_recorded_interaction_has_an_expectation():
    assert set(CALLS) == set(RECORDED)


@pytest.mark.parametrize("key", sorted(RECORDED), ids=lambda k: f"{k[0]}/{k[1]}#{k[2]}")
def test_cost_per_recorded_call_is_published_price_times_tokens(key):
    rates, usage = RECORDED[key]
    call = CALLS[key]
    table = PriceTable()
    args = (call.get("tokens_in", 0), call.get("tokens_out", 0), call.get("tokens_cached", 0))
    # every token the provider reported is counted exactly once by the sensor's fields
    assert sum(args) == sum(usage), (args, usage)
    assert call.get("tokens_cached", 0) == usage[1]
    if rates is None:
        assert table.lookup(call["provider"], call["model"]) is None, "an unlisted model must stay unpriced"
        return
    got = table.cost_micros(call["provider"], call["model"], *args, call.get("tokens_reasoning", 0))
    expected = published_micros(rates, usage)
    if key in CACHE_WRITES:
        # the known gap, measured: exactly the write premium (write rate - input rate) × written tokens is missing
        inp, write = Decimal(rates[0]), Decimal(rates[3])
        premium = usage[2] * (write - inp)
        assert got == published_micros(rates, (usage[0] + usage[2], usage[1], 0, usage[3]))
        assert Decimal(expected - got) == premium.quantize(Decimal(1), ROUND_HALF_UP)
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-5.4", "gpt-5.4"),
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("bedrock", "us.amazon.nova-micro-v1:0", "nova-micro"),
        ("anthropic", "claude-3-opus-20240229", "claude-3-opus"),
        ("vertex", "gemini-2.0-flash-001", "gemini-2.0-flash"),
    ],
)
def test_model_key_drops_only_version_suffixes(provider, model, key):
    assert model_key(provider, model) == key


def test_no_price_by_name_prefix():
    """``gpt-5.4`` starts with ``gpt-5`` but is another model: priced by nothing rather than by a neighbour."""
    table = PriceTable()
    assert table.lookup("openai", "gpt-5") is not None
    assert table.lookup("openai", "gpt-5.4") is None
    assert table.lookup("openai", "gpt-4o-mini-2024-07-18") == table.lookup("openai", "gpt-4o-mini")
    assert table.lookup("openai", "gpt-4o-mini") != table.lookup("openai", "gpt-4o")
