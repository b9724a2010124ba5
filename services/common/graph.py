"""The live dependency graph, as the API serves it: workloads, resources and the edges between them in a window.

Read here, apart from the attributor that writes the tables, so that the API reads them without importing a service.
Reads: ``graph_node`` (first/last seen of every name, kind inferred on sight: workload, database, topic, external,
service) and ``graph_edge_minute`` (calls, errors, bytes, server time per edge and minute), both written by the
attributor's apply step with no configuration. Queue traffic reads producer → ``topic:<name>`` → consumer.
Emits plain dicts (JSON-ready). Nodes idle for longer than ``idle_s`` are left out: they age out of the live graph,
and retention deletes them later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg


async def as_of(conn: asyncpg.Connection, at: datetime | None = None) -> datetime:
    """The graph's "now": the given time, else the wall clock, but never after the newest edge (replays of old
    captures show their graph rather than an empty one)."""
    if at is not None:
        return at
    newest = await conn.fetchval("SELECT max(minute) FROM graph_edge_minute")
    now = datetime.now(UTC)
    return min(now, newest + timedelta(minutes=1)) if newest is not None else now


async def live_graph(
    conn: asyncpg.Connection, at: datetime | None = None, window_s: int = 300, idle_s: int = 3600
) -> dict[str, object]:
    """Nodes seen within ``idle_s`` before ``at`` and edge totals over ``[at - window_s, at)``."""
    end = await as_of(conn, at)
    start = end - timedelta(seconds=window_s)
    nodes = await conn.fetch(
        "SELECT name, kind, first_seen, last_seen FROM graph_node WHERE last_seen >= $1 AND first_seen < $2 "
        "ORDER BY name",
        end - timedelta(seconds=idle_s),
        end,
    )
    edges = await conn.fetch(
        "SELECT src, dst, protocol, sum(calls)::bigint AS calls, sum(errors)::bigint AS errors, "
        "sum(bytes_in)::bigint AS bytes_in, sum(bytes_out)::bigint AS bytes_out, sum(busy_us)::bigint AS busy_us, "
        "max(minute) AS last_minute FROM graph_edge_minute WHERE minute >= $1 AND minute < $2 "
        "GROUP BY src, dst, protocol ORDER BY src, dst, protocol",
        start,
        end,
    )
    live = {n["name"] for n in nodes}
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "nodes": [
            {
                "name": n["name"],
                "kind": n["kind"],
                "first_seen": n["first_seen"].isoformat(),
                "last_seen": n["last_seen"].isoformat(),
            }
            for n in nodes
        ],
        "edges": [
            {
                "src": e["src"],
                "dst": e["dst"],
                "protocol": e["protocol"],
                "calls": e["calls"],
                "errors": e["errors"],
                "bytes_in": e["bytes_in"],
                "bytes_out": e["bytes_out"],
                "busy_us": e["busy_us"],
                "last_minute": e["last_minute"].isoformat(),
            }
            for e in edges
            if e["src"] in live and e["dst"] in live
        ],
    }
