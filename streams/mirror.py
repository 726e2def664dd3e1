"""The dead-letter mirror: every record of the dead-letter topic lands in ``worker_dlq``.

While Postgres is unreachable it retries with capped backoff and its offsets
stay unfinished, so nothing is committed that was not written — the topic
stays the source of truth. A record Postgres refuses for what it contains
(a data or constraint error) is that record's problem, never a reason to
stop: it is stored without the refused parts (``mirror_degraded``, flagged in
``mirror_note``), or, if even that is refused, logged and skipped — never
retried in a loop that would hide every later dead letter.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from handlers.backoff import backoff_s
from handlers.dlq_mirror import mirror, mirror_degraded
from schemas.dlq import DeadLetterRecord
from streams.records import Record
from streams.retry import describe, is_outage
from streams.runtime import DepsSource
from streams.settings import DlqMirrorSettings

log = structlog.get_logger(__name__)

MIRROR_WRITE_TIMEOUT_S = 10.0
# SQLSTATE classes that concern the whole database (connection, authorization,
# schema, resources, operator, system), not one record: keep retrying those.
DATABASE_WIDE_CLASSES = frozenset({"08", "28", "3D", "42", "53", "55", "57", "58", "XX"})


def dead_letter_record(record: Record) -> DeadLetterRecord:
    return DeadLetterRecord(
        dlq_topic=record.topic,
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        key=record.key,
        value=record.value,
        headers={k: v.decode("utf-8", "replace") for k, v in record.headers},
    )


def is_record_problem(exc: BaseException) -> bool:
    """Postgres (or the driver) refused this record's data; retrying cannot help."""
    if is_outage(exc):
        return False
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate[:2] not in DATABASE_WIDE_CLASSES
    # asyncpg refuses some values before sending them (client-side encoding).
    return isinstance(exc, ValueError | TypeError | UnicodeError)


class MirrorRunner:
    """Writes each record of the dead-letter topic to ``worker_dlq``."""

    def __init__(self, runtime: DepsSource, settings: DlqMirrorSettings) -> None:
        self.runtime = runtime
        self.settings = settings

    async def run(self, record: Record) -> None:
        row = dead_letter_record(record)
        refused: str | None = None  # why the full row was refused, once it was
        failures = 0
        while True:
            try:
                await self._write(row, refused)
            except Exception as exc:
                if not is_record_problem(exc):
                    failures += 1
                    await self._wait(record, exc, failures)
                elif refused is None:
                    refused = describe(exc)
                    log.warning(
                        "dlq.mirror_refused",
                        partition=record.partition,
                        offset=record.offset,
                        error=refused[:300],
                    )
                else:
                    log.error(
                        "dlq.mirror_skipped",
                        partition=record.partition,
                        offset=record.offset,
                        error=describe(exc)[:300],
                    )
                    return
                continue
            log.info(
                "dlq.mirrored",
                partition=record.partition,
                offset=record.offset,
                job_id=row.context.job_id,
                degraded=refused is not None,
            )
            return

    async def _write(self, row: DeadLetterRecord, refused: str | None) -> None:
        """The full row, or (once Postgres refused it) the row without the refused parts."""
        async with asyncio.timeout(MIRROR_WRITE_TIMEOUT_S):
            if refused is None:
                await mirror(row, self.runtime.deps)
            else:
                await mirror_degraded(row, self.runtime.deps, refused)

    async def _wait(self, record: Record, exc: BaseException, failures: int) -> None:
        """Postgres is unavailable: wait (capped backoff) and write again; nothing is skipped."""
        s = self.settings
        delay = backoff_s(failures, s.backoff_base_s, s.backoff_max_s, jitter=0.0)
        log.warning(
            "dlq.mirror_retrying", offset=record.offset, error=repr(exc)[:300], delay_s=delay
        )
        await asyncio.sleep(delay)
