"""Per-organization daily budgets: an atomic counter in the real Postgres; a job it refuses."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from handlers.providers.budget import BudgetedChat, BudgetExceeded, DailyBudget
from schemas.envelope import JobEnvelope
from tests.support.assets import insert_asset
from tests.support.dlq import wait_dlq
from tests.support.http import file_server
from tests.support.openai_server import API_KEY, openai_server
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _org() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"


async def _usage(db: asyncpg.Pool, org: str, kind: str) -> tuple[int, int]:
    row = await db.fetchrow(
        "SELECT tokens, calls FROM org_daily_usage WHERE organization_id = $1 AND kind = $2",
        org,
        kind,
    )
    return (row["tokens"], row["calls"]) if row else (0, 0)


async def test_concurrent_charges_never_pass_the_budget(db: asyncpg.Pool) -> None:
    org = _org()
    budget = DailyBudget(db, "embedding", 95)
    results = await asyncio.gather(
        *(budget.charge(org, 10) for _ in range(20)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(refused) == 11 and results.count(None) == 9
    assert await _usage(db, org, "embedding") == (90, 9)
    await budget.charge(org, 5)  # what is left can still be spent
    assert await _usage(db, org, "embedding") == (95, 10)
    other = _org()
    await budget.charge(other, 95)  # budgets are per organization
    with pytest.raises(BudgetExceeded, match="more than its whole daily budget"):
        await budget.charge(_org(), 96)


async def test_a_refused_llm_call_is_never_sent(db: asyncpg.Pool) -> None:
    class NeverCalled:
        model = "m"

        async def complete_json(self, messages: list[dict[str, str]], org: str | None) -> str:
            raise AssertionError("the call went out despite the budget")

    org = _org()
    budget = DailyBudget(db, "llm", 2000)
    await budget.charge(org, 1500)
    chat = BudgetedChat(NeverCalled(), budget, max_output_tokens=500)
    # 10 input tokens + max_tokens 500 would pass 2000: refused before it is sent.
    with pytest.raises(BudgetExceeded, match=f"organization {org} has spent its daily llm"):
        await chat.complete_json([{"role": "user", "content": "x" * 40}], org)
    assert await _usage(db, org, "llm") == (1500, 1), "nothing is charged for a refused call"


async def test_an_asset_over_the_embedding_budget_fails_with_that_reason(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    org = _org()
    async with file_server() as files, openai_server() as api:
        text = b"Many words worth embedding here. " * 2000
        asset_id = await insert_asset(db, files.add("big.txt", text), org=org)
        worker = worker_factory(
            stack,
            CONVEYOR_EMBEDDING__PROVIDER="openai",
            CONVEYOR_EMBEDDING__BASE_URL=api.base_url,
            CONVEYOR_EMBEDDING__API_KEY=API_KEY,
            CONVEYOR_EMBEDDING__DIMENSIONS="16",
            CONVEYOR_EMBEDDING__ORG_TOKENS_PER_DAY="12000",  # one batch of 64 chunks, not two,
        )
        worker.wait_ready()
        stack.publish(
            [JobEnvelope(type="asset.process", organization_id=org, payload={"asset_id": asset_id})]
        )
        [row] = await wait_dlq(db, stack, 1)
        asset = await eventually(
            lambda: db.fetchrow("SELECT status, error FROM assets WHERE id = $1", asset_id),
            lambda r: r["status"] == "failed",
            what="the asset failed",
        )
    assert "daily embedding budget" in asset["error"] and "00:00 UTC" in asset["error"]
    assert row["error_class"] == "BudgetExceeded" and row["attempts"] == 1
    tokens, calls = await _usage(db, org, "embedding")
    assert 0 < tokens <= 12000 and calls == len(api.statuses("/embeddings"))
