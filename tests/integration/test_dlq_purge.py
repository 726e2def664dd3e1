"""``conveyor dlq purge``: dead letters past the retention are deleted, the rest kept."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.support.cli import conveyor
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

INSERT = """
INSERT INTO worker_dlq (dlq_topic, dlq_partition, dlq_offset, status, raw_value, created_at)
VALUES ($1, 0, $2, $3, $4, now() - make_interval(days => $5))
"""


async def _rows(db: asyncpg.Pool, topic: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        "SELECT dlq_offset, status FROM worker_dlq WHERE dlq_topic = $1 ORDER BY 1", topic
    )
    return [(r["dlq_offset"], r["status"]) for r in rows]


async def test_purge_deletes_dead_letters_past_the_retention_of_its_own_topic_only(
    services: Endpoints, db: asyncpg.Pool
) -> None:
    topic, other = f"t{uuid.uuid4().hex[:8]}.dlq", f"t{uuid.uuid4().hex[:8]}.dlq"
    text = b'{"payload": {"body": "leads[add][0][name]=Ann", "text": "Dear Ann"}}'
    for offset, status, days in [
        (1, "new", 40),
        (2, "resolved", 35),
        (3, "new", 5),
        (4, "replayed", 29),
    ]:
        await db.execute(INSERT, topic, offset, status, text, days)
    await db.execute(INSERT, other, 1, "new", text, 400)
    env = {"CONVEYOR_POSTGRES__DSN": services.dsn, "CONVEYOR_KAFKA__DLQ_TOPIC": topic}

    dry = conveyor("dlq", "purge", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would delete dead letters mirrored over 30 day(s) ago: 1 new, 1 resolved" in dry.stdout
    assert len(await _rows(db, topic)) == 4

    done = conveyor("dlq", "purge", env=env)  # the default: dlq_mirror.retention_days (30)
    assert done.returncode == 0 and "deleted" in done.stdout and "1 new, 1 resolved" in done.stdout
    assert await _rows(db, topic) == [(3, "new"), (4, "replayed")]

    shorter = conveyor("dlq", "purge", "--older-than", "7d", env=env)
    assert shorter.returncode == 0 and "1 replayed" in shorter.stdout
    assert await _rows(db, topic) == [(3, "new")]
    assert len(await _rows(db, other)) == 1, "another deployment's dead letters stay"

    bad = conveyor("dlq", "purge", "--older-than", "soon", env=env)
    assert bad.returncode == 2 and "give an age such as 30d" in bad.stderr
    await db.execute("DELETE FROM worker_dlq WHERE dlq_topic = ANY($1)", [topic, other])
