"""OTLP export of the redacted stream: the exporter service reads ``COSTMESH_EVENTS`` and sends OTLP metrics and logs
through the official OpenTelemetry exporters, over HTTP and over gRPC, with TLS and a bearer token, to local
receivers that decode with the official protobufs; a refused export comes back from the stream and is counted once."""

from __future__ import annotations

import asyncio

import nats
import pytest

from costmesh.common import natsio
from costmesh.common.config import Config, ConfigError, NatsConfig, OtlpConfig
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, Codec, FlowVolume, ObservedCall
from costmesh.exporter import service
from costmesh.exporter.otlp import make_exporters

from .certs import server_chain
from .conftest import wait_for
from .otlp_receiver import GrpcReceiver, HttpReceiver


def batches(n: int = 4, per: int = 50) -> list[CallBatch]:
    out = []
    for b in range(n):
        records = [
            ObservedCall(
                window_start_us=1_772_445_600_000_000 + b * 1_000_000,
                window_end_us=1_772_445_601_000_000 + b * 1_000_000,
                node="node-a",
                src_workload="chat-api",
                dst="api.openai.com",
                protocol="tls",
                operation="POST /v1/chat",
                tenant=f"t{i % 5}",
                tenant_method="header",
                feature="chat",
                agent="bot",
                requests=2,
                errors=i % 2,
                bytes_in=100,
                bytes_out=40,
                busy_us=900,
                tokens_in=1000,
                tokens_out=50,
                tokens_cached=200,
                provider="openai",
                model="gpt-4o",
            )
            for i in range(per)
        ]
        flow = FlowVolume(window_start_us=0, window_end_us=1, node="node-a", l4="tcp", src_addr="10.0.0.1",
                          src_port=40000 + b, dst_addr="10.0.0.2", dst_port=5432, bytes=1500, packets=3,
                          src_workload="chat-api", dst_workload="db")  # fmt: skip
        out.append(CallBatch(batch_id=f"otlp-{b}", node="node-a", seq=b + 1, records=records, flows=[flow]))
    return out


async def run_exporter(nats_url: str, otlp: OtlpConfig, sent: list[CallBatch], until) -> ServiceContext:
    cfg = Config(node="exporter-1", nats=NatsConfig(url=nats_url), otlp=otlp)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    codec = Codec()
    for b in sent:
        await natsio.publish_batch(js, f"costmesh.events.{b.node}", b.batch_id, codec.encode(b))
    await nc.close()
    ctx = ServiceContext("exporter", cfg, nats_url, "")
    task = asyncio.create_task(service.main(ctx))
    try:
        await wait_for(until, timeout=60)
        await asyncio.sleep(0.5)  # nothing more arrives
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
    return ctx


def check_sums(got, sent: list[CallBatch]) -> None:
    records = [r for b in sent for r in b.records]
    assert got.total("costmesh.calls") == sum(r.requests for r in records)
    assert got.total("costmesh.call.errors") == sum(r.errors for r in records)
    assert got.total("costmesh.bytes_out") == sum(r.bytes_out for r in records)
    assert got.total("costmesh.busy_time") == sum(r.busy_us for r in records)
    assert got.total("costmesh.ai.tokens", **{"costmesh.token.type": "cached"}) == 200 * len(records)
    assert got.total("costmesh.calls", **{"costmesh.tenant": "t3", "gen_ai.request.model": "gpt-4o"}) == 2 * sum(
        r.tenant == "t3" for r in records
    )
    assert got.total("costmesh.flow.bytes", **{"costmesh.dst_workload": "db"}) == 1500 * len(sent)
    assert got.temporality == {1}  # AGGREGATION_TEMPORALITY_DELTA: each export carries only its own batches
    assert got.resources[0]["service.name"] == "costmesh" and got.resources[0]["service.instance.id"] == "exporter-1"
    keys = {k for (_name, attrs) in got.sums for k, _v in attrs}
    assert not keys & {"src_addr", "dst_addr", "src_port", "dst_port"} and "10.0.0.1" not in repr(got.sums)


async def test_http_export_with_tls_bearer_token_metrics_and_logs(nats_server, tmp_path, monkeypatch):
    chain, key = server_chain(tmp_path)
    receiver = await HttpReceiver(chain, key).start()
    monkeypatch.setenv("TEST_OTLP_TOKEN", "eyJhbGciOiJIUzI1NiJ9.e30.sig")
    otlp = OtlpConfig(enabled=True, protocol="http/protobuf", endpoint=receiver.url, tls_ca_file=str(chain),
                      bearer_token_env="TEST_OTLP_TOKEN", logs=True)  # fmt: skip
    sent = batches()
    receiver.got.refuse = 1  # the first export is refused: its batches come back and are sent again, once

    async def all_there():
        return receiver.got.total("costmesh.calls") >= 2 * 200 and len(receiver.got.logs) >= 200

    try:
        ctx = await run_exporter(nats_server.url, otlp, sent, all_there)
    finally:
        await receiver.stop()
    check_sums(receiver.got, sent)
    assert ctx.health["export_failures"] >= 1
    assert set(receiver.got.authorization) == {"Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"}
    assert len(receiver.got.logs) == 200
    first = min(receiver.got.logs, key=lambda e: e["time_unix_nano"])
    assert first["time_unix_nano"] == 1_772_445_600_000_000_000 and first["body"] == "costmesh.call"
    assert first["costmesh.tokens_in"] == 1000 and first["costmesh.tenant"] in {f"t{i}" for i in range(5)}


async def test_grpc_export_with_tls_and_bearer_token(nats_server, tmp_path, monkeypatch):
    chain, key = server_chain(tmp_path)
    receiver = await GrpcReceiver(chain, key).start()
    monkeypatch.setenv("TEST_OTLP_TOKEN", "opaque-token-1")
    otlp = OtlpConfig(enabled=True, protocol="grpc", endpoint=receiver.endpoint, tls_ca_file=str(chain),
                      bearer_token_env="TEST_OTLP_TOKEN")  # fmt: skip
    sent = batches()

    async def all_there():
        return receiver.got.total("costmesh.calls") >= 2 * 200

    try:
        await run_exporter(nats_server.url, otlp, sent, all_there)
    finally:
        await receiver.stop()
    check_sums(receiver.got, sent)
    assert set(receiver.got.authorization) == {"Bearer opaque-token-1"}


def test_otlp_config_refuses_plaintext_unless_asked_and_needs_an_endpoint():
    with pytest.raises(ValueError, match="plaintext"):
        OtlpConfig(enabled=True, protocol="http/protobuf", endpoint="http://collector:4318")
    with pytest.raises(ValueError, match="endpoint"):
        OtlpConfig(enabled=True)
    assert OtlpConfig(enabled=True, endpoint="http://127.0.0.1:4318", insecure=True).insecure
    with pytest.raises(ConfigError, match="TLS files"):
        make_exporters(OtlpConfig(enabled=True, protocol="grpc", endpoint="https://x:4317", tls_ca_file="/nonexistent"))
