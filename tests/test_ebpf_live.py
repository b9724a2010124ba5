"""Live capture on ``lo``, as root, with real servers: two aiohttp services calling each other with tenant headers,
checked against ground truth (requests per tenant) and against an independent plain packet-socket count (bytes and
packets per flow direction); a
PostgreSQL client whose query segments must reach the parsers; and an HTTPS call to an OpenAI-compatible endpoint
whose plaintext and token usage come from the OpenSSL uprobes.

The machine's ``lo`` is shared with other work: every check selects the flows of the ports this test opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from costmesh.common.config import Config
from costmesh.common.embedded import free_port

from .certs import server_chain
from .conftest import metric, wait_for
from .ebpf_harness import FrameRecorder, LiveHarness, RawCount, per_direction, requests_by_tenant

TENANTS = {"acme": 7, "globex": 4, "": 3}  # "" = requests without a tenant header


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _parsed_requests() -> float:
    return metric("costmesh_sensor_parsed_total", source="frames", counter="http_requests")


async def test_two_services_requests_per_tenant_and_bytes_per_flow(tmp_path):
    front_port, back_port = free_port(), free_port()
    config = Config()
    parsed_before = _parsed_requests()
    harness = await LiveHarness(config).start()
    dump = RawCount({front_port, back_port}).start()

    async def back(request: web.Request) -> web.Response:
        return web.json_response({"tenant": request.headers.get("X-Tenant-ID", ""), "items": list(range(20))})

    session = aiohttp.ClientSession()

    async def front(request: web.Request) -> web.Response:
        headers = {"X-Tenant-ID": request.headers["X-Tenant-ID"]} if "X-Tenant-ID" in request.headers else {}
        async with session.get(f"http://127.0.0.1:{back_port}/items", headers=headers) as resp:
            data = await resp.read()
        return web.Response(body=data, content_type="application/json")

    back_app, front_app = web.Application(), web.Application()
    back_app.router.add_get("/items", back)
    front_app.router.add_get("/orders", front)
    runners = [await _serve(back_app, back_port), await _serve(front_app, front_port)]
    try:
        async with aiohttp.ClientSession() as client:
            for tenant, count in TENANTS.items():
                for _ in range(count):
                    headers = {"X-Tenant-ID": tenant} if tenant else {}
                    async with client.get(f"http://127.0.0.1:{front_port}/orders", headers=headers) as resp:
                        assert resp.status == 200
                        await resp.read()
        await session.close()
    finally:
        for runner in runners:
            await runner.cleanup()
    await asyncio.sleep(1.0)  # quiet: the closing FIN/ACKs are on the wire before either count stops
    truth = await dump.stop()
    await harness.stop()

    records = harness.records()
    expected = Counter({t: n for t, n in TENANTS.items()})
    assert requests_by_tenant(records, f"127.0.0.1:{front_port}") == expected
    assert requests_by_tenant(records, f"127.0.0.1:{back_port}") == expected
    methods = {r.tenant_method for r in records if r.dst.endswith(f":{front_port}") and r.tenant}
    assert methods == {"header"}

    kernel = per_direction(harness.flows(), {front_port, back_port})
    assert truth, "the independent count saw nothing"
    assert kernel == truth
    # 2 connections at least (client → front, front → back), both directions.
    assert len(kernel) >= 4
    assert sum(w.counters.ring_drops for w in harness.windows) == 0
    # What the engine counted is exported each window (other loopback traffic of the host may add to it).
    assert _parsed_requests() - parsed_before >= 2 * sum(TENANTS.values())


async def test_postgres_queries_reach_the_parsers(postgres, tmp_path):
    """Segments of a PostgreSQL connection on a port not in any list pass the filter by their message signature,
    and every simple-protocol query of the client arrives (counted here by a minimal independent reader)."""
    import asyncpg

    port = int(postgres.dsn.rsplit(":", 1)[1].split("/")[0])
    config = Config()
    assert port not in config.sensor.postgres_ports
    harness = LiveHarness(config)
    harness.capture.frames = recorder = FrameRecorder()
    await harness.start()
    conn = await asyncpg.connect(postgres.dsn)
    local_port = conn._transport.get_extra_info("sockname")[1]
    try:
        for i in range(9):
            await conn.execute(f"SELECT {i} /* costmesh-live */")
    finally:
        await conn.close()
    await harness.stop()

    queries = 0
    for _ts, frame in recorder.frames:
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        sport, dport = int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")
        if (sport, dport) != (local_port, port):
            continue
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload[:1] == b"Q" and b"/* costmesh-live */" in payload:
            queries += 1
    assert queries == 9


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    return server_chain(tmp_path_factory.mktemp("tls"))


async def test_https_ai_call_plaintext_and_tokens_by_uprobe(self_signed):
    from .ebpf_ai_server import USAGE

    cert, key = self_signed
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ebpf_ai_server.py")), str(cert), str(key), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = await asyncio.to_thread(server.stdout.readline)
        assert line.strip() == b"ready", line
        served_before = metric("costmesh_sensor_tls_served_calls_total")
        harness = await LiveHarness(Config(), tls=True).start()
        calls = {"acme": 2, "globex": 1}
        bodies = []
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as client:
            for tenant, count in calls.items():
                for i in range(count):
                    body = json.dumps(
                        {"model": "gpt-test", "messages": [{"role": "user", "content": f"hi {tenant} {i}"}]}
                    ).encode()
                    bodies.append(body)
                    async with client.post(
                        f"https://127.0.0.1:{port}/v1/chat/completions",
                        data=body,
                        headers={"X-Tenant-ID": tenant, "Content-Type": "application/json"},
                        ssl=ctx,
                    ) as resp:
                        assert resp.status == 200
                        answer = await resp.read()
                        assert json.loads(answer)["usage"] == USAGE
        await harness.stop()
    finally:
        server.stdin.close()
        server.wait(10)
        server.stdout.close()

    me = os.getpid()
    sink = harness.tls_sink
    sent = b"".join(v for (pid, _ssl, d), v in sink.plaintext.items() if pid == me and d == "write")
    received = b"".join(v for (pid, _ssl, d), v in sink.plaintext.items() if pid == me and d == "read")
    for body in bodies:
        assert body in sent
    usage_json = json.dumps(USAGE, separators=(",", ":")).encode()
    assert received.count(usage_json) == len(bodies)

    mine = [r for r in harness.records() if r.src_workload.endswith(f"[{me}]")]
    per_tenant = Counter()
    for r in mine:
        per_tenant[r.tenant] += r.requests
    assert per_tenant == Counter(calls)
    n = len(bodies)
    # tokens_in is billed input: prompt tokens less cache reads (costmesh.sensor.core.ai), as for captured frames.
    cached = USAGE["prompt_tokens_details"]["cached_tokens"]
    assert sum(r.tokens_in for r in mine) == (USAGE["prompt_tokens"] - cached) * n
    assert sum(r.tokens_out for r in mine) == USAGE["completion_tokens"] * n
    assert sum(r.tokens_cached for r in mine) == USAGE["prompt_tokens_details"]["cached_tokens"] * n
    assert sum(r.tokens_reasoning for r in mine) == USAGE["completion_tokens_details"]["reasoning_tokens"] * n
    assert {r.model for r in mine} == {"gpt-test"}
    assert {r.dst for r in mine} == {f"127.0.0.1:{port}"}
    assert {r.operation for r in mine} == {"POST /v1/chat/completions"}
    # The server process's side of the same calls is seen by the same probes under its own pid, and left out by
    # default (sensor.tls_server_side): recorded, the calls would count twice.
    assert not [r for r in harness.records() if r.dst.endswith(f"[{server.pid}]")]
    assert metric("costmesh_sensor_tls_served_calls_total") - served_before >= n
    assert sum(w.counters.tls_lost for w in harness.windows) == 0


CLIENT = """
import ctypes, json, ssl, sys, urllib.request
if len(sys.argv) > 3:
    ctypes.CDLL(None).prctl(15, sys.argv[3].encode(), 0, 0, 0)  # PR_SET_NAME: the process name the sensor sees
