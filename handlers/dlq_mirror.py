"""Mirror dead-letter records into ``worker_dlq`` (idempotent on topic/partition/offset)."""

from __future__ import annotations

import json
from typing import Any

from handlers.deps import Deps
from schemas.dlq import DeadLetterRecord, H

UPSERT = """
INSERT INTO worker_dlq (
    dlq_topic, dlq_partition, dlq_offset, original_topic, original_partition, original_offset,
    original_timestamp, consumer_group, job_type, job_id, attempts, first_failure_at,
    last_failure_at, error_class, error_message, error_stack, stage, service_version, host,
    raw_key, raw_value, headers, payload
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
          $19, $20, $21, $22::jsonb, $23::jsonb)
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""


def decoded_payload(value: bytes | None) -> str | None:
    """The value as JSON text when it is JSON, else None (the raw bytes are kept anyway)."""
    if not value:
        return None
    try:
        return json.dumps(json.loads(value))
    except ValueError:
        return None


def row_of(record: DeadLetterRecord) -> tuple[Any, ...]:
    r = record
    return (
        r.dlq_topic,
        r.dlq_partition,
        r.dlq_offset,
        r.header(H.ORIGINAL_TOPIC),
        r.header_int(H.ORIGINAL_PARTITION),
        r.header_int(H.ORIGINAL_OFFSET),
        r.header_time(H.ORIGINAL_TIMESTAMP),
        r.header(H.CONSUMER_GROUP),
        r.header(H.JOB_TYPE),
        r.header(H.JOB_ID),
        r.header_int(H.ATTEMPTS),
        r.header_time(H.FIRST_FAILURE_AT),
        r.header_time(H.LAST_FAILURE_AT),
        r.header(H.ERROR_CLASS),
        r.header(H.ERROR_MESSAGE),
        r.header(H.ERROR_STACK),
        r.header(H.STAGE),
        r.header(H.SERVICE_VERSION),
        r.header(H.HOST),
        r.key,
        r.value,
        json.dumps(r.headers),
        decoded_payload(r.value),
    )


async def mirror(record: DeadLetterRecord, deps: Deps) -> None:
    """Write one dead-letter record; raises if Postgres is unavailable (the caller retries)."""
    async with deps.db.acquire() as conn:
        await conn.execute(UPSERT, *row_of(record))
