"""What one demo run is: the workloads and their addresses, the tenants and how each is identified, the mode of
tenant propagation, and the load. One ``Plan`` is written as JSON into the run folder and read by every workload
process, so all of them agree on it.

Modes (how far the tenant travels on the calls costmesh can see):
- ``direct``: every call carries its tenant: the edge call (header, JWT claim or W3C baggage), the gateway's calls to
  services (``X-Tenant-ID``), database sessions (a PostgreSQL role per tenant), the producer's queue calls, and the
  model calls (the OpenAI ``user`` field). Only the queue worker and the background job have no tenant on their calls.
- ``edge``: only the edge call carries the tenant; downstream calls carry the app's own encrypted session, which
  costmesh cannot read, so every downstream tenant must be propagated (two hops: gateway → service → database/model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

import msgspec

Mode = Literal["direct", "edge"]
#: How a tenant's edge calls say who they are.
EdgeForm = Literal["header", "jwt", "baggage"]
#: What an edge request does: list recent orders, place an order, run a revenue report (few rows back, expensive in
#: the database), ask the AI assistant.
Operation = Literal["browse", "checkout", "report", "assist"]

#: The workloads, each a process on its own address (``db`` is PostgreSQL, ``model`` the OpenAI-compatible endpoint
#: standing for api.openai.com). ``clients`` are the customers' browsers and scripts at the edge.
WORKLOADS: Final = ("clients", "gateway", "orders", "assistant", "queue", "worker", "cron", "db", "model")
#: The workloads that run on the billed node (its cost is theirs); the queue, the database and the model are billed
#: services of their own.
NODE_WORKLOADS: Final = ("gateway", "orders", "assistant", "worker", "cron")
#: Where the workloads live: 127.<a>.<b>.<offset + i>, so each has an address as a pod has its IP. ``a.b`` is the
#: run's own block (``address_block``): two demos at once (two suites on one machine) must not see each other's
#: traffic as their own, since a capture on ``lo`` sees both.
ADDRESS_BASE: Final = 20
MODEL_HOST: Final = "api.openai.com"
MODEL_NAME: Final = "gpt-4o-mini"


class AiProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a tenant uses the assistant: prompt length (words of context sent) and answer length (tokens asked for).
    A tenant's calls take turns through the four kinds: JSON over HTTP, SSE over HTTPS, JSON over HTTPS, SSE over
    HTTP (``call_kind``)."""

    prompt_words: int = 120
    max_tokens: int = 60


def call_kind(n: int) -> tuple[bool, bool]:
    """(stream, https) of a tenant's ``n``-th assistant call (from 1)."""
    return n % 2 == 0, (n // 2) % 2 == 1


class Tenant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A customer: its edge identification, how many requests of each operation it sends, its AI use and revenue."""

    name: str
    edge: EdgeForm
    requests: dict[Operation, int]
    ai: AiProfile = AiProfile()
    #: Revenue for the billed hour (decimal text), for the margin.
    revenue: str = "0"
    #: Rows a revenue report of this tenant aggregates (the database work of one ``report``).
    report_rows: int = 200_000


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    scenario: str
    mode: Mode
    tenants: list[Tenant]
    run_dir: str
    addresses: dict[str, str]
    ports: dict[str, int]
    #: Checkouts put a fulfilment job on the queue; the worker takes it later (no tenant on its calls).
    queue: bool = False
    #: The fulfilment job also asks the model for a confirmation text.
    worker_ai: bool = False
    #: The background job (platform work, no tenant) runs every ``cron_every_s`` seconds.
    cron: bool = False
    cron_every_s: float = 1.0
    #: Model calls may go over HTTPS (off when the traffic is recorded for replay: a capture cannot show TLS).
    https: bool = True
    concurrency: int = 6
    seed: int = 1
    #: The clients stop sending after this many seconds even if requests are left (the run stays bounded).
    deadline_s: float = 40.0
    session_key: str = ""
    jwt_key: str = ""
    tls_chain: str = ""
    tls_key: str = ""

    def url(self, service: str) -> str:
        return f"http://{self.addresses[service]}:{self.ports[service]}"

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "plan.json"

    def save(self) -> Path:
        self.path.write_bytes(msgspec.json.format(msgspec.json.encode(self)))
        return self.path


def address_block(pid: int | None = None) -> str:
    """The run's ``127.a.b`` block, from the supervising process's pid (distinct for runs at the same time); ``a``
    is never 0, so the block never holds 127.0.0.1."""
    pid = os.getpid() if pid is None else pid
    return f"127.{1 + (pid >> 8) % 254}.{pid & 0xFF}"


def addresses(block: str | None = None) -> dict[str, str]:
    base = block or address_block()
    return {name: f"{base}.{ADDRESS_BASE + i}" for i, name in enumerate(WORKLOADS)}


def process_name(workload: str) -> str:
    """The process name (``comm``, at most 15 bytes) a workload runs under."""
    return f"demo-{workload}"


def load_plan(path: str | Path) -> Plan:
    return msgspec.json.decode(Path(path).read_bytes(), type=Plan)


def db_role(plan: Plan, tenant: str) -> str:
    """The PostgreSQL role a session on behalf of ``tenant`` logs in as: its own in direct mode (costmesh reads it
    from the startup message), the shared ``app`` role otherwise and for tenant-less work."""
    return f"tenant_{tenant}" if plan.mode == "direct" and tenant else "app"
