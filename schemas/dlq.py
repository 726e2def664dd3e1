"""The ``conveyor-*`` headers of retry and dead-letter records, and the stages a job fails in.

``FailureContext`` is the one writer and the one reader of those headers:
the publisher writes a record's context with ``to_headers``; the runner,
the agents, the dead-letter mirror and ``conveyor dlq`` read it back with
``from_headers``. A record's own headers (the ones Conveyor did not add)
pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict

HEADER_PREFIX = "conveyor-"

RawHeaders = Iterable[tuple[str, bytes | str]]
V = TypeVar("V", bytes, str)


class Stage(StrEnum):
    """Where a job failed."""

    DECODE = "decode"
    VALIDATE = "validate"
    HANDLE = "handle"
    TIMEOUT = "timeout"
    CRASHED = "crashed"  # the worker died running it, ``max_crashes`` times


class FailureHeader(StrEnum):
    """The name of each header Conveyor adds to retry and dead-letter records."""

    ORIGINAL_TOPIC = "conveyor-original-topic"
    ORIGINAL_PARTITION = "conveyor-original-partition"
    ORIGINAL_OFFSET = "conveyor-original-offset"
    ORIGINAL_TIMESTAMP = "conveyor-original-timestamp"
    CONSUMER_GROUP = "conveyor-consumer-group"
    JOB_TYPE = "conveyor-job-type"
    JOB_ID = "conveyor-job-id"
    ATTEMPTS = "conveyor-attempts"
    FIRST_FAILURE_AT = "conveyor-first-failure-at"
    LAST_FAILURE_AT = "conveyor-last-failure-at"
    ERROR_CLASS = "conveyor-error-class"
    ERROR_MESSAGE = "conveyor-error-message"
    ERROR_STACK = "conveyor-error-stack"
    STAGE = "conveyor-stage"
    SERVICE_VERSION = "conveyor-service-version"
    HOST = "conveyor-host"
    NOT_BEFORE = "conveyor-not-before"
    OMITTED = "conveyor-omitted"
    OMITTED_BYTES = "conveyor-omitted-bytes"
    VALUE_SHA256 = "conveyor-value-sha256"


class FailureContext(BaseModel):
    """Where a job first came from and how it last failed, as its record's headers say.

    Writing puts each known field in its header, in field order. Reading is
    lenient, since any producer can set these headers: a header that is
    missing, empty or unreadable reads as None, never as an error.
    """

    model_config = ConfigDict(frozen=True)

    original_topic: str | None = None
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp: datetime | None = None
    consumer_group: str | None = None
    job_type: str | None = None
    job_id: str | None = None
    attempts: int | None = None
    first_failure_at: datetime | None = None
    last_failure_at: datetime | None = None
    error_class: str | None = None
    error_message: str | None = None
    error_stack: str | None = None
    stage: str | None = None
    service_version: str | None = None
    host: str | None = None
    not_before: datetime | None = None  # retry records only: when the job is due
    # A dead letter too large for its topic leaves out what did not fit, and says
    # so: "value" or "value,key,headers", their size, and the value's SHA-256.
    # The original stays at original_topic/partition/offset until its retention.
    omitted: str | None = None
    omitted_bytes: int | None = None
    value_sha256: str | None = None

    def to_headers(self) -> tuple[tuple[str, bytes], ...]:
        """The context as record headers (fields that are None are left out)."""
        return tuple(
            (FailureHeader[name.upper()].value, _text(value).encode())
            for name, value in self
            if value is not None
        )

    @classmethod
    def from_headers(cls, headers: RawHeaders | Mapping[str, str]) -> FailureContext:
        """Read the context from a record's headers (the last of a repeated header wins)."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        found: dict[str, str] = {}
        for key, value in items:
            if key.startswith(HEADER_PREFIX):
                found[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not found:
            return NO_CONTEXT
        fields: dict[str, Any] = {}
        for name, header, kind in _FIELDS:
            text = found.get(header)
            if text and (value := _parse(text, kind)) is not None:
                fields[name] = value
        return cls(**fields)


NO_CONTEXT = FailureContext()


def own_headers(headers: Iterable[tuple[str, V]]) -> list[tuple[str, V]]:
    """A record's own headers: every one but those Conveyor added."""
    return [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)]


def iso(dt: datetime) -> str:
    """How times are written in headers: UTC, ISO 8601, milliseconds."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def _text(value: object) -> str:
    return iso(value) if isinstance(value, datetime) else str(value)


def _kind(annotation: Any) -> type:
    """The type a field's text is parsed to: int, datetime or str."""
    kinds = get_args(annotation) or (annotation,)
    return next((k for k in (int, datetime) if k in kinds), str)


def _parse(text: str, kind: type) -> object:
    """``text`` as ``kind``, or None when it is not one (times without a zone: UTC)."""
    try:
        if kind is int:
            return int(text)
        if kind is datetime:
            when = datetime.fromisoformat(text)
            return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    except ValueError:
        return None
    return text


# (field, header, type) of each field: the one mapping between the model and the headers.
_FIELDS = [
    (name, FailureHeader[name.upper()].value, _kind(info.annotation))
    for name, info in FailureContext.model_fields.items()
]


class DeadLetterRecord(BaseModel):
    """A record read back from the dead-letter topic, as mirrored into ``worker_dlq``."""

    model_config = ConfigDict(frozen=True)

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def context(self) -> FailureContext:
        return FailureContext.from_headers(self.headers)
