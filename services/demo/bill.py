"""The bill of a demo run, as the cloud and the AI provider would invoice it (FOCUS 1.0 CSV), and the customers'
revenue for the same hour.

One line per billed thing: the RDS instance and the node that runs the services (hourly capacity), the NAT
gateway's processed bytes, the queue's data, and OpenAI's input and output tokens. Usage lines are priced from the
truth's own quantities (what the NAT gateway, the queue and the provider metered) times ``HOUR_SCALE``: a run's
traffic stands for that many such runs in the billed hour, so that the amounts read like an hour of this SaaS and
the bill's make-up depends on the scenario, not on how fast the machine ran it. Which tenant caused
what is not on the bill: that is what costmesh has to find out.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from .plan import MODEL_NAME, Plan
from .truth import Truth

ACCOUNT = "123456789012"
MICRO = Decimal("0.000001")
HOUR_SCALE = Decimal(200)


@dataclass(frozen=True)
class LineSpec:
    """One kind of bill line: how it reads on the bill, which observed resource it is for, how it is priced, and
    which truth quantity says who caused it."""

    key: str
    resource: str
    kind: str
    match: str
    resource_id: str
    resource_name: str
    service: str
    category: str
    description: str
    unit: str
    #: Price of one ``unit``; capacity lines are billed for the hour whatever the traffic.
    price: Decimal
    hourly: bool = False
    #: How many truth units make one billed unit (bytes per GB, tokens per million).
    per_unit: int = 1
    provider: str = "AWS"
    usage_type: str = ""


LINES: dict[str, LineSpec] = {
    s.key: s
    for s in (
        LineSpec(
            key="database",
            resource="saas-db",
            kind="database",
            match=r"^arn:aws:rds:.*:db:saas-db$",
            resource_id=f"arn:aws:rds:eu-west-1:{ACCOUNT}:db:saas-db",
            resource_name="saas-db",
            service="Amazon Relational Database Service",
            category="Databases",
            description="db.r6g.large Multi-AZ PostgreSQL, 1 hour",
            unit="Hours",
            price=Decimal("0.4520"),
            hourly=True,
            usage_type="EU-Multi-AZUsage:db.r6g.large",
        ),
        LineSpec(
            key="node",
            resource="node",
            kind="compute",
            match=r"^i-0demo",
            resource_id="i-0demo0node000001",
            resource_name="demo-node",
            service="Amazon Elastic Compute Cloud",
            category="Compute",
            description="m7g.2xlarge, 1 hour: the node that runs the services",
            unit="Hours",
            price=Decimal("0.3264"),
            hourly=True,
            usage_type="EU-BoxUsage:m7g.2xlarge",
        ),
        LineSpec(
            key="nat",
            resource="nat-0demo",
            kind="nat_gateway",
            match="",
            resource_id="nat-0demo",
            resource_name="egress",
            service="Amazon Virtual Private Cloud",
            category="Networking",
            description="NAT gateway data processed",
            unit="GB",
            price=Decimal("0.048"),
            per_unit=10**9,
            usage_type="EU-NatGateway-Bytes",
        ),
        LineSpec(
            key="queue",
            resource="jobs-queue",
            kind="queue",
            match=r"^arn:aws:sqs:.*:jobs$",
            resource_id=f"arn:aws:sqs:eu-west-1:{ACCOUNT}:jobs",
            resource_name="jobs",
            service="Amazon Simple Queue Service",
            category="Integration",
            description="queue API data, GB",
            unit="GB",
            price=Decimal("0.90"),
            per_unit=10**9,
            usage_type="EU-Queue-Bytes",
        ),
        LineSpec(
            key="ai_input",
            resource="openai",
            kind="ai_api",
            match=r"^openai:",
            resource_id=f"openai:{MODEL_NAME}:input",
            resource_name=f"{MODEL_NAME} input",
            service="OpenAI API",
            category="AI and Machine Learning",
            description=f"{MODEL_NAME} input tokens",
            unit="Tokens",
            price=Decimal("0.15"),
            per_unit=10**6,
            provider="OpenAI",
        ),
        LineSpec(
            key="ai_output",
            resource="openai",
            kind="ai_api",
            match=r"^openai:",
            resource_id=f"openai:{MODEL_NAME}:output",
            resource_name=f"{MODEL_NAME} output",
            service="OpenAI API",
            category="AI and Machine Learning",
            description=f"{MODEL_NAME} output tokens",
            unit="Tokens",
            price=Decimal("0.60"),
            per_unit=10**6,
            provider="OpenAI",
        ),
    )
}

COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "EffectiveCost",
    "ListCost",
    "PricingUnit",
    "ProviderName",
    "RegionId",
    "ResourceId",
    "ResourceName",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SubAccountId",
    "x_UsageType",
)


@dataclass(frozen=True)
class BilledLine:
    spec: LineSpec
    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Bill:
    lines: list[BilledLine]
    charge_start: datetime
    charge_end: datetime

    @property
    def period(self) -> str:
        return f"{self.charge_start:%Y-%m}"


def hour_of(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(minute=0, second=0, microsecond=0)


def make_bill(truth: Truth, started_at: float, ended_at: float) -> Bill:
    """The bill for the hour(s) the run's traffic fell in; usage priced at ``price`` per ``unit`` of the truth's
    quantity times ``HOUR_SCALE``."""
    lines = []
    for spec in LINES.values():
        if spec.hourly:
            quantity = Decimal(1)
        else:
            total = sum(truth.share_of(spec.key).values())
            if not total:
                continue
            quantity = (Decimal(total) * HOUR_SCALE / spec.per_unit).quantize(Decimal("0.000000001"))
        lines.append(BilledLine(spec, quantity, (quantity * spec.price).quantize(MICRO)))
    start = hour_of(started_at)
    end = hour_of(ended_at) + timedelta(hours=1)
    return Bill(lines, start, end)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def focus_csv(bill: Bill) -> str:
    month = bill.charge_start.replace(day=1, hour=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in bill.lines:
        s = line.spec
        amount = format(line.amount, "f")
        writer.writerow(
            {
                "BilledCost": amount,
                "BillingAccountId": ACCOUNT,
                "BillingCurrency": "USD",
                "BillingPeriodEnd": _ts(next_month),
                "BillingPeriodStart": _ts(month),
                "ChargeCategory": "Usage",
                "ChargeDescription": s.description,
                "ChargePeriodEnd": _ts(bill.charge_end),
                "ChargePeriodStart": _ts(bill.charge_start),
                "ConsumedQuantity": format(line.quantity, "f"),
                "ConsumedUnit": s.unit,
                "EffectiveCost": amount,
                "ListCost": amount,
                "PricingUnit": s.unit,
                "ProviderName": s.provider,
                "RegionId": "eu-west-1",
                "ResourceId": s.resource_id,
                "ResourceName": s.resource_name,
                "ServiceCategory": s.category,
                "ServiceName": s.service,
                "SkuId": f"{s.key}:{s.resource_name}",
                "SubAccountId": ACCOUNT,
                "x_UsageType": s.usage_type,
            }
        )
    return out.getvalue()


def revenue_csv(plan: Plan, hour: datetime) -> str:
    """The customers' revenue for the billing period of ``hour`` (the scenario's figures)."""
    rows = ["customer,period,amount,currency"]
    rows += [f"{t.name},{hour:%Y-%m},{t.revenue},USD" for t in plan.tenants]
    return "\n".join(rows) + "\n"


def write_bill(bill: Bill, plan: Plan, bills_dir: Path, revenue_file: Path) -> Path:
    """Write the FOCUS file into ``bills_dir`` (which billing imports) and the revenue file for its period."""
    bills_dir.mkdir(parents=True, exist_ok=True)
    path = bills_dir / f"demo-{bill.charge_start:%Y%m%d%H}.csv"
    revenue_file.write_text(revenue_csv(plan, bill.charge_start))
    path.write_text(focus_csv(bill))
    return path
