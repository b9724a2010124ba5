"""Applying the redaction to whole batches: every field of every record, then records that became equal are merged.

Reads: a decoded ``CallBatch`` (``policy.Decoder``). Emits: a new ``CallBatch`` in which
- ``operation`` is scanned, shaped for its protocol (``shapes``), and scanned again, also percent-decoded (so no
  output text holds a detector match, whatever shaping or URL encoding did). Before that, ids in HTTP paths are
  canonicalised and query values removed (``shapes.cache_key``: shaping drops them anyway, so they are never scanned
  nor counted), and SQL is fingerprinted first (its literals, where values live, go whole);
- free-text fields (``node``, ``tenant_rule``, ``feature``, ``agent``, ``provider``, ``model``, the batch id…) are
  scanned (``scan``);
- endpoints (``src_workload``, ``dst``, flow addresses) keep a private, loopback or link-local address (the
  dependency graph needs them) and lose a public one, which is a person's or a customer's address;
- ``tenant`` is pseudonymised when a key is configured (``pseudonym``), else scanned;
- records equal in every non-counter field after this are merged, counters summed.

Operations repeat heavily across windows, so results are cached: operations by raw text and then by cache key,
endpoint pairs, and the tuple of a record's other text fields (bounded: a full cache is cleared; texts longer than
``MAX_CACHED_TEXT`` are not cached). The kinds found are counted per batch for metrics; never the values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from costmesh.common.config import Config
from costmesh.common.schemas import CallBatch, CapacitySample, ComputeSample, FlowVolume, ObservedCall, add_counters

from . import policy, pseudonym, scan, shapes

_Cached = tuple[str, tuple[str, ...]]
#: Longer texts (big SQL statements, odd free text) are redacted every time rather than cached, so that the caches'
#: memory stays bounded by entries × this (a few tens of MB at the default ``redactor.cache_entries``).
MAX_CACHED_TEXT = 512


@dataclass
class Stats:
    """What one batch went through: for metrics and the health answer."""

    records_in: int = 0
    records_out: int = 0
    fields_dropped: dict[str, int] = field(default_factory=dict)
    redactions: dict[str, int] = field(default_factory=dict)


#: Address ranges that name infrastructure (pods, nodes, services), not people: kept on endpoints so the dependency
#: graph can be drawn. Everything else — also documentation and benchmark ranges — is redacted.
_INFRASTRUCTURE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "::1/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip


def _endpoint_address(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str] | None:
    """``10.0.0.1``, ``10.0.0.1:8080``, ``[fd00::1]:443``, ``fd00::1`` → (address, ``:port`` or ``""``)."""
    host, port = value, ""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest if rest.startswith(":") and rest[1:].isdigit() else ""
        if rest and not port:
            return None
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        if not p.isdigit():
            return None
        port = ":" + p
    if "%" in host:  # an IPv6 scope id is free text (``fe80::1%<anything>``): not an address to keep as it is
        return None
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        return None


#: The kind counted when a NUL character is replaced (beside the detectors' kinds, ``scan.KINDS``).
NUL_CHARACTER = "nul_character"


def redact_deep(text: str) -> _Cached:
    """``scan.redact``, then once more on the percent-decoded result: a value hidden by URL encoding is found too.

    When decoding reveals something, the decoded text (redacted) is what leaves; otherwise the text as it came. A NUL
    character becomes U+FFFD and is counted as kind ``nul_character``.
    """
    nul: tuple[str, ...] = ()
    if "\x00" in text:  # PostgreSQL text cannot hold one and no field of the contract means one
        text, nul = text.replace("\x00", "\ufffd"), (NUL_CHARACTER,)
    out, kinds = scan.redact(text)
    if "%" in out:
        decoded = unquote(out, errors="replace")
        again, hidden = scan.redact(decoded)
        if hidden:
            if "\x00" in again:  # %00 decoded
                again, nul = again.replace("\x00", "\ufffd"), (NUL_CHARACTER,)
            return again, nul + kinds + hidden
    return out, nul + kinds


def _shape_operation(protocol: str, op: str) -> _Cached:
    """Scan, shape, scan again (also percent-decoded). SQL is shaped first: its literals, where values live, are
    removed whole, so scanning the fingerprint is enough and cheaper."""
    if protocol == "postgres":
        return redact_deep(shapes.shape(protocol, op))
    scanned, kinds = scan.redact(op)
    shaped, more = redact_deep(shapes.shape(protocol, scanned))
    return shaped, kinds + more


class RecordRedactor:
    """Redacts batches; one per service (its caches are what make repeated operations cheap)."""

    def __init__(self, config: Config, cache_entries: int = 65536) -> None:
        policy.check_rules(config)
        self.config = config
        self.pseudonymize = pseudonym.from_config(config.redactor)
        self.cache_entries = cache_entries
        self._text: dict[str, _Cached] = {}
        self._ops: dict[tuple[str, str], _Cached] = {}
        self._shapes: dict[tuple[str, str], _Cached] = {}
        self._contexts: dict[tuple, tuple[tuple, tuple[str, ...], bool, bool]] = {}
        self._pairs: dict[tuple[str, str], tuple[tuple[str, str], tuple[str, ...]]] = {}
        self._endpoints: dict[str, _Cached] = {}
        self._sensitive_rules: dict[str, bool] = {}

    # -- one value -------------------------------------------------------------------------------------------------

    def text(self, value: str) -> _Cached:
        hit = self._text.get(value)
        if hit is None:
            hit = redact_deep(value)
            if len(value) <= MAX_CACHED_TEXT:
                self._remember(self._text, value, hit)
        return hit

    def operation(self, protocol: str, op: str) -> _Cached:
        """Two cache levels: the raw text (repeats across windows), then ``shapes.cache_key`` (all requests to one
        route, all executions of one statement); only a new key pays for scanning and shaping."""
        raw_key = (protocol, op)
        hit = self._ops.get(raw_key)
        if hit is None:
            key = (protocol, shapes.cache_key(protocol, op))
            hit = self._shapes.get(key)
            if hit is None:
                hit = _shape_operation(protocol, key[1])
                if len(key[1]) <= MAX_CACHED_TEXT:
                    self._remember(self._shapes, key, hit)
            if len(op) <= MAX_CACHED_TEXT:
                self._remember(self._ops, raw_key, hit)
        return hit

    def endpoint(self, value: str) -> _Cached:
        hit = self._endpoints.get(value)
        if hit is None:
            parsed = _endpoint_address(value)
            if parsed is None:
                hit = redact_deep(value)
            else:
                addr, port = parsed
                if any(addr in net for net in _INFRASTRUCTURE if net.version == addr.version):
                    hit = (value, ())
                else:
                    hit = (scan.placeholder("ip_address") + port, ("ip_address",))
            if len(value) <= MAX_CACHED_TEXT:
                self._remember(self._endpoints, value, hit)
        return hit

    def tenant(self, value: str) -> _Cached:
        if self.pseudonymize is not None:
            return self.pseudonymize(value), ()
        return self.text(value)

    def _remember(self, cache: dict, key: object, value: _Cached) -> None:
        if len(cache) >= self.cache_entries:
            cache.clear()
        cache[key] = value

    # -- one batch -------------------------------------------------------------------------------------------------

    def redact_batch(self, batch: CallBatch, stats: Stats | None = None) -> tuple[CallBatch, Stats]:
        stats = stats or Stats()
        counts = stats.redactions
        merged: dict[tuple, ObservedCall] = {}
        text, operation = self.text, self.operation

        def use(hit: _Cached) -> str:
            for kind in hit[1]:
                counts[kind] = counts.get(kind, 0) + 1
            return hit[0]

        pairs, get_pair = self._pairs, self._pairs.get
        contexts, get_context = self._contexts, self._contexts.get
        ops_get, fields_dropped = self._ops.get, stats.fields_dropped
        for r in batch.records:
            # Endpoints (few edges) and the rest (tenants × features × …) are cached apart: both sets stay small.
            pair = (r.src_workload, r.dst)
            pair_out = get_pair(pair)
            if pair_out is None:
                pair_out = self._pair(pair)
                if len(pair[0]) + len(pair[1]) <= MAX_CACHED_TEXT:
                    self._remember(pairs, pair, pair_out)
            if pair_out[1]:
                r.src_workload, r.dst = pair_out[0]
                for kind in pair_out[1]:
                    counts[kind] = counts.get(kind, 0) + 1
            ctx = (r.node, r.tenant, r.tenant_method, r.tenant_rule, r.feature, r.agent, r.provider, r.model)
            hit = get_context(ctx)
            if hit is None:
                hit = self._context(ctx)
                if sum(map(len, ctx)) <= MAX_CACHED_TEXT:
                    self._remember(contexts, ctx, hit)
            out, kinds, changed, sensitive = hit
            if changed:
                r.node, r.tenant, r.tenant_method, r.tenant_rule, r.feature, r.agent, r.provider, r.model = out
                for kind in kinds:
                    counts[kind] = counts.get(kind, 0) + 1
                if sensitive:
                    fields_dropped["sensitive_header"] = fields_dropped.get("sensitive_header", 0) + 1
            op = r.operation
            if op:
                h = ops_get((r.protocol, op)) or operation(r.protocol, op)
                r.operation = op = h[0]
                for kind in h[1]:
                    counts[kind] = counts.get(kind, 0) + 1
            key = (r.window_start_us, r.window_end_us, r.protocol, op, r.v, pair_out[0], out)
            first = merged.get(key)
            if first is None:
                merged[key] = r
            else:
                add_counters(first, r)
        stats.records_in += len(batch.records)
        flows = [self._flow(f, use) for f in batch.flows]
        compute = [self._compute(c, use) for c in batch.compute]
        capacity = [self._capacity(c, use) for c in batch.capacity]
        records = list(merged.values())
        stats.records_out += len(records)
        out = CallBatch(
            v=batch.v,
            batch_id=use(text(batch.batch_id)),
            node=use(text(batch.node)),
            seq=batch.seq,
            records=records,
            flows=flows,
            compute=compute,
            capacity=capacity,
        )
        return out, stats

    def _pair(self, pair: tuple[str, str]) -> tuple[tuple[str, str], tuple[str, ...]]:
        """Redacted (src_workload, dst) and the kinds found."""
        (src, src_kinds), (dst, dst_kinds) = self.endpoint(pair[0]), self.endpoint(pair[1])
        return (src, dst), src_kinds + dst_kinds

    def _context(self, ctx: tuple) -> tuple[tuple, tuple[str, ...], bool, bool]:
        """The redacted form of a record's other text fields (``node, tenant, tenant_method, tenant_rule, feature,
        agent, provider, model``): (fields, kinds found, whether anything changed, whether a tenant read from a
        credential header was dropped)."""
        node, tenant, method, rule, feature, agent, provider, model = ctx
        kinds: list[str] = []

        def via(value: str, redact: Callable[[str], _Cached]) -> str:
            if not value:
                return value
            out, found = redact(value)
            kinds.extend(found)
            return out

        sensitive = bool(tenant and rule and self._sensitive(rule))
        if sensitive:
            tenant, method = "", "unallocated"
        text = self.text
        out = (
            via(node, text), via(tenant, self.tenant), method, via(rule, text), via(feature, text), via(agent, text),
            via(provider, text), via(model, text),
        )  # fmt: skip
        return out, tuple(kinds), out != ctx, sensitive

    def _flow(self, f: FlowVolume, use: Callable[[_Cached], str]) -> FlowVolume:
        f.node = use(self.text(f.node))
        f.src_addr = use(self.endpoint(f.src_addr))
        f.dst_addr = use(self.endpoint(f.dst_addr))
        if f.src_workload:
            f.src_workload = use(self.endpoint(f.src_workload))
        if f.dst_workload:
            f.dst_workload = use(self.endpoint(f.dst_workload))
        return f

    def _compute(self, c: ComputeSample, use: Callable[[_Cached], str]) -> ComputeSample:
        """A compute sample's names as a record's: the workload as an endpoint, a label's tenant as a tenant."""
        c.node = use(self.text(c.node))
        c.workload = use(self.endpoint(c.workload))
        if c.zone:
            c.zone = use(self.text(c.zone))
        if c.tenant:
            c.tenant = use(self.tenant(c.tenant))
        if c.feature:
            c.feature = use(self.text(c.feature))
        return c

    def _capacity(self, c: CapacitySample, use: Callable[[_Cached], str]) -> CapacitySample:
        c.node = use(self.text(c.node))
        if c.zone:
            c.zone = use(self.text(c.zone))
        return c

    def _sensitive(self, rule: str) -> bool:
        known = self._sensitive_rules.get(rule)
        if known is None:
            known = policy.sensitive_rule(rule, self.config)
            if len(self._sensitive_rules) < self.cache_entries:
                self._sensitive_rules[rule] = known
        return known


#: The non-counter text fields of a record that ``RecordRedactor._pair`` and ``_context`` handle. Every ``str`` field
#: of the contract must be here or be ``operation``: a new one stops the redactor at import (fail closed).
CONTEXT_FIELDS = (
    "node", "src_workload", "dst", "tenant", "tenant_method", "tenant_rule", "feature", "agent", "provider", "model",
)  # fmt: skip
if set(CONTEXT_FIELDS) != policy.TEXT | policy.ENDPOINT | policy.TENANT | {"tenant_method"}:
    raise ImportError("records.CONTEXT_FIELDS does not cover the contract's text fields: classify the new field")

#: The text fields of compute and capacity samples that ``_compute`` and ``_capacity`` handle (fail closed, as above).
COMPUTE_FIELDS = ("node", "workload", "zone", "tenant", "feature")
CAPACITY_FIELDS = ("node", "zone")
if set(COMPUTE_FIELDS) != policy.COMPUTE_TEXT | policy.COMPUTE_ENDPOINT | policy.TENANT or set(CAPACITY_FIELDS) != set(
    policy.CAPACITY_TEXT
):
    raise ImportError("records.COMPUTE_FIELDS / CAPACITY_FIELDS do not cover the samples' text fields: classify them")
