"""Workload identity on a node: who is at each end of a flow, and which workload a pid belongs to.

Reads: the config's ``workloads`` table (static names for addresses/CIDRs and ports), ``/proc`` (``net/tcp{,6}``
socket inodes → the process holding them → its cgroup → container id) and, on Kubernetes, the pods of this node
(``identity_k8s``). Emits: names for ``src_workload``/``dst``/``FlowVolume.*_workload``.

Precedence: the static table wins where it matches (an operator's word beats inference), then Kubernetes (pod IP or
container id → owner workload), then the local process that owns the socket, else ``ip:port`` as before.
/proc is read lazily and cached for ``refresh_s``: a name is looked up per flow per window, not per packet.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from costmesh.common.config import Config, Workload

#: Container ids as they appear in cgroup paths: docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope,
#: /docker/<id>, /kubepods/.../<id>, libpod-<id>.scope.
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")
_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


def container_id_of_cgroup(path: str) -> str:
    """The container id in a cgroup path, or "" for a process outside any container."""
    found = _CONTAINER_ID.findall(path)
    return found[-1] if found else ""


def cgroup_of_pid(pid: int, proc: Path = Path("/proc")) -> str:
    """The process's cgroup path: the v2 line (``0::``) when it names one, else the first v1 line that has a
    container id, else the v2 path. "" when the process is gone."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return ""
    paths = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]
    v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), "")
    if v2 and v2 != "/":
        return v2
    return next((p for p in paths if container_id_of_cgroup(p)), v2 or (paths[0] if paths else ""))


def container_id_of_pid(pid: int, proc: Path = Path("/proc")) -> str:
    return container_id_of_cgroup(cgroup_of_pid(pid, proc))


class StaticIdentity:
    """The ``workloads`` table: an IP or CIDR, optionally a port, gives a name."""

    def __init__(self, workloads: list[Workload]) -> None:
        self.entries = [(ipaddress.ip_network(w.address, strict=False), w.port, w.name) for w in workloads]
        #: Endpoints looked up so far (the table never changes; flows are named every window, by the thousand).
        self._seen: dict[tuple[str, int], str] = {}

    def name(self, addr: str, port: int) -> str:
        key = (addr, port)
        found = self._seen.get(key)
        if found is None:
            found = self._lookup(addr, port)
            if len(self._seen) >= 65536:
                self._seen.clear()
            self._seen[key] = found
        return found

    def _lookup(self, addr: str, port: int) -> str:
        if not self.entries:
            return ""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return ""
        best, best_len = "", -1
        for net, wport, name in self.entries:
            if ip.version == net.version and ip in net and (not wport or wport == port):
                score = net.prefixlen * 2 + (1 if wport else 0)  # most specific match wins
                if score > best_len:
                    best, best_len = name, score
        return best


