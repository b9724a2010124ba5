"""Local OTLP receivers for tests: OTLP/HTTP (aiohttp) and OTLP/gRPC (grpc.aio), both over TLS, decoding every request
with the official protobuf definitions (``opentelemetry-proto``) and keeping what a collector would see.

No registry ships an OpenTelemetry Collector that is fit to run here (see the README's OTLP section), so these stand in
for one: they check the wire format the exporter produces, the bearer token, and what it carries.
"""

from __future__ import annotations

import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


def _value(v) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Received:
    """What arrived: raw request bodies, the sum of each metric per attribute set, log records, auth headers."""

    raw: list[bytes] = field(default_factory=list)
    sums: Counter = field(default_factory=Counter)
    temporality: set[int] = field(default_factory=set)
    resources: list[dict] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)
    #: Answer the first ``refuse`` metric requests with a failure (HTTP 400 / gRPC INVALID_ARGUMENT).
    refuse: int = 0

    def total(self, metric: str, **attrs: object) -> int:
        return sum(
            v for (name, key), v in self.sums.items() if name == metric and all((k, a) in key for k, a in attrs.items())
        )

    def take_metrics(self, body: bytes) -> None:
        req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
        self.raw.append(body)
        for rm in req.resource_metrics:
            self.resources.append({a.key: _value(a.value) for a in rm.resource.attributes})
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self.temporality.add(m.sum.aggregation_temporality)
                    for p in m.sum.data_points:
                        key = tuple(sorted((a.key, _value(a.value)) for a in p.attributes))
                        self.sums[(m.name, key)] += p.as_int

    def take_logs(self, body: bytes) -> None:
        req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        self.raw.append(body)
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    entry = {a.key: _value(a.value) for a in r.attributes}
                    entry["time_unix_nano"] = r.time_unix_nano
                    entry["body"] = _value(r.body)
                    self.logs.append(entry)


class HttpReceiver:
    """OTLP/HTTP (protobuf) on ``/v1/metrics`` and ``/v1/logs`` over TLS."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.got = Received()
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(chain, key)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.got.authorization.append(request.headers.get("Authorization", ""))
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        if self.got.refuse > 0:
            self.got.refuse -= 1
            return web.Response(status=400, text="refused by the test")
        self.got.take_metrics(await request.read())
        return web.Response(
            body=metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def _logs(self, request: web.Request) -> web.Response:
        self.got.authorization.append(request.headers.get("Authorization", ""))
        self.got.take_logs(await request.read())
        return web.Response(
            body=logs_service_pb2.ExportLogsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def start(self) -> HttpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/metrics", self._metrics)
        app.router.add_post("/v1/logs", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        self.url = f"https://localhost:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class GrpcReceiver(metrics_service_pb2_grpc.MetricsServiceServicer, logs_service_pb2_grpc.LogsServiceServicer):
    """OTLP/gRPC (MetricsService, LogsService) over TLS."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.got = Received()
        self._chain, self._key = chain, key
        self.endpoint = ""
        self._server: grpc.aio.Server | None = None

    def _auth(self, context) -> None:
        self.got.authorization.append(dict(context.invocation_metadata()).get("authorization", ""))

    async def Export(self, request, context):  # the protobuf service's method name
        self._auth(context)
        if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            if self.got.refuse > 0:
                self.got.refuse -= 1
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused by the test")
            self.got.take_metrics(request.SerializeToString())
            return metrics_service_pb2.ExportMetricsServiceResponse()
        self.got.take_logs(request.SerializeToString())
        return logs_service_pb2.ExportLogsServiceResponse()

    async def start(self) -> GrpcReceiver:
        self._server = grpc.aio.server()
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        creds = grpc.ssl_server_credentials([(self._key.read_bytes(), self._chain.read_bytes())])
        port = self._server.add_secure_port("127.0.0.1:0", creds)
        await self._server.start()
        self.endpoint = f"https://localhost:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
