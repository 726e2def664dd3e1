"""Records near the size limit: their dead letters fit, the partition flows, replay reads them back.

Topics here take 64 KiB records. A job with 65 KB of its own headers fails
for good, and a 65 KB value is too large for a job: their dead letters (the
raw record plus Conveyor's headers) would not fit the dead-letter topic.
Before, the publisher resent such a dead letter forever (~46,000 sends seen):
the slot, the partition's commit and the key stayed stuck, and every restart
did it again. Now each dead letter leaves out what does not fit, says so, and
``conveyor dlq replay`` reads the original back from its source topic.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.commands import dlq, dlq_replay
from tests.support.dlq import wait_dlq
from tests.support.kafka import committed_and_end
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
BLOB = b"h" * 65_000  # the job fits (64 KiB); with the dead letter's headers it does not


async def test_dead_letters_of_records_near_the_limit_fit_and_replay_reads_them_back(
    services: Any, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack = Stack(
        services.bootstrap,
        services.dsn,
        {
            "CONVEYOR_KAFKA__TOPIC_PARTITIONS": "1",
            "CONVEYOR_KAFKA__MAX_MESSAGE_BYTES": str(LIMIT),
            "CONVEYOR_KAFKA__MAX_JOB_BYTES": "4096",
        },
    )
    stack.create_topics()
    worker = worker_factory(stack, **PROBE_ENV)
    worker.wait_ready()
    topic = stack.registry().topic_for("probe")
    heavy = JobEnvelope(id="heavy-headers", type="probe", payload={"fail": "permanent"})
    after = probe_jobs(20, max_sleep_ms=5)
    producer = stack.producer()
    errors: list[object] = []
    for value, key, headers in (
        (heavy.to_bytes(), b"k1", [("blob", BLOB)]),
        (b"v" * 65_200, b"k2", []),  # too large for a job: stage decode
    ):  # one record per request: the topic takes 64 KiB batches
        producer.produce(
            topic, value, key, headers=headers, on_delivery=lambda e, _m: errors.append(e)
        )
        assert producer.flush(30) == 0
    assert errors == [None, None], "both records fit the topic"
    stack.publish(after)

    await wait_done(db, after, what="the jobs behind them ran")
    rows = await wait_dlq(db, stack, 2)
    by_stage = {r["stage"]: r for r in rows}
    headers_row, value_row = by_stage["handle"], by_stage["decode"]
    assert headers_row["job_id"] == heavy.id and not headers_row["raw_value"]
    assert "left out its value,key,headers" in headers_row["mirror_note"]
    assert value_row["raw_value"] is None and value_row["raw_key"] == b"k2"
    assert "left out its value (65200 bytes)" in value_row["mirror_note"]
    assert f"{topic}:0:" in value_row["mirror_note"], "where the original is"
    assert worker.count("publish.dead_letter_too_large") >= 2
    group = f"{stack.prefix}-group"
    await eventually(
        lambda: _committed(stack, group, topic),
        lambda pair: pair[0] == pair[1],
        what="the partition committed to its end",
    )

    report = await dlq_replay.replay(stack.settings(), dlq.Selection(ids=[headers_row["id"]]))
    assert report.replayed == [headers_row["id"]] and report.failed == {}
    again = await wait_dlq(db, stack, 3)
    [replayed] = [r for r in again if r["id"] not in (headers_row["id"], value_row["id"])]
    assert replayed["job_id"] == heavy.id, "the original (value, key, 65 KB header) was replayed"
    assert replayed["stage"] == "handle"
    assert worker.proc.poll() is None


async def _committed(stack: Stack, group: str, topic: str) -> tuple[int, int]:
    return committed_and_end(stack.bootstrap, group, topic)[0]
