"""Uprobes on OpenSSL's ``SSL_write``/``SSL_read`` (and their ``_ex`` variants), kept on every ``libssl.so.3`` in use.

Reads: ``/proc/<pid>/maps`` of running processes (which OpenSSL files are mapped), the exec events of the TLS program
(a program just started). Emits: uprobes attached to the loaded TLS program (``bpf/tls.bpf.c``), per library file or,
with ``sensor.tls_processes``, per matching process; ``costmesh_sensor_exec_looks_total``. The plaintext the probes
capture is read by ``capture.LiveCapture`` and parsed by ``tls.TlsPlaintextSink``.
"""

from __future__ import annotations

import asyncio
import ctypes as ct
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from costmesh.common.config import SensorConfig

from .. import bpf
from .metrics import EXEC_LOOKS

log = logging.getLogger(__name__)

#: After a process starts (exec event), its maps are read for OpenSSL this long after (seconds; the dynamic loader
#: maps libssl before main runs; a later dlopen is found by the periodic scan).
EXEC_LOOKS_S = (0.02, 0.5)
#: At most this many such looks per second (a build host may start hundreds of programs a second): past it, started
#: programs wait for the periodic scan, and the skipped looks are counted.
EXEC_LOOKS_PER_S = 20


def libssl_of(pid_dir: str, name: str = "libssl.so.3") -> tuple[str, str] | None:
    """``(comm, path)`` when the process at ``pid_dir`` (``/proc/<pid>``) has an OpenSSL library mapped, else None;
    the path goes through the process's root (``/proc/<pid>/root/...``), so that copies inside containers are
    reachable from the host."""
    wanted = name.encode()
    try:
        with open(f"{pid_dir}/maps", "rb") as fh:
            maps = fh.read()
        if wanted not in maps:
            return None
        with open(f"{pid_dir}/comm", "rb") as fh:
            comm = fh.read().strip().decode(errors="replace")
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].split(b" (deleted)")[0].endswith(b"/" + wanted):
            path = parts[5].decode(errors="replace").removesuffix(" (deleted)")
            return comm, f"{pid_dir}/root{path}"
    return None


def libssl_mappings(proc: str = "/proc", name: str = "libssl.so.3") -> list[tuple[int, str, str]]:
    """``(pid, comm, path)`` of every process that has an OpenSSL library mapped (see ``libssl_of``)."""
    out: list[tuple[int, str, str]] = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            found = libssl_of(entry.path, name)
            if found:
                out.append((int(entry.name), *found))
    return out


