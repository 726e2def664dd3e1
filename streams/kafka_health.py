"""What the worker's Kafka consumer knows about its broker, for readiness and metrics.

Faust runs aiokafka's consumer in a thread of its own; these functions read
its state (plain attributes, no I/O) from the worker's loop.

*Connected* means the consumer knows its group coordinator. aiokafka forgets
it the moment a request to it fails (a heartbeat every
``heartbeat_interval``, or a commit) and looks it up again until a broker
answers, so ``/readyz`` turns 503 within seconds of the brokers going away
and 200 again once the group is reachable — while the worker keeps its
process, its partitions and its unfinished work.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP


def _aiokafka_consumer(app: Any) -> Any:
    """aiokafka's consumer inside Faust's consumer thread, or None before it starts."""
    try:
        return app.consumer._thread._consumer
    except AttributeError:
        return None


def coordinator_known(app: Any) -> bool:
    """True while the consumer knows its group's coordinator (the broker answers it)."""
    consumer = _aiokafka_consumer(app)
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and coordinator.coordinator_id is not None


def assignment(app: Any) -> set[TP]:
    """The partitions assigned to this worker now (none before it joined its group)."""
    consumer = _aiokafka_consumer(app)
    if consumer is None:
        return set()
    return {TP(tp.topic, tp.partition) for tp in consumer.assignment()}


def assigned_partitions(app: Any) -> int:
    """How many partitions are assigned to this worker now."""
    return len(assignment(app))
