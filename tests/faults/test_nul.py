"""NUL characters (``\\u0000``), which Postgres text and jsonb refuse, stall nothing.

- a dead letter carrying NULs is mirrored (what can be stored is stored, the
  rest flagged) and the dead letters after it are mirrored too;
- extracted text with a NUL is indexed, the NUL dropped;
- a payload with a NUL fails at once at validation, not after five attempts.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer

from schemas.envelope import JobEnvelope
from tests.support.assets import insert_asset
from tests.support.dlq import wait_dlq
from tests.support.http import file_server
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _raw_job(asset_id: str) -> bytes:
    """An asset.process job as the platform might send it (the model refuses NULs)."""
    envelope = {"id": str(uuid.uuid4()), "type": "asset.process", "organization_id": "org-1"}
    return json.dumps({**envelope, "payload": {"asset_id": asset_id}}).encode()


def _produce(stack: Stack, topic: str, records: list[tuple[bytes, bytes, list[Any]]]) -> None:
    prod = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all"})
    for key, value, headers in records:
        prod.produce(topic, value, key, headers=headers, partition=0)
    assert prod.flush(30) == 0


async def test_a_dead_letter_with_nul_characters_does_not_stall_the_mirror(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    poisoned = _raw_job("a\u0000b")
    assert b"\\u0000" in poisoned
    records = [
        (
            b"key\x00one",
            poisoned,
            [
                ("conveyor-error-message", b"asset a\x00b does not exist"),
                ("conveyor-job-type", b"asset.process"),
                ("conveyor-attempts", b"1"),
                ("trace-id", b"t\x001"),
            ],
        ),
        # jsonb refuses a lone surrogate that JSON allows: the full row fails in Postgres.
        (b"key-two", b'{"text": "\\ud800"}', [("conveyor-error-message", b"surrogate")]),
        (b"key-three", b'{"plain": "json"}', [("conveyor-error-message", b"an ordinary failure")]),
    ]
    worker = worker_factory(stack)
    worker.wait_ready()
    _produce(stack, f"{stack.prefix}.dlq", records)

    rows = await wait_dlq(db, stack, 3, timeout_s=30)
    first, refused, second = rows
    assert bytes(first["raw_value"]) == poisoned, "the raw bytes are kept unchanged"
    assert bytes(first["raw_key"]) == b"key\x00one"
    assert first["payload"] is None, "a payload jsonb cannot hold is stored as raw bytes only"
    assert first["error_message"] == "asset ab does not exist"
    assert first["job_type"] == "asset.process" and first["attempts"] == 1
    assert json.loads(first["headers"])["trace-id"] == "t1"
    assert "NUL" in first["mirror_note"]
    assert bytes(refused["raw_value"]) == b'{"text": "\\ud800"}'
    assert refused["payload"] is None and refused["error_message"] is None
    assert "stored without its headers and payload" in refused["mirror_note"]
    assert bytes(second["raw_value"]) == b'{"plain": "json"}'
    assert json.loads(second["payload"]) == {"plain": "json"}
    assert second["mirror_note"] is None
    worker.stop()
    assert not [e for e in worker.events if e.get("event") == "dlq.mirror_retrying"]


async def test_extracted_text_with_a_nul_is_indexed_without_it(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    # Past the first 8 KiB, where the sniffer looks for binary data.
    text = ("Plain words for the index. " * 400) + "before\x00after " + ("More words. " * 50)
    async with file_server() as files:
        asset_id = await insert_asset(db, files.add("nul.txt", text.encode()))
        worker = worker_factory(stack)
        worker.wait_ready()
        job = JobEnvelope(
            type="asset.process", organization_id="org-1", payload={"asset_id": asset_id}
        )
        stack.publish([job])
        row = await eventually(
            lambda: db.fetchrow("SELECT status, error FROM assets WHERE id = $1", asset_id),
            lambda r: r is not None and r["status"] in ("completed", "failed"),
            timeout_s=60,
            what="the asset finished",
        )
    assert row["status"] == "completed", row["error"]
    contents = await db.fetch("SELECT content FROM asset_chunks WHERE asset_id = $1", asset_id)
    assert any("beforeafter" in r["content"] for r in contents)
    assert not any(e.get("event") == "job.retrying" for e in worker.events)


async def test_a_payload_with_a_nul_fails_at_once_at_validation(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    worker = worker_factory(stack)
    worker.wait_ready()
    job = _raw_job("x\u0000")
    stack.publish([], raw=[job], topic=stack.registry().topic_for("asset.process"))
    [row] = await wait_dlq(db, stack, 1, timeout_s=30)
    assert row["stage"] == "validate" and row["attempts"] == 1, row
    assert "payload.asset_id contains a NUL" in row["error_message"]
    assert row["payload"] is None and bytes(row["raw_value"]) == job
    assert "NUL" in row["mirror_note"]
    assert not any(e.get("event") == "job.retrying" for e in worker.events)
