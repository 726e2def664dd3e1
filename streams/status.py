"""The worker's status report, published every ``fleet.report_interval_s`` to the status topic.

What a Karafka Web UI user sees of a process, without Prometheus: host, pid,
version, assigned partitions, the jobs running (type, key, organization,
attempt, age), each pool's slots in use, memory, event-loop lag and the
pauses in force. The report is built from plain attributes (no I/O) and
written by its own producer, so a report costs the job path nothing; a
failed write is logged once and tried again at the next interval. A last
report with state ``stopped`` is written when the worker stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog

from schemas.fleet import (
    MAX_IN_FLIGHT_REPORTED,
    InFlightJob,
    OrganizationShare,
    PoolStatus,
    StatusReport,
)
from streams import __version__
from streams.follow import FleetWriter
from streams.records import Record
from streams.settings import Settings

log = structlog.get_logger(__name__)

MAX_PARSED_BYTES = 256 * 1024  # a larger job's id and organization are not read for a report
MAX_KEY_CHARS = 120
STOP_TIMEOUT_S = 3.0
State = Literal["starting", "running", "draining", "stopped"]


class ReportedPool(Protocol):
    """What the report reads of a job pool (streams/pool.py)."""

    name: str
    concurrency: int
    finished: int

    @property
    def in_flight(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def held(self) -> int: ...

    def running(self) -> list[tuple[Record, float]]: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the report's figures come from (the worker's parts, read without I/O)."""

    pools: Callable[[], Sequence[ReportedPool]]
    partitions: Callable[[], Iterable[Any]]
    paused: Callable[[], list[str]]
    state: Callable[[], State]
    loop_lag_ms: Callable[[], float | None]


def worker_id() -> str:
    """This process's id in the fleet: host, pid and a random part (pids repeat in pods)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _identity(value: bytes | None) -> tuple[str | None, str | None]:
    """(job id, organization) of an envelope, when cheap to read."""
    if not value or len(value) > MAX_PARSED_BYTES:
        return None, None
    try:
        data = json.loads(value)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    job_id, org = data.get("id"), data.get("organization_id")
    return (job_id if isinstance(job_id, str) else None, org if isinstance(org, str) else None)


MAX_ORGANIZATIONS_REPORTED = 20


def organization_shares(pool: ReportedPool) -> list[OrganizationShare]:
    """A fair pool's organizations, the busiest first (at most 20); [] for other pools."""
    counts = getattr(pool, "organization_counts", None)
    if counts is None:
        return []
    c = counts()
    orgs = set(c.waiting) | set(c.running) | set(c.started) | set(c.deferred)
    shares = [
        OrganizationShare(
            organization_id=org,
            waiting=c.waiting.get(org, 0),
            running=c.running.get(org, 0),
            started=c.started.get(org, 0),
            deferred=c.deferred.get(org, 0),
        )
        for org in orgs
    ]
    shares.sort(key=lambda o: (o.waiting + o.running, o.started), reverse=True)
    return shares[:MAX_ORGANIZATIONS_REPORTED]


def in_flight_job(job_type: str, record: Record, age_s: float) -> InFlightJob:
    job_id, org = _identity(record.value)
    key = None if record.key is None else record.key[:MAX_KEY_CHARS].decode("utf-8", "replace")
    return InFlightJob(
        job_type=job_type,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        job_id=job_id,
        organization_id=org,
        attempt=record.attempts_before + 1,
        age_s=round(age_s, 3),
    )


class StatusReporter:
    """Builds this worker's report and writes it to the status topic every interval."""

    def __init__(self, settings: Settings, sources: Sources) -> None:
        self._settings = settings
        self._sources = sources
        self._writer = FleetWriter(settings.kafka)
        self.worker_id = worker_id()
        self._started_at = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def report(self, state: State | None = None) -> StatusReport:
        loop_now = asyncio.get_running_loop().time()
        jobs: list[InFlightJob] = []
        pools = []
        for pool in self._sources.pools():
            running = pool.running()
            jobs += [in_flight_job(pool.name, r, loop_now - started) for r, started in running]
            pools.append(
                PoolStatus(
                    job_type=pool.name,
                    concurrency=pool.concurrency,
                    in_flight=pool.in_flight,
                    waiting=pool.waiting,
                    held=pool.held,
                    finished=pool.finished,
                    organizations=organization_shares(pool),
                )
            )
        jobs.sort(key=lambda j: j.age_s, reverse=True)
        return StatusReport(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            group_id=self._settings.kafka.group_id,
            state=state or self._sources.state(),
            started_at=self._started_at,
            interval_s=self._settings.fleet.report_interval_s,
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in self._sources.partitions()),
            in_flight=jobs[:MAX_IN_FLIGHT_REPORTED],
            in_flight_total=len(jobs),
            pools=pools,
            rss_bytes=rss_bytes(),
            loop_lag_ms=self._sources.loop_lag_ms(),
            paused=self._sources.paused(),
        )

    async def start(self) -> None:
        await self._writer.start()
        self._task = asyncio.create_task(self._run(), name="status-reporter")

    async def _run(self) -> None:
        interval = self._settings.fleet.report_interval_s
        while True:
            await self._publish(self.report(), timeout_s=interval)
            await asyncio.sleep(interval)

    async def _publish(self, report: StatusReport, timeout_s: float) -> None:
        topic = self._settings.kafka.status_topic
        try:
            await self._writer.write(topic, self.worker_id.encode(), report.to_bytes(), timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing:
                log.warning("fleet.report_failed", topic=topic, error=repr(exc)[:300])
            self._failing = True
        else:
            if self._failing:
                log.info("fleet.report_recovered", topic=topic)
            self._failing = False

    async def stop(self) -> None:
        """Stop reporting; say ``stopped`` once (best effort, bounded)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._publish(self.report("stopped"), timeout_s=STOP_TIMEOUT_S)
        await self._writer.stop()
