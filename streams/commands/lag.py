"""``conveyor lag``: how far the consumer group is behind, per catalog topic.

Reads the group's committed offsets and each partition's end offset; it never
joins the group (no subscription), so running it next to the workers does
not trigger a rebalance. Lag counts records, not jobs still to do: a retry
topic's records may be waiting for their not-before time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from handlers.backoff import backoff_s
from streams.commands.topics import admin
from streams.kafka_config import confluent_config
from streams.registry import Registry
from streams.settings import Settings

TIMEOUT_S = 10.0
T = TypeVar("T")
ATTEMPTS = 5  # a coordinator still loading answers NOT_COORDINATOR for a few seconds


@dataclass(frozen=True, slots=True)
class TopicLag:
    topic: str
    partitions: int
    committed: int  # records the group has committed past (unset partitions count from the start)
    end: int  # records written (end offset minus the first retained offset)
    lag: int


@dataclass(frozen=True, slots=True)
class GroupLag:
    group_id: str
    state: str
    members: int
    topics: list[TopicLag]

    @property
    def total(self) -> int:
        return sum(t.lag for t in self.topics)


def group_consumer(settings: Settings) -> Consumer:
    """A consumer of the group's offsets that never joins it (no subscription, no commit)."""
    group = settings.kafka.group_id
    return Consumer(
        {**confluent_config(settings.kafka), "group.id": group, "enable.auto.commit": False}
    )


def group_lag(settings: Settings, registry: Registry) -> GroupLag:
    group = settings.kafka.group_id
    consumer = group_consumer(settings)
    try:
        topics = [_retrying(partial(_topic_lag, consumer, name)) for name in registry.job_topics()]
    finally:
        consumer.close()
    state, members = _retrying(partial(_describe, settings, group))
    return GroupLag(group, state, members, topics)


def _retrying(
    call: Callable[[], T], sleep: Callable[[float], None] = time.sleep, attempts: int = ATTEMPTS
) -> T:
    """``call()``, again after a short wait while Kafka says the error is retriable."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if attempt == attempts or not _passing(error):
                raise
            sleep(backoff_s(attempt, 0.5, 4.0, jitter=0.5))
    raise AssertionError("unreachable")


# Answers of a cluster that is still settling (a topic just created, a leader or
# coordinator moving): librdkafka does not always flag them retriable (the
# watermark call's NOT_LEADER_FOR_PARTITION is not), so they are named here.
SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
    }
)


def _passing(error: object) -> bool:
    """Whether a Kafka error is worth another try after a short wait."""
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in SETTLING)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    low: int  # the first retained offset
    committed: int  # the group's position (the log start when nothing is committed)
    end: int

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


def partition_lags(consumer: Consumer, topic: str) -> list[PartitionLag]:
    """The group's committed position and the log's end, per partition of ``topic``."""
    metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
    if metadata.error is not None:
        return []
    tps = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    found = []
    for tp in consumer.committed(tps, timeout=TIMEOUT_S):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(tp.topic, tp.partition), timeout=TIMEOUT_S
        )
        position = tp.offset if tp.offset >= 0 else low  # nothing committed: from the start
        position = max(position, low)  # committed before retention removed records
        found.append(PartitionLag(topic, tp.partition, low, position, high))
    return found


def _topic_lag(consumer: Consumer, topic: str) -> TopicLag:
    parts = partition_lags(consumer, topic)
    return TopicLag(
        topic,
        len(parts),
        sum(p.committed - p.low for p in parts),
        sum(p.end - p.low for p in parts),
        sum(p.lag for p in parts),
    )


def _describe(settings: Settings, group: str) -> tuple[str, int]:
    client = admin(settings)
    future = client.describe_consumer_groups([group], request_timeout=TIMEOUT_S)[group]
    description = future.result()
    state = getattr(description.state, "name", str(description.state))
    return state.lower(), len(description.members)
