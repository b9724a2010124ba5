"""Billing domain types: what a cost line, a time window, a consumption row and an allocation are.

Kept apart from the code that computes them (ingest, mapping, allocation) so that each of those reads and emits the
same few shapes. Money is ``Decimal`` exactly as billed, never float; times are integer microseconds since the epoch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from costmesh.common.usage import CATEGORIES, DIRECT_METHODS, Category, Usage, Window

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

#: Resource kinds, as in ``config.ResourceMapping.kind``; each has its own consumption metric (see ``allocate``).
ResourceKind = Literal["database", "queue", "nat_gateway", "cross_az", "compute", "ai_api", "storage", "other"]


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
    #: FOCUS ``SkuId`` / ``SkuMeter`` and ``PricingUnit``: with ``usage_type``, ``description`` and ``unit`` they say
    #: which kind of AI token a line meters (``tokenkind``).
    sku: str = ""
    sku_meter: str = ""
    pricing_unit: str = ""
    region: str = ""
    zone: str = ""
    quantity: Decimal | None = None
    unit: str = ""
    tags: dict[str, str] = {}


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    """A part of one cost line given to one tenant (``""`` when unallocated) by one ``method``.

    ``basis`` names the signal the split used (``busy_us``, ``bytes``, ``tokens_cost``, ``tag:customer``…) so that
    finance can tell measured from modeled.
    """

    line_id: str
    tenant: str
    method: Category
    amount: Decimal
    currency: str
    feature: str = ""
    agent: str = ""
    resource: str = ""
    basis: str = ""


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
