"""Bearer-token auth with roles, enforced on every route that reads data.

Tokens come from the environment variable named by ``api.tokens_env``: ``token:role`` pairs separated by commas,
roles ``viewer`` (cost, usage, graph, alerts), ``finance`` (also P&L and revenue) and ``admin`` (also imports and the
config). A presented token is compared with every configured one in constant time (digests of equal length, no early
exit), so timing tells nothing about how close a guess was.

Without tokens the API is open, and therefore binds loopback only: a non-loopback ``api.host`` without tokens, and a
``tokens_env`` whose variable is missing, empty or malformed, refuse to start. Every refusal (401, 403) is a JSON
error naming the role the route needs and is counted in ``costmesh_api_refusals_total``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import Counter

from costmesh.common.config import ApiConfig, ConfigError, resolve_secret
from costmesh.common.metrics import REGISTRY

from .answers import Role
from .params import error_response

log = logging.getLogger(__name__)

ROLES: Final[tuple[Role, ...]] = ("viewer", "finance", "admin")
_RANK: Final = {role: i for i, role in enumerate(ROLES)}

REFUSALS = Counter(
    "costmesh_api_refusals_total",
    "API requests refused, by route template and reason (missing_token, bad_token, forbidden).",
    ["route", "reason"],
    registry=REGISTRY,
)

#: The role each route template needs (absent or ``None``: public, e.g. the console's static files).
ROUTE_ROLE: Final = web.AppKey("route_roles", dict)
#: The caller's role on a request (``None``: no or an unknown token, on a public route).
ROLE: Final = web.RequestKey("role", object)


class Tokens:
    """The configured tokens as SHA-256 digests → role. Empty: no auth (loopback only)."""

    def __init__(self, digests: dict[bytes, Role]) -> None:
        self._digests = digests

    @classmethod
    def parse(cls, text: str, where: str) -> Tokens:
        """``token:role[,token:role...]``; a malformed pair is an error naming its position, never the token."""
        digests: dict[bytes, Role] = {}
        for n, pair in enumerate((p.strip() for p in text.split(",")), 1):
            if not pair:
                continue
            token, sep, role = pair.rpartition(":")
            if not sep or not token:
                raise ConfigError(f"{where}: pair {n} is not token:role")
            if role not in _RANK:
                raise ConfigError(f"{where}: pair {n}: unknown role {role!r}; one of {', '.join(ROLES)}")
            if len(token) < 16:
                raise ConfigError(f"{where}: pair {n}: a token needs at least 16 characters")
            digests[hashlib.sha256(token.encode()).digest()] = role  # type: ignore[assignment]
        if text.strip() and not digests:
            raise ConfigError(f"{where}: no token:role pair")
        return cls(digests)

    @classmethod
    def from_config(cls, cfg: ApiConfig) -> Tokens:
        """The tokens of ``api.tokens_env``; a named variable that is missing or empty refuses to start (a deployment
        that believes it has auth must not run without it)."""
        if not cfg.tokens_env:
            return cls({})
        text = resolve_secret(cfg.tokens_env, "api.tokens_env")
        if not text.strip():
            raise ConfigError(f"api.tokens_env: environment variable {cfg.tokens_env} is empty")
        return cls.parse(text, f"api.tokens_env ({cfg.tokens_env})")

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def role_of(self, token: str) -> Role | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: Role | None = None
        for digest, role in self._digests.items():
            if hmac.compare_digest(presented, digest):
                found = role
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(cfg: ApiConfig, tokens: Tokens) -> str:
    """The auth mode to report; raises ``ConfigError`` for an open API on a non-loopback address."""
    if tokens.enabled:
        return "tokens"
    if not is_loopback(cfg.host):
        raise ConfigError(
            f"api.host {cfg.host!r} is not a loopback address and no api.tokens_env is set: refusing to serve the "
            "API unauthenticated beyond this machine"
        )
    return "none (loopback only)"


def allowed(role: Role, needed: Role) -> bool:
    return _RANK[role] >= _RANK[needed]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(tokens: Tokens) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Checks the role each route needs (``ROUTE_ROLE``; ``None``: public) and puts the caller's role in
    ``request[ROLE]``; without tokens every caller is ``admin`` (loopback only)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        template = route.resource.canonical if route.resource is not None else ""
        needed: Role | None = request.app[ROUTE_ROLE].get(template)
        if not tokens.enabled:
            request[ROLE] = "admin"
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
        if needed is None:
            request[ROLE] = tokens.role_of(presented) if presented else None
            return await handler(request)
        if not presented:
            REFUSALS.labels(template, "missing_token").inc()
            return _unauthorized(f"this route needs a bearer token of role {needed!r} or higher", needed)
        role = tokens.role_of(presented)
        if role is None:
            REFUSALS.labels(template, "bad_token").inc()
            return _unauthorized("unknown bearer token", needed)
        if not allowed(role, needed):
            REFUSALS.labels(template, "forbidden").inc()
            return error_response(
                403, f"role {role!r} may not read {template}: it needs {needed!r}", required_role=needed
            )
        request[ROLE] = role
        return await handler(request)

    return check


def _unauthorized(message: str, needed: Role) -> web.Response:
    resp = error_response(401, message, required_role=needed)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="costmesh"'
    return resp
