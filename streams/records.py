"""A consumed record, independent of the client library that fetched it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.dlq import HEADER_PREFIX, H

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

    @classmethod
    def from_faust(cls, message: Any) -> Record:
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
        )

    def header(self, name: str) -> str | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    def foreign_headers(self) -> Headers:
        """The record's own headers, without the ones Conveyor added."""
        return tuple((k, v) for k, v in self.headers if not k.startswith(HEADER_PREFIX))

    @property
    def attempts_before(self) -> int:
        """Attempts already made (0 for a fresh job; carried by retry records)."""
        value = self.header(H.ATTEMPTS)
        try:
            return max(0, int(value)) if value else 0
        except ValueError:
            return 0

    def origin(self) -> tuple[str, int, int, int | None]:
        """(topic, partition, offset, timestamp_ms) of the job's first delivery."""
        topic = self.header(H.ORIGINAL_TOPIC)
        if topic is None:
            return self.topic, self.partition, self.offset, self.timestamp_ms
        ts = self.header(H.ORIGINAL_TIMESTAMP)
        return (
            topic,
            int(self.header(H.ORIGINAL_PARTITION) or -1),
            int(self.header(H.ORIGINAL_OFFSET) or -1),
            _ms_from_iso(ts) if ts else None,
        )


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def iso_from_ms(ms: int | None) -> str:
    return "" if ms is None else iso(datetime.fromtimestamp(ms / 1000, UTC))


def _ms_from_iso(value: str) -> int | None:
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        return None
