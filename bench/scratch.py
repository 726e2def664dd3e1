"""A throwaway database on the local Postgres, migrated, dropped afterwards (benchmarks)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from streams.commands.migrate import migrate


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """Yield the DSN of a fresh, migrated database (CONVEYOR_POSTGRES__DSN's server)."""
    admin = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1/conveyor"
    )
    name = f"conveyor_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f"CREATE DATABASE {name}")
    try:
        dsn = admin.rpartition("/")[0] + "/" + name
        await migrate(dsn)
        yield dsn
    finally:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()
