"""CUR from S3 against moto's S3 server on loopback: manifest-driven (unlisted files are never read), csv.gz and
Parquet, BILLING_PERIOD= partitions, restated periods replaced whole and atomically, legacy CUR 1.0 manifests."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from datetime import datetime
from decimal import Decimal

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from costmesh.billing import store
from costmesh.billing.cur import read_cur
from costmesh.billing.importer import import_s3
from costmesh.billing.s3source import S3Error
from costmesh.common import db

from .conftest import SHARED_DATA

LEGACY = SHARED_DATA / "billing" / "aws-cur" / "cur-legacy_sample-anonymous-aws-export-dataset.csv"
BUCKET = "bills"
EXPORT = "exports/cur2"


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_url)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _snake(column: str) -> str:
    return "_".join(re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", part).lower() for part in column.split("/"))


def cur2_csv_gz(rows: list[dict[str, str]]) -> bytes:
    """The legacy sample's rows under CUR 2.0 names (``lineItem/UnblendedCost`` → ``line_item_unblended_cost``)."""
    out = io.StringIO()
    names = [_snake(c) for c in rows[0]]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(names)
    w.writerows([list(r.values()) for r in rows])
    return gzip.compress(out.getvalue().encode())


def cur2_parquet(period_start: datetime, n: int) -> bytes:
    table = pa.table(
        {
            "identity_line_item_id": [f"id{i}" for i in range(n)],
            "identity_time_interval": ["x"] * n,
            "bill_billing_period_start_date": pa.array([period_start] * n, pa.timestamp("ms")),
            "line_item_usage_start_date": pa.array([period_start] * n, pa.timestamp("ms")),
            "line_item_usage_end_date": pa.array([period_start.replace(hour=1)] * n, pa.timestamp("ms")),
            "line_item_unblended_cost": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(18, 8)),
            "line_item_currency_code": ["USD"] * n,
            "line_item_usage_type": ["USE1-NatGateway-Bytes"] * n,
            "line_item_resource_id": [f"arn:aws:ec2:us-east-1:1:natgateway/nat-{i}" for i in range(n)],
            "resource_tags": pa.array(
                [[("user_customer", f"c{i % 3}")] for i in range(n)], pa.map_(pa.string(), pa.string())
            ),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def put(client, key: str, body: bytes) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def manifest(client, period: str, execution: str, files: list[str]) -> None:
    doc = {"executionId": execution, "exportArn": "arn:aws:bcm-data-exports:::export/x", "dataFiles": files}
    put(client, f"{EXPORT}/metadata/BILLING_PERIOD={period}/cur2-Manifest.json", json.dumps(doc).encode())


def legacy_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(LEGACY.read_text())))


async def _totals(conn, period: str) -> tuple[int, Decimal]:
    n, total = await conn.fetchrow(
        "SELECT count(*), coalesce(sum(amount), 0) FROM cost_lines WHERE billing_period = $1", period
    )
    return n, total


