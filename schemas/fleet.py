"""The records of the fleet's two compacted topics: runtime control and status reports.

**Control** (``kafka.control_topic``): one record per (job type, organization)
that was ever paused, keyed by :func:`pause_key`; the last one says whether
it is paused now. Every worker reads the topic from the beginning at
start-up and follows it, so a pause survives restarts and rebalances.

**Status** (``kafka.status_topic``): each worker's latest report, keyed by its
worker id. A worker silent for more than ``GONE_AFTER_INTERVALS`` of its own
report intervals is gone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

GONE_AFTER_INTERVALS = 3
MAX_IN_FLIGHT_REPORTED = 200


def _now() -> datetime:
    return datetime.now(UTC)


class PauseRecord(BaseModel):
    """A pause or a resume of one job type, or of one organization's jobs of that type."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_type: str = Field(min_length=1, max_length=100)
    organization_id: str | None = Field(None, max_length=200)
    paused: bool
    reason: str = Field("", max_length=1000)
    by: str = Field("", max_length=200)
    at: AwareDatetime = Field(default_factory=_now)

    @property
    def key(self) -> bytes:
        return pause_key(self.job_type, self.organization_id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def pause_key(job_type: str, organization_id: str | None) -> bytes:
    """The control record's key: one per job type and organization (None: every one)."""
    return json.dumps([job_type, organization_id]).encode()


class InFlightJob(BaseModel):
    """A job running in a worker when it reported."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_type: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    job_id: str | None = None
    organization_id: str | None = None
    attempt: int = 1
    age_s: float = 0.0


class OrganizationShare(BaseModel):
    """One organization's share of a fair job type's pool (``fairness: organization``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    organization_id: str  # "" for jobs without one
    waiting: int = 0
    running: int = 0
    started: int = 0  # since the worker started
    deferred: int = 0  # set aside to the deferred topic, since the worker started


class PoolStatus(BaseModel):
    """One job type's pool in a worker: slots, jobs running, records waiting and held."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_type: str
    concurrency: int
    in_flight: int
    waiting: int
    held: int = 0
    finished: int = 0
    organizations: list[OrganizationShare] = Field(default_factory=list)  # fair pools only

    @property
    def utilisation(self) -> float:
        return self.in_flight / self.concurrency if self.concurrency else 0.0


class StatusReport(BaseModel):
    """What one worker process says about itself, every ``fleet.report_interval_s``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker_id: str
    host: str
    pid: int
    version: str
    group_id: str
    state: Literal["starting", "running", "draining", "stopped"] = "running"
    started_at: AwareDatetime
    at: AwareDatetime = Field(default_factory=_now)
    interval_s: float
    partitions: list[str] = Field(default_factory=list)
    in_flight: list[InFlightJob] = Field(default_factory=list)
    in_flight_total: int = 0
    pools: list[PoolStatus] = Field(default_factory=list)
    rss_bytes: int | None = None
    loop_lag_ms: float | None = None
    paused: list[str] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def gone(self, now: datetime | None = None) -> bool:
        """Silent for longer than three of its report intervals (or stopped)."""
        if self.state == "stopped":
            return True
        silent = ((now or _now()) - self.at).total_seconds()
        return silent > GONE_AFTER_INTERVALS * self.interval_s
