"""Retry and dead-letter publishing: every send awaited until the broker acknowledged it.

A dead letter always fits its topic. It carries the raw record plus
Conveyor's headers, so a record near the size limit can outgrow it
(``max.message.bytes``, the producer's ``max_request_size``); resending it
could never succeed. It is shrunk step by step instead — the stack left out
and the message cut, then the value left out, then the key and the record's
own headers too — each omission named in ``conveyor-omitted`` with the size
and the value's SHA-256. The original stays on its source topic until that
topic's retention, and ``conveyor dlq replay`` reads it back from there. A
retry record that does not fit loses its stack; if it still does not fit,
the job is dead-lettered instead (``RecordTooLarge``).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from handlers.backoff import backoff_s
from handlers.errors import PermanentError
from schemas.dlq import FailureContext, FailureHeader, Stage, iso
from schemas.envelope import JobEnvelope
from streams import __version__
from streams.records import Headers, Record
from streams.tracing import OFF, Tracing

log = structlog.get_logger(__name__)

SendFn = Callable[[str, bytes | None, bytes | None, Headers], Awaitable[None]]
MAX_STACK_CHARS = 4000
MAX_MESSAGE_CHARS = 1000
# A send the broker did not acknowledge is tried again after 0.2 s, doubling to 10 s.
SEND_BACKOFF_BASE_S = 0.2
SEND_BACKOFF_MAX_S = 10.0
SHORT_MESSAGE_CHARS = 200  # the error message of a dead letter shrunk to fit
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


class RecordTooLarge(PermanentError):
    """The record is larger than its topic or the producer accepts: resending cannot help."""


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
        tracing: Tracing = OFF,
    ) -> None:
        self._send = send
        self.tracing = tracing  # each send a producer span carrying its context, when on
        self._sleep = sleep
        self.mask = mask  # the configured secrets masked in any text that leaves the worker
        self._group_id = group_id
        self._group_bytes = group_id.encode()
        self._dlq_topic = dlq_topic
        self._host = socket.gethostname()

    async def dead_letter(self, record: Record, failure: Failure) -> None:
        """Publish the dead letter, shrunk until it fits (see the module docstring)."""
        context = self._context(record, failure)
        for step, (key, value, headers) in enumerate(_shrinking(record, context)):
            try:
                await self._send_until_acked(self._dlq_topic, key, value, headers)
                return
            except RecordTooLarge as exc:
                log.warning(
                    "publish.dead_letter_too_large", step=step, error=str(exc.__cause__ or exc)
                )
        # Even coordinates and a short message were refused: the topic's limit is
        # misconfigured (below a few KB). Keep trying: nothing is committed meanwhile.
        key, value, headers = _last_resort(record, context)
        while True:
            try:
                await self._send_until_acked(self._dlq_topic, key, value, headers)
                return
            except RecordTooLarge as exc:
                log.error("publish.dead_letter_refused", error=str(exc.__cause__ or exc))
                await self._sleep(SEND_BACKOFF_MAX_S)

    async def retry_later(
        self, record: Record, failure: Failure, retry_topic: str, not_before: datetime
    ) -> None:
        """Publish the retry record (without its stack if it does not fit; else RecordTooLarge)."""
        context = self._context(record, failure, not_before)
        headers = record.own_headers() + context.to_headers()
        try:
            await self._send_until_acked(retry_topic, record.key, record.value, headers, link=True)
        except RecordTooLarge:
            headers = record.own_headers() + _trimmed(context).to_headers()
            await self._send_until_acked(retry_topic, record.key, record.value, headers, link=True)

    async def set_aside(self, record: Record, topic: str) -> None:
        """Publish a source record unchanged to ``topic`` (the deferred topic, for fair share),
        naming where it came from so its retries and dead letter keep its origin.

        The headers are written directly (not through ``FailureContext``): a big
        backlog sets thousands of records aside in a moment.
        """
        origin_topic, partition, offset, ts_ms = record.origin()
        context: list[tuple[str, bytes]] = [
            (FailureHeader.ORIGINAL_TOPIC.value, origin_topic.encode()),
            (FailureHeader.ORIGINAL_PARTITION.value, b"%d" % partition),
            (FailureHeader.ORIGINAL_OFFSET.value, b"%d" % offset),
            (FailureHeader.CONSUMER_GROUP.value, self._group_bytes),
        ]
        if ts_ms is not None:
            when = iso(datetime.fromtimestamp(ts_ms / 1000, UTC))
            context.append((FailureHeader.ORIGINAL_TIMESTAMP.value, when.encode()))
        if record.trusted and (attempts := record.attempts_before):
            context.append((FailureHeader.ATTEMPTS.value, b"%d" % attempts))
        headers = record.own_headers() + tuple(context)
        await self._send_until_acked(topic, record.key, record.value, headers)

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
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        link: bool = False,
    ) -> None:
        """``link``: the record names the current (attempt's) span (a retry record)."""
        with self.tracing.sending(topic, key, headers, link=link) as sent:
            await self._send_with_retries(topic, key, value, sent)

    async def _send_with_retries(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        if key is None and value is None:
            value = b""  # the client sends no record without a key or a value (a null record)
        failures = 0
        while True:
            try:
                await self._send(topic, key, value, headers)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _too_large(exc):
                    raise RecordTooLarge(f"{topic} refused the record as too large") from exc
                failures += 1
                delay = backoff_s(failures, SEND_BACKOFF_BASE_S, SEND_BACKOFF_MAX_S, jitter=0.0)
                log.error("publish.failed", target_topic=topic, error=repr(exc), retry_in_s=delay)
                await self._sleep(delay)


def _too_large(exc: BaseException) -> bool:
    """The producer or the broker refused the record for its size (Faust wraps the former)."""
    return isinstance(exc, _TOO_LARGE) or isinstance(exc.__cause__, _TOO_LARGE)


def _trimmed(context: FailureContext) -> FailureContext:
    message = context.error_message
    short = message[:SHORT_MESSAGE_CHARS] if message else message
    return context.model_copy(update={"error_stack": None, "error_message": short})


def _shrinking(
    record: Record, context: FailureContext
) -> list[tuple[bytes | None, bytes | None, Headers]]:
    """The dead letter's forms, largest first: whole; shorter; without the value; without
    the value, key and own headers."""
    own = record.own_headers()
    short = _trimmed(context)
    value = record.value or b""
    omitted_value = short.model_copy(
        update={
            "omitted": "value",
            "omitted_bytes": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
        }
    )
    return [
        (record.key, record.value, own + context.to_headers()),
        (record.key, record.value, own + short.to_headers()),
        (record.key, None, own + omitted_value.to_headers()),
        _last_resort(record, context),
    ]


def _last_resort(record: Record, context: FailureContext) -> tuple[None, None, Headers]:
    value = record.value or b""
    own_bytes = sum(len(k) + len(v) for k, v in record.own_headers())
    bare = _trimmed(context).model_copy(
        update={
            "omitted": "value,key,headers",
            "omitted_bytes": len(value) + len(record.key or b"") + own_bytes,
            "value_sha256": hashlib.sha256(value).hexdigest(),
        }
    )
    return None, None, bare.to_headers()
