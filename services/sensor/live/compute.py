"""CPU and memory per workload per window: what node compute lines are split by (issue 16).

Reads: cgroup v2 files of the workloads' cgroups (``cpu.stat`` ``usage_usec``, ``memory.current``) -- containers
found by the container ids the Kubernetes pod watch knows, plus the cgroups the config names (``cluster.cgroups``);
for workloads that are plain processes (bare hosts, the demo), ``/proc/<pid>/stat`` (``utime + stime``) and
``statm`` (resident pages), the process named by the workloads table through the addresses of its sockets. Node
capacity from the CPU count and ``/proc/meminfo``. Emits: per window one ``ComputeSample`` per workload (CPU time
used in the window, memory held at its end, requests and limits from the pod spec) and one ``CapacitySample``.

Counters are cumulative, so a window's CPU is the difference of two readings. A cgroup or process first seen after the
sampler started is new: all its CPU so far is this window's (a job that lived a second counts whole); one that was
there at the start counts from its first reading. A process already named keeps its name after its sockets close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import CapacitySample, ComputeSample

from .identity import container_id_of_cgroup

log = logging.getLogger(__name__)

#: Where the cgroup v2 hierarchy is mounted: alone (``/sys/fs/cgroup``) or beside v1 controllers (hybrid systemd).
CGROUP2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
_TICK_US = 1_000_000 // os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a cgroup or process is, and what its pod asked for (0: nothing asked)."""

    workload: str
    tenant: str = ""
    feature: str = ""
    cpu_request_millicores: int = 0
    cpu_limit_millicores: int = 0
    memory_request_bytes: int = 0
    memory_limit_bytes: int = 0


def cgroup2_root() -> Path | None:
    """The cgroup v2 mount, or None when the kernel has none."""
    for path in CGROUP2_MOUNTS:
        if (path / "cgroup.controllers").exists():
            return path
    return None


def read_cgroup(path: Path) -> tuple[int, int] | None:
    """(CPU µs used since the cgroup was made, memory bytes now) of a v2 cgroup; memory 0 where the memory
    controller is not on v2 (hybrid hosts). None when the cgroup is gone."""
    try:
        text = (path / "cpu.stat").read_text()
    except OSError:
        return None
    usage = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("usage_usec ")), 0)
    try:
        memory = int((path / "memory.current").read_text())
    except (OSError, ValueError):
        memory = 0
    return usage, memory


def read_process(pid: int, proc: Path = Path("/proc")) -> tuple[int, int, int] | None:
    """(CPU µs used, resident bytes, start time in clock ticks since boot) of a process; None when it is gone.

    CPU from the process's CPU-time clock (``clock_getcpuclockid``: the scheduler's nanoseconds, threads that ended
    included) when this host's ``/proc`` is the process's; else ``utime + stime`` of ``stat``, whole clock ticks
    (10 ms: a tick off per field on a window's reading, exact over the hour)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text().split()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the comm may hold spaces and parentheses
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15, starttime field 22
    cpu = (int(fields[11]) + int(fields[12])) * _TICK_US
    if proc == _PROC:
        with contextlib.suppress(OSError):  # gone since, or not ours to read: the ticks stand
            cpu = int(time.clock_gettime(_cpu_clock(pid)) * 1_000_000)
    return cpu, int(statm[1]) * _PAGE, int(fields[19])


def _cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU time (glibc's ``clock_getcpuclockid``: ``MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)``), which Python does not expose."""
    return ((~pid) << 3) | 2


def node_memory_bytes(proc: Path = Path("/proc")) -> int:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


#: Names the workload a process is (its socket addresses through the workloads table), "" for none.
ProcessNamer = Callable[[int], str]
#: The owners of the containers the pod watch knows, by container id.
ContainerOwners = Callable[[], dict[str, Owner]]