ctx = ssl.create_default_context(cafile=sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for tenant in ("acme", "acme", "globex"):
    body = json.dumps({"model": "gpt-copy", "messages": [{"role": "user", "content": "hi " + tenant}]}).encode()
    headers = {"X-Tenant-ID": tenant, "Content-Type": "application/json"}
    req = urllib.request.Request(sys.argv[2], data=body, headers=headers)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        resp.read()
print("done", flush=True)
"""


def _probes(capture, library: Path) -> bool:
    """Whether the capture has uprobes on this very library file (same device and inode)."""
    st = os.stat(library)
    return (st.st_dev, st.st_ino) in {(os.stat(p).st_dev, os.stat(p).st_ino) for p in capture.tls_files}


async def _calls_made(client: subprocess.Popen) -> None:
    """Let a ``CLIENT`` process make its three calls, and wait until it has."""
    client.stdin.write(b"go\n")
    client.stdin.flush()
    assert (await asyncio.to_thread(client.stdout.readline)).strip() == b"done"


async def test_a_private_copy_of_libssl_is_found_and_probed(self_signed, tmp_path):
    """A process whose libssl.so.3 is its own file (as in a container image) is found through /proc/<pid>/maps
    and probed; its calls are captured like the host library's."""
    import shutil

    from .ebpf_ai_server import USAGE

    cert, key = self_signed
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy2("/lib/x86_64-linux-gnu/libssl.so.3", libdir / "libssl.so.3")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ebpf_ai_server.py")), str(cert), str(key), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(cert), f"https://127.0.0.1:{port}/v1/chat/completions"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "LD_LIBRARY_PATH": str(libdir)},
    )
    try:
        assert (await asyncio.to_thread(server.stdout.readline)).strip() == b"ready"
        assert (await asyncio.to_thread(client.stdout.readline)).strip() == b"ready"
        maps = Path(f"/proc/{client.pid}/maps").read_text()
        assert str(libdir / "libssl.so.3") in maps, "the client did not load the private copy"
        harness = await LiveHarness(Config(), tls=True).start()
        assert _probes(harness.capture, libdir / "libssl.so.3")
        await _calls_made(client)
        await harness.stop()
    finally:
        for proc in (client, server):
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()
    mine = [r for r in harness.records() if r.src_workload.endswith(f"[{client.pid}]")]
    per_tenant = Counter()
    for r in mine:
        per_tenant[r.tenant] += r.requests
    assert per_tenant == Counter({"acme": 2, "globex": 1})
    assert (
        sum(r.tokens_in for r in mine) == (USAGE["prompt_tokens"] - USAGE["prompt_tokens_details"]["cached_tokens"]) * 3
    )
    assert {r.model for r in mine} == {"gpt-copy"}


