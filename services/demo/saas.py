"""Starts and stops the demo SaaS: its PostgreSQL, then one process per workload (``costmesh.demo.process``), then
the clients; waits for the queue to drain; stops everything and reads the truth.

Order matters for the truth: the database is set up before costmesh starts capturing (``start_database``), so the
set-up's statements are neither observed nor counted; everything from the workloads' first connection on is both.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from costmesh.common.certs import server_chain
from costmesh.common.embedded import _die_with_parent, free_port

from .context import new_key
from .database import SaasDatabase
from .errors import SaasError
from .plan import MODEL_HOST, NODE_WORKLOADS, Plan, addresses
from .scenarios import Scenario
from .truth import Enqueued, Served, Truth, load_truth, read_events

#: Workloads started before the clients, in two waves: the servers, then the loops that call them at once.
SERVERS = ("model", "queue", "orders", "assistant", "gateway")
LOOPS = ("worker", "cron")
#: costmesh probes the TLS of the SaaS's own processes (``sensor.tls_processes``), found by a /proc scan every
#: ``tls_discover_s`` (0.5 s in the demo's config); the clients wait for that scan before they start.
TLS_SCAN_WAIT_S = 1.5
PORTS = ("gateway", "orders", "assistant", "queue", "model_http", "model_https")


class Saas:
    def __init__(self, scenario: Scenario, run_dir: Path) -> None:
        self.scenario = scenario
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        addr = addresses()
        chain, key = server_chain(self._folder("tls"), names=(MODEL_HOST,), ips=(addr["model"],))
        host_of = {"model_http": "model", "model_https": "model"}
        ports = {p: free_port(addr[host_of.get(p, p)]) for p in PORTS}
        self.plan = Plan(
            scenario=scenario.name,
            mode=scenario.mode,
            tenants=scenario.tenants,
            run_dir=str(self.run_dir),
            addresses=addr,
            ports=ports,
            queue=scenario.queue,
            worker_ai=scenario.worker_ai,
            cron=scenario.cron,
            concurrency=scenario.concurrency,
            seed=scenario.seed,
            deadline_s=scenario.deadline_s,
            session_key=new_key(),
            jwt_key=new_key(),
            tls_chain=str(chain),
            tls_key=str(key),
        )
        self.database = SaasDatabase(self._folder("saas-db"), addr["db"])
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_at = self.ended_at = 0.0

    def _folder(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start_database(self) -> None:
        port = asyncio.run(self.database.start(self.plan))
        self.plan = msgspec.structs.replace(self.plan, ports={**self.plan.ports, "db": port})
        self.plan.save()

    def plan_all_plain_http(self) -> None:
        """Every model call over plain HTTP: for a run recorded to a capture, where TLS would hide them."""
        self.plan = msgspec.structs.replace(self.plan, https=False)
        self.plan.save()

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self._folder("logs") / f"{name}.log", "ab")  # noqa: SIM115 (the child holds it)
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "costmesh.demo.process", name, str(self.plan.path)],
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def _wait_ready(self, name: str, timeout_s: float = 30.0) -> None:
        proc = self.procs[name]
        assert proc.stdout is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SaasError(f"demo workload {name} exited with status {proc.returncode}; {self._log_tail(name)}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready and proc.stdout.readline().strip() == b"ready":
                return
        raise SaasError(f"demo workload {name} did not get ready within {timeout_s:.0f} s; {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines()[-15:] if path.exists() else []
        return f"see {path}" + (":\n" + "\n".join(lines) if lines else "")

    def start_workloads(self) -> None:
        loops = [n for n in LOOPS if (n != "worker" or self.plan.queue) and (n != "cron" or self.plan.cron)]
        for wave in (SERVERS, loops):
            for name in wave:
                self._spawn(name)
            for name in wave:
                self._wait_ready(name)
        time.sleep(TLS_SCAN_WAIT_S)

    def run_clients(self) -> None:
        """Send the scenario's requests; returns when all are sent (or the deadline passed)."""
        self.started_at = time.time()
        proc = self._spawn("clients")
        self._wait_ready("clients")
        try:
            proc.wait(self.plan.deadline_s + 30)
        except subprocess.TimeoutExpired:
            raise SaasError(f"demo clients did not finish; {self._log_tail('clients')}") from None
        if proc.returncode != 0:
            raise SaasError(f"demo clients failed with status {proc.returncode}; {self._log_tail('clients')}")
        self.ended_at = time.time()

    def drain_queue(self, timeout_s: float = 30.0) -> None:
        """Wait until the worker has handled every job the producer enqueued."""
        if not self.plan.queue:
            return
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            events = read_events(self.run_dir)
            enqueued = sum(isinstance(e, Enqueued) for e in events)
            done = sum(isinstance(e, Served) and e.workload == "worker" for e in events)
            if done >= enqueued:
                self.ended_at = time.time()
                return
            if self.procs["worker"].poll() is not None:
                raise SaasError(f"demo worker exited; {self._log_tail('worker')}")
            time.sleep(0.2)
        raise SaasError(f"the queue did not drain within {timeout_s:.0f} s; {self._log_tail('worker')}")

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
        self.database.stop()

    def truth(self) -> Truth:
        return load_truth(self.run_dir, self.database.statement_log(), NODE_WORKLOADS)
