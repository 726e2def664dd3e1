"""Retry and dead-letter publishing: every send awaited until the broker acknowledged it."""

from __future__ import annotations

import asyncio
import socket
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from handlers.backoff import backoff_s
from schemas.dlq import FailureContext, Stage
from schemas.envelope import JobEnvelope
from streams import __version__
from streams.records import Headers, Record

log = structlog.get_logger(__name__)

SendFn = Callable[[str, bytes | None, bytes | None, Headers], Awaitable[None]]
MAX_STACK_CHARS = 4000
MAX_MESSAGE_CHARS = 1000
# A send the broker did not acknowledge is tried again after 0.2 s, doubling to 10 s.
SEND_BACKOFF_BASE_S = 0.2
SEND_BACKOFF_MAX_S = 10.0


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
        headers = record.own_headers() + self._context(record, failure).to_headers()
        await self._send_until_acked(self._dlq_topic, record.key, record.value, headers)

    async def retry_later(
        self, record: Record, failure: Failure, retry_topic: str, not_before: datetime
    ) -> None:
        context = self._context(record, failure, not_before)
        headers = record.own_headers() + context.to_headers()
        await self._send_until_acked(retry_topic, record.key, record.value, headers)

    async def publish_job(self, topic: str, envelope: JobEnvelope, key: bytes | None) -> None:
        await self._send_until_acked(topic, key, envelope.to_bytes(), ())

    def _context(
        self, record: Record, failure: Failure, not_before: datetime | None = None
    ) -> FailureContext:
        topic, partition, offset, ts_ms = record.origin()
        now = datetime.now(UTC)
        stack = self.mask("".join(traceback.format_exception(failure.error)))[-MAX_STACK_CHARS:]
        return FailureContext(
            original_topic=topic,
            original_partition=partition,
            original_offset=offset,
            original_timestamp=None if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, UTC),
            consumer_group=self._group_id,
            job_type=failure.job_type,
            job_id=failure.job_id,
            attempts=failure.attempts,
            first_failure_at=record.context.first_failure_at or now,
            last_failure_at=now,
            error_class=type(failure.error).__name__,
            error_message=self.mask(str(failure.error))[:MAX_MESSAGE_CHARS],
            error_stack=stack,
            stage=failure.stage.value,
            service_version=__version__,
            host=self._host,
            not_before=not_before,
        )

    async def _send_until_acked(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        failures = 0
        while True:
            try:
                await self._send(topic, key, value, headers)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff_s(failures, SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S, jitter=0.0)
                log.error("publish.failed", target_topic=topic, error=repr(exc), retry_in_s=delay)
                await self._sleep(delay)
