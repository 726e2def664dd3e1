"""The Faust app: one agent per source and retry topic, feeding bounded job pools."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
import structlog

from schemas.dlq import H
from streams import metrics
from streams.consumer import TrackedConsumer, TrackedTransport
from streams.crashguard import CrashGuard
from streams.isolation import Isolation
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

log = structlog.get_logger("conveyor.worker")

# Commit calls at a revoke or the drain before giving up: one may only wait
# out a commit already in flight, the next then commits.
COMMIT_ATTEMPTS = 5
RELEASE_TIMEOUT_S = 5.0


class ConveyorApp(faust.App):
    """A Faust app whose consumer commits only what Conveyor says is finished."""

    conveyor: Conveyor

    def _new_transport(self) -> Any:
        return TrackedTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        await self.conveyor.runtime.open()
        await self.conveyor.guard.open()
        await self.conveyor.start_health()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.conveyor.stop_health()
        await self.conveyor.guard.close()
        await self.conveyor.runtime.close()


class Conveyor:
    """The worker's moving parts: tracker, pools, runtime, and the drain."""

    def __init__(self, settings: Settings, registry: Registry, app: ConveyorApp) -> None:
        self.settings = settings
        self.registry = registry
        self.app = app
        self.tracker: OffsetTracker[Any] = OffsetTracker(on_gap=self._seek_back)
        self.records = RecordPublisher(
            self._send,
            group_id=settings.kafka.group_id,
            dlq_topic=registry.dlq_topic,
            mask=SecretMasker(secret_values(settings)).mask,
        )
        self.runtime = Runtime(settings, registry, self.records)
        self.isolation = Isolation()
        guarded = [s for s in registry.consumed if s.policy.max_crashes]
        self.guard = CrashGuard(
            settings.postgres.dsn.get_secret_value(),
            settings.kafka.group_id,
            [t for s in guarded for t in (s.topic, registry.retry_topic(s))],
            self.isolation,
            APPLICATION_NAME,
        )
        self.pools: list[JobPool] = []
        self.draining = asyncio.Event()
        self.joined = False  # set by the consumer on its first assignment
        w = settings.worker
        self._health = (
            HealthServer(w.metrics_host, w.metrics_port, self.ready) if w.metrics_port else None
        )

    def ready(self) -> bool:
        return self.joined and not self.draining.is_set()

    async def start_health(self) -> None:
        if self._health is not None:
            await self._health.start()

    async def stop_health(self) -> None:
        if self._health is not None:
            await self._health.stop()

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
        runner: JobRunner | None = None

        async def run(record: Record) -> None:
            nonlocal runner
            if runner is None:
                runner = JobRunner(
                    spec,
                    self.registry,
                    self.runtime.deps,
                    self.records,
                    self.settings.kafka.max_job_bytes,
                    self.guard,
                )
            await runner.run(record)

        topics = (spec.topic, self.registry.retry_topic(spec))
        pool = JobPool(
            spec.job_type,
            spec.policy.concurrency,
            run,
            self.tracker,
            flow=self._flow_control(topics),
            high_water=max(self.settings.kafka.backlog_records, 2 * spec.policy.concurrency),
            high_water_bytes=self.settings.kafka.backlog_bytes,
        )
        self.pools.append(pool)
        metrics.track_pool(spec.job_type, lambda: pool.in_flight, lambda: pool.waiting)
        self._subscribe(topics[0], pool, delayed=False)
        self._subscribe(topics[1], pool, delayed=True)

    def add_dlq_mirror(self) -> None:
        runner: MirrorRunner | None = None

        async def run(record: Record) -> None:
            nonlocal runner
            if runner is None:
                runner = MirrorRunner(self.runtime.deps, self.settings.dlq_mirror)
            await runner.run(record)

        pool = JobPool(
            "dlq_mirror",
            1,
            run,
            self.tracker,
            flow=self._flow_control((self.registry.dlq_topic,)),
            high_water=self.settings.kafka.backlog_records,
            high_water_bytes=self.settings.kafka.backlog_bytes,
        )
        self.pools.append(pool)
        metrics.track_pool("dlq_mirror", lambda: pool.in_flight, lambda: pool.waiting)
        self._subscribe(self.registry.dlq_topic, pool, delayed=False)

    def _flow_control(self, topics: tuple[str, ...]) -> Callable[[bool], None]:
        """Stop or restart fetching this worker's partitions of ``topics`` (back-pressure).

        Uses Faust's buffer-full mechanism, not ``pause_partitions``: Faust's
        fetch loop silently drops the rest of an already-fetched batch for a
        partition that was paused meanwhile (its position has moved on), which
        would lose those records until the next rebalance. A "buffered"
        partition is no longer fetched, but its batch is still delivered.
        """

        def flow(pause: bool) -> None:
            consumer = self.app.consumer
            for tp in consumer.assignment():
                if tp.topic not in topics:
                    continue
                if pause:
                    consumer.on_buffer_full(tp)
                elif not self.draining.is_set():
                    consumer.on_buffer_drop(tp)

        return flow

    def _subscribe(self, topic_name: str, pool: JobPool, delayed: bool) -> None:
        topic = self.app.topic(
            topic_name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            acks=False,
        )
        agent = self._agent(pool, delayed)
        self.app.agent(topic, name=f"conveyor.{topic_name}", concurrency=1)(agent)

    def _agent(self, pool: JobPool, delayed: bool) -> Any:
        app = self.app

        async def agent(stream: Any) -> None:
            # The stream's channel, not ``stream.events()``: Conveyor tracks
            # offsets itself, so Faust's per-event acking, sensors and
            # task-per-step iteration are cost without use here.
            async for event in stream.channel:
                message = event.message
                if message.generation_id != app.consumer_generation_id:
                    _stale(message, app.consumer_generation_id)
                    continue
                record = Record.from_faust(message)
                pool.submit(message.tp, record, _due_in_s(record) if delayed else 0.0)

        return agent

    async def on_revoke(self, revoked: set[Any]) -> None:
        """Before partitions go: let their jobs finish (bounded), commit, forget."""
        if not revoked:
            return
        self.tracker.revoke(revoked)  # nothing new starts on them from here on
        timeout = self.settings.worker.rebalance_drain_timeout_s
        cancelled = sum(await asyncio.gather(*(p.drain(timeout, revoked) for p in self.pools)))
        committed, attempts, left = await self.commit_finished(revoked)
        await self._release(revoked)  # before the next owner claims them
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
        committed, attempts, left = await self.commit_finished()
        await self._release(None)
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


