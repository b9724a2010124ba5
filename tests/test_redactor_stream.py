"""Segment-boundary invariance: a byte stream cut into segments anywhere gives exactly the whole-text redaction.

A *cut* is a split point in the byte stream: ``StreamScanner.feed(seg1) … feed(segN)`` then ``close()`` must return,
concatenated, ``redact(stream.decode("utf-8", "replace"))`` — for cuts inside secrets, inside multi-byte UTF-8
characters, inside PEM blocks and header lines, with any scan cadence. At least 100,000 random cuts are tried; the seed
is printed (set ``REDACTOR_STREAM_SEED`` to replay one).
"""

from __future__ import annotations

import os
import random

from costmesh.redactor import scan

from .redactor_fixtures import CONTEXTS, CONTROLS, PLANTS, embed

MIN_CUTS = 100_000

_FILLER = [
    "GET /v1/orders/12345/items?page=2&sort=asc HTTP/1.1\r\nHost: orders\r\n",
    "SELECT id, total FROM orders WHERE tenant_id = $1 AND created_at > now() - interval '1 day'\n",
    '{"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1200, "completion_tokens": 310}}\n',
    "naïve café — 日本語のテキスト 🚀 ",
    "x" * 900,  # a long run without any separator: the hold-back must not wait for one
    "\n",
]


def _pieces() -> list[bytes]:
    texts = [embed(c, p.text) for p in PLANTS for c in CONTEXTS]
    texts += [embed(c, x) for x in CONTROLS for c in CONTEXTS]
    texts += [p.text for p in PLANTS] + _FILLER
    # Raw PEM lines with real newlines, an auth header continuing a long line.
    texts.append(PLANTS[12].text.replace("\\n", "\n"))
    texts.append("Authorization: Bearer " + "Q7xLm2Vp9" * 90 + "\r\n")
    out = [t.encode() for t in texts]
    out += [b"\xff\xfe broken utf-8 \xc3", b"\xe2\x82", b"\xac euro"]
    return out


def _stream(rng: random.Random, pieces: list[bytes]) -> bytes:
    size = rng.choice((300, 2_000, 6_000, 14_000))
    parts: list[bytes] = []
    total = 0
    while total < size:
        parts.append(rng.choice(pieces))
        total += len(parts[-1])
    return b"".join(parts)


def _run(data: bytes, cuts: list[int], scan_every: int) -> tuple[str, list[str]]:
    scanner = scan.StreamScanner(scan_every=scan_every)
    out = []
    prev = 0
    for cut in cuts:
        out.append(scanner.feed(data[prev:cut]))
        prev = cut
    out.append(scanner.feed(data[prev:]))
    out.append(scanner.close())
    return "".join(out), scanner.kinds


def test_random_cuts_give_the_whole_text_redaction() -> None:
    seed = int(os.environ.get("REDACTOR_STREAM_SEED", random.randrange(2**32)))
    print(f"REDACTOR_STREAM_SEED={seed}")
    rng = random.Random(seed)
    pieces = _pieces()
    cuts_tried = streams = 0
    redactions = 0
    while cuts_tried < MIN_CUTS:
        data = _stream(rng, pieces)
        whole, kinds = scan.redact(data.decode("utf-8", "replace"))
        for _ in range(4):
            n = min(len(data) - 1, rng.choice((1, 3, 20, 150, 400)))
            cuts = sorted(rng.sample(range(1, len(data)), n))
            scan_every = rng.choice((1, 50, scan.SHORT_WINDOW))
            got, got_kinds = _run(data, cuts, scan_every)
            assert got == whole, f"seed {seed}: stream #{streams} cut at {cuts[:20]}… differs (scan_every={scan_every})"
            assert got_kinds == list(kinds)
            cuts_tried += n
        streams += 1
        redactions += len(kinds)
    assert redactions > streams  # the streams did carry secrets
    print(f"{cuts_tried} cuts over {streams} streams, {redactions} redactions per pass")


def test_every_single_cut_of_a_stream_with_a_long_secret() -> None:
    """Exhaustive: each byte position of a stream holding a PEM key, a JWT and an auth header as the one cut."""
    pem = PLANTS[12].text.replace("\\n", "\n")
    jwt = next(p.text for p in PLANTS if p.kind == "jwt")
    text = ("a" * 700 + " " + pem + " b=1 " + jwt + "\nCookie: s=" + "Zk8Wb3" * 20 + "\n" + "é" * 400).encode()
    whole = scan.redact(text.decode())[0]
    for cut in range(1, len(text)):
        assert _run(text, [cut], scan.SHORT_WINDOW)[0] == whole, f"cut at byte {cut}"


def test_incremental_utf8_decoding_matches_one_shot() -> None:
    data = "é日🚀".encode() + b"\xff\xc3" + b"z"
    for cut in range(1, len(data)):
        assert _run(data, [cut], 1)[0] == data.decode("utf-8", "replace")
