"""Redacted call batches as OTLP metrics (and optionally logs), through the official OpenTelemetry SDK and exporters.

Reads: ``CallBatch`` messages as the redactor published them (never raw records: this process reads only the
redacted stream). Emits: counters per attribute set, exported with delta temporality, so that each export carries
exactly the batches handled since the last one and the SDK forgets them afterwards (memory stays bounded by one
export's series, ``otlp.max_series``); with ``otlp.logs``, one log record per call record.

Why a reader of our own (``OnDemandReader``, the SDK's ``MetricReader`` extension point) instead of the periodic one:
the service acknowledges stream messages only after the collector accepted the export that carries them, so an
export must happen at a known moment and say whether it succeeded. The same holds for logs (``BufferedLogs``).

Metric names and attributes (only fields of the redacted contract; addresses and ports of flows are left out, they
would make a series per connection): ``costmesh.calls``, ``costmesh.call.errors``, ``costmesh.bytes_in``,
``costmesh.bytes_out`` (By), ``costmesh.busy_time`` (us), ``costmesh.ai.tokens`` (``costmesh.token.type``: input,
output, cached, reasoning), ``costmesh.flow.bytes``, ``costmesh.flow.packets``; attributes ``costmesh.node``,
``costmesh.src_workload``, ``costmesh.dst``, ``network.protocol.name``, ``costmesh.operation``, ``costmesh.tenant``,
``costmesh.tenant.method``, ``costmesh.tenant.rule``, ``costmesh.feature``, ``costmesh.agent``,
``gen_ai.provider.name``, ``gen_ai.request.model`` (each only when not empty).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource

from costmesh import __version__
from costmesh.common.config import ConfigError, OtlpConfig, resolve_secret
from costmesh.common.schemas import COUNTERS, CallBatch, ObservedCall

log = logging.getLogger(__name__)

_CALL_ATTRIBUTES = (
    ("costmesh.node", "node"),
    ("costmesh.src_workload", "src_workload"),
    ("costmesh.dst", "dst"),
    ("network.protocol.name", "protocol"),
    ("costmesh.operation", "operation"),
    ("costmesh.tenant", "tenant"),
    ("costmesh.tenant.method", "tenant_method"),
    ("costmesh.tenant.rule", "tenant_rule"),
    ("costmesh.feature", "feature"),
    ("costmesh.agent", "agent"),
    ("gen_ai.provider.name", "provider"),
    ("gen_ai.request.model", "model"),
)
_TOKENS = (
    ("input", "tokens_in"),
    ("output", "tokens_out"),
    ("cached", "tokens_cached"),
    ("reasoning", "tokens_reasoning"),
)


class OnDemandReader(MetricReader):
    """Collects and exports when asked (``export``), and says whether the collector took it."""

    def __init__(self, exporter: MetricExporter, max_series: int, timeout_s: float) -> None:
        super().__init__(
            preferred_temporality={Counter: AggregationTemporality.DELTA}, cardinality_limits={Counter: max_series}
        )
        self._exporter = exporter
        self._timeout_ms = timeout_s * 1000
        self._result = MetricExportResult.SUCCESS

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> None:
        if not any(sm.metrics for rm in metrics_data.resource_metrics for sm in rm.scope_metrics):
            self._result = MetricExportResult.SUCCESS
            return
        try:
            self._result = self._exporter.export(metrics_data, timeout_millis=self._timeout_ms)
        except Exception as exc:  # the SDK's contract: an exporter may raise; that is a failed export
            log.warning("OTLP metric export raised", extra={"why": type(exc).__name__})
            self._result = MetricExportResult.FAILURE

    def export(self) -> bool:
        self.collect(timeout_millis=self._timeout_ms)
        return self._result is MetricExportResult.SUCCESS

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis)


class BufferedLogs(LogRecordProcessor):
    """Holds emitted log records until ``export``; a failed export keeps nothing (the stream redelivers)."""

    def __init__(self, exporter: LogRecordExporter) -> None:
        self._exporter = exporter
        self._held: list[ReadWriteLogRecord] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self._held.append(log_record)

    def export(self) -> bool:
        held, self._held = self._held, []
        if not held:
            return True
        try:
            return self._exporter.export(held) is LogRecordExportResult.SUCCESS
        except Exception as exc:  # as above: a raising exporter is a failed export
            log.warning("OTLP log export raised", extra={"why": type(exc).__name__})
            return False

    def discard(self) -> None:
        self._held = []

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.export()


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _session(cfg: OtlpConfig):
    """A requests session for the HTTP exporter. With a CA file configured it must not read the environment:
    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's own ``verify`` (the exporter sets
    ``verify`` on its session), and the collector's CA would be ignored wherever those are set."""
    import requests

    session = requests.Session()
    if cfg.tls_ca_file:
        session.trust_env = False
    return session


