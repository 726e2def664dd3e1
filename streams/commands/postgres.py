"""One Postgres connection for an operator command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from streams.settings import Settings


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """``async with database(settings) as conn``: connected to ``postgres.dsn``, closed after."""
    conn = await asyncpg.connect(settings.postgres.dsn.get_secret_value())
    try:
        yield conn
    finally:
        await conn.close()
