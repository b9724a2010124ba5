"""Long fuzz run of the sensor's parsers: at least 10^6 inputs through the compiled engine, every 50th also through
the pure-Python twin, with nothing allowed but counted parse errors (agreement of the builds is asserted by the
test suite on the same kinds of input).

Inputs: frames of the shared captures and of a generated HTTP/PostgreSQL capture, mutated (bytes flipped, cut,
spliced, random link types), plus purely random frames; in-stream payloads go through TCP flows so that the HTTP,
PostgreSQL, TLS and DNS stream parsers see them. Prints inputs/s and the error counts by kind. A crash or hang is the
finding: the script stops with the seed and input that caused it.
Usage: ``python loadtests/fuzz_parsers.py [--inputs N] [--seed S] [--minutes M]``.

Memory errors that do not crash are found by running it on an AddressSanitizer build::

    CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g" LDFLAGS=-fsanitize=address \
        .venv/bin/python setup.py build_ext --inplace --force
    ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$(gcc -print-file-name=libasan.so) .venv/bin/python loadtests/fuzz_parsers.py

(then ``setup.py build_ext --inplace --force`` again for the normal build).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtests"))

from bench_sensor import make_http_capture, make_pg_capture  # noqa: E402

from costmesh.common.config import Config  # noqa: E402
from costmesh.native import _capture, _capture_py, _engine, _engine_py  # noqa: E402
from costmesh.sensor.core import Sensor  # noqa: E402


def corpus() -> list[tuple[int, bytes]]:
    frames = []
    paths = sorted((ROOT.parent / "shared" / "data" / "pcap").rglob("*.pcap*"))
    for p in paths:  # all shared captures read to their end (the test suite checks it)
        frames += [(lt, f) for _ts, lt, f in _capture_py.CaptureReader(p)]
    for data in (make_http_capture(2000), make_pg_capture(500)[0]):
        frames += [(lt, f) for _ts, lt, f in _capture_py.CaptureReader(io.BytesIO(data))]
    return frames


def mutate(rng: random.Random, frames: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    lt, f = rng.choice(frames)
    b = bytearray(f)
    op = rng.randrange(6)
    if op == 0 and b:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif op == 2:
        _lt2, other = rng.choice(frames)
        cut = rng.randrange(len(b) + 1)
        b = b[:cut] + other[rng.randrange(len(other) + 1) :]
    elif op == 3:
        lt = rng.choice([0, 1, 101, 108, 113, 228, 229, 276, 147])
    elif op == 4:
        b = bytearray(rng.randbytes(rng.randrange(0, 200)))
    elif op == 5 and len(b) > 60:  # keep headers, randomise the payload
        start = rng.randrange(54, len(b))
        b[start:] = rng.randbytes(len(b) - start)
    return lt, bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--minutes", type=float, default=0, help="stop after this long even before --inputs")
    args = ap.parse_args()
    print(f"seed {args.seed}")
    rng = random.Random(args.seed)
    frames = corpus()
    config = Config()
    errors: Counter[str] = Counter()
    t0 = time.perf_counter()
    n = 0
    batch = 5000
    while n < args.inputs:
        fast = Sensor(config, "fuzz", engine_cls=_engine.Engine, reader_cls=_capture.CaptureReader)
        slow = Sensor(config, "fuzz", engine_cls=_engine_py.Engine, reader_cls=_capture_py.CaptureReader)
        for i in range(batch):
            lt, f = mutate(rng, frames)
            ts = 1_000_000 + n + i
            try:
                fast.feed_frame(ts, lt, f)
                if i % 50 == 0:
                    slow.feed_frame(ts, lt, f)
            except Exception:
                print(f"CRASH at input {n + i} (seed {args.seed}): linktype {lt}, frame {f.hex()}")
                raise
        fast.drain(final=True)
        slow.drain(final=True)
        errors.update(fast.stats()["errors"])
        n += batch
        if args.minutes and time.perf_counter() - t0 > args.minutes * 60:
            break
    elapsed = time.perf_counter() - t0
    print(f"{n} inputs in {elapsed:.1f} s ({n / elapsed:,.0f}/s), no crash, no hang")
    print("malformed input counted by kind:", dict(sorted(errors.items())))


if __name__ == "__main__":
    main()
