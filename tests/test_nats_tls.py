"""Transport off the node: a real nats-server requiring TLS (a CA and certificate made here) and nkey or JWT
authentication (operator, account and user JWTs signed here with nkeys).

With the configured CA and nkey seed, or ``.creds`` file, the node path works (sensor → redactor → JetStream, through
``natsio.connect``) and so does the whole ``costmesh up`` pipeline; a client without credentials, with a wrong nkey or a
user of an unknown account, without the CA, or speaking plain text is refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import time
from pathlib import Path

import msgspec
import nats
import nkeys
import pytest

from costmesh.common import natsio
from costmesh.common.config import Config, NatsConfig, load_config
from costmesh.common.embedded import EmbeddedNats, free_port
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import ObservedCall
from costmesh.common.supervisor import Stack, http_json
from costmesh.redactor import service as redactor_service
from costmesh.sensor.sender import BatchSender

from .certs import make_pki
from .conftest import DATA, wait_for


def _make_nkey(folder: Path, name: str) -> tuple[Path, str]:
    """A user nkey: (seed file, public key)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = folder / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, nkeys.from_seed(seed).public_key.decode()


@pytest.fixture
def secure_nats(tmp_path: Path):
    ca, cert, key = make_pki(tmp_path)
    seed, public = _make_nkey(tmp_path, "node")
    server = EmbeddedNats(
        tmp_path / "nats",
        config_text=(
            f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  ca_file: "{ca}"\n  timeout: 2\n}}\n'
            f'authorization {{\n  users: [ {{ nkey: "{public}" }} ]\n}}\n'
        ),
    ).start()
    yield server, ca, seed, tmp_path
    server.stop()


async def _node_path_works(url: str, nats_cfg: NatsConfig) -> None:
    """A redactor and a sensor connect with ``nats_cfg`` (``natsio.connect``); a batch lands in JetStream redacted."""
    cfg = Config(node="node-s", nats=nats_cfg)
    ctx = ServiceContext(name="redactor", config=cfg, nats_url=url, dsn="")
    task = asyncio.create_task(redactor_service.main(ctx))

    async def ready() -> bool:
        return ctx.ready

    nc = None
    try:
        await wait_for(ready, timeout=15)
        nc = await natsio.connect(cfg.nats, url, "test-sensor")
        # The wire is TLS (nats-py keeps its stream writer private; the server would refuse plain text anyway).
        assert nc._transport._io_writer.get_extra_info("ssl_object") is not None
        record = ObservedCall(
            window_start_us=0, window_end_us=1, node="node-s", src_workload="web", dst="orders", protocol="http",
            operation="GET /v1/orders/42?x=1", requests=1,
        )  # fmt: skip
        sender = BatchSender(nc, "node-s", 100)
        assert await sender.send([record], asyncio.Event()) == 1
        js = nc.jetstream()
        msg = await js.get_msg(cfg.nats.stream, 1)
        stored = msgspec.msgpack.decode(msg.data)
        assert stored["records"][0]["operation"] == "GET /v1/orders/{id}?x"
    finally:
        if nc is not None:
            await nc.close()
        ctx.stopping.set()
        await task


async def test_the_node_path_works_over_tls_with_the_nkey(secure_nats):
    server, ca, seed, _tmp = secure_nats
    await _node_path_works(server.url, NatsConfig(url=server.url, tls_ca_file=str(ca), nkey_seed_file=str(seed)))


async def _refused(**options) -> BaseException:
    try:
        nc = await nats.connect(
            allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, error_cb=_quiet, **options
        )
    except Exception as exc:
        return exc
    await nc.close()
    raise AssertionError(f"connected with {sorted(options)}")


async def _quiet(_exc: BaseException) -> None:
    return None


async def test_without_the_nkey_or_with_another_one_it_is_refused(secure_nats):
    server, ca, _seed, tmp = secure_nats
    tls = ssl.create_default_context(cafile=str(ca))
    exc = await _refused(servers=[server.url], tls=tls, tls_hostname="localhost")
    assert "authorization" in repr(exc).lower()
    other, _public = _make_nkey(tmp, "stranger")
    exc = await _refused(servers=[server.url], tls=tls, tls_hostname="localhost", nkeys_seed=str(other))
    assert "authorization" in repr(exc).lower()


async def test_without_the_ca_it_is_refused(secure_nats):
    server, _ca, seed, _tmp = secure_nats
    exc = await _refused(servers=[server.url], nkeys_seed=str(seed), tls=ssl.create_default_context())
    assert isinstance(exc, ssl.SSLCertVerificationError) or "certificate" in repr(exc).lower()


