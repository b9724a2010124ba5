"""The ``costmesh billing`` actions other than running the service: ``unmatched`` (what the bill pays for that no
observation explains). Reads bill files (and captures) or the database; prints a table. Exit 0, 2 on bad input."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from costmesh.common.config import Config

from .bills import BillError, read_bill
from .capture import consumption_from_captures
from .mapping import Mapper, Unmatched, largest_unmatched
from .model import CostLine
from .pipeline import observed_names


async def _from_db(dsn: str, period: str | None) -> tuple[list[CostLine], set[str]]:
    from costmesh.common import db

    from . import store

    pool = await db.create_pool(dsn)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            lines = await store.load_lines(conn, period)
            rows = await conn.fetch(
                "SELECT src_workload, dst FROM consumption_hourly UNION SELECT src_workload, dst FROM ai_usage_hourly "
                "UNION SELECT workload, '' FROM queue_hourly"
            )
    finally:
        await pool.close()
    return lines, {r["dst"] for r in rows} | {r["src_workload"] for r in rows}


def format_unmatched(items: list[Unmatched], total: int) -> str:
    head = f"{total} cost line(s) match no observed resource; the {len(items)} largest:"
    rows = [("amount", "currency", "service", "resource / usage type", "why")]
    for u in items:
        line = u.line
        rows.append(
            (
                str(line.amount),
                line.currency,
                line.service[:32],
                (line.resource_id or line.usage_type or "-")[-48:],
                u.reason,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    text = [head]
    for r in rows:
        cells = [r[0].rjust(widths[0]), *(c.ljust(w) for c, w in zip(r[1:4], widths[1:], strict=True)), r[4]]
        text.append("  ".join(cells))
    return "\n".join(text)


def unmatched(args: argparse.Namespace, config: Config) -> int:
    if args.bill:
        lines: list[CostLine] = []
        try:
            for path in args.bill:
                result = read_bill(path)
                lines.extend(result.lines)
                for problem in result.problems:
                    print(f"costmesh: skipped {problem}", file=sys.stderr)
        except BillError as exc:
            print(f"costmesh: {exc}", file=sys.stderr)
            return 2
        names = observed_names(consumption_from_captures([Path(p) for p in args.capture], config), config)
    else:
        from costmesh.common.config import ConfigError
        from costmesh.common.db import dsn_of

        try:
            dsn = args.dsn or dsn_of(config.postgres)
        except ConfigError as exc:
            print(f"costmesh: invalid config: {exc}", file=sys.stderr)
            return 2
        if not dsn:
            print("costmesh: give --bill FILE, or --dsn / postgres.dsn to read imported bills", file=sys.stderr)
            return 2
        lines, names = asyncio.run(_from_db(dsn, args.period))
        names |= {w.name for w in config.workloads}
    if args.period:
        lines = [line for line in lines if line.billing_period == args.period]
    _, missing = Mapper(config.resources, names).map_all(lines)
    print(format_unmatched(largest_unmatched(missing, args.limit), len(missing)))
    return 0
