"""The dead-letter mirror: every record of the dead-letter topic lands in ``worker_dlq``.

While Postgres is unavailable — unreachable, read-only in a failover, out of
connections, or any error that is not about this record's values — it
retries with capped backoff and its offsets stay unfinished, so nothing is
committed that was not written: the topic stays the source of truth. Only a
record whose *values* Postgres (or the driver, or the code that builds the
row) refuses is that record's problem (``streams.dberrors``): it is stored
without the refused parts (``mirror_degraded``, flagged in ``mirror_note``),
never retried in a loop that would hide every later dead letter. The
degraded row holds only the record's coordinates, its raw bytes and a fixed
note, which nothing can refuse.
"""

from __future__ import annotations

import asyncio

import structlog

from handlers.backoff import backoff_s
from handlers.dlq_mirror import mirror, mirror_degraded
from schemas.dlq import DeadLetterRecord
from streams.dberrors import DbFault, classify, describe_db_error
from streams.records import Record
from streams.retry import describe
from streams.runtime import DepsSource
from streams.settings import DlqMirrorSettings

log = structlog.get_logger(__name__)

MIRROR_WRITE_TIMEOUT_S = 10.0


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
    """The record's values were refused; retrying the same row cannot help.

    Anything raised while building the row (a payload nested past Python's
    recursion limit, a value the driver cannot encode) is the record's too.
    A timeout, a lost connection or any database error not about the values
    is not: the mirror waits for the database instead.
    """
    fault = classify(exc)
    if fault is not None:
        return fault in (DbFault.DATA, DbFault.CONSTRAINT)
    return not isinstance(exc, OSError)  # OSError: timeouts, connections refused or reset


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
            except Exception as exc:  # RecursionError too: a payload nested past the limit
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
            "dlq.mirror_retrying",
            partition=record.partition,
            offset=record.offset,
            error=describe_db_error(exc),
            delay_s=delay,
        )
        await asyncio.sleep(delay)
