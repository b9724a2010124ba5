"""Allocation benchmark: 1,000,000 cost lines over 1,000 customers, propagation through queues on, target under 60 s
read included, with the time per stage beside the previous engine's from the same run.

Stages: generate (a FOCUS CSV of hourly lines for ``--resources`` resources, per-day consumption with tenants, and
queue traffic: a worker with no tenant works off a topic the customers produce to and calls one resource in ten),
ingest/parse (``fast.read_focus_columns``), map (``Mapper`` per distinct resource), allocate (``Allocator.shares`` per
resource and consumption epoch), round (exact largest-remainder split, ``fast.split_rows``), store-or-serialize
(per-customer totals and the allocation rows written as Parquet). Every line's parts are checked to sum to its amount.

The product path (``--product``, on by default): the same bill as ``CostLine`` objects (``focus.read_focus``, timed
apart) through ``pipeline.run``, which is what ``costmesh report`` and the billing service call; it chooses the
vectorised engine for a bill this large and returns ``Allocation`` rows. Its rows are checked against the columnar run.

Peers measured in the same run:
- earlier engines (``--previous REV[,REV...]``, default the commit before the single attribution model): each
  commit's own benchmark, run from ``git archive REV`` in a child process on the same seed, so the same bill and the
  same call rows (before the single model it cannot read queue traffic: the worker's rows are not in its input, its
  share stays unallocated); their per-stage figures are printed beside these;
- on a subset, scaled linearly to the full size: a naive pure-Python Decimal implementation (csv module, Decimal
  shares, per-line scan of consumption) and the project's own row engine (``focus.read_focus`` + ``Allocator``).

Run: ``.venv/bin/python loadtests/bench_allocation.py [--lines N] [--customers N] [--resources N] [--previous REV]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from costmesh.billing.allocate import Allocator
from costmesh.billing.fast import allocate_columns, read_focus_columns
from costmesh.billing.focus import read_focus
from costmesh.billing.mapping import Mapper
from costmesh.billing.model import Usage
from costmesh.billing.pipeline import run as pipeline_run
from costmesh.common.config import Config
from costmesh.common.usage import Consumption, QueueUse

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
T0 = int(datetime(2024, 9, 1, tzinfo=UTC).timestamp()) * 1_000_000
QUEUE_WINDOW_US = Config().attributor.queue_window_s * 1_000_000
#: The engine before the single attribution model (two solvers, no queues on the bill).
PREVIOUS = "b85bdd1"
ROOT = Path(__file__).resolve().parent.parent


def generate(lines: int, customers: int, resources: int, seed: int) -> tuple[bytes, list[Usage]]:
    """Hourly lines (resource i % R, hour i // R) and per-day consumption: each resource has 3-20 tenant callers;
    one resource in ten is also called untagged by a gateway whose inbound mix propagates."""
    rng = np.random.default_rng(seed)
    idx = np.arange(lines, dtype=np.int64)
    res = idx % resources
    hour = idx // resources
    units = rng.integers(1, 100_000_000, lines)  # up to $100 per line, micro-precision
    units[rng.random(lines) < 0.01] *= -1  # credits
    sign = np.where(units < 0, "-", "")
    mag = np.abs(units)
    amount = np.char.add(
        np.char.add(np.char.add(sign, (mag // 1_000_000).astype(str)), "."),
        np.char.zfill((mag % 1_000_000).astype(str), 6),
    )
    start = T0 + hour * HOUR_US
    kinds = np.array(
        ["Amazon Relational Database Service", "Amazon Simple Queue Service", "Amazon Elastic Compute Cloud"]
    )
    tags = np.full(lines, "NULL", dtype=object)
    tagged = np.nonzero(rng.random(lines) < 0.02)[0]
    tags[tagged] = [f'{{"customer": "c{c:04d}"}}' for c in rng.integers(0, customers, len(tagged))]
    table = pa.table(
        {
            "BilledCost": pa.array(amount.astype(object)),
            "BillingCurrency": pa.array(np.full(lines, "USD", dtype=object)),
            "BillingPeriodStart": pa.array(np.full(lines, T0), pa.timestamp("us")),
            "ChargePeriodStart": pa.array(start, pa.timestamp("us")),
            "ChargePeriodEnd": pa.array(start + HOUR_US, pa.timestamp("us")),
            "ResourceId": pa.array(
                [f"arn:aws:rds:us-east-1:123456789012:db:res-{r:05d}" for r in range(resources)]
            ).take(pa.array(res)),
            "ServiceName": pa.array(kinds[res % 3].astype(object)),
            "Tags": pa.array(tags),
        }
    )
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    days = int(hour.max()) // 24 + 1
    usage: list[Usage] = []
    for r in range(resources):
        callers = rng.choice(customers, size=int(rng.integers(3, 21)), replace=False)
        for d in range(days):
            s = T0 + d * DAY_US
            for c in callers.tolist():
                usage.append(Usage(src_workload="api", dst=f"res-{r:05d}", tenant=f"c{c:04d}", tenant_method="header",
                                   start_us=s, end_us=s + DAY_US, busy_us=int(rng.integers(1, 1_000_000)),
                                   requests=1, bytes_out=int(rng.integers(1, 10**6))))  # fmt: skip
            if r % 10 == 0:
                usage.append(Usage(src_workload="gateway", dst=f"res-{r:05d}", start_us=s, end_us=s + DAY_US,
                                   busy_us=500_000, requests=1, bytes_out=10**5))  # fmt: skip
    for d in range(days):  # the gateway's inbound mix: five customers per day
        s = T0 + d * DAY_US
        for c in rng.choice(customers, size=5, replace=False).tolist():
            usage.append(Usage(src_workload="lb", dst="gateway", tenant=f"c{c:04d}", tenant_method="header",
                               start_us=s, end_us=s + DAY_US, requests=int(rng.integers(1, 100))))  # fmt: skip
    return buf.getvalue(), usage


def generate_queues(customers: int, resources: int, days: int, seed: int) -> tuple[list[Usage], list[QueueUse]]:
    """A worker with no tenant consumes ``jobs`` (produced by eight customers a day) and calls one resource in ten.
    From a generator of its own, so that the bill and the other rows stay those of the previous engine's run."""
    rng = np.random.default_rng(seed + 1)
    usage: list[Usage] = []
    queues: list[QueueUse] = []
    for d in range(days):
        s = T0 + d * DAY_US
        for c in rng.choice(customers, size=8, replace=False).tolist():
            queues.append(QueueUse(topic="jobs", role="producer", workload="api", tenant=f"c{c:04d}",
                                   tenant_method="header", start_us=s, end_us=s + DAY_US,
                                   requests=int(rng.integers(1, 1000))))  # fmt: skip
        queues.append(QueueUse(topic="jobs", role="consumer", workload="worker", start_us=s, end_us=s + DAY_US,
                               requests=5000))  # fmt: skip
        for r in range(5, resources, 10):
            usage.append(Usage(src_workload="worker", dst=f"res-{r:05d}", start_us=s, end_us=s + DAY_US,
                               busy_us=int(rng.integers(1, 1_000_000)), requests=1, bytes_out=10**4))  # fmt: skip
    return usage, queues


def previous_engine(rev: str, args: argparse.Namespace) -> str:
    """The benchmark of commit ``rev`` on the same seed and sizes, in a child process whose ``costmesh`` is that
    commit's tree (``git archive``); returns its output."""
    with tempfile.TemporaryDirectory(prefix="bench-previous-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "services", "loadtests"], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        os.symlink(Path(tmp) / "services", Path(tmp) / "costmesh")
        sizes = ["--lines", str(args.lines), "--customers", str(args.customers), "--resources", str(args.resources)]
        sizes += ["--seed", str(args.seed), "--baseline-lines", str(args.baseline_lines)]
        product = "--product" if args.product else "--no-product"
        bench = Path(tmp) / "loadtests" / "bench_allocation.py"
        if '"--previous"' in bench.read_text():  # a bench with peers of its own: not run again inside
            sizes += ["--previous", ""]
        cmd = [sys.executable, str(bench), *sizes, product]
        env = {**os.environ, "PYTHONPATH": tmp}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=1800)
        if done.returncode != 0:
            return f"previous engine failed: {done.stderr[-2000:]}"
        return done.stdout


def stage_figures(text: str) -> dict[str, float]:
    """``name  seconds s`` lines of a benchmark's output."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\S[\w/ ()-]*?)\s+([\d.]+) s\b", line)
        if m:
            out[m.group(1).strip()] = float(m.group(2))
    m = re.search(r"pipeline\.run \(allocate to Allocation rows\)\s+([\d.]+) s", text)
    if m:
        out["product pipeline.run"] = float(m.group(1))
    m = re.search(r"read_focus \(row reader\)\s+([\d.]+) s", text)
    if m:
        out["product read_focus"] = float(m.group(1))
    return out


def naive_baseline(data: bytes, usage: list[Usage], limit: int) -> tuple[float, int]:
    """Pure Python, Decimal: parse each row, scan that resource's consumption for the window, split with Decimal."""
    t = time.perf_counter()
    by_resource: dict[str, list[Usage]] = defaultdict(list)
    for u in usage:
        by_resource[u.dst].append(u)
    text = io.StringIO(data.decode())
    reader = csv.DictReader(text)
    done = 0
    micro = Decimal("0.000001")
    for row in reader:
        if done == limit:
            break
        amount = Decimal(row["BilledCost"].strip('"'))
        start = datetime.fromisoformat(row["ChargePeriodStart"].strip('"').replace("Z", "+00:00"))
        s = int(start.timestamp() * 1_000_000)
        e = s + HOUR_US
        name = row["ResourceId"].rsplit(":", 1)[-1]
        weights: dict[str, Decimal] = defaultdict(Decimal)
        for u in by_resource.get(name, ()):
            if u.start_us < e and u.end_us > s and u.tenant:
                weights[u.tenant] += Decimal(u.busy_us)
        total = sum(weights.values())
        if not total:
            done += 1
            continue
        parts = {k: (amount * w / total).quantize(micro, ROUND_DOWN) for k, w in weights.items()}
        rest = amount - sum(parts.values())
        remainders = sorted(weights, key=lambda k: amount * weights[k] / total - parts[k], reverse=True)
        i = 0
        while rest != 0:
            step = micro if rest > 0 else -micro
            parts[remainders[i % len(remainders)]] += step
            rest -= step
            i += 1
        done += 1
    return time.perf_counter() - t, done


def row_engine(data: bytes, usage: list[Usage], limit: int) -> tuple[float, int]:
    """The project's own per-line path on the first ``limit`` lines: FOCUS row reader, Mapper, Allocator."""
    head, *rest = data.split(b"\n", limit + 1)
    subset = b"\n".join([head, *rest[:limit]]) + b"\n"
    t = time.perf_counter()
    result = read_focus("subset.csv", data=subset)
    mapper = Mapper([], {u.dst for u in usage} | {u.src_workload for u in usage})
    targets, _ = mapper.map_all(result.lines)
    Allocator(usage, internal={"api", "gateway", "lb", "worker"}).allocate_all(result.lines, targets)
    return time.perf_counter() - t, len(result.lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--resources", type=int, default=2000)
    parser.add_argument("--baseline-lines", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=random.randrange(2**32))
    parser.add_argument(
        "--previous", default=PREVIOUS, help="git revisions of earlier engines, comma-separated ('' for none)"
    )
    parser.add_argument(
        "--product",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time pipeline.run (the product path) on the whole bill",
    )
    args = parser.parse_args()
    print(f"seed {args.seed}: {args.lines:,} lines, {args.customers:,} customers, {args.resources:,} resources")
    stages: dict[str, float] = {}

    t = time.perf_counter()
    data, usage = generate(args.lines, args.customers, args.resources, args.seed)
    days = (args.lines // args.resources) // 24 + 1
    worker_usage, queues = generate_queues(args.customers, args.resources, days, args.seed)
    usage += worker_usage
    stages["generate"] = time.perf_counter() - t
    print(f"  generated {len(data) / 1e6:.0f} MB of FOCUS CSV, {len(usage):,} consumption rows, {len(queues):,} "
          f"queue rows (a worker without tenant works off 'jobs' and calls {len(worker_usage) // days:,} "
          "resources a day)")  # fmt: skip

    t = time.perf_counter()
    cols = read_focus_columns("bench.csv", data=data)
    stages["ingest/parse"] = time.perf_counter() - t
    assert len(cols) == args.lines and not cols.problems, cols.problems[:3]

    t = time.perf_counter()
    names = {u.dst for u in usage} | {u.src_workload for u in usage} | {q.workload for q in queues}
    mapper = Mapper([], names)
    targets = [mapper.map(d) for d in cols.descriptors]
    stages["map"] = time.perf_counter() - t

    inner: dict[str, float] = {}
    t = time.perf_counter()
    internal = {"api", "gateway", "lb", "worker"}
    result = allocate_columns(cols, usage, mapper, targets=targets, timings=inner, internal=internal, queues=queues,
                              queue_window_us=QUEUE_WINDOW_US)  # fmt: skip
    total = time.perf_counter() - t
    stages["allocate"] = total - inner["split"]
    stages["round"] = inner["split"]

    t = time.perf_counter()
    assert result.units.dtype == np.int64 and int(np.abs(result.units).max()) < 2**53
    sums = np.bincount(result.line, weights=result.units.astype(np.float64), minlength=len(cols))
    assert np.array_equal(sums.astype(np.int64), cols.units), "a line's parts do not sum to its amount"
    per_key = np.bincount(result.key, weights=result.units.astype(np.float64), minlength=len(result.keys))
    customers = {k[0] for k in result.keys if k[0]}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "allocations.parquet"
        pq.write_table(pa.table({"line": result.line, "key": result.key, "units": result.units}), out)
        size = out.stat().st_size
    stages["store-or-serialize"] = time.perf_counter() - t
    assert int(per_key.sum()) == int(cols.units.sum())

    measured = sum(v for k, v in stages.items() if k != "generate")
    rows = len(result.line)
    print(f"  {rows:,} allocation rows, {len(customers):,} customers charged, parquet {size / 1e6:.0f} MB")
    print(f"  {len(set(result.group_basis))} bases, {len(result.group_basis):,} share groups; all lines sum exactly")
    propagated = float(per_key[[i for i, k in enumerate(result.keys) if k[3] == "propagated"]].sum()) / 1e6
    unallocated = float(per_key[[i for i, k in enumerate(result.keys) if k[3] == "unallocated"]].sum()) / 1e6
    print(f"  propagated (gateway and queue worker) {propagated:,.2f} USD, unallocated {unallocated:,.2f} USD")
    for name, seconds in stages.items():
        print(f"  {name:<20} {seconds:8.2f} s")
    print(f"  {'total (no generate)':<20} {measured:8.2f} s   target < 60 s: {'PASS' if measured < 60 else 'FAIL'}")

    product_s = read_s = None
    if args.product:
        del result  # the product path holds its own rows
        t = time.perf_counter()
        lines = read_focus("bench.csv", data=data).lines
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        run = pipeline_run(lines, Consumption(usage=usage, queues=queues), Config())
        product_s = time.perf_counter() - t
        assert len(run.allocations) == rows, (len(run.allocations), rows)
        assert sum(a.amount for a in run.allocations) == sum(line.amount for line in lines)
        both = read_s + product_s
        print(f"  product path: read_focus (row reader) {read_s:8.2f} s, pipeline.run (allocate to Allocation rows) "
              f"{product_s:8.2f} s, read included {both:8.2f} s   "
              f"target < 60 s: {'PASS' if both < 60 else 'FAIL'}")  # fmt: skip
        del run, lines

    revisions = [r for r in args.previous.split(",") if r]
    if revisions:
        print(f"  earlier engines ({', '.join(revisions)}), same seed, same bill (before {PREVIOUS} no queue traffic "
              "in the input):")  # fmt: skip
        texts = {rev: previous_engine(rev, args) for rev in revisions}
        old = {rev: stage_figures(text) for rev, text in texts.items()}
        new = {**stages, **({"product pipeline.run": product_s, "product read_focus": read_s} if product_s else {})}
        new["total (no generate)"] = measured
        if product_s is not None and read_s is not None:
            new["product read + run"] = read_s + product_s
        for figures in old.values():
            if "product read_focus" in figures and "product pipeline.run" in figures:
                figures["product read + run"] = figures["product read_focus"] + figures["product pipeline.run"]
        print(f"  {'stage':<22} {'this engine':>12}" + "".join(f" {rev:>12}" for rev in revisions))
        names = [*stages, "total (no generate)", "product read_focus", "product pipeline.run", "product read + run"]
        for name in names:
            mine = f"{new[name]:.2f} s" if new.get(name) is not None else "-"
            theirs = "".join(f" {old[rev][name]:>10.2f} s" if name in old[rev] else f" {'-':>12}" for rev in revisions)
            print(f"  {name:<22} {mine:>12}{theirs}")
        for rev, text in texts.items():
            for line in text.splitlines():
                if "allocation rows" in line or "failed" in line:
                    print(f"  {rev}:" + line)
    naive_s, naive_n = naive_baseline(data, usage, args.baseline_lines)
    naive_full = naive_s / naive_n * args.lines
    row_s, row_n = row_engine(data, usage, args.baseline_lines)
    row_full = row_s / row_n * args.lines
    print(f"  naive pure-Python Decimal: {naive_s:.2f} s for {naive_n:,} lines → {naive_full:,.0f} s projected; "
          f"vectorised is {naive_full / measured:,.1f}x faster")  # fmt: skip
    print(f"  row engine (read_focus + Allocator per line): {row_s:.2f} s for {row_n:,} lines → {row_full:,.0f} s "
          f"projected; vectorised is {row_full / measured:,.1f}x faster")  # fmt: skip
    if product_s is not None and read_s is not None:
        print(f"  product path, read_focus + pipeline.run: {read_s + product_s:,.2f} s vs row engine {row_full:,.0f} s "
              f"projected: {row_full / (read_s + product_s):,.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
