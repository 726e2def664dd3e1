"""Which subscribed topics the leader's metadata lacks at an assignment (streams/assignor.py)."""

from __future__ import annotations

from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.metadata import MetadataResponse_v1

from streams.assignor import missing_partitions


def _cluster(topics: dict[str, int]) -> ClusterMetadata:
    """aiokafka's own metadata, filled from a metadata answer naming ``topics``."""
    cluster = ClusterMetadata()
    partitions = {t: [(0, p, 1, [1], [1]) for p in range(n)] for t, n in topics.items()}
    response = MetadataResponse_v1(
        [(1, "127.0.0.1", 9092, None)],
        1,
        [(0, t, False, parts) for t, parts in partitions.items()],
    )
    cluster.update_metadata(response)
    return cluster


def test_complete_metadata_misses_nothing() -> None:
    cluster = _cluster({"a": 3, "b": 3})
    assert missing_partitions(cluster, ["a", "b"], {"a": 3, "b": 3}) == {}


def test_a_topic_the_answer_lacks_is_missing() -> None:
    cluster = _cluster({"a": 3})
    assert missing_partitions(cluster, ["a", "b"], {}) == {"b": 0}


def test_fewer_partitions_than_ever_seen_are_missing() -> None:
    cluster = _cluster({"a": 2, "b": 3})
    assert missing_partitions(cluster, ["a", "b"], {"a": 3, "b": 3}) == {"a": 2}


def test_more_partitions_than_seen_are_not() -> None:
    cluster = _cluster({"a": 6})
    assert missing_partitions(cluster, ["a"], {"a": 3}) == {}