class ComputeSampler:
    """Reads every workload's CPU and memory once per window; ``sample`` returns that window's samples."""

    def __init__(
        self,
        config: Config,
        node: str,
        *,
        cgroup_root: Path | None = None,
        proc: Path = Path("/proc"),
        process_workload: ProcessNamer | None = None,
        containers: ContainerOwners | None = None,
        zone: Callable[[], str] | None = None,
        rescan_s: float = 5.0,
    ) -> None:
        mode = config.cluster.compute
        self.node = node
        self.root = cgroup_root if cgroup_root is not None else cgroup2_root()
        self.proc = proc
        self.cgroups = (
            {self.root / c.path.lstrip("/"): Owner(c.workload) for c in config.cluster.cgroups}
            if self.root is not None and mode in ("auto", "cgroup")
            else {}
        )
        self.process_workload = process_workload if mode in ("auto", "proc") else None
        self.containers = containers if mode in ("auto", "cgroup") else None
        self.capacity = config.cluster.capacity
        self.zone = zone or (lambda: config.cluster.zone)
        self.rescan_s = rescan_s
        self._last: dict[object, int] = {}  # cgroup path / (pid, start) → cumulative CPU µs at the last reading
        self._named: dict[tuple[int, int], str] = {}  # (pid, start) → workload ("" for a process that is none)
        self._container_paths: dict[str, Path] = {}  # container id → its cgroup
        self._scanned = -1e9
        self._started_ticks = _uptime_ticks(proc)
        self._first = True

    def sample(self, start_us: int, end_us: int) -> tuple[list[ComputeSample], list[CapacitySample]]:
        """The window's samples: CPU used since the last call, memory now."""
        acc: dict[Owner, list[int]] = {}
        for path, owner in self._cgroup_owners():
            got = read_cgroup(path)
            if got is not None:
                self._add(acc, owner, path, got[0], got[1])
        if self.process_workload is not None:
            self._processes(acc)
        self._first = False
        zone = self.zone()
        samples = [
            ComputeSample(
                window_start_us=start_us,
                window_end_us=end_us,
                node=self.node,
                workload=o.workload,
                zone=zone,
                tenant=o.tenant,
                tenant_method="label" if o.tenant else "unallocated",
                feature=o.feature,
                cpu_usage_us=cpu,
                memory_bytes=memory,
                cpu_request_millicores=o.cpu_request_millicores,
                cpu_limit_millicores=o.cpu_limit_millicores,
                memory_request_bytes=o.memory_request_bytes,
                memory_limit_bytes=o.memory_limit_bytes,
            )
            for o, (cpu, memory) in sorted(acc.items(), key=lambda kv: kv[0].workload)
        ]
        capacity = []
        if self.capacity and samples:
            capacity.append(
                CapacitySample(
                    window_start_us=start_us,
                    window_end_us=end_us,
                    node=self.node,
                    zone=zone,
                    cpu_millicores=(os.cpu_count() or 1) * 1000,
                    memory_bytes=node_memory_bytes(self.proc),
                )
            )
        return samples, capacity

    def _add(self, acc: dict[Owner, list[int]], owner: Owner, key: object, cpu: int, memory: int) -> None:
        """Add one reading; its CPU counts from the last reading (from zero for what is new since the start)."""
        last = self._last.get(key)
        if last is None:
            last = cpu if self._first else 0
        self._last[key] = cpu
        # a pod's containers summed: requests add up per workload as usage does
        slot = acc.setdefault(owner, [0, 0])
        slot[0] += max(cpu - last, 0)
        slot[1] += memory

    def _cgroup_owners(self) -> Iterable[tuple[Path, Owner]]:
        yield from self.cgroups.items()
        if self.containers is None or self.root is None:
            return
        owners = self.containers()
        missing = [cid for cid in owners if cid not in self._container_paths]
        if missing and time.monotonic() - self._scanned > self.rescan_s:
            self._scan_cgroups(set(owners))
        for cid, owner in owners.items():
            path = self._container_paths.get(cid)
            if path is not None:
                yield path, owner

    def _scan_cgroups(self, wanted: set[str]) -> None:
        """Find the cgroups of the wanted containers (``…/cri-containerd-<id>.scope``, ``…/<id>``) under the root."""
        self._scanned = time.monotonic()
        assert self.root is not None
        for dirpath, dirnames, _files in os.walk(self.root):
            cid = container_id_of_cgroup(dirpath)
            if cid in wanted:
                self._container_paths[cid] = Path(dirpath)
                dirnames.clear()  # a container's own sub-cgroups are in its totals already

    def _processes(self, acc: dict[Owner, list[int]]) -> None:
        """Every process's CPU since its last reading (every process is read, named or not, so that one named late
        still counts from the sampler's start or its own); the named ones' go to their workloads."""
        assert self.process_workload is not None
        try:
            pids = [int(e.name) for e in os.scandir(self.proc) if e.name.isdigit()]
        except OSError as exc:
            ERRORS.labels("sensor", "compute").inc()
            log.warning("cannot list processes: %s", exc)
            return
        seen: set[tuple[int, int]] = set()
        for pid in pids:
            got = read_process(pid, self.proc)
            if got is None:
                continue
            cpu, rss, start = got
            key = (pid, start)
            seen.add(key)
            if key not in self._last:
                # there before the sampler: from now on; started since: all of its CPU
                self._last[key] = cpu if start <= self._started_ticks else 0
            name = self._named.get(key)
            if not name:
                name = self.process_workload(pid)
                if name:
                    self._named[key] = name
            if name:
                self._add(acc, Owner(name), key, cpu, rss)
            else:
                self._last[key] = cpu
        for key in [k for k in self._last if isinstance(k, tuple) and k not in seen]:  # gone: forget it
            self._named.pop(key, None)
            self._last.pop(key, None)


def _uptime_ticks(proc: Path) -> int:
    try:
        return int(float((proc / "uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0
