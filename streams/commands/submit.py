"""Publish jobs from the command line (``conveyor submit``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer
from pydantic import ValidationError
from rich.console import Console

from schemas.envelope import JobEnvelope
from streams.kafka_config import confluent_config
from streams.registry import build_registry
from streams.settings import Settings
from streams.tracing import Tracing, for_command

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


Header = tuple[str, str | bytes | None]


class JobProducer:
    """The commands' Kafka producer: each record under a producer span carrying its trace
    context when tracing is on (``streams.tracing.for_command``)."""

    def __init__(self, prod: Producer, tracing: Tracing) -> None:
        self._prod = prod
        self._tracing = tracing

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[Header] | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        own = tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in headers or ())
        with self._tracing.sending(topic, key, own) as sent:
            self._prod.produce(
                topic, value=value, key=key, headers=list(sent), on_delivery=on_delivery
            )

    def poll(self, timeout: float = 0) -> int:
        return int(self._prod.poll(timeout))

    def flush(self, timeout: float) -> int:
        return int(self._prod.flush(timeout))


def producer(settings: Settings) -> JobProducer:
    prod = Producer(
        {
            **confluent_config(settings.kafka),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    return JobProducer(prod, for_command(settings))


def publish(prod: JobProducer, topic: str, envelope: JobEnvelope, key: bytes | None) -> None:
    prod.produce(topic, value=envelope.to_bytes(), key=key)
    prod.poll(0)


def submit_jobs(
    settings: Settings,
    job_type: str,
    payload_json: str,
    job_id: str | None,
    org: str | None,
    count: int,
    key: str | None = None,
) -> int:
    """Publish ``count`` jobs of one payload, keyed by ``key`` (default: the payload's
    canonical JSON, so copies of one payload keep their order under ``ordering: key``)."""
    registry = build_registry(settings)
    spec = registry.specs.get(job_type)
    if spec is None:
        err.print(f"unknown job type {job_type!r}; known: {', '.join(registry.specs)}")
        return 2
    try:
        payload = spec.payload_model.model_validate_json(payload_json).model_dump(mode="json")
    except ValidationError as exc:
        err.print(f"invalid {job_type} payload:\n{exc}", markup=False)
        return 2
    record_key = (key if key is not None else json.dumps(payload, sort_keys=True)).encode()
    prod = producer(settings)
    for i in range(count):
        jid = (
            job_id if job_id and count == 1 else (f"{job_id}-{i}" if job_id else str(uuid.uuid4()))
        )
        envelope = JobEnvelope(id=jid, type=job_type, organization_id=org, payload=payload)
        publish(prod, spec.topic, envelope, record_key)
    left = prod.flush(30)
    if left:
        err.print(f"{left} job(s) were not acknowledged by Kafka within 30 s")
        return 1
    out.print(f"published {count} {job_type} job(s) to {spec.topic}")
    return 0
