"""Reading a topic and a consumer group's committed offsets straight from the broker."""

from __future__ import annotations

from confluent_kafka import Consumer, Message, TopicPartition


def _consumer(bootstrap: str, group: str = "conveyor-test-reader") -> Consumer:
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return sorted(meta.partitions)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every record of ``topic`` from its start to its current end, in no particular order."""
    consumer = _consumer(bootstrap)
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in _partitions(consumer, topic)
        }
        wanted = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in wanted])
        records: list[Message] = []
        left = dict(wanted)
        while left:
            msg = consumer.poll(timeout_s)
            assert msg is not None, f"{topic}: no record within {timeout_s} s; missing {left}"
            assert msg.error() is None, msg.error()
            records.append(msg)
            if msg.offset() + 1 >= left.get(msg.partition(), 0):
                left.pop(msg.partition(), None)
        return records
    finally:
        consumer.close()


def committed_and_end(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``: (``group``'s committed offset or -1, end offset)."""
    consumer = _consumer(bootstrap, group)
    try:
        parts = _partitions(consumer, topic)
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {
            tp.partition: (
                tp.offset if tp.offset >= 0 else -1,
                consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)[1],
            )
            for tp in committed
        }
    finally:
        consumer.close()
