"""Reading the mirrored dead letters of one test stack."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from handlers.dlq_mirror import UPSERT, row_of
from schemas.dlq import DeadLetterRecord, FailureContext
from schemas.envelope import JobEnvelope
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


async def insert_dead_letters(
    db: asyncpg.Pool,
    dlq_topic: str,
    envelopes: list[JobEnvelope],
    *,
    stage: str = "handle",
    error_class: str = "PermanentError",
    error_message: str = "probe asked to fail (permanent)",
    source_topic: str = "jobs.probe",
    headers: dict[str, str] | None = None,
    first_offset: int = 0,
) -> list[int]:
    """Store dead letters as the mirror does (handlers/dlq_mirror.py); their ids."""
    now = datetime.now(UTC)
    rows = []
    for i, env in enumerate(envelopes):
        context = FailureContext(
            original_topic=source_topic,
            original_partition=0,
            original_offset=first_offset + i,
            original_timestamp=now,
            consumer_group="test",
            job_type=env.type,
            job_id=env.id,
            attempts=3,
            first_failure_at=now,
            last_failure_at=now,
            error_class=error_class,
            error_message=error_message,
            error_stack="Traceback (most recent call last):\n  ...\nPermanentError: boom",
            stage=stage,
            service_version="0.1.0",
            host="test-host",
        )
        record = DeadLetterRecord(
            dlq_topic=dlq_topic,
            dlq_partition=0,
            dlq_offset=first_offset + i,
            key=env.id.encode(),
            value=env.to_bytes(),
            headers={**(headers or {}), **dict((k, v.decode()) for k, v in context.to_headers())},
        )
        rows.append(row_of(record))
    async with db.acquire() as conn:
        await conn.executemany(UPSERT, rows)
        found = await conn.fetch(
            "SELECT id FROM worker_dlq WHERE dlq_topic = $1 AND dlq_offset >= $2"
            " AND dlq_offset < $3 ORDER BY dlq_offset",
            dlq_topic,
            first_offset,
            first_offset + len(envelopes),
        )
    return [r["id"] for r in found]