async def test_plain_ssl_read_write_of_a_c_client_are_captured(self_signed):
    """wrk (C, Debian's, linked to libssl.so.3) calls SSL_write/SSL_read, not the _ex variants Python uses: its
    HTTPS requests are seen by those probes, each paired with its response, with the tenant header it sent."""
    import shutil

    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (scripts/debian-packages.d/bcc.txt)")
    cert, key = self_signed
    port = free_port()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    app = web.Application()

    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    harness = await LiveHarness(Config(), tls=True).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            wrk,
            "-t",
            "1",
            "-c",
            "1",
            "-d",
            "1s",
            "-H",
            "X-Tenant-ID: wrk-tenant",
            f"https://127.0.0.1:{port}/ping",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    finally:
        await runner.cleanup()
    await harness.stop()
    done = int(out.decode().split(" requests in", 1)[0].rsplit(None, 1)[1])
    assert done > 0
    mine = [r for r in harness.records() if r.src_workload == f"wrk[{proc.pid}]"]
    observed = sum(r.requests for r in mine)
    # wrk leaves out of its count the one request in flight when it stops (1 connection: at most one).
    assert done <= observed <= done + 1
    assert {r.tenant for r in mine} == {"wrk-tenant"} and {r.operation for r in mine} == {"GET /ping"}
    assert sum(w.counters.tls_lost for w in harness.windows) == 0


async def test_only_the_named_processes_are_probed(self_signed):
    """With sensor.tls_processes, uprobes are attached per matching process: the "ai-agent" client is captured, an
    equal client under another name and the server are not, and a process that ended is detached at the next scan."""
    from .ebpf_ai_server import USAGE

    cert, key = self_signed
    port = free_port()
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ebpf_ai_server.py")), str(cert), str(key), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    clients = {
        name: subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(cert), url, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for name in ("ai-agent", "other-client")
    }
    try:
        for proc in (server, *clients.values()):
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"ready"
        config = Config()
        config.sensor.tls_processes = ["^ai-agent$"]
        harness = await LiveHarness(config, tls=True).start()
        agent = clients["ai-agent"].pid
        assert set(harness.capture.tls_probes.pids) == {agent}
        for proc in clients.values():
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for proc in clients.values():
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"done"
            proc.stdin.close()
            await asyncio.to_thread(proc.wait, 10)
        await asyncio.sleep(0.3)
        harness.capture.tls_probes.attach()  # the agent has ended: its probes go
        assert harness.capture.tls_probes.pids == {} and not harness.capture.tls_bpf.uprobe_fds
        await harness.stop()
    finally:
        for proc in (*clients.values(), server):
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()
    pids = {r.src_workload for r in harness.records()} | {r.dst for r in harness.records()}
    assert f"ai-agent[{agent}]" in pids
    assert not [p for p in pids if p.endswith((f"[{clients['other-client'].pid}]", f"[{server.pid}]"))]
    mine = [r for r in harness.records() if r.src_workload == f"ai-agent[{agent}]"]
    assert sum(r.requests for r in mine) == 3
    assert sum(r.tokens_out for r in mine) == USAGE["completion_tokens"] * 3


