"""Workload identity on bare hosts: cgroup paths → container ids, the static workloads table, and /proc socket
ownership checked against sockets this test really opens."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from costmesh.common.config import Config, Workload
from costmesh.sensor.live.identity import (
    IdentityResolver,
    ProcIdentity,
    StaticIdentity,
    cgroup_of_pid,
    container_id_of_cgroup,
    container_id_of_pid,
)

CID = "3f4e5d6c7b8a" + "0" * 52


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/system.slice/docker-{CID}.scope", CID),
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{CID}.scope", CID),
        (f"/kubepods/besteffort/pod0b7c/{CID}", CID),
        (f"/docker/{CID}", CID),
        (f"/machine.slice/libpod-{CID}.scope/container", CID),
        (f"/kubepods.slice/crio-{CID}.scope", CID),
        ("/user.slice/user-1000.slice/session-2.scope", ""),
        ("/process_api/4afd8040af36cf9b07a0a917c9978d79", ""),  # 32 hex digits: not a container id
        ("/", ""),
    ],
)
def test_container_id_of_cgroup(path, expected):
    assert container_id_of_cgroup(path) == expected


def test_cgroup_of_pid_prefers_v2_then_v1_line_with_a_container(tmp_path):
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "cgroup").write_text(f"4:memory:/docker/{CID}\n1:cpu:/\n0::/\n")
    assert container_id_of_pid(10, tmp_path) == CID
    assert container_id_of_pid(11, tmp_path) == CID
    assert cgroup_of_pid(12, tmp_path) == ""  # gone
    assert cgroup_of_pid(os.getpid())  # this process has one


def test_static_table_most_specific_match_wins():
    table = StaticIdentity(
        [
            Workload(address="10.0.0.0/8", name="vpc"),
            Workload(address="10.1.2.0/24", name="db-subnet"),
            Workload(address="10.1.2.3", port=5432, name="orders-db"),
            Workload(address="fd00::/64", name="v6-net"),
        ]
    )
    assert table.name("10.1.2.3", 5432) == "orders-db"
    assert table.name("10.1.2.3", 80) == "db-subnet"
    assert table.name("10.9.9.9", 80) == "vpc"
    assert table.name("fd00::5", 1) == "v6-net"
    assert table.name("192.168.0.1", 1) == ""
    assert table.name("not-an-ip", 1) == ""


def test_proc_finds_the_process_that_owns_a_socket():
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        conn, _ = server.accept()
        with conn:
            ident = ProcIdentity()
            listen_port = server.getsockname()[1]
            cport = client.getsockname()[1]
            assert ident.owner("127.0.0.1", listen_port).pid == os.getpid()
            assert ident.owner("127.0.0.1", cport).comm == comm
            resolver = IdentityResolver(
                Config(workloads=[Workload(address="127.0.0.1", port=listen_port, name="api")]), proc=ident
            )
            assert resolver.name("127.0.0.1", listen_port) == "api"  # the table wins
            assert resolver.name("127.0.0.1", cport) == comm
            assert resolver.name("203.0.113.9", 443) == ""
            # a process holding a socket of a workload in the table is that workload (TLS plaintext has a pid only)
            assert resolver.name_of_pid(os.getpid(), 0, comm) == "api"
    fresh = IdentityResolver(Config(workloads=[Workload(address="127.0.0.1", port=listen_port, name="api")]))
    assert fresh.name_of_pid(os.getpid(), 0, comm) == f"{comm}[{os.getpid()}]"  # its sockets are closed now


def test_a_process_in_a_container_is_named_by_container_then_by_pod(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod7.slice/cri-containerd-{CID}.scope\n")
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "cgroup").write_text("0::/user.slice\n")
    proc = ProcIdentity(proc=tmp_path)
    plain = IdentityResolver(Config(), proc=proc)
    assert plain.name_of_pid(42, 0, "python3") == f"container:{CID[:12]}"
    assert plain.name_of_pid(43, 0, "curl") == "curl[43]"
    k8s = IdentityResolver(Config(), proc=proc, pod_of_container={CID: "shop/orders"}.get)
    assert k8s.name_of_pid(42, 0, "python3") == "shop/orders"


def test_remote_endpoints_do_not_rebuild_the_snapshot():
    ident = ProcIdentity()
    ident.owner("127.0.0.1", 1)
    built = ident._at
    for _ in range(50):
        assert ident.owner("198.51.100.7", 443) is None
    assert ident._at == built
