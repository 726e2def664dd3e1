"""`make demo` as the README describes it: every sample, PDF and DOCX included, is indexed;
a stand-in Kommo account is synced and a signed webhook applied, an unsigned one
dead-lettered — through a worker that runs with the same keyring, as `make run` does."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from streams.commands.demo import MIME, SAMPLES, run_demo
from streams.commands.demo_kommo import (
    CONNECTION,
    SIGNED_LEAD,
    UNSIGNED_LEAD,
    custom_fields,
    pipelines,
)
from tests.support.crm import KEYRING_TEXT
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e


async def test_demo_indexes_every_sample_and_syncs_a_crm_account(
    stack: Stack, worker_factory: Any, db: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = sorted(p.suffix for p in SAMPLES.iterdir() if p.suffix in MIME)
    assert samples == [".docx", ".md", ".pdf", ".txt"]
    stack.extra["CONVEYOR_CRM__KEYRING"] = KEYRING_TEXT
    worker = worker_factory(stack)
    worker.wait_ready()
    assert await run_demo(stack.settings(), timeout_s=120) == 0
    indexed = [e for e in worker.events if e.get("event") == "asset.indexed"]
    assert len(indexed) == len(samples)
    assert all(e["chunks_count"] > 0 for e in indexed)

    statuses = sum(len(p["_embedded"]["statuses"]) for p in pipelines())
    fields = sum(len(custom_fields(e)) for e in ("leads", "contacts", "companies"))
    synced = worker.wait_for(lambda e: e.get("event") == "crm.synced")
    assert (synced["pipelines"], synced["statuses"], synced["custom_fields"]) == (
        len(pipelines()),
        statuses,
        fields,
    )
    async with db.acquire() as conn:
        leads = await conn.fetch(
            "SELECT lead_id, status_id FROM crm_leads WHERE connection_id = $1", CONNECTION
        )
        dead = await conn.fetchrow(
            "SELECT id, stage, error_message FROM worker_dlq WHERE job_type = 'crm.webhook'"
            " AND job_id LIKE $1",
            f"demo-webhook-%-{UNSIGNED_LEAD}",
        )
    assert [r["lead_id"] for r in leads] == [SIGNED_LEAD]  # the unsigned one applied nothing
    assert dead is not None and dead["stage"] == "handle"
    assert "signature is missing or wrong" in dead["error_message"]
    said = capsys.readouterr().out
    assert said.startswith("Watch it in the console: http://127.0.0.1:9180/")
    assert f"(dead letter {dead['id']})" in said and "127.0.0.1:9180/dlq" in said
    assert f"synced {CONNECTION}: {len(pipelines())} pipelines, {statuses} statuses" in said
    assert "applied: lead stored in Qualified (Sales)" in said
    assert "dead-lettered at stage handle" in said  # the reason's words wrap in the table
