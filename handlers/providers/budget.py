"""Per-organization daily budgets for the paid APIs (LLM and embeddings), kept in Postgres.

Each call is charged before it is made: its estimated input tokens, plus for
the LLM the ``max_tokens`` it may answer with (the worst case). The charge is
one atomic upsert on ``org_daily_usage`` that refuses to pass the budget, so
concurrent jobs on any number of workers cannot overspend together. Days are
UTC days of the database clock.

A refused call fails its job permanently (``BudgetExceeded``): waiting for
the next day inside the retry machinery would hold a retry topic for hours,
and an operator should know. The dead letter says when the budget resets;
``conveyor dlq replay`` runs the job again after that. A charge is not
refunded when the call then fails.
"""

from __future__ import annotations

from typing import Literal

from handlers.db import Pool
from handlers.deps import ChatModel, Embedder
from handlers.errors import PermanentError
from handlers.providers.limits import estimate_tokens

Kind = Literal["llm", "embedding"]

CHARGE = """
INSERT INTO org_daily_usage AS u (organization_id, day, kind, tokens, calls)
VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3, 1)
ON CONFLICT (organization_id, day, kind) DO UPDATE
SET tokens = u.tokens + EXCLUDED.tokens, calls = u.calls + 1, updated_at = now()
WHERE u.tokens + EXCLUDED.tokens <= $4
RETURNING tokens
"""

NO_ORGANIZATION = ""  # calls without an organization share one budget


class BudgetExceeded(PermanentError):
    """The organization's daily budget for this API is spent."""


class DailyBudget:
    """``tokens_per_day`` per organization and UTC day for one kind of call; 0 is unlimited."""

    def __init__(self, db: Pool, kind: Kind, tokens_per_day: int) -> None:
        self.db = db
        self.kind = kind
        self.tokens_per_day = tokens_per_day

    async def charge(self, organization_id: str | None, tokens: int) -> None:
        """Count ``tokens`` against today's budget, or raise BudgetExceeded."""
        limit = self.tokens_per_day
        if limit <= 0:
            return
        org = organization_id or NO_ORGANIZATION
        if tokens <= limit:
            async with self.db.acquire() as conn:
                if await conn.fetchval(CHARGE, org, self.kind, tokens, limit) is not None:
                    return
        who = f"organization {org or '(none)'}"
        if tokens > limit:
            raise BudgetExceeded(
                f"one {self.kind} call of {who} needs {tokens:,} tokens, more than its whole"
                f" daily budget of {limit:,}: raise the budget"
            )
        raise BudgetExceeded(
            f"{who} has spent its daily {self.kind} budget ({limit:,} tokens per UTC day;"
            f" this call needs {tokens:,}); replay the job from the dead-letter topic after"
            " 00:00 UTC, or raise the budget"
        )


class BudgetedEmbedder:
    """An ``Embedder`` whose calls are charged to the organization's daily budget first."""

    def __init__(self, inner: Embedder, budget: DailyBudget) -> None:
        self.model = inner.model
        self.dimensions = inner.dimensions
        self._inner = inner
        self._budget = budget

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]:
        await self._budget.charge(organization_id, estimate_tokens(texts))
        return await self._inner.embed(texts, organization_id)


class BudgetedChat:
    """A ``ChatModel`` whose calls are charged (input plus ``max_output_tokens``) first."""

    def __init__(self, inner: ChatModel, budget: DailyBudget, max_output_tokens: int) -> None:
        self.model = inner.model
        self._inner = inner
        self._budget = budget
        self._max_output_tokens = max_output_tokens

    async def complete_json(
        self, messages: list[dict[str, str]], organization_id: str | None
    ) -> str:
        tokens = estimate_tokens([m.get("content", "") for m in messages])
        await self._budget.charge(organization_id, tokens + self._max_output_tokens)
        return await self._inner.complete_json(messages, organization_id)
