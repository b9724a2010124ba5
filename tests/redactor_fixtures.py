"""Planted secrets and PII for the redactor tests, one or more per detector kind, and false-positive controls.

Every fake secret is assembled from parts at import time, so that this repository holds no string that a secret
scanner would flag; the values have the real shapes (prefixes, lengths, check digits) the detectors look for.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass


def _b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


_MIX = "Q7x" + "Lm2" + "Vp9" + "Rt4" + "Zk8" + "Wb3" + "Nc6" + "Hd1"  # 24 mixed-case alphanumerics


@dataclass(frozen=True)
class Plant:
    """A text to plant (``text``) whose ``secrets`` must all vanish; ``kind`` is the expected detector."""

    kind: str
    text: str
    secrets: tuple[str, ...]


def _same(kind: str, text: str) -> Plant:
    return Plant(kind, text, (text,))


_JWT = ".".join(
    (_b64url({"alg": "HS256", "typ": "JWT"}), _b64url({"sub": "user-8812", "tenant": "acme"}), _MIX + "_sig-" + _MIX)
)
_PEM_BODY = "MIIEv" + "QIBADANBgkqhkiG9w0BAQEFAASC" + (_MIX + "+/") * 6
_PEM = (
    "-----BEGIN "
    + "PRIVATE KEY-----\\n"
    + "\\n".join(_PEM_BODY[i : i + 64] for i in range(0, len(_PEM_BODY), 64))
    + "\\n-----END "
    + "PRIVATE KEY-----"
)
_PW = "Xy7" + "pQ2" + "wErT"

PLANTS: tuple[Plant, ...] = (
    _same("aws_access_key", "AK" + "IA" + "Z7Q3XKCD" + "PLMN4Q2W"),
    _same("openai_key", "sk-" + "proj-" + _MIX + "_" + _MIX),
    _same("openai_key", "sk-" + "svcacct-" + _MIX + "-" + _MIX),
    _same("openai_key", "sk-" + "admin-" + _MIX + _MIX),
    _same("openai_key", "sk-" + _MIX + _MIX),
    _same("anthropic_key", "sk-" + "ant-" + "api03-" + _MIX + "_" + _MIX + "-" + _MIX + "AA"),
    _same("slack_token", "xo" + "xb-" + "2233445566" + "-" + "7788990011223" + "-" + _MIX),
    Plant(
        "slack_webhook",
        "https://hooks." + "slack.com/services/" + "T0A1B2C3D/B0A1B2C3D/" + _MIX,
        ("slack.com/services/T0A1B2C3D", _MIX),
    ),
    _same("github_token", "gh" + "p_" + _MIX + "abcdEFGH1234"),
    _same("github_token", "github" + "_pat_" + "11ABCDEFG0" + _MIX + "_" + _MIX),
    _same("stripe_key", "sk" + "_live_" + _MIX),
    _same("jwt", _JWT),
    Plant("private_key", _PEM, (_PEM_BODY[:64], _PEM_BODY[64:128], "PRIVATE KEY")),
    Plant("url_credentials", "https://svc-user:" + _PW + "@db.internal.example/x", ("svc-user", _PW)),
    Plant("secret", "api_key=" + "q8ZfP2xLm4Rt" + "7VwB", ("q8ZfP2xLm4Rt7VwB",)),
    Plant("secret", "password=" + "correct-horse-" + "9", ("correct-horse-9",)),
    Plant("auth_header", "Authorization: Bearer " + "opaque" + _MIX, ("opaque" + _MIX,)),
    Plant("auth_header", "Cookie: session=" + "s3ss" + _MIX, ("s3ss" + _MIX,)),
    Plant("auth_header", "X-Api-Key: " + "k3y" + _MIX, ("k3y" + _MIX,)),
    Plant("bearer_token", "Bearer " + "tok" + _MIX, ("tok" + _MIX,)),
    _same("email", "alice.leak" + "@" + "example.com"),
    Plant("email", "bob.leak" + "%40" + "example.org", ("bob.leak",)),
    _same("card", "4111 " + "1111 " + "1111 " + "1111"),
    _same("card", "5555" + "5555" + "5555" + "4444"),
    _same("card", "3782" + "822463" + "10005"),
    _same("phone", "+1 415 " + "555 2671"),
    _same("phone", "+44 20 " + "7946 0958"),
    _same("phone", "(415) " + "555-2671"),
    _same("iban", "DE89 3704 " + "0044 0532 0130 00"),
    _same("iban", "GB82WEST" + "12345698765432"),
    _same("ssn", "219-" + "09-" + "9999"),
    _same("ip_address", "203.0." + "113.7"),
    _same("ip_address", "2001:db8::" + "8a2e:370:7334"),
)

#: Values that look like secrets or PII but are not: none of them may be redacted.
CONTROLS: tuple[str, ...] = (
    "4111" + "1111" + "1111" + "1112",  # 16 digits, fails Luhn
    "DE89 3704 " + "0044 0532 0130 01",  # IBAN with wrong check digits
    "DE00" + "370400440532013000",
    "9f1c2b4e-3d6a-4b8e-9c2f-1a2b3c4d5e6f",  # UUID
    "/repos/costmesh/commit/3f786850e387550fdab836ed7e6dc881de23001b",  # git hash in a path
    "2026-11-26T18:04:02Z",
    "12:30:45",
    "v1.2.3",
    "sort_key=created_at",
    "basic settings",
    "task-scheduler-events-v2",
    "SELECT token FROM sessions WHERE id = $1",
    "/v1/orders/12345/items",
    "order-2026-000123",
)

#: Assignments of names to names, as SQL fingerprints and code hold them: not secrets (whole texts, no context).
NAME_CONTROLS: tuple[str, ...] = (
    "UPDATE usage SET tokens_out = c.tokens_out + EXCLUDED.tokens_out WHERE id = ?",
    "INSERT INTO users (password) VALUES (?) ON CONFLICT (id) DO UPDATE SET password = EXCLUDED.password",
    "SELECT s.token FROM sessions s JOIN users u ON s.auth_token = u.auth_token",
    '{"api_key": settings.api_key}',
)

#: Where free text carries values: a path, a query string, JSON, SQL.
CONTEXTS: tuple[str, ...] = (
    "GET /v1/lookup/{v}/details",
    "GET /v1/search?q={v}&page=2",
    '{{"note": "{v}", "n": 1}}',
    "SELECT * FROM accounts WHERE note = '{v}' AND id = 7",
)


def embed(context: str, value: str) -> str:
    return context.format(v=value)
