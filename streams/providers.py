"""Build the embedding provider and the chat model from settings, with their shared limits.

They get their own HTTP session, not the SSRF-guarded one: their base URLs
are set by the operator, not by users, and may well be on a private network.
Limits are built once here, so every job of the process shares them. A job
spends at most half its timeout waiting out 429s before it hands the wait
back to the runner. With a database pool, the paid APIs are charged to each
organization's daily budget before every call (handlers/providers/budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import structlog

from handlers.db import Pool
from handlers.deps import ChatModel, Embedder
from handlers.providers.budget import BudgetedChat, BudgetedEmbedder, DailyBudget
from handlers.providers.embed import HashEmbedder, OpenAIEmbedder
from handlers.providers.limits import Budget, RateLimits
from handlers.providers.llm import OpenAIChat
from handlers.providers.openai_api import ApiClient, ApiConfig
from streams.settings import EmbeddingSettings, LlmSettings, Settings

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 64


@dataclass
class Providers:
    """The embedder, the optional LLM and the session they share; close at shutdown."""

    embedder: Embedder
    llm: ChatModel | None
    session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def open_providers(settings: Settings, db: Pool | None = None) -> Providers:
    """Call from a running event loop (the session binds to it).

    ``db`` (an asyncpg pool) keeps the daily budgets; without it they are not enforced.
    """
    emb, llm = settings.embedding, settings.llm
    session = None
    if emb.provider == "openai" or llm.api_key is not None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            headers={"User-Agent": settings.http.user_agent},
        )
    embedder: Embedder = HashEmbedder(emb.dimensions)
    if emb.provider == "openai":
        assert session is not None
        wait_s = settings.jobs.asset_process.timeout_s / 2
        client = embedding_client(session, emb, wait_s)
        embedder = OpenAIEmbedder(client, emb.dimensions, emb.batch_size)
        if db is not None and emb.org_tokens_per_day:
            embedder = BudgetedEmbedder(
                embedder, DailyBudget(db, "embedding", emb.org_tokens_per_day)
            )
    chat: ChatModel | None = None
    if llm.api_key is not None:
        assert session is not None
        wait_s = settings.jobs.knowledge_graph_extract.timeout_s / 2
        chat = OpenAIChat(llm_client(session, llm, wait_s), llm.max_output_tokens)
        if db is not None and llm.org_tokens_per_day:
            budget = DailyBudget(db, "llm", llm.org_tokens_per_day)
            chat = BudgetedChat(chat, budget, llm.max_output_tokens)
    log.info(
        "providers.opened",
        embedding_provider=emb.provider,
        embedding_model=embedder.model,
        llm_model=chat.model if chat else None,
    )
    return Providers(embedder, chat, session)


def embedding_client(
    session: aiohttp.ClientSession, s: EmbeddingSettings, rate_limit_wait_s: float
) -> ApiClient:
    budget = Budget(
        requests_per_minute=s.requests_per_minute,
        tokens_per_minute=s.tokens_per_minute,
        org_requests_per_minute=s.org_requests_per_minute,
        org_tokens_per_minute=s.org_tokens_per_minute,
    )
    return ApiClient(session, api_config(s, rate_limit_wait_s, "embedding API"), RateLimits(budget))


def llm_client(
    session: aiohttp.ClientSession, s: LlmSettings, rate_limit_wait_s: float
) -> ApiClient:
    return ApiClient(
        session,
        api_config(s, rate_limit_wait_s, "LLM API"),
        RateLimits(Budget(s.requests_per_minute)),
    )


def api_config(
    s: EmbeddingSettings | LlmSettings, rate_limit_wait_s: float, name: str
) -> ApiConfig:
    return ApiConfig(
        base_url=s.base_url,
        api_key=s.api_key,
        model=s.model,
        timeout_s=s.timeout_s,
        max_retries=s.max_retries,
        backoff_base_s=s.backoff_base_s,
        backoff_max_s=s.backoff_max_s,
        rate_limit_wait_s=rate_limit_wait_s,
        name=name,
    )
