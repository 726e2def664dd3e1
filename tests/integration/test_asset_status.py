"""Asset status only moves forward: stale copies and replays never leave an asset stuck.

The handler runs against the real Postgres and a local file server; two
copies of one job run concurrently in this process, and one is cancelled
mid-way, which leaves the database exactly as a killed worker would (its
last write stands, nothing after it happens).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest

from handlers.assets import process
from handlers.deps import Deps
from handlers.providers.embed import HashEmbedder
from handlers.types import Job, Outcome
from schemas.jobs import AssetProcess
from tests.support.fakes import RecordingJobPublisher, ThreadCpuPool
from tests.support.http import FileServer, file_server
from tests.support.policies import CHUNKING, EXTRACT, FETCH, KNOWLEDGE_GRAPH

pytestmark = pytest.mark.integration

A = TypeVar("A")
R = TypeVar("R")
TEXT = "\n\n".join(f"Paragraph {p}. " + " ".join(f"t{p}_{w}" for w in range(90)) for p in range(12))


class GatedEmbedder(HashEmbedder):
    """Embeds like HashEmbedder; each call first waits for the test to let it through."""

    def __init__(self) -> None:
        super().__init__(8)
        self.calls = 0
        self.changed = asyncio.Condition()
        self.gate = asyncio.Semaphore(0)

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]:
        async with self.changed:
            self.calls += 1
            self.changed.notify_all()
        await self.gate.acquire()
        return await super().embed(texts, organization_id)

    def let_through(self, calls: int) -> None:
        for _ in range(calls):
            self.gate.release()

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(30), self.changed:
            await self.changed.wait_for(lambda: self.calls >= n)


@dataclass
class Kit:
    db: asyncpg.Pool
    files: FileServer
    deps: Deps

    def with_embedder(self, embedder: Any) -> Deps:
        return replace(self.deps, embedder=embedder)


@pytest.fixture
async def kit(db: asyncpg.Pool) -> AsyncIterator[Kit]:
    async with file_server() as files, aiohttp.ClientSession() as http:
        deps = Deps(
            db=db,
            http=http,
            embedder=HashEmbedder(8),
            publisher=RecordingJobPublisher(),
            chunking=replace(CHUNKING, batch_size=4),
            fetch=replace(FETCH, allowed_hosts=("127.0.0.1:*",)),
            knowledge_graph=KNOWLEDGE_GRAPH,
            extract=EXTRACT,
            cpu=ThreadCpuPool(),
        )
        yield Kit(db, files, deps)


async def new_asset(kit: Kit) -> str:
    asset_id = f"st-{uuid.uuid4().hex[:10]}"
    url = kit.files.add(f"{asset_id}.txt", TEXT.encode())
    await kit.db.execute(
        "INSERT INTO assets (id, organization_id, source_url, mime_type)"
        " VALUES ($1, 'org-st', $2, 'text/plain')",
        asset_id,
        url,
    )
    return asset_id


def job(
    asset_id: str, job_id: str | None = None, origin: str = "jobs.asset.process:0:7", **kw: Any
) -> Job[AssetProcess]:
    return Job(
        job_id or str(uuid.uuid4()),
        "asset.process",
        1,
        "org-st",
        AssetProcess(asset_id=asset_id),
        created_at=kw.get("created_at", datetime.now(UTC)),
        origin=origin,
    )


async def state(kit: Kit, asset_id: str) -> tuple[str, int | None, int, list[int]]:
    row = await kit.db.fetchrow("SELECT status, chunks_count FROM assets WHERE id = $1", asset_id)
    indexes = await kit.db.fetch(
        "SELECT chunk_index FROM asset_chunks WHERE asset_id = $1 ORDER BY 1", asset_id
    )
    chunks = [r["chunk_index"] for r in indexes]
    return row["status"], row["chunks_count"], len(chunks), chunks


async def run_until_blocked(deps: Deps, the_job: Job[AssetProcess]) -> asyncio.Task[Outcome]:
    """Start the job and return once it waits in its first embedding call."""
    embedder = deps.embedder
    assert isinstance(embedder, GatedEmbedder)
    task = asyncio.create_task(process.handle(the_job, deps))
    arrived = asyncio.create_task(embedder.wait_calls(1))
    done, _ = await asyncio.wait({task, arrived}, timeout=30, return_when="FIRST_COMPLETED")
    assert arrived in done, f"the job ended before embedding: {task}"
    return task


async def test_a_stale_copy_killed_mid_way_leaves_the_completed_status(kit: Kit) -> None:
    asset_id = await new_asset(kit)
    the_job = job(asset_id)
    stale_embedder = GatedEmbedder()
    stale = await run_until_blocked(kit.with_embedder(stale_embedder), the_job)
    # The other copy of the same job (a redelivery) runs to the end meanwhile.
    assert await process.handle(the_job, kit.deps) is Outcome.SUCCEEDED
    completed = await state(kit, asset_id)
    assert completed[0] == "completed" and completed[1] == completed[2] > 8

    # The stale copy goes on: two batches embedded, progress written after each ...
    updated = await kit.db.fetchval("SELECT updated_at FROM assets WHERE id = $1", asset_id)
    stale_embedder.let_through(2)
    await stale_embedder.wait_calls(3)
    # ... and it is killed mid-way, in its third batch: whatever it wrote last stands.
    stale.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stale
    assert await state(kit, asset_id) == completed
    assert (
        await kit.db.fetchval("SELECT updated_at FROM assets WHERE id = $1", asset_id) == updated
    ), "no write of the stale copy landed"

    # A later redelivery of the same job is skipped by the ledger: still completed.
    assert await process.handle(the_job, kit.deps) is Outcome.SKIPPED
    assert await state(kit, asset_id) == completed


async def test_a_replay_of_a_completed_job_running_alongside_it_ends_completed(kit: Kit) -> None:
    asset_id = await new_asset(kit)
    original = job(asset_id)
    replay = replace(original, origin="jobs.asset.process:0:99")  # republished: a new offset
    replay_embedder = GatedEmbedder()
    replayed = await run_until_blocked(kit.with_embedder(replay_embedder), replay)
    assert await process.handle(original, kit.deps) is Outcome.SUCCEEDED
    completed = await state(kit, asset_id)
    replay_embedder.let_through(100)
    assert await replayed is Outcome.SKIPPED  # the ledger refused its chunks
    assert await state(kit, asset_id) == completed
    # Replayed again once everything settled: the ledger skips it at once.
    assert await process.handle(replace(replay, origin="x:0:1"), kit.deps) is Outcome.SKIPPED
    assert await state(kit, asset_id) == completed


async def test_a_replay_reopens_a_failed_asset_but_a_stale_copy_does_not(kit: Kit) -> None:
    asset_id = await new_asset(kit)
    the_job = job(asset_id)
    await process.on_give_up(the_job, "HTTP 503 from storage, 5 attempts", kit.deps)
    # A redelivery of the dead-lettered record (same run): the status stays final.
    assert await process.handle(the_job, kit.deps) is Outcome.SKIPPED
    assert (await state(kit, asset_id))[0] == "failed"
    # The replay from the dead-letter topic is a new run: it reopens and completes.
    replay = replace(the_job, origin="jobs.asset.process:0:500")
    assert await process.handle(replay, kit.deps) is Outcome.SUCCEEDED
    status, count, stored, indexes = await state(kit, asset_id)
    assert (
        status == "completed" and count == stored == len(indexes) and indexes == list(range(stored))
    )
    # A copy that then gives up cannot turn the completed job back into failed.
    await process.on_give_up(replay, "late failure of a stale copy", kit.deps)
    assert (await state(kit, asset_id))[0] == "completed"


async def test_an_older_job_never_reopens_what_a_newer_job_finished(kit: Kit) -> None:
    asset_id = await new_asset(kit)
    now = datetime.now(UTC)
    older = job(asset_id, created_at=now - timedelta(minutes=5), origin="t:0:1")
    newer = job(asset_id, created_at=now, origin="t:0:2")
    assert await process.handle(newer, kit.deps) is Outcome.SUCCEEDED
    assert await process.handle(older, kit.deps) is Outcome.SKIPPED
    assert (await state(kit, asset_id))[0] == "completed"
    # ... while a job newer than the one that finished it processes the asset again.
    newest = job(asset_id, created_at=now + timedelta(minutes=1), origin="t:0:3")
    assert await process.handle(newest, kit.deps) is Outcome.SUCCEEDED
    status, count, stored, _ = await state(kit, asset_id)
    assert status == "completed" and count == stored
