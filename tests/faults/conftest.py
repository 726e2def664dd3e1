"""Fixtures of the fault tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streams.commands.migrate import migrate
from tests.support.pg import PrivatePostgres


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    """A migrated PostgreSQL of the test's own, to stop or make read-only at will."""
    pg = await asyncio.to_thread(lambda: PrivatePostgres().init())
    await migrate(pg.dsn)
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)
