"""What the runner reports about one job type: metrics, log lines and alerts, in one place.

Event names are stable (dashboards, alerts and tests rely on them):
``job.succeeded``, ``job.waiting_for_dependency``, ``job.retrying``,
``job.dead_lettered``. The job's context (topic, partition, offset, job
type and id, attempt) is bound by the runner and added to each line.
"""

from __future__ import annotations

import structlog

from handlers.types import Outcome
from streams import alerts, metrics
from streams.publish import Failure
from streams.retry import (
    DeadLetter,
    Decision,
    RetryInPlace,
    RetryTopic,
    WaitForDependency,
    describe,
)

log = structlog.get_logger(__name__)


class JobReport:
    """Reports the attempts of one job type; label lookups are resolved once, here."""

    def __init__(self, job_type: str) -> None:
        self._duration = metrics.DURATION.labels(job_type)
        self._ended = {
            outcome: metrics.JOBS.labels(job_type, outcome)
            for outcome in (*(o.value for o in Outcome), "retry_topic", "dead_lettered")
        }
        self._retries = {
            where: metrics.RETRIES.labels(job_type, where) for where in ("in_place", "retry_topic")
        }
        self._waits = metrics.DEPENDENCY_WAITS.labels(job_type)
        self._job_type = job_type

    def succeeded(self, outcome: Outcome, duration_s: float) -> None:
        self._duration.observe(duration_s)
        self._ended[outcome.value].inc()
        log.info("job.succeeded", outcome=outcome.value, duration_s=round(duration_s, 4))

    def failed(self, decision: Decision, failure: Failure) -> None:
        """An attempt failed and ``decision`` was carried out (a wait is about to begin)."""
        error = describe(failure.error)
        match decision:
            case WaitForDependency(delay_s=delay, streak=streak):
                self._waits.inc()
                log.warning(
                    "job.waiting_for_dependency",
                    error=error,
                    delay_s=round(delay, 3),
                    streak=streak,
                )
            case RetryInPlace(delay_s=delay) | RetryTopic(delay_s=delay):
                where = "in_place" if isinstance(decision, RetryInPlace) else "retry_topic"
                self._retries[where].inc()
                if where == "retry_topic":
                    self._ended[where].inc()
                log.warning("job.retrying", error=error, delay_s=round(delay, 3), where=where)
            case DeadLetter(reason=reason):
                self._ended["dead_lettered"].inc()
                metrics.DEAD_LETTERS.labels(self._job_type, failure.stage.value).inc()
                log.error(
                    "job.dead_lettered",
                    stage=failure.stage.value,
                    reason=reason,
                    error_class=type(failure.error).__name__,
                    attempts=failure.attempts,
                )
                alerts.dead_lettered(failure)
