"""FOCUS (FinOps Open Cost and Usage Specification) 1.0–1.2 reader: CSV, gzip CSV and Parquet into ``CostLine``.

Reads one file; emits an ``ImportResult`` with the good lines, a problem per bad row (file, row, column, reason) and
the file's SHA-256, which is its import identity. A bad row is counted in ``costmesh_input_errors_total{service=
"billing", kind="focus_row"}`` and skipped; the other rows are kept. Each line id hashes the row's cells plus its
occurrence number, so the same charge imported twice (the same file, or an overlapping re-export) is one line.

The columns read are the FOCUS ones every version since 1.0 has; the version is guessed from the columns present
(1.1 added ``ServiceSubcategory``/``SkuMeter``, 1.2 added ``InvoiceId``/``PricingCurrency``). The amount is
``BilledCost`` (what the invoice says, so allocations reconcile with it) unless another cost column is asked for.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from costmesh.common.errors import InputError
from costmesh.common.metrics import ERRORS
from costmesh.common.money import MoneyError, parse_amount

from .model import CostLine, ImportProblem, ImportResult, Window

log = logging.getLogger(__name__)

REQUIRED = ("BilledCost", "BillingCurrency", "BillingPeriodStart", "ChargePeriodStart", "ChargePeriodEnd")
COST_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
#: FOCUS 1.0 ChargeCategory values (1.0-preview's ChargeType used the same words).
CHARGE_CATEGORIES = {"usage", "purchase", "tax", "credit", "adjustment"}
#: Cells meaning "no value": FOCUS samples write the literal NULL.
NULLS = {"", "NULL", "null"}


class FocusError(InputError):
    """A file that cannot be read as FOCUS at all (missing required columns, not CSV/Parquet); names the file."""


def focus_version(columns: set[str]) -> str:
    if "InvoiceId" in columns or "PricingCurrency" in columns:
        return "1.2"
    if "ServiceSubcategory" in columns or "SkuMeter" in columns:
        return "1.1"
    return "1.0"


def parse_time(value: Any) -> int:
    """Microseconds since the epoch from an ISO 8601 text (``Z``, offset, or naive = UTC) or a datetime/date."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def period_of(us: int) -> str:
    dt = datetime.fromtimestamp(us / 1e6, UTC)
    return f"{dt.year:04d}-{dt.month:02d}"


