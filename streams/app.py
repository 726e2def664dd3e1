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
from streams.consumer import TrackedTransport
from streams.kafka_config import faust_options
from streams.kafka_health import coordinator_known
from streams.logs import SecretMasker
from streams.metrics import HealthServer
from streams.mirror import MirrorRunner
from streams.offsets import OffsetTracker
from streams.pool import JobPool
from streams.publish import RecordPublisher
from streams.records import Headers, Record
from streams.registry import JobSpec, Registry
from streams.runner import JobRunner
from streams.runtime import Runtime
from streams.settings import Settings, secret_values
from streams.work_lag import WorkLag

log = structlog.get_logger("conveyor.worker")


class ConveyorApp(faust.App):
    """A Faust app whose consumer commits only what Conveyor says is finished."""

    conveyor: Conveyor

    def _new_transport(self) -> Any:
        return TrackedTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        await self.conveyor.runtime.open()
        await self.conveyor.start_health()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.conveyor.stop_health()
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
        self.pools: list[JobPool] = []
        self.draining = asyncio.Event()
        self.joined = False  # set by the consumer on its first assignment
        w = settings.worker
        lag = WorkLag(app, self.tracker, (spec.topic for spec in registry.consumed))
        self._health = (
            HealthServer(w.metrics_host, w.metrics_port, self.ready, lag.refresh)
            if w.metrics_port
            else None
        )

    def ready(self) -> bool:
        return self.joined and not self.draining.is_set() and coordinator_known(self.app)

    async def start_health(self) -> None:
        if self._health is not None:
            await self._health.start()

    async def stop_health(self) -> None:
        if self._health is not None:
            await self._health.stop()

    def _seek_back(self, tp: Any, offset: int) -> None:
        """Re-read a partition from ``offset``: the transport skipped records there."""
        task = asyncio.ensure_future(self.app.consumer.seek(tp, offset))
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
        async def agent(stream: Any) -> None:
            # The stream's channel, not ``stream.events()``: Conveyor tracks
            # offsets itself, so Faust's per-event acking, sensors and
            # task-per-step iteration are cost without use here.
            async for event in stream.channel:
                message = event.message
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
        offsets = {tp: off for tp in revoked if (off := self.tracker.committable(tp)) is not None}
        if offsets:
            await self.app.consumer.commit(revoked)
        self.tracker.forget(revoked)
        log.info(
            "worker.partitions_revoked",
            partitions=len(revoked),
            cancelled=cancelled,
            committed_offsets=len(offsets),
        )

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
        offsets = self.tracker.all_committable()
        await consumer.commit()
        log.info(
            "worker.drained",
            in_flight=in_flight,
            finished=in_flight - cancelled,
            cancelled=cancelled,
            committed_offsets=len(offsets),
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
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=kafka.max_message_bytes,
        consumer_max_fetch_size=kafka.max_message_bytes,
        **faust_options(kafka),  # TLS and SASL for its consumer and producer
    )
    conveyor = Conveyor(settings, registry, app)
    app.conveyor = conveyor
    for spec in registry.consumed:
        conveyor.add_job_type(spec)
    if settings.dlq_mirror.enabled:
        conveyor.add_dlq_mirror()
    return app
