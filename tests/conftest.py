"""Fixtures: the real services (never skipped), a clean test database, per-test stacks."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from streams.commands.migrate import migrate
from tests.support import stack as stack_module
from tests.support.services import Endpoints, endpoints
from tests.support.stack import Stack
from tests.support.worker import WorkerProcess

# One database per test session, so two sessions on one machine never share rows.
TEST_DB = f"conveyor_test_{uuid.uuid4().hex[:8]}"


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def services() -> Iterator[Endpoints]:
    found = endpoints()
    dsn = _with_database(found.dsn, TEST_DB)
    asyncio.run(_admin(found.dsn, f"CREATE DATABASE {TEST_DB}"))
    asyncio.run(migrate(dsn))
    yield Endpoints(found.bootstrap, dsn)
    asyncio.run(_admin(found.dsn, f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)"))


@pytest.fixture
async def db(services: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(services.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session", autouse=True)
def _topic_deletions() -> Iterator[None]:
    """At the end of the session: wait for the topic deletions the tests asked for."""
    yield
    stack_module.JANITOR.wait()


@pytest.fixture(autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """After each test (and after its workers stopped): delete the topics its stacks made.

    Autouse fixtures are set up first, so this one is torn down last, once the
    test's workers are gone. Best effort and in the background: a failure only
    leaves topics behind.
    """
    yield
    while stack_module.CREATED:
        made = stack_module.CREATED.pop()
        try:
            stack_module.JANITOR.delete(made)
        except Exception as exc:  # never fail a test over its clean-up
            print(f"\n[topics] {made.prefix}: not deleted: {exc!r}", file=sys.stderr)


@pytest.fixture
def stack(services: Endpoints) -> Stack:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    return stack


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[type[WorkerProcess] | object]:
    started: list[WorkerProcess] = []

    def start(
        stack: Stack, hooks: Sequence[str] = (), capabilities: bool = True, **extra: str
    ) -> WorkerProcess:
        env = {**stack.env, **extra}
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(env, log, hooks, capabilities=capabilities).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session for tests that call a local stand-in API."""
    async with aiohttp.ClientSession() as s:
        yield s
