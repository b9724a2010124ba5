"""Pseudonymous tenants: keyed, stable across nodes (processes), distinct per tenant and per key."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from costmesh.common.config import ConfigError, RedactorConfig
from costmesh.redactor import pseudonym

KEY = "k" * 8 + "-node-shared-" + "0123456789"


def test_same_key_same_pseudonym_in_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CM_TENANT_KEY", KEY)
    here = pseudonym.from_config(RedactorConfig(tenant_hmac_key_env="CM_TENANT_KEY"))
    assert here is not None
    code = (
        "from costmesh.common.config import RedactorConfig\n"
        "from costmesh.redactor import pseudonym\n"
        "p = pseudonym.from_config(RedactorConfig(tenant_hmac_key_env='CM_TENANT_KEY'))\n"
        "print(p('acme'), p('globex'))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.split() == [here("acme"), here("globex")]


def test_value_is_hmac_sha256_of_the_tenant() -> None:
    p = pseudonym.Pseudonymizer(KEY.encode())
    expected = hmac.new(KEY.encode(), b"acme", hashlib.sha256).hexdigest()[:32]
    assert p("acme") == "t_" + expected
    assert p("acme") == p("acme")
    assert p("acme") != p("acme ")
    assert p("") == ""


def test_other_key_other_pseudonym() -> None:
    assert pseudonym.Pseudonymizer(KEY.encode())("acme") != pseudonym.Pseudonymizer((KEY + "x").encode())("acme")


def test_off_unless_configured_and_key_must_exist_and_be_long() -> None:
    assert pseudonym.from_config(RedactorConfig()) is None
    with pytest.raises(ConfigError, match="CM_NOT_SET_ANYWHERE"):
        pseudonym.from_config(RedactorConfig(tenant_hmac_key_env="CM_NOT_SET_ANYWHERE"))
    with pytest.raises(ConfigError, match="at least 16"):
        pseudonym.Pseudonymizer(b"short")


def test_cache_is_bounded() -> None:
    p = pseudonym.Pseudonymizer(KEY.encode(), cache_size=10)
    first = p("t0")
    for i in range(100):
        p(f"t{i}")
    assert len(p._cache) <= 10
    assert p("t0") == first
