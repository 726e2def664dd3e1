"""``asset.process`` over fake Deps: every way the handler ends, and what it leaves behind.

The database is the in-memory FakeDb, extraction runs in a thread, the
embedder is the local HashEmbedder and follow-up jobs are recorded; the
file comes from a real loopback file server. The integration ring runs the
same handler against Postgres (test_asset_pipeline, test_asset_status).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import pytest

from handlers.assets import process
from handlers.assets.netguard import Allowlist, guarded_connector_kwargs
from handlers.cpu_pool import CpuMemoryExceeded, CpuTimeout, CpuWorkerLost
from handlers.deps import Deps
from handlers.errors import PermanentError, RetryableError
from handlers.providers.embed import HashEmbedder
from handlers.types import Job, Outcome
from schemas.jobs import AssetProcess
from tests.support.documents import words
from tests.support.fake_db import FakeDb
from tests.support.fakes import RecordingJobPublisher, ThreadCpuPool
from tests.support.http import FileServer, file_server
from tests.support.policies import CHUNKING, EXTRACT, FETCH, KNOWLEDGE_GRAPH

TEXT = "\n\n".join(words(150, seed=p) for p in range(8))  # about 7,000 characters


@dataclass
class Kit:
    db: FakeDb
    files: FileServer
    published: RecordingJobPublisher
    cpu: ThreadCpuPool
    deps: Deps

    def job(self, asset_id: str = "a-1", job_id: str = "job-1") -> Job[AssetProcess]:
        return Job(job_id, "asset.process", 1, "org-1", AssetProcess(asset_id=asset_id))

    def asset(self, asset_id: str = "a-1", body: str = TEXT) -> str:
        self.db.add_asset(asset_id, self.files.add(f"{asset_id}.txt", body.encode()))
        return asset_id


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    fetch = replace(FETCH, allowed_hosts=("127.0.0.1:*",))
    connector = aiohttp.TCPConnector(**guarded_connector_kwargs(Allowlist(fetch.allowed_hosts)))
    async with file_server() as files, aiohttp.ClientSession(connector=connector) as http:
        db, published, cpu = FakeDb(), RecordingJobPublisher(), ThreadCpuPool()
        deps = Deps(
            db=db,
            http=http,
            embedder=HashEmbedder(16),
            publisher=published,
            chunking=replace(CHUNKING, batch_size=4),
            fetch=fetch,
            knowledge_graph=KNOWLEDGE_GRAPH,
            extract=EXTRACT,
            cpu=cpu,
        )
        yield Kit(db, files, published, cpu, deps)


async def test_an_asset_is_chunked_embedded_stored_and_followed_by_its_graph_job(kit: Kit) -> None:
    asset_id = kit.asset()
    assert await process.handle(kit.job(), kit.deps) is Outcome.SUCCEEDED
    chunks = kit.db.tables.chunks[asset_id]
    assert len(chunks) >= 12, "about 7,000 characters in chunks of at most 600"
    assert [row[1] for row in chunks] == list(range(len(chunks))), "chunk indexes in order"
    assert all(len(str(row[3])) <= CHUNKING.size for row in chunks)
    assert {(row[9], row[10]) for row in chunks} == {("hash-16", 16)}
    statuses = [(w.status, w.progress) for w in kit.db.writes]
    assert statuses[0] == ("processing", 0) and statuses[-1] == ("completed", 100)
    progress = [p for s, p in statuses if s == "processing"]
    assert progress == sorted(progress), "progress only moves forward"
    assert kit.db.writes[-1].chunks_count == len(chunks)
    assert kit.db.tables.processed == {"job-1": "succeeded"}
    [(follow_up, key)] = kit.published.published
    assert (follow_up.id, follow_up.type, key) == ("job-1:kg", "knowledge_graph.extract", b"a-1")
    assert follow_up.payload == {"asset_id": asset_id}


async def test_a_missing_asset_is_permanent_and_writes_nothing(kit: Kit) -> None:
    with pytest.raises(PermanentError, match="asset a-1 does not exist"):
        await process.handle(kit.job(), kit.deps)
    assert kit.db.writes == [] and kit.published.published == []


async def test_a_job_already_in_the_ledger_only_publishes_its_follow_up_again(kit: Kit) -> None:
    kit.asset()
    kit.db.tables.processed["job-1"] = "succeeded"
    assert await process.handle(kit.job(), kit.deps) is Outcome.SKIPPED
    assert kit.files.hits == {} and kit.db.writes == []
    assert [e.id for e, _ in kit.published.published] == ["job-1:kg"]


async def test_a_status_made_final_by_a_newer_job_is_left_alone(kit: Kit) -> None:
    kit.asset()
    kit.db.refuse_status = True
    assert await process.handle(kit.job(), kit.deps) is Outcome.SKIPPED
    assert kit.files.hits == {} and kit.cpu.calls == 0 and kit.published.published == []


class OtherDeliveryFinishes(HashEmbedder):
    """Embeds; on its first call another delivery of the job commits its chunks meanwhile."""

    def __init__(self, db: FakeDb, asset_id: str) -> None:
        super().__init__(16)
        self.db, self.asset_id = db, asset_id

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]:
        if "job-1" not in self.db.tables.processed:
            self.db.tables.processed["job-1"] = "succeeded"
            self.db.tables.chunks[self.asset_id] = [("theirs",)] * 3
        return await super().embed(texts, organization_id)


async def test_a_delivery_that_lost_the_race_stores_nothing_and_settles_the_status(
    kit: Kit,
) -> None:
    asset_id = kit.asset()
    deps = replace(kit.deps, embedder=OtherDeliveryFinishes(kit.db, asset_id))
    assert await process.handle(kit.job(), deps) is Outcome.SKIPPED
    assert kit.db.tables.chunks[asset_id] == [("theirs",)] * 3, "the winner's chunks stay"
    last = kit.db.writes[-1]
    assert (last.status, last.chunks_count, last.progress) == ("completed", 3, 100)
    assert kit.published.published == [], "the winner published the follow-up"


@pytest.mark.parametrize(
    ("failure", "raised", "reason"),
    [
        (CpuTimeout(), PermanentError, "took longer than the 120 s limit"),
        (CpuMemoryExceeded(512 * 2**20), PermanentError, "needs more than 512 MB"),
        (CpuWorkerLost("killed"), RetryableError, "the extraction process stopped: killed"),
    ],
)
async def test_extraction_failures_map_to_the_error_taxonomy(
    kit: Kit, failure: BaseException, raised: type[Exception], reason: str
) -> None:
    kit.asset()
    deps = replace(kit.deps, cpu=ThreadCpuPool(failure))
    with pytest.raises(raised, match=reason):
        await process.handle(kit.job(), deps)
    assert kit.db.tables.chunks == {} and kit.db.tables.processed == {}


async def test_extraction_never_runs_on_the_event_loop(kit: Kit) -> None:
    kit.asset()
    with pytest.raises(RuntimeError, match="must not run on the event loop"):
        await process.handle(kit.job(), replace(kit.deps, cpu=None))


async def test_giving_up_marks_the_asset_failed_with_a_bounded_reason(kit: Kit) -> None:
    asset_id = kit.asset()
    await process.on_give_up(kit.job(), "x" * 5000, kit.deps)
    [write] = kit.db.writes
    assert (write.asset_id, write.status) == (asset_id, "failed")
    assert write.error is not None and len(write.error) == 2000 and write.error.endswith("…")
    await process.on_give_up(kit.job(), "   ", kit.deps)
    assert kit.db.writes[-1].error == "processing failed"
