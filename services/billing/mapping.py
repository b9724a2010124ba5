"""Resource mapping: which observed resource a cost line pays for, or why none.

Reads cost lines, ``config.resources`` rules and the names seen in consumption (``Usage.dst``/``src_workload``);
emits a ``Target`` per line (from ``allocate``) or an ``Unmatched`` reason. Order, first hit wins:
1. a config rule whose given patterns (``match`` over resource id/ARN/name, ``usage_type``, ``service``) all match;
2. the usage type alone for charges that are about traffic rather than one resource: ``NatGateway-Bytes``/``-Hours``
   → the NAT gateway (egress bytes), ``DataTransfer-Regional-Bytes`` → cross-AZ transfer (bytes between zones);
3. the resource id itself: its ARN tail (``arn:aws:rds:…:db:orders`` → ``orders``) or name equals an observed name,
   where observed DNS names are also reduced to their instance (``orders.abc123.us-east-1.rds.amazonaws.com:5432`` →
   ``orders``).
The kind (metric) comes from the rule, else is inferred from service, usage type and resource type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import msgspec

from costmesh.common.config import ResourceMapping

from .allocate import Target
from .model import CostLine, ResourceKind

_AWS_ENDPOINT = re.compile(
    r"^(?P<id>[a-z0-9][a-z0-9-]*)\.(?:[a-z0-9-]+\.)*(?:rds|cache|es|kafka|docdb|redshift|mq)\.amazonaws\.com$"
)
_NAT = re.compile(r"NatGateway-(Bytes|Hours)", re.I)
_CROSS_AZ = re.compile(r"DataTransfer-Regional-Bytes", re.I)

_KIND_HINTS: Sequence[tuple[re.Pattern[str], ResourceKind]] = [
    (re.compile(r"NatGateway", re.I), "nat_gateway"),
    (re.compile(r"DataTransfer-Regional|inter-?zone|cross-?az", re.I), "cross_az"),
    (re.compile(r"bedrock|openai|anthropic|vertex ai|gemini|cognitive services", re.I), "ai_api"),
    (
        re.compile(r"relational database|\brds\b|aurora|dynamodb|database|sql|redis|elasticache|cosmos", re.I),
        "database",
    ),
    (re.compile(r"queue|sqs|sns|kafka|\bmsk\b|kinesis|event ?hub|service bus|pub/?sub|streaming", re.I), "queue"),
    (re.compile(r"elastic compute|\bec2\b|boxusage|virtual machine|compute|instance|kubernetes", re.I), "compute"),
    (re.compile(r"\bs3\b|storage|blob|bucket|timedstorage", re.I), "storage"),
]


class Unmatched(msgspec.Struct, frozen=True):
    """A cost line no observed resource was found for, and the reason in words."""

    line: CostLine
    reason: str


def infer_kind(line: CostLine) -> ResourceKind:
    # The most specific field first: a usage type says what was metered, the service what it is, the id last
    # (an ARN's service part can mislead, e.g. an SQS line whose id names another service).
    for text in (line.usage_type, line.service, line.resource_type, line.resource_id):
        for pattern, kind in _KIND_HINTS:
            if text and pattern.search(text):
                return kind
    return "other"


def observed_aliases(name: str) -> set[str]:
    """The ids an observed name may stand for: itself, the host without port, and a managed endpoint's instance."""
    out = {name}
    host = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    out.add(host)
    match = _AWS_ENDPOINT.match(host.lower())
    if match:
        out.add(match.group("id"))
    return {n for n in out if n}


def line_ids(line: CostLine) -> list[str]:
    """The ids a bill line's resource may be observed under: the id, its ARN tail / last path part, its name."""
    out: list[str] = []
    rid = line.resource_id.strip()
    if rid:
        out.append(rid)
        tail = re.split(r"[:/]", rid)[-1]
        if tail and tail != rid:
            out.append(tail)
    if line.resource_name:
        out.append(line.resource_name.strip())
    return [x for x in dict.fromkeys(out) if x]


class Mapper:
    """Maps lines to targets with the config rules and the names seen in consumption."""

    def __init__(self, rules: Iterable[ResourceMapping], observed: Iterable[str] = ()) -> None:
        self.rules = [
            (
                rule,
                re.compile(rule.match) if rule.match else None,
                re.compile(rule.usage_type) if rule.usage_type else None,
                re.compile(rule.service) if rule.service else None,
            )
            for rule in rules
        ]
        self.observed: dict[str, set[str]] = {}
        for name in observed:
            for alias in observed_aliases(name):
                self.observed.setdefault(alias, set()).add(name)
                self.observed.setdefault(alias.lower(), set()).add(name)

    def _rule(self, line: CostLine) -> ResourceMapping | None:
        for rule, match, usage_type, service in self.rules:
            if match is None and usage_type is None and service is None:
                continue
            if match is not None and not any(match.search(x) for x in (line.resource_id, line.resource_name) if x):
                continue
            if usage_type is not None and not usage_type.search(line.usage_type):
                continue
            if service is not None and not service.search(line.service):
                continue
            return rule
        return None

    def map(self, line: CostLine) -> Target | Unmatched:
        rule = self._rule(line)
        if rule is not None:
            endpoints = frozenset(rule.endpoints) | frozenset(self.observed.get(rule.resource, ()))
            return Target(rule.resource, rule.kind, endpoints, f"config rule {rule.resource!r}")
        if _NAT.search(line.usage_type):
            nat = line.resource_id or "nat-gateway"
            return Target(nat, "nat_gateway", frozenset(), f"usage type {line.usage_type}")
        if _CROSS_AZ.search(line.usage_type):
            return Target("cross-az", "cross_az", frozenset(), f"usage type {line.usage_type}")
        ids = line_ids(line)
        for candidate in ids:
            names = self.observed.get(candidate) or self.observed.get(candidate.lower())
            if names:
                return Target(candidate, infer_kind(line), frozenset(names), f"resource id {candidate!r} observed")
        return Unmatched(line, self._why(line, ids))

    def _why(self, line: CostLine, ids: list[str]) -> str:
        if not ids:
            what = line.charge_category or "charge"
            usage = f" (usage type {line.usage_type})" if line.usage_type else ""
            return f"{what.lower()} line without a resource id{usage}; no config rule matches its usage type or service"
        shown = ids[1] if len(ids) > 1 and len(ids[0]) > 40 else ids[0]
        return f"resource {shown} was not observed and no config rule matches it"

    def map_all(self, lines: Iterable[CostLine]) -> tuple[dict[str, Target | None], list[Unmatched]]:
        targets: dict[str, Target | None] = {}
        unmatched: list[Unmatched] = []
        for line in lines:
            got = self.map(line)
            if isinstance(got, Unmatched):
                targets[line.line_id] = None
                unmatched.append(got)
            else:
                targets[line.line_id] = got
        return targets, unmatched


def largest_unmatched(unmatched: Iterable[Unmatched], limit: int = 20) -> list[Unmatched]:
    """The unmatched lines that matter most: largest absolute amount first, then by id (stable output)."""
    return sorted(unmatched, key=lambda u: (-abs(u.line.amount), u.line.line_id))[:limit]
