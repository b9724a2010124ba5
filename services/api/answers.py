"""What the API answers: one ``msgspec.Struct`` per route, the contract that the OpenAPI document is generated from.

The handlers return these types and nothing else, so the document cannot drift from the answers (the tests validate
every answer against its schema). Money is ``Decimal``, encoded as an exact decimal string beside its ``currency``;
AI token cost keeps its integer micro-dollars as well. A group field that a row does not carry (``UNSET``) is left
out of the JSON: a row grouped by tenant reads ``{"tenant": "acme", ...}``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

Role = Literal["viewer", "finance", "admin"]
Step = Literal["hour", "day", "month"]
Method = Literal["direct", "trace", "propagated", "platform", "idle", "unallocated"]


class _Answer(msgspec.Struct, kw_only=True):
    pass


class Error(_Answer, kw_only=True):
    """Every refusal: 400 (a parameter, named), 401 (no or unknown token), 403 (the role needed), 404."""

    error: str
    #: 401/403: the role the route needs.
    required_role: Role | UnsetType = UNSET


class Me(_Answer, kw_only=True):
    """Who the caller is: whether tokens are required here, and the role of the token presented (null: none or
    unknown). Public, so that a client can tell "sign in" from "not allowed" without provoking a refusal."""

    auth_required: bool
    role: Role | None


# -- consumption --------------------------------------------------------------------------------------------------


class UsageRow(_Answer, kw_only=True):
    tenant: str | UnsetType = UNSET
    feature: str | UnsetType = UNSET
    agent: str | UnsetType = UNSET
    src_workload: str | UnsetType = UNSET
    dst: str | UnsetType = UNSET
    protocol: str | UnsetType = UNSET
    tenant_method: str | UnsetType = UNSET
    requests: int
    errors: int
    bytes_in: int
    bytes_out: int
    busy_us: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    tokens_reasoning: int


class UsageAnswer(_Answer, kw_only=True):
    group_by: str
    rows: list[UsageRow]


class IngestAnswer(_Answer, kw_only=True):
    applied_batches: int
    applied_records: int


# -- allocated cost -------------------------------------------------------------------------------------------------


class CostRow(_Answer, kw_only=True):
    tenant: str | UnsetType = UNSET
    feature: str | UnsetType = UNSET
    agent: str | UnsetType = UNSET
    service: str | UnsetType = UNSET
    resource: str | UnsetType = UNSET
    method: str | UnsetType = UNSET
    currency: str
    cost: Decimal
    #: The row's cost split by how it was obtained (only methods that occur).
    by_method: dict[str, Decimal]
    #: With ``step``: the cost in each of the answer's ``buckets``, in order.
    series: list[Decimal] | UnsetType = UNSET


class CostTotal(_Answer, kw_only=True):
    """All rows of one currency together (rows left out by ``limit`` included)."""

    currency: str
    cost: Decimal
    by_method: dict[str, Decimal]
    series: list[Decimal] | UnsetType = UNSET


class CostAnswer(_Answer, kw_only=True):
    group_by: str
    period: str | None
    from_: datetime | None = msgspec.field(name="from", default=None)
    to: datetime | None = None
    step: Step | None = None
    #: With ``step``: the start of every bucket in ``[from, to)``, UTC.
    buckets: list[datetime] | UnsetType = UNSET
    rows: list[CostRow]
    totals: list[CostTotal]
    #: Rows beyond ``limit`` (their cost is in ``totals``).
    rows_left_out: int = 0


class CustomerPnlRow(_Answer, kw_only=True):
    customer: str
    revenue: Decimal
    cost: Decimal
    by_category: dict[str, Decimal]
    margin: Decimal
    #: Margin in percent of revenue, two decimals; null without revenue.
    margin_pct: Decimal | None


class PnlAnswer(_Answer, kw_only=True):
    period: str
    currency: str
    billed: Decimal
    revenue: Decimal
    #: Cost no customer carries (platform and unallocated) and its split.
    unallocated: Decimal
    unallocated_by_category: dict[str, Decimal]
    #: Negative margins first, then ascending.
    customers: list[CustomerPnlRow]


class RevenueRow(_Answer, kw_only=True):
    customer: str
    period: str
    currency: str
    amount: Decimal


class RevenueAnswer(_Answer, kw_only=True):
    period: str | None
    rows: list[RevenueRow]


class Slice(_Answer, kw_only=True):
    """A part of a whole: ``amount`` of ``currency`` and its share of the whole in percent (two decimals)."""

    key: str
    currency: str
    amount: Decimal
    share_pct: Decimal


class Driver(_Answer, kw_only=True):
    """One reason a customer's cost is what it is: a resource, through a feature/agent, by a method and basis."""

    resource: str
    service: str
    feature: str
    agent: str
    method: Method
    basis: str
    currency: str
    amount: Decimal
    share_pct: Decimal


class SharedResource(_Answer, kw_only=True):
    """The customer's part of a resource that several customers use."""

    resource: str
    currency: str
    amount: Decimal
    resource_cost: Decimal
    share_pct: Decimal
    tenants: int


class Operation(_Answer, kw_only=True):
    """Calls the customer made along one edge of the graph (the store keeps calls per edge and protocol)."""

    src_workload: str
    dst: str
    protocol: str
    requests: int
    errors: int
    bytes_in: int
    bytes_out: int
    busy_us: int
    tokens_in: int
    tokens_out: int


class Series(_Answer, kw_only=True):
    key: str
    currency: str
    values: list[Decimal]


