"""The fleet as its topics tell it: workers' latest reports and the pauses in force.

Read by ``conveyor workers`` / ``conveyor paused`` (a snapshot: the topics up
to their ends) and by the console (followed live). Writing a pause or a
resume is :func:`set_pause`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from pydantic import ValidationError

from schemas.fleet import PauseRecord, StatusReport
from streams.control import Pauses
from streams.follow import TopicFollower, read_topic, write_record
from streams.settings import Settings

log = structlog.get_logger(__name__)

SNAPSHOT_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class WorkerView:
    report: StatusReport
    gone: bool
    silent_s: float


class FleetView:
    """The latest report of every worker; a worker silent for 3 of its intervals is gone."""

    def __init__(self, forget_after_s: float) -> None:
        self._reports: dict[str, StatusReport] = {}
        self._forget_after_s = forget_after_s

    def apply_bytes(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._reports.pop(key.decode(errors="replace"), None)
            return
        try:
            report = StatusReport.model_validate_json(value)
        except ValidationError:
            log.warning("fleet.report_unreadable", key=key[:200].decode(errors="replace"))
            return
        self._reports[report.worker_id] = report

    def workers(self, now: datetime | None = None) -> list[WorkerView]:
        """Live workers first (by host and pid), then gone ones; forgotten ones left out."""
        now = now or datetime.now(UTC)
        views = []
        for report in self._reports.values():
            silent = (now - report.at).total_seconds()
            if silent > self._forget_after_s:
                continue
            views.append(WorkerView(report, report.gone(now), max(silent, 0.0)))
        views.sort(key=lambda v: (v.gone, v.report.host, v.report.pid, v.report.worker_id))
        return views


async def fleet_snapshot(settings: Settings) -> FleetView:
    view = FleetView(settings.fleet.forget_after_s)
    await read_topic(
        settings.kafka, settings.kafka.status_topic, view.apply_bytes, SNAPSHOT_TIMEOUT_S
    )
    return view


async def pauses_snapshot(settings: Settings) -> Pauses:
    pauses = Pauses()
    await read_topic(
        settings.kafka, settings.kafka.control_topic, pauses.apply_bytes, SNAPSHOT_TIMEOUT_S
    )
    return pauses


async def set_pause(settings: Settings, record: PauseRecord) -> None:
    """Write a pause or a resume; every worker applies it within about a second."""
    await write_record(settings.kafka, settings.kafka.control_topic, record.key, record.to_bytes())


def followers(settings: Settings, view: FleetView, pauses: Pauses) -> list[TopicFollower]:
    """Live followers of both fleet topics (the console keeps them running)."""
    k = settings.kafka
    return [
        TopicFollower(k, k.status_topic, view.apply_bytes),
        TopicFollower(k, k.control_topic, pauses.apply_bytes),
    ]
