"""The job envelope every message carries, independent of the job type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

ENVELOPE_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobEnvelope(BaseModel):
    """What the platform publishes: identity, type, timing and the payload.

    ``payload`` stays a plain mapping here; the registry validates it against
    the job type's own model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    schema_version: int = Field(ENVELOPE_VERSION, ge=1)
    created_at: AwareDatetime = Field(default_factory=utcnow)
    deadline: AwareDatetime | None = None
    organization_id: str | None = Field(None, max_length=200)
    payload: dict[str, Any]

    @model_validator(mode="after")
    def _no_nul(self) -> JobEnvelope:
        """Refuse NUL characters anywhere: Postgres cannot store them, so such a job
        could only fail later, after paid work, and be retried for nothing."""
        fields = {"id": self.id, "type": self.type, "organization_id": self.organization_id}
        where = nul_path(fields) or nul_path(self.payload, "payload")
        if where is not None:
            raise ValueError(f"{where} contains a NUL character (\\u0000), which cannot be stored")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string or key holding a NUL, or None."""
    if isinstance(value, str):
        return (path or "value") if "\x00" in value else None
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return inner
            found = nul_path(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
