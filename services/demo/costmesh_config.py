"""The costmesh config of a demo run, written as a TOML file the services read: what an operator would configure for
this SaaS, and nothing from the truth.

- ``workloads``: the name of each workload's address (as pod IPs are named); the model endpoint is not listed, it is
  outside (named by the TLS SNI / HTTP Host it is called by), and the background job is marked background.
- ``rules``: the default header and baggage rules, the JWT claim the gateway's tokens carry, the PostgreSQL role of
  a tenant's session; the OpenAI ``user`` field is read by default.
- ``resources``: which observed workload each bill line pays for (see ``bill``).
- ``sensor``: live capture on ``lo``, names from the table only (``identity = "static"``), the SaaS's ports, TLS
  probed in the SaaS's own processes only (``tls_processes``: on a shared host every other process's HTTPS would
  otherwise be captured too, and the model endpoint stands for a provider's server, which no sensor sees), the
  capture length the run asks for (see ``run.DEMO_SNAPLEN``).
- ``cluster``: CPU per workload process, the node line split by it (no idle: the host is shared).
- ``attributor``: minutes rolled up at once, every second (billing allocates from the hourly rollups; the default
  waits two minutes for late data, longer than the demo runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from .bill import LINES
from .context import TENANT_CLAIM
from .plan import MODEL_HOST, NODE_WORKLOADS, Plan, process_name

#: Workload names as the operator gives them (the queue is the managed queue's endpoint, the db the RDS instance).
NAMES = {"queue": "jobs-queue", "db": "saas-db"}


def workload_name(workload: str) -> str:
    return NAMES.get(workload, workload)


def config_document(plan: Plan, *, api_port: int, bills: Path, revenue: Path, snaplen: int) -> dict[str, Any]:
    ports = plan.ports
    workloads = [
        {"address": plan.addresses[w], "name": workload_name(w), **({"background": True} if w == "cron" else {})}
        for w in plan.addresses
        if w != "model"
    ]
    endpoints = {
        "database": [workload_name("db")],
        "queue": [workload_name("queue")],
        "compute": list(NODE_WORKLOADS),
        "ai_api": [MODEL_HOST],
    }
    # One rule per observed resource (both OpenAI lines are the one API); the NAT line maps by its usage type.
    rules = {line.resource: line for line in LINES.values() if line.kind in endpoints}
    resources = [
        {"resource": line.resource, "kind": line.kind, "match": line.match, "endpoints": endpoints[line.kind]}
        for line in rules.values()
    ]
    return {
        "node": "demo-node",
        "log_level": "error",
        "sensor": {
            "interfaces": ["lo"],
            "identity": "static",
            "window_s": 1.0,
            "snaplen": snaplen,
            "postgres_ports": [ports["db"]],
            "http_ports": [ports[p] for p in ("gateway", "orders", "assistant", "queue", "model_http")],
            "ai_ports": [ports["model_http"]],
            # the SaaS's own callers of HTTPS; the model endpoint stands for a provider's server, never probed
            "tls_processes": [f"^{process_name(w)}$" for w in ("assistant", "worker")],
            "tls_discover_s": 0.5,
        },
        "rules": [
            {"source": "header", "key": "x-tenant-id", "name": "header:x-tenant-id"},
            {"source": "baggage", "key": "tenant", "name": "baggage:tenant"},
            {"source": "jwt_claim", "key": TENANT_CLAIM, "name": f"jwt:{TENANT_CLAIM}"},
            {"source": "pg_user", "pattern": "^tenant_(.+)$", "name": "pg_user:tenant_"},
        ],
        "workloads": workloads,
        "resources": resources,
        # the workloads are processes on a shared host: their CPU per process (``/proc``), the node line split by
        # it alone (no capacity: the host runs the clients, the database and the model too, which the node line
        # does not pay for; memory not priced: every workload is the same Python interpreter's resident set)
        "cluster": {"compute": "proc", "capacity": False, "memory_price_per_gib_hour": "0"},
        # billing allocates from hourly rollups: roll minutes up at once and every second (a live run is minutes old)
        "attributor": {"maintenance_interval_s": 1.0, "settle_s": 0.0},
        "api": {"port": api_port},
        "billing": {
            "interval_s": 2,
            "revenue_files": [str(revenue)],
            "sources": [{"name": "demo", "path": str(bills)}],
        },
    }


def write_config(plan: Plan, path: Path, *, api_port: int, bills: Path, revenue: Path, snaplen: int) -> Path:
    doc = config_document(plan, api_port=api_port, bills=bills, revenue=revenue, snaplen=snaplen)
    path.write_text("# costmesh config for one demo run (costmesh.demo.costmesh_config)\n" + tomli_w.dumps(doc))
    return path
