"""Run one consumed record to its end: decode → validate → bind → timeout → handle → decide.

``run()`` returns only when the record is *finished*: the job succeeded, or
was handed to the retry topic, or to the dead-letter topic, with the
broker's acknowledgement. Cancellation (drain, revoke) propagates and leaves
the record unfinished, so its offset is never committed.

While a record's code runs (decoding it, each attempt of its handler) the
run holds the crash guard's gate (``Hold``): shared, or alone for a record
on its last chance after deaths it may have caused; past ``max_crashes``
such a record is dead-lettered (stage ``crashed``) without running again.
Nothing is held while the run waits — between attempts, for a dependency,
or for the broker to take a retry or dead-letter record. See
``streams/crashguard.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import BaseModel

from handlers.backoff import backoff_s
from handlers.errors import DeadlineExceeded, JobTimeout, PermanentError
from handlers.types import Job
from schemas.dlq import Stage
from streams.crashguard import SHARED, CrashGuard, Entry
from streams.decode import Decoder
from streams.logs import JOB_CONTEXT, bind_job
from streams.publish import Failure, RecordPublisher, RecordTooLarge
from streams.records import Record
from streams.registry import JobSpec
from streams.report import JobReport
from streams.retry import (
    DeadLetter,
    Decision,
    RetryInPlace,
    RetryTopic,
    WaitForDependency,
    decide,
    describe,
)
from streams.runtime import DepsSource
from streams.tracing import OFF, RecordTrace, Tracing

log = structlog.get_logger(__name__)

GIVE_UP_HOOK_ATTEMPTS = 5
GIVE_UP_HOOK_TIMEOUT_S = 30.0


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
        tracing: Tracing = OFF,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.publisher = publisher
        self.retry_topic = retry_topic
        self.guard = guard
        self.tracing = tracing  # a span per attempt, when on (streams/tracing.py)
        self._decoder = Decoder(spec.job_type, spec.payload_model, max_job_bytes)
        self._report = JobReport(spec.job_type)
        self._sleep = sleep  # every wait of a run (tests record them instead)

    async def run(self, record: Record) -> None:
        token = JOB_CONTEXT.set(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "job_type": self.spec.job_type,
            }
        )
        hold = Hold(self.guard, self.spec.policy.max_crashes > 0, record)
        try:
            await self._run(record, hold, self.tracing.record(record))
        finally:
            if not hold.drop_now():
                await hold.drop()
            JOB_CONTEXT.reset(token)

    async def _run(self, record: Record, hold: Hold, trace: RecordTrace) -> None:
        entry = hold.take_now() or await hold.take()
        limit = self.spec.policy.max_crashes
        if limit and entry.crashes >= limit:
            with trace.attempt(None) as span:
                span.decided(await self._crashed(record, entry.crashes, hold))
        else:
            if entry.alone:
                log.info("job.running_alone", deaths=entry.crashes)
            job = self._decoder.decode(record)
            if isinstance(job, Failure):
                await hold.drop()
                error = job.error
                decision = DeadLetter(describe(error), str(error), job.stage)
                with trace.attempt(None) as span:
                    await self._dead_letter(record, job, decision)
                    span.decided(decision)
            else:
                bind_job(job_id=job.id)
                await self._run_job(record, job, hold, trace)
        hold.finished()

    async def _crashed(self, record: Record, crashes: int, hold: Hold) -> DeadLetter:
        """Dead-letter a record whose runs took the worker down ``crashes`` times."""
        limit = self.spec.policy.max_crashes
        summary = f"the worker died {crashes} times running this job; it is not run again"
        error = WorkerDied(f"{summary} (max_crashes={limit})")
        attempts = record.attempts_before + crashes
        decision = DeadLetter(f"crashed: {error}", summary, Stage.CRASHED)
        # Decoding once more (alone) is safe enough to name the job and run its
        # give-up hook; if even that killed the worker, the next delivery skips both.
        job = self._decoder.decode(record) if crashes == limit else None
        if job is None or isinstance(job, Failure):
            await hold.drop()
            failure = Failure(Stage.CRASHED, error, attempts)
            await self._dead_letter(record, failure, decision)
            return decision
        bind_job(job_id=job.id)
        await self._give_up(job, decision, hold)
        await hold.drop()
        failure = Failure(Stage.CRASHED, error, attempts, job.type, job.id)
        await self._dead_letter(record, failure, decision)
        return decision

    async def _run_job(
        self, record: Record, job: Job[BaseModel], hold: Hold, trace: RecordTrace
    ) -> None:
        """Attempt the job until it succeeds or the decision ends it; one span per attempt."""
        outages = 0
        while True:
            bind_job(attempt=job.attempt)
            if hold.entry is None:
                await hold.take()
            with trace.attempt(job) as span:
                error = await self._attempt(job)
                if error is None:
                    return
                if not hold.drop_now():  # nothing is held while the run decides, publishes, waits
                    await hold.drop()
                decision = await self._settle(record, job, error, outages)
                span.decided(decision)
            match decision:
                case RetryTopic() | DeadLetter():
                    return
                case RetryInPlace():
                    job, outages = job.next_attempt(), 0
                case WaitForDependency(streak=streak):
                    outages = streak
            await self._sleep(decision.delay_s)

    async def _settle(
        self, record: Record, job: Job[BaseModel], error: BaseException, outages: int
    ) -> Decision:
        """Decide what a failed attempt leads to, carry it out (publish), report it."""
        decision = decide(error, job.attempt, self.spec.policy, job.deadline, outages=outages)
        failure = Failure(decision.stage, error, job.attempt, job.type, job.id)
        match decision:
            case RetryTopic(delay_s=delay):
                due = datetime.now(UTC) + timedelta(seconds=delay)
                try:
                    await self.publisher.retry_later(record, failure, self.retry_topic, due)
                except RecordTooLarge:  # the retry topic cannot hold it: give up now
                    summary = f"too large for the retry topic: {describe(error)}"
                    decision = DeadLetter(summary, summary, decision.stage)
                    await self._give_up(job, decision)
                    await self.publisher.dead_letter(record, failure)
            case DeadLetter():
                await self._give_up(job, decision)
                await self.publisher.dead_letter(record, failure)
        self._report.failed(decision, failure)
        return decision

    async def _attempt(self, job: Job[BaseModel]) -> BaseException | None:
        """Run the handler once, under the job's timeout and deadline; its error, or None."""
        assert self.spec.handler is not None
        timeout_s = self.spec.policy.timeout_s
        if job.deadline is not None:
            remaining = job.deadline.timestamp() - time.time()
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
        self._report.succeeded(outcome, time.perf_counter() - started)
        return None

    async def _give_up(
        self, job: Job[BaseModel], decision: DeadLetter, hold: Hold | None = None
    ) -> None:
        """Run the job type's give-up hook (retried; ``hold`` is let go between tries)."""
        hook = self.spec.on_give_up
        if hook is None:
            return
        # The summary lands in the job's own rows (e.g. an asset's error):
        # mask configured secrets there too, as in logs and dead letters.
        summary = self.publisher.mask(decision.summary)
        for attempt in range(1, GIVE_UP_HOOK_ATTEMPTS + 1):
            try:
                hooked = hook(job, summary, self.runtime.deps)
                await asyncio.wait_for(hooked, timeout=GIVE_UP_HOOK_TIMEOUT_S)
                return
            except Exception as exc:
                log.warning("job.give_up_hook_failed", error=describe(exc), hook_attempt=attempt)
                if hold is not None:
                    await hold.drop()
                await self._sleep(backoff_s(attempt, 2.0, 10.0, jitter=0.0))
                if hold is not None:
                    await hold.take()

    async def _dead_letter(self, record: Record, failure: Failure, decision: DeadLetter) -> None:
        await self.publisher.dead_letter(record, failure)
        self._report.failed(decision, failure)


