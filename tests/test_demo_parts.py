"""The demo's ground-truth machinery, part by part: bytes counted at the server's socket, PostgreSQL's statement log,
the joins that make the truth, the bill (read back by costmesh's own FOCUS reader and mapped as intended), the
app's JWT and session, and the accuracy arithmetic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from aiohttp import web

from costmesh.common.embedded import free_port
from costmesh.demo import accuracy, bill, context, truth, wire
from costmesh.demo.costmesh_config import write_config
from costmesh.demo.plan import NODE_WORKLOADS, Plan, Tenant, addresses
from costmesh.demo.run import RunResult
from costmesh.demo.truth import (
    DbSession,
    Edge,
    Enqueued,
    ModelAsked,
    ModelServed,
    QueueServed,
    Served,
    TruthWriter,
    load_truth,
)

REPO = Path(__file__).resolve().parent.parent


async def test_bytes_are_counted_at_the_socket_per_request_on_a_kept_alive_connection():
    """Two requests on one connection: what the handler takes as each request's and response's bytes equals what
    the client wrote and read on the wire (head, body, chunked framing)."""
    seen: list[tuple[int, int]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        before = wire.sent_so_far(request)
        body = await request.read()
        received = wire.request_bytes(request)
        resp = web.StreamResponse()  # chunked: framing is counted too
        await resp.prepare(request)
        await resp.write(body * 3)
        await resp.write_eof()
        seen.append((received, wire.sent_so_far(request) - before))
        return resp

    app = web.Application()
    app.router.add_post("/echo", handler)
    port = free_port()
    runner, server = await wire.serve(app, "127.0.0.1", port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent, got = [], []
        for body in (b"x" * 10, b"y" * 2000):
            req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            writer.write(req)
            sent.append(len(req))
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.readuntil(b"0\r\n\r\n")
            got.append(len(head) + len(rest))
        writer.close()
    finally:
        server.close()
        await runner.cleanup()
    assert seen == list(zip(sent, got, strict=True))


def test_statement_time_is_read_per_application_name_from_the_log():
    log = (
        b"s-a|LOG:  duration: 0.250 ms  statement: SELECT 1\n"
        b"s-b|LOG:  duration: 12.005 ms  execute __asyncpg_stmt_1__: SELECT\n"
        b"\t    count(*) FROM events\n"  # a statement's second line carries no prefix
        b"s-a|LOG:  duration: 1.001 ms  bind __asyncpg_stmt_2__: SELECT 2\n"
        b"|LOG:  checkpoint starting: time\n"
        b"s-a|ERROR:  relation does not exist\n"
    )
    assert truth.statement_time_by_app(log) == {"s-a": 1251, "s-b": 12005}


def test_the_truth_joins_every_part_to_its_tenant(tmp_path):
    w = TruthWriter(tmp_path, "all")
    for event in (
        Served("gateway", "acme", "browse", 700),
        Served("worker", "globex", "fulfil", 300),
        Served("cron", "", "rollup", 100),
        Served("clients-not-on-node", "acme", "x", 9999),
        Edge("acme", "browse", 200),
        Edge("globex", "browse", 200),
        DbSession("s-1", "acme"),
        DbSession("s-2", ""),
        ModelAsked("r1", "globex", "assistant"),
        ModelServed("r1", tokens_in=40, tokens_out=7, bytes_in=500, bytes_out=300, stream=True, tls=True),
        ModelServed("r-unknown", tokens_in=1, tokens_out=1, bytes_in=1, bytes_out=1, stream=False, tls=False),
        Enqueued("m1", "acme"),
        QueueServed("send", "m1", 100, 20),
        QueueServed("receive", "m1", 30, 110),
        QueueServed("receive", "", 30, 5),
    ):
        w.write(event)
    w.close()
    log = b"s-1|LOG:  duration: 2.000 ms  statement: x\ns-2|LOG:  duration: 0.500 ms  statement: y\n"
    log += b"s-9|LOG:  duration: 1.000 ms  statement: z\n"
    t = load_truth(tmp_path, log, NODE_WORKLOADS)
    assert t.quantities["node"] == {"": 100, "acme": 700, "globex": 300}
    assert t.quantities["database"] == {"": 500, "acme": 2000}
    assert t.quantities["nat"] == {"globex": 800}
    assert t.quantities["ai_input"] == {"globex": 40} and t.quantities["ai_output"] == {"globex": 7}
    assert t.quantities["queue"] == {"": 35, "acme": 260}
    assert t.quantities["edge"] == {"acme": 1, "globex": 1}
    assert t.unexplained == {"model_calls": 1, "db_time_us:s-9": 1000}


def test_the_apps_jwt_verifies_and_its_session_hides_the_tenant():
    key = context.new_key()
    token = context.make_jwt(key, "acme", "user@acme")
    assert context.verify_jwt(key, token) == "acme"
    with pytest.raises(context.ContextError):
        context.verify_jwt(context.new_key(), token)
    sessions = context.Sessions(key)
    sealed = sessions.seal("acme")
    assert "acme" not in sealed and sessions.open(sealed) == "acme"


def _plan(tmp_path: Path) -> Plan:
    ports = {name: 10_000 + i for i, name in enumerate(("gateway", "orders", "assistant", "queue", "db"))}
    ports |= {"model_http": 10_010, "model_https": 10_011}
    return Plan(
        scenario="t",
        mode="direct",
        tenants=[Tenant(name="acme", edge="jwt", requests={"browse": 1}, revenue="1.50")],
        run_dir=str(tmp_path),
        addresses=addresses(),
        ports=ports,
    )


def _truth() -> truth.Truth:
    return truth.Truth(
        quantities={
            "database": {"acme": 3, "globex": 1},
            "node": {"acme": 1, "globex": 1, "": 2},
            "nat": {"acme": 10**6},
            "queue": {"globex": 5 * 10**5},
            "ai_input": {"acme": 2 * 10**5, "globex": 10**5},
            "ai_output": {"globex": 10**5},
            "edge": {"acme": 3, "globex": 1},
        },
        unexplained={},
        events=0,
    )


def test_the_bill_reads_back_through_costmesh_and_every_line_maps_to_its_resource(tmp_path):
    """The FOCUS file the demo writes is read by costmesh's own reader (``costmesh report``) with the run's config:
    every line is there with its amount, and each maps to the observed resource it is for."""
    start = datetime(2026, 3, 4, 5, 6, tzinfo=UTC).timestamp()
    b = bill.make_bill(_truth(), start, start + 20)
    assert {line.spec.key for line in b.lines} == set(bill.LINES)
    usage = {line.spec.key: line for line in b.lines}
    assert usage["nat"].quantity == Decimal("0.2")  # 1 MB x HOUR_SCALE (200) = 0.2 GB
    assert usage["nat"].amount == Decimal("0.0096")
    plan = _plan(tmp_path)
    bills = tmp_path / "bills"
    path = bill.write_bill(b, plan, bills, tmp_path / "revenue.csv")
    config = write_config(
        plan, tmp_path / "c.toml", api_port=1, bills=bills, revenue=tmp_path / "revenue.csv", snaplen=512
    )
    command = ["report", "--bill", str(path), "--config", str(config), "--format", "json"]
    out = subprocess.run(
        [sys.executable, "-m", "costmesh.cli", *command],
        capture_output=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["unmatched_lines"] == 0 and report["period"] == "2026-03"
    assert Decimal(report["billed"]) == sum(line.amount for line in b.lines)
    resources = {line["resource_id"]: line["allocations"][0]["resource"] for line in report["lines"]}
    assert resources == {s.resource_id: s.resource for s in bill.LINES.values()}
    assert (tmp_path / "revenue.csv").read_text() == "customer,period,amount,currency\nacme,2026-03,1.50,USD\n"


def test_accuracy_compares_every_method_with_the_truth_per_customer():
    """A bill of two lines: the truth splits the database 3:1 and the node 1:1 with half to platform work; costmesh
    gave the database 1:1 and the node 1:1 with nothing to platform; the errors follow from the arithmetic."""
    t = _truth()
    t.quantities = {"database": {"acme": 3, "globex": 1}, "node": {"acme": 1, "globex": 1, "": 2}}
    t.quantities["edge"] = {"acme": 3, "globex": 1}
    hour = datetime(2026, 1, 1, tzinfo=UTC)
    lines = [
        bill.BilledLine(bill.LINES["database"], Decimal(1), Decimal("8.00")),
        bill.BilledLine(bill.LINES["node"], Decimal(1), Decimal("4.00")),
    ]
    allocated = {
        "database": {"acme": {"direct": Decimal("4.00")}, "globex": {"direct": Decimal("4.00")}},
        "node": {"acme": {"direct": Decimal("1.00")}, "globex": {"direct": Decimal("1.00")}, "": {"unallocated": 2}},
    }
    result = RunResult(
        scenario="t",
        capture="live",
        capture_note="",
        truth=t,
        bill=bill.Bill(lines, hour, hour),
        allocated=allocated,
        pnl={},
        traffic_s=1.0,
        failed_requests=0,
        ring_drops=0,
    )
    a = accuracy.assess(result, title="t", mode="direct", target_pct=1.0, customers=["acme", "globex"])
    rows = {r.customer: r for r in a.customers}
    # truth: acme 6 + 1 = 7, globex 2 + 1 = 3, platform 2; costmesh: 5 and 5, 2 unallocated
    assert rows["acme"].truth == "7.000000" and rows["globex"].truth == "3.000000"
    assert rows["acme"].errors_pct["costmesh"] == round(float(Fraction(5 - 7, 7) * 100), 2)
    assert rows["globex"].errors_pct["costmesh"] == round(float(Fraction(5 - 3, 3) * 100), 2)
    assert rows["globex"].errors_pct["even"] == round(float(Fraction(6 - 3, 3) * 100), 2)
    assert rows["acme"].costs["requests"] == "9.000000"  # 3/4 of 12
    assert a.platform == {"truth": "2.000000", "costmesh": "0.000000"} and a.unallocated == "2.000000"
    assert a.coverage_pct == round(10 / 12 * 100, 2) and not a.passed
    assert a.worst_pct["costmesh"] == rows["globex"].errors_pct["costmesh"]


def test_without_any_way_to_capture_the_demo_replays_the_sample_capture(monkeypatch, capsys):
    """Not root (no eBPF, no packet socket): ``costmesh demo`` says why and replays the repository's sample capture
    with its config, through the same replay demo as ``--capture``."""
    from costmesh import cli
    from costmesh.demo.run import CaptureUnavailable, DemoRun

    def refuse(self, timeout_s=100.0):
        raise CaptureUnavailable("cannot capture at all: eBPF unavailable: not root; packet socket: not permitted")

    replayed = []
    monkeypatch.setattr(cli, "setup_logging", lambda *_args: None)  # keeps pytest's own log handlers in place
    monkeypatch.setattr(DemoRun, "run", refuse)
    monkeypatch.setattr(cli, "_demo", lambda args, config: replayed.append((args.capture, args.config)) or 0)
    assert cli.main(["demo"]) == 0
    assert replayed == [(str(REPO / "tests/data/demo_tenants.pcap"), str(REPO / "tests/data/demo/costmesh.toml"))]
    assert "capture: replay of the sample" in capsys.readouterr().out