def test_plain_text_is_refused(secure_nats):
    """A client that ignores ``tls_required`` and speaks plain NATS gets no answer but an error."""
    server, _ca, _seed, _tmp = secure_nats
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        info = sock.recv(4096)
        assert info.startswith(b"INFO ") and b'"tls_required":true' in info
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"PONG" not in answer


async def test_the_whole_pipeline_runs_over_tls_and_nkey(secure_nats, fresh_dsn):
    """``costmesh up`` with the secure server: every service connects with the configured CA and nkey seed."""
    server, ca, seed, tmp = secure_nats
    api_port = free_port()
    config_path = tmp / "costmesh.toml"
    config_path.write_text(
        f'node = "node-s"\n[nats]\nurl = "{server.url}"\ntls_ca_file = "{ca}"\nnkey_seed_file = "{seed}"\n'
        f'tls_required = true\n[postgres]\ndsn = "{fresh_dsn}"\n[api]\nport = {api_port}\n'
    )
    truth = json.loads((DATA / "demo_tenants.truth.json").read_text())
    stack = Stack(load_config(config_path), str(config_path), tmp / "data", [str(DATA / "demo_tenants.pcap")])
    await asyncio.to_thread(stack.start)
    try:
        base = f"http://127.0.0.1:{stack.api_port}"

        async def all_applied():
            sensor = await asyncio.to_thread(stack.health, "sensor")
            ingest = await asyncio.to_thread(http_json, base + "/v1/ingest")
            return sensor["replay_done"] and ingest["applied_batches"] == sensor["batches_published"] > 0

        await wait_for(all_applied, timeout=60)
        usage = await asyncio.to_thread(http_json, base + "/v1/usage?group_by=tenant")
        assert {row["tenant"]: row["requests"] for row in usage["rows"]} == truth["requests_by_tenant"]
    finally:
        await asyncio.to_thread(stack.stop)


# -- JWT credentials (decentralised auth: operator → account → user, all made here) -----------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(seed)


def _jwt(signer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, claims: dict) -> str:
    """A NATS JWT (v2): ed25519-nkey signature of ``header.claims`` by the issuer's key."""
    body = {"iat": int(time.time()), "iss": signer.public_key.decode(), "name": name}
    body |= {"sub": subject.public_key.decode(), "nats": {**claims, "version": 2}}
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}


def _creds(folder: Path, name: str, account: nkeys.KeyPair) -> Path:
    seed, user = _keypair(nkeys.PREFIX_BYTE_USER)
    token = _jwt(account, user, name, {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
    path = folder / f"{name}.creds"
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def jwt_nats(tmp_path: Path):
    """TLS and operator-mode auth: only users whose JWT an account of this operator signed may connect."""
    ca, cert, key = make_pki(tmp_path)
    _op_seed, operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _sys_seed, system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _acc_seed, account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = _jwt(operator, operator, "op", {"type": "operator", "system_account": system.public_key.decode()})
    system_jwt = _jwt(operator, system, "SYS", {"type": "account", "limits": {**_UNLIMITED, "leaf": -1}})
    storage = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1, "leaf": -1}
    account_jwt = _jwt(operator, account, "costmesh", {"type": "account", "limits": {**_UNLIMITED, **storage}})
    server = EmbeddedNats(
        tmp_path / "nats",
        config_text=(
            f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  ca_file: "{ca}"\n  timeout: 2\n}}\n'
            f'operator: "{operator_jwt}"\nsystem_account: {system.public_key.decode()}\nresolver: MEMORY\n'
            f'resolver_preload: {{\n  {account.public_key.decode()}: "{account_jwt}"\n'
            f'  {system.public_key.decode()}: "{system_jwt}"\n}}\n'
        ),
    ).start()
    yield server, ca, _creds(tmp_path, "node", account), tmp_path
    server.stop()


async def test_the_node_path_works_over_tls_with_jwt_credentials(jwt_nats):
    server, ca, creds, _tmp = jwt_nats
    await _node_path_works(server.url, NatsConfig(url=server.url, tls_ca_file=str(ca), creds_file=str(creds)))


async def test_a_user_of_an_unknown_account_or_none_is_refused(jwt_nats):
    server, ca, _creds_file, tmp = jwt_nats
    tls = ssl.create_default_context(cafile=str(ca))
    _seed, stranger_account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    forged = _creds(tmp, "forged", stranger_account)
    exc = await _refused(servers=[server.url], tls=tls, tls_hostname="localhost", user_credentials=str(forged))
    assert "authorization" in repr(exc).lower()
    exc = await _refused(servers=[server.url], tls=tls, tls_hostname="localhost")
    assert "authorization" in repr(exc).lower()