class CustomerAnswer(_Answer, kw_only=True):
    customer: str
    period: str | None
    from_: datetime | None = msgspec.field(name="from", default=None)
    to: datetime | None = None
    totals: list[CostTotal]
    by_resource: list[Slice]
    by_service: list[Slice]
    by_feature: list[Slice]
    by_agent: list[Slice]
    by_method: list[Slice]
    #: The largest (resource, feature, agent, method, basis) parts: what drives the cost.
    drivers: list[Driver]
    shared_resources: list[SharedResource]
    operations: list[Operation]
    step: Step
    buckets: list[datetime]
    #: Cost over time per resource (the largest resources; ``(other)`` holds the rest).
    series: list[Series]


class Consumer(_Answer, kw_only=True):
    tenant: str
    feature: str
    agent: str
    method: Method
    basis: str
    currency: str
    amount: Decimal
    share_pct: Decimal


class BillLine(_Answer, kw_only=True):
    line_id: str
    billing_period: str
    service: str
    resource_id: str
    usage_type: str
    description: str
    currency: str
    amount: Decimal


class ResourceAnswer(_Answer, kw_only=True):
    resource: str
    period: str | None
    totals: list[CostTotal]
    #: Who consumes the resource and how much, largest first.
    consumers: list[Consumer]
    by_tenant: list[Slice]
    lines: list[BillLine]


class CoveragePeriod(_Answer, kw_only=True):
    """How much of one period's bill (one currency) is measured, propagated, modeled and left unallocated."""

    period: str
    currency: str
    billed: Decimal
    #: Measured on the call or joined by trace id (``direct`` + ``trace``).
    attributed: Decimal
    propagated: Decimal
    #: Modeled background work (``platform``).
    modeled: Decimal
    unallocated: Decimal
    attributed_pct: Decimal
    propagated_pct: Decimal
    modeled_pct: Decimal
    unallocated_pct: Decimal
    lines: int
    #: Bill lines mapped to no observed resource, and their cost.
    unmatched_lines: int
    unmatched_amount: Decimal


class UnallocatedLine(_Answer, kw_only=True):
    """A bill line that carries unallocated cost, and why (``matched`` false: no observed resource explains it)."""

    line_id: str
    period: str
    service: str
    resource_id: str
    resource: str
    usage_type: str
    description: str
    currency: str
    amount: Decimal
    unallocated: Decimal
    matched: bool
    reason: str


class CoverageAnswer(_Answer, kw_only=True):
    periods: list[CoveragePeriod]
    #: The lines with the most unallocated cost, largest first.
    unallocated_lines: list[UnallocatedLine]


class PeriodRow(_Answer, kw_only=True):
    period: str
    lines: int
    allocations: int
    run_at: datetime
    currencies: list[str]


class PeriodsAnswer(_Answer, kw_only=True):
    #: Newest first.
    periods: list[PeriodRow]


class AiCostRow(_Answer, kw_only=True):
    tenant: str | UnsetType = UNSET
    feature: str | UnsetType = UNSET
    agent: str | UnsetType = UNSET
    provider: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    src_workload: str | UnsetType = UNSET
    #: Integer micro-dollars as priced by the attributor; ``cost`` is the same in dollars, exactly.
    cost_micros: int
    cost: Decimal
    currency: str
    requests: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    tokens_reasoning: int


class AiCostAnswer(_Answer, kw_only=True):
    group_by: str
    rows: list[AiCostRow]


class Alert(_Answer, kw_only=True):
    rule_key: str
    tenant: str
    feature: str
    agent: str
    reason: Literal["budget", "spike"]
    state: Literal["firing", "resolved"]
    alert_id: str
    started_at: datetime
    window_s: int
    resolved_at: datetime | None
    #: Stable across episodes (rule, scope, reason): what a silence holds.
    fingerprint: str
    #: The AI spend rate and the threshold it was judged against when last notified (micro-dollars per hour).
    rate_micros_per_hour: int
    threshold_micros_per_hour: int
    #: Until when a silence mutes it (null: not silenced).
    silenced_until: datetime | None


class SilenceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How long to silence the alert, and why."""

    #: Seconds, 60 to 2,592,000 (30 days).
    duration_s: int
    comment: str = ""


class SilenceAnswer(_Answer, kw_only=True):
    """The silence made: the alert's fingerprint is muted until ``ends_at`` (it still fires and resolves; no
    notification names it meanwhile)."""

    silence_id: str
    fingerprint: str
    alert_id: str
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str


class AlertsAnswer(_Answer, kw_only=True):
    firing: int
    resolved: int
    #: Firing first, newest first.
    alerts: list[Alert]


class GraphNode(_Answer, kw_only=True):
    name: str
    kind: str
    first_seen: datetime
    last_seen: datetime


class GraphEdge(_Answer, kw_only=True):
    src: str
    dst: str
    protocol: str
    calls: int
    errors: int
    bytes_in: int
    bytes_out: int
    busy_us: int
    last_minute: datetime


class GraphAnswer(_Answer, kw_only=True):
    from_: datetime = msgspec.field(name="from")
    to: datetime
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class BillImport(_Answer, kw_only=True):
    sha256: str
    file: str
    source: str
    rows: int
    lines: int
    problems: int
    imported_at: datetime


class ImportsAnswer(_Answer, kw_only=True):
    imports: list[BillImport]


class ConfigAnswer(_Answer, kw_only=True):
    """The running config as JSON; secrets are never in it (only the names of the variables holding them), and a
    password inside a DSN or URL is replaced by ``***``."""

    config: dict[str, Any]
