"""The one config file (TOML), validated by msgspec.

Every section is a Struct that forbids unknown keys, so a typo is an error with its key path, never a silent default.
Secrets are never written in the file: a field named ``*_env`` names the environment variable that holds the value,
and ``resolve_secret`` reads it when the service needs it.

An empty ``nats.url`` or ``postgres.dsn`` means "use the embedded default" (``costmesh up`` starts them).
"""

from __future__ import annotations

import decimal
import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

import msgspec

from .errors import CostmeshError


class ConfigError(CostmeshError):
    """A config file that cannot be used; the message names the file, the key and the reason."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsConfig(_Section):
    url: str = ""
    #: Path of a NATS ``.creds`` file (JWT + nkey seed).
    creds_file: str = ""
    #: Path of an nkey seed file (``SU...``) for nkey authentication.
    nkey_seed_file: str = ""
    user: str = ""
    password_env: str = ""
    token_env: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Require TLS even when the URL says ``nats://``.
    tls_required: bool = False
    stream: str = "COSTMESH_EVENTS"
    #: Stream replicas: 1 on one server, 3 on a production cluster.
    replicas: int = 1
    #: Server-side de-duplication window for ``Nats-Msg-Id``, seconds.
    duplicate_window_s: int = 120
    max_age_h: int = 72


class PostgresConfig(_Section):
    dsn: str = ""
    #: Environment variable holding the DSN (it usually carries a password).
    dsn_env: str = ""


class Rule(_Section):
    """One extraction rule: where to find a tenant, feature or agent id. First match wins, per target."""

    source: Literal["header", "baggage", "jwt_claim", "query", "path", "body", "pg_database", "pg_user", "sni", "host"]
    target: Literal["tenant", "feature", "agent"] = "tenant"
    #: Header name, baggage key, JWT claim, query parameter or JSON body field (dotted: ``metadata.user_id``).
    key: str = ""
    #: For ``path``, ``sni``, ``host``, ``pg_*``: a regular expression whose first group (or whole match) is the id.
    pattern: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.source in ("header", "baggage", "jwt_claim", "query", "body") and not self.key:
            raise ValueError(f"source {self.source!r} needs a key")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"invalid pattern {self.pattern!r}: {exc}") from exc


def default_rules() -> list[Rule]:
    """The rules that need no config: ``X-Tenant-ID``, ``X-Customer-ID``, and the ``tenant`` key of W3C baggage."""
    return [
        Rule(source="header", key="x-tenant-id", name="header:x-tenant-id"),
        Rule(source="header", key="x-customer-id", name="header:x-customer-id"),
        Rule(source="baggage", key="tenant", name="baggage:tenant"),
        Rule(target="feature", source="header", key="x-feature", name="header:x-feature"),
        Rule(target="agent", source="header", key="x-agent-id", name="header:x-agent-id"),
    ]


class Workload(_Section):
    """A static name for an address (bare hosts, offline analysis): ``address`` is an IP or CIDR, ``port`` optional."""

    address: str
    name: str
    port: int = 0
    zone: str = ""
    #: Background work whose consumption is modeled as ``platform`` rather than left unallocated.
    background: bool = False


class ResourceMapping(_Section):
    """Maps billed resources to observed ones: a bill line matching ``match`` is the observed resource ``resource``."""

    resource: str
    kind: Literal["database", "queue", "nat_gateway", "cross_az", "compute", "ai_api", "storage", "other"]
    #: Regular expression over the bill line's resource id / ARN / name.
    match: str = ""
    #: Observed endpoints (``host:port`` or DNS names) that are this resource.
    endpoints: list[str] = []
    #: Regular expression over the bill line's usage type (``NatGateway-Bytes``, ``BoxUsage:m5.large``…).
    usage_type: str = ""
    #: Regular expression over the bill line's service name (``Amazon Relational Database Service``…).
    service: str = ""

    def __post_init__(self) -> None:
        for name in ("match", "usage_type", "service"):
            pattern = getattr(self, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"invalid {name} pattern {pattern!r}: {exc}") from exc


class Price(_Section):
    """AI token prices in micro-dollars per million tokens (integers: never float money)."""

    provider: str
    model: str
    input_micros_per_mtok: int
    output_micros_per_mtok: int
    cached_micros_per_mtok: int = 0
    reasoning_micros_per_mtok: int = 0


class BillSource(_Section):
    """Where bills come from: a local folder of FOCUS/CUR files, or an S3 bucket of CUR / Data Exports."""

    name: str
    kind: Literal["folder", "s3"] = "folder"
    #: folder: the directory (files ending .csv, .csv.gz, .parquet are read).
    path: str = ""
    #: s3: bucket and key prefix under which the export's manifests live.
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    #: s3: a non-AWS endpoint (S3-compatible storage, tests).
    endpoint_url: str = ""


class RateCard(_Section):
    """A price for self-managed infrastructure with no bill line yet, e.g. an EC2 instance type per hour.

    ``resource`` is the observed resource (node, database host…) it prices; amounts are decimal text (never float).
    """

    resource: str
    price_per_hour: str
    kind: Literal["database", "queue", "nat_gateway", "cross_az", "compute", "ai_api", "storage", "other"] = "compute"
    currency: str = "USD"
    description: str = ""
    endpoints: list[str] = []


class BillingConfig(_Section):
    sources: list[BillSource] = []
    #: Seconds between imports + allocation runs of the billing service.
    interval_s: int = 3600
    #: Revenue CSV files (customer, period, amount, currency) imported with the bills.
    revenue_files: list[str] = []
    #: Bill tags read as the tenant of a line (case-insensitive), first found wins.
    tag_keys: list[str] = msgspec.field(
        default_factory=lambda: ["tenant", "tenant_id", "customer", "customer_id", "costmesh:tenant"]
    )
    #: FOCUS column used as the line amount.
    cost_column: Literal["BilledCost", "EffectiveCost", "ListCost", "ContractedCost"] = "BilledCost"
    rate_cards: list[RateCard] = []
    #: Price observed AI tokens with ``prices`` as cost lines of their own (before an invoice exists). Leave off when
    #: the AI provider's invoice is imported as a bill, or its cost would count twice.
    price_tokens: bool = False


class AlertRule(_Section):
    """Runaway-AI-cost rule for a scope (empty field = any)."""

    tenant: str = ""
    feature: str = ""
    agent: str = ""
    budget_micros_per_hour: int = 0
    spike_factor: float = 3.0
    window_s: int = 300
    cooldown_s: int = 900
    #: Minimum-volume guard: a spike needs at least this many calls in its window, so that a new tenant's first calls
    #: (over a baseline of almost nothing) are not a 1000x spike. Budget alerts need no guard: spend is spend.
    min_requests: int = 20

    def __post_init__(self) -> None:
        if self.window_s < 10:
            raise ValueError(f"window_s must be at least 10 seconds (got {self.window_s})")
        if self.spike_factor <= 1:
            raise ValueError(f"spike_factor must be above 1 (got {self.spike_factor})")


class SlackConfig(_Section):
    #: Environment variable holding the incoming-webhook URL (a secret).
    webhook_url_env: str = ""


class WebhookConfig(_Section):
    """A generic JSON webhook for receivers other than Slack; every body is signed with HMAC-SHA256."""

    #: Environment variable holding the receiver's URL.
    url_env: str = ""
    #: Environment variable holding the HMAC key (required when ``url_env`` is set).
    hmac_key_env: str = ""


class AlertingConfig(_Section):
    """How alerts become notifications (Alertmanager's route semantics, with delays fit for seconds-fast alerts)."""

    #: Alerts with equal values of these labels share one notification (a group).
    group_by: list[Literal["tenant", "feature", "agent"]] = msgspec.field(
        default_factory=lambda: ["tenant", "feature", "agent"]
    )
    #: A new group waits this long for more alerts before its first notification.
    group_wait_s: float = 0.5
    #: A group that was notified waits this long before it is notified of changes (new alerts, resolved ones).
    group_interval_s: float = 60.0
    #: A group that is still firing, unchanged, is notified again after this long.
    repeat_interval_s: float = 14_400.0
    #: Notify when a group's alerts are resolved.
    send_resolved: bool = True
    #: Base URL of the web console as users reach it; messages link to the scope's page. Empty: no link.
    console_url: str = ""


class OtlpConfig(_Section):
    """Export of the redacted event stream (never raw data) to a customer's OpenTelemetry collector. Off by default."""

    enabled: bool = False
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    #: grpc: ``host:port`` or ``https://host:port``; http/protobuf: the base URL (``/v1/metrics`` and ``/v1/logs``
    #: are appended).
    endpoint: str = ""
    #: Allow a plaintext connection (``http://`` endpoint, or gRPC without TLS). Otherwise TLS is required.
    insecure: bool = False
    #: CA bundle that signs the collector's certificate (default: the system's).
    tls_ca_file: str = ""
    #: Client certificate and key, for collectors that require mutual TLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Environment variable holding a bearer token (a JWT or an opaque token) sent as ``Authorization: Bearer``.
    bearer_token_env: str = ""
    #: Also export one OTLP log record per call record (metrics only otherwise).
    logs: bool = False
    #: The exporter's durable JetStream consumer (shared by its replicas as one work queue).
    durable: str = "otlp-exporter"
    #: Stream messages (call batches) per export at most; fewer when the stream runs dry.
    batch_messages: int = 256
    timeout_s: float = 10.0
    #: Distinct attribute sets per metric and export; beyond them the SDK folds points into an overflow point.
    max_series: int = 100_000

    def __post_init__(self) -> None:
        if self.enabled and not self.endpoint:
            raise ValueError("otlp.enabled needs an endpoint")
        if self.endpoint.startswith("http://") and not self.insecure:
            raise ValueError(f"endpoint {self.endpoint!r} is plaintext: use https:// or set insecure = true")


class SensorConfig(_Section):
    window_s: float = 1.0
    interfaces: list[str] = msgspec.field(default_factory=lambda: ["lo"])
    snaplen: int = 512
    #: Ports on which flows joined mid-stream are taken as PostgreSQL / HTTP.
    postgres_ports: list[int] = msgspec.field(default_factory=lambda: [5432])
    http_ports: list[int] = msgspec.field(default_factory=lambda: [80, 8000, 8080])
    max_flows: int = 65536
    #: Fold ids in HTTP paths and drop query values already in the sensor (the redactor's cache key, so what the
    #: redactor emits is the same): requests to one route merge per window. False: operations exactly as seen.
    collapse_ids: bool = True
    #: How many records one published batch holds at most.
    batch_records: int = 500
    # Live capture (eBPF, issue 4). Without --replay the sensor captures live on ``interfaces``.
    #: Further ports whose segments always go to the parsers (besides http_ports, postgres_ports, ai_ports).
    watch_ports: list[int] = []
    #: Ports whose flows are AI-API traffic: their whole payload is captured, not ``snaplen`` bytes.
    ai_ports: list[int] = []
    #: Regular expressions over the TLS SNI / HTTP Host that mark a flow as AI-API traffic (whole payload).
    ai_hosts: list[str] = msgspec.field(
        default_factory=lambda: [
            r"(^|\.)api\.openai\.com$",
            r"(^|\.)api\.anthropic\.com$",
            r"\.openai\.azure\.com$",
            r"^bedrock-runtime\.[a-z0-9-]+\.amazonaws\.com$",
            r"-aiplatform\.googleapis\.com$",
            r"^generativelanguage\.googleapis\.com$",
        ]
    )
    #: Capture TLS plaintext by uprobes on OpenSSL's SSL_read/SSL_write (and _ex) in these libraries.
    tls_capture: bool = True
    tls_libraries: list[str] = msgspec.field(default_factory=lambda: ["/lib/x86_64-linux-gnu/libssl.so.3"])
    #: Also probe every other libssl.so.3 that running processes have mapped (containers' own copies), rescanning
    #: /proc every tls_discover_s seconds (a scan reads /proc/*/maps: ~3 ms for 150 processes).
    tls_discover: bool = True
    tls_discover_s: float = 10.0
    #: Regular expressions over process names (comm): when set, only matching processes are probed, each on its
    #: own, and no other process pays for a uprobe. Empty: every process on the host. A matching process started
    #: later is probed from the next scan (tls_discover_s) on.
    tls_processes: list[str] = []
    #: Also record the TLS plaintext of calls a probed process serves (it accepted the connection). Off: only the
    #: calls processes make (AI APIs and other HTTPS destinations), as the uprobes are for; a served call's bytes
    #: came in over the wire as ciphertext, and when its caller is on this host too, the caller's own probe has
    #: the call already (recording both counts it twice).
    tls_server_side: bool = False
    #: One SSL call's plaintext is captured up to tls_max_chunks × 4 KiB.
    tls_max_chunks: int = 16
    #: Size of the TLS events ring buffer in pages (a power of two).
    tls_ring_pages: int = 1024
    #: PACKET_RX_RING geometry per interface: blocks of ring_block_kib KiB, handed over when full or after
    #: ring_retire_ms milliseconds. Records leave once per window anyway, so a block may wait: fewer wake-ups and
    #: larger batches cost the sensor about a fifth less CPU at 5,000 req/s with 250 ms than with 100 ms.
    ring_block_kib: int = 1024
    ring_blocks: int = 16
    ring_retire_ms: int = 250
    #: Workload identity: "auto" (Kubernetes when in a pod, else /proc), "proc", "kubernetes", or "static" (only
    #: the workloads table). The workloads table always wins where it matches.
    identity: Literal["auto", "proc", "kubernetes", "static"] = "auto"


class CgroupWorkload(_Section):
    """A cgroup (v2, path under the cgroup2 mount) whose CPU and memory are one workload's (bare hosts, systemd
    services, tests); on Kubernetes the containers' cgroups are found by their container ids instead."""

    path: str
    workload: str


class ClusterConfig(_Section):
    """What the cluster around the workloads is: its addresses, zones, labels and node prices (issue 16)."""

    #: The cluster's own networks (pod, service and node CIDRs): traffic to them is never NAT/internet egress,
    #: private or not. Empty: the node's directly connected routes (``/proc/net/route``, all but the default route)
    #: and the private, loopback and link-local ranges.
    cidrs: list[str] = []
    #: This node's zone off Kubernetes (on Kubernetes the node label ``topology.kubernetes.io/zone`` says it).
    zone: str = ""
    #: Pod labels or annotations naming the tenant / feature of everything a workload does (jobs that carry no
    #: tenant on their calls), first found wins.
    tenant_labels: list[str] = msgspec.field(default_factory=lambda: ["costmesh.io/tenant"])
    feature_labels: list[str] = msgspec.field(default_factory=lambda: ["costmesh.io/feature"])
    #: CPU and memory per workload, sampled each sensor window: ``auto`` (containers' cgroups, and processes named
    #: by the workloads table), ``cgroup`` (cgroups only), ``proc`` (processes only), ``off``.
    compute: Literal["auto", "cgroup", "proc", "off"] = "auto"
    cgroups: list[CgroupWorkload] = []
    #: Report the node's capacity (CPU count and memory) so that what no workload used or requested shows as idle.
    #: Off on a host that also runs what is not billed with the node (a laptop, the demo).
    capacity: bool = True
    #: The node's CPU:memory price ratio (decimal text, per vCPU-hour and per GiB-hour; OpenCost's defaults): how a
    #: node line is divided between CPU and memory before each is split by max(used, requested).
    cpu_price_per_core_hour: str = "0.031611"
    memory_price_per_gib_hour: str = "0.004237"

    def __post_init__(self) -> None:
        for cidr in self.cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {cidr!r}: {exc}") from exc
        for name in ("cpu_price_per_core_hour", "memory_price_per_gib_hour"):
            try:
                value = decimal.Decimal(getattr(self, name))
            except decimal.InvalidOperation:
                raise ValueError(f"{name} must be a decimal number (got {getattr(self, name)!r})") from None
            if value < 0 or not value.is_finite():
                raise ValueError(f"{name} must be a finite number >= 0 (got {value})")


class RedactorConfig(_Section):
    #: Environment variable with the HMAC key; when set, tenant ids leave the node pseudonymised.
    tenant_hmac_key_env: str = ""
    #: Distinct raw texts remembered per field class (operations repeat across windows); a full cache is cleared.
    cache_entries: int = 65536


class AttributorConfig(_Section):
    durable: str = "attributor"
    #: Messages fetched, folded and applied per transaction (capped so the pipeline fits the consumer's
    #: max_ack_pending). Large groups fold many records of one window and key into one row before PostgreSQL sees
    #: them; exactly-once does not depend on the size (batch ids commit with the rows). 512 x 500-record batches
    #: hold ~50 MB of payloads per group.
    fetch_batch: int = 512
    retention_minute_days: int = 14
    retention_hourly_days: int = 396
    #: Daily partitions created this many days ahead (plain PostgreSQL flavour).
    partitions_ahead_days: int = 3
    #: Applied batch ids kept this long (must exceed the stream's max age so any redelivery still finds its id).
    applied_batches_keep_days: int = 7
    #: Seconds between maintenance passes (partitions, hourly rollups, retention).
    maintenance_interval_s: float = 30.0
    #: A minute is rolled up once it is this far in the past (late data re-opens it).
    settle_s: float = 120.0
    #: A queue consumer's tenant mix is the topic's producer mix in its window and this many seconds before it
    #: (allocation reads hourly rows: a producer hour counts when it overlaps that span).
    queue_window_s: int = 900
    #: Graph nodes and edges idle for longer than this drop out of the live graph.
    graph_idle_s: int = 3600
    #: Sliding windows of the runaway-AI-cost detector, seconds (the rule's ``window_s`` is added to these).
    detector_windows_s: list[int] = msgspec.field(default_factory=lambda: [60, 300])
    #: EWMA smoothing of the hourly cost baseline (weight of the newest hour).
    baseline_alpha: float = 0.3
    #: Seconds between runaway-AI-cost detector passes (each reads only what changed since the last one).
    detector_interval_s: float = 0.25
    #: Worker processes that fold fetched groups (0: a thread of the consumer process; the compiled fold runs
    #: without the GIL, so the thread already uses a second core and nothing is pickled between processes).
    fold_processes: int = 0


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    #: Environment variable with bearer tokens, ``token:role`` pairs separated by commas (roles viewer, finance,
    #: admin); empty = no auth, and then ``host`` must be a loopback address.
    tokens_env: str = ""
    #: Cost metrics: tenants (and agents) of a period that keep their own label; the rest are summed as ``__other__``.
    metrics_top_tenants: int = 20
    #: Cost metrics: how many of the newest billing periods are exported.
    metrics_periods: int = 3
    #: Cost metrics: seconds between reads of the store (a scrape reads the last snapshot).
    metrics_refresh_s: float = 60.0


class MetricsConfig(_Section):
    host: str = "127.0.0.1"
    #: First port of the per-service metrics/health listeners (sensor, redactor, attributor, billing, api-offset);
    #: 0 picks free ports.
    base_port: int = 0


class Config(_Section):
    node: str = ""
    #: Where ``costmesh up`` keeps the embedded servers' data: relative to the working directory (unlike the file
    #: paths of the other sections, which are relative to the config file), so one config serves several checkouts.
    data_dir: str = ".costmesh"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    sensor: SensorConfig = msgspec.field(default_factory=SensorConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    redactor: RedactorConfig = msgspec.field(default_factory=RedactorConfig)
    attributor: AttributorConfig = msgspec.field(default_factory=AttributorConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    slack: SlackConfig = msgspec.field(default_factory=SlackConfig)
    webhook: WebhookConfig = msgspec.field(default_factory=WebhookConfig)
    alerting: AlertingConfig = msgspec.field(default_factory=AlertingConfig)
    otlp: OtlpConfig = msgspec.field(default_factory=OtlpConfig)
    rules: list[Rule] = msgspec.field(default_factory=default_rules)
    workloads: list[Workload] = []
    resources: list[ResourceMapping] = []
    prices: list[Price] = []
    alert_rules: list[AlertRule] = []
    billing: BillingConfig = msgspec.field(default_factory=BillingConfig)

    def node_name(self) -> str:
        """``node`` from the file, else ``COSTMESH_NODE`` (a DaemonSet sets it to spec.nodeName), else the host name."""
        return self.node or os.environ.get("COSTMESH_NODE", "") or os.uname().nodename


_PATH_RE = re.compile(r"at `\$(?P<path>[^`]*)`")


def _key_of(message: str) -> str:
    match = _PATH_RE.search(message)
    return match.group("path").lstrip(".") if match else ""


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; ``None`` gives the defaults. Raises ``ConfigError`` naming file, key, reason."""
    if path is None:
        return Config()
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        config = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        text = str(exc)
        key = _key_of(text)
        reason = _PATH_RE.sub("", text).strip().rstrip("-").strip()
        raise ConfigError(f"{file}: key {key or '(top level)'}: {reason}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    _paths_relative_to(config, file.parent)
    return config


def _paths_relative_to(config: Config, base: Path) -> None:
    """File paths in the config are relative to the config file (as in most tools), not to wherever the command
    runs; absolute paths stay as they are."""

    def resolve(value: str) -> str:
        return str(base / value) if value and not Path(value).is_absolute() else value

    nats = config.nats
    for name in ("creds_file", "nkey_seed_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        setattr(nats, name, resolve(getattr(nats, name)))
    otlp = config.otlp
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        setattr(otlp, name, resolve(getattr(otlp, name)))
    for source in config.billing.sources:
        if source.kind == "folder":
            source.path = resolve(source.path)
    config.billing.revenue_files = [resolve(p) for p in config.billing.revenue_files]


def resolve_secret(env_name: str, what: str) -> str:
    """The value of a secret named by an ``*_env`` field; empty name → empty secret. Missing variable is an error."""
    if not env_name:
        return ""
    value = os.environ.get(env_name)
    if value is None:
        raise ConfigError(f"{what}: environment variable {env_name} is not set")
    return value
