"""Reading any bill file: FOCUS or AWS CUR (legacy 1.0 or 2.0), CSV, gzip CSV or Parquet, told apart by its columns.

Reads files; emits ``ImportResult``. Raises ``BillError`` naming the file when it is neither format.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from costmesh.common.errors import InputError

from .focus import FocusError, file_bytes, read_focus
from .model import ImportResult


class BillError(InputError):
    """A bill file that cannot be read; the message names the file and why."""


def columns_of(data: bytes) -> list[str]:
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        return list(pq.read_schema(io.BytesIO(data)).names)
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            head = fh.readline(1 << 20)
    else:
        head = data.split(b"\n", 1)[0]
    return next(csv.reader([head.decode("utf-8-sig", "replace")]), [])


def bill_format(columns: list[str]) -> str:
    names = set(columns)
    if "BilledCost" in names:
        return "focus"
    if "lineItem/UnblendedCost" in names or "line_item_unblended_cost" in names:
        return "cur"
    return ""


def read_bill(
    path: str | Path, data: bytes | None = None, source: str = "", cost_column: str = "BilledCost"
) -> ImportResult:
    """Read a bill file; ``source`` names where it came from and prefixes its line ids (default: its format)."""
    name = str(path)
    data = file_bytes(path, data, BillError)
    try:
        kind = bill_format(columns_of(data))
    except (OSError, EOFError, ValueError) as exc:
        raise BillError(f"{name}: not a CSV or Parquet file: {exc}") from exc
    try:
        if kind == "focus":
            return read_focus(name, data=data, source=source or "focus", cost_column=cost_column)
        if kind == "cur":
            from .cur import read_cur

            return read_cur(name, data=data, source=source or "cur")
    except FocusError as exc:
        raise BillError(str(exc)) from exc
    raise BillError(f"{name}: neither FOCUS (no BilledCost column) nor AWS CUR (no unblended cost column)")
