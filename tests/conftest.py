"""Shared fixtures: a real ``nats-server`` and a real PostgreSQL per test session, each on a free loopback port and
stopped afterwards; a fresh database per test that asks for one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from costmesh.common.embedded import EmbeddedNats, EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
#: The shared sample corpus beside the repository (CI lays a copy of shared/ next to the clone).
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Keep temporary folders inside the checkout unless told otherwise.

    PostgreSQL runs as an unprivileged user when the tests run as root, so it must be able to traverse the folders
    above its data directory. Every pytest session resets ``/tmp/pytest-of-<user>`` to mode 0700, which would cut a
    running server off whenever another session starts on the same machine; a per-checkout base folder avoids that.
    """
    if not config.option.basetemp:
        config.option.basetemp = str(REPO / ".pytest-tmp")


def pytest_report_header(config: pytest.Config) -> str:
    """Which build this run tests (``make test`` runs the suite on both)."""
    from costmesh.native.engine import BUILD

    how = "COSTMESH_NO_EXTENSIONS=1: the pure-Python twins" if BUILD == "python" else "the compiled extensions"
    return f"costmesh build: {BUILD} ({how})"


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A JetStream server per test (it starts in ~50 ms): streams share subjects, so tests must not share servers."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), durable=False).start()
    yield server
    server.stop()


@pytest.fixture
async def fresh_dsn(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A DSN to a database created for this test alone and dropped after it."""
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(postgres.dsn)
    await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await conn.close()


@pytest.fixture
async def migrated(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database with every migration applied."""
    from costmesh.common import db

    pool = await db.create_pool(fresh_dsn)
    await db.migrate(pool)
    await pool.close()
    conn = await asyncpg.connect(fresh_dsn)
    yield conn
    await conn.close()


def processes_marked(mark: str) -> list[psutil.Process]:
    """Running processes whose environment carries ``COSTMESH_TEST_MARK=mark`` (children inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("COSTMESH_TEST_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def metric(name: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry; 0 when never counted (a labelled counter starts absent)."""
    from costmesh.common.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll an async predicate until it returns a truthy value; fail the test with the last value after timeout."""
    end = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < end:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")
