"""Asset status: the one typed update every asset path goes through."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AssetStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class StatusWriter(BaseModel):
    """The job run writing a status: its id, where this run was first delivered, its age.

    ``origin`` is the same for every redelivery and retry of one run and new
    for a replay from the dead-letter topic; ``created_at`` (the envelope's)
    orders different jobs of one asset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    origin: str | None = None
    created_at: datetime | None = None


class AssetStatusUpdate(BaseModel):
    """A change of an asset's status; invalid combinations do not construct."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: AssetStatus
    error: str | None = Field(None, max_length=2000)
    chunks_count: int | None = Field(None, ge=0)
    progress: int | None = Field(None, ge=0, le=100)
    processed_at: datetime | None = None

    @field_validator("error")
    @classmethod
    def _no_nul(cls, error: str | None) -> str | None:
        """Postgres text refuses NUL; an error quoting hostile input may carry one."""
        return error.replace("\x00", "") if error else error

    @model_validator(mode="after")
    def _consistent(self) -> AssetStatusUpdate:
        if self.status is AssetStatus.FAILED and not self.error:
            raise ValueError("a failed status needs an error a person can act on")
        if self.status is not AssetStatus.FAILED and self.error:
            raise ValueError("only a failed status carries an error")
        if self.status is AssetStatus.COMPLETED and self.chunks_count is None:
            raise ValueError("a completed status needs chunks_count")
        return self
