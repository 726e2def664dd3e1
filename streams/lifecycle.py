"""The worker's moving parts: job pools, the offset tracker, the runtime, revoke and drain.

``Conveyor`` builds a pool per job type (and one for the dead-letter
mirror) with the agents that feed it, and owns what happens when partitions
go: at a revoke and at the shutdown drain, running jobs finish (bounded),
the finished offsets are committed until the broker took them, and the
crash guard is told the partitions ended cleanly.
"""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Any

import structlog

from streams import metrics
from streams.agents import flow_control, subscribe
from streams.consumer import TrackedConsumer
from streams.control import ControlPlane
from streams.crashguard import CrashGuard
from streams.fairness import Fairness
from streams.isolation import Isolation
from streams.kafka_health import assignment, coordinator_known
from streams.logs import SecretMasker
from streams.metrics import HealthServer
from streams.mirror import MirrorRunner
from streams.offsets import OffsetTracker
from streams.pool import JobPool
from streams.publish import RecordPublisher
from streams.records import Headers, Record
from streams.registry import JobSpec, Registry
from streams.runner import JobRunner
from streams.runtime import APPLICATION_NAME, Runtime
from streams.settings import Settings, secret_values
from streams.status import Sources, State, StatusReporter
from streams.tracing import OFF, Tracing
from streams.work_lag import WorkLag

if TYPE_CHECKING:
    from streams.app import ConveyorApp

log = structlog.get_logger(__name__)

# Commit calls at a revoke or the drain before giving up: one may only wait
# out a commit already in flight, the next then commits.
COMMIT_ATTEMPTS = 5
RELEASE_TIMEOUT_S = 5.0