def _stale(message: Any, generation: int) -> None:
    """A record fetched before the last rebalance, delivered after it: not ours to run.

    Faust delivers to a full queue through a put task, which can wait out a
    rebalance and deliver afterwards. Its partition's new owner (this worker
    or another) reads it again from where that owner starts.
    """
    log.info(
        "worker.stale_dropped",
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        generation=message.generation_id,
        current_generation=generation,
    )


def _log_seek_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("offsets.seek_failed", error=repr(task.exception()))


def _due_in_s(record: Record) -> float:
    """Seconds until a retry record's not-before time (0 when due or unreadable)."""
    value = record.header(H.NOT_BEFORE)
    if not value:
        return 0.0
    try:
        due = datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    return max(0.0, (due - datetime.now(UTC)).total_seconds())


def build_app(settings: Settings, registry: Registry) -> ConveyorApp:
    kafka = settings.kafka
    app = ConveyorApp(
        kafka.group_id,
        broker=[f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",")],
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="conveyor-faust-"),
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_replication_factor=kafka.replication_factor,
        topic_partitions=kafka.topic_partitions,
        stream_wait_empty=False,
        stream_buffer_maxsize=kafka.buffer_per_partition,
        # Bounded deliveries keep the pools' backlogs short and fair across partitions.
        broker_max_poll_records=kafka.max_poll_records,
        broker_commit_interval=kafka.commit_interval_s,
        broker_commit_every=1_000_000_000,
        broker_session_timeout=kafka.session_timeout_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=kafka.max_message_bytes,
        consumer_max_fetch_size=kafka.max_message_bytes,
    )
    conveyor = Conveyor(settings, registry, app)
    app.conveyor = conveyor
    for spec in registry.consumed:
        conveyor.add_job_type(spec)
    if settings.dlq_mirror.enabled:
        conveyor.add_dlq_mirror()
    return app
