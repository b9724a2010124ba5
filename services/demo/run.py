"""One demo run, end to end: the SaaS's database, the costmesh stack (embedded NATS and PostgreSQL, every service,
the sensor capturing live on ``lo``), the SaaS's workloads and clients, the bill, the allocation; then what
costmesh allocated beside the truth.

Capture mode: ``live`` when the sensor's eBPF programs load (HTTPS read through the OpenSSL uprobes); otherwise
``replay``: the traffic is recorded from a packet socket while it runs (all model calls then go over plain HTTP, since
a capture cannot show what TLS hides) and the sensor replays the recording through the same parsing code. Which mode
ran, and why, is in the result.

``DemoRun`` is a context manager: the stack stays up after ``run()`` so that the caller can print, serve the
console (``console_url``) and only then stop it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import asyncpg
import msgspec

from costmesh.common.config import load_config
from costmesh.common.embedded import free_port
from costmesh.common.supervisor import Stack, http_json

from .bill import LINES, Bill, hour_of, make_bill, revenue_csv, write_bill
from .costmesh_config import write_config
from .errors import CaptureUnavailable, DemoError
from .recorder import Recorder, RecorderUnavailable
from .saas import Saas
from .scenarios import Scenario
from .truth import Edge, Truth, read_events

log = logging.getLogger(__name__)

#: The sensor's capture length in the demo's config. With the shipped default (512 payload bytes) the sensor loses
#: the ReadyForQuery of PostgreSQL responses longer than that (the cut segment's tail is never accounted for): on the
#: on-call scenario it counted 2,573 of 3,484 queries and 750 s of server time for the 2.7 s PostgreSQL spent. The
#: demo captures whole segments until the sensor accounts for cut ones; ``bench_accuracy.py --snaplen 512`` shows it.
DEMO_SNAPLEN = 65535

#: What costmesh allocated: per bill line (its key in ``bill.LINES``), per tenant ("" when none), per method.
Allocated = dict[str, dict[str, dict[str, Decimal]]]


class RunResult(msgspec.Struct):
    scenario: str
    capture: str  # "live" or "replay"
    capture_note: str
    truth: Truth
    bill: Bill
    allocated: Allocated
    pnl: dict
    traffic_s: float
    failed_requests: int
    ring_drops: int


class DemoRun:
    def __init__(
        self,
        scenario: Scenario,
        work_dir: Path,
        *,
        api_port: int = 0,
        force_replay: bool = False,
        snaplen: int = DEMO_SNAPLEN,
    ) -> None:
        self.scenario = scenario
        self.snaplen = snaplen
        self.work_dir = Path(work_dir)
        self.api_port = api_port or free_port()
        self.force_replay = force_replay
        self.saas = Saas(scenario, self.work_dir / "saas")
        self.stack: Stack | None = None
        self.config_path = self.work_dir / "costmesh.toml"
        self.bills = self.work_dir / "bills"
        self.revenue = self.work_dir / "revenue.csv"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def console_url(self) -> str:
        return self.base_url + "/"

    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.saas.stop()
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self, timeout_s: float = 100.0) -> RunResult:
        """Run the scenario once, within ``timeout_s`` of waiting; the stack stays up until ``close``."""
        deadline = time.monotonic() + timeout_s
        self.saas.start_database()
        plan = self.saas.plan
        self.bills.mkdir(parents=True, exist_ok=True)
        self.revenue.write_text(revenue_csv(plan, hour_of(time.time())))
        write_config(
            plan, self.config_path, api_port=self.api_port, bills=self.bills, revenue=self.revenue, snaplen=self.snaplen
        )
        config = load_config(self.config_path)
        self.stack = Stack(config, str(self.config_path), self.work_dir / "costmesh", [], api_port=self.api_port)
        self.stack.start()
        capture, note = self._capture_mode(deadline)
        recorder = None
        if capture == "replay":
            self.stack.stop_child("sensor")  # it may be capturing (--replay asked for): the recording is the input
            self.saas.plan_all_plain_http()
            recorder = Recorder(self.work_dir / "traffic.pcap", set(plan.addresses.values()))
            recorder.start()
        self.saas.start_workloads()
        self.saas.run_clients()
        self.saas.drain_queue()
        time.sleep(0.5)  # the last responses' segments
        self.saas.stop()
        if recorder is not None:
            recorder.stop()
            self.stack.replay_in_sensor([str(recorder.path)])
        published = self._wait_applied(deadline, live=capture == "live")
        truth = self.saas.truth()
        bill = make_bill(truth, self.saas.started_at, self.saas.ended_at)
        write_bill(bill, plan, self.bills, self.revenue)
        self._wait_allocation(bill.period, deadline)
        allocated = asyncio.run(read_allocations(self.stack.dsn, bill.period))
        pnl = http_json(f"{self.base_url}/v1/pnl?period={bill.period}")
        failed = sum(isinstance(e, Edge) and e.status >= 400 for e in read_events(self.saas.run_dir))
        log.info("demo run done", extra={"batches": published})
        return RunResult(
            scenario=self.scenario.name,
            capture=capture,
            capture_note=note,
            truth=truth,
            bill=bill,
            allocated=allocated,
            pnl=pnl,
            traffic_s=round(self.saas.ended_at - self.saas.started_at, 2),
            failed_requests=failed,
            ring_drops=int(self.stack.health("sensor").get("ring_drops", 0)),
        )

    def _capture_mode(self, deadline: float) -> tuple[str, str]:
        """Wait for the sensor to say whether it captures live; ``replay`` when it cannot (or when asked)."""
        assert self.stack is not None
        while True:
            health = self.stack.health("sensor")
            live = str(health.get("live", ""))
            if live:
                break
            if time.monotonic() > deadline:
                raise DemoError("the sensor did not start capturing")
            time.sleep(0.1)
        plain = "the traffic recorded from a packet socket, model calls over plain HTTP"
        if self.force_replay:
            return "replay", f"asked for; {plain}"
        if live == "capturing":
            tls = str(health.get("tls", ""))
            how = "unavailable" if tls.startswith("unavailable") else "through OpenSSL uprobes in assistant and worker"
            return "live", f"eBPF socket filter on lo; HTTPS {how}"
        try:
            Recorder.check()
        except RecorderUnavailable as exc:
            raise CaptureUnavailable(f"cannot capture at all: eBPF {live}; packet socket: {exc}") from None
        return "replay", f"eBPF {live}; {plain}"

    def _wait_applied(self, deadline: float, *, live: bool) -> int:
        """Wait until the attributor applied every batch the sensor published for the run's traffic: live, what was
        published 3 s after the traffic ended (windows close each second, ring blocks within 250 ms); replayed,
        everything once the replay is done."""
        assert self.stack is not None
        base = self.base_url
        if live:
            time.sleep(3.0)
        while True:
            sensor = self.stack.health("sensor")
            if live or sensor.get("replay_done"):
                break
            self._check_time(deadline, "the sensor's replay")
            time.sleep(0.2)
        published = int(sensor.get("batches_published", 0))
        while http_json(base + "/v1/ingest")["applied_batches"] < published:
            self._check_time(deadline, "the attributor")
            time.sleep(0.2)
        return published

    def _wait_allocation(self, period: str, deadline: float) -> None:
        """Wait for the attributor's hourly rollups of everything applied (a maintenance pass that started after),
        then for an allocation run that started after the bill was written: in both, the pass going on now may have
        read the store before."""
        assert self.stack is not None
        passes = int(self.stack.health("attributor").get("maintenance_passes", 0))
        while int(self.stack.health("attributor").get("maintenance_passes", 0)) < passes + 2:
            self._check_time(deadline, "the attributor's rollups")
            time.sleep(0.2)
        runs = int(self.stack.health("billing").get("allocation_runs", 0))
        while True:
            billing = self.stack.health("billing")
            if int(billing.get("allocation_runs", 0)) >= runs + 2 and period in billing.get("periods", []):
                return
            self._check_time(deadline, "the allocation run")
            time.sleep(0.2)

    def _check_time(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise DemoError(f"demo timed out waiting for {what}")
        failed = self.stack.failed() if self.stack is not None else None
        if failed:
            raise DemoError(f"costmesh service {failed} died")


_ALLOCATED = """
SELECT c.resource_id, a.tenant, a.method, sum(a.amount) AS amount
FROM allocations a JOIN cost_lines c ON c.line_id = a.line_id
WHERE a.billing_period = $1 GROUP BY 1, 2, 3
"""


async def read_allocations(dsn: str, period: str) -> Allocated:
    """costmesh's allocation of the period per bill line (the allocations joined to their cost lines)."""
    key_of = {spec.resource_id: key for key, spec in LINES.items()}
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_ALLOCATED, period)
    finally:
        await conn.close()
    out: Allocated = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        key = key_of.get(r["resource_id"])
        if key is not None:
            out[key][r["tenant"]][r["method"]] = r["amount"]
    return {k: dict(v) for k, v in out.items()}
