"""Read a fleet topic (control or status) from the beginning, then follow it.

The fleet topics are compacted and have one partition: the last record of
each key is the state. A :class:`TopicFollower` is a plain aiokafka consumer
outside any consumer group (nothing is committed, no rebalance is caused):
``start()`` returns once every record written before it was called has been
handed to ``on_record``, and the records after it follow within
``poll_ms``. :func:`write_record` is the one writer of both topics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka_config import aiokafka_options
from streams.settings import KafkaSettings

log = structlog.get_logger(__name__)

OnRecord = Callable[[bytes | None, bytes | None], None]
PARTITION = 0  # the fleet topics have one partition (conveyor topics create)
POLL_MS = 200
RETRY_S = 1.0


class FollowError(Exception):
    """The topic could not be read to its end in time."""


class TopicFollower:
    """Hands every record of ``topic`` to ``on_record(key, value)``, oldest first."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, on_record: OnRecord, *, poll_ms: int = POLL_MS
    ) -> None:
        self.topic = topic
        self._kafka = kafka
        self._on_record = on_record
        self._poll_ms = poll_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()

    async def start(self, timeout_s: float = 30.0) -> None:
        """Read the topic up to its current end (raise FollowError after ``timeout_s``)."""
        consumer = AIOKafkaConsumer(
            **aiokafka_options(self._kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"conveyor-follow-{self.topic}",
        )
        self._consumer = consumer
        try:
            await asyncio.wait_for(self._catch_up(consumer), timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.stop()
            raise FollowError(f"cannot read {self.topic}: {type(exc).__name__}: {exc}") from None
        self._task = asyncio.create_task(self._follow(consumer), name=f"follow-{self.topic}")

    async def _catch_up(self, consumer: AIOKafkaConsumer) -> None:
        await consumer.start()
        tp = TopicPartition(self.topic, PARTITION)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            self._deliver(await consumer.getmany(tp, timeout_ms=self._poll_ms))
        self.caught_up.set()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                self._deliver(await consumer.getmany(timeout_ms=self._poll_ms))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: aiokafka reconnects; keep following
                log.warning("fleet.follow_failed", topic=self.topic, error=repr(exc)[:300])
                await asyncio.sleep(RETRY_S)

    def _deliver(self, batches: dict[TopicPartition, list[object]]) -> None:
        for records in batches.values():
            for record in records:
                try:
                    self._on_record(record.key, record.value)  # type: ignore[attr-defined]
                except Exception:  # one unreadable record never stops the others
                    log.exception("fleet.record_unreadable", topic=self.topic)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()


async def read_topic(
    kafka: KafkaSettings, topic: str, on_record: OnRecord, timeout_s: float
) -> None:
    """Hand every record of ``topic`` written so far to ``on_record``, then stop."""
    follower = TopicFollower(kafka, topic, on_record)
    await follower.start(timeout_s)
    await follower.stop()


class FleetWriter:
    """Writes records to the fleet topics, each acknowledged by every in-sync replica."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            **aiokafka_options(self._kafka), acks="all", client_id="conveyor-fleet"
        )
        await producer.start()
        self._producer = producer

    async def write(self, topic: str, key: bytes, value: bytes | None, timeout_s: float) -> None:
        assert self._producer is not None, "FleetWriter.start() first"
        send = self._producer.send_and_wait(topic, value, key=key, partition=PARTITION)
        await asyncio.wait_for(send, timeout_s)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


async def write_record(
    kafka: KafkaSettings, topic: str, key: bytes, value: bytes | None, timeout_s: float = 30.0
) -> None:
    """Write one record (a command's pause or resume) and wait for the broker's ack."""
    writer = FleetWriter(kafka)
    await writer.start()
    try:
        await writer.write(topic, key, value, timeout_s)
    finally:
        await writer.stop()
