"""``knowledge_graph.extract``: entities and relationships from an asset's chunks.

Chunks are read in pages and sent to the LLM in batches of about
``batch_chars`` characters. Each answer is validated; an unusable one is
asked for again (up to ``output_attempts``), then the job fails with
``RetryableError`` and the runner's policy applies — it is never recorded as
a success. Each batch's validated answer is kept in ``kg_batch_results``, so
a retried or redelivered job resumes after the batches it already paid for.
The merged graph, the ledger row and the removal of those answers are
written in one transaction, so a redelivered job adds nothing twice.

With no LLM configured the job is recorded as skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import structlog

from handlers import ledger
from handlers.db import Pool
from handlers.deps import ChatModel, Deps
from handlers.errors import PermanentError, RetryableError
from handlers.knowledge_graph import store
from handlers.knowledge_graph.graph import (
    Extraction,
    Graph,
    InvalidExtraction,
    build_messages,
    parse_extraction,
    repair_messages,
)
from handlers.types import Job, Outcome
from schemas.jobs import KnowledgeGraphExtract

log = structlog.get_logger(__name__)

SKIPPED_NO_LLM = "skipped: no LLM configured"
PAGE_ROWS = 200


async def handle(job: Job[KnowledgeGraphExtract], deps: Deps) -> Outcome:
    asset_id = job.payload.asset_id
    if deps.llm is None:
        return await _skip(job, deps)
    async with deps.db.acquire() as conn:
        if await ledger.processed_outcome(conn, job.id) is not None:
            return Outcome.SKIPPED
        organization_id = await store.asset_organization(conn, asset_id)
    if organization_id is None:
        raise PermanentError(f"asset {asset_id} does not exist")
    graph, batches, resumed = await _extract_all(job, deps, deps.llm, organization_id)
    async with deps.db.acquire() as conn, conn.transaction():
        claimed = await ledger.claim(conn, job.id, job.type)
        if claimed:
            saved = await store.save_graph(conn, organization_id, asset_id, graph)
        await store.drop_batch_results(conn, job.id)
    if not claimed:
        return Outcome.SKIPPED
    log.info(
        "knowledge_graph.extracted",
        asset_id=asset_id,
        batches=batches,
        resumed_batches=resumed,
        entities=saved.entities,
        relationships=saved.relationships,
        dropped_relationships=graph.dropped_relationships,
    )
    return Outcome.SUCCEEDED


async def _extract_all(
    job: Job[KnowledgeGraphExtract], deps: Deps, llm: ChatModel, organization_id: str
) -> tuple[Graph, int, int]:
    """The asset's merged graph, batches seen and batches resumed from saved answers."""
    async with deps.db.acquire() as conn:
        done = await store.load_batch_results(conn, job.id)
    policy = deps.knowledge_graph
    graph = Graph()
    batches = resumed = 0
    async for texts in chunk_batches(deps.db, job.payload.asset_id, policy.batch_chars):
        digest = batch_hash(texts)
        saved_answer = done.get(batches)
        if saved_answer is not None and saved_answer[0] == digest:
            extraction = Extraction.model_validate_json(saved_answer[1])
            resumed += 1
        else:
            extraction = await extract(llm, texts, organization_id, policy.output_attempts)
            async with deps.db.acquire() as conn:
                await store.save_batch_result(
                    conn, job.id, batches, digest, extraction.model_dump_json()
                )
        graph.add(extraction)
        batches += 1
    return graph, batches, resumed


async def _skip(job: Job[KnowledgeGraphExtract], deps: Deps) -> Outcome:
    async with deps.db.acquire() as conn, conn.transaction():
        await ledger.claim(conn, job.id, job.type, SKIPPED_NO_LLM)
    log.info("knowledge_graph.skipped", asset_id=job.payload.asset_id, reason=SKIPPED_NO_LLM)
    return Outcome.SKIPPED


async def chunk_batches(db: Pool, asset_id: str, max_chars: int) -> AsyncIterator[list[str]]:
    """The asset's chunk texts in order, grouped up to ``max_chars`` (at least one per group).

    A page of rows is read per connection checkout; no connection is held
    while the LLM is working.
    """
    after, size = -1, 0
    batch: list[str] = []
    while True:
        async with db.acquire() as conn:
            rows = await store.load_chunks(conn, asset_id, after, PAGE_ROWS)
        for _, text in rows:
            if batch and size + len(text) > max_chars:
                yield batch
                batch, size = [], 0
            batch.append(text)
            size += len(text)
        if len(rows) < PAGE_ROWS:
            break
        after = rows[-1][0]
    if batch:
        yield batch


def batch_hash(texts: list[str]) -> str:
    """Identifies a batch's content: a saved answer is reused only for the same texts."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


async def extract(
    llm: ChatModel, texts: list[str], organization_id: str, attempts: int
) -> Extraction:
    """Ask the LLM about one batch; re-ask on unusable output, then give up retryably."""
    messages = build_messages(texts)
    prompt = messages
    error = InvalidExtraction("no attempt made")
    for attempt in range(1, attempts + 1):
        answer = await llm.complete_json(prompt, organization_id)
        try:
            return parse_extraction(answer)
        except InvalidExtraction as exc:
            error = exc
            log.warning("knowledge_graph.invalid_output", attempt=attempt, error=str(exc))
            prompt = repair_messages(messages, answer, exc)
    raise RetryableError(f"the LLM gave no usable extraction in {attempts} attempt(s): {error}")
