"""AWS Cost and Usage Report reader: legacy CUR 1.0 (``lineItem/UnblendedCost``) and CUR 2.0 / Data Exports
(``line_item_unblended_cost``), CSV, gzip CSV or Parquet, into ``CostLine``.

Reads one data file; emits an ``ImportResult`` like the FOCUS reader: bad rows located (file, row, column, reason),
counted in ``costmesh_input_errors_total{service="billing", kind="cur_row"}`` and skipped. The amount is the unblended
cost: summed over a period it is the invoice (Savings Plan negations and credits are their own negative lines).
Tags come from ``resourceTags/user:*`` columns (1.0) or the ``resource_tags`` map (2.0, keys ``user_*``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from costmesh.common.metrics import ERRORS
from costmesh.common.money import MoneyError

from .focus import FocusError, _csv_rows, _parquet_rows, _sniff, file_bytes, parse_money, parse_time, period_of
from .model import CostLine, ImportProblem, ImportResult, Window

log = logging.getLogger(__name__)

#: Field → (CUR 1.0 column, CUR 2.0 column).
COLUMNS: dict[str, tuple[str, str]] = {
    "line_item_id": ("identity/LineItemId", "identity_line_item_id"),
    "time_interval": ("identity/TimeInterval", "identity_time_interval"),
    "period_start": ("bill/BillingPeriodStartDate", "bill_billing_period_start_date"),
    "start": ("lineItem/UsageStartDate", "line_item_usage_start_date"),
    "end": ("lineItem/UsageEndDate", "line_item_usage_end_date"),
    "amount": ("lineItem/UnblendedCost", "line_item_unblended_cost"),
    "currency": ("lineItem/CurrencyCode", "line_item_currency_code"),
    "account": ("lineItem/UsageAccountId", "line_item_usage_account_id"),
    "product_code": ("lineItem/ProductCode", "line_item_product_code"),
    "product_name": ("product/ProductName", "product_product_name"),
    "resource_id": ("lineItem/ResourceId", "line_item_resource_id"),
    "usage_type": ("lineItem/UsageType", "line_item_usage_type"),
    "operation": ("lineItem/Operation", "line_item_operation"),
    "line_type": ("lineItem/LineItemType", "line_item_line_item_type"),
    "description": ("lineItem/LineItemDescription", "line_item_line_item_description"),
    "region": ("product/region", "product_region_code"),
    "zone": ("lineItem/AvailabilityZone", "line_item_availability_zone"),
    "quantity": ("lineItem/UsageAmount", "line_item_usage_amount"),
    "unit": ("pricing/unit", "pricing_unit"),
}
REQUIRED = ("period_start", "start", "end", "amount", "currency")


class _RowError(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


def _tags(row: Mapping[str, Any], v2: bool) -> dict[str, str]:
    tags: dict[str, str] = {}
    if v2:
        raw = row.get("resource_tags")
        if isinstance(raw, str) and raw.strip():
            raw = json.loads(raw)
        if isinstance(raw, list):
            raw = dict(raw)
        for key, value in (raw or {}).items():
            if value not in (None, ""):
                tags[key.removeprefix("user_").removeprefix("aws_")] = str(value)
        return tags
    for column, value in row.items():
        if column.startswith("resourceTags/") and value not in (None, ""):
            key = column.split("/", 1)[1]
            tags[key.split(":", 1)[1] if ":" in key else key] = str(value)
    return tags


def row_to_line(row: Mapping[str, Any], names: Mapping[str, str], v2: bool, line_id: str, source: str) -> CostLine:
    def get(field: str) -> Any:
        column = names.get(field, "")
        value = row.get(column) if column else None
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    def text(field: str) -> str:
        value = get(field)
        return "" if value is None else str(value)

    for field in REQUIRED:
        if get(field) is None:
            raise _RowError(names[field], "required value is missing")
    try:
        amount = parse_money(get("amount"))
    except MoneyError as exc:
        raise _RowError(names["amount"], str(exc)) from None
    times = {}
    for field in ("period_start", "start", "end"):
        try:
            times[field] = parse_time(get(field))
        except (ValueError, TypeError) as exc:
            raise _RowError(names[field], f"not a timestamp: {exc}") from None
    if times["end"] < times["start"]:
        raise _RowError(names["end"], "usage ends before it starts")
    currency = text("currency").strip()
    if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise _RowError(names["currency"], f"not an ISO 4217 code: {currency!r}")
    quantity = None
    if get("quantity") is not None:
        try:
            quantity = parse_money(get("quantity"))
        except MoneyError as exc:
            raise _RowError(names["quantity"], str(exc)) from None
    try:
        tags = _tags(row, v2)
    except (ValueError, TypeError) as exc:
        raise _RowError("resource_tags", f"not a tag map: {exc}") from None
    return CostLine(
        line_id=line_id,
        source=source,
        billing_period=period_of(times["period_start"]),
        window=Window(times["start"], times["end"]),
        amount=amount,
        currency=currency,
        provider="AWS",
        account=text("account"),
        service=text("product_name") or text("product_code"),
        resource_id=text("resource_id"),
        usage_type=text("usage_type"),
        operation=text("operation"),
        charge_category=text("line_type"),
        description=text("description"),
        region=text("region"),
        zone=text("zone"),
        quantity=quantity,
        unit=text("unit"),
        tags=tags,
    )


def read_cur(path: str | Path, *, data: bytes | None = None, source: str = "cur") -> ImportResult:
    """Read one CUR data file (1.0 or 2.0, kind sniffed). Raises ``FocusError`` only when nothing can be read."""
    name = str(path)
    data = file_bytes(path, data)
    sha = hashlib.sha256(data).hexdigest()
    kind = _sniff(data)
    try:
        if kind == "parquet":
            rows: Iterator[tuple[int, dict[str, Any]]] = _parquet_rows(data)
        else:
            rows = _csv_rows((gzip.decompress(data) if kind == "csv.gz" else data).decode("utf-8-sig"))
        _, header = next(rows, (0, None))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        ERRORS.labels("billing", "cur_file").inc()
        raise FocusError(f"{name}: not a readable {kind} file: {exc}") from exc
    if header is None:
        raise FocusError(f"{name}: empty file")
    v2 = COLUMNS["amount"][1] in header
    names = {field: pair[1 if v2 else 0] for field, pair in COLUMNS.items() if pair[1 if v2 else 0] in header}
    missing = [COLUMNS[f][1 if v2 else 0] for f in REQUIRED if f not in names]
    if missing:
        ERRORS.labels("billing", "cur_file").inc()
        raise FocusError(f"{name}: not AWS CUR: missing required column(s) {', '.join(missing)}")
    lines: list[CostLine] = []
    problems: list[ImportProblem] = []
    seen: dict[str, int] = {}
    count = 0
    for rowno, row in rows:
        count += 1
        if "\x00error" in row:
            problems.append(ImportProblem(name, rowno, "", row["\x00error"]))
            continue
        ident = (row.get(names.get("line_item_id", "")) or "", row.get(names.get("time_interval", "")) or "")
        if not ident[0]:  # no identity column selected in the export: the row's cells are its identity
            ident = ("\x1f".join(str(v) for v in row.values()), "")
        digest = hashlib.sha256(f"{ident[0]}|{ident[1]}".encode()).hexdigest()[:32]
        n = seen[digest] = seen.get(digest, 0) + 1
        try:
            lines.append(row_to_line(row, names, v2, f"{source}:{digest}:{n}", source))
        except _RowError as exc:
            problems.append(ImportProblem(name, rowno, exc.column, exc.reason))
    for problem in problems:
        ERRORS.labels("billing", "cur_row").inc()
        log.warning("%s", problem)
    log.info("read CUR file", extra={"file": name, "version": "2.0" if v2 else "1.0", "lines": len(lines)})
    return ImportResult(name, sha, lines, problems, rows=count)