def _hex_addr(text: str) -> tuple[str, int]:
    """Decode ``/proc/net/tcp`` ``ADDR:PORT`` (addresses in host byte order, 32-bit words)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def socket_endpoints_of_pid(pid: int, proc: Path = Path("/proc")) -> list[tuple[str, int]]:
    """Local ``(address, port)`` of the TCP sockets process ``pid`` holds: its fds' socket inodes, looked up in the
    socket tables of its own network namespace. Empty when the process is gone or unreadable."""
    inodes: set[int] = set()
    try:
        with os.scandir(proc / str(pid) / "fd") as fds:
            for fd in fds:
                try:
                    m = _SOCKET_LINK.match(os.readlink(fd.path))
                except OSError:
                    continue
                if m:
                    inodes.add(int(m.group(1)))
    except OSError:
        return []
    out: list[tuple[str, int]] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 10 and int(cols[9]) in inodes:
                out.append(_hex_addr(cols[1]))
    return out


@dataclass
class ProcessInfo:
    pid: int
    comm: str
    container_id: str = ""


@dataclass
class ProcIdentity:
    """Local sockets → owning process, from /proc. Names a local endpoint by its process (or container)."""

    proc: Path = Path("/proc")
    refresh_s: float = 1.0
    max_age_s: float = 60.0
    _by_endpoint: dict[tuple[str, int], int] = field(default_factory=dict)  # (addr, port) → inode
    _listen: dict[int, int] = field(default_factory=dict)  # port → inode of a LISTEN socket on it
    _owner: dict[int, ProcessInfo] = field(default_factory=dict)  # inode → process
    _local: set[str] = field(default_factory=set)  # addresses of this host's sockets
    _at: float = -1e9

    def refresh(self) -> None:
        by_endpoint: dict[tuple[str, int], int] = {}
        listen: dict[int, int] = {}
        for name in ("tcp", "tcp6", "udp", "udp6"):
            try:
                lines = (self.proc / "net" / name).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                cols = line.split()
                if len(cols) < 10:
                    continue
                local = _hex_addr(cols[1])
                inode = int(cols[9])
                if not inode:
                    continue
                by_endpoint[local] = inode
                if cols[3] == "0A" or name.startswith("udp"):  # TCP_LISTEN, or a bound UDP socket
                    listen[local[1]] = inode
        wanted = set(by_endpoint.values())
        owner: dict[int, ProcessInfo] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                fds = os.scandir(f"{entry.path}/fd")
            except OSError:
                continue
            info: ProcessInfo | None = None
            with fds:
                for fd in fds:
                    try:
                        m = _SOCKET_LINK.match(os.readlink(fd.path))
                    except OSError:
                        continue
                    if m and int(m.group(1)) in wanted and int(m.group(1)) not in owner:
                        if info is None:
                            info = self.process(pid)
                        owner[int(m.group(1))] = info
        self._by_endpoint, self._listen, self._owner, self._at = by_endpoint, listen, owner, time.monotonic()
        self._local = {a for a, _p in by_endpoint} - {"0.0.0.0", "::"}

    def sockets(self) -> list[tuple[str, int, ProcessInfo]]:
        """Every local socket of the last snapshot with the process holding it: (address, port, process)."""
        out = []
        for (addr, port), inode in self._by_endpoint.items():
            info = self._owner.get(inode)
            if info is not None:
                out.append((addr, port, info))
        return out

    def _is_local(self, addr: str) -> bool:
        return addr in self._local or addr.startswith("127.") or addr == "::1"

    def process(self, pid: int) -> ProcessInfo:
        try:
            comm = (self.proc / str(pid) / "comm").read_text().strip()
        except OSError:
            comm = ""
        return ProcessInfo(pid, comm, container_id_of_pid(pid, self.proc))

    def owner(self, addr: str, port: int) -> ProcessInfo | None:
        """The process holding the local socket ``addr:port`` (or listening on ``port``).

        The snapshot is rebuilt when older than ``refresh_s`` and a local endpoint is not in it (a new connection),
        and at the latest every ``max_age_s``; remote endpoints never cause a rebuild."""
        age = time.monotonic() - self._at
        known = (addr, port) in self._by_endpoint
        if age > self.max_age_s or (not known and age > self.refresh_s and self._is_local(addr)):
            self.refresh()
        inode = self._by_endpoint.get((addr, port))
        if inode is None:
            for any_addr in ("0.0.0.0", "::"):
                inode = self._by_endpoint.get((any_addr, port))
                if inode is not None:
                    break
        info = self._owner.get(inode) if inode is not None else None
        if info is None and port in self._listen:
            info = self._owner.get(self._listen[port])
        return info


class ProcessWorkloads:
    """Which workload a process is, by the addresses its sockets are bound to (the workloads table names an address
    as a pod IP is named): what CPU per process is summed by where workloads are processes, not containers.

    The /proc socket snapshot is rebuilt at most every ``refresh_s`` (it reads every process's file descriptors)."""

    def __init__(self, static: StaticIdentity, proc: ProcIdentity, refresh_s: float = 5.0) -> None:
        self.static = static
        self.proc = proc
        self.refresh_s = refresh_s
        self._by_pid: dict[int, str] = {}
        self._at = -1e9

    def __call__(self, pid: int) -> str:
        if time.monotonic() - self._at > self.refresh_s:
            self._rebuild()
        return self._by_pid.get(pid, "")

    def _rebuild(self) -> None:
        self.proc.refresh()
        by_pid: dict[int, str] = {}
        for addr, port, info in self.proc.sockets():
            if info.pid in by_pid or addr in ("0.0.0.0", "::"):
                continue
            name = self.static.name(addr, port)
            if name:
                by_pid[info.pid] = name
        self._by_pid, self._at = by_pid, time.monotonic()


def process_name(info: ProcessInfo) -> str:
    """A bare-host workload name: the container (short id) when there is one, else the process name."""
    return f"container:{info.container_id[:12]}" if info.container_id else info.comm


ContainerNamer = Callable[[str], str]
AddressNamer = Callable[[str, int], str]


class IdentityResolver:
    """Names endpoints and processes by the precedence stated in the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        proc: ProcIdentity | None = None,
        pod_of_ip: AddressNamer | None = None,
        pod_of_container: ContainerNamer | None = None,
    ) -> None:
        self.static = StaticIdentity(config.workloads)
        self.proc = proc
        self.pod_of_ip = pod_of_ip
        self.pod_of_container = pod_of_container
        self.local = {"127.0.0.1", "::1"}
        #: pid → (its workload by the table, when that was looked up): a process's sockets are read once a second
        #: at most (TLS records name their process every window).
        self._pid_table: dict[int, tuple[str, float]] = {}

    def name(self, addr: str, port: int) -> str:
        """Workload name of one endpoint, "" when nothing is known (callers then use ``ip:port``)."""
        found = self.static.name(addr, port)
        if found:
            return found
        if self.pod_of_ip is not None:
            found = self.pod_of_ip(addr, port)
            if found:
                return found
        if self.proc is not None and port:  # port 0: any port of the address (a call's source), no one socket
            info = self.proc.owner(addr, port)
            if info is not None:
                if info.container_id and self.pod_of_container is not None:
                    pod = self.pod_of_container(info.container_id)
                    if pod:
                        return pod
                return process_name(info)
        return ""

    def name_of_pid(self, pid: int, _cgroup_id: int, comm: str) -> str:
        """Workload of a process (TLS plaintext comes with a pid): the table's name for an address its sockets use
        (as its plaintext calls leave from them), its pod, its container, or ``comm[pid]``."""
        proc = self.proc.proc if self.proc is not None else Path("/proc")
        found = self._table_name_of_pid(pid, proc)
        if found:
            return found
        cid = container_id_of_pid(pid, proc)
        if cid and self.pod_of_container is not None:
            pod = self.pod_of_container(cid)
            if pod:
                return pod
        if cid:
            return f"container:{cid[:12]}"
        return f"{comm}[{pid}]"

    def _table_name_of_pid(self, pid: int, proc: Path) -> str:
        if not self.static.entries:
            return ""
        now = time.monotonic()
        known = self._pid_table.get(pid)
        if known is not None and (known[0] or now - known[1] < 1.0):
            return known[0]
        names = {self.static.name(addr, port) for addr, port in socket_endpoints_of_pid(pid, proc)} - {""}
        found = min(names) if names else ""  # one address per workload; several names: the same one every time
        if len(self._pid_table) >= 4096:
            self._pid_table.clear()
        self._pid_table[pid] = (found, now)
        return found
