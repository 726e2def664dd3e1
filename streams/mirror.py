"""The dead-letter mirror: every record of the dead-letter topic lands in ``worker_dlq``.

It never gives up and never dead-letters: while Postgres is unreachable it
retries with capped backoff and its offsets stay unfinished, so nothing is
committed that was not written — the topic stays the source of truth.
"""

from __future__ import annotations

import asyncio

import structlog

from handlers.deps import Deps
from handlers.dlq_mirror import mirror
from schemas.dlq import DeadLetterRecord
from streams.records import Record
from streams.settings import DlqMirrorSettings

log = structlog.get_logger("conveyor.dlq_mirror")

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


class MirrorRunner:
    def __init__(self, deps: Deps, settings: DlqMirrorSettings) -> None:
        self.deps = deps
        self.settings = settings

    async def run(self, record: Record) -> None:
        row = dead_letter_record(record)
        delay = self.settings.backoff_base_s
        while True:
            try:
                async with asyncio.timeout(MIRROR_WRITE_TIMEOUT_S):
                    await mirror(row, self.deps)
                log.info(
                    "dlq.mirrored",
                    partition=record.partition,
                    offset=record.offset,
                    job_id=row.headers.get("conveyor-job-id"),
                )
                return
            except Exception as exc:
                log.warning(
                    "dlq.mirror_retrying",
                    offset=record.offset,
                    error=repr(exc)[:300],
                    delay_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_s)