def make_exporters(cfg: OtlpConfig) -> tuple[MetricExporter, LogRecordExporter | None]:
    """The official OTLP exporters for ``otlp.protocol``, with TLS files and the bearer token from config/env."""
    token = resolve_secret(cfg.bearer_token_env, "otlp.bearer_token_env")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        if cfg.protocol == "grpc":
            import grpc
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

            credentials = None
            if not cfg.insecure:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(cfg.tls_ca_file),
                    private_key=_read(cfg.tls_key_file),
                    certificate_chain=_read(cfg.tls_cert_file),
                )
            common = dict(endpoint=cfg.endpoint, insecure=cfg.insecure, credentials=credentials, headers=headers,
                          timeout=cfg.timeout_s)  # fmt: skip
            return GrpcMetrics(**common), (GrpcLogs(**common) if cfg.logs else None)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

        tls = dict(
            certificate_file=cfg.tls_ca_file or None,
            client_certificate_file=cfg.tls_cert_file or None,
            client_key_file=cfg.tls_key_file or None,
        )
        base = cfg.endpoint.rstrip("/")
        metrics = HttpMetrics(
            endpoint=f"{base}/v1/metrics", headers=headers, timeout=cfg.timeout_s, session=_session(cfg), **tls
        )
        logs = None
        if cfg.logs:
            logs = HttpLogs(
                endpoint=f"{base}/v1/logs", headers=headers, timeout=cfg.timeout_s, session=_session(cfg), **tls
            )
        return metrics, logs
    except OSError as exc:
        raise ConfigError(f"otlp TLS files: {exc}") from exc


class OtlpSink:
    """The SDK set up for one exporter process: instruments, the on-demand reader, the buffered logs."""

    def __init__(self, cfg: OtlpConfig, instance: str, metrics: MetricExporter, logs: LogRecordExporter | None) -> None:
        resource = Resource.create(
            {"service.name": "costmesh", "service.version": __version__, "service.instance.id": instance}
        )
        self.reader = OnDemandReader(metrics, cfg.max_series, cfg.timeout_s)
        self.provider = MeterProvider(metric_readers=[self.reader], resource=resource)
        meter = self.provider.get_meter("costmesh.exporter", __version__)
        self.calls = meter.create_counter("costmesh.calls", "{call}", "Calls observed.")
        self.errors = meter.create_counter("costmesh.call.errors", "{call}", "Calls that failed.")
        self.bytes_in = meter.create_counter("costmesh.bytes_in", "By", "Bytes received by the caller.")
        self.bytes_out = meter.create_counter("costmesh.bytes_out", "By", "Bytes sent by the caller.")
        self.busy = meter.create_counter("costmesh.busy_time", "us", "Server time spent on the calls.")
        self.tokens = meter.create_counter("costmesh.ai.tokens", "{token}", "AI tokens of the calls, by type.")
        self.flow_bytes = meter.create_counter("costmesh.flow.bytes", "By", "Bytes of flows, counted in the kernel.")
        self.flow_packets = meter.create_counter("costmesh.flow.packets", "{packet}", "Packets of flows.")
        self.logs: BufferedLogs | None = None
        if logs is not None:
            self.logs = BufferedLogs(logs)
            self.log_provider = LoggerProvider(resource=resource)
            self.log_provider.add_log_record_processor(self.logs)
            self.logger = self.log_provider.get_logger("costmesh.exporter", __version__)

    def record(self, batches: Sequence[CallBatch]) -> None:
        for batch in batches:
            for r in batch.records:
                self._call(r)
            for f in batch.flows:
                attrs = {
                    k: v
                    for k, v in (
                        ("costmesh.node", f.node),
                        ("network.transport", f.l4),
                        ("costmesh.src_workload", f.src_workload),
                        ("costmesh.dst_workload", f.dst_workload),
                    )
                    if v
                }
                self.flow_bytes.add(f.bytes, attrs)
                self.flow_packets.add(f.packets, attrs)

    def _call(self, r: ObservedCall) -> None:
        attrs = {key: value for key, field in _CALL_ATTRIBUTES if (value := getattr(r, field))}
        self.calls.add(r.requests, attrs)
        if r.errors:
            self.errors.add(r.errors, attrs)
        self.bytes_in.add(r.bytes_in, attrs)
        self.bytes_out.add(r.bytes_out, attrs)
        if r.busy_us:
            self.busy.add(r.busy_us, attrs)
        for kind, field in _TOKENS:
            n = getattr(r, field)
            if n:
                self.tokens.add(n, {**attrs, "costmesh.token.type": kind})
        if self.logs is not None:
            counters = {f"costmesh.{c}": getattr(r, c) for c in COUNTERS}
            self.logger.emit(
                timestamp=r.window_start_us * 1000,
                body="costmesh.call",
                event_name="costmesh.call",
                attributes={**attrs, **counters, "costmesh.window_end_us": r.window_end_us},
            )

    def export(self, batches: Sequence[CallBatch]) -> bool:
        """Record ``batches`` and export them; True when the collector took all of it. Blocking (run in a thread)."""
        self.record(batches)
        ok = self.reader.export()
        if self.logs is not None:
            if ok:
                ok = self.logs.export()
            else:
                self.logs.discard()  # the batches come back: their records are logged then
        return ok

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self.logs is not None:
            self.log_provider.shutdown()
