"""``costmesh up``: the embedded default. Starts NATS and PostgreSQL (unless URLs are configured), then every service
as a child process, waits until each reports healthy, and on SIGINT/SIGTERM stops them in reverse order so that
nothing is left running.

External servers are checked first, so an unreachable one fails within 10 s with a message that names it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .config import Config
from .db import create_pool, dsn_of
from .embedded import EmbeddedNats, EmbeddedPostgres, _die_with_parent, free_port
from .errors import StartupError
from .natsio import connect

log = logging.getLogger(__name__)

#: Start order: consumers before producers, so that nothing a producer sends waits on a missing reader. The
#: exporter runs only when ``otlp.enabled``.
SERVICE_ORDER = ("attributor", "exporter", "billing", "api", "redactor", "sensor")


async def check_reachable(config: Config, nats_url: str, dsn: str) -> None:
    """Connect once to each configured external server; raises ``Unreachable`` naming one that does not answer.

    Both are tried at the same time so that the answer comes within one connect deadline.
    """

    async def nats_ok() -> None:
        if nats_url:
            nc = await connect(config.nats, nats_url, "costmesh-up-check")
            await nc.close()

    async def pg_ok() -> None:
        if dsn:
            pool = await create_pool(dsn, min_size=1, max_size=1)
            await pool.close()

    await asyncio.gather(nats_ok(), pg_ok())


def http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only: our own services
        return json.loads(resp.read())


@dataclass
class Stack:
    """The running embedded servers and service processes of one ``costmesh up``."""

    config: Config
    config_path: str | None
    data_dir: Path
    replay: list[str] = field(default_factory=list)
    api_port: int = 0
    nats: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    nats_url: str = ""
    dsn: str = ""
    children: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)

    def start(self) -> None:
        self.nats_url = self.config.nats.url
        self.dsn = dsn_of(self.config.postgres)
        if self.nats_url or self.dsn:
            asyncio.run(check_reachable(self.config, self.nats_url, self.dsn))
        if not self.nats_url:
            self.nats = EmbeddedNats(self.data_dir / "nats").start()
            self.nats_url = self.nats.url
        if not self.dsn:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres").start()
            self.dsn = self.postgres.dsn
        for name in SERVICE_ORDER:
            if name == "exporter" and not self.config.otlp.enabled:
                continue
            self._spawn(name)
            self.wait_healthy(name)

    def _spawn(self, name: str) -> None:
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "costmesh.cli",
            name,
            "--nats-url",
            self.nats_url,
            "--dsn",
            self.dsn,
            "--metrics-port",
            str(port),
        ]
        if self.config_path:
            args += ["--config", self.config_path]
        if name == "api":
            self.api_port = self.api_port or self.config.api.port
            args += ["--api-port", str(self.api_port)]
        if name == "sensor":
            for path in self.replay:
                args += ["--replay", path]
        proc = subprocess.Popen(args, preexec_fn=_die_with_parent)
        self.children[name] = (proc, port)

    def health(self, name: str) -> dict:
        return http_json(f"http://127.0.0.1:{self.children[name][1]}/healthz")

    def wait_healthy(self, name: str, timeout_s: float = 30) -> None:
        proc, _port = self.children[name]
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise StartupError(f"service {name} exited with status {proc.returncode} while starting")
            try:
                if self.health(name).get("ok"):
                    log.info("service healthy", extra={"service_name": name})
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise StartupError(f"service {name} did not become healthy within {timeout_s:.0f} s")

    def stop_child(self, name: str) -> None:
        """Stop one service of the stack (the others keep running)."""
        proc, _port = self.children.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)

    def replay_in_sensor(self, paths: list[str]) -> None:
        """(Re)start the sensor replaying ``paths`` instead of capturing live: the demo's fallback where eBPF is not
        allowed (the traffic was recorded from a packet socket meanwhile)."""
        if "sensor" in self.children:
            self.stop_child("sensor")
        self.replay = list(paths)
        self._spawn("sensor")
        self.wait_healthy("sensor")

    def failed(self) -> str | None:
        """The name of a child that died on its own, if any."""
        for name, (proc, _port) in self.children.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            proc, _port = self.children[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in 15 s, killing", extra={"service_name": name})
                proc.kill()
                proc.wait(5)
        self.children.clear()
        if self.postgres:
            self.postgres.stop()
        if self.nats:
            self.nats.stop()


def _stop_on_signals() -> dict[str, int]:
    """SIGINT/SIGTERM set ``["signal"]`` instead of raising, so the caller stops the stack in order."""
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _serve(stack: Stack, stop: dict[str, int]) -> int:
    """Wait until a signal (0) or until a service dies (1)."""
    while not stop["signal"]:
        dead = stack.failed()
        if dead:
            log.error("service exited unexpectedly; stopping", extra={"service_name": dead})
            return 1
        time.sleep(0.2)
    return 0


def run_up(config: Config, config_path: str | None, data_dir: Path, replay: list[str]) -> int:
    """Run the stack until SIGINT/SIGTERM or until a service dies; returns the exit status."""
    stop = _stop_on_signals()
    stack = Stack(config, config_path, data_dir, replay)
    try:
        stack.start()
        log.info("costmesh is up", extra={"nats": stack.nats_url, "api_port": config.api.port, "pid": os.getpid()})
        return _serve(stack, stop)
    finally:
        stack.stop()


def keep_serving(stack: Stack, out: TextIO = sys.stdout) -> int:
    """The end of ``costmesh demo --keep``: print where the web console is and serve until Ctrl-C (or SIGTERM, or a
    service dying). The caller still stops the stack."""
    stop = _stop_on_signals()
    url = f"http://127.0.0.1:{stack.api_port}/"
    print(f"\nThe costmesh console: {url}", file=out)
    if stack.config.api.tokens_env:
        print(f"  sign in with a token from ${stack.config.api.tokens_env}", file=out)
    print("Serving until Ctrl-C.", file=out, flush=True)
    return _serve(stack, stop)
