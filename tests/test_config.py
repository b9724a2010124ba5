"""Config validation: a bad file names file, key and reason and exits 2; secrets come from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from costmesh.common.config import ConfigError, load_config, resolve_secret


def _check(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costmesh.cli", "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )


def test_defaults_need_no_file():
    config = load_config(None)
    assert [r.name for r in config.rules][:3] == ["header:x-tenant-id", "header:x-customer-id", "baggage:tenant"]
    assert config.nats.url == "" and config.postgres.dsn == ""


def test_full_example_is_valid(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("""
node = "n1"
[nats]
url = "tls://nats.example:4222"
creds_file = "/etc/costmesh/sensor.creds"
[postgres]
dsn_env = "COSTMESH_PG_DSN"
[[rules]]
source = "jwt_claim"
key = "org_id"
[[rules]]
source = "path"
pattern = "^/t/([a-z0-9-]+)/"
[[workloads]]
address = "10.0.0.20"
port = 8080
name = "orders"
[[prices]]
provider = "openai"
model = "gpt-4o-mini"
input_micros_per_mtok = 150000
output_micros_per_mtok = 600000
""")
    result = _check(path)
    assert result.returncode == 0, result.stderr
    assert load_config(path).rules[1].pattern == "^/t/([a-z0-9-]+)/"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[nats]\nurll = "x"\n', "nats", "unknown field `urll`"),
        ('[sensor]\nwindow_s = "fast"\n', "sensor.window_s", "Expected `float`, got `str`"),
        ('[[rules]]\nsource = "header"\n', "rules[0]", "source 'header' needs a key"),
        ('[[rules]]\nsource = "path"\npattern = "(["\n', "rules[0]", "invalid pattern"),
        ('[[rules]]\nsource = "smoke-signal"\nkey = "x"\n', "rules[0].source", "Invalid enum value 'smoke-signal'"),
    ],
)
def test_invalid_config_names_file_key_and_reason(tmp_path, text, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert f"key {key}" in result.stderr
    assert reason in result.stderr


def test_toml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('node = "a"\n[nats\n')
    result = _check(path)
    assert result.returncode == 2
    assert "line 2" in result.stderr and str(path) in result.stderr


def test_missing_file(tmp_path):
    result = _check(tmp_path / "nope.toml")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("COSTMESH_TEST_SECRET", "s3cr3t")
    assert resolve_secret("COSTMESH_TEST_SECRET", "x") == "s3cr3t"
    monkeypatch.delenv("COSTMESH_TEST_SECRET")
    with pytest.raises(ConfigError, match="COSTMESH_TEST_SECRET is not set"):
        resolve_secret("COSTMESH_TEST_SECRET", "postgres.dsn_env")


def test_file_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "costmesh.toml"
    path.write_text(
        '[nats]\ntls_ca_file = "certs/ca.pem"\ncreds_file = "/etc/costmesh/node.creds"\n'
        '[billing]\nrevenue_files = ["revenue.csv"]\n'
        '[[billing.sources]]\nname = "local"\npath = "../bills"\n'
        '[[billing.sources]]\nname = "cur"\nkind = "s3"\nbucket = "b"\nprefix = "exports"\n'
    )
    config = load_config(path)
    assert config.nats.tls_ca_file == str(tmp_path / "conf" / "certs" / "ca.pem")
    assert config.nats.creds_file == "/etc/costmesh/node.creds"  # absolute: as written
    assert config.billing.revenue_files == [str(tmp_path / "conf" / "revenue.csv")]
    assert config.billing.sources[0].path == str(tmp_path / "conf" / "../bills")
    assert config.billing.sources[1].prefix == "exports" and config.billing.sources[1].path == ""
