"""AWS CUR 2.0 / Data Exports (and legacy CUR) from S3, manifest-driven.

Reads: the manifests under a bucket prefix (``…/metadata/BILLING_PERIOD=YYYY-MM/<export>-Manifest.json`` for Data
Exports, ``…/<yyyymmdd-yyyymmdd>/<report>-Manifest.json`` for legacy CUR) and then only the data files a manifest
lists (``dataFiles`` / ``reportKeys``): a file no manifest names is never read, so a half-written delivery is never
imported. Emits, per billing period, the newest manifest's ``ImportResult``s; the caller replaces the period whole
(``store.replace_period``), keyed by the manifest's execution/assembly id, so a restatement swaps atomically and an
unchanged manifest is a no-op. Progress is logged per file (files done / total, bytes) because a month of CUR can be
gigabytes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from costmesh.common.errors import InputError

from .bills import read_bill
from .model import ImportResult

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"BILLING_PERIOD=(\d{4}-\d{2})")
_LEGACY_RANGE = re.compile(r"/(\d{4})(\d{2})01-\d{8}/")

Progress = Callable[[str, int, int, int], None]  # period, files done, files total, bytes so far


class S3Error(InputError):
    """A manifest or data file that cannot be used; names the s3:// location."""


class Manifest(msgspec.Struct, frozen=True):
    key: str
    period: str
    version: str
    files: tuple[tuple[str, str], ...]  # (bucket, key)
    last_modified: datetime


def _split_uri(uri: str, default_bucket: str) -> tuple[str, str]:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        return bucket, key
    return default_bucket, uri.lstrip("/")


def parse_manifest(bucket: str, key: str, body: bytes, last_modified: datetime) -> Manifest:
    where = f"s3://{bucket}/{key}"
    try:
        doc: dict[str, Any] = json.loads(body)
    except ValueError as exc:
        raise S3Error(f"{where}: manifest is not JSON: {exc}") from None
    if "dataFiles" in doc:  # Data Exports (CUR 2.0, FOCUS)
        files = doc["dataFiles"]
        version = str(doc.get("executionId") or "")
    elif "reportKeys" in doc:  # legacy CUR
        files = doc["reportKeys"]
        version = str(doc.get("assemblyId") or "")
    else:
        raise S3Error(f"{where}: manifest has neither dataFiles nor reportKeys")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise S3Error(f"{where}: manifest file list is not a list of strings")
    period = ""
    match = _PARTITION.search(key)
    if match:
        period = match.group(1)
    else:
        start = str((doc.get("billingPeriod") or {}).get("start", ""))
        if re.match(r"\d{8}", start):
            period = f"{start[:4]}-{start[4:6]}"
        elif (legacy := _LEGACY_RANGE.search("/" + key)) is not None:
            period = f"{legacy.group(1)}-{legacy.group(2)}"
    if not period:
        raise S3Error(f"{where}: cannot tell the billing period (no BILLING_PERIOD= partition or billingPeriod)")
    version = version or f"{last_modified.isoformat()}"
    return Manifest(key, period, version, tuple(_split_uri(f, bucket) for f in files), last_modified)


def find_manifests(client: Any, bucket: str, prefix: str) -> dict[str, Manifest]:
    """The newest manifest per billing period under ``prefix`` (by last-modified time, then key)."""
    newest: dict[str, Manifest] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if not key.endswith("Manifest.json"):
                continue
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            manifest = parse_manifest(bucket, key, body, obj["LastModified"])
            old = newest.get(manifest.period)
            if old is None or (manifest.last_modified, manifest.key) > (old.last_modified, old.key):
                newest[manifest.period] = manifest
    return newest


def _log_progress(period: str, done: int, total: int, nbytes: int) -> None:
    log.info("importing billing period", extra={"period": period, "files": f"{done}/{total}", "bytes": nbytes})


def fetch_period(
    client: Any, manifest: Manifest, source: str, progress: Progress = _log_progress
) -> list[ImportResult]:
    """Download and parse exactly the files ``manifest`` lists."""
    results = []
    nbytes = 0
    total = len(manifest.files)
    for done, (bucket, key) in enumerate(manifest.files, 1):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's error tree; translated at this seam
            raise S3Error(f"s3://{bucket}/{key}: listed in {manifest.key} but cannot be read: {exc}") from exc
        nbytes += len(body)
        results.append(read_bill(f"s3://{bucket}/{key}", data=body, source=source))
        progress(manifest.period, done, total, nbytes)
    return results


def client_for(region: str, endpoint_url: str = "") -> Any:
    import boto3

    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url or None)
