"""Faust's partition assignor, made again when the metadata it assigned from was incomplete.

The group's leader assigns partitions from its own copy of the cluster
metadata. Right after a broker restart or a leader election the broker can
answer a metadata request without some topics (an error for the topic) or
without some of their partitions. Faust's assignor then logs "Ignoring
missing topic" and hands those partitions to nobody; aiokafka notices that
the metadata changed — and asks the group to rebalance — only at its next
metadata refresh, ``metadata_max_age_ms`` later (Faust's default: five
minutes). Until then nobody consumes those partitions, and nothing says so:
every worker is healthy, the lag just grows (seen in the compound-fault soak:
a whole fleet idle after a broker restart; docs/RELIABILITY.md).

So after assigning, the leader checks the metadata it used: every topic the
group subscribes to must be there, with at least as many partitions as it
has ever had (Kafka never removes partitions). If not, it logs
``worker.assignment_incomplete`` and refreshes the metadata every
``REFRESH_S`` until it is complete; the refreshed metadata differs from the
snapshot aiokafka took at the assignment, so aiokafka asks for a rebalance,
and the next assignment covers every partition. ``kafka.metadata_max_age_s``
bounds whatever this check cannot see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from faust.assignor import PartitionAssignor

log = structlog.get_logger(__name__)

REFRESH_S = 1.0
REFRESH_ATTEMPTS = 120  # then the periodic refresh (kafka.metadata_max_age_s) takes over


def missing_partitions(
    cluster: Any, topics: Iterable[str], seen: Mapping[str, int]
) -> dict[str, int]:
    """Subscribed topics the metadata lacks or shows with fewer partitions than ``seen``:
    topic -> partitions in the metadata (0: the topic is missing)."""
    short: dict[str, int] = {}
    for topic in topics:
        count = len(cluster.partitions_for_topic(topic) or ())
        if count == 0 or count < seen.get(topic, 0):
            short[topic] = count
    return short


class ConveyorAssignor(PartitionAssignor):
    """Faust's assignor; an assignment from incomplete metadata is followed by a rebalance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: dict[str, int] = {}  # the most partitions each topic was seen with
        self._refreshing: asyncio.Task[None] | None = None

    def assign(self, cluster: Any, member_metadata: Any) -> Any:
        topics = {t for meta in member_metadata.values() for t in meta.subscription}
        short = missing_partitions(cluster, topics, self._seen)
        for topic in topics:
            count = len(cluster.partitions_for_topic(topic) or ())
            self._seen[topic] = max(self._seen.get(topic, 0), count)
        assignment = super().assign(cluster, member_metadata)
        if short:
            log.warning(
                "worker.assignment_incomplete",
                topics=dict(sorted(short.items())[:50]),
                missing_topics=len(short),
            )
            self._refresh_until_complete(cluster, topics)
        return assignment

    def _refresh_until_complete(self, cluster: Any, topics: set[str]) -> None:
        """Refresh the metadata (on aiokafka's loop: ``assign`` runs on it) until complete."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        client = self._client()
        if client is None:
            return
        self._refreshing = asyncio.get_running_loop().create_task(
            self._refresh(client, cluster, topics), name="assignment-metadata-refresh"
        )

    def _client(self) -> Any:
        """aiokafka's client of this worker's consumer (None before it exists)."""
        thread = getattr(self.app.consumer, "_thread", None)
        consumer = getattr(thread, "_consumer", None)
        return getattr(consumer, "_client", None)

    async def _refresh(self, client: Any, cluster: Any, topics: set[str]) -> None:
        for attempt in range(1, REFRESH_ATTEMPTS + 1):
            await asyncio.sleep(REFRESH_S)
            try:
                await client.force_metadata_update()
            except Exception as exc:  # a broker still down: the next attempt asks again
                log.info("worker.assignment_refresh_failed", attempt=attempt, error=repr(exc)[:200])
                continue
            if not missing_partitions(cluster, topics, self._seen):
                # aiokafka compares this metadata with its snapshot of the
                # assignment's and asks the group to rebalance.
                log.info("worker.assignment_metadata_complete", attempts=attempt)
                return
