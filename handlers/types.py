"""What a handler receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    created_at: datetime | None = None
    # Where this run of the job was first delivered ("topic:partition:offset"): the
    # same for redeliveries and retries, new for a replay from the dead-letter topic.
    origin: str | None = None

    def next_attempt(self) -> Job[P]:
        return replace(self, attempt=self.attempt + 1)


class Outcome(StrEnum):
    """How a job ended when it did not raise."""

    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
