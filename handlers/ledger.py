"""The idempotency ledger: ``processed_jobs`` is written in the job's own transaction."""

from __future__ import annotations

from handlers.db import Connection

CLAIM = """
INSERT INTO processed_jobs (job_id, job_type, outcome)
VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""

IS_PROCESSED = "SELECT outcome FROM processed_jobs WHERE job_id = $1"


async def claim(conn: Connection, job_id: str, job_type: str, outcome: str = "succeeded") -> bool:
    """Record the job as done inside the caller's transaction.

    Returns False when the job was already recorded: the caller must then skip
    its effects (the transaction commits nothing new). A concurrent duplicate
    blocks on the row until the first transaction ends, so two deliveries can
    never both claim.
    """
    row = await conn.fetchval(CLAIM, job_id, job_type, outcome)
    return row is not None


async def processed_outcome(conn: Connection, job_id: str) -> str | None:
    """The recorded outcome of a job, or None when it has not finished."""
    value = await conn.fetchval(IS_PROCESSED, job_id)
    return None if value is None else str(value)
