"""What a handler receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Job(Generic[P]):
    """A validated job: envelope identity plus the typed payload."""

    id: str
    type: str
    attempt: int
    organization_id: str | None
    payload: P
    deadline: datetime | None = None

    def next_attempt(self) -> Job[P]:
        return Job(
            self.id, self.type, self.attempt + 1, self.organization_id, self.payload, self.deadline
        )


class Outcome(StrEnum):
    """How a job ended when it did not raise."""

    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
