"""The worker subprocess embeds through a throttling OpenAI-compatible API and still completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.runtime import APPLICATION_NAME
from tests.support.http import file_server
from tests.support.openai_server import API_KEY, Fault, fake_vector, openai_server
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

DIMS = 32
TEXT = "\n\n".join(
    f"Ada Lovelace wrote note {p}. " + " ".join(f"word{p}_{w}" for w in range(90)) for p in range(4)
)


def one_person(messages: list[dict[str, str]]) -> str:
    entities = (
        [{"type": "person", "name": "Ada Lovelace"}] if "Ada" in messages[1]["content"] else []
    )
    return json.dumps({"entities": entities, "relationships": []})


async def test_embedding_calls_throttled_by_429s_still_complete(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    async with file_server() as files, openai_server(chat_reply=one_person) as api:
        api.faults.extend(Fault.rate_limited("1", path="/embeddings") for _ in range(2))
        api.limit(per_minute=1200, burst=1)  # 20/s; the worker's own limiter allows far more
        asset_id = f"a-{uuid.uuid4().hex[:12]}"
        await db.execute(
            "INSERT INTO assets (id, organization_id, source_url, mime_type)"
            " VALUES ($1, $2, $3, 'text/plain')",
            asset_id,
            org,
            files.add("notes.txt", TEXT.encode()),
        )
        worker = worker_factory(
            stack,
            CONVEYOR_EMBEDDING__PROVIDER="openai",
            CONVEYOR_EMBEDDING__BASE_URL=api.base_url,
            CONVEYOR_EMBEDDING__API_KEY=API_KEY,
            CONVEYOR_EMBEDDING__DIMENSIONS=str(DIMS),
            CONVEYOR_EMBEDDING__BATCH_SIZE="1",
            CONVEYOR_EMBEDDING__REQUESTS_PER_MINUTE="60000",
            CONVEYOR_EMBEDDING__ORG_REQUESTS_PER_MINUTE="60000",
            CONVEYOR_EMBEDDING__MAX_RETRIES="8",
            CONVEYOR_LLM__BASE_URL=api.base_url,
            CONVEYOR_LLM__API_KEY=API_KEY,
        )
        worker.wait_ready()
        stack.publish(
            [
                JobEnvelope(
                    id=str(uuid.uuid4()),
                    type="asset.process",
                    organization_id=org,
                    payload={"asset_id": asset_id},
                )
            ]
        )
        ages: list[float] = []
        sampler = asyncio.create_task(_sample_transaction_ages(db, ages))
        try:
            row = await eventually(
                lambda: db.fetchrow(
                    "SELECT status, error, chunks_count FROM assets WHERE id=$1", asset_id
                ),
                lambda r: r is not None and r["status"] in ("completed", "failed"),
                what="asset finished",
            )
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        assert row["status"] == "completed", row["error"]
        chunks = await db.fetch(
            "SELECT content, embedding, embedding_model, embedding_dims FROM asset_chunks"
            " WHERE asset_id = $1 ORDER BY chunk_index",
            asset_id,
        )
        assert len(chunks) == row["chunks_count"] > 3
        for chunk in chunks:
            assert chunk["embedding_dims"] == DIMS
            assert chunk["embedding_model"] == "openai/text-embedding-3-small"
            assert chunk["embedding"] == pytest.approx(fake_vector(chunk["content"], DIMS))

        statuses = api.statuses("/embeddings")
        assert statuses.count(429) >= 3  # the two scripted ones and the server's own limit
        assert statuses.count(200) == len(chunks)  # one batch of one per chunk, none lost
        assert worker.count("provider.rate_limited") >= 3
        assert worker.count("job.retrying") == 0  # absorbed in the job, never failed it
        # Embedding took seconds (two 1 s Retry-After pauses), but no transaction
        # of the worker stayed open meanwhile: it is opened only to insert.
        assert len(ages) > 10
        assert max(ages) < 1.0, f"a worker transaction stayed open {max(ages):.2f} s"

        names = await eventually(
            lambda: db.fetch(
                "SELECT normalized_name FROM kg_entities WHERE organization_id = $1", org
            ),
            lambda rows: len(rows) > 0,
            what="knowledge graph extracted by the follow-up job",
        )
        assert [r["normalized_name"] for r in names] == ["ada lovelace"]


async def _sample_transaction_ages(db: asyncpg.Pool, ages: list[float]) -> None:
    """Every 50 ms until cancelled: the age of the oldest open transaction of the worker."""
    query = (
        "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8"
        " FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"
    )
    while True:
        ages.append(await db.fetchval(query, APPLICATION_NAME))
        await asyncio.sleep(0.05)
