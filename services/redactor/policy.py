"""The allow-list: which fields may leave the node, and what happens to each before it does.

Reads: a raw ``CallBatch`` as msgpack from a sensor (or from anything else that can publish on the raw subject).
Emits: the typed batch with every field outside the event contract dropped, and how many were dropped.

Every ``str`` field of the contract is in exactly one class: ``OPERATION`` (shaped, then scanned), ``ENDPOINT``
(workload names or addresses), ``TENANT`` (pseudonymised when configured, else scanned) or free ``TEXT`` (scanned). A
``str`` field added to the contract later and not listed here falls into ``TEXT``: scanned, never passed unseen.
Numbers and ``Literal`` enums cannot carry text and pass as decoded.

Tenant, feature and agent rules that read ``Authorization``, ``Cookie``, ``Set-Cookie``, ``X-Api-Key`` (or their kin)
are refused at start-up: those header values never leave in any form, not even hashed. A record naming such a rule
(a sensor with another config, a rogue publisher) loses its tenant.
"""

from __future__ import annotations

import re
from typing import Final, get_type_hints

import msgspec

from costmesh.common.config import Config, ConfigError
from costmesh.common.errors import InputError
from costmesh.common.schemas import CONTRACT_VERSION, CallBatch, CapacitySample, ComputeSample, FlowVolume, ObservedCall

#: Headers whose values are credentials.
SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token"}
)
_SENSITIVE_RULE = re.compile(r"(?i)^(?:header|baggage):(?:" + "|".join(SENSITIVE_HEADERS) + r")$")

OPERATION: Final = frozenset({"operation"})
ENDPOINT: Final = frozenset({"src_workload", "dst"})
TENANT: Final = frozenset({"tenant"})


def _str_fields(cls: type) -> set[str]:
    hints = get_type_hints(cls)
    return {f for f in cls.__struct_fields__ if hints[f] is str}


#: Free-text fields of ``ObservedCall``: every ``str`` field not in another class.
TEXT: Final = frozenset(_str_fields(ObservedCall) - OPERATION - ENDPOINT - TENANT)
FLOW_ENDPOINT: Final = frozenset({"src_workload", "dst_workload", "src_addr", "dst_addr"})
FLOW_TEXT: Final = frozenset(_str_fields(FlowVolume) - FLOW_ENDPOINT)
#: Compute samples: the workload is an endpoint name, the tenant a tenant (a label's), the rest free text.
COMPUTE_ENDPOINT: Final = frozenset({"workload"})
COMPUTE_TEXT: Final = frozenset(_str_fields(ComputeSample) - COMPUTE_ENDPOINT - TENANT)
CAPACITY_TEXT: Final = frozenset(_str_fields(CapacitySample))


class _StrictCall(ObservedCall, forbid_unknown_fields=True):
    pass


class _StrictFlow(FlowVolume, forbid_unknown_fields=True):
    pass


class _StrictCompute(ComputeSample, forbid_unknown_fields=True):
    pass


class _StrictCapacity(CapacitySample, forbid_unknown_fields=True):
    pass


class _StrictBatch(CallBatch, forbid_unknown_fields=True):
    records: list[_StrictCall] = msgspec.field(default_factory=list)
    flows: list[_StrictFlow] = msgspec.field(default_factory=list)
    compute: list[_StrictCompute] = msgspec.field(default_factory=list)
    capacity: list[_StrictCapacity] = msgspec.field(default_factory=list)


_FIELDS: Final = {
    "batch": set(CallBatch.__struct_fields__) | {"type"},
    "record": set(ObservedCall.__struct_fields__),
    "flow": set(FlowVolume.__struct_fields__),
    "compute": set(ComputeSample.__struct_fields__),
    "capacity": set(CapacitySample.__struct_fields__),
}


class Refused(InputError):
    """A batch that cannot be read as the contract even after unknown fields are dropped; the message holds no value."""


def safe_reason(exc: Exception) -> str:
    """A decode error's message without the values it may quote (``Invalid enum value 'sk-…'``)."""
    return re.sub(r"'(?:[^'\\]|\\.)*'", "'…'", str(exc))[:300]


class Decoder:
    """Decodes raw batches strictly; on unknown fields, decodes again without them and counts what was dropped."""

    def __init__(self) -> None:
        self._strict = msgspec.msgpack.Decoder(_StrictBatch)
        self._loose = msgspec.msgpack.Decoder()

    def decode(self, data: bytes) -> tuple[CallBatch, int]:
        try:
            batch: CallBatch = self._strict.decode(data)
            dropped = 0
        except msgspec.ValidationError:
            batch, dropped = self._decode_dropping(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for invalid UTF-8
            raise Refused(f"not a msgpack batch: {safe_reason(exc)}") from None
        if batch.v != CONTRACT_VERSION:
            raise Refused(f"unsupported contract version {batch.v} (this build reads {CONTRACT_VERSION})")
        return batch, dropped

    def _decode_dropping(self, data: bytes) -> tuple[CallBatch, int]:
        try:
            raw = self._loose.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise Refused(f"not a msgpack batch: {safe_reason(exc)}") from None
        if not isinstance(raw, dict):
            raise Refused("a batch must be a map")
        dropped = _strip(raw, _FIELDS["batch"])
        for name, kind in (("records", "record"), ("flows", "flow"), ("compute", "compute"), ("capacity", "capacity")):
            items = raw.get(name)
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict):
                        dropped += _strip(item, _FIELDS[kind])
        try:
            return msgspec.convert(raw, _StrictBatch), dropped
        except msgspec.ValidationError as exc:
            raise Refused(f"does not match the contract: {safe_reason(exc)}") from None


def _strip(item: dict, allowed: set[str]) -> int:
    unknown = [k for k in item if k not in allowed]
    for k in unknown:
        del item[k]
    return len(unknown)


def check_rules(config: Config) -> None:
    """Refuse extraction rules that would copy a credential header's value into a tenant, feature or agent id."""
    for rule in config.rules:
        if rule.source in ("header", "baggage") and rule.key.lower() in SENSITIVE_HEADERS:
            raise ConfigError(
                f"rules: {rule.name or rule.source + ':' + rule.key}: the value of {rule.key!r} is a credential and "
                "never leaves the node; use a jwt_claim rule to take one claim of a bearer token instead"
            )


def sensitive_rule(name: str, config: Config) -> bool:
    """Whether a record's ``tenant_rule`` says its tenant was read from a credential header."""
    if _SENSITIVE_RULE.match(name):
        return True
    return any(
        r.name == name and r.source in ("header", "baggage") and r.key.lower() in SENSITIVE_HEADERS
        for r in config.rules
    )
