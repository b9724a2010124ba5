"""The live capture's Prometheus metrics, and the export of what a parsing engine counted.

Reads: ring statistics, the kernel programs' per-CPU counters (through ``capture``), an engine's ``stats()``. Emits:
``costmesh_sensor_*`` metrics; parse errors by kind to ``costmesh_input_errors_total``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from costmesh.common.metrics import ERRORS, REGISTRY

from ..core import Sensor

PACKETS = Counter(
    "costmesh_sensor_ring_packets_total",
    "Packets the socket filter passed to a ring, by interface and outcome (received, dropped: the ring was full).",
    ["interface", "outcome"],
    registry=REGISTRY,
)
KERNEL_PACKETS = Counter(
    "costmesh_sensor_kernel_packets_total",
    "Packets seen by the socket filter, by outcome (seen, passed to user space, flow_table_full).",
    ["outcome"],
    registry=REGISTRY,
)
TLS_EVENTS = Counter(
    "costmesh_sensor_tls_events_total",
    "OpenSSL plaintext events from the uprobes, by outcome (received, lost: the ring buffer was full).",
    ["outcome"],
    registry=REGISTRY,
)
SERVER_READS = Counter(
    "costmesh_sensor_server_reads_total",
    "Reads by servers on the watched ports, handed to the parsers (where a request's server time starts).",
    registry=REGISTRY,
)
SERVER_READS_LOST = Counter(
    "costmesh_sensor_server_reads_lost_total",
    "Server reads the ring buffer had no room for (those requests' server time starts at their arrival).",
    registry=REGISTRY,
)
TLS_SERVED_CALLS = Counter(
    "costmesh_sensor_tls_served_calls_total",
    "Calls served by a probed process over TLS, not recorded (sensor.tls_server_side is off).",
    registry=REGISTRY,
)
FLOWS = Gauge("costmesh_sensor_flows", "Flow directions with traffic in the last window.", registry=REGISTRY)
FLOW_RECORDS = Counter(
    "costmesh_sensor_flow_records_total", "FlowVolume records produced from the kernel counters.", registry=REGISTRY
)
CALL_RECORDS = Counter(
    "costmesh_sensor_call_records_total", "ObservedCall records produced by the parsers.", registry=REGISTRY
)
FLOW_TABLE_FULL_BYTES = Counter(
    "costmesh_sensor_flow_table_full_bytes_total",
    "Bytes counted while the kernel flow table was full (not attributed to a flow, still counted).",
    registry=REGISTRY,
)
EXEC_LOOKS = Counter(
    "costmesh_sensor_exec_looks_total",
    "Programs started while the sensor runs, looked at for OpenSSL at once (looked) or left to the periodic /proc "
    "scan because too many started at once (skipped).",
    ["outcome"],
    registry=REGISTRY,
)
PARSED = Counter(
    "costmesh_sensor_parsed_total",
    "What the parsing engine counted (frames, flows, http_requests, pg_queries, ai_calls, tcp_gaps...), by source "
    "(frames from the rings, tls plaintext from the uprobes). Malformed input: costmesh_input_errors_total by kind.",
    ["source", "counter"],
    registry=REGISTRY,
)
CPU_SECONDS = Gauge(
    "costmesh_sensor_cpu_seconds", "CPU seconds (user + system) the sensor process has used.", registry=REGISTRY
)
WINDOWS_DROPPED = Counter(
    "costmesh_sensor_windows_dropped_total",
    "Live windows dropped because the redactor did not keep up (the capture never waits).",
    registry=REGISTRY,
)


class ParserMetrics:
    """Exports what an engine counted since the last call (it counts in C, cheaply; this runs once per window):
    parse errors by kind to ``costmesh_input_errors_total``, everything else to ``costmesh_sensor_parsed_total``."""

    def __init__(self, sensor: Sensor, source: str) -> None:
        self.sensor = sensor
        self.source = source
        self.last: dict[str, int] = {}

    def export(self) -> None:
        stats = self.sensor.stats()
        for prefix, values in (("error:", stats["errors"]), ("", stats["counters"])):
            for name, value in values.items():
                key = prefix + name
                grown = value - self.last.get(key, 0)
                if grown > 0:
                    self.last[key] = value
                    if prefix:
                        ERRORS.labels("sensor", name).inc(grown)
                    else:
                        PARSED.labels(self.source, name).inc(grown)
