"""One Faust agent per topic: each delivered record goes to its job type's pool at once.

Faust delivers every topic of the worker through one loop, so an agent never
waits: a record fetched before the last rebalance is dropped (its
partition's owner reads it again), any other is handed to its pool — a
retry record with the time until it is due. Back-pressure is the pool's:
``flow_control`` stops and restarts fetching the pool's partitions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import structlog

from streams.pool import JobPool
from streams.pool_flow import FlowFn
from streams.records import Record

log = structlog.get_logger(__name__)


def subscribe(
    app: faust.App, topic_name: str, pool: JobPool, *, delayed: bool, trusted: bool = False
) -> None:
    """Run an agent on ``topic_name`` that feeds ``pool`` (``delayed``: a retry topic;
    ``trusted``: only Conveyor writes to it — a retry or deferred topic)."""
    topic = app.topic(
        topic_name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=False,
    )
    agent = _agent(app, pool, delayed, trusted or delayed)
    app.agent(topic, name=f"conveyor.{topic_name}", concurrency=1)(agent)


def _agent(app: faust.App, pool: JobPool, delayed: bool, trusted: bool | None = None) -> Any:
    trusted = delayed if trusted is None else trusted

    async def agent(stream: Any) -> None:
        # The stream's channel, not ``stream.events()``: Conveyor tracks
        # offsets itself, so Faust's per-event acking, sensors and
        # task-per-step iteration are cost without use here.
        async for event in stream.channel:
            message = event.message
            if message.generation_id != app.consumer_generation_id:
                _stale(message, app.consumer_generation_id)
                continue
            record = Record.from_faust(message, trusted=trusted)  # its headers: ours
            pool.submit(message.tp, record, record.due_in_s() if delayed else 0.0)

    return agent


def flow_control(app: faust.App, topics: tuple[str, ...], draining: asyncio.Event) -> FlowFn:
    """Stop or restart fetching this worker's partitions of ``topics`` (back-pressure).

    ``flow(pause_all, paused)``: stop every one of them, else stop exactly
    ``paused`` (partitions whose records wait behind busy keys, and topics
    named whole: a deferred topic while the read-ahead is full) and restart
    the rest.

    Uses Faust's buffer-full mechanism, not ``pause_partitions``: Faust's
    fetch loop silently drops the rest of an already-fetched batch for a
    partition that was paused meanwhile (its position has moved on), which
    would lose those records until the next rebalance. A "buffered"
    partition is no longer fetched, but its batch is still delivered.
    """

    def flow(pause_all: bool, paused: frozenset[Any]) -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            if pause_all or tp in paused or tp.topic in paused:
                consumer.on_buffer_full(tp)
            elif not draining.is_set():
                consumer.on_buffer_drop(tp)

    return flow


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
