"""Benchmark: runaway-AI-cost alert latency, from the call to the Slack message, end to end.

Starts a real nats-server and a real PostgreSQL on loopback, a local Slack-like webhook (``tests/slack_like.py``: it
answers ``ok`` and records each message's arrival), and the real ``costmesh redactor`` and ``costmesh attributor`` as
separate processes with one budget rule for every scope. This process plays the sensors: every 1-s window it counts
the AI calls seen in it per scope and, when the window closes, sends the window's ``ObservedCall`` records (batches
of 500) to the redactor as a sensor does; the redactor publishes them to JetStream, the attributor applies them to
PostgreSQL, its alerting leader judges the windows and posts to Slack.

Load: ``--calls`` AI calls/s (default 5,000) in total, spread uniformly over ``--scopes`` scopes (default 10,000:
1,000 tenants x 5 features x 2 agents) at $0.001 a call, far under the $10/h budget. Every ``--every`` seconds
(default 2.0) one more scope turns runaway: a new agent of a random tenant starts 10 calls/s at $0.01 a call, and
keeps at it (the calls of the runaway scopes come out of the total, so the load stays at ``--calls``/s).

Latency of one runaway: from the call after which its spend over 55 s (the shortest span of the 60-s window on
5-s buckets, so the earliest moment any evaluation could find it over budget) exceeds the budget, to the arrival of
its Slack message. Printed: p50/p95/p99 of it and, as the peer figure from the same run, of the part the sensor's
1-s window holds (call → window close): what remains is NATS, the redactor, JetStream, the attributor's apply, the
detector and the Slack delivery. Also: runaways found, missed, alerts for scopes that were not runaway (must be 0).

Usage: ``python loadtests/bench_alerts.py [--seconds 150] [--calls 5000] [--scopes 10000] [--every 2.0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats

from costmesh.common import natsio
from costmesh.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from costmesh.common.schemas import CallBatch, Codec, ObservedCall

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.slack_like import SlackLike  # noqa: E402 - the tests' receiver, beside the repository

BUDGET = 10_000_000  # µ$/h: $10/h
CALL_MICROS = 1_000
RUNAWAY_MICROS = 10_000
RUNAWAY_PER_S = 10
#: The spend over the shortest span the 60-s window can cover (55 s) that exceeds the budget.
CROSSING_MICROS = BUDGET * 55 // 3600
NODE = "bench-node"

CONFIG = """
node = "{node}"
log_level = "warning"
[nats]
url = "{nats}"
[postgres]
dsn = "{dsn}"
[slack]
webhook_url_env = "BENCH_SLACK_URL"
[[prices]]
provider = "bench"
model = "m"
input_micros_per_mtok = 1000000
output_micros_per_mtok = 0
[[alert_rules]]
budget_micros_per_hour = {budget}
window_s = 60
"""


async def _watch_backlog(nc, samples: list[int]) -> None:
    js = nc.jetstream()
    while True:
        await asyncio.sleep(2)
        try:
            info = await js.consumer_info("COSTMESH_EVENTS", "attributor")
            samples.append(info.num_pending + info.num_ack_pending)
        except Exception:  # not created yet
            continue


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its children so far (PostgreSQL: the server and its backends)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


class Load:
    """The calls of every window, and the ground truth of each runaway's crossing time."""

    def __init__(self, calls: int, scopes: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.calls = calls
        self.scopes = [(f"t{i // 10}", f"f{i // 2 % 5}", f"a{i % 2}") for i in range(scopes)]
        self.runaways: dict[tuple[str, str, str], float] = {}  # scope → start time
        self.spent: dict[tuple[str, str, str], int] = {}
        self.crossed: dict[tuple[str, str, str], float] = {}
        self.window_wait: dict[tuple[str, str, str], float] = {}

    def add_runaway(self, now: float) -> None:
        tenant = f"t{self.rng.randrange(len(self.scopes) // 10)}"
        scope = (tenant, "f0", f"runaway-{len(self.runaways)}")
        self.runaways[scope] = now
        self.spent[scope] = 0

    def window(self, start: float) -> list[ObservedCall]:
        """The records of the window ``[start, start + 1)``; runaway crossings are noted with their call time."""
        records = []
        steady = self.calls - RUNAWAY_PER_S * len(self.runaways)
        counts = Counter(self.rng.choices(range(len(self.scopes)), k=max(steady, 0)))
        us = int(start * 1_000_000)
        for i, n in counts.items():
            records.append(self._record(us, self.scopes[i], n, CALL_MICROS))
        for scope in self.runaways:
            for k in range(RUNAWAY_PER_S):
                self.spent[scope] += RUNAWAY_MICROS
                if scope not in self.crossed and self.spent[scope] > CROSSING_MICROS:
                    at = start + (k + 0.5) / RUNAWAY_PER_S  # calls spread over the window
                    self.crossed[scope] = at
                    self.window_wait[scope] = start + 1 - at
            records.append(self._record(us, scope, RUNAWAY_PER_S, RUNAWAY_MICROS))
        return records

    @staticmethod
    def _record(us: int, scope: tuple[str, str, str], n: int, micros: int) -> ObservedCall:
        tenant, feature, agent = scope
        return ObservedCall(
            window_start_us=us, window_end_us=us + 1_000_000, node=NODE, src_workload="app", dst="api.bench",
            protocol="http", tenant=tenant, tenant_method="header", feature=feature, agent=agent, requests=n,
            provider="bench", model="m", tokens_in=n * micros,
        )  # fmt: skip


async def sensor(nc, load: Load, seconds: float, every: float, warmup: float) -> int:
    """Send each window's records when it closes; start a runaway every ``every`` s after ``warmup``."""
    codec = Codec()
    seq = 0
    sent = 0
    begin = float(int(time.time()) + 1)
    next_runaway = begin + warmup
    for w in range(int(seconds)):
        start = begin + w
        while time.time() < start + 1:  # the window is open: calls happen; it closes at start + 1
            await asyncio.sleep(min(0.05, max(start + 1 - time.time(), 0)))
            while time.time() >= next_runaway and time.time() < begin + seconds - 20:
                load.add_runaway(next_runaway)
                next_runaway += every
        records = load.window(start)
        batches = []
        for i in range(0, len(records), 500):
            seq += 1
            batch = CallBatch(batch_id=f"{NODE}-{seq}", node=NODE, seq=seq, records=records[i : i + 500])
            batches.append(nc.request(natsio.RAW_SUBJECT.format(node=NODE), codec.encode(batch), timeout=10))
        replies = await asyncio.gather(*batches)
        assert all(r.data == b"ok" for r in replies), [r.data for r in replies if r.data != b"ok"][:1]
        sent += len(records)
    return sent


_SCOPE = re.compile(r"\*Scope\*\ntenant (\S+), feature (\S+), agent (\S+)")


async def run(seconds: float, calls: int, scopes: int, every: float) -> None:
    with tempfile.TemporaryDirectory(prefix="costmesh-bench-alerts-") as tmp:
        ns = EmbeddedNats(Path(tmp) / "nats").start()
        pg = EmbeddedPostgres(Path(tmp) / "pg", durable=True).start()
        hook = await SlackLike().start()
        config = Path(tmp) / "costmesh.toml"
        config.write_text(CONFIG.format(node=NODE, nats=ns.url, dsn=pg.dsn, budget=BUDGET))
        env = dict(os.environ, BENCH_SLACK_URL=hook.url)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "costmesh.cli",
                    name,
                    "--config",
                    str(config),
                    "--metrics-port",
                    str(free_port()),
                ],
                env=env,
            )
            for name in ("attributor", "redactor")
        ]
        try:
            nc = await nats.connect(ns.url)
            probe = Codec().encode(CallBatch(batch_id=f"{NODE}-probe", node=NODE, seq=0))  # an empty batch
            for _ in range(200):  # the redactor answers once it is subscribed
                try:
                    await nc.request(natsio.RAW_SUBJECT.format(node=NODE), probe, timeout=0.2)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            load = Load(calls, scopes, seed=7)
            print(f"load: {calls:,} AI calls/s over {scopes:,} scopes for {seconds:.0f} s; a runaway every {every} s")
            t0 = time.perf_counter()
            cpu0 = {name: _cpu(pid) for name, pid in (("attributor", procs[0].pid), ("redactor", procs[1].pid),
                                                       ("postgres", pg.proc.pid))}  # fmt: skip
            backlog: list[int] = []
            watcher = asyncio.create_task(_watch_backlog(nc, backlog))
            sent = await sensor(nc, load, seconds, every, warmup=15)
            watcher.cancel()
            wall = time.perf_counter() - t0
            print(f"sent {sent:,} records in {wall:.1f} s (load average {os.getloadavg()[0]:.2f})")
            pids = {"attributor": procs[0].pid, "redactor": procs[1].pid, "postgres": pg.proc.pid}
            used = ", ".join(f"{n} {(_cpu(pid) - cpu0[n]) / wall:.2f}" for n, pid in pids.items())
            print(f"CPU cores used during the load: {used}")
            print(f"attributor backlog (stream messages not yet acknowledged, sampled each 2 s): max {max(backlog)}, "
                  f"median {statistics.median(backlog)}")  # fmt: skip
            await asyncio.sleep(10)  # the last runaways' messages
            await nc.close()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
            await hook.stop()
            pg.stop()
            ns.stop()
    arrived: dict[tuple[str, str, str], float] = {}
    strays = 0
    for msg in hook.accepted:
        fields = [f["text"] for b in msg.body.get("blocks", []) for f in b.get("fields", [])]
        for tenant, feature, agent in (m.groups() for f in fields if (m := _SCOPE.match(f))):
            scope = (tenant, feature, agent)
            if scope in load.crossed:
                arrived.setdefault(scope, msg.at)
            else:
                strays += 1
    latencies = [arrived[s] - load.crossed[s] for s in arrived]
    waits = [load.window_wait[s] for s in arrived]
    missed = len(load.crossed) - len(arrived)
    print(f"runaways {len(load.runaways)}, crossed {len(load.crossed)}, alerted {len(arrived)}, missed {missed}")
    kinds = Counter(m.body["text"].split("]", 1)[0].lstrip("[").split(":")[0] for m in hook.accepted)
    print(f"Slack messages {len(hook.accepted)} ({dict(kinds)}), for scopes that were not runaway: {strays}")
    if latencies:
        for name, values in (("call → Slack (end to end)", latencies), ("call → window close (sensor)", waits)):
            print(
                f"{name:<30} p50 {percentile(values, 50):.2f} s  p95 {percentile(values, 95):.2f} s  "
                f"p99 {percentile(values, 99):.2f} s  max {max(values):.2f} s  mean {statistics.mean(values):.2f} s"
            )
        p95 = percentile(latencies, 95)
        print(f"target p95 < 5 s: {'met' if p95 < 5 and missed == 0 and strays == 0 else 'NOT met'} ({p95:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--scopes", type=int, default=10000)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.calls, args.scopes, args.every))


if __name__ == "__main__":
    main()
