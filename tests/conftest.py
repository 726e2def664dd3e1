"""Fixtures: the real services (never skipped), a clean test database, per-test stacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from streams.migrate import migrate
from tests.support.services import Endpoints, endpoints
from tests.support.stack import Stack
from tests.support.worker import WorkerProcess

TEST_DB = "conveyor_test"


def _test_dsn(dsn: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{TEST_DB}"


async def _reset_database(admin_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEST_DB)
        if not exists:
            await conn.execute(f"CREATE DATABASE {TEST_DB}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    await migrate(dsn)


@pytest.fixture(scope="session")
def services() -> Endpoints:
    found = endpoints()
    dsn = _test_dsn(found.dsn)
    asyncio.run(_reset_database(found.dsn, dsn))
    return Endpoints(found.bootstrap, dsn)


@pytest.fixture
async def db(services: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(services.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def stack(services: Endpoints) -> Stack:
    stack = Stack(services.bootstrap, services.dsn)
    stack.create_topics()
    return stack


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[type[WorkerProcess] | object]:
    started: list[WorkerProcess] = []

    def start(stack: Stack, **extra: str) -> WorkerProcess:
        env = {**stack.env, **extra}
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
