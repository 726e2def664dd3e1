"""Reading back the original record of a dead letter that had to leave it out.

A dead letter too large for its topic is published without its value (or
without its value, key and headers: ``conveyor-omitted``, see
``streams/publish.py``). The original stays on its source topic, at the
dead letter's original partition and offset, until that topic's retention.
``conveyor dlq replay`` reads it from there and checks its SHA-256 before
republishing it; a record gone (retention, compaction) or changed is
reported and its row stays ``new``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.dlq import FailureContext, own_headers
from streams.kafka_config import confluent_config
from streams.settings import Settings

READ_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Original:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


def omitted(stored_headers: str | Mapping[str, str]) -> FailureContext | None:
    """The dead letter's context when it left out part of its record, else None."""
    headers = json.loads(stored_headers) if isinstance(stored_headers, str) else stored_headers
    context = FailureContext.from_headers(headers)
    return context if context.omitted else None


def read_originals(
    settings: Settings, wanted: Mapping[int, FailureContext]
) -> tuple[dict[int, Original], dict[int, str]]:
    """(row id -> the original record, row id -> why it could not be read)."""
    found: dict[int, Original] = {}
    failed: dict[int, str] = {}
    if not wanted:
        return found, failed
    consumer = Consumer(
        {
            **confluent_config(settings.kafka),
            "group.id": f"{settings.kafka.group_id}-dlq-replay",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        for row_id, context in wanted.items():
            try:
                found[row_id] = _read_one(consumer, context)
            except LookupError as exc:
                failed[row_id] = str(exc)
    finally:
        consumer.close()
    return found, failed


def _read_one(consumer: Consumer, context: FailureContext) -> Original:
    topic, partition, offset = (
        context.original_topic,
        context.original_partition,
        context.original_offset,
    )
    if topic is None or partition is None or offset is None or offset < 0:
        raise LookupError("the dead letter names no original record to read back")
    where = f"{topic}:{partition}:{offset}"
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + READ_TIMEOUT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                continue
            raise LookupError(f"the original at {where} cannot be read: {error.str()}")
        if msg.offset() != offset:
            raise LookupError(f"the original at {where} is gone (retention or compaction)")
        return _checked(msg, context, where)
    raise LookupError(f"the original at {where} was not read within {READ_TIMEOUT_S:g} s")


def _checked(msg: Any, context: FailureContext, where: str) -> Original:
    value = msg.value()
    if hashlib.sha256(value or b"").hexdigest() != context.value_sha256:
        raise LookupError(f"the record at {where} is not the one dead-lettered (SHA-256 differs)")
    raw = msg.headers() or []
    headers: list[tuple[str, str | bytes | None]] = list(own_headers(raw))
    return Original(msg.key(), value, headers)
