"""Benchmark: ObservedCall records applied per second from JetStream into PostgreSQL by the attributor.

Starts a real nats-server and a real PostgreSQL on loopback (both on this machine), publishes synthetic batches
(``attributor.synth``: 500 records each, mid-size SaaS cardinality), then measures, in the same run:

- **attributor**: the real consumer loop (``service.main``: fetch, decode, COPY into staging, merges, commit, ack)
  draining the stream, records/s from its start to the last commit;
- **baseline JetStream consume**: a bare pull consumer on the same stream that fetches (the same byte-bounded pulls
  as the attributor) and acks, without decoding;
- **baseline asyncpg COPY**: ``copy_records_to_table`` of the same records (as tuples) into a plain table.

Target: at least 300,000 records/s. Usage: ``python loadtests/bench_attributor.py [--batches 2000] [--records 500]
[--fetch N] [--fold-processes N] [--per-second 600] [--runs 1]``. Without ``--fetch``/``--fold-processes`` the
attributor runs with the shipped config defaults (``attributor.fetch_batch``, ``attributor.fold_processes``).
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import tempfile
import time
from pathlib import Path

import asyncpg
import nats
from nats.errors import TimeoutError as NatsTimeout

from costmesh.attributor import service
from costmesh.attributor.synth import generate
from costmesh.common import natsio
from costmesh.common.config import AttributorConfig, Config, NatsConfig
from costmesh.common.embedded import EmbeddedNats, EmbeddedPostgres
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS, Codec

TARGET = 300_000
#: One row per record for the COPY baseline: the record's key and counters, as a plain ingest would store them.
RECORD_COLUMNS = (
    "window_start_us",
    *CONSUMPTION_KEY,
    "operation",
    *COUNTERS,
)


async def publish(js, batches) -> float:
    start = time.perf_counter()
    for i in range(0, len(batches), 100):
        await asyncio.gather(
            *(natsio.publish_batch(js, "costmesh.events.bench", bid, data) for bid, data in batches[i : i + 100])
        )
    return time.perf_counter() - start


async def raw_consume(js, stream: str, n_batches: int, fetch: int) -> float:
    await natsio.ensure_consumer(js, stream, "raw-baseline")
    sub = await js.pull_subscribe(natsio.EVENTS_WILDCARD, durable="raw-baseline", stream=stream)
    got = 0
    start = time.perf_counter()
    sizer = service.PullSizer()
    while got < n_batches:
        try:
            msgs = await service.fetch_group(sub, fetch, sizer)  # the attributor's byte-bounded pulls
        except NatsTimeout:
            continue
        await asyncio.gather(*(m.ack_sync() for m in msgs))
        got += len(msgs)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed


async def raw_copy(dsn: str, batches) -> tuple[float, int]:
    codec = Codec()
    as_row = operator.attrgetter(*RECORD_COLUMNS)
    rows = [as_row(r) for _bid, data in batches for r in codec.decode_batch(data).records]
    conn = await asyncpg.connect(dsn)
    try:
        numeric = {"window_start_us", *COUNTERS}
        columns = ", ".join(f"{c} {'bigint' if c in numeric else 'text'}" for c in RECORD_COLUMNS)
        await conn.execute(f"CREATE TABLE copy_baseline ({columns})")
        start = time.perf_counter()
        for i in range(0, len(rows), 32_000):
            await conn.copy_records_to_table("copy_baseline", records=rows[i : i + 32_000], columns=RECORD_COLUMNS)
        return time.perf_counter() - start, len(rows)
    finally:
        await conn.close()


def _pg_cpu(pg: EmbeddedPostgres) -> float:
    """CPU seconds used so far by the PostgreSQL server and its backends."""
    import psutil

    root = psutil.Process(pg.proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


async def run(n_batches: int, per_batch: int, fetch: int, per_second: int, fold_processes: int = 0) -> float:
    print(f"--- run (load average {os.getloadavg()[0]:.2f})")
    with tempfile.TemporaryDirectory(prefix="costmesh-bench-") as tmp:
        ns = EmbeddedNats(Path(tmp) / "nats").start()
        pg = EmbeddedPostgres(Path(tmp) / "pg", durable=True).start()
        try:
            cfg = Config(node="bench")
            cfg.nats = NatsConfig(url=ns.url)
            cfg.attributor.fetch_batch = fetch
            cfg.attributor.fold_processes = fold_processes
            # windows from a minute ago on: rows land in today's partition, and no minute settles (is rolled up and
            # resolved) during the measurement, which times the ingest path alone
            start_us = (int(time.time()) // 60 - 1) * 60 * 1_000_000
            batches, oracle = generate(n_batches, per_batch, seed=3, start_us=start_us, batches_per_second=per_second)
            nc = await nats.connect(ns.url)
            js = nc.jetstream()
            await natsio.ensure_stream(js, cfg.nats)
            pub_s = await publish(js, batches)
            records = oracle.records
            print(f"published {n_batches} batches x {per_batch} = {records} records in {pub_s:.2f} s")

            ctx = ServiceContext("attributor", cfg, ns.url, pg.dsn)
            task = asyncio.create_task(service.main(ctx))
            while not ctx.ready:
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            cpu0 = time.process_time()
            pg_cpu0 = _pg_cpu(pg)
            while int(ctx.health.get("applied_batches", 0)) < n_batches:
                if task.done():
                    task.result()  # raises what stopped the attributor
                    raise RuntimeError("the attributor stopped before applying everything")
                await asyncio.sleep(0.01)
            attr_s = time.perf_counter() - start
            py_cpu = time.process_time() - cpu0
            pg_cpu = _pg_cpu(pg) - pg_cpu0
            print(f"attributor CPU: Python {py_cpu:.2f} s, PostgreSQL backends {pg_cpu:.2f} s, wall {attr_s:.2f} s")
            ctx.stopping.set()
            await task

            consume_s = await raw_consume(js, cfg.nats.stream, n_batches, fetch)
            await nc.close()
            copy_s, copied = await raw_copy(pg.dsn, batches)
        finally:
            pg.stop()
            ns.stop()
    attr_rate = records / attr_s
    consume_rate = records / consume_s
    copy_rate = copied / copy_s
    print(f"attributor applied      {attr_rate:>12,.0f} records/s  ({attr_s:.2f} s)")
    print(f"baseline JetStream pull {consume_rate:>12,.0f} records/s  (fetch {fetch} + ack, no decode)")
    print(f"baseline asyncpg COPY   {copy_rate:>12,.0f} records/s  (same rows, plain table)")
    print(f"ratio attributor/JetStream {attr_rate / consume_rate:.2f}, attributor/COPY {attr_rate / copy_rate:.2f}")
    print(f"target {TARGET:,} records/s: {'met' if attr_rate >= TARGET else 'NOT met'}")
    return attr_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--records", type=int, default=500)
    defaults = AttributorConfig()
    parser.add_argument(
        "--fetch", type=int, default=defaults.fetch_batch, help="messages fetched (and applied) per transaction"
    )
    parser.add_argument(
        "--per-second",
        type=int,
        default=600,
        help="batches per second of event time (600 x 500 records = a node fleet sending 300k records/s live; "
        "fewer spreads the same records over more minutes, as when draining a backlog of a quieter system)",
    )
    parser.add_argument(
        "--fold-processes",
        type=int,
        default=defaults.fold_processes,
        help="attributor.fold_processes (0: a thread of the consumer)",
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement; the best run is summarised")
    args = parser.parse_args()
    print(
        f"fetch {args.fetch} messages per transaction, {args.per_second} batches per second of event time, "
        f"{args.fold_processes} fold processes"
    )
    results = [
        asyncio.run(run(args.batches, args.records, args.fetch, args.per_second, args.fold_processes))
        for _ in range(args.runs)
    ]
    if args.runs > 1:
        best = max(results)
        print(f"best of {args.runs}: {best:,.0f} records/s; all: {', '.join(f'{r:,.0f}' for r in results)}")


if __name__ == "__main__":
    main()
