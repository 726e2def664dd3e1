"""Reading the mirrored dead letters of one test stack."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.support.stack import Stack
from tests.support.waiting import eventually


async def dlq_rows(db: asyncpg.Pool, stack: Stack) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT * FROM worker_dlq WHERE dlq_topic = $1 ORDER BY dlq_partition, dlq_offset",
        f"{stack.prefix}.dlq",
    )
    return [dict(r) for r in rows]


async def wait_dlq(
    db: asyncpg.Pool, stack: Stack, n: int, timeout_s: float = 60
) -> list[dict[str, Any]]:
    return await eventually(
        lambda: dlq_rows(db, stack),
        lambda rows: len(rows) >= n,
        timeout_s=timeout_s,
        what=f"{n} dead letters mirrored",
    )
