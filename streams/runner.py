"""Run one consumed record to its end: decode → validate → bind → timeout → handle → decide.

``run()`` returns only when the record is *finished*: the job succeeded, or
was handed to the retry topic, or to the dead-letter topic, with the
broker's acknowledgement. Cancellation (drain, revoke) propagates and leaves
the record unfinished, so its offset is never committed.

Every run holds the crash guard's gate: shared, or alone for a record
suspected of having killed a worker; past ``max_crashes`` such a record is
dead-lettered (stage ``crashed``) without running again. See
``streams/crashguard.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError, create_model

from handlers.errors import DeadlineExceeded, JobTimeout, PermanentError
from handlers.types import Job, Outcome
from schemas.dlq import Stage
from schemas.envelope import JobEnvelope
from streams import alerts, metrics
from streams.crashguard import CrashGuard
from streams.isolation import Isolation
from streams.logs import JOB_CONTEXT, bind_job
from streams.publish import Failure, RecordPublisher
from streams.records import Record
from streams.registry import JobSpec
from streams.retry import (
    DeadLetter,
    RetryInPlace,
    RetryLater,
    decide,
    describe,
    is_outage,
    outage_wait_s,
    stage_of,
)
from streams.runtime import DepsSource

log = structlog.get_logger("conveyor.runner")

GIVE_UP_HOOK_ATTEMPTS = 5


class WorkerDied(PermanentError):
    """The worker process died while running this job, too many times to try again."""


class JobRunner:
    """Runs the records of one job type (its source and retry topics)."""

    def __init__(
        self,
        spec: JobSpec,
        runtime: DepsSource,
        publisher: RecordPublisher,
        *,
        retry_topic: str,
        max_job_bytes: int,
        guard: CrashGuard | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.max_job_bytes = max_job_bytes
        self._sleep = sleep  # every wait of a run (tests record them instead)
        self.guard = guard
        self._typed = typed_envelope(spec.payload_model)
        self.spec = spec
        self.retry_topic = retry_topic
        self.runtime = runtime
        self.publisher = publisher
        # Label lookups take a lock: resolve this job type's series once.
        self._duration = metrics.DURATION.labels(spec.job_type)
        self._ended = {
            outcome: metrics.JOBS.labels(spec.job_type, outcome)
            for outcome in (*(o.value for o in Outcome), "retry_topic", "dead_lettered")
        }

    async def run(self, record: Record) -> None:
        token = JOB_CONTEXT.set(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "job_type": self.spec.job_type,
            }
        )
        try:
            if self.guard is None:
                await self._run(record)
            elif self.spec.policy.max_crashes:
                await self._run_guarded(record, self.guard)
            else:
                await self._run_beside(record, self.guard.isolation)
        finally:
            JOB_CONTEXT.reset(token)

    async def _run_guarded(self, record: Record, guard: CrashGuard) -> None:
        tp = (record.topic, record.partition)
        entry = guard.enter_now(tp, record.offset) or await guard.enter(tp, record.offset)
        if not entry.alone:
            try:
                await self._run(record)
            finally:
                guard.isolation.release_shared()
            return
        finished = False
        try:
            if entry.crashes >= self.spec.policy.max_crashes:
                await self._crashed(record, entry.crashes)
            else:
                log.info("job.running_alone", deaths=entry.crashes)
                await self._run(record)
            finished = True
        finally:
            await guard.leave_alone(entry, finished)

    async def _run_beside(self, record: Record, isolation: Isolation) -> None:
        """A job type without the guard still waits while a suspect runs alone."""
        if not isolation.try_shared():
            await isolation.shared()
        try:
            await self._run(record)
        finally:
            isolation.release_shared()

    async def _run(self, record: Record) -> None:
        job = self._decode(record)
        if isinstance(job, Failure):
            await self._dead_letter(record, job, None)
            return
        bind_job(job_id=job.id)
        await self._run_job(record, job)

    async def _crashed(self, record: Record, crashes: int) -> None:
        """Dead-letter a record whose runs took the worker down ``crashes`` times."""
        limit = self.spec.policy.max_crashes
        summary = f"the worker died {crashes} times running this job; it is not run again"
        error = WorkerDied(f"{summary} (max_crashes={limit})")
        attempts = record.attempts_before + crashes
        # Decoding once more is safe enough to name the job and run its give-up
        # hook; if even that killed the worker, the next delivery skips both.
        job = self._decode(record) if crashes == limit else None
        if job is None or isinstance(job, Failure):
            failure = Failure(Stage.CRASHED, error, attempts)
            await self._dead_letter(record, failure, None)
            return
        bind_job(job_id=job.id)
        failure = Failure(Stage.CRASHED, error, attempts, job.type, job.id)
        decision = DeadLetter(f"crashed: {error}", summary)
        await self._give_up(job, decision)
        await self._dead_letter(record, failure, decision)

    def _decode_typed(self, value: bytes, attempts: int, origin: str) -> Job[BaseModel] | None:
        """One-pass validation of envelope and payload; None sends the caller the slow way.

        The slow way validates envelope and payload separately so that a bad
        message gets the precise reason.
        """
        try:
            envelope = self._typed.model_validate_json(value)
        except ValidationError:
            return None
        if envelope.type != self.spec.job_type:
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

    def _decode(self, record: Record) -> Job[BaseModel] | Failure:
        attempts = record.attempts_before + 1
        if record.value is None:
            return Failure(Stage.DECODE, PermanentError("message has no value"), attempts)
        if len(record.value) > self.max_job_bytes:
            error = PermanentError(
                f"message is {len(record.value) / 2**20:.1f} MB; "
                f"the limit for a job is {self.max_job_bytes / 2**20:.1f} MB"
            )
            return Failure(Stage.DECODE, error, attempts)
        topic, partition, offset, _ = record.origin()
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
        if envelope.type != self.spec.job_type:
            error = PermanentError(
                f"job type {envelope.type!r} does not belong on topic {record.topic!r}"
                f" (expected {self.spec.job_type!r})"
            )
            return Failure(Stage.VALIDATE, error, attempts, **ids)
        try:
            payload = self.spec.payload_model.model_validate(envelope.payload)
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

    async def _run_job(self, record: Record, job: Job[BaseModel]) -> None:
        deadline = job.deadline.timestamp() if job.deadline else None
        outages = 0
        while True:
            bind_job(attempt=job.attempt)
            error = await self._attempt(job, deadline)
            if error is None:
                return
            if is_outage(error):
                outages += 1
                wait_s = outage_wait_s(outages)
                metrics.DEPENDENCY_WAITS.labels(self.spec.job_type).inc()
                log.warning(
                    "job.waiting_for_dependency",
                    error=describe(error),
                    delay_s=round(wait_s, 3),
                    streak=outages,
                )
                await self._sleep(wait_s)
                continue
            outages = 0
            decision = decide(error, job.attempt, self.spec.policy)
            failure = Failure(stage_of(error), error, job.attempt, job.type, job.id)
            if isinstance(decision, RetryInPlace):
                metrics.RETRIES.labels(self.spec.job_type, "in_place").inc()
                log.warning(
                    "job.retrying",
                    error=describe(error),
                    delay_s=round(decision.delay_s, 3),
                    where="in_place",
                )
                await self._sleep(decision.delay_s)
                job = job.next_attempt()
                continue
            if isinstance(decision, RetryLater):
                not_before = datetime.now(UTC) + timedelta(seconds=decision.delay_s)
                await self.publisher.retry_later(record, failure, self.retry_topic, not_before)
                metrics.RETRIES.labels(self.spec.job_type, "retry_topic").inc()
                self._ended["retry_topic"].inc()
                log.warning(
                    "job.retrying",
                    error=describe(error),
                    delay_s=round(decision.delay_s, 3),
                    where="retry_topic",
                )
                return
            await self._give_up(job, decision)
            await self._dead_letter(record, failure, decision)
            return

    async def _attempt(self, job: Job[BaseModel], deadline: float | None) -> BaseException | None:
        assert self.spec.handler is not None
        timeout_s = self.spec.policy.timeout_s
        if deadline is not None:
            remaining = deadline - time.time()
            if remaining <= 0:
                return DeadlineExceeded("the job's deadline passed before it could run")
            timeout_s = min(timeout_s, remaining)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                outcome = await self.spec.handler(job, self.runtime.deps)
        except TimeoutError:
            return JobTimeout(f"job ran past its {timeout_s:.1f} s timeout")
        except Exception as exc:
            return exc
        duration_s = time.perf_counter() - started
        self._duration.observe(duration_s)
        self._ended[outcome.value].inc()
        log.info("job.succeeded", outcome=outcome.value, duration_s=round(duration_s, 4))
        return None

    async def _give_up(self, job: Job[BaseModel], decision: DeadLetter) -> None:
        hook = self.spec.on_give_up
        if hook is None:
            return
        # The summary lands in the job's own rows (e.g. an asset's error):
        # mask configured secrets there too, as in logs and dead letters.
        summary = self.publisher.mask(decision.summary)
        for attempt in range(1, GIVE_UP_HOOK_ATTEMPTS + 1):
            try:
                await asyncio.wait_for(hook(job, summary, self.runtime.deps), timeout=30)
                return
            except Exception as exc:
                log.warning("job.give_up_hook_failed", error=describe(exc), hook_attempt=attempt)
                await self._sleep(min(2.0**attempt, 10.0))

    async def _dead_letter(
        self, record: Record, failure: Failure, decision: DeadLetter | None
    ) -> None:
        await self.publisher.dead_letter(record, failure)
        self._ended["dead_lettered"].inc()
        metrics.DEAD_LETTERS.labels(self.spec.job_type, failure.stage.value).inc()
        reason = decision.reason if decision else describe(failure.error)
        log.error(
            "job.dead_lettered",
            stage=failure.stage.value,
            reason=reason,
            error_class=type(failure.error).__name__,
            attempts=failure.attempts,
        )
        alerts.dead_lettered(failure)


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
