"""Revenue per customer and period, from CSV: ``customer,period,amount,currency`` (header names below).

Reads a CSV file; emits ``Revenue`` rows and located problems (file, row, column, reason), counted in
``costmesh_input_errors_total{service="billing", kind="revenue_row"}`` and skipped. Rows for the same customer,
period and currency are summed (several invoices in a month).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from decimal import Decimal
from pathlib import Path

from costmesh.common.errors import InputError
from costmesh.common.ledger import Revenue
from costmesh.common.metrics import ERRORS
from costmesh.common.money import MoneyError, parse_amount

from .model import ImportProblem

log = logging.getLogger(__name__)

_ALIASES = {
    "customer": ("customer", "customer_id", "tenant", "tenant_id", "account"),
    "period": ("period", "billing_period", "month"),
    "amount": ("amount", "revenue", "mrr"),
    "currency": ("currency", "currency_code"),
}
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class RevenueError(InputError):
    """A revenue file that cannot be read at all; names the file."""


def read_revenue(path: str | Path) -> tuple[list[Revenue], list[ImportProblem]]:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RevenueError(f"{name}: cannot read: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip().lower(): h for h in reader.fieldnames or []}
    columns: dict[str, str] = {}
    for field, names in _ALIASES.items():
        found = next((header[n] for n in names if n in header), None)
        if found is None and field != "currency":
            raise RevenueError(f"{name}: no {field} column (one of {', '.join(names)})")
        if found is not None:
            columns[field] = found
    sums: dict[tuple[str, str, str], Decimal] = {}
    problems: list[ImportProblem] = []
    for row in reader:
        line = reader.line_num
        customer = (row.get(columns["customer"]) or "").strip()
        period = (row.get(columns["period"]) or "").strip()
        currency = (row.get(columns.get("currency", ""), "") or "USD").strip().upper()
        if not customer:
            problems.append(ImportProblem(name, line, columns["customer"], "empty customer"))
            continue
        if not _PERIOD.match(period):
            problems.append(ImportProblem(name, line, columns["period"], f"not a YYYY-MM period: {period!r}"))
            continue
        if not (len(currency) == 3 and currency.isalpha()):
            problems.append(
                ImportProblem(name, line, columns.get("currency", "currency"), f"bad currency {currency!r}")
            )
            continue
        try:
            amount = parse_amount(row.get(columns["amount"]) or "")
        except MoneyError as exc:
            problems.append(ImportProblem(name, line, columns["amount"], str(exc)))
            continue
        key = (customer, period, currency)
        sums[key] = sums.get(key, Decimal(0)) + amount
    for problem in problems:
        ERRORS.labels("billing", "revenue_row").inc()
        log.warning("%s", problem)
    return [Revenue(c, p, a, cur) for (c, p, cur), a in sorted(sums.items())], problems
