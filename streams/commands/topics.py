"""Create and check the catalog's topics with the Kafka admin API."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.kafka_config import confluent_config
from streams.registry import Registry
from streams.settings import Settings

# The fleet topics keep the last record per key (a pause, a worker's report): compacted,
# in short segments so that superseded reports are cleaned within minutes, not days.
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": str(1024 * 1024),
}


@dataclass(frozen=True, slots=True)
class TopicResult:
    name: str
    created: bool


def admin(settings: Settings) -> AdminClient:
    return AdminClient(confluent_config(settings.kafka))


def existing_topics(settings: Settings, timeout_s: float = 10.0) -> set[str]:
    metadata = admin(settings).list_topics(timeout=timeout_s)
    return set(metadata.topics)


def missing_topics(settings: Settings, registry: Registry) -> list[str]:
    have = existing_topics(settings)
    return [t for t in registry.all_topics() if t not in have]


def create_topics(
    settings: Settings, registry: Registry, timeout_s: float = 30.0
) -> list[TopicResult]:
    """Create every catalog topic that does not exist yet (idempotent)."""
    k = settings.kafka
    config = {"max.message.bytes": str(k.max_message_bytes)}
    new = [
        NewTopic(
            name,
            num_partitions=k.topic_partitions,
            replication_factor=k.replication_factor,
            config=config,
        )
        for name in registry.job_topics()
    ]
    new += [
        NewTopic(name, num_partitions=1, replication_factor=k.replication_factor, config=COMPACTED)
        for name in registry.fleet_topics()
    ]
    client = admin(settings)  # must outlive the futures
    futures = client.create_topics(new, request_timeout=timeout_s)
    results = []
    for name, future in futures.items():
        try:
            future.result()
            results.append(TopicResult(name, True))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            results.append(TopicResult(name, False))
    return sorted(results, key=lambda r: r.name)
