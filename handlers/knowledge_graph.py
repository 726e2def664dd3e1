"""``knowledge_graph.extract``: entities and relationships from an asset's chunks.

Until the LLM extraction lands, the job is recorded as skipped, which is also
what happens in production when no LLM is configured.
"""

from __future__ import annotations

import structlog

from handlers import ledger
from handlers.deps import Deps
from handlers.types import Job, Outcome
from schemas.jobs import KnowledgeGraphExtract

log = structlog.get_logger(__name__)

SKIPPED_NO_LLM = "skipped: no LLM configured"


async def handle(job: Job[KnowledgeGraphExtract], deps: Deps) -> Outcome:
    async with deps.db.acquire() as conn, conn.transaction():
        await ledger.claim(conn, job.id, job.type, SKIPPED_NO_LLM)
    log.info("knowledge_graph.skipped", asset_id=job.payload.asset_id, reason=SKIPPED_NO_LLM)
    return Outcome.SKIPPED
