"""Resource mapping: config rules, usage types, ARNs and managed endpoints; unmatched lines with their reason, and
``costmesh billing unmatched`` listing them."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

from costmesh.billing.allocate import Target
from costmesh.billing.mapping import Mapper, Unmatched, infer_kind, largest_unmatched
from costmesh.billing.model import CostLine, Window
from costmesh.common.config import ResourceMapping

from .conftest import DATA, SHARED_DATA

ALL = SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_1000_all-providers.csv"


def cl(line_id="l", amount="1", **kw) -> CostLine:
    return CostLine(
        line_id=line_id, source="t", billing_period="2024-09", window=Window(0, 1), amount=Decimal(amount),
        currency="USD", **kw,
    )  # fmt: skip


OBSERVED = [
    "api",
    "worker",
    "orders.c9akciq32.us-east-1.rds.amazonaws.com:5432",
    "events-topic",
    "10.0.0.7:8080",
]


def test_rds_arn_maps_to_the_observed_endpoint():
    m = Mapper([], OBSERVED)
    got = m.map(cl(resource_id="arn:aws:rds:us-east-1:123456789012:db:orders", service="Amazon RDS"))
    assert isinstance(got, Target)
    assert got.kind == "database" and got.endpoints == {"orders.c9akciq32.us-east-1.rds.amazonaws.com:5432"}


def test_usage_types_for_nat_and_cross_az():
    m = Mapper([], OBSERVED)
    nat = m.map(cl(resource_id="arn:aws:ec2:us-east-1:1:natgateway/nat-0abc", usage_type="USE1-NatGateway-Bytes"))
    assert isinstance(nat, Target) and nat.kind == "nat_gateway"
    hours = m.map(cl(usage_type="USE1-NatGateway-Hours"))
    assert isinstance(hours, Target) and hours.kind == "nat_gateway"
    cross = m.map(cl(usage_type="USE1-DataTransfer-Regional-Bytes", service="Amazon EC2"))
    assert isinstance(cross, Target) and cross.kind == "cross_az"


def test_config_rules_win_and_need_all_their_patterns():
    rules = [
        ResourceMapping(resource="node-1", kind="compute", match=r"^i-0abc", endpoints=["api", "worker"]),
        ResourceMapping(resource="events-topic", kind="queue", service="Simple Queue", usage_type="Requests"),
    ]
    m = Mapper(rules, OBSERVED)
    node = m.map(cl(resource_id="i-0abc123", usage_type="BoxUsage:m5.large"))
    assert isinstance(node, Target) and (node.resource, node.kind) == ("node-1", "compute")
    assert node.endpoints == {"api", "worker"}
    q = m.map(cl(service="Amazon Simple Queue Service", usage_type="USW2-Requests-Tier1"))
    assert isinstance(q, Target) and q.resource == "events-topic" and q.endpoints == {"events-topic"}
    not_q = m.map(cl(service="Amazon Simple Queue Service", usage_type="USW2-TimedStorage"))
    assert isinstance(not_q, Unmatched)


def test_unmatched_say_why_and_come_largest_first():
    m = Mapper([], OBSERVED)
    a = m.map(cl("a", "-5", charge_category="Credit"))
    b = m.map(cl("b", "2", resource_id="i-0zzz", service="Amazon Elastic Compute Cloud"))
    c = m.map(cl("c", "0.1", resource_id="i-0yyy"))
    assert isinstance(a, Unmatched) and a.reason.startswith("credit line without a resource id")
    assert isinstance(b, Unmatched) and b.reason == "resource i-0zzz was not observed and no config rule matches it"
    assert [u.line.line_id for u in largest_unmatched([c, b, a], 2)] == ["a", "b"]  # type: ignore[list-item]


def test_kind_inference():
    assert infer_kind(cl(service="Amazon Simple Queue Service")) == "queue"
    assert infer_kind(cl(service="Amazon Bedrock")) == "ai_api"
    assert infer_kind(cl(service="Amazon Elastic Compute Cloud", usage_type="BoxUsage:t3.micro")) == "compute"
    assert infer_kind(cl(service="Amazon Simple Storage Service")) == "storage"
    assert infer_kind(cl(service="Something")) == "other"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costmesh.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_billing_unmatched_lists_the_largest(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[resources]]\nresource = "node-a"\nkind = "compute"\nmatch = "i-021f2ebl49063f9l1"\n')
    result = _cli("billing", "unmatched", "--bill", str(ALL), "--config", str(config), "--limit", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "999 cost line(s) match no observed resource; the 3 largest:"
    assert out[2].split()[0] == "-2.61370000000" and "credit line without a resource id" in out[2]
    assert "i-021f2ebl49063f9l1" not in result.stdout  # mapped by the config rule
    assert "was not observed" in out[3]
    # a capture's names count as observed
    with_capture = _cli("billing", "unmatched", "--bill", str(ALL), "--capture", str(DATA / "demo_tenants.pcap"))
    assert with_capture.returncode == 0, with_capture.stderr
    bad = _cli("billing", "unmatched", "--bill", str(DATA / "demo_tenants.truth.json"))
    assert bad.returncode == 2 and "neither FOCUS" in bad.stderr
