"""Decode and validate a consumed record into a typed job, or say precisely why not.

Each job type's envelope model is built once with ``payload`` typed as the
job type's payload model, so a good record is validated in one pass; a bad
one is validated again, envelope and payload apart, for the precise reason
(stage ``decode`` for bytes that are not a job, ``validate`` for a job that
breaks its schema or sits on the wrong topic).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from handlers.errors import PermanentError
from handlers.types import Job
from schemas.dlq import Stage
from schemas.envelope import JobEnvelope
from streams.publish import Failure
from streams.records import Record


class Decoder:
    """Decodes the records of one job type."""

    def __init__(self, job_type: str, payload_model: type[BaseModel], max_job_bytes: int) -> None:
        self.job_type = job_type
        self.payload_model = payload_model
        self.max_job_bytes = max_job_bytes
        self._typed = typed_envelope(payload_model)

    def _decode_typed(self, value: bytes, attempts: int, origin: str) -> Job[BaseModel] | None:
        """One-pass validation of envelope and payload; None sends the caller the slow way.

        The slow way validates envelope and payload separately so that a bad
        message gets the precise reason.
        """
        try:
            envelope = self._typed.model_validate_json(value)
        except ValidationError:
            return None
        if envelope.type != self.job_type:
            return None
        return Job(
            envelope.id,
            envelope.type,
            attempts,
            envelope.organization_id,
            envelope.payload,
            envelope.deadline,
            envelope.created_at,
            origin,
        )

    def decode(self, record: Record) -> Job[BaseModel] | Failure:
        """The record's job, or why it has none (stage ``decode`` or ``validate``)."""
        context = record.context
        attempts = max(0, context.attempts or 0) + 1
        if record.value is None:
            return Failure(Stage.DECODE, PermanentError("message has no value"), attempts)
        if len(record.value) > self.max_job_bytes:
            error = PermanentError(
                f"message is {len(record.value) / 2**20:.1f} MB; "
                f"the limit for a job is {self.max_job_bytes / 2**20:.1f} MB"
            )
            return Failure(Stage.DECODE, error, attempts)
        topic, partition, offset, _ = record.origin(context)
        origin = f"{topic}:{partition}:{offset}"
        fast = self._decode_typed(record.value, attempts, origin)
        if fast is not None:
            return fast
        try:
            envelope = JobEnvelope.model_validate_json(record.value)
        except ValidationError as exc:
            stage = Stage.DECODE if _is_json_error(exc) else Stage.VALIDATE
            reason = "message is not valid JSON" if stage is Stage.DECODE else "invalid envelope"
            return Failure(stage, PermanentError(f"{reason}: {_summary(exc)}"), attempts)
        ids = {"job_type": envelope.type, "job_id": envelope.id}
        if envelope.type != self.job_type:
            error = PermanentError(
                f"job type {envelope.type!r} does not belong on topic {record.topic!r}"
                f" (expected {self.job_type!r})"
            )
            return Failure(Stage.VALIDATE, error, attempts, **ids)
        try:
            payload = self.payload_model.model_validate(envelope.payload)
        except ValidationError as exc:
            error = PermanentError(f"invalid {envelope.type} payload: {_summary(exc)}")
            return Failure(Stage.VALIDATE, error, attempts, **ids)
        return Job(
            envelope.id,
            envelope.type,
            attempts,
            envelope.organization_id,
            payload,
            envelope.deadline,
            envelope.created_at,
            origin,
        )


def _is_json_error(exc: ValidationError) -> bool:
    return any(err["type"] in ("json_invalid", "json_type") for err in exc.errors())


def _summary(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def typed_envelope(payload_model: type[BaseModel]) -> type[TypedEnvelope]:
    """The envelope model with ``payload`` typed as the job type's payload model."""
    model: type[TypedEnvelope] = create_model(
        f"{payload_model.__name__}Envelope",
        __base__=TypedEnvelope,
        payload=(payload_model, ...),
    )
    return model


class TypedEnvelope(JobEnvelope):
    payload: Any  # narrowed per job type by ``typed_envelope``
