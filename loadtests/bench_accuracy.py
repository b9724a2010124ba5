"""Accuracy benchmark: costmesh's cost per customer against ground truth, with the splits a spreadsheet would use.

Each scenario runs the demo SaaS (``costmesh.demo``) for real on loopback: every workload a process on its own
127.0.0.x address, a real PostgreSQL, a queue with a producer and a worker, a background job, an OpenAI-compatible
model endpoint over HTTP and HTTPS (JSON and SSE with ``include_usage``). costmesh captures it live with eBPF where
the kernel allows (replay of a recording otherwise; the mode is printed), the run's bill is imported and allocated,
and the allocation is compared per customer with the truth.

The truth is what the SaaS's own parts measured as they ran, never what costmesh observed. Per bill line:
- RDS (database): each tenant's share of PostgreSQL server time, summed from PostgreSQL's own statement durations
  (``log_min_duration_statement = 0``) of the sessions opened on the tenant's behalf, including the sessions the
  queue worker opens for the tenant of the job it handles; the background job's statements are platform work.
- node (EC2 running gateway, orders, assistant, worker, background job): each tenant's share of server time the
  node's workloads spent for it (request handling from handler entry to response, job handling in the worker); the
  background job's runs are platform. Server time is the capacity held, not CPU time (CPU per tenant is not measured).
- NAT gateway bytes: each tenant's share of HTTP bytes exchanged with the external model endpoint (counted at its
  socket: requests as received, responses as sent, headers and framing included; TLS overhead not counted).
- queue: each tenant's share of the bytes of the queue API calls made for its messages (send, delivery, deletion),
  counted at the queue's socket; receives that found nothing are platform work.
- OpenAI input tokens / output tokens: each tenant's input (prompt) tokens and output (completion) tokens as the model
  endpoint counted and billed them, joined to the tenant by the request id the caller sent.

Methods beside costmesh: ``even`` (every line split evenly over the customers) and ``requests`` (every line split by
requests at the edge, as counted by the clients). Error per customer = (method − truth) / truth over its whole bill.
Targets: 1% per customer with the tenant on the call, 3% where it is propagated (through two hops, or the queue);
at least 99% of the bill attributed or explicitly modeled (platform).

Run (as root for live capture): ``.venv/bin/python loadtests/bench_accuracy.py [--scenario NAME ...] [--json FILE]``;
``--replay`` records and replays instead of capturing live; ``--snaplen N`` overrides the demo config's capture
length (the shipped default is 512).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from costmesh.demo.accuracy import ScenarioAccuracy, assess, render_scenario, render_summary
from costmesh.demo.run import DEMO_SNAPLEN, DemoRun
from costmesh.demo.scenarios import SCENARIOS, SMALL

HERE = Path(__file__).resolve().parent


def run_scenario(name: str, *, replay: bool, keep: Path | None, snaplen: int) -> ScenarioAccuracy:
    scenario = SMALL if name == SMALL.name else SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix=f"costmesh-accuracy-{name}-") as tmp:
        work = keep / name if keep else Path(tmp)
        with DemoRun(scenario, work, force_replay=replay, snaplen=snaplen) as run:
            result = run.run(timeout_s=300)  # a loaded machine (several engineers) takes a while to roll up
    return assess(
        result,
        title=scenario.title,
        mode=scenario.mode,
        target_pct=scenario.target_pct,
        customers=[t.name for t in scenario.tenants],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, SMALL.name], help="default: all")
    parser.add_argument("--json", type=Path, default=HERE / "accuracy.json", help="where the results go")
    parser.add_argument("--replay", action="store_true", help="record and replay instead of capturing live")
    parser.add_argument("--snaplen", type=int, default=DEMO_SNAPLEN, help=f"sensor.snaplen (default {DEMO_SNAPLEN})")
    parser.add_argument("--keep", type=Path, help="keep each run's folder (logs, truth, capture) under this one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results = []
    started = time.monotonic()
    for name in args.scenario or list(SCENARIOS):
        t0 = time.monotonic()
        accuracy = run_scenario(name, replay=args.replay, keep=args.keep, snaplen=args.snaplen)
        results.append(accuracy)
        print(render_scenario(accuracy), flush=True)
        print(f"  ({time.monotonic() - t0:.0f} s)\n", flush=True)
    print(render_summary(results))
    print(f"\n{len(results)} scenarios in {time.monotonic() - started:.0f} s; results in {args.json}")
    doc = {"snaplen": args.snaplen, "scenarios": msgspec.to_builtins(results)}
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(a.passed for a in results) else 1


if __name__ == "__main__":
    sys.exit(main())
