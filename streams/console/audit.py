"""The console's audit trail (``console_audit``): who did what, to which rows, when."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from streams.console.auth import Identity

INSERT = """
INSERT INTO console_audit (actor, role, auth, address, action, target, row_count, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
RETURNING id
"""
PAGE = """
SELECT id, at, actor, role, auth, address, action, target, row_count, detail
FROM console_audit
WHERE id < $1
ORDER BY id DESC
LIMIT $2
"""
ONE = "SELECT * FROM console_audit WHERE id = $1"
MAX_DETAIL_IDS = 1000


async def record(
    pool: asyncpg.Pool,
    who: Identity,
    address: str | None,
    action: str,
    *,
    target: str | None = None,
    rows: int | None = None,
    detail: dict[str, Any] | None = None,
    name: str | None = None,
) -> int:
    """Write one audit row; its id. ``name``: the actor when ``who`` is not logged in yet."""
    row_id: int = await pool.fetchval(
        INSERT,
        name or who.name or "anonymous",
        who.role,
        who.auth,
        address,
        action,
        target,
        rows,
        json.dumps(detail or {}, default=str),
    )
    return row_id


def ids_detail(ids: list[int]) -> list[int]:
    """The ids an audit row names (the first ``MAX_DETAIL_IDS``; row_count has them all)."""
    return sorted(ids)[:MAX_DETAIL_IDS]


async def page(pool: asyncpg.Pool, before: int | None, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(PAGE, 2**62 if before is None else before, limit))


async def one(pool: asyncpg.Pool, row_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(ONE, row_id)
