"""Differential fuzz of the AI usage fast path: mutated response bodies through the compiled ``_usage`` (every 20th
also through its twin ``_usage_py``) and through the full path (``ai.response_usage``); wherever the fast path
answers, the answers must be equal. Prints inputs/s and how often the fast path answered.

Inputs: every response body under ``shared/data/ai`` plus generated OpenAI/Anthropic bodies, mutated (bytes flipped,
inserted, deleted, spliced with JSON fragments: escapes, duplicates, numbers, nested keys). A difference is the
finding: the script stops with the seed and the input.
Usage: ``python loadtests/fuzz_usage.py [--inputs N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from costmesh.native import _usage, _usage_py
from costmesh.sensor.core import ai

ROOT = Path(__file__).resolve().parent.parent
AI = ROOT.parent / "shared" / "data" / "ai"

FRAGMENTS = [
    b'"usage": {"prompt_tokens": 5}',
    b'"model": "x"',
    b'"prompt_tokens_details": {"cached_tokens": 3}',
    b'"prompt_tokens_details.cached_tokens": 2',
    b'"input_tokens": 7',
    b'"total_tokens": 9',
    b'"metadata": {"usage": {"output_tokens": 4}}',
    b'"modelVersion": "v"',
    b"\\u00e9",
    b"\\ud83d\\ude00",
    b'\\"',
    b"1.5",
    b"-3",
    b"1e5",
    b"true",
    b"null",
    b"\xc3\xa9",
    b"\xff",
    b",",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
]


def corpus() -> list[bytes]:
    out = []
    for p in sorted(AI.rglob("*.json")):
        out.append(p.read_bytes())
    for i in range(50):
        usage = {"prompt_tokens": i * 7, "completion_tokens": i, "total_tokens": i * 8}
        if i % 2:
            usage["prompt_tokens_details"] = {"cached_tokens": i}
        if i % 3:
            usage = {"input_tokens": i, "output_tokens": i * 2, "cache_read_input_tokens": i // 2}
        doc = {"id": f"x{i}", "model": f"model-{i}", "choices": [{"message": {"content": "é\n" * i}}], "usage": usage}
        out.append(json.dumps(doc, ensure_ascii=bool(i % 2), indent=i % 3 or None).encode())
    return out


def mutate(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op < 0.5 and b:
            del b[i : i + rng.randint(1, 8)]
        elif op < 0.9:
            b[i:i] = rng.choice(FRAGMENTS)
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(b)


def full(body: bytes):
    try:
        u = ai.response_usage(body, b"application/json", b"", b"", b"", "", "p")
    except ValueError:
        return "error"
    return (u.model.encode("utf-8", "replace")[:256], u.tokens_in, u.tokens_out, u.tokens_cached, u.tokens_reasoning)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seeds = corpus()
    answered = 0
    t0 = time.perf_counter()
    for n in range(args.inputs):
        body = mutate(rng, rng.choice(seeds)) if n % 10 else rng.choice(seeds)
        got = _usage.response_usage(body, b"application/json")
        if n % 20 == 0 and _usage_py.response_usage(body, b"application/json") != got:
            sys.exit(f"seed {args.seed} input {n}: the twin disagrees on {body!r}")
        if got is not None:
            answered += 1
            if got != full(body):
                sys.exit(f"seed {args.seed} input {n}: fast {got} != full {full(body)} on {body!r}")
    dt = time.perf_counter() - t0
    print(f"{args.inputs} inputs in {dt:.1f} s ({args.inputs / dt:,.0f}/s); fast path answered {answered}, all equal")


if __name__ == "__main__":
    main()
