"""The scenarios of the accuracy benchmark, and the one ``costmesh demo`` runs.

Each says how tenants travel (``mode``), what runs (queue, background job) and what every tenant sends; the truth
comes from running it. ``target_pct`` is the error per customer costmesh should stay within (1% with the tenant on
the call, 3% where it must be propagated); ``small`` is the suite's end-to-end check (a few seconds of traffic).
"""

from __future__ import annotations

import msgspec

from .plan import AiProfile, Mode, Operation, Tenant


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    title: str
    mode: Mode
    tenants: list[Tenant]
    target_pct: float
    queue: bool = False
    worker_ai: bool = False
    cron: bool = False
    concurrency: int = 6
    deadline_s: float = 40.0
    seed: int = 1


def _mix(browse: int, checkout: int, assist: int, report: int = 0) -> dict[Operation, int]:
    return {k: v for k, v in {"browse": browse, "checkout": checkout, "assist": assist, "report": report}.items() if v}


#: Four customers of different size, each identified its own way at the edge; revenue is per billed hour.
def _customers(scale: int = 1) -> list[Tenant]:
    return [
        Tenant(
            name="acme",
            edge="jwt",
            requests=_mix(60 * scale, 20 * scale, 12 * scale, max(1, scale // 4)),
            revenue="4.00",
        ),
        Tenant(name="globex", edge="header", requests=_mix(30 * scale, 10 * scale, 6 * scale), revenue="2.50"),
        Tenant(name="initech", edge="baggage", requests=_mix(12 * scale, 4 * scale, 3 * scale), revenue="0.40"),
        Tenant(name="umbrella", edge="header", requests=_mix(6 * scale, 2 * scale, 2 * scale), revenue="0.90"),
    ]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="on-call",
            title="tenant on every call",
            mode="direct",
            tenants=_customers(8),
            target_pct=1.0,
        ),
        Scenario(
            name="propagated",
            title="tenant only at the edge, propagated through two hops",
            mode="edge",
            tenants=_customers(8),
            target_pct=3.0,
        ),
        Scenario(
            name="queue",
            title="async queue: a worker handles the jobs later, no tenant on its calls",
            mode="direct",
            tenants=[
                Tenant(name="acme", edge="jwt", requests=_mix(120, 240, 16), revenue="4.00"),
                Tenant(name="globex", edge="header", requests=_mix(160, 40, 16), revenue="2.50"),
                Tenant(name="initech", edge="baggage", requests=_mix(40, 80, 8), revenue="0.40"),
            ],
            queue=True,
            worker_ai=True,
            target_pct=3.0,
        ),
        Scenario(
            name="background",
            title="background job: platform work with no tenant",
            mode="direct",
            tenants=_customers(8),
            cron=True,
            target_pct=1.0,
        ),
        Scenario(
            name="ai-heavy",
            title="AI-heavy tenants: one sends long prompts, one asks for long answers",
            mode="direct",
            tenants=[
                Tenant(
                    name="acme",
                    edge="jwt",
                    requests=_mix(60, 15, 120),
                    ai=AiProfile(prompt_words=900, max_tokens=30),
                    revenue="4.00",
                ),
                Tenant(
                    name="globex",
                    edge="header",
                    requests=_mix(60, 15, 120),
                    ai=AiProfile(prompt_words=40, max_tokens=500),
                    revenue="2.50",
                ),
                Tenant(name="initech", edge="baggage", requests=_mix(180, 60, 12), revenue="0.40"),
            ],
            target_pct=1.0,
        ),
        Scenario(
            name="db-expensive",
            title="a tenant whose few requests are expensive in the database",
            mode="direct",
            tenants=[
                Tenant(name="acme", edge="jwt", requests=_mix(480, 120, 24), revenue="4.00"),
                Tenant(name="globex", edge="header", requests=_mix(240, 60, 12), revenue="2.50"),
                Tenant(
                    name="initech",
                    edge="baggage",
                    requests=_mix(0, 0, 0, report=24),
                    report_rows=400_000,
                    revenue="0.40",
                ),
            ],
            target_pct=1.0,
        ),
    )
}

#: The suite's end-to-end scenario: tenant on every call, a few seconds of traffic.
SMALL = Scenario(
    name="small",
    title="tenant on every call (suite check)",
    mode="direct",
    tenants=[
        Tenant(name="acme", edge="jwt", requests=_mix(96, 32, 24), revenue="4.00"),
        Tenant(name="globex", edge="header", requests=_mix(48, 16, 12), revenue="2.50"),
        Tenant(name="initech", edge="baggage", requests=_mix(24, 8, 8), revenue="0.40"),
    ],
    target_pct=1.0,
    deadline_s=20.0,
)

#: What ``costmesh demo`` runs: everything at once (all four ways of naming a tenant, the queue with its worker,
#: the background job, the model over HTTP and HTTPS with JSON and SSE answers).
DEMO = Scenario(
    name="demo",
    title="the demo SaaS: every workload at once",
    mode="direct",
    tenants=_customers(4),
    queue=True,
    worker_ai=True,
    cron=True,
    target_pct=3.0,
    deadline_s=35.0,
)
