"""``costmesh up`` on the embedded default: everything starts, every service answers /healthz and /metrics, and
SIGTERM or Ctrl-C (SIGINT) stops the whole process tree."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from costmesh.common.embedded import free_port
from costmesh.common.supervisor import http_json

SERVICE_NAMES = {"sensor", "redactor", "attributor", "billing", "api"}


def _wait_up(proc: subprocess.Popen[bytes], log_path, timeout: float = 90) -> None:
    """``up`` says "costmesh is up" once every service reported healthy."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"costmesh up exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}"
        if 'msg="costmesh is up"' in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError("costmesh up did not report ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_runs_everything_and_stops_cleanly(tmp_path, sig):
    api_port = free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "costmesh.cli",
                "up",
                "--data-dir",
                str(tmp_path / "data"),
                "--api-port",
                str(api_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_up(proc, log_path)
        assert http_json(f"http://127.0.0.1:{api_port}/v1/ingest") == {"applied_batches": 0, "applied_records": 0}
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in tree}
        assert {"nats-server", "postgres"} <= names
        services = {arg for p in tree for arg in p.cmdline() if arg in SERVICE_NAMES}
        assert services == SERVICE_NAMES
        # every service serves /healthz and /metrics on the port up gave it
        ports = [int(c[c.index("--metrics-port") + 1]) for c in (p.cmdline() for p in tree) if "--metrics-port" in c]
        assert len(ports) == len(SERVICE_NAMES)
        for port in ports:
            assert http_json(f"http://127.0.0.1:{port}/healthz")["ok"] is True
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                assert b"costmesh_up{service=" in resp.read()
        proc.send_signal(sig)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output = log_path.read_text(errors="replace")
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[p.name() for p in alive]}\n{output[-2000:]}"