def discover_libssl(proc: str = "/proc", name: str = "libssl.so.3") -> list[str]:
    """Every distinct OpenSSL library file mapped by a running process (one path per file)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for _pid, _comm, path in libssl_mappings(proc, name):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out


_SSL_PROBES = (
    ("SSL_write", "enter_write", "leave_write"),
    ("SSL_read", "enter_read", "leave_read"),
    ("SSL_write_ex", "enter_write_ex", "leave_write"),
    ("SSL_read_ex", "enter_read_ex", "leave_read"),
)


class TlsProbes:
    """The uprobes of one loaded TLS program. ``attach`` probes what is not probed yet (at start, then every
    ``sensor.tls_discover_s`` through ``new_window``); ``on_exec`` looks at a started program shortly after its exec,
    within ``EXEC_LOOKS_PER_S``; ``close`` detaches everything. ``loop`` is set while the capture runs (looks are
    scheduled on it)."""

    def __init__(self, cfg: SensorConfig, prog: Any) -> None:
        self.cfg = cfg
        self.prog = prog
        self.loop: asyncio.AbstractEventLoop | None = None
        self.patterns = [re.compile(p) for p in cfg.tls_processes]
        self.pids: dict[int, list[bytes]] = {}
        self.exec_budget = EXEC_LOOKS_PER_S * cfg.window_s
        self._files: dict[tuple[int, int], str] = {}
        self._looks: set[asyncio.TimerHandle] = set()
        self._detacher: ThreadPoolExecutor | None = None
        self._scanned = time.monotonic()

    def attach(self) -> int:
        """Probe OpenSSL where not probed yet; returns how many files (or processes) were newly probed.

        Without ``sensor.tls_processes``: every process, one set of uprobes per library file — the configured files
        and, with ``sensor.tls_discover``, each distinct ``libssl.so.3`` mapped by a running process (containers
        bring their own copies, and a uprobe binds to one file). With ``sensor.tls_processes``: only processes whose
        name matches, one set of uprobes per process, so that no other process takes a uprobe trap at all (the
        kernel installs a per-process uprobe's breakpoint in that process only); processes that ended are detached.
        """
        if self.cfg.tls_processes:
            return self._attach_processes()
        candidates = list(self.cfg.tls_libraries)
        if self.cfg.tls_discover:
            candidates += discover_libssl()
        new = 0
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in self._files:
                continue
            self._files[key] = path  # also when nothing could be probed: do not retry it every scan
            if self._probe(path, -1):
                new += 1
                log.info("probing OpenSSL in %s", path)
        return new

    def _probe(self, path: str, pid: int) -> list[bytes]:
        """Attach the four entry/return pairs to one library (for one process, or all with pid -1); returns the
        names of the uprobe events created."""
        before = set(self.prog.uprobe_fds)
        for sym, enter, leave in _SSL_PROBES:
            try:
                self.prog.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=enter.encode(), pid=pid)
                self.prog.attach_uretprobe(name=path.encode(), sym=sym.encode(), fn_name=leave.encode(), pid=pid)
            except Exception as exc:
                log.warning("cannot probe %s in %s (pid %d): %s", sym, path, pid, exc)
        return [name for name in self.prog.uprobe_fds if name not in before]

    def _attach_processes(self) -> int:
        patterns = self.patterns
        alive: dict[int, str] = {}
        for pid, comm, path in libssl_mappings():
            if any(p.search(comm) for p in patterns):
                alive[pid] = path
        for pid in [pid for pid in self.pids if pid not in alive]:
            self.detach(self.pids.pop(pid))
        new = 0
        for pid, path in alive.items():
            if pid not in self.pids:
                self.pids[pid] = self._probe(path, pid)
                self._files[(-1, pid)] = path
                if self.pids[pid]:
                    new += 1
                    log.info("probing OpenSSL of pid %d in %s", pid, path)
        for key in [k for k in self._files if k[0] == -1 and k[1] not in alive]:
            del self._files[key]
        return new

    def on_exec(self, _ctx: Any, data: Any, size: int) -> int:
        """A process started a program: look for its OpenSSL shortly (``EXEC_LOOKS_S``) instead of at the next scan.
        With ``sensor.tls_processes`` only programs whose name matches are looked at."""
        pid, comm = bpf.EXEC_EVENT.unpack(ct.string_at(data, bpf.EXEC_EVENT.size))
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        if self.loop is None or (self.patterns and not any(p.search(name) for p in self.patterns)):
            return 0
        if self.exec_budget <= 0:
            EXEC_LOOKS.labels("skipped").inc()
            return 0
        self.exec_budget -= 1
        EXEC_LOOKS.labels("looked").inc()
        self._look_later(pid, 0)
        return 0

    def _look_later(self, pid: int, attempt: int) -> None:
        assert self.loop is not None
        handle: asyncio.TimerHandle

        def look() -> None:
            self._looks.discard(handle)
            if not self._probe_started(pid) and attempt + 1 < len(EXEC_LOOKS_S):
                self._look_later(pid, attempt + 1)

        handle = self.loop.call_later(EXEC_LOOKS_S[attempt], look)
        self._looks.add(handle)

    def _probe_started(self, pid: int) -> bool:
        """Probe the OpenSSL of one started process if it is new to us; True when its libssl was found (probed now
        or already)."""
        found = libssl_of(f"/proc/{pid}")
        if found is None:
            return False
        comm, path = found
        if self.cfg.tls_processes:
            if pid not in self.pids and any(p.search(comm) for p in self.patterns):
                self.pids[pid] = self._probe(path, pid)
                self._files[(-1, pid)] = path
                log.info("probing OpenSSL of pid %d in %s (started after the sensor)", pid, path)
            return True
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_dev, st.st_ino) not in self._files:
            self._files[(st.st_dev, st.st_ino)] = path
            if self._probe(path, -1):
                log.info("probing OpenSSL in %s (started after the sensor)", path)
        return True

    @property
    def files(self) -> list[str]:
        """The OpenSSL library files being probed."""
        return list(self._files.values())

    def detach(self, names: list[bytes]) -> None:
        """Detach uprobes without holding up the loop: closing a uprobe's perf event waits for the kernel (about
        0.1 s each here), so the closes run on worker threads (ctypes lets go of the GIL), several at once. The
        names leave bcc's table at once, so nothing is detached twice."""
        from bcc.libbcc import lib

        prog = self.prog
        taken = [(name, prog.uprobe_fds[name]) for name in names if name in prog.uprobe_fds]
        for name, _fd in taken:
            prog._del_uprobe_fd(name)

        def close_one(item: tuple[bytes, int]) -> None:
            name, fd = item
            if lib.bpf_close_perf_event_fd(fd) < 0 or lib.bpf_detach_uprobe(name) < 0:
                log.warning("cannot detach uprobe %s", name.decode(errors="replace"))

        if taken:
            if self._detacher is None:
                self._detacher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="uprobe-detach")
            for item in taken:
                self._detacher.submit(close_one, item)

    def new_window(self) -> None:
        """A window ended: a new budget of looks, and the periodic scan for new libraries when it is due."""
        self.exec_budget = EXEC_LOOKS_PER_S * self.cfg.window_s
        if self.cfg.tls_discover and time.monotonic() - self._scanned >= self.cfg.tls_discover_s:
            self._scanned = time.monotonic()
            self.attach()

    def stop_looking(self) -> None:
        """Cancel the looks still scheduled (the capture loop ends)."""
        for handle in self._looks:
            handle.cancel()
        self._looks.clear()
        self.loop = None

    def close(self) -> None:
        """Detach every uprobe; returns once all are gone."""
        self.detach(list(self.prog.uprobe_fds))
        if self._detacher is not None:
            self._detacher.shutdown(wait=True)
            self._detacher = None
