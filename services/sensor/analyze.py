"""``costmesh analyze``: offline analysis of one capture through the very parser the live sensor runs.

Reads: a pcap/pcapng file and the config (rules, workloads, sensor ports). Emits on stdout either one JSON object
``{"calls": [ObservedCall, ...], "stats": {...}}`` or a table per tenant (requests, DB queries, tokens) followed by the
busiest edges. Only contract fields are printed: no header, body or credential ever reaches the output.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import msgspec

from costmesh.common.config import Config
from costmesh.common.schemas import ObservedCall
from costmesh.common.tables import render_table as table

from .core import BUILD, CaptureError, Sensor


def analyze(path: Path, config: Config, node: str = "offline") -> tuple[list[ObservedCall], dict, str]:
    """Calls, stats and the capture error (empty when the file was read to its end)."""
    sensor = Sensor(config, node)
    error = ""
    calls: list[ObservedCall] = []
    try:
        sensor.feed_capture(path, calls.extend)
    except CaptureError as exc:
        error = str(exc)
    calls += sensor.drain(final=True)
    raw = sensor.stats()
    stats = {
        "build": BUILD,
        "frames": raw["counters"]["frames"],
        "flows": raw["counters"]["flows"],
        "calls": len(calls),
        "parse_errors": raw["errors"],
        "counters": {k: v for k, v in raw["counters"].items() if v},
    }
    if error:
        stats["capture_error"] = error
    return calls, stats, error


def render_json(calls: list[ObservedCall], stats: dict) -> str:
    return msgspec.json.encode({"calls": calls, "stats": stats}).decode()


def render_table(calls: list[ObservedCall], stats: dict, top_edges: int = 10) -> str:
    tenants: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    edges: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for c in calls:
        t = tenants[c.tenant]
        if c.protocol == "postgres":
            t["db_queries"] += c.requests
        elif c.protocol == "http":
            t["requests"] += c.requests
        t["errors"] += c.errors
        t["tokens_in"] += c.tokens_in + c.tokens_cached
        t["tokens_out"] += c.tokens_out
        e = edges[(c.src_workload, c.dst, c.protocol)]
        e["calls"] += c.requests
        e["bytes"] += c.bytes_in + c.bytes_out
        e["busy_us"] += c.busy_us
    cols = ["tenant", "requests", "db_queries", "errors", "tokens_in", "tokens_out"]
    rows = [{**{c: 0 for c in cols[1:]}, **v, "tenant": k} for k, v in sorted(tenants.items())]
    edge_rows = [
        {"src": s, "dst": d, "protocol": p, **v}
        for (s, d, p), v in sorted(edges.items(), key=lambda kv: (-kv[1]["calls"], -kv[1]["bytes"], kv[0]))[:top_edges]
    ]
    errors = ", ".join(f"{k}={v}" for k, v in sorted(stats["parse_errors"].items())) or "none"
    parts = [
        table(rows, cols) if rows else "(no calls)",
        "",
        "busiest edges",
        table(edge_rows, ["src", "dst", "protocol", "calls", "bytes", "busy_us"]) if edge_rows else "(none)",
        "",
        f"frames {stats['frames']}  flows {stats['flows']}  calls {stats['calls']}  parse errors: {errors}",
    ]
    return "\n".join(parts)


def run(capture: str, config: Config, fmt: str) -> int:
    path = Path(capture)
    if not path.is_file():
        print(f"costmesh: {capture}: no such file", file=sys.stderr)
        return 2
    calls, stats, error = analyze(path, config)
    print(render_json(calls, stats) if fmt == "json" else render_table(calls, stats))
    if error:
        print(f"costmesh: capture read up to an error: {error}", file=sys.stderr)
        return 1
    return 0
