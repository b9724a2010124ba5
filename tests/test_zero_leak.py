"""Zero leak, end to end: secrets and PII of every kind planted in a capture's paths, queries and headers, replayed
through the whole pipeline (sensor → redactor → JetStream → attributor → PostgreSQL → API, real processes and real
servers). None of the planted values, in any form, appears in the stream's stored messages (read raw, and the server's
files on disk), any database table, any API answer, any service's log, any metric of any service, or anything the OTLP
exporter sent to the customer's collector (metrics and logs, raw and decoded).

A second test plays a rogue or buggy sensor: a batch with secrets in every free-text field and in fields outside the
contract, published straight to the raw subject.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import asyncpg
import msgspec
import nats

from costmesh.common import natsio
from costmesh.common.config import Config, load_config
from costmesh.common.embedded import free_port
from costmesh.common.metrics import REGISTRY
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, FlowVolume, ObservedCall
from costmesh.common.supervisor import Stack, http_json
from costmesh.redactor import scan
from costmesh.redactor import service as redactor_service

from .certs import server_chain
from .conftest import wait_for
from .data import make_secret_capture
from .otlp_receiver import HttpReceiver
from .redactor_fixtures import PLANTS


def _leaks(haystack: str | bytes, needles: set[str]) -> list[str]:
    if isinstance(haystack, bytes):
        return sorted(n for n in needles if n.encode() in haystack)
    return sorted(n for n in needles if n in haystack)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback: our own services
        return resp.read().decode()


async def _stream_messages(url: str, config: Config) -> list[tuple[bytes, bytes]]:
    """Every stored message of the events stream, raw: (subject and headers, payload bytes)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(config.nats.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(config.nats.stream, seq)
        out.append((msg.subject.encode() + repr(msg.headers).encode(), msg.data or b""))
    await nc.close()
    return out


async def _all_table_text(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
        )
        out = {}
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            rows = await conn.fetch(f"SELECT t::text AS row FROM {name} t")
            out[name] = "\n".join(r["row"] for r in rows)
        return out
    finally:
        await conn.close()


def _files_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


async def test_nothing_planted_leaves_through_the_whole_pipeline(tmp_path, nats_server, fresh_dsn, capfd):
    capture = tmp_path / "secret_capture.pcap"
    planted_requests = make_secret_capture.write(capture)
    needles = make_secret_capture.needles()
    api_port = free_port()
    config_path = tmp_path / "costmesh.toml"
    chain, key = server_chain(tmp_path)
    collector = await HttpReceiver(chain, key).start()  # the customer's collector, over OTLP/HTTP with TLS
    config_path.write_text(
        f'node = "node-z"\nlog_level = "debug"\n[nats]\nurl = "{nats_server.url}"\n'
        f'[postgres]\ndsn = "{fresh_dsn}"\n[api]\nport = {api_port}\n'
        f'[otlp]\nenabled = true\nprotocol = "http/protobuf"\nendpoint = "{collector.url}"\n'
        f'tls_ca_file = "{chain}"\nlogs = true\n'
    )
    config = load_config(config_path)
    stack = Stack(config, str(config_path), tmp_path / "data", [str(capture)])
    await asyncio.to_thread(stack.start)
    base = f"http://127.0.0.1:{stack.api_port}"
    try:

        async def all_applied():
            sensor = await asyncio.to_thread(stack.health, "sensor")
            ingest = await asyncio.to_thread(http_json, base + "/v1/ingest")
            exported = await asyncio.to_thread(stack.health, "exporter")
            return (
                sensor["replay_done"]
                and ingest["applied_batches"] == sensor["batches_published"] > 0
                and exported["exported_batches"] == sensor["batches_published"]
            )

        await wait_for(all_applied, timeout=60)
        found: dict[str, list[str]] = {}

        # What the customer's collector received over OTLP: every request body, and the decoded log records.
        assert collector.got.total("costmesh.calls") == planted_requests  # everything went out, once
        found["otlp"] = _leaks(b"\n".join(collector.got.raw), needles)
        found["otlp_decoded"] = _leaks(repr(collector.got.sums) + repr(collector.got.logs), needles)

        # API answers: every grouping the usage endpoint offers, and ingest.
        api_text = []
        for group in ("tenant", "feature", "agent", "src_workload", "dst", "protocol", "tenant_method"):
            api_text.append(await asyncio.to_thread(_get, f"{base}/v1/usage?group_by={group}"))
        api_text.append(await asyncio.to_thread(_get, base + "/v1/ingest"))
        found["api"] = _leaks("\n".join(api_text), needles)
        usage = msgspec.json.decode(api_text[0])
        assert sum(r["requests"] for r in usage["rows"]) == planted_requests  # everything went through

        # Metrics and health of every service (label values included).
        for name, (_proc, port) in stack.children.items():
            text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            text += await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
            found[f"metrics:{name}"] = _leaks(text, needles)
            if name == "redactor":
                redactor_metrics = text

        # The stream, message by message, and the server's files on disk.
        messages = await _stream_messages(nats_server.url, config)
        assert messages
        found["stream"] = _leaks(b"\n".join(h + d for h, d in messages), needles)
        found["stream_files"] = _leaks(_files_under(nats_server.data_dir), needles)

        # Every table of the database, as text.
        for table, text in (await _all_table_text(fresh_dsn)).items():
            found[f"table:{table}"] = _leaks(text, needles)
    finally:
        await asyncio.to_thread(stack.stop)
        await collector.stop()

    logs = capfd.readouterr()
    found["logs"] = _leaks(logs.out + logs.err, needles)
    assert "service=redactor" in logs.err  # the services' logs were captured
    assert {k: v for k, v in found.items() if v} == {}

    # The planted values did reach the redactor: each kind was redacted there.
    for kind in scan.KINDS:
        assert f'costmesh_redactor_redactions_total{{kind="{kind}"}}' in redactor_metrics, kind


async def _run_redactor(config: Config, url: str) -> tuple[ServiceContext, asyncio.Task]:
    ctx = ServiceContext(name="redactor", config=config, nats_url=url, dsn="")
    task = asyncio.create_task(redactor_service.main(ctx))
    await wait_for(lambda: _ready(ctx), timeout=10)
    return ctx, task


async def _ready(ctx: ServiceContext) -> bool:
    return ctx.ready


async def test_a_rogue_sensor_batch_leaks_nothing(nats_server):
    config = Config(node="node-r")
    ctx, task = await _run_redactor(config, nats_server.url)
    secrets = [p.text for p in PLANTS]
    needles = {s for p in PLANTS for s in p.secrets if len(s) >= 8}

    def pick(i: int) -> str:
        return secrets[i % len(secrets)]

    records = []
    for i, protocol in enumerate(("http", "postgres", "kafka", "redis", "tls", "amqp", "tcp")):
        records.append(
            ObservedCall(
                window_start_us=0,
                window_end_us=1_000_000,
                node="node-r " + pick(i),
                src_workload=pick(i + 1),
                dst=pick(i + 2) + ":443",
                protocol=protocol,
                operation=f"{pick(i + 3)} {pick(i + 4)} '{pick(i + 5)}'",
                tenant=pick(i + 6),
                tenant_method="header",
                tenant_rule=pick(i + 7),
                feature=pick(i + 8),
                agent=pick(i + 9),
                provider=pick(i + 10),
                model=pick(i + 11),
                requests=1,
            )
        )
    flow = FlowVolume(
        window_start_us=0, window_end_us=1, node=pick(12), l4="tcp", src_addr="203.0.113.50", src_port=1,
        dst_addr="198.51.100.7", dst_port=443, src_workload=pick(13), dst_workload=pick(14), bytes=10,
    )  # fmt: skip
    batch = CallBatch(batch_id="node-r-" + pick(0), node="node-r " + pick(1), seq=1, records=records, flows=[flow])
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(batch))
    raw["debug_dump"] = pick(15)
    for n, r in enumerate(raw["records"]):
        r["headers"] = {"authorization": pick(n), "cookie": pick(n + 1)}
        r[pick(n + 2)] = pick(n + 3)
    payload = msgspec.msgpack.encode(raw)
    needles |= {"203.0.113.50", "198.51.100.7"}

    nc = await nats.connect(nats_server.url)
    try:
        reply = await nc.request(natsio.RAW_SUBJECT.format(node="node-r"), payload, timeout=10)
        assert reply.data == b"ok"
        raw_bad = dict(raw, records=[dict(raw["records"][0], protocol=pick(2))])
        refused = await nc.request(
            natsio.RAW_SUBJECT.format(node="node-r"), msgspec.msgpack.encode(raw_bad), timeout=10
        )
        assert refused.data.startswith(b"refused")
        assert _leaks(refused.data, needles) == []
    finally:
        await nc.close()
        ctx.stopping.set()
        await task

    messages = await _stream_messages(nats_server.url, config)
    assert len(messages) == 1
    head, data = messages[0]
    assert _leaks(head + data, needles) == []
    assert _leaks(_files_under(nats_server.data_dir), needles) == []
    published = msgspec.msgpack.decode(data)
    assert set(published) <= {"type", "v", "batch_id", "node", "seq", "records", "flows"}
    assert len(published["records"]) == len(records)
    assert all(set(r) <= set(ObservedCall.__struct_fields__) for r in published["records"])
    dropped = REGISTRY.get_sample_value("costmesh_redactor_fields_dropped_total", {"reason": "unknown_field"})
    assert dropped is not None and dropped >= 1 + 2 * len(records)


