"""A service stops on SIGTERM even when the server its cleanup talks to is gone (it used to hang in ``drain``)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from costmesh.common.embedded import EmbeddedNats, free_port
from costmesh.common.supervisor import http_json

from .conftest import DATA


@pytest.mark.parametrize(
    "service",
    [
        ["redactor"],
        # no redactor answers: the sensor is retrying its first batch when NATS dies and SIGTERM comes
        ["sensor", "--replay", str(DATA / "demo_tenants.pcap")],
    ],
)
def test_service_stops_when_nats_died_first(tmp_path, service):
    nats = EmbeddedNats(tmp_path / "nats").start()
    port = free_port()
    with open(tmp_path / "service.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "costmesh.cli", *service, "--nats-url", nats.url, "--metrics-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        end = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            try:
                if http_json(f"http://127.0.0.1:{port}/healthz").get("ok"):
                    break
            except OSError:
                pass
            assert time.monotonic() < end, "redactor did not become healthy"
            time.sleep(0.1)
        nats.kill()
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)  # raises TimeoutExpired (the test fails) if the service hangs on its way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        nats.stop()
    output = (tmp_path / "service.log").read_text()
    assert proc.returncode == 0, output
    assert 'msg="service stopped"' in output and "Traceback" not in output
