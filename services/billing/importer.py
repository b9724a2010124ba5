"""Running imports: bill folders and S3 exports into the store, and revenue files.

Reads configured sources (``config.billing.sources``); writes through ``store``. Folder files are imported once each
(content hash); S3 periods are replaced whole per manifest version. Returns what changed so the service knows which
billing periods to allocate again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg

from costmesh.common.config import BillSource
from costmesh.common.metrics import ERRORS

from . import store
from .bills import BillError, read_bill
from .s3source import Progress, S3Error, _log_progress, client_for, fetch_period, find_manifests

log = logging.getLogger(__name__)

BILL_SUFFIXES = (".csv", ".csv.gz", ".parquet")


async def import_paths(conn: asyncpg.Connection, paths: Iterable[Path], source: str) -> set[str]:
    """Import bill files; returns the billing periods that got new lines. A bad file is logged and skipped."""
    changed: set[str] = set()
    for path in sorted(paths):
        try:
            result = await asyncio.to_thread(read_bill, path, None, source)
        except BillError as exc:
            ERRORS.labels("billing", "bill_file").inc()
            log.error("%s", exc)
            continue
        added = await store.import_file(conn, result, source)
        if added:
            changed |= {line.billing_period for line in result.lines}
        log.info(
            "bill file",
            extra={"file": str(path), "source": source, "new_lines": added, "bad_rows": len(result.problems)},
        )
    return changed


async def import_folder(conn: asyncpg.Connection, folder: Path, source: str) -> set[str]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(BILL_SUFFIXES)]
    return await import_paths(conn, files, source)


async def import_s3(
    conn: asyncpg.Connection, client: Any, bucket: str, prefix: str, source: str, progress: Progress = _log_progress
) -> set[str]:
    """Import the newest manifest of every billing period not imported yet; returns the periods replaced."""
    manifests = await asyncio.to_thread(find_manifests, client, bucket, prefix)
    changed: set[str] = set()
    for period, manifest in sorted(manifests.items()):
        if await store.has_version(conn, source, period, manifest.version):
            continue
        results = await asyncio.to_thread(fetch_period, client, manifest, source, progress)
        await store.replace_period(conn, source, period, results, manifest.version)
        log.info(
            "billing period replaced",
            extra={"source": source, "period": period, "version": manifest.version, "files": len(results)},
        )
        changed.add(period)
    return changed


async def import_source(conn: asyncpg.Connection, src: BillSource) -> set[str]:
    if src.kind == "folder":
        return await import_folder(conn, Path(src.path), src.name)
    client = client_for(src.region, src.endpoint_url)
    try:
        return await import_s3(conn, client, src.bucket, src.prefix, src.name)
    except S3Error as exc:
        ERRORS.labels("billing", "s3").inc()
        log.error("%s", exc)
        return set()
