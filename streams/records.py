"""A consumed record, independent of the client library that fetched it.

Conveyor's own headers (``conveyor-attempts``, ``conveyor-original-*``,
``conveyor-not-before``...) are believed only on a record of the service's own
retry topics (``trusted``), which only Conveyor writes to. On a fresh job any
producer could set them — to skip the retries (attempts 99), or to steer the
job's recorded origin — so there they read as absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.dlq import FailureContext, own_headers

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None
    trusted: bool = False  # a record of one of the service's own retry topics

    @classmethod
    def from_faust(cls, message: Any, *, trusted: bool = False) -> Record:
        raw = message.headers or ()
        items: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, dict) else raw
        headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in items)
        ts = message.timestamp
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            headers=headers,
            timestamp_ms=int(ts * 1000) if ts else None,
            trusted=trusted,
        )

    @property
    def context(self) -> FailureContext:
        """What Conveyor's headers on this record say; empty for a fresh job, whatever
        headers its producer set (only retry records are ``trusted``)."""
        if not self.trusted:
            return FailureContext()
        return FailureContext.from_headers(self.headers)

    def own_headers(self) -> Headers:
        """The record's own headers, without the ones Conveyor added."""
        return tuple(own_headers(self.headers))

    @property
    def attempts_before(self) -> int:
        """Attempts already made (0 for a fresh job; carried by retry records)."""
        return max(0, self.context.attempts or 0)

    def origin(self, context: FailureContext | None = None) -> tuple[str, int, int, int | None]:
        """(topic, partition, offset, timestamp_ms) of the job's first delivery.

        ``context``: this record's, when the caller has already read it.
        """
        context = self.context if context is None else context
        if context.original_topic is None:
            return self.topic, self.partition, self.offset, self.timestamp_ms
        ts = context.original_timestamp
        return (
            context.original_topic,
            -1 if context.original_partition is None else context.original_partition,
            -1 if context.original_offset is None else context.original_offset,
            None if ts is None else int(ts.timestamp() * 1000),
        )

    def due_in_s(self, now: datetime | None = None) -> float:
        """Seconds until a retry record's not-before time (0 when due or unreadable)."""
        due = self.context.not_before
        if due is None:
            return 0.0
        return max(0.0, (due - (now or datetime.now(UTC))).total_seconds())
