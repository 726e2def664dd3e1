"""Mirror dead-letter records into ``worker_dlq`` (idempotent on topic/partition/offset).

Postgres refuses NUL characters in ``text`` and ``jsonb``, and ``jsonb``
refuses some escapes JSON allows (lone surrogates). A dead letter is
hostile input like any other: NULs are stripped from the header-derived
columns, a payload ``jsonb`` cannot hold (NULs, or nested deeper than
Python's JSON reader goes) is left out (its raw bytes are always kept), and
``mirror_note`` says what was left out. ``mirror_degraded``
stores just the record's coordinates, raw bytes and a note, for a record
whose full row Postgres still refuses.
"""

from __future__ import annotations

import json
from typing import Any

from handlers.deps import Deps
from schemas.dlq import DeadLetterRecord, FailureContext

COLUMNS = """
    dlq_topic, dlq_partition, dlq_offset, original_topic, original_partition, original_offset,
    original_timestamp, consumer_group, job_type, job_id, attempts, first_failure_at,
    last_failure_at, error_class, error_message, error_stack, stage, service_version, host,
    raw_key, raw_value, headers, payload, mirror_note, status, resolution_note
"""

UPSERT = f"""
INSERT INTO worker_dlq ({COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22::jsonb, $23::jsonb, $24, $25, $26)
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""

# The first dead letter of the same source record, mirrored earlier: this one is a repeat.
FIRST_OF_RECORD = """
SELECT min(id) FROM worker_dlq
WHERE dlq_topic = $1 AND original_topic = $2 AND original_partition = $3
  AND original_offset = $4 AND consumer_group IS NOT DISTINCT FROM $5
  AND (dlq_partition, dlq_offset) <> ($6, $7)
"""

UPSERT_DEGRADED = """
INSERT INTO worker_dlq (dlq_topic, dlq_partition, dlq_offset, raw_key, raw_value, mirror_note)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""

NUL = "\x00"
NOTE_NUL_PAYLOAD = "payload kept as raw bytes only: it contains NUL characters"
NOTE_NUL_HEADERS = "NUL characters removed from headers"
NOTE_DEEP_PAYLOAD = "payload kept as raw bytes only: it is nested too deeply to store as JSON"
MAX_NOTE_CHARS = 500


def strip_nul(text: str) -> str:
    """``text`` without NUL characters (Postgres text refuses them)."""
    return text.replace(NUL, "") if NUL in text else text


def storable(text: str) -> str:
    """``text`` as Postgres ``text`` takes it: no NULs, no lone surrogates."""
    return strip_nul(text).encode("utf-8", "replace").decode("utf-8")


def has_nul(value: Any) -> bool:
    """Whether a decoded JSON value holds a NUL in any string or key (at any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decoded_payload(value: bytes | None) -> tuple[str | None, str | None]:
    """(the value as JSON text, or None; a note when a JSON value had to be left out)."""
    if not value:
        return None, None
    try:
        data = json.loads(value)
    except ValueError:
        return None, None
    except RecursionError:
        return None, NOTE_DEEP_PAYLOAD
    if has_nul(data):
        return None, NOTE_NUL_PAYLOAD
    try:
        return json.dumps(data), None
    except RecursionError:
        return None, NOTE_DEEP_PAYLOAD


def clean_record(record: DeadLetterRecord) -> tuple[DeadLetterRecord, str | None]:
    """The record with NULs stripped from header names and values, and a note if any were."""
    headers = {strip_nul(k): strip_nul(v) for k, v in record.headers.items()}
    if headers == record.headers:
        return record, None
    return record.model_copy(update={"headers": headers}), NOTE_NUL_HEADERS


def omission_note(c: FailureContext) -> str | None:
    """What a dead letter too large for its topic left out, and where the original is."""
    if not c.omitted:
        return None
    where = f"{c.original_topic}:{c.original_partition}:{c.original_offset}"
    return storable(
        f"the dead letter left out its {c.omitted} ({c.omitted_bytes} bytes) to fit its topic;"
        f" the original is at {where} until that topic's retention, where"
        " `conveyor dlq replay` reads it"
    )


def row_of(
    record: DeadLetterRecord, status: str = "new", resolution_note: str | None = None
) -> tuple[Any, ...]:
    r, header_note = clean_record(record)
    c = r.context
    payload, payload_note = decoded_payload(r.value)
    notes = [n for n in (omission_note(c), payload_note, header_note) if n]
    return (
        r.dlq_topic,
        r.dlq_partition,
        r.dlq_offset,
        c.original_topic,
        c.original_partition,
        c.original_offset,
        c.original_timestamp,
        c.consumer_group,
        c.job_type,
        c.job_id,
        c.attempts,
        c.first_failure_at,
        c.last_failure_at,
        c.error_class,
        c.error_message,
        c.error_stack,
        c.stage,
        c.service_version,
        c.host,
        r.key,
        r.value,
        json.dumps(r.headers),
        payload,
        "; ".join(notes) or None,
        status,
        resolution_note,
    )


def repeat_note(first_id: int) -> str:
    return (
        f"repeat of dead letter {first_id}: the same record, dead-lettered again after its"
        " worker stopped before committing it; replay the first"
    )


async def mirror(record: DeadLetterRecord, deps: Deps) -> None:
    """Write one dead-letter record; raises if Postgres is unavailable (the caller retries).

    A repeat — a second dead letter of the same source record, written when a worker
    died between sending the first and committing the record — is stored ``resolved``
    with a note naming the first, so a replay runs the job once."""
    c = record.context
    async with deps.db.acquire() as conn:
        first: int | None = None
        if c.original_topic is not None and c.original_offset is not None:
            first = await conn.fetchval(
                FIRST_OF_RECORD,
                record.dlq_topic,
                c.original_topic,
                c.original_partition,
                c.original_offset,
                c.consumer_group,
                record.dlq_partition,
                record.dlq_offset,
            )
        if first is None:
            await conn.execute(UPSERT, *row_of(record))
        else:
            await conn.execute(UPSERT, *row_of(record, "resolved", repeat_note(first)))


async def mirror_degraded(record: DeadLetterRecord, deps: Deps, reason: str) -> None:
    """Store only the coordinates and raw bytes, noting why the full row was refused."""
    note = storable(f"stored without its headers and payload: {reason}")[:MAX_NOTE_CHARS]
    async with deps.db.acquire() as conn:
        await conn.execute(
            UPSERT_DEGRADED,
            record.dlq_topic,
            record.dlq_partition,
            record.dlq_offset,
            record.key,
            record.value,
            note,
        )
