"""Tenant/feature/agent extraction rules, compiled once from ``config.rules``, and their slow path.

Reads: ``costmesh.common.config.Rule`` list; request heads and bodies (bytes) when a rule needs Python (JWT claim,
path pattern, JSON body field, patterns on host/SNI, PostgreSQL database/user). Emits: ``(value, rule index)`` per
target.

Both builds share this module: the engine (``costmesh.native.engine``) reads the compiled rule program from
``RuleSet`` (``order``, ``kinds``, ``keys``, ``ai_only``, ``needles``) and calls back here. The compiled engine
evaluates the rules it can in C (header, baggage key, query parameter, host without pattern) in order and calls
``RuleSet.resolve`` only from the first rule it cannot, so the first-match-wins order is the same in both builds.
A JWT is decoded, never verified, and the token never leaves here.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final

import msgspec

from costmesh.common.config import Rule
from costmesh.native.http import baggage_value, query_value
from costmesh.native.kinds import MAX_VALUE, SRC_BAGGAGE, SRC_HEADER, SRC_HOST, SRC_PY, SRC_QUERY

TARGETS: Final = ("tenant", "feature", "agent")

#: ``tenant_method`` per rule source (the contract's literal values).
METHOD_OF: Final = {
    "header": "header",
    "baggage": "baggage",
    "jwt_claim": "jwt",
    "query": "query",
    "path": "path",
    "body": "body",
    "pg_database": "db",
    "pg_user": "db",
    "sni": "sni",
    "host": "host",
}

#: Ids an AI request body may carry when no configured rule matched (OpenAI ``user``, Anthropic ``metadata.user_id``).
AI_BODY_RULES: Final = (
    Rule(source="body", target="tenant", key="metadata.tenant_id", name="ai-body:metadata.tenant_id"),
    Rule(source="body", target="tenant", key="metadata.tenant", name="ai-body:metadata.tenant"),
    Rule(source="body", target="tenant", key="user", name="ai-body:user"),
    Rule(source="body", target="feature", key="metadata.feature", name="ai-body:metadata.feature"),
    Rule(source="body", target="agent", key="metadata.agent_id", name="ai-body:metadata.agent_id"),
)

_json = msgspec.json.Decoder()


def decode_json(body: bytes) -> Any:
    """A JSON document, or None for anything that is not one."""
    try:
        return _json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _name(rule: Rule) -> str:
    return rule.name or f"{rule.source}:{rule.key or rule.pattern}"


def _pick(match: re.Match[bytes] | None) -> bytes:
    if match is None:
        return b""
    return match.group(1) if match.re.groups else match.group(0)


def _dotted(doc: Any, key: str) -> bytes:
    for part in key.split("."):
        if not isinstance(doc, dict):
            return b""
        doc = doc.get(part)
    if isinstance(doc, bool) or doc is None:
        return b""
    if isinstance(doc, str):
        return doc.encode("utf-8", "replace")
    if isinstance(doc, int | float):
        return str(doc).encode()
    return b""


def header_values(head: bytes) -> dict[bytes, bytes]:
    """First value of each header (lower-case name) of an HTTP head; malformed lines are skipped."""
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name and name[:1] not in (b" ", b"\t"):
            out.setdefault(name.strip(b" \t").lower(), value.strip(b" \t"))
    return out


def _target_of(head: bytes) -> bytes:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return parts[1] if len(parts) >= 3 else b""


def jwt_claim(authorization: bytes, claim: str) -> bytes:
    """A claim of a bearer JWT, decoded without verification (the sensor only reads who the call is for)."""
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return b""
    parts = token.strip().split(b".")
    if len(parts) != 3:
        return b""
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
        doc = _json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return b""
    return _dotted(doc, claim)


class RuleSet:
    """The configured rules plus the AI body fallbacks, in evaluation order per target."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules: list[Rule] = list(rules) + list(AI_BODY_RULES)
        self.n_configured = len(rules)
        self.names = [_name(r) for r in self.rules]
        self.methods = [METHOD_OF[r.source] for r in self.rules]
        self.patterns = [re.compile(r.pattern.encode()) if r.pattern else None for r in self.rules]
        #: Per target, the global indices of its rules, in order.
        self.order: list[list[int]] = [[i for i, r in enumerate(self.rules) if r.target == t] for t in TARGETS]
        self.kinds = [self._kind(i) for i in range(len(self.rules))]
        self.keys = [self._key(i) for i in range(len(self.rules))]
        self.ai_only = [i >= self.n_configured for i in range(len(self.rules))]
        self.needs_body = [r.source == "body" for r in self.rules]
        #: For body rules: the first key of the dotted path as JSON text (a body without it cannot match).
        self.needles = [b'"' + r.key.split(".", 1)[0].encode() + b'"' for r in self.rules]
        self.has_body_rules = any(r.source == "body" for r in rules)
        self.pg_rules = [
            [i for i in order if self.rules[i].source in ("pg_database", "pg_user")] for order in self.order
        ]
        self.sni_rules = [[i for i in order if self.rules[i].source == "sni"] for order in self.order]

    def _kind(self, i: int) -> int:
        r = self.rules[i]
        if r.source == "header" and not r.pattern:
            return SRC_HEADER
        if r.source == "baggage" and not r.pattern:
            return SRC_BAGGAGE
        if r.source == "query" and not r.pattern:
            return SRC_QUERY
        if r.source == "host" and not r.pattern:
            return SRC_HOST
        return SRC_PY

    def _key(self, i: int) -> bytes:
        r = self.rules[i]
        return r.key.lower().encode() if r.source == "header" else r.key.encode()

    def http_rule_applies(self, i: int, ai: bool) -> bool:
        src = self.rules[i].source
        return src not in ("pg_database", "pg_user", "sni") and (ai or not self.ai_only[i])

    def _eval(self, i: int, head: bytes, headers: dict[bytes, bytes], body_doc: Any, has_body: bool) -> bytes:
        r = self.rules[i]
        pat = self.patterns[i]
        src = r.source
        if src == "header":
            v = headers.get(self.keys[i], b"")
            return _pick(pat.search(v)) if pat is not None and v else v
        if src == "baggage":
            v = baggage_value(headers.get(b"baggage", b""), self.keys[i])
            return _pick(pat.search(v)) if pat is not None and v else v
        if src == "query":
            v = query_value(_target_of(head), self.keys[i])
            return _pick(pat.search(v)) if pat is not None and v else v
        if src == "host":
            v = headers.get(b"host", b"")
            return _pick(pat.search(v)) if pat is not None and v else v
        if src == "path":
            path = _target_of(head).split(b"?", 1)[0]
            return _pick(pat.search(path)) if pat is not None else b""
        if src == "jwt_claim":
            v = jwt_claim(headers.get(b"authorization", b""), r.key)
            return _pick(pat.search(v)) if pat is not None and v else v
        if src == "body":
            if not has_body:
                return b""
            v = _dotted(body_doc, r.key)
            return _pick(pat.search(v)) if pat is not None and v else v
        return b""

    def resolve(
        self, head: bytes, body: bytes | None, starts: tuple[int, int, int], ai: bool, decode=None
    ) -> tuple[tuple[bytes, int], tuple[bytes, int], tuple[bytes, int]]:
        """Evaluate each target's rules from position ``starts[t]`` (-1: target already settled) on one request."""
        headers: dict[bytes, bytes] | None = None  # parsed on first use: AI body rules need no headers
        body_doc: Any = None
        decoded = False
        out = []
        for t in range(3):
            found = (b"", -1)
            start = starts[t]
            if start >= 0:
                for i in self.order[t][start:]:
                    if not self.http_rule_applies(i, ai):
                        continue
                    if self.rules[i].source == "body":
                        if body and b"\\" not in body and self.needles[i] not in body:
                            continue  # the key is not in the text (no escapes there either): no decoding needed
                        if not decoded and body:
                            body_doc = decode(body) if decode is not None else decode_json(body)
                        decoded = True
                    elif headers is None:
                        headers = header_values(head)
                    v = self._eval(i, head, headers or {}, body_doc, body is not None)
                    if v:
                        found = (v[:MAX_VALUE], i)
                        break
            out.append(found)
        return out[0], out[1], out[2]

    def resolve_pg(self, user: bytes, database: bytes) -> tuple[tuple[bytes, int], ...]:
        out = []
        for t in range(3):
            found = (b"", -1)
            for i in self.pg_rules[t]:
                v = database if self.rules[i].source == "pg_database" else user
                pat = self.patterns[i]
                if pat is not None and v:
                    v = _pick(pat.search(v))
                if v:
                    found = (v[:MAX_VALUE], i)
                    break
            out.append(found)
        return tuple(out)

    def resolve_sni(self, sni: bytes) -> tuple[tuple[bytes, int], ...]:
        out = []
        for t in range(3):
            found = (b"", -1)
            for i in self.sni_rules[t]:
                pat = self.patterns[i]
                v = _pick(pat.search(sni)) if pat is not None and sni else sni
                if v:
                    found = (v[:MAX_VALUE], i)
                    break
            out.append(found)
        return tuple(out)
