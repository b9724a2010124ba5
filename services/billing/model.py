"""Billing domain types: what a cost line, a time window, a consumption row and an allocation are.

Kept apart from the code that computes them (ingest, mapping, allocation) so that each of those reads and emits the
same few shapes. ``Allocation`` and the categories are defined in ``costmesh.common.ledger`` (the API reads them too)
and named here with the rest. Money is ``Decimal`` exactly as billed, never float; times are integer microseconds
since the epoch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Literal

import msgspec

from costmesh.common.ledger import CATEGORIES, Allocation, Category

__all__ = [
    "CATEGORIES",
    "DIRECT_METHODS",
    "Allocation",
    "Category",
    "CostLine",
    "ImportProblem",
    "ImportResult",
    "ResourceKind",
    "Usage",
    "Window",
]

#: Tenant methods (``costmesh.common.schemas.TenantMethod``) that read the tenant on the call itself.
DIRECT_METHODS: Final = frozenset({"header", "baggage", "jwt", "query", "path", "body", "db", "sni", "host", "tag"})

#: Resource kinds, as in ``config.ResourceMapping.kind``; each has its own consumption metric (see ``allocate``).
ResourceKind = Literal["database", "queue", "nat_gateway", "cross_az", "compute", "ai_api", "storage", "other"]


class Window(msgspec.Struct, frozen=True):
    """A half-open time interval ``[start_us, end_us)``."""

    start_us: int
    end_us: int

    def __post_init__(self) -> None:
        if self.end_us < self.start_us:
            raise ValueError(f"window ends ({self.end_us}) before it starts ({self.start_us})")

    def overlaps(self, start_us: int, end_us: int) -> bool:
        return start_us < self.end_us and end_us > self.start_us


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a bill, normalised from FOCUS, CUR or a rate card.

    ``line_id`` is stable across re-imports of the same data (see the readers), so importing twice adds nothing.
    ``amount`` is the cost this line contributes to the invoice (FOCUS ``BilledCost``, CUR unblended cost), in
    ``currency``; credits and refunds are negative.
    """

    line_id: str
    source: str
    billing_period: str  # "YYYY-MM" of the billing period start
    window: Window  # the charge period
    amount: Decimal
    currency: str
    provider: str = ""
    account: str = ""
    service: str = ""
    resource_id: str = ""
    resource_name: str = ""
    resource_type: str = ""
    usage_type: str = ""
    operation: str = ""
    charge_category: str = ""
    description: str = ""
    region: str = ""
    zone: str = ""
    quantity: Decimal | None = None
    unit: str = ""
    tags: dict[str, str] = {}


class Usage(msgspec.Struct, kw_only=True):
    """Consumption of one destination by one caller for one tenant/feature/agent over a window (summed records).

    The same fields as ``consumption_minute`` and ``ObservedCall``: the allocation reads either.
    """

    src_workload: str
    dst: str
    protocol: str = ""
    tenant: str = ""
    tenant_method: str = "unallocated"
    feature: str = ""
    agent: str = ""
    start_us: int = 0
    end_us: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    busy_us: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_reasoning: int = 0
    provider: str = ""
    model: str = ""


class ImportProblem(msgspec.Struct, frozen=True):
    """One bad row or file, precisely located, reported and skipped."""

    file: str
    row: int  # physical line for CSV (header = 1), row index + 1 for Parquet, 0 for the whole file
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: row {self.row}" if self.row else self.file
        return f"{where}: column {self.column or '-'}: {self.reason}"


class ImportResult(msgspec.Struct):
    """What one file gave: its content hash (import identity), good lines and problems."""

    file: str
    sha256: str
    lines: list[CostLine]
    problems: list[ImportProblem]
    rows: int = 0
