"""The ``costmesh`` command: help texts, version, clear failures for unreachable servers, the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from costmesh.billing.report import COLUMNS
from costmesh.cli import SERVICES
from costmesh.common.config import load_config
from costmesh.common.embedded import free_port
from costmesh.common.natsio import CONNECT_DEADLINE_S

from .conftest import DATA, processes_marked

SUBCOMMANDS = ["up", "demo", *SERVICES, "report", "analyze", "config", "version"]


def _run(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costmesh.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_every_subcommand_has_a_one_line_help():
    top = _run("--help")
    assert top.returncode == 0
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", top.stdout, re.M), f"{name} missing from costmesh --help"
        sub = _run(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "options:" in sub.stdout
        description = sub.stdout.split("\n\n")[1].strip()
        assert description and description.endswith("."), f"{name}: no one-line description"


def test_version():
    result = _run("version")
    assert result.returncode == 0 and re.fullmatch(r"costmesh \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("what", ["nats", "postgres"])
def test_up_fails_fast_naming_an_unreachable_server(tmp_path, what):
    dead = free_port()  # nothing listens there
    url = f"nats://127.0.0.1:{dead}" if what == "nats" else f"postgresql://postgres@127.0.0.1:{dead}/postgres"
    key = "url" if what == "nats" else "dsn"
    config = tmp_path / "c.toml"
    config.write_text(f'[{what}]\n{key} = "{url}"\n')
    # The subprocess timeout catches a hang; how fast it gives up is the connect deadline, named in the message
    # (a wall-clock bound here would measure the loaded test machine, not costmesh).
    result = _run("up", "--config", str(config), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert result.returncode == 1
    name = "NATS" if what == "nats" else "PostgreSQL"
    assert f"could not reach {name} at" in result.stderr and f"127.0.0.1:{dead}" in result.stderr
    assert f"within {CONNECT_DEADLINE_S:g} s" in result.stderr


def test_service_without_urls_says_what_is_missing():
    result = _run("attributor")
    assert result.returncode == 2 and "no NATS URL" in result.stderr


def test_demo_prints_tenants_then_cost_and_margin_and_leaves_nothing_running():
    """``make demo``: usage per tenant equals the capture's ground truth; cost and margin per customer, through the
    deployed billing service and /v1/pnl, equal the offline ``costmesh report`` of the same bill, capture and revenue
    to the cent, and reconcile with the bill; nothing is left running."""
    from decimal import Decimal

    from costmesh.billing.report import build_report
    from costmesh.sensor.replay import observe

    demo = DATA / "demo"
    mark = uuid.uuid4().hex
    result = _run(
        "demo",
        "--capture",
        str(DATA / "demo_tenants.pcap"),
        "--config",
        str(demo / "costmesh.toml"),
        timeout=120,
        env={**os.environ, "COSTMESH_TEST_MARK": mark},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    usage, chargeback = result.stdout.split("\n\n", 1)
    truth = json.loads((DATA / "demo_tenants.truth.json").read_text())["requests_by_tenant"]
    table = {line.split()[0]: int(line.split()[1]) for line in usage.splitlines()[2:]}
    assert table == {(t or "(none)"): n for t, n in truth.items()}

    head, *lines = chargeback.strip().splitlines()
    assert head == "Chargeback 2026-01 in USD: billed 15.75, 3 customer(s), unallocated 2.66"
    printed = {
        cells[0]: (Decimal(cells[1]), Decimal(cells[2]), Decimal(cells[COLUMNS.index("margin")]))
        for cells in (line.split() for line in lines[3 : lines.index("", 1)])
        if not cells[0].startswith("(")
    }
    config = load_config(demo / "costmesh.toml")
    offline = build_report(
        sorted((demo / "bills").iterdir()),
        config,
        captures=[DATA / "demo_tenants.pcap"],
        observe=observe,
        revenue_file=demo / "revenue.csv",
    )
    cent = Decimal("0.01")
    assert printed == {
        name: tuple(Decimal(c[k]).quantize(cent) for k in ("revenue", "cost", "margin"))
        for name, c in offline["customers"].items()
    }
    assert sum(cost for _r, cost, _m in printed.values()) + Decimal("2.66") == Decimal("15.75")
    leftovers = processes_marked(mark)
    assert not leftovers, f"demo left processes running: {[p.cmdline()[:3] for p in leftovers]}"
