"""``costmesh report``: chargeback from bills alone (tags as the only signal) and with a capture, in table, JSON and
CSV; the JSON reconciles exactly: customers' costs + unallocated = billed."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from decimal import Decimal

from costmesh.billing.report import ReportError, build_report
from costmesh.common.config import Config, load_config
from costmesh.sensor.replay import observe

from .conftest import DATA, SHARED_DATA

FOCUS = SHARED_DATA / "billing" / "focus" / "focus-1.0_sample_1000_all-providers.csv"
CUR = SHARED_DATA / "billing" / "aws-cur" / "cur-legacy_sample-anonymous-aws-export-dataset.csv"
CAPTURE = DATA / "demo_tenants.pcap"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costmesh.cli", *args], capture_output=True, text=True, timeout=120)


def reconciles(report: dict) -> None:
    customers = sum((Decimal(c["cost"]) for c in report["customers"].values()), Decimal(0))
    billed = Decimal(report["billed"])
    assert customers + Decimal(report["unallocated"]) == billed  # exactly, so to the cent too
    lines = sum((Decimal(x["amount"]) for x in report["lines"]), Decimal(0))
    assert lines == billed
    for x in report["lines"]:
        assert sum((Decimal(a["amount"]) for a in x["allocations"]), Decimal(0)) == Decimal(x["amount"])
    for c in report["customers"].values():
        assert sum((Decimal(v) for v in c["by_category"].values()), Decimal(0)) == Decimal(c["cost"])
        assert set(c["by_category"]) == {"direct", "trace", "propagated", "platform", "idle", "unallocated"}


def test_bills_alone_everything_unallocated_and_shown():
    report = build_report([FOCUS], Config())
    reconciles(report)
    assert report["customers"] == {}
    assert report["unallocated"] == report["billed"] and report["unmatched_lines"] == 1000
    assert report["period"] == "2024-09..2024-10" and report["currency"] == "USD"


def test_tags_in_the_bill_are_the_signal_json_via_cli(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[billing]\ntag_keys = ["business_unit"]\n')
    revenue = tmp_path / "rev.csv"
    revenue.write_text("customer,period,amount,currency\nPeoriaData,2024-09,100,USD\nViennaAI,2024-09,0.01,USD\n")
    result = _cli("report", "--bill", str(FOCUS), str(CUR), "--config", str(config), "--revenue", str(revenue),
                  "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    reconciles(report)
    assert report["billed"] == str(sum(Decimal(x["amount"]) for x in report["lines"]))
    peoria = report["customers"]["PeoriaData"]
    assert peoria["revenue"] == "100" and Decimal(peoria["margin"]) == 100 - Decimal(peoria["cost"])
    assert Decimal(peoria["by_category"]["direct"]) == Decimal(peoria["cost"]) > 0
    margins = [Decimal(c["margin"]) for c in report["customers"].values()]
    negatives = [m < 0 for m in margins]
    assert negatives == sorted(negatives, reverse=True)  # negative margins listed first
    assert Decimal(report["unallocated"]) > 0  # untagged lines stay visible
    assert all(isinstance(v, str) for v in report["by_category"].values())


def _capture_bill(tmp_path) -> tuple:
    """A FOCUS bill for the hour of the demo capture: an instance running the API, and an untagged NAT gateway."""
    text = FOCUS.read_text()
    reader = csv.DictReader(io.StringIO(text))
    row = next(reader)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], lineterminator="\n")
    writer.writeheader()
    base = dict(
        row,
        BillingPeriodStart="2026-01-01 00:00:00",
        BillingPeriodEnd="2026-02-01 00:00:00",
        ChargePeriodStart="2026-01-01 00:00:00",
        ChargePeriodEnd="2026-01-01 01:00:00",
        Tags="NULL",
    )
    writer.writerow(dict(base, BilledCost="10.00", ResourceId="i-0api", ServiceName="Amazon Elastic Compute Cloud"))
    writer.writerow(dict(base, BilledCost="2.50", ResourceId="i-0other", ServiceName="Amazon Elastic Compute Cloud"))
    bill = tmp_path / "bill.csv"
    bill.write_text(out.getvalue())
    config = tmp_path / "c.toml"
    config.write_text(
        '[[workloads]]\naddress = "10.0.0.20"\nport = 8080\nname = "api"\n'
        '[[workloads]]\naddress = "10.0.0.10"\nname = "client"\n'
        '[[resources]]\nresource = "api-node"\nkind = "compute"\nmatch = "^i-0api$"\nendpoints = ["api"]\n'
    )
    return bill, config


def test_with_a_capture_through_the_sensor_code(tmp_path):
    bill, config = _capture_bill(tmp_path)
    report = build_report([bill], load_config(config), captures=[CAPTURE], observe=observe)
    reconciles(report)
    assert set(report["customers"]) == {"acme", "globex", "initech"}
    costs = {k: Decimal(v["cost"]) for k, v in report["customers"].items()}
    assert costs["acme"] > costs["globex"] > costs["initech"] > 0
    assert all(Decimal(v["by_category"]["direct"]) == costs[k] for k, v in report["customers"].items())
    # the 3 untagged requests from a client with no inbound tenants, and the unmatched instance, stay unallocated
    assert Decimal(report["unallocated"]) > Decimal("2.50")
    assert Decimal(report["billed"]) == Decimal("12.50") and report["unmatched_lines"] == 1
    api_line = next(x for x in report["lines"] if x["resource_id"] == "i-0api")
    assert {a["resource"] for a in api_line["allocations"]} == {"api-node"}


def test_table_and_csv_formats(tmp_path):
    bill, config = _capture_bill(tmp_path)
    table = _cli("report", "--bill", str(bill), "--capture", str(CAPTURE), "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("Chargeback 2026-01 in USD: billed 12.50, 3 customer(s)")
    assert "acme" in table.stdout and "(not allocated)" in table.stdout
    as_csv = _cli("report", "--bill", str(bill), "--capture", str(CAPTURE), "--config", str(config), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["customer"] for r in rows][-2:] == ["(not allocated)", "(total billed)"]
    customers = [r for r in rows if not r["customer"].startswith("(")]
    total = sum(Decimal(r["cost"]) for r in customers) + Decimal(rows[-2]["cost"])
    assert total == Decimal(rows[-1]["cost"]) == Decimal("12.50")


def test_mixed_currencies_need_a_choice(tmp_path):
    text = FOCUS.read_text().splitlines()
    eur = tmp_path / "eur.csv"
    eur.write_text("\n".join([text[0], text[1].replace('"USD"', '"EUR"')]) + "\n")
    try:
        build_report([FOCUS, eur], Config())
    except ReportError as exc:
        assert "several currencies (EUR, USD)" in str(exc)
    else:
        raise AssertionError("mixed currencies were summed")
    only = build_report([FOCUS, eur], Config(), currency="EUR")
    assert only["currency"] == "EUR" and len(only["lines"]) == 1
    bad = _cli("report", "--bill", str(DATA / "demo_tenants.truth.json"))
    assert bad.returncode == 2 and "neither FOCUS" in bad.stderr