def parse_money(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # A Parquet double: its shortest repr is what the exporter meant; the value is exact from here on.
        return parse_amount(repr(value))
    return parse_amount(str(value))


def parse_tags(value: Any) -> dict[str, str]:
    """FOCUS ``Tags``: a JSON object (CSV) or a map/struct (Parquet); values become text."""
    if value is None:
        return {}
    if isinstance(value, list):  # Arrow map → list of (key, value)
        return {str(k): "" if v is None else str(v) for k, v in value}
    if isinstance(value, dict):
        obj = value
    else:
        text = str(value).strip()
        if text in NULLS:
            return {}
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("Tags is not a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if v is not None}


def _cell(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str) and value.strip() in NULLS:
        return None
    return value


def _text(row: Mapping[str, Any], *names: str) -> str:
    for name in names:
        value = _cell(row, name)
        if value is not None:
            return str(value)
    return ""


class _RowError(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column, self.reason = column, reason


#: ``CostLine`` text fields and the FOCUS columns they are read from, first non-null wins.
_TEXT_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("provider", ("ProviderName", "ServiceProviderName", "PublisherName")),
    ("account", ("SubAccountId", "BillingAccountId")),
    ("service", ("ServiceName",)),
    ("resource_id", ("ResourceId",)),
    ("resource_name", ("ResourceName",)),
    ("resource_type", ("ResourceType",)),
    ("usage_type", ("x_UsageType", "x_usage_type")),
    ("operation", ("x_Operation", "x_operation")),
    ("description", ("ChargeDescription",)),
    ("sku", ("SkuId",)),
    ("sku_meter", ("SkuMeter",)),
    ("pricing_unit", ("PricingUnit",)),
    ("region", ("RegionId", "Region")),
    ("zone", ("AvailabilityZone",)),
    ("unit", ("ConsumedUnit",)),
)


class _Memo:
    """What one file's rows repeat, parsed once: the columns each field is read from (those the file has), and the
    timestamps, periods and tag texts seen (an hourly bill has a few thousand of each for a million rows)."""

    def __init__(self, columns: Iterable[str] | None = None) -> None:
        have = None if columns is None else set(columns)
        self.fields = [(f, tuple(n for n in names if have is None or n in have)) for f, names in _TEXT_FIELDS]
        self.times: dict[Any, int] = {}
        self.periods: dict[int, str] = {}
        self.tags: dict[str, dict[str, str]] = {}

    def time(self, value: Any) -> int:
        got = self.times.get(value) if isinstance(value, str) else None
        if got is None:
            got = parse_time(value)
            if isinstance(value, str):
                self.times[value] = got
        return got

    def period(self, us: int) -> str:
        got = self.periods.get(us)
        if got is None:
            got = self.periods[us] = period_of(us)
        return got

    def parse_tags(self, value: Any) -> dict[str, str]:
        if not isinstance(value, str):
            return parse_tags(value)
        got = self.tags.get(value)
        if got is None:
            got = self.tags[value] = parse_tags(value)
        return dict(got)


def row_to_line(
    row: Mapping[str, Any], line_id: str, source: str, cost_column: str = "BilledCost", memo: _Memo | None = None
) -> CostLine:
    """One FOCUS row as a ``CostLine``; raises ``_RowError(column, reason)`` on the first bad cell. ``memo``: the
    file's, when rows come by the million."""
    memo = memo or _Memo()

    def need(name: str) -> Any:
        value = _cell(row, name)
        if value is None:
            raise _RowError(name, "required value is missing")
        return value

    try:
        amount = parse_money(need(cost_column))
    except MoneyError as exc:
        raise _RowError(cost_column, str(exc)) from None
    currency = str(need("BillingCurrency")).strip()
    if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise _RowError("BillingCurrency", f"not an ISO 4217 code: {currency!r}")
    times = {}
    for name in ("BillingPeriodStart", "ChargePeriodStart", "ChargePeriodEnd"):
        try:
            times[name] = memo.time(need(name))
        except (ValueError, TypeError) as exc:
            raise _RowError(name, f"not a timestamp: {exc}") from None
    if times["ChargePeriodEnd"] < times["ChargePeriodStart"]:
        raise _RowError("ChargePeriodEnd", "ends before ChargePeriodStart")
    category = _text(row, "ChargeCategory", "ChargeType")
    if category and category.lower() not in CHARGE_CATEGORIES:
        raise _RowError("ChargeCategory", f"unknown charge category {category!r}")
    try:
        tags = memo.parse_tags(_cell(row, "Tags"))
    except (ValueError, TypeError) as exc:
        raise _RowError("Tags", f"not a JSON object: {exc}") from None
    quantity = None
    raw_quantity = _cell(row, "ConsumedQuantity")
    if raw_quantity is not None:
        try:
            quantity = parse_money(raw_quantity)
        except MoneyError as exc:
            raise _RowError("ConsumedQuantity", str(exc)) from None
    return CostLine(
        line_id=line_id,
        source=source,
        billing_period=memo.period(times["BillingPeriodStart"]),
        window=Window(times["ChargePeriodStart"], times["ChargePeriodEnd"]),
        amount=amount,
        currency=currency,
        charge_category=category,
        quantity=quantity,
        tags=tags,
        **_texts(row, memo.fields),
    )


def _texts(row: Mapping[str, Any], fields: list[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    """``_text`` of every field at once (a million rows make the calls count)."""
    out = {}
    for field, names in fields:
        text = ""
        for name in names:
            value = row.get(name)
            if value is None:
                continue
            if isinstance(value, str):
                if value.strip() in NULLS:
                    continue
                text = value
            else:
                text = str(value)
            break
        out[field] = text
    return out


def _sniff(data: bytes) -> str:
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:2] == b"\x1f\x8b":
        return "csv.gz"
    return "csv"


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip().lstrip("\ufeff") for h in header]
    yield 0, dict.fromkeys(header, "")  # the header, for column checks
    for cells in reader:
        if not cells:
            continue
        if len(cells) != len(header):
            yield reader.line_num, {"\x00error": f"{len(cells)} cells, header has {len(header)}"}
            continue
        yield reader.line_num, dict(zip(header, cells, strict=True))


def _parquet_rows(data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    yield 0, dict.fromkeys(table.column_names, "")
    index = 0
    for batch in table.to_batches(max_chunksize=65536):
        for row in batch.to_pylist():
            index += 1
            yield index, row


def file_bytes(path: str | Path, data: bytes | None, error: type[InputError] = FocusError) -> bytes:
    """``data`` when the caller has the bytes already, else the file's; an unreadable file raises ``error`` naming
    it (the readers of every bill format share this)."""
    if data is not None:
        return data
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc


def read_focus(
    path: str | Path, *, data: bytes | None = None, source: str = "focus", cost_column: str = "BilledCost"
) -> ImportResult:
    """Read one FOCUS file (kind sniffed from its bytes). Raises ``FocusError`` only when nothing can be read."""
    name = str(path)
    data = file_bytes(path, data)
    if cost_column not in COST_COLUMNS:
        raise FocusError(f"{name}: cost column {cost_column!r} is not one of {', '.join(COST_COLUMNS)}")
    sha = hashlib.sha256(data).hexdigest()
    kind = _sniff(data)
    try:
        if kind == "parquet":
            rows: Iterator[tuple[int, dict[str, Any]]] = _parquet_rows(data)
        else:
            raw = gzip.decompress(data) if kind == "csv.gz" else data
            rows = _csv_rows(raw.decode("utf-8-sig"))
        _, header = next(rows, (0, None))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        ERRORS.labels("billing", "focus_file").inc()
        raise FocusError(f"{name}: not a readable {kind} file: {exc}") from exc
    if header is None:
        raise FocusError(f"{name}: empty file")
    missing = [c for c in (*REQUIRED, cost_column) if c not in header]
    if missing:
        ERRORS.labels("billing", "focus_file").inc()
        raise FocusError(f"{name}: not FOCUS: missing required column(s) {', '.join(dict.fromkeys(missing))}")
    columns = list(header)
    lines: list[CostLine] = []
    problems: list[ImportProblem] = []
    seen: dict[str, int] = {}
    memo = _Memo(columns)
    count = 0
    try:
        for rowno, row in rows:
            count += 1
            if "\x00error" in row:
                problems.append(ImportProblem(name, rowno, "", row["\x00error"]))
                continue
            digest = hashlib.sha256("\x1f".join(str(row.get(c)) for c in columns).encode()).hexdigest()[:32]
            n = seen[digest] = seen.get(digest, 0) + 1
            try:
                lines.append(row_to_line(row, f"{source}:{digest}:{n}", source, cost_column, memo))
            except _RowError as exc:
                problems.append(ImportProblem(name, rowno, exc.column, exc.reason))
    except csv.Error as exc:
        problems.append(ImportProblem(name, count + 1, "", f"CSV syntax: {exc}; rest of file skipped"))
    for problem in problems:
        ERRORS.labels("billing", "focus_row").inc()
        log.warning("%s", problem)
    log.info(
        "read FOCUS file",
        extra={"file": name, "version": focus_version(set(columns)), "lines": len(lines), "bad": len(problems)},
    )
    return ImportResult(name, sha, lines, problems, rows=count)
