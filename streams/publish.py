"""Retry and dead-letter publishing: every send awaited until the broker acknowledged it."""

from __future__ import annotations

import asyncio
import socket
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from schemas.dlq import H, Stage
from schemas.envelope import JobEnvelope
from streams import __version__
from streams.records import Headers, Record, iso, iso_from_ms

log = structlog.get_logger(__name__)

SendFn = Callable[[str, bytes | None, bytes | None, Headers], Awaitable[None]]
MAX_STACK_CHARS = 4000
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job is being retried later or dead-lettered."""

    stage: Stage
    error: BaseException
    attempts: int
    job_type: str | None = None
    job_id: str | None = None


class RecordPublisher:
    """Publishes retry and dead-letter records, retrying the send until it is acknowledged.

    A send that keeps failing (broker down) is retried with backoff until it
    succeeds or the job is cancelled by the drain: the source offset stays
    unfinished, so nothing is committed past it and nothing is lost.
    """

    def __init__(
        self,
        send: SendFn,
        *,
        group_id: str,
        dlq_topic: str,
        mask: Callable[[str], str] = lambda text: text,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._send = send
        self._sleep = sleep
        self.mask = mask  # the configured secrets masked in any text that leaves the worker
        self._group_id = group_id
        self._dlq_topic = dlq_topic
        self._host = socket.gethostname()

    async def dead_letter(self, record: Record, failure: Failure) -> None:
        headers = record.foreign_headers() + self._context(record, failure)
        await self._send_until_acked(self._dlq_topic, record.key, record.value, headers)

    async def retry_later(
        self, record: Record, failure: Failure, retry_topic: str, not_before: datetime
    ) -> None:
        headers = (
            record.foreign_headers()
            + self._context(record, failure)
            + ((H.NOT_BEFORE.value, iso(not_before).encode()),)
        )
        await self._send_until_acked(retry_topic, record.key, record.value, headers)

    async def publish_job(self, topic: str, envelope: JobEnvelope, key: bytes | None) -> None:
        await self._send_until_acked(topic, key, envelope.to_bytes(), ())

    def _context(self, record: Record, failure: Failure) -> Headers:
        topic, partition, offset, ts_ms = record.origin()
        now = iso(datetime.now(UTC))
        first = record.header(H.FIRST_FAILURE_AT) or now
        stack = self.mask("".join(traceback.format_exception(failure.error)))[-MAX_STACK_CHARS:]
        values: dict[H, str] = {
            H.ORIGINAL_TOPIC: topic,
            H.ORIGINAL_PARTITION: str(partition),
            H.ORIGINAL_OFFSET: str(offset),
            H.ORIGINAL_TIMESTAMP: iso_from_ms(ts_ms),
            H.CONSUMER_GROUP: self._group_id,
            H.JOB_TYPE: failure.job_type or "",
            H.JOB_ID: failure.job_id or "",
            H.ATTEMPTS: str(failure.attempts),
            H.FIRST_FAILURE_AT: first,
            H.LAST_FAILURE_AT: now,
            H.ERROR_CLASS: type(failure.error).__name__,
            H.ERROR_MESSAGE: self.mask(str(failure.error))[:MAX_MESSAGE_CHARS],
            H.ERROR_STACK: stack,
            H.STAGE: failure.stage.value,
            H.SERVICE_VERSION: __version__,
            H.HOST: self._host,
        }
        return tuple((name.value, value.encode()) for name, value in values.items())

    async def _send_until_acked(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        delay = 0.2
        while True:
            try:
                await self._send(topic, key, value, headers)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("publish.failed", target_topic=topic, error=repr(exc), retry_in_s=delay)
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
