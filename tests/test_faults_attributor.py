"""Faults the attributor must survive without losing or double-counting a single call: duplicates past the
de-duplication window, PostgreSQL stopped mid-stream, ``kill -9`` of the attributor process over and over, and a
NATS cluster node lost under an R3 stream. Every check compares the store with the oracle of what was sent."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import msgspec
import nats
import psutil
import pytest

from costmesh.attributor import service
from costmesh.attributor.synth import Oracle, generate
from costmesh.common import natsio
from costmesh.common.config import Config, NatsConfig, load_config
from costmesh.common.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from costmesh.common.runtime import ServiceContext
from costmesh.common.schemas import CallBatch, Codec, ObservedCall

from .conftest import wait_for

SUBJECT = "costmesh.events.synth"


async def _publish_all(js, batches: list[tuple[str, bytes]], pause_every: int = 0, pause_s: float = 0.0) -> None:
    """Publish every batch with its id as ``Nats-Msg-Id``, retrying each until the stream confirms it."""
    for n, (batch_id, payload) in enumerate(batches, 1):
        while True:
            try:
                await natsio.publish_batch(js, SUBJECT, batch_id, payload)
                break
            except Exception:  # leader election, reconnect: the same id makes the retry safe
                await asyncio.sleep(0.1)
        if pause_every and n % pause_every == 0:
            await asyncio.sleep(pause_s)


async def _totals(dsn: str) -> tuple[dict[str, int], dict[str, int], int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tenant, sum(requests)::bigint AS r, sum(bytes_out)::bigint AS b FROM consumption_minute "
            "GROUP BY tenant"
        )
        batches, records = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(records), 0)::bigint FROM applied_batches"
        )
    finally:
        await conn.close()
    return {r["tenant"]: r["r"] for r in rows}, {r["tenant"]: r["b"] for r in rows}, batches, records


def _assert_equal_to_oracle(totals, oracle: Oracle) -> None:
    requests, bytes_out, batches, records = totals
    assert batches == oracle.batches
    assert records == oracle.records
    assert requests == dict(oracle.requests)
    assert bytes_out == dict(oracle.bytes_out)


async def _applied(dsn: str) -> int:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return -1
    try:
        return await conn.fetchval("SELECT count(*) FROM applied_batches")
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


def _config(nats_url: str, dsn: str, **nats_fields) -> Config:
    cfg = Config(node="test")
    cfg.nats = NatsConfig(url=nats_url, **nats_fields)
    cfg.postgres.dsn = dsn
    return cfg


def _in_process(cfg: Config, nats_url: str, dsn: str) -> tuple[ServiceContext, asyncio.Task]:
    ctx = ServiceContext("attributor", cfg, nats_url, dsn)
    return ctx, asyncio.create_task(service.main(ctx), name="attributor-under-test")


async def _stop(ctx: ServiceContext, task: asyncio.Task) -> None:
    ctx.stopping.set()
    await asyncio.wait_for(task, 30)


async def test_same_batch_three_times_and_after_the_window_counts_once(nats_server, fresh_dsn):
    cfg = _config(nats_server.url, fresh_dsn, duplicate_window_s=1)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    (batch,), oracle = generate(1, 50, seed=7)
    acks = [await js.publish(SUBJECT, batch[1], headers={"Nats-Msg-Id": batch[0]}) for _ in range(3)]
    assert [a.duplicate for a in acks] == [None, True, True]  # the server kept one copy
    ctx, task = _in_process(cfg, nats_server.url, fresh_dsn)
    try:
        await wait_for(lambda: _ok(ctx.health.get("applied_batches") == 1))
        await asyncio.sleep(1.5)  # past the de-duplication window: the server now stores a second copy
        again = await js.publish(SUBJECT, batch[1], headers={"Nats-Msg-Id": batch[0]})
        assert not again.duplicate and again.seq == 2
        await wait_for(lambda: _ok(ctx.health.get("duplicate_batches") == 1))
    finally:
        await _stop(ctx, task)
        await nc.close()
    assert ctx.health["applied_batches"] == 1
    _assert_equal_to_oracle(await _totals(fresh_dsn), oracle)


async def test_malformed_message_is_terminated_and_work_goes_on(nats_server, fresh_dsn):
    from costmesh.common.metrics import ERRORS

    cfg = _config(nats_server.url, fresh_dsn)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    before = ERRORS.labels("attributor", "schema")._value.get()
    await js.publish(SUBJECT, b"\x93not a batch", headers={"Nats-Msg-Id": "garbage"})
    # well-formed msgpack that msgspec decodes (or fails with UnicodeDecodeError) but PostgreSQL could never store
    call = ObservedCall(window_start_us=1, window_end_us=2, node="n", src_workload="w", dst="d", protocol="http")
    bad_utf8 = Codec().encode(CallBatch(batch_id="u", node="n", seq=1, records=[call]))
    bad_utf8 = bad_utf8.replace(b"\xa1w", b"\xa1\xff")  # src_workload "w" -> one byte that is not UTF-8
    nul = Codec().encode(
        CallBatch(batch_id="z", node="n", seq=2, records=[msgspec.structs.replace(call, tenant="a\x00")])
    )
    await js.publish(SUBJECT, bad_utf8, headers={"Nats-Msg-Id": "bad-utf8"})
    await js.publish(SUBJECT, nul, headers={"Nats-Msg-Id": "nul"})
    batches, oracle = generate(3, 20, seed=5)
    await _publish_all(js, batches)
    ctx, task = _in_process(cfg, nats_server.url, fresh_dsn)
    try:
        await wait_for(lambda: _ok(ctx.health.get("applied_batches") == 3))
        held = await js.consumer_info(cfg.nats.stream, cfg.attributor.durable)
        await wait_for(lambda: _no_pending(js, cfg))
    finally:
        await _stop(ctx, task)
        await nc.close()
    assert ERRORS.labels("attributor", "schema")._value.get() == before + 3
    assert held.num_redelivered == 0
    _assert_equal_to_oracle(await _totals(fresh_dsn), oracle)


async def _no_pending(js, cfg) -> bool:
    info = await js.consumer_info(cfg.nats.stream, cfg.attributor.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0  # the bad message was terminated, not left pending


async def _ok(value: bool) -> bool:
    return value


async def test_postgres_stopped_for_30s_mid_stream_loses_nothing(nats_server, tmp_path):
    pg = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        dsn = pg.dsn
        cfg = _config(nats_server.url, dsn)
        batches, oracle = generate(400, 200, seed=11)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await natsio.ensure_stream(js, cfg.nats)
        ctx, task = _in_process(cfg, nats_server.url, dsn)
        try:
            await _publish_all(js, batches[:150])
            await wait_for(lambda: _ok(int(ctx.health.get("applied_batches", 0)) >= 50), timeout=60)
            await asyncio.to_thread(pg.stop)
            await _publish_all(js, batches[150:])  # arrives while the database is down
            await asyncio.sleep(30)
            assert not task.done(), "the attributor gave up while PostgreSQL was down"
            assert int(ctx.health["db_retries"]) > 0
            held = await js.consumer_info(cfg.nats.stream, cfg.attributor.durable)
            assert held.num_pending + held.num_ack_pending > 0  # JetStream holds the backlog
            assert int(ctx.health["applied_batches"]) < len(batches)
            await asyncio.to_thread(pg.start)  # same data folder, same port
            await wait_for(lambda: _ok(int(ctx.health["applied_batches"]) == len(batches)), timeout=90)
        finally:
            await _stop(ctx, task)
            await nc.close()
        _assert_equal_to_oracle(await _totals(dsn), oracle)
    finally:
        pg.stop()


def _attributor_process(config_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    costmesh = Path(sys.executable).parent / "costmesh"
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            [str(costmesh), "--log-level", "warning", "attributor", "--config", str(config_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_kill_9_ten_times_while_a_million_calls_stream_through(nats_server, fresh_dsn, tmp_path):
    seed = int(os.environ.get("COSTMESH_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    batches, oracle = await asyncio.to_thread(generate, 2000, 500, seed=seed)
    assert oracle.records == 1_000_000
    config_file = tmp_path / "costmesh.toml"
    config_file.write_text(
        f'node = "test"\n[nats]\nurl = "{nats_server.url}"\n[postgres]\ndsn = "{fresh_dsn}"\n'
        "[attributor]\nfetch_batch = 16\nfold_processes = 2\n"
    )
    cfg = load_config(config_file)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await natsio.ensure_stream(js, cfg.nats)
    # ~100 batches/s: the stream keeps flowing through all the kills below.
    publisher = asyncio.create_task(_publish_all(js, batches, pause_every=10, pause_s=0.1))
    log_file = tmp_path / "attributor.log"
    kills = workers_seen = 0
    proc = None
    try:
        while kills < 10:
            before = max(await _applied(fresh_dsn), 0)
            proc = _attributor_process(config_file, log_file)
            # let it apply something, then kill it at a random moment (often inside a transaction)
            await wait_for(lambda b=before: _progress(fresh_dsn, b), timeout=60)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            workers = psutil.Process(proc.pid).children(recursive=True)  # the fold processes
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            kills += 1
            workers_seen += len(workers)
            _gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 10)
            assert not alive, f"fold workers outlived kill -9 of their attributor: {alive}"
        await publisher
        proc = _attributor_process(config_file, log_file)
        await wait_for(lambda: _applied_all(fresh_dsn, len(batches)), timeout=120)
    finally:
        publisher.cancel()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
        await nc.close()
    assert kills == 10 and workers_seen > 0
    _assert_equal_to_oracle(await _totals(fresh_dsn), oracle)


async def _progress(dsn: str, before: int) -> bool:
    return await _applied(dsn) > before


async def _applied_all(dsn: str, n: int) -> bool:
    return await _applied(dsn) == n


def _cluster_conf(name: str, cluster_port: int, routes: list[int]) -> str:
    route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
    return (
        f"server_name: {name}\n"
        f"cluster {{\n  name: costmesh-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{route_urls}]\n}}\n"
    )


async def test_nats_cluster_node_lost_under_r3_stream(fresh_dsn, tmp_path):
    cluster_ports = [free_port() for _ in range(3)]
    nodes = [
        EmbeddedNats(
            tmp_path / f"n{i}",
            port=free_port(),
            name=f"n{i}",
            config_text=_cluster_conf(f"n{i}", cluster_ports[i], cluster_ports),
        )
        for i in range(3)
    ]
    for node in nodes:
        await asyncio.to_thread(node.start)
    try:
        cfg = _config(nodes[0].url, fresh_dsn, replicas=3)
        nc = await nats.connect(nodes[0].url)
        js = nc.jetstream()

        async def stream_ready() -> bool:
            try:
                await natsio.ensure_stream(js, cfg.nats)
                return True
            except Exception:  # the meta leader is not elected yet
                return False

        await wait_for(stream_ready, timeout=60, interval=0.5)
        batches, oracle = generate(600, 200, seed=13)
        ctx, task = _in_process(cfg, nodes[0].url, fresh_dsn)
        try:
            await _publish_all(js, batches[:200])
            await wait_for(lambda: _ok(int(ctx.health.get("applied_batches", 0)) >= 100), timeout=60)
            info = await js.stream_info(cfg.nats.stream)
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
            # kill a node that is not the one both clients dialled, preferring the stream leader
            victim = next(
                (n for n in nodes[1:] if n.name == info.cluster.leader),
                nodes[1],
            )
            await asyncio.to_thread(victim.kill)
            await _publish_all(js, batches[200:])
            await wait_for(lambda: _ok(int(ctx.health["applied_batches"]) == len(batches)), timeout=120)
            assert not task.done()
        finally:
            await _stop(ctx, task)
            await nc.close()
        _assert_equal_to_oracle(await _totals(fresh_dsn), oracle)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(autouse=True)
def _no_leftover_children():
    yield
    assert not [p for p in _children() if " attributor --config" in p], "an attributor process outlived its test"


def _children() -> list[str]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            found.append(" ".join(child.cmdline()))
        except psutil.Error:  # gone or a zombie: not running any more
            continue
    return found