async def test_manifest_driven_import_restatement_and_legacy(s3, fresh_dsn):
    rows = legacy_rows()
    half = len(rows) // 2
    data = f"{EXPORT}/data/BILLING_PERIOD=2023-11"
    put(s3, f"{data}/cur2-00001.csv.gz", cur2_csv_gz(rows[:half]))
    put(s3, f"{data}/cur2-00002.csv.gz", cur2_csv_gz(rows[half:]))
    # a stray file no manifest lists: a huge amount that must never be imported
    stray = [dict(rows[0], **{"lineItem/UnblendedCost": "999999"})]
    put(s3, f"{data}/cur2-00003.csv.gz", cur2_csv_gz(stray))
    manifest(
        s3, "2023-11", "exec-1", [f"s3://{BUCKET}/{data}/cur2-00001.csv.gz", f"s3://{BUCKET}/{data}/cur2-00002.csv.gz"]
    )
    dec = f"{EXPORT}/data/BILLING_PERIOD=2023-12/cur2-00001.snappy.parquet"
    put(s3, dec, cur2_parquet(datetime(2023, 12, 1), 30))
    manifest(s3, "2023-12", "exec-9", [f"s3://{BUCKET}/{dec}"])

    expected_total = sum((line.amount for line in read_cur(LEGACY).lines), Decimal(0))
    seen: list[tuple[str, int, int]] = []
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            changed = await import_s3(conn, s3, BUCKET, EXPORT, "cur", lambda p, d, t, b: seen.append((p, d, t)))
            assert changed == {"2023-11", "2023-12"}
            assert await _totals(conn, "2023-11") == (len(rows), expected_total)
            assert await _totals(conn, "2023-12") == (30, Decimal("4.35"))
            assert ("2023-11", 2, 2) in seen and ("2023-12", 1, 1) in seen  # progress per file
            tags = await conn.fetchval("SELECT tags FROM cost_lines WHERE billing_period = '2023-12' LIMIT 1")
            assert json.loads(tags)["customer"].startswith("c")

            # the same manifests again: nothing is downloaded or changed
            seen.clear()
            assert await import_s3(conn, s3, BUCKET, EXPORT, "cur", lambda *a: seen.append(a)) == set()
            assert seen == []

            # a restatement listing a file that is not there fails before touching the stored period
            manifest(s3, "2023-11", "exec-2", [f"s3://{BUCKET}/{data}/missing.csv.gz"])
            with pytest.raises(S3Error, match=r"missing\.csv\.gz: listed in"):
                await import_s3(conn, s3, BUCKET, EXPORT, "cur")
            assert await _totals(conn, "2023-11") == (len(rows), expected_total)

            # a good restatement replaces the period whole: only the rows of its one file remain
            put(s3, f"{data}/cur2-00004.csv.gz", cur2_csv_gz(rows[:10]))
            manifest(s3, "2023-11", "exec-3", [f"s3://{BUCKET}/{data}/cur2-00004.csv.gz"])
            assert await import_s3(conn, s3, BUCKET, EXPORT, "cur") == {"2023-11"}
            ten = sum((line.amount for line in read_cur(LEGACY).lines[:10]), Decimal(0))
            assert await _totals(conn, "2023-11") == (10, ten)
            assert await _totals(conn, "2023-12") == (30, Decimal("4.35"))  # other periods untouched

            # legacy CUR 1.0 layout and manifest (reportKeys, assemblyId) in another prefix
            key = "legacy/report/20231101-20231201/asm-1/report-1.csv.gz"
            put(s3, key, gzip.compress(LEGACY.read_bytes()))
            doc = {"assemblyId": "asm-1", "reportKeys": [key], "billingPeriod": {"start": "20231101T000000.000Z"}}
            put(s3, "legacy/report/20231101-20231201/report-Manifest.json", json.dumps(doc).encode())
            assert await import_s3(conn, s3, BUCKET, "legacy/", "cur-legacy") == {"2023-11"}
            n, total = await conn.fetchrow(
                "SELECT count(*), sum(amount) FROM cost_lines WHERE source = $1 AND billing_period = $2",
                "cur-legacy",
                "2023-11",
            )
            assert (n, total) == (len(rows), expected_total)
            lines = await store.load_lines(conn, "2023-12")
            assert {line.usage_type for line in lines} == {"USE1-NatGateway-Bytes"}
    finally:
        await pool.close()


async def test_configured_s3_source(s3, moto_url, fresh_dsn):
    from costmesh.billing.importer import import_source
    from costmesh.common.config import BillSource

    data = f"{EXPORT}/data/BILLING_PERIOD=2023-12/cur2-00001.snappy.parquet"
    put(s3, data, cur2_parquet(datetime(2023, 12, 1), 12))
    manifest(s3, "2023-12", "exec-1", [f"s3://{BUCKET}/{data}"])
    source = BillSource(name="aws", kind="s3", bucket=BUCKET, prefix=EXPORT, endpoint_url=moto_url)
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            assert await import_source(conn, source) == {"2023-12"}
            assert await _totals(conn, "2023-12") == (12, Decimal("0.66"))
            assert await conn.fetchval("SELECT DISTINCT source FROM cost_lines") == "aws"
            broken = BillSource(name="aws", kind="s3", bucket=BUCKET, prefix="nothing-here", endpoint_url=moto_url)
            assert await import_source(conn, broken) == set()
    finally:
        await pool.close()


def test_legacy_sample_reads_whole():
    result = read_cur(LEGACY)
    rows = legacy_rows()
    assert result.problems == [] and len(result.lines) == len(rows) == 1281
    assert sum(x.amount for x in result.lines) == sum(Decimal(r["lineItem/UnblendedCost"]) for r in rows)
    assert {x.billing_period for x in result.lines} == {"2023-11"}
    assert {x.charge_category for x in result.lines} == {"Usage", "Tax"}
