"""Pseudonymous tenant ids: HMAC-SHA256 of the tenant id with a key from config, the same on every node.

Reads: the key from the environment variable named by ``redactor.tenant_hmac_key_env`` (never from the config file).
Emits: ``t_`` + the first 32 hex digits (128 bits) of HMAC-SHA256(key, tenant id as UTF-8). Keyed, so an id cannot be
found by hashing a guess without the key; deterministic, so every node with the same key gives the same pseudonym and
the cluster still sums a tenant's consumption across nodes. An empty tenant stays empty (it means "not known").
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from costmesh.common.config import ConfigError, RedactorConfig, resolve_secret

#: A shorter key is guessable; 16 bytes is the least an HMAC key should carry.
MIN_KEY_BYTES: Final = 16
PREFIX: Final = "t_"


class Pseudonymizer:
    """Maps tenant ids to pseudonyms, caching the ones seen (tenants repeat in every window)."""

    def __init__(self, key: bytes, cache_size: int = 65536) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"redactor.tenant_hmac_key_env: key has {len(key)} bytes, at least {MIN_KEY_BYTES}")
        self._key = key
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    def __call__(self, tenant: str) -> str:
        if not tenant:
            return tenant
        out = self._cache.get(tenant)
        if out is None:
            digest = hmac.new(self._key, tenant.encode(), hashlib.sha256).hexdigest()
            out = PREFIX + digest[:32]
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[tenant] = out
        return out


def from_config(cfg: RedactorConfig) -> Pseudonymizer | None:
    """The configured pseudonymizer, or ``None`` when tenant ids leave as they are (after scanning)."""
    if not cfg.tenant_hmac_key_env:
        return None
    key = resolve_secret(cfg.tenant_hmac_key_env, "redactor.tenant_hmac_key_env")
    return Pseudonymizer(key.encode())