@pytest.mark.parametrize("mode", ["named process", "private libssl"])
async def test_a_process_started_after_the_sensor_is_probed_at_once(self_signed, tmp_path, mode):
    """A program started while the sensor runs is found from its exec event, not from the periodic /proc scan (set
    to an hour here): by name (sensor.tls_processes; the name is the executable's, a symlink here), or, probing every
    process, because it brings its own libssl.so.3 file. Its HTTPS calls are then captured like any other."""
    import shutil

    cert, key = self_signed
    port = free_port()
    config = Config()
    config.sensor.tls_discover_s = 3600
    env = dict(os.environ)
    program = tmp_path / "late-agent"
    program.symlink_to(os.path.realpath(sys.executable))  # the process's name at exec: "late-agent"
    if mode == "named process":
        config.sensor.tls_processes = ["^late-agent$"]
    else:
        libdir = tmp_path / "lib"
        libdir.mkdir()
        shutil.copy2("/lib/x86_64-linux-gnu/libssl.so.3", libdir / "libssl.so.3")
        env["LD_LIBRARY_PATH"] = str(libdir)
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ebpf_ai_server.py")), str(cert), str(key), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    client = None
    try:
        assert (await asyncio.to_thread(server.stdout.readline)).strip() == b"ready"
        harness = await LiveHarness(config, tls=True).start()
        client = subprocess.Popen(
            [str(program), "-c", CLIENT, str(cert), f"https://127.0.0.1:{port}/v1/chat/completions"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert (await asyncio.to_thread(client.stdout.readline)).strip() == b"ready"

        async def probed() -> bool:
            if mode == "named process":
                return bool(harness.capture.tls_probes.pids.get(client.pid))
            return _probes(harness.capture, libdir / "libssl.so.3")

        await wait_for(probed, timeout=5)
        await _calls_made(client)
        await harness.stop()
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.stdin.close()
                proc.wait(10)
                proc.stdout.close()
    mine = [r for r in harness.records() if r.src_workload.endswith(f"[{client.pid}]")]
    assert sum(r.requests for r in mine) == 3
    assert {r.model for r in mine} == {"gpt-copy"}


async def test_looks_at_started_programs_are_capped_and_the_rest_counted():
    """A burst of program starts (a build) gets at most EXEC_LOOKS_PER_S looks per second; the others are counted as
    skipped and left to the periodic scan."""
    import ctypes

    from costmesh.sensor import bpf
    from costmesh.sensor.live.tls_probes import EXEC_LOOKS_PER_S

    def looks(outcome: str) -> float:
        return metric("costmesh_sensor_exec_looks_total", outcome=outcome)

    harness = await LiveHarness(Config(), tls=True).start()
    capture = harness.capture
    try:
        await asyncio.sleep(0.1)  # the capture loop is running (started programs are looked at from it)
        # as at the start of a window: the real events of this host aside
        capture.tls_probes.exec_budget = EXEC_LOOKS_PER_S
        looked, skipped = looks("looked"), looks("skipped")
        event = ctypes.create_string_buffer(bpf.EXEC_EVENT.pack(2**31 - 1, b"cc1"))  # a pid that does not exist
        for _ in range(EXEC_LOOKS_PER_S + 7):
            capture.tls_probes.on_exec(None, ctypes.addressof(event), bpf.EXEC_EVENT.size)
        assert looks("looked") - looked == EXEC_LOOKS_PER_S
        assert looks("skipped") - skipped == 7
    finally:
        await harness.stop()


def _slow_reader(port: int, wait_s: float, answers: int) -> None:
    """A server that takes ``wait_s`` to get round to each request after it arrived (as a server waits for its turn
    on a busy CPU), then answers at once."""
    import socket
    import time

    with socket.create_server(("127.0.0.1", port)) as srv:
        conn, _ = srv.accept()
        with conn:
            for _ in range(answers):
                time.sleep(wait_s)  # the request is in the socket already: the client sent it and waits
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def test_server_time_starts_when_the_server_reads_the_request():
    """A request that waits in the socket before its server reads it: the server time the sensor records runs from
    the server's read (``reads.bpf.c``) to the answer, not from the arrival on the wire, which is ``WAIT_S`` earlier."""
    import socket
    import threading

    from costmesh.common.config import SensorConfig

    wait_s, answers = 0.08, 3
    port = free_port()
    harness = await LiveHarness(Config(sensor=SensorConfig(http_ports=[port]))).start()
    assert harness.capture.reads_bpf is not None, harness.capture.reads_error
    server = threading.Thread(target=_slow_reader, args=(port, wait_s, answers), daemon=True)
    server.start()
    await asyncio.sleep(0.1)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as c:
            for _ in range(answers):
                c.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                got = b""
                while not got.endswith(b"ok"):
                    got += c.recv(4096)

    await asyncio.to_thread(client)
    await asyncio.to_thread(server.join, 10)
    await asyncio.sleep(1.2)
    await harness.stop()
    calls = [r for r in harness.records() if r.operation == "GET /slow"]
    assert sum(r.requests for r in calls) == answers, calls
    busy = sum(r.busy_us for r in calls)
    # without the reads it would be at least answers × wait_s (the time on the wire); the answer follows the read
    assert busy < answers * wait_s * 1e6 / 4, calls
