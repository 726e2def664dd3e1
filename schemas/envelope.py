"""The job envelope every message carries, independent of the job type."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
