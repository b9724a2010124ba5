"""One demo workload as a process: ``python -m costmesh.demo.process NAME PLAN_FILE``.

The process takes the workload's name as its own (``comm`` = ``demo-<name>``, what /proc shows and what costmesh's
``sensor.tls_processes`` picks the processes to probe by), makes every outgoing
connection from the workload's address (``PodLoop``), runs the workload module's ``main`` and prints ``ready`` on
stdout once it serves. SIGTERM or SIGINT stops it; it also stops when its parent dies.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import signal
import sys

from .plan import load_plan, process_name
from .truth import TruthWriter
from .workloads.base import PodLoop, Workload

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1


def _name_process(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(process_name(name).encode()[:15]), 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def _run(workload: Workload) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, workload.stopping.set)
    module = importlib.import_module(f"costmesh.demo.workloads.{workload.name}")
    try:
        await module.main(workload)
    finally:
        workload.truth.close()


def _ready() -> None:
    print("ready", flush=True)


def main(argv: list[str]) -> int:
    name, plan_file = argv
    plan = load_plan(plan_file)
    _name_process(name)
    PodLoop.source_address = plan.addresses[name]
    workload = Workload(plan, name, TruthWriter(plan.run_dir, name), on_ready=_ready)
    with asyncio.Runner(loop_factory=PodLoop) as runner:
        runner.run(_run(workload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
