"""One Postgres connection for an operator command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from streams.kafka_config import Unreachable
from streams.settings import Settings


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """``async with database(settings) as conn``: connected to ``postgres.dsn``, closed after."""
    conn = await asyncpg.connect(settings.postgres.dsn.get_secret_value())
    try:
        yield conn
    finally:
        await conn.close()


async def missing_table(settings: Settings, table: str) -> str | None:
    """Why ``table`` cannot be used (Postgres unreachable, or the table absent), or None."""
    try:
        conn = await asyncpg.connect(
            settings.postgres.dsn.get_secret_value(), timeout=settings.postgres.connect_timeout_s
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return Unreachable(f"cannot reach Postgres: {type(exc).__name__}: {exc}")
    try:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    finally:
        await conn.close()
    return None if exists else f"the database lacks {table}; run `conveyor migrate`"
