"""A record dead-lettered twice (its worker died before committing it) is replayed once.

A worker that sends a dead letter and dies before its commit leaves the
record to the next owner, which runs it again and dead-letters it again: two
dead letters of one source record. The mirror stores the second ``resolved``
with a note naming the first, so ``conveyor dlq replay`` of the new dead
letters — the console's "replay all" — republishes the job once. (Before,
both rows were ``new``; a replay of a selection by job id was saved by its
own de-duplication, a replay of each row by id ran the job twice.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest

from handlers.deps import Deps
from handlers.dlq_mirror import mirror
from schemas.dlq import DeadLetterRecord, FailureContext
from schemas.envelope import JobEnvelope

pytestmark = pytest.mark.integration


def dead_letter(
    dlq_topic: str,
    dlq_offset: int,
    job: JobEnvelope | None,
    source_offset: int,
    consumer_group: str = "conveyor",
) -> DeadLetterRecord:
    now = datetime.now(UTC)
    context = FailureContext(
        original_topic="jobs.probe",
        original_partition=2,
        original_offset=source_offset,
        original_timestamp=now,
        consumer_group=consumer_group,
        job_type=job.type if job else None,
        job_id=job.id if job else None,
        attempts=3,
        first_failure_at=now,
        last_failure_at=now,
        error_class="PermanentError",
        error_message="probe asked to fail (permanent)",
        stage="handle" if job else "decode",
    )
    return DeadLetterRecord(
        dlq_topic=dlq_topic,
        dlq_partition=0,
        dlq_offset=dlq_offset,
        key=b"k",
        value=job.to_bytes() if job else b"{not json",
        headers={k: v.decode() for k, v in context.to_headers()},
    )


async def test_a_repeated_dead_letter_is_stored_resolved_naming_the_first(
    db: asyncpg.Pool,
) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.dlq"
    deps = cast(Deps, SimpleNamespace(db=db))
    job = JobEnvelope(type="probe", payload={"fail": "permanent"})
    other = JobEnvelope(type="probe", payload={"fail": "permanent"})
    try:
        await mirror(dead_letter(topic, 10, job, source_offset=500), deps)
        await mirror(dead_letter(topic, 11, other, source_offset=501), deps)
        await mirror(dead_letter(topic, 12, None, source_offset=502), deps)  # poison: no job id
        # The next owner ran offsets 500 and 502 again and dead-lettered them again.
        await mirror(dead_letter(topic, 13, job, source_offset=500), deps)
        await mirror(dead_letter(topic, 14, None, source_offset=502), deps)
        # The mirror reads a dead letter again after its own restart: still idempotent.
        await mirror(dead_letter(topic, 10, job, source_offset=500), deps)
        await mirror(dead_letter(topic, 13, job, source_offset=500), deps)

        rows = await db.fetch(
            "SELECT id, dlq_offset, status, resolution_note FROM worker_dlq"
            " WHERE dlq_topic = $1 ORDER BY dlq_offset",
            topic,
        )
        by_offset = {r["dlq_offset"]: r for r in rows}
        assert sorted(by_offset) == [10, 11, 12, 13, 14]
        assert {o: r["status"] for o, r in by_offset.items()} == {
            10: "new",
            11: "new",
            12: "new",
            13: "resolved",
            14: "resolved",
        }
        assert f"repeat of dead letter {by_offset[10]['id']}" in by_offset[13]["resolution_note"]
        assert f"repeat of dead letter {by_offset[12]['id']}" in by_offset[14]["resolution_note"]

        # Another consumer group's dead letter of the same record is its own.
        await mirror(dead_letter(topic, 15, job, source_offset=500, consumer_group="other"), deps)
        status = await db.fetchval(
            "SELECT status FROM worker_dlq WHERE dlq_topic = $1 AND dlq_offset = 15", topic
        )
        assert status == "new"
    finally:
        await db.execute("DELETE FROM worker_dlq WHERE dlq_topic = $1", topic)
