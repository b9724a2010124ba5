"""The demo app's own notion of who a request is for, as a real SaaS keeps it: a signed JWT at the edge (the gateway
verifies it; costmesh only decodes a claim), and an encrypted session that the gateway hands to the services
behind it. costmesh cannot read the session (it is Fernet: AES-CBC + HMAC), so in ``edge`` mode the services know
their tenant and costmesh does not, which is what makes the tenant's propagation something costmesh must infer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.fernet import Fernet, InvalidToken

#: The JWT claim that names the tenant (costmesh is configured with a ``jwt_claim`` rule for it).
TENANT_CLAIM = "org_id"
SESSION_HEADER = "X-Session"


class ContextError(Exception):
    """A credential or session that does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(key: str, tenant: str, subject: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"sub": subject, TENANT_CLAIM: tenant}, separators=(",", ":")).encode())
    signature = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def verify_jwt(key: str, token: str) -> str:
    """The tenant of a valid token; raises ``ContextError`` when the signature or the shape is wrong."""
    try:
        header, claims, signature = token.split(".")
    except ValueError:
        raise ContextError("not a JWT") from None
    expected = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(signature)):
        raise ContextError("bad JWT signature")
    tenant = json.loads(_unb64(claims)).get(TENANT_CLAIM)
    if not isinstance(tenant, str) or not tenant:
        raise ContextError(f"JWT without {TENANT_CLAIM}")
    return tenant


def new_key() -> str:
    return Fernet.generate_key().decode()


class Sessions:
    """Seal and open the session the gateway passes downstream (the tenant, nothing else)."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, tenant: str) -> str:
        return self._fernet.encrypt(tenant.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ContextError("bad session") from None
