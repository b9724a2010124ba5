"""One source for the contract's counters and columns: ``schemas.COUNTERS`` and ``schemas.CONSUMPTION_KEY``.

Most code derives from them. Where they are written out (a struct's fields, an applied migration, C that fills a
fixed array for speed), this module holds the check of that site. ``test_every_site_that_spells_out_the_counters``
finds every such place in the tree (seven or more of the nine counter names within a few lines) and fails for a file
without a check here, so a new site cannot go unchecked; each check puts distinct values through its site and requires
every counter to arrive in the field of its own name.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from costmesh.attributor import storage
from costmesh.attributor.apply import AGG_COLUMNS, apply_batches, prepare
from costmesh.billing import store
from costmesh.billing.model import Window
from costmesh.common import db
from costmesh.common.prices import PriceTable
from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS, CallBatch, Codec, ObservedCall, add_counters
from costmesh.common.usage import Usage, hourly_from_records
from costmesh.native import _fold_py
from costmesh.sensor.analyze import render_table

from .conftest import REPO
from .test_native_parsers import BUILDS, conversation, pcap_bytes, run_capture

try:
    from costmesh.native import _fold
except ImportError as exc:  # the compiled build is part of the product: its absence is a failure, not a skip
    raise ImportError("compiled costmesh.native._fold missing: run `make deps`") from exc

#: A distinct value per counter (primes), so that a counter arriving in another's field cannot go unnoticed.
VALUES = dict(zip(COUNTERS, (2, 3, 5, 7, 11, 13, 17, 19, 23), strict=True))
T0 = 1_767_225_600_000_000
#: Without ``errors``: what a billing ``Usage`` carries.
USAGE_COUNTERS = tuple(c for c in COUNTERS if c != "errors")


def record(**over) -> ObservedCall:
    fields = dict(
        window_start_us=T0,
        window_end_us=T0 + 1_000_000,
        node="n",
        src_workload="web",
        dst="db",
        protocol="http",
        operation="GET /",
        tenant="acme",
        tenant_method="header",
        feature="f",
        agent="a",
    )
    return ObservedCall(**{**fields, **VALUES, **over})


def _site_files() -> dict[str, list[int]]:
    names = [re.compile(rf"\b{c}\b") for c in COUNTERS]
    found: dict[str, list[int]] = {}
    for folder in ("services", "native", "loadtests"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in (".py", ".pyx", ".pxi", ".pxd") or "__pycache__" in path.parts:
                continue
            lines = path.read_text().splitlines()
            i = 0
            while i < len(lines):
                window = "\n".join(lines[i : i + 14])
                if sum(1 for n in names if n.search(window)) >= 7:
                    found.setdefault(str(path.relative_to(REPO)), []).append(i + 1)
                    i += 14
                else:
                    i += 1
    return found


#: Every file that spells the counters out → the checks here that hold it to the contract.
SITES = {
    "services/common/schemas.py": ["test_observed_call_fields_and_add_counters"],
    "services/common/migrations.py": ["test_tables_columns_and_the_apply_path"],
    "services/attributor/apply.py": ["test_tables_columns_and_the_apply_path"],
    "services/billing/store.py": ["test_tables_columns_and_the_apply_path"],
    "services/common/usage.py": ["test_usage_fields_and_the_capture_path"],
    "native/_fold.pyx": ["test_both_folds_put_each_counter_in_its_column"],
    "native/_records.pxi": ["test_both_engines_make_records_with_each_counter_in_its_field"],
    "native/_records_py.py": ["test_both_engines_make_records_with_each_counter_in_its_field"],
    "services/sensor/analyze.py": ["test_analyze_shows_each_counter_where_its_column_says"],
    "services/api/answers.py": ["test_api_answers_declare_the_counters_in_contract_order"],
}


def test_every_site_that_spells_out_the_counters_has_its_check():
    found = _site_files()
    unchecked = {f: lines for f, lines in found.items() if f not in SITES}
    assert not unchecked, f"counters spelled out without a check in {Path(__file__).name}: {unchecked}"
    stale = sorted(set(SITES) - set(found))
    assert not stale, f"no longer spell the counters out (drop them from SITES): {stale}"
    for checks in SITES.values():
        for name in checks:
            assert callable(globals().get(name)), name


def test_observed_call_fields_and_add_counters():
    fields = [f.name for f in msgspec.structs.fields(ObservedCall)]
    start = fields.index(COUNTERS[0])
    assert tuple(fields[start : start + len(COUNTERS)]) == COUNTERS
    assert set(CONSUMPTION_KEY) <= set(fields)
    into = record()
    add_counters(into, record(**{c: 100 * v for c, v in VALUES.items()}))
    assert {c: getattr(into, c) for c in COUNTERS} == {c: 101 * v for c, v in VALUES.items()}


def test_usage_fields_and_the_capture_path():
    fields = [f.name for f in msgspec.structs.fields(Usage)]
    start = fields.index(USAGE_COUNTERS[0])
    assert tuple(fields[start : start + len(USAGE_COUNTERS)]) == USAGE_COUNTERS
    consumption = hourly_from_records([record(), record()])
    (usage,) = consumption.usage
    assert {c: getattr(usage, c) for c in USAGE_COUNTERS} == {c: 2 * VALUES[c] for c in USAGE_COUNTERS}
    assert all(getattr(usage, k) == getattr(record(), k) for k in CONSUMPTION_KEY)
    (ai,) = consumption.ai
    tokens = [c for c in USAGE_COUNTERS if c.startswith("tokens_")]
    assert {c: getattr(ai, c) for c in ["requests", *tokens]} == {c: 2 * VALUES[c] for c in ["requests", *tokens]}


def test_both_folds_put_each_counter_in_its_column():
    payload = Codec().encode(CallBatch(batch_id="b", node="n", seq=1, records=[record(), record()]))
    for folder in (_fold.Folder(), _fold_py.Folder()):
        assert folder.add(payload) is not None
        (row,) = folder.rows()
        got = dict(zip(AGG_COLUMNS, row, strict=True))
        assert {c: got[c] for c in COUNTERS} == {c: 2 * v for c, v in VALUES.items()}, type(folder)
        assert {k: got[k] for k in CONSUMPTION_KEY} == {k: getattr(record(), k) for k in CONSUMPTION_KEY}


async def test_tables_columns_and_the_apply_path(fresh_dsn):
    pool = await db.create_pool(fresh_dsn)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            tables: dict[str, list[str]] = {}
            for r in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position"
            ):
                tables.setdefault(r["table_name"], []).append(r["column_name"])
            full = {t for t, cols in tables.items() if set(COUNTERS) <= set(cols)}
            assert {"consumption_minute", "consumption_hourly", "consumption_daily"} <= full
            for name, cols in tables.items():  # any counters a table has, in contract order; all nine where it says
                assert tuple(c for c in cols if c in COUNTERS) == tuple(c for c in COUNTERS if c in cols), name
                if name in full:
                    assert tuple(c for c in cols if c in CONSUMPTION_KEY) == CONSUMPTION_KEY, name
            await prepare(conn)
            staging = await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'staging_agg'::regclass AND attnum > 0 "
                "ORDER BY attnum"
            )
            assert tuple(r["attname"] for r in staging) == AGG_COLUMNS
            await apply_batches(conn, [CallBatch(batch_id="b", node="n", seq=1, records=[record()])], PriceTable())
            row = await conn.fetchrow("SELECT * FROM consumption_minute")
            assert {c: row[c] for c in COUNTERS} == VALUES
            minute = row["minute"]
            await storage.refresh_rollups(conn, [minute], storage.Upkeep(flavour=await storage.flavour(conn)))
            await storage.refresh_side_rollups(conn, [minute])
            consumption = await store.load_consumption(conn, Window(T0 - 3_600_000_000, T0 + 3_600_000_000))
            (usage,) = consumption.usage
            assert {c: getattr(usage, c) for c in USAGE_COUNTERS} == {c: VALUES[c] for c in USAGE_COUNTERS}
    finally:
        await pool.close()


def test_both_engines_make_records_with_each_counter_in_its_field():
    """An AI call answered with a 503 and a usage body: requests, errors, bytes both ways, server time and all four
    token counts are different numbers, and each must land in its own field (the engines fill fixed arrays)."""
    usage = {"prompt_tokens": 31, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 11}}
    usage["completion_tokens_details"] = {"reasoning_tokens": 3}
    body = msgspec.json.encode({"model": "gpt-x", "usage": usage})
    req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}"
    resp = b"HTTP/1.1 503 Busy\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    import io

    results = []
    for name in sorted(BUILDS):
        calls, _stats, error = run_capture(BUILDS[name], io.BytesIO(pcap_bytes(conversation([(req, resp)]))))
        assert error is None
        (call,) = [c for c in calls if c["protocol"] == "http"]
        results.append({c: call[c] for c in COUNTERS})
    assert results[0] == results[1]
    got = results[0]
    assert (got["requests"], got["errors"], got["bytes_out"], got["bytes_in"]) == (1, 1, len(req), len(resp))
    assert got["busy_us"] > 0
    assert (got["tokens_in"], got["tokens_out"], got["tokens_cached"], got["tokens_reasoning"]) == (20, 7, 11, 3)


def test_analyze_shows_each_counter_where_its_column_says():
    """``costmesh analyze`` sums counters into its two tables (tenants, busiest edges)."""
    text = render_table([record()], {"parse_errors": {}, "frames": 1, "flows": 1, "calls": 1})
    rows = [line.split() for line in text.splitlines()]
    tenant = rows[rows.index(["tenant", "requests", "db_queries", "errors", "tokens_in", "tokens_out"]) + 2]
    v = VALUES
    shown = (v["requests"], 0, v["errors"], v["tokens_in"] + v["tokens_cached"], v["tokens_out"])
    assert tenant == ["acme", *map(str, shown)]
    edge = rows[rows.index(["src", "dst", "protocol", "calls", "bytes", "busy_us"]) + 2]
    assert edge == ["web", "db", "http", *map(str, (v["requests"], v["bytes_in"] + v["bytes_out"], v["busy_us"]))]


def test_api_answers_declare_the_counters_in_contract_order():
    """The API's usage rows carry every counter, and the customer page's edge rows a subset, each in contract order
    (``queries`` builds its SQL from these declarations, so a counter in the wrong place would be a wrong column)."""
    from costmesh.api import answers, queries

    usage = [f.name for f in msgspec.structs.fields(answers.UsageRow) if f.name in COUNTERS]
    assert tuple(usage) == COUNTERS
    edge = [f.name for f in msgspec.structs.fields(answers.Operation) if f.name in COUNTERS]
    assert tuple(edge) == tuple(c for c in COUNTERS if c in edge) == queries.OPERATION_MEASURES
