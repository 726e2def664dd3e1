"""SQL of the knowledge graph: named statements and small functions taking a connection.

Rows are written in key order so concurrent jobs of one organization lock
shared entities in the same order and cannot deadlock each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from handlers.db import Connection
from handlers.knowledge_graph.graph import EntityKey, Graph

ASSET_ORGANIZATION = "SELECT organization_id FROM assets WHERE id = $1"

LOAD_CHUNKS = """
SELECT chunk_index, content FROM asset_chunks
WHERE asset_id = $1 AND chunk_index > $2
ORDER BY chunk_index
LIMIT $3
"""

UPSERT_ENTITIES = """
INSERT INTO kg_entities
    (organization_id, type, name, normalized_name, value, confidence, source_asset_id)
SELECT $1, e.type, e.name, e.normalized_name, e.value, e.confidence, $2
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::real[])
    AS e(type, name, normalized_name, value, confidence)
ON CONFLICT (organization_id, type, normalized_name) DO UPDATE
SET value = COALESCE(EXCLUDED.value, kg_entities.value),
    confidence = GREATEST(kg_entities.confidence, EXCLUDED.confidence),
    updated_at = now()
RETURNING id, type, normalized_name
"""

UPSERT_RELATIONSHIPS = """
INSERT INTO kg_relationships
    (organization_id, source_id, target_id, type, confidence, source_asset_id)
SELECT $1, r.source_id, r.target_id, r.type, r.confidence, $2
FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::real[])
    AS r(source_id, target_id, type, confidence)
ON CONFLICT (source_id, target_id, type) DO UPDATE
SET confidence = GREATEST(kg_relationships.confidence, EXCLUDED.confidence),
    updated_at = now()
"""


LOAD_BATCHES = "SELECT batch_index, batch_hash, extraction FROM kg_batch_results WHERE job_id = $1"
SAVE_BATCH = """
INSERT INTO kg_batch_results (job_id, batch_index, batch_hash, extraction)
VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (job_id, batch_index) DO UPDATE
SET batch_hash = EXCLUDED.batch_hash, extraction = EXCLUDED.extraction, created_at = now()
"""
# The job's own rows, and any left by jobs abandoned long ago (dead letters never replayed).
DROP_BATCHES = """
DELETE FROM kg_batch_results WHERE job_id = $1 OR created_at < now() - interval '30 days'
"""


@dataclass(frozen=True, slots=True)
class SavedCounts:
    entities: int
    relationships: int


async def asset_organization(conn: Connection, asset_id: str) -> str | None:
    value = await conn.fetchval(ASSET_ORGANIZATION, asset_id)
    return None if value is None else str(value)


async def load_chunks(
    conn: Connection, asset_id: str, after_index: int, limit: int
) -> list[tuple[int, str]]:
    """One page of the asset's chunks after ``after_index``, in order."""
    rows = await conn.fetch(LOAD_CHUNKS, asset_id, after_index, limit)
    return [(int(r["chunk_index"]), str(r["content"])) for r in rows]


async def save_graph(
    conn: Connection, organization_id: str, asset_id: str, graph: Graph
) -> SavedCounts:
    """Upsert the graph's entities, then its relationships (call inside the job's transaction)."""
    entities = [graph.entities[key] for key in sorted(graph.entities)]
    if not entities:
        return SavedCounts(0, 0)
    rows = await conn.fetch(
        UPSERT_ENTITIES,
        organization_id,
        asset_id,
        [e.type for e in entities],
        [e.name for e in entities],
        [e.normalized_name for e in entities],
        [e.value for e in entities],
        [e.confidence for e in entities],
    )
    ids: dict[EntityKey, int] = {(r["type"], r["normalized_name"]): r["id"] for r in rows}
    rels = sorted(
        graph.relationships.values(), key=lambda r: (ids[r.source], ids[r.target], r.type)
    )
    if rels:
        await conn.execute(
            UPSERT_RELATIONSHIPS,
            organization_id,
            asset_id,
            [ids[r.source] for r in rels],
            [ids[r.target] for r in rels],
            [r.type for r in rels],
            [r.confidence for r in rels],
        )
    return SavedCounts(len(entities), len(rels))


async def load_batch_results(conn: Connection, job_id: str) -> dict[int, tuple[str, str]]:
    """The saved answers of this job's batches: index -> (batch hash, extraction JSON)."""
    rows = await conn.fetch(LOAD_BATCHES, job_id)
    return {int(r["batch_index"]): (str(r["batch_hash"]), str(r["extraction"])) for r in rows}


async def save_batch_result(
    conn: Connection, job_id: str, index: int, batch_hash: str, extraction_json: str
) -> None:
    await conn.execute(SAVE_BATCH, job_id, index, batch_hash, extraction_json)


async def drop_batch_results(conn: Connection, job_id: str) -> None:
    """Forget the job's saved answers (inside the transaction that saves its graph)."""
    await conn.execute(DROP_BATCHES, job_id)
