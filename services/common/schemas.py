"""Message contracts shared by every service: what travels on NATS between sensor, redactor, attributor and alerting.

Every message is a ``msgspec.Struct`` encoded as msgpack. Each carries ``v`` (the contract version) so that a reader can
refuse what it does not understand instead of misreading it. Units live in field names (``bytes_out``, ``busy_us``,
``window_start_us``): times are integer microseconds since the Unix epoch, durations integer microseconds.

Bus messages form a tagged union on ``type`` so one decoder can read any of them (``BusMessage``).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

CONTRACT_VERSION: Final = 1

#: How the tenant of a record was found. ``header``/``baggage``/``jwt``/``query``/``path``/``body``/``db``/``sni``/
#: ``host`` are measured directly on the call; ``label`` is read off the workload itself (a pod label or annotation
#: such as ``costmesh.io/tenant``: everything that workload does is that tenant's); ``trace`` joins an untagged call
#: to a tagged one of the same trace; ``propagated`` comes from the caller's inbound tenant mix; ``platform`` is
#: modeled background work; ``unallocated`` means nothing could be said.
TenantMethod = Literal[
    "header",
    "baggage",
    "jwt",
    "query",
    "path",
    "body",
    "db",
    "sni",
    "host",
    "label",
    "trace",
    "propagated",
    "platform",
    "unallocated",
]

#: Application protocol of a call, as the sensor recognised it.
Protocol = Literal["http", "postgres", "tls", "dns", "kafka", "redis", "mongodb", "amqp", "nats", "tcp", "udp"]


class ObservedCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """All calls of one kind seen in one window between one source and one destination, for one tenant/feature/agent.

    The sensor aggregates per window (default 1 s) so that the bus carries records, not packets. ``dst`` is a workload
    name when the destination is known, else an external name (SNI, DNS, host) or ``ip:port``.

    Token fields, the one statement of what they mean (``costmesh.sensor.core.ai`` fills them,
    ``costmesh.common.prices`` prices exactly them): each token is in exactly one of ``tokens_in``, ``tokens_cached``,
    ``tokens_out``.

    - ``tokens_in``: input tokens billed at the model's input rate. Cache reads are *not* in it. OpenAI/Azure
      (chat ``prompt_tokens``, Responses ``input_tokens``) and Gemini/Vertex (``promptTokenCount``) count cache reads
      inside their prompt count: it is that count minus ``cached_tokens`` / ``cachedContentTokenCount``. Anthropic
      and Bedrock report ``input_tokens`` / ``inputTokens`` without cache reads or writes: it is that plus the cache
      writes (``cache_creation_input_tokens`` / ``cacheWriteInputTokens``), which are therefore priced at the input
      rate (the contract has no cache-write counter; their 1.25× write premium is not seen).
    - ``tokens_cached``: input tokens read from the provider's prompt cache (OpenAI/Azure ``cached_tokens``,
      Anthropic ``cache_read_input_tokens``, Bedrock ``cacheReadInputTokens``, Gemini ``cachedContentTokenCount``),
      billed at the cache-read rate.
    - ``tokens_out``: every output token, reasoning/thinking included (OpenAI ``completion_tokens`` /
      ``output_tokens`` already include ``reasoning_tokens``; Gemini reports ``thoughtsTokenCount`` apart from
      ``candidatesTokenCount``, so it is their sum). Billed at the output rate: every provider bills reasoning so.
    - ``tokens_reasoning``: the reasoning part *of* ``tokens_out``, for information; never added to it again.
    """

    v: int = CONTRACT_VERSION
    window_start_us: int
    window_end_us: int
    node: str
    src_workload: str
    dst: str
    protocol: Protocol
    operation: str = ""
    tenant: str = ""
    tenant_method: TenantMethod = "unallocated"
    tenant_rule: str = ""
    feature: str = ""
    agent: str = ""
    requests: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    busy_us: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_reasoning: int = 0
    provider: str = ""
    model: str = ""


#: The additive counters of an ``ObservedCall`` (and the measure columns of the consumption tables), in contract order:
#: records with the same key are merged by summing exactly these.
#: The dimensions of a consumption row (the consumption tables' key after the minute, in their order): what records
#: are summed by, everywhere they are summed (attributor, its fold, billing's capture path).
CONSUMPTION_KEY: Final = ("tenant", "tenant_method", "feature", "agent", "src_workload", "dst", "protocol")

COUNTERS: Final = (
    "requests",
    "errors",
    "bytes_in",
    "bytes_out",
    "busy_us",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "tokens_reasoning",
)


def add_counters(into: ObservedCall, other: ObservedCall) -> None:
    """Merge ``other`` into ``into`` (records of the same key): every counter of ``COUNTERS`` summed. Written out,
    not looped over names: records are merged by the thousand on the node."""
    into.requests += other.requests
    into.errors += other.errors
    into.bytes_in += other.bytes_in
    into.bytes_out += other.bytes_out
    into.busy_us += other.busy_us
    into.tokens_in += other.tokens_in
    into.tokens_out += other.tokens_out
    into.tokens_cached += other.tokens_cached
    into.tokens_reasoning += other.tokens_reasoning


class FlowVolume(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Bytes and packets of one flow direction (``src`` → ``dst``) in one window, counted in the kernel.

    These count every byte, also those never copied to user space: data-transfer, NAT and cross-zone cost is split by
    them.
    """

    v: int = CONTRACT_VERSION
    window_start_us: int
    window_end_us: int
    node: str
    l4: Literal["tcp", "udp"]
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    bytes: int = 0
    packets: int = 0
    src_workload: str = ""
    dst_workload: str = ""


class ComputeSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    """CPU and memory of one workload on one node in one window, read from its cgroups (``cpu.stat usage_usec``,
    ``memory.current``) or, for workloads that are processes, from ``/proc/<pid>/stat`` and ``statm``.

    ``cpu_usage_us`` is CPU time used in the window (summed over the workload's containers or processes);
    ``memory_bytes`` what they held at the window's end. Requests and limits come from the pod spec where known
    (millicores, bytes; 0: none). ``tenant``/``feature`` are a workload label's (``tenant_method`` ``label``).
    """

    v: int = CONTRACT_VERSION
    window_start_us: int
    window_end_us: int
    node: str
    workload: str
    zone: str = ""
    tenant: str = ""
    tenant_method: TenantMethod = "unallocated"
    feature: str = ""
    cpu_usage_us: int = 0
    memory_bytes: int = 0
    cpu_request_millicores: int = 0
    cpu_limit_millicores: int = 0
    memory_request_bytes: int = 0
    memory_limit_bytes: int = 0


class CapacitySample(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the node could give in one window: its allocatable CPU (millicores) and memory (bytes), and its zone."""

    v: int = CONTRACT_VERSION
    window_start_us: int
    window_end_us: int
    node: str
    zone: str = ""
    cpu_millicores: int = 0
    memory_bytes: int = 0


class CallBatch(msgspec.Struct, tag="call_batch", tag_field="type", kw_only=True, omit_defaults=True):
    """One publish from a node: its id is the ``Nats-Msg-Id`` and the attributor's applied-batch key.

    ``seq`` increases per node and sensor run, so gaps and reorderings can be seen.
    """

    v: int = CONTRACT_VERSION
    batch_id: str
    node: str
    seq: int
    records: list[ObservedCall] = []
    flows: list[FlowVolume] = []
    compute: list[ComputeSample] = []
    capacity: list[CapacitySample] = []


class Alert(msgspec.Struct, tag="alert", tag_field="type", kw_only=True, omit_defaults=True):
    """A runaway-AI-cost alert, firing or resolved, for one tenant/feature/agent scope.

    Rates are integer micro-dollars per hour so that alerts never carry float money.
    """

    v: int = CONTRACT_VERSION
    alert_id: str
    state: Literal["firing", "resolved"]
    reason: Literal["budget", "spike"]
    tenant: str = ""
    feature: str = ""
    agent: str = ""
    rate_micros_per_hour: int = 0
    budget_micros_per_hour: int = 0
    baseline_micros_per_hour: int = 0
    window_s: int = 0
    started_at_us: int = 0
    at_us: int = 0
    message: str = ""
    #: The alert's stable identity across episodes (rule, scope, reason); ``alert_id`` names one episode.
    fingerprint: str = ""


BusMessage = CallBatch | Alert


class Codec:
    """One reused msgpack encoder and decoder per service, as msgspec recommends for speed."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(BusMessage)
        self._batch_decoder = msgspec.msgpack.Decoder(CallBatch)

    def encode(self, message: BusMessage) -> bytes:
        return self._encoder.encode(message)

    def decode(self, data: bytes) -> BusMessage:
        """Decode any bus message; raises ``msgspec.ValidationError``/``DecodeError`` on a malformed one."""
        return self._decoder.decode(data)

    def decode_batch(self, data: bytes) -> CallBatch:
        batch = self._batch_decoder.decode(data)
        if batch.v != CONTRACT_VERSION:
            raise msgspec.ValidationError(
                f"unsupported contract version {batch.v} (this build reads {CONTRACT_VERSION})"
            )
        return batch
