"""knowledge_graph.extract against the real Postgres and a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from handlers.deps import Deps
from handlers.errors import PermanentError, RetryableError
from handlers.knowledge_graph import extract as knowledge_graph
from handlers.providers.embed import HashEmbedder
from handlers.providers.limits import Budget, RateLimits
from handlers.providers.llm import OpenAIChat
from handlers.providers.openai_api import ApiClient
from handlers.types import Job, Outcome
from schemas.jobs import KnowledgeGraphExtract
from streams.providers import api_config
from tests.support.fakes import NoFollowUps
from tests.support.openai_server import API_KEY, OpenAIServer, openai_server
from tests.support.policies import CHUNKING, EXTRACT, FETCH, KNOWLEDGE_GRAPH, SETTINGS

pytestmark = pytest.mark.integration

KNOWN = {"ada lovelace": "person", "charles babbage": "person", "acme corp": "organization"}
FACTS = [("ada lovelace", "acme corp", "works_at"), ("charles babbage", "ada lovelace", "knows")]


def rule_based_llm(messages: list[dict[str, str]]) -> str:
    """Extract the KNOWN names (spelled as in the text) and the FACTS between them."""
    text = messages[1]["content"]
    found: dict[str, str] = {}
    for key in KNOWN:
        match = re.search(re.escape(key).replace(r"\ ", r"\s+"), text, re.IGNORECASE)
        if match:
            found[key] = match.group(0) + "."  # trailing punctuation, as LLMs do
    entities = [{"type": KNOWN[k], "name": name, "confidence": 0.7} for k, name in found.items()]
    rels = [
        {"source": found[s].upper(), "target": found[t], "type": kind, "confidence": 0.6}
        for s, t, kind in FACTS
        if s in found and t in found
    ]
    return json.dumps({"entities": entities, "relationships": rels})


@dataclass
class Kit:
    db: asyncpg.Pool
    server: OpenAIServer
    deps: Deps
    org: str


@pytest.fixture
async def kit(db: asyncpg.Pool) -> AsyncIterator[Kit]:
    async with openai_server(chat_reply=rule_based_llm) as server, aiohttp.ClientSession() as s:
        llm_settings = SETTINGS.llm.model_copy(
            update={
                "base_url": server.base_url,
                "api_key": SecretStr(API_KEY),
                "model": "test-llm",
                "timeout_s": 5.0,
                "max_retries": 1,
            }
        )
        config = api_config(llm_settings, SETTINGS.llm.timeout_s, "LLM API")
        llm = OpenAIChat(ApiClient(s, config, RateLimits(Budget(60_000))), 1024)
        deps = Deps(
            db=db,
            http=s,
            embedder=HashEmbedder(8),
            publisher=NoFollowUps(),
            chunking=CHUNKING,
            fetch=FETCH,
            extract=EXTRACT,
            llm=llm,
            knowledge_graph=replace(KNOWLEDGE_GRAPH, batch_chars=200, output_attempts=2),
        )
        yield Kit(db, server, deps, f"org-{uuid.uuid4().hex[:8]}")


async def add_asset(kit: Kit, texts: list[str], org: str | None = None) -> str:
    asset_id = f"kg-{uuid.uuid4().hex[:10]}"
    organization = org or kit.org
    await kit.db.execute(
        "INSERT INTO assets (id, organization_id, source_url, mime_type, status)"
        " VALUES ($1, $2, 'http://example.invalid/x', 'text/plain', 'completed')",
        asset_id,
        organization,
    )
    await kit.db.executemany(
        "INSERT INTO asset_chunks (asset_id, chunk_index, organization_id, content, char_start,"
        " char_end, embedding, embedding_model, embedding_dims)"
        " VALUES ($1, $2, $3, $4, 0, length($4), '{0}', 'hash-1', 1)",
        [(asset_id, i, organization, text) for i, text in enumerate(texts)],
    )
    return asset_id


def job(asset_id: str, job_id: str | None = None) -> Job[KnowledgeGraphExtract]:
    payload = KnowledgeGraphExtract(asset_id=asset_id)
    return Job(job_id or str(uuid.uuid4()), "knowledge_graph.extract", 1, None, payload)


async def entities(kit: Kit, org: str | None = None) -> list[tuple[str, str, str]]:
    rows = await kit.db.fetch(
        "SELECT type, normalized_name, name FROM kg_entities WHERE organization_id = $1"
        " ORDER BY 1, 2",
        org or kit.org,
    )
    return [(r["type"], r["normalized_name"], r["name"]) for r in rows]


async def relationships(kit: Kit) -> list[tuple[str, str, str, float]]:
    rows = await kit.db.fetch(
        """
        SELECT s.normalized_name AS source, t.normalized_name AS target, r.type, r.confidence
        FROM kg_relationships r
        JOIN kg_entities s ON s.id = r.source_id JOIN kg_entities t ON t.id = r.target_id
        WHERE r.organization_id = $1 ORDER BY 1, 2, 3
        """,
        kit.org,
    )
    return [(r["source"], r["target"], r["type"], r["confidence"]) for r in rows]


async def outcome(kit: Kit, job_id: str) -> str | None:
    value = await kit.db.fetchval("SELECT outcome FROM processed_jobs WHERE job_id = $1", job_id)
    return None if value is None else str(value)


async def test_entities_are_deduplicated_across_assets_and_relationships_upserted(
    kit: Kit,
) -> None:
    first = await add_asset(kit, ["Ada Lovelace works at Acme Corp.", "Nothing here."])
    second = await add_asset(kit, ["ADA  LOVELACE met charles babbage", "at ACME corp"])
    other_org = f"{kit.org}-other"
    third = await add_asset(kit, ["Ada Lovelace"], org=other_org)

    run = job(first)
    assert await knowledge_graph.handle(run, kit.deps) is Outcome.SUCCEEDED
    assert await outcome(kit, run.id) == "succeeded"
    assert await knowledge_graph.handle(job(second), kit.deps) is Outcome.SUCCEEDED
    assert await knowledge_graph.handle(job(third), kit.deps) is Outcome.SUCCEEDED

    assert await entities(kit) == [
        ("organization", "acme corp", "Acme Corp."),
        ("person", "ada lovelace", "Ada Lovelace."),  # the first spelling seen is kept
        ("person", "charles babbage", "charles babbage."),
    ]
    assert [e[:2] for e in await entities(kit, other_org)] == [("person", "ada lovelace")]
    expected = [
        ("ada lovelace", "acme corp", "works_at", pytest.approx(0.6)),
        ("charles babbage", "ada lovelace", "knows", pytest.approx(0.6)),
    ]
    assert await relationships(kit) == expected

    # Redelivery of a finished job and a fresh re-run of the same asset add nothing.
    assert await knowledge_graph.handle(run, kit.deps) is Outcome.SKIPPED
    assert await knowledge_graph.handle(job(second), kit.deps) is Outcome.SUCCEEDED
    assert len(await entities(kit)) == 3
    assert await relationships(kit) == expected


async def test_concurrent_jobs_of_one_organization_share_entities(kit: Kit) -> None:
    assets = [
        await add_asset(kit, [f"Ada Lovelace, Charles Babbage and Acme Corp, take {i}"])
        for i in range(6)
    ]
    outcomes = await asyncio.gather(*(knowledge_graph.handle(job(a), kit.deps) for a in assets))
    assert outcomes == [Outcome.SUCCEEDED] * 6
    assert [e[1] for e in await entities(kit)] == ["acme corp", "ada lovelace", "charles babbage"]


async def test_chunks_are_read_in_pages_and_sent_once_in_batches(kit: Kit) -> None:
    texts = [f"chunk-{i:03d} " + "x" * 40 for i in range(450)]  # crosses two page boundaries
    asset_id = await add_asset(kit, texts)
    assert await knowledge_graph.handle(job(asset_id), kit.deps) is Outcome.SUCCEEDED
    sent = [m[1]["content"] for m in kit.server.chat_requests]
    seen = re.findall(r"chunk-(\d{3})", "\n".join(sent))
    assert seen == [f"{i:03d}" for i in range(450)]
    assert all(len(batch) < 200 + 450 for batch in sent)  # ~batch_chars plus headers
    assert len(sent) >= 450 * 50 // 200


async def test_invalid_llm_output_is_retried_and_never_recorded_as_success(kit: Kit) -> None:
    asset_id = await add_asset(kit, ["Ada Lovelace works at Acme Corp."])
    kit.server.chat_reply = lambda messages: '{"entities": [{"type": "person"}]}'
    failing = job(asset_id)
    with pytest.raises(RetryableError, match=r"no usable extraction in 2 attempt\(s\)"):
        await knowledge_graph.handle(failing, kit.deps)
    assert len(kit.server.chat_requests) == 2
    assert "not usable" in kit.server.chat_requests[1][-1]["content"]  # the repair prompt
    assert await outcome(kit, failing.id) is None
    assert await entities(kit) == []

    replies = iter(["this is not JSON", rule_based_llm([{}, {"content": "Ada Lovelace"}])])
    kit.server.chat_reply = lambda messages: next(replies)
    assert await knowledge_graph.handle(failing.next_attempt(), kit.deps) is Outcome.SUCCEEDED
    assert await outcome(kit, failing.id) == "succeeded"
    assert [e[1] for e in await entities(kit)] == ["ada lovelace"]


async def test_a_retried_job_resumes_after_the_batches_it_already_paid_for(kit: Kit) -> None:
    texts = [f"chunk-{i:03d} " + "x" * 150 for i in range(6)]  # one chunk per 200-char batch
    texts[0] = "chunk-000 Ada Lovelace works at Acme Corp."
    asset_id = await add_asset(kit, texts)

    def unusable_at_chunk_3(messages: list[dict[str, str]]) -> str:
        return "not JSON" if "chunk-003" in messages[1]["content"] else rule_based_llm(messages)

    kit.server.chat_reply = unusable_at_chunk_3
    first = job(asset_id)
    with pytest.raises(RetryableError):
        await knowledge_graph.handle(first, kit.deps)
    sent_before = len(kit.server.chat_requests)
    assert sent_before == 3 + 2  # batches 0-2, then two unusable answers for batch 3
    kept = "SELECT count(*) FROM kg_batch_results WHERE job_id = $1"
    assert await kit.db.fetchval(kept, first.id) == 3

    kit.server.chat_reply = rule_based_llm
    assert await knowledge_graph.handle(first.next_attempt(), kit.deps) is Outcome.SUCCEEDED
    resent = "\n".join(m[1]["content"] for m in kit.server.chat_requests[sent_before:])
    assert re.findall(r"chunk-(\d{3})", resent) == ["003", "004", "005"]
    # Batch 0's saved answer was merged without asking again; the answers are gone.
    assert [e[1] for e in await entities(kit)] == ["acme corp", "ada lovelace"]
    assert await kit.db.fetchval(kept, first.id) == 0


async def test_without_an_llm_the_job_is_skipped_and_recorded(kit: Kit) -> None:
    asset_id = await add_asset(kit, ["Ada Lovelace works at Acme Corp."])
    deps = dataclasses.replace(kit.deps, llm=None)
    skipped = job(asset_id)
    assert await knowledge_graph.handle(skipped, deps) is Outcome.SKIPPED
    assert await outcome(kit, skipped.id) == knowledge_graph.SKIPPED_NO_LLM
    assert kit.server.chat_requests == [] and await entities(kit) == []


async def test_a_missing_asset_is_permanent(kit: Kit) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        await knowledge_graph.handle(job("kg-no-such-asset"), kit.deps)