class Hold:
    """What one record's run holds while its code runs: the crash guard's leave to run.

    ``take()`` waits for it (shared, or alone for a suspect on its last
    chance); ``drop()`` lets it go — before every wait, so that nothing
    sleeps holding the gate. A job type without the guard (``max_crashes``
    0) still waits while a suspect of another type runs alone. The common
    case (shared, granted at once) costs no coroutine: ``take_now`` and
    ``drop_now``.
    """

    __slots__ = ("_guard", "_guarded", "_offset", "_tp", "entry")

    def __init__(self, guard: CrashGuard | None, guarded: bool, record: Record) -> None:
        self._guard = guard
        self._guarded = guarded
        self._tp = (record.topic, record.partition)
        self._offset = record.offset
        self.entry: Entry | None = None

    def take_now(self) -> Entry | None:
        """The leave to run if it is granted at once (held already, or shared), else None."""
        if self.entry is not None:
            return self.entry
        guard = self._guard
        if guard is None:
            entry: Entry | None = SHARED
        elif self._guarded:
            entry = guard.enter_now(self._tp, self._offset)
        else:
            entry = SHARED if guard.isolation.try_shared() else None
        self.entry = entry
        return entry

    async def take(self) -> Entry:
        entry = self.take_now()
        if entry is not None:
            return entry
        guard = self._guard
        assert guard is not None
        if self._guarded:
            entry = await guard.enter(self._tp, self._offset)
        else:
            await guard.isolation.shared()
            entry = SHARED
        self.entry = entry
        return entry

    def drop_now(self) -> bool:
        """Let go of a shared leave at once; False when a lone one needs ``await drop()``."""
        entry = self.entry
        if entry is None:
            return True
        if entry.alone:
            return False
        self.entry = None
        if self._guard is not None:
            self._guard.isolation.release_shared()
        return True

    async def drop(self) -> None:
        if self.drop_now():
            return
        entry, self.entry = self.entry, None
        assert entry is not None and self._guard is not None
        await self._guard.leave_alone(entry)

    def finished(self) -> None:
        """The record's run ended for good here: its guard count (if any) is forgotten."""
        if self._guard is not None and self._guarded:
            self._guard.finished(self._tp, self._offset)
