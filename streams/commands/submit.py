"""Publish jobs from the command line (``conveyor submit``)."""

from __future__ import annotations

import json
import uuid

from confluent_kafka import Producer
from pydantic import ValidationError
from rich.console import Console

from schemas.envelope import JobEnvelope
from streams.kafka_config import confluent_config
from streams.registry import build_registry
from streams.settings import Settings

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def producer(settings: Settings) -> Producer:
    return Producer(
        {
            **confluent_config(settings.kafka),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )


def publish(prod: Producer, topic: str, envelope: JobEnvelope, key: bytes | None) -> None:
    prod.produce(topic, value=envelope.to_bytes(), key=key)
    prod.poll(0)


def submit_jobs(
    settings: Settings,
    job_type: str,
    payload_json: str,
    job_id: str | None,
    org: str | None,
    count: int,
) -> int:
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
    prod = producer(settings)
    for i in range(count):
        jid = (
            job_id if job_id and count == 1 else (f"{job_id}-{i}" if job_id else str(uuid.uuid4()))
        )
        envelope = JobEnvelope(id=jid, type=job_type, organization_id=org, payload=payload)
        publish(prod, spec.topic, envelope, json.dumps(payload, sort_keys=True).encode())
    left = prod.flush(30)
    if left:
        err.print(f"{left} job(s) were not acknowledged by Kafka within 30 s")
        return 1
    out.print(f"published {count} {job_type} job(s) to {spec.topic}")
    return 0
