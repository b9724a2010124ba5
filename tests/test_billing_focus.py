"""FOCUS ingest: every shared sample loads in CSV, gzip CSV and Parquet; bad rows are reported precisely and skipped;
importing the same file twice changes nothing; FOCUS 1.1/1.2 column sets load too."""

from __future__ import annotations

import csv
import gzip
import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from costmesh.billing import store
from costmesh.billing.focus import FocusError, focus_version, read_focus
from costmesh.common import db
from costmesh.common.metrics import ERRORS

from .conftest import SHARED_DATA

FOCUS_DIR = SHARED_DATA / "billing" / "focus"
SAMPLES = sorted(FOCUS_DIR.glob("*.csv"))
ALL = FOCUS_DIR / "focus-1.0_sample_1000_all-providers.csv"


def _csv_sum(path) -> tuple[int, Decimal]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return len(rows), sum((Decimal(r["BilledCost"]) for r in rows), Decimal(0))


def test_samples_are_present():
    assert len(SAMPLES) == 4


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_loads_whole(path):
    result = read_focus(path)
    n, total = _csv_sum(path)
    assert result.problems == []
    assert len(result.lines) == n == result.rows
    assert sum(line.amount for line in result.lines) == total
    assert len({line.line_id for line in result.lines}) == n
    assert all(line.currency == "USD" for line in result.lines)
    # one Oracle row of the sample is billed in the October period
    assert {line.billing_period for line in result.lines} <= {"2024-09", "2024-10"}


def test_fields_are_mapped():
    lines = read_focus(ALL).lines
    first = lines[0]
    assert first.amount == Decimal("0.00000080000")
    assert first.provider == "AWS" and first.service == "Amazon Simple Queue Service"
    assert first.resource_id.startswith("arn:ats:sqs:")
    assert first.window.end_us - first.window.start_us == 3_600_000_000
    tagged = lines[1]
    assert tagged.tags == {"application": "BrightLensMatrix", "environment": "dev", "business_unit": "ViennaAI"}
    assert {line.provider for line in lines} == {"AWS", "Microsoft", "Oracle"}
    assert any(line.amount < 0 for line in lines)  # credits stay negative


def test_gzip_and_parquet_give_the_same_lines(tmp_path):
    plain = read_focus(ALL)
    gz = tmp_path / "f.csv.gz"
    gz.write_bytes(gzip.compress(ALL.read_bytes()))
    # typed like a real export: decimal cost, timestamps, doubles for quantities, NULL as null
    types = {"Tags": pa.string(), "BilledCost": pa.decimal128(20, 11), "ChargePeriodStart": pa.timestamp("s")}
    table = pacsv.read_csv(ALL, convert_options=pacsv.ConvertOptions(column_types=types))
    assert table.schema.field("ChargePeriodEnd").type == pa.timestamp("s")
    parquet = tmp_path / "f.parquet"
    pq.write_table(table, parquet)
    for other in (read_focus(gz), read_focus(parquet)):
        assert other.problems == []
        assert len(other.lines) == len(plain.lines)
        assert sum(x.amount for x in other.lines) == sum(x.amount for x in plain.lines)
        assert [x.tags for x in other.lines] == [x.tags for x in plain.lines]


def _mutate(rows: list[dict], header: list[str]) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def test_bad_rows_are_reported_and_skipped(tmp_path):
    reader = csv.DictReader(io.StringIO(ALL.read_text()))
    header = list(reader.fieldnames or [])
    rows = [next(reader) for _ in range(10)]
    rows[2]["BilledCost"] = "12,5"
    rows[4]["BillingCurrency"] = "dollars"
    rows[6]["ChargePeriodStart"] = "yesterday"
    rows[7]["Tags"] = "{not json"
    rows[8]["ChargeCategory"] = "Gift"
    path = tmp_path / "bad.csv"
    path.write_bytes(_mutate(rows, header))
    before = ERRORS.labels("billing", "focus_row")._value.get()
    result = read_focus(path)
    assert len(result.lines) == 5
    got = {(p.row, p.column) for p in result.problems}
    # row numbers are physical lines: the header is line 1, so data row i is line i + 2
    assert got == {
        (4, "BilledCost"),
        (6, "BillingCurrency"),
        (8, "ChargePeriodStart"),
        (9, "Tags"),
        (10, "ChargeCategory"),
    }
    message = str(next(p for p in result.problems if p.column == "BilledCost"))
    assert message.startswith(f"{path}: row 4: column BilledCost: not a decimal number")
    assert ERRORS.labels("billing", "focus_row")._value.get() - before == 5


def test_a_file_without_focus_columns_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(FocusError, match=r"x\.csv: not FOCUS: missing required column\(s\) BilledCost"):
        read_focus(path)


def test_later_focus_versions_load(tmp_path):
    reader = csv.DictReader(io.StringIO(ALL.read_text()))
    rows = [next(reader) for _ in range(20)]
    header = [*(reader.fieldnames or []), "ServiceSubcategory", "InvoiceId", "PricingCurrency"]
    for r in rows:
        r.update(ServiceSubcategory="Other", InvoiceId="INV-1", PricingCurrency="USD")
        r["BillingCurrency"] = "EUR" if r is rows[0] else r["BillingCurrency"]
    path = tmp_path / "focus12.csv"
    path.write_bytes(_mutate(rows, header))
    result = read_focus(path)
    assert focus_version(set(header)) == "1.2" and focus_version({"SkuMeter"}) == "1.1"
    assert len(result.lines) == 20 and result.problems == []
    assert [line.currency for line in result.lines[:2]] == ["EUR", "USD"]  # currency per row


async def test_reimport_changes_nothing(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        result = read_focus(ALL)
        async with pool.acquire() as conn:
            assert await store.import_file(conn, result, "focus") == 1000
            assert await store.import_file(conn, read_focus(ALL), "focus") == 0
            # the same rows in another file (a re-export) add nothing either: line identity
            again = read_focus(ALL, data=ALL.read_bytes() + b"\n")
            assert again.sha256 != result.sha256
            assert await store.import_file(conn, again, "focus") == 0
            n, total = await conn.fetchrow("SELECT count(*), sum(amount) FROM cost_lines")
            assert (n, total) == (1000, sum(x.amount for x in result.lines))
            loaded = await store.load_lines(conn)
            assert sorted(x.line_id for x in loaded) == sorted(x.line_id for x in result.lines)
            assert {x.line_id: x.amount for x in loaded} == {x.line_id: x.amount for x in result.lines}
    finally:
        await pool.close()
