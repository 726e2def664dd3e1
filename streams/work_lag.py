"""The worker's own consumer lag: work more replicas could take, per job-topic partition.

The broker's lag of a partition (end offset - committed offset) is what
Kafka exporters and KEDA's Kafka scaler see. Conveyor commits the end of
each partition's run of *finished* offsets, so one record that does not
finish — a job retrying in place, a job that crashes its worker each time —
holds the committed offset while every record behind it is run and
finished: the broker's lag then grows with all that finished work, and an
autoscaler on it adds replicas up to its maximum for a single poison pill.

``conveyor_consumer_lag{topic, partition}`` counts, for each partition of a
job's source topic assigned to this worker,

    (end offset - the next offset this worker will take)      not taken yet
  + records taken and not finished (waiting or running)         unfinished here

so finished records behind a stuck one are left out; a stuck record counts
once, however long it is stuck. Retry topics are left out (their records
are jobs that already failed, waiting for a time, not for capacity), and so
is the dead-letter topic (finished work). The end offsets come from the
brokers on each scrape (cached ``MAX_AGE_S``), so a partition paused for
back-pressure still reports what piles up behind it; when they cannot be
read the partition reports nothing rather than a stale figure.

A record run at the time of a crash is redelivered after the restart, from
the committed offset: until the records behind it are taken again (the
idempotency ledger skips them quickly) they count as not taken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from streams import metrics
from streams.kafka_health import assigned_partitions, assignment
from streams.offsets import OffsetTracker

log = structlog.get_logger(__name__)

MAX_AGE_S = 5.0
TIMEOUT_S = 3.0


class WorkLag:
    """Refreshes ``conveyor_consumer_lag`` and ``conveyor_assigned_partitions`` on a scrape."""

    def __init__(
        self,
        app: Any,
        tracker: OffsetTracker[Any],
        topics: Iterable[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._tracker = tracker
        self._topics = frozenset(topics)
        self._clock = clock
        self._at = -MAX_AGE_S
        self._failing = False

    async def refresh(self) -> None:
        metrics.ASSIGNED_PARTITIONS.set(assigned_partitions(self._app))
        if self._clock() - self._at < MAX_AGE_S:
            return
        self._at = self._clock()
        tps = [tp for tp in assignment(self._app) if tp.topic in self._topics]
        lags: dict[Any, int] = {}
        if tps:
            try:
                lags = await asyncio.wait_for(self._lags(tps), TIMEOUT_S)
            except Exception as exc:  # the brokers are gone or slow: no figure, not a stale one
                if not self._failing:
                    log.warning("metrics.lag_unavailable", error=repr(exc)[:300])
                self._failing = True
            else:
                self._failing = False
        metrics.WORK_LAG.clear()
        for tp, lag in lags.items():
            metrics.WORK_LAG.labels(tp.topic, str(tp.partition)).set(lag)

    async def _lags(self, tps: list[Any]) -> dict[Any, int]:
        """Per partition: records not taken yet plus records taken and not finished."""
        consumer = self._app.consumer
        ends = await consumer.highwaters(*tps)
        starts = {tp: self._tracker.next_offset(tp) for tp in tps}
        # Nothing taken here yet (e.g. paused for back-pressure before its first
        # record): it starts at its committed offset, else at the log start.
        committed = getattr(consumer, "_committed_offset", {})
        for tp in [tp for tp, start in starts.items() if start is None]:
            starts[tp] = committed.get(tp)
        unknown = [tp for tp, start in starts.items() if start is None]
        if unknown:
            starts.update(await consumer.earliest_offsets(*unknown))
        return {
            tp: max(0, ends[tp] - start) + self._tracker.pending(tp)
            for tp, start in starts.items()
            if start is not None and ends.get(tp) is not None
        }