class Conveyor:
    """The worker's moving parts: tracker, pools, runtime, and the drain."""

    def __init__(
        self, settings: Settings, registry: Registry, app: ConveyorApp, tracing: Tracing = OFF
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.app = app
        self.tracing = tracing  # tracing (issue 21): the runners' and the publisher's spans
        self.tracker: OffsetTracker[Any] = OffsetTracker(on_gap=self._seek_back)
        self.records = RecordPublisher(
            self._send,
            group_id=settings.kafka.group_id,
            dlq_topic=registry.dlq_topic,
            mask=SecretMasker(secret_values(settings)).mask,
            tracing=tracing,  # tracing (issue 21)
        )
        self.runtime = Runtime(settings, registry, self.records)
        self.isolation = Isolation(settings.worker.isolation_block_s)
        guarded = [s for s in registry.consumed if s.policy.max_crashes]
        self.guard = CrashGuard(
            settings.postgres.dsn.get_secret_value(),
            settings.kafka.group_id,
            {
                topic: spec.policy.max_crashes
                for spec in guarded
                for topic in (
                    spec.topic,
                    registry.retry_topic(spec),
                    registry.deferred_topic(spec),
                )
            },
            self.isolation,
            APPLICATION_NAME,
        )
        self.pools: list[JobPool] = []
        self.draining = asyncio.Event()
        self.joined = False  # set by the consumer on its first assignment
        # FLEET: pauses from the control topic (streams/control.py), status reports.
        self.control = ControlPlane(settings.kafka, registry.control_topic, registry.topics_of)
        self.control.on_change(self._control_changed)
        self.status = StatusReporter(
            settings,
            Sources(
                pools=lambda: self.pools,
                partitions=lambda: assignment(app),
                paused=self.control.pauses.labels,
                state=self._state,
                loop_lag_ms=lambda: self.runtime.loop_lag_ms,
            ),
        )
        w = settings.worker
        lag = WorkLag(app, self.tracker, (spec.topic for spec in registry.consumed))
        self._health = (
            HealthServer(
                w.metrics_host, w.metrics_port, self.ready, lag.refresh, self.control.pauses.labels
            )
            if w.metrics_port
            else None
        )

    def ready(self) -> bool:
        """Joined the group, not draining, the group coordinator reachable, no partition stuck.

        A partition is stuck when the crash guard found it claimed by a newer
        generation while this worker still holds it (its records cannot run).
        """
        return (
            self.joined
            and not self.draining.is_set()
            and coordinator_known(self.app)
            and not self.guard.stuck()
        )

    async def start(self) -> None:
        """Before any job runs: read the pauses, open the runtime and the guard, serve health."""
        await self.control.start()
        await self.runtime.open()
        await self.guard.open()
        await self.status.start()
        if self._health is not None:
            await self._health.start()
        # Everything made so far lives as long as the process: leave it out of
        # the collector's full passes, which otherwise stall the loop for
        # hundreds of milliseconds under a burst of short-lived objects.
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Once Faust has stopped: the reverse of ``start``."""
        if self._health is not None:
            await self._health.stop()
        await self.status.stop()
        await self.guard.close()
        await self.runtime.close()
        await self.control.stop()

    def _state(self) -> State:
        if self.draining.is_set():
            return "draining"
        return "running" if self.joined else "starting"

    def _control_changed(self) -> None:
        """FLEET: pauses changed: gate the paused types' pools, let held records go."""
        for pool in self.pools:
            pool.gate = self.control.gate_of(pool.name)
            pool.release_held()

    def on_starts(self, starts: dict[Any, int], ends: dict[Any, int]) -> None:
        """Where the consumer starts each assigned partition, and where its log ends now."""
        self.tracker.set_positions(starts)
        self.guard.assigned(starts, ends, self.app.consumer_generation_id)

    def _seek_back(self, tp: Any, offset: int) -> None:
        """Re-read a partition from ``offset``: the transport skipped records there."""
        consumer = self.app.consumer
        assert isinstance(consumer, TrackedConsumer)
        task = asyncio.ensure_future(consumer.seek_on_consumer_thread({tp: offset}))
        task.add_done_callback(_log_seek_failure)

    async def _send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        await self.app.producer.send_and_wait(
            topic, key, value, partition=None, timestamp=None, headers=list(headers)
        )

    def add_job_type(self, spec: JobSpec) -> None:
        runner = JobRunner(
            spec,
            self.runtime,
            self.records,
            retry_topic=self.registry.retry_topic(spec),
            max_job_bytes=self.settings.kafka.max_job_bytes,
            guard=self.guard,
            tracing=self.tracing,  # tracing (issue 21)
        )
        topics: tuple[str, ...] = (spec.topic, self.registry.retry_topic(spec))
        fairness = self._fairness(spec)
        if fairness is not None and fairness.set_aside is not None:
            topics += (fairness.deferred_topic,)
        pool = JobPool(
            spec.job_type,
            spec.policy.concurrency,
            runner.run,
            self.tracker,
            flow=flow_control(self.app, topics, self.draining),
            high_water=max(self.settings.kafka.backlog_records, 2 * spec.policy.concurrency),
            high_water_bytes=self.settings.kafka.backlog_bytes,
            ordering=spec.policy.ordering,
            fairness=fairness,
            gate=self.control.gate_of(spec.job_type),  # FLEET: runtime pauses
        )
        self.pools.append(pool)
        metrics.track_pool(spec.job_type, lambda: pool.in_flight, lambda: pool.waiting)
        metrics.track_held(spec.job_type, lambda: pool.held)
        if fairness is not None:
            metrics.ORGANIZATIONS.track(spec.job_type, pool.organization_counts)
        subscribe(self.app, topics[0], pool, delayed=False)
        subscribe(self.app, topics[1], pool, delayed=True)
        if len(topics) > 2:
            subscribe(self.app, topics[2], pool, delayed=False, trusted=True)

    def _fairness(self, spec: JobSpec) -> Fairness | None:
        """The job type's fair-share policy (None: ``fairness: none``)."""
        if spec.policy.fairness != "organization":
            return None
        deferred = self.registry.deferred_topic(spec)
        records = self.records

        async def set_aside(record: Record) -> None:
            await records.set_aside(record, deferred)

        f = self.settings.fairness
        return Fairness(
            source_topic=spec.topic,
            deferred_topic=deferred,
            set_aside=set_aside if spec.policy.ordering == "none" else None,
            weights=f.weight_map,
            max_running=f.max_running_per_organization,
        )

    def add_dlq_mirror(self) -> None:
        runner = MirrorRunner(self.runtime, self.settings.dlq_mirror)
        pool = JobPool(
            "dlq_mirror",
            1,
            runner.run,
            self.tracker,
            flow=flow_control(self.app, (self.registry.dlq_topic,), self.draining),
            high_water=self.settings.kafka.backlog_records,
            high_water_bytes=self.settings.kafka.backlog_bytes,
        )
        self.pools.append(pool)
        metrics.track_pool("dlq_mirror", lambda: pool.in_flight, lambda: pool.waiting)
        subscribe(self.app, self.registry.dlq_topic, pool, delayed=False)

    async def on_revoke(self, revoked: set[Any]) -> None:
        """Before partitions go: let their jobs finish (bounded), commit, forget."""
        if not revoked:
            return
        self.tracker.revoke(revoked)  # nothing new starts on them from here on
        timeout = self.settings.worker.rebalance_drain_timeout_s
        cancelled = sum(await asyncio.gather(*(p.drain(timeout, revoked) for p in self.pools)))
        # Nothing of these partitions runs any more: say so before the commit,
        # which may wait out a broker outage (the next owner must not blame
        # the records for a death that never happened).
        await self._release(revoked)
        committed, attempts, left = await self.commit_finished(revoked)
        if left:
            # Only when the broker refuses the commit (the group moved on without
            # this worker): the partitions' next owner runs these jobs again.
            log.error("worker.revoke_commit_failed", uncommitted=_named(left), attempts=attempts)
        self.tracker.forget(revoked)
        log.info(
            "worker.partitions_revoked",
            partitions=len(revoked),
            cancelled=cancelled,
            committed_offsets=len(committed),
            commit_attempts=attempts,
        )

    async def commit_finished(
        self, tps: set[Any] | None = None
    ) -> tuple[dict[Any, int], int, dict[Any, int]]:
        """Commit the finished offsets of ``tps`` (default: all) and check the broker took them.

        Faust's ``commit()`` returns False without committing while another
        commit (the periodic one) is in flight, and that one took its offsets
        before the last jobs finished. So commit until the tracker has nothing
        left to commit, a bounded number of times. Returns (offsets to commit
        at the start, commit calls made, offsets still not committed).
        """
        wanted = self._committable(tps)
        left, attempts = wanted, 0
        while left and attempts < COMMIT_ATTEMPTS:
            attempts += 1
            await self.app.consumer.commit(tps)
            left = self._committable(tps)
        return wanted, attempts, left

    async def _release(self, tps: set[Any] | None) -> None:
        """Tell the crash guard these partitions ended cleanly (no death to count)."""
        try:
            await asyncio.wait_for(self.guard.release(tps), RELEASE_TIMEOUT_S)
        except TimeoutError:
            # Postgres unreachable: the next owner counts one death for the
            # records that may have been running, and reruns them alone.
            log.warning("crashguard.release_timed_out", timeout_s=RELEASE_TIMEOUT_S)

    def _committable(self, tps: set[Any] | None) -> dict[Any, int]:
        if tps is None:
            return self.tracker.all_committable()
        return {tp: off for tp in tps if (off := self.tracker.committable(tp)) is not None}

    async def drain(self) -> None:
        """Stop taking work, finish what runs (up to the drain timeout), commit."""
        self.draining.set()
        for pool in self.pools:
            pool.accepting = False
        consumer = self.app.consumer
        assignment = consumer.assignment()
        if assignment:
            consumer.pause_partitions(assignment)
        in_flight = sum(p.in_flight for p in self.pools)
        timeout = self.settings.worker.drain_timeout_s
        log.info("worker.draining", in_flight=in_flight, drain_timeout_s=timeout)
        cancelled = sum(await asyncio.gather(*(p.drain(timeout) for p in self.pools)))
        await self._release(None)  # nothing runs any more, whatever the commit does
        committed, attempts, left = await self.commit_finished()
        if left:
            log.error("worker.drain_commit_failed", uncommitted=_named(left), attempts=attempts)
        log.info(
            "worker.drained",
            in_flight=in_flight,
            finished=in_flight - cancelled,
            cancelled=cancelled,
            committed_offsets=len(committed),
            commit_attempts=attempts,
        )


def _named(offsets: dict[Any, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": off for tp, off in list(offsets.items())[:200]}


def _log_seek_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("offsets.seek_failed", error=repr(task.exception()))
