"""compose/ cannot run here (no Docker engine), so its structure is checked: every service it names exists, every
command it runs is a real ``costmesh`` subcommand with valid options, and NATS/TimescaleDB are what the design says."""

from __future__ import annotations

import pytest
import yaml

from costmesh.cli import SERVICES, build_parser
from costmesh.common.config import load_config

from .conftest import REPO

COMPOSE = REPO / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_costmesh_service_is_deployed(compose):
    assert set(SERVICES) <= set(compose["services"])


def test_commands_are_real_subcommands(compose):
    parser = build_parser()
    for name, service in compose["services"].items():
        command = service.get("command", [])
        if not command or command[0] != "costmesh":
            continue
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown option or subcommand
        assert args.command == name, f"service {name} runs costmesh {args.command}"


def test_dependencies_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}) or {}:
            assert dep in services, f"{name} depends on missing service {dep}"


def test_infrastructure(compose):
    nats = compose["services"]["nats"]
    assert "-js" in nats["command"] and "-sd" in nats["command"]
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert compose["services"]["timescaledb"]["image"].startswith("timescale/timescaledb")
    assert compose["services"]["sensor"]["network_mode"] == "host"


def test_compose_config_file_is_valid():
    config = load_config(REPO / "compose" / "costmesh.toml")
    assert config.postgres.dsn_env == "COSTMESH_PG_DSN"