async def test_a_redactor_bug_refuses_the_batch_without_quoting_it(nats_server, monkeypatch, caplog):
    """Whatever goes wrong inside redaction, the batch is refused (the sensor moves on) and no value is logged."""
    from costmesh.redactor.records import RecordRedactor

    secret = next(p.text for p in PLANTS if p.kind == "anthropic_key")

    def broken(self, batch, stats=None):
        raise ValueError(f"cannot handle {batch.records[0].operation}")

    monkeypatch.setattr(RecordRedactor, "redact_batch", broken)
    config = Config(node="node-b")
    ctx, task = await _run_redactor(config, nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        record = ObservedCall(
            window_start_us=0, window_end_us=1, node="node-b", src_workload="a", dst="b", protocol="http",
            operation=f"GET /x/{secret}",
        )  # fmt: skip
        batch = CallBatch(batch_id="node-b-1", node="node-b", seq=1, records=[record])
        reply = await nc.request(natsio.RAW_SUBJECT.format(node="node-b"), msgspec.msgpack.encode(batch), timeout=10)
        assert reply.data == b"refused: internal error"
    finally:
        await nc.close()
        ctx.stopping.set()
        await task
    logged = [vars(r) for r in caplog.records]
    assert secret not in repr(logged)
    assert any(r.get("error") == "ValueError" for r in logged)
