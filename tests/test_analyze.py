"""``costmesh analyze``: JSON with calls and stats, a table per tenant, errors named, nothing outside the contract."""

from __future__ import annotations

import json
import subprocess
import sys

from costmesh.common.schemas import ObservedCall

from .conftest import DATA, SHARED_DATA


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costmesh.cli", "analyze", *args], capture_output=True, text=True, timeout=60
    )


def test_json_has_contract_calls_and_stats():
    result = _run(str(DATA / "demo_tenants.pcap"), "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"calls", "stats"}
    fields = set(ObservedCall.__struct_fields__)
    assert all(set(c) <= fields for c in doc["calls"])
    assert sum(c["requests"] for c in doc["calls"]) == 175
    assert doc["stats"]["frames"] == 368 and doc["stats"]["flows"] == 3 and doc["stats"]["parse_errors"] == {}


def test_table_per_tenant_with_tokens_and_db_queries(tmp_path):
    result = _run(str(DATA / "demo_tenants.pcap"))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tenant", "requests", "db_queries", "errors", "tokens_in", "tokens_out"]
    assert any(line.split()[:2] == ["acme", "120"] for line in lines)
    assert "busiest edges" in result.stdout
    ai = _run(str(SHARED_DATA / "pcap" / "openai-compatible-http" / "deepflow_openai_normal_usage.pcap"))
    assert ai.stdout.splitlines()[2].split() == ["(none)", "1", "0", "0", "18", "512"]
    pg = _run(str(SHARED_DATA / "pcap" / "postgresql" / "zeek_psql-create-insert-select-delete-drop.pcap"))
    assert pg.stdout.splitlines()[2].split()[:3] == ["(none)", "0", "7"]


def test_config_rules_apply_and_secrets_stay_out(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[rules]]\nsource = "pg_user"\nname = "pg-user"\n')
    result = _run(
        str(SHARED_DATA / "pcap" / "postgresql" / "zeek_psql-select-now.pcap"),
        "--config",
        str(config),
        "--format",
        "json",
    )
    doc = json.loads(result.stdout)
    assert {c["tenant_rule"] for c in doc["calls"]} == {"pg-user"}
    assert "SCRAM" not in result.stdout and "password" not in result.stdout.lower()


def test_truncated_capture_reports_offset_and_keeps_calls(tmp_path):
    data = (DATA / "demo_tenants.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    result = _run(str(cut), "--format", "json")
    assert result.returncode == 1 and "offset" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["stats"]["parse_errors"] == {"capture_truncated": 1} and doc["calls"]
    missing = _run(str(tmp_path / "nope.pcap"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_no_extensions_switch_selects_the_twin_with_identical_output():
    import os

    capture = str(SHARED_DATA / "pcap" / "postgresql" / "deepflow_pgsql-all_port8000.pcap")
    docs = []
    for flag in ("0", "1"):
        env = {**os.environ, "COSTMESH_NO_EXTENSIONS": flag}
        result = subprocess.run(
            [sys.executable, "-m", "costmesh.cli", "analyze", capture, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        docs.append(json.loads(result.stdout))
    assert [d["stats"]["build"] for d in docs] == ["cython", "python"]
    assert docs[0]["calls"] == docs[1]["calls"] and docs[0]["calls"]
    assert docs[0]["stats"]["counters"] == docs[1]["stats"]["counters"]
