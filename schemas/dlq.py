"""Header names of retry and dead-letter records, and the stages a job fails in."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

HEADER_PREFIX = "conveyor-"


class Stage(StrEnum):
    """Where a job failed."""

    DECODE = "decode"
    VALIDATE = "validate"
    HANDLE = "handle"
    TIMEOUT = "timeout"
    CRASHED = "crashed"  # the worker died running it, ``max_crashes`` times


class H(StrEnum):
    """Headers Conveyor adds to retry and dead-letter records."""

    ORIGINAL_TOPIC = "conveyor-original-topic"
    ORIGINAL_PARTITION = "conveyor-original-partition"
    ORIGINAL_OFFSET = "conveyor-original-offset"
    ORIGINAL_TIMESTAMP = "conveyor-original-timestamp"
    CONSUMER_GROUP = "conveyor-consumer-group"
    JOB_TYPE = "conveyor-job-type"
    JOB_ID = "conveyor-job-id"
    ATTEMPTS = "conveyor-attempts"
    NOT_BEFORE = "conveyor-not-before"
    FIRST_FAILURE_AT = "conveyor-first-failure-at"
    LAST_FAILURE_AT = "conveyor-last-failure-at"
    ERROR_CLASS = "conveyor-error-class"
    ERROR_MESSAGE = "conveyor-error-message"
    ERROR_STACK = "conveyor-error-stack"
    STAGE = "conveyor-stage"
    SERVICE_VERSION = "conveyor-service-version"
    HOST = "conveyor-host"


class DeadLetterRecord(BaseModel):
    """A record read back from the dead-letter topic, as mirrored into ``worker_dlq``."""

    model_config = ConfigDict(frozen=True)

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    def header(self, name: H) -> str | None:
        value = self.headers.get(name.value)
        return value if value else None

    def header_int(self, name: H) -> int | None:
        value = self.header(name)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def header_time(self, name: H) -> datetime | None:
        value = self.header(name)
        try:
            return datetime.fromisoformat(value) if value else None
        except ValueError:
            return None
