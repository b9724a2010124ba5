"""``costmesh demo --keep`` (what ``make demo`` runs) ends by printing the web console's URL and keeps serving it
until Ctrl-C; then everything stops. And ``costmesh up`` with tokens configured refuses an anonymous call."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil

from costmesh.common.embedded import free_port

from .api_harness import TOKEN_TEXT, TOKENS
from .conftest import DATA


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    end = time.monotonic() + timeout
    seen = []
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the output:\n{''.join(seen)[-3000:]}")


def test_demo_keep_prints_the_console_url_and_serves_until_ctrl_c():
    env = {**os.environ, "COSTMESH_TEST_MARK": "demo-keep"}
    command = [sys.executable, "-m", "costmesh.cli", "--log-level", "warning", "demo", "--keep"]
    command += ["--capture", str(DATA / "demo_tenants.pcap"), "--config", str(DATA / "demo" / "costmesh.toml")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = _read_until(proc, r"The costmesh console: (http://127\.0\.0\.1:\d+/)", 120).group(1)
        _read_until(proc, "Serving until Ctrl-C", 5)
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and b"costmesh" in resp.read()
        with urllib.request.urlopen(url + "v1/pnl?period=2026-01", timeout=5) as resp:
            assert json.loads(resp.read())["customers"]
        time.sleep(1)
        assert proc.poll() is None, "the demo stopped instead of serving"
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline()[:4] for p in alive]


def test_up_with_tokens_refuses_an_anonymous_call(tmp_path):
    api_port = free_port()
    config = tmp_path / "costmesh.toml"
    config.write_text('[api]\ntokens_env = "COSTMESH_TEST_API_TOKENS"\n')
    env = {**os.environ, "COSTMESH_TEST_API_TOKENS": TOKEN_TEXT}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        command = [
            sys.executable,
            "-m",
            "costmesh.cli",
            "up",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "d"),
        ]
        proc = subprocess.Popen([*command, "--api-port", str(api_port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        end = time.monotonic() + 90
        while 'msg="costmesh is up"' not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < end, log_path.read_text()[-2000:]
            time.sleep(0.2)
        base = f"http://127.0.0.1:{api_port}"
        try:
            urllib.request.urlopen(base + "/v1/cost", timeout=5)
            raise AssertionError("an anonymous call was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            assert json.loads(exc.read())["required_role"] == "viewer"
        request = urllib.request.Request(base + "/v1/cost", headers={"Authorization": f"Bearer {TOKENS['viewer']}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read())["group_by"] == "tenant"
        assert "auth: tokens" in log_path.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_refuses_to_start_open_on_a_public_address(tmp_path):
    config = tmp_path / "costmesh.toml"
    config.write_text('[api]\nhost = "0.0.0.0"\n')
    command = [sys.executable, "-m", "costmesh.cli", "api", "--config", str(config), "--nats-url", "nats://127.0.0.1:1"]
    done = subprocess.run([*command, "--dsn", "postgresql://127.0.0.1:1/x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "not a loopback address" in done.stderr
