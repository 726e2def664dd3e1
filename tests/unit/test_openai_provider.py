"""The OpenAI-compatible embedding provider and chat model against a real local server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from handlers.errors import PermanentError, RetryableError
from handlers.providers.embed import OpenAIEmbedder, parse_embeddings
from handlers.providers.limits import Budget, RateLimits
from handlers.providers.llm import OpenAIChat, parse_chat_content
from handlers.providers.openai_api import ApiClient, InvalidResponse
from streams.providers import api_config
from streams.settings import Settings
from tests.support.openai_server import API_KEY, Fault, OpenAIServer, fake_vector, openai_server

DIMS = 16


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with openai_server() as srv:
        yield srv


def client(
    server: OpenAIServer,
    session: aiohttp.ClientSession,
    *,
    key: str = API_KEY,
    budget: Budget | None = None,
    **config: Any,
) -> ApiClient:
    overrides: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": SecretStr(key),
        "model": "test-embed",
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 5.0,
        **config,
    }
    wait_s = overrides.pop("rate_limit_wait_s", 60.0)
    embedding = Settings().embedding.model_copy(update=overrides)
    cfg = api_config(embedding, wait_s, "embedding API")
    return ApiClient(session, cfg, RateLimits(budget or Budget(60_000)))


def embedder(api: ApiClient, batch_size: int = 8) -> OpenAIEmbedder:
    return OpenAIEmbedder(api, DIMS, batch_size)


async def test_vectors_come_back_in_input_order_in_batches(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    texts = [f"text number {i}" for i in range(5)]
    vectors = await embedder(client(server, session), batch_size=2).embed(texts, "org-1")
    assert vectors == [fake_vector(t, DIMS) for t in texts]
    assert [h.inputs for h in server.hits] == [2, 2, 1]
    assert await embedder(client(server, session)).embed([], "org-1") == []


def _signal_pauses(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set when the client pauses its shared gate."""
    paused = asyncio.Event()
    original = api.limits.gate.pause

    def pause(delay_s: float) -> None:
        original(delay_s)
        paused.set()

    monkeypatch.setattr(api.limits.gate, "pause", pause)
    return paused


async def test_429_with_retry_after_pauses_every_concurrent_caller(
    server: OpenAIServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.faults.append(Fault.rate_limited(retry_after="1"))
    api = client(server, session)
    paused = _signal_pauses(api, monkeypatch)
    shared = embedder(api)
    first = asyncio.create_task(shared.embed(["first"], "org-1"))
    async with asyncio.timeout(5):
        await paused.wait()  # the 429 has been answered and read
    others = [asyncio.create_task(shared.embed([f"other {i}"], f"org-{i}")) for i in range(4)]
    await asyncio.gather(first, *others)

    throttled, *later = server.hits
    assert throttled.status == 429
    assert len(later) == 5 and all(h.status == 200 for h in later)
    # Callers that arrived during the pause waited for it too, then went together.
    assert min(h.arrived for h in later) >= throttled.arrived + 1.0
    assert max(h.arrived for h in later) - min(h.arrived for h in later) < 0.3


async def test_5xx_is_retried_with_backoff_then_yields_retryable(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.append(Fault("status", 503))
    assert len(await embedder(client(server, session)).embed(["a"], None)) == 1
    assert server.statuses() == [503, 200]

    server.faults.extend(Fault("status", 500) for _ in range(3))
    with pytest.raises(RetryableError) as caught:
        await embedder(client(server, session, max_retries=2)).embed(["b"], None)
    assert server.statuses()[2:] == [500, 500, 500]
    assert "HTTP 500" in str(caught.value) and "injected HTTP 500" in str(caught.value)
    assert caught.value.delay_s is None


async def test_a_hanging_server_times_out_and_yields_retryable(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.extend([Fault("hang"), Fault("hang")])
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryableError, match=r"no answer within 0.2 s"):
        await embedder(client(server, session, timeout_s=0.2, max_retries=1)).embed(["x"], None)
    assert 0.4 <= loop.time() - started < 1.5


async def test_a_slow_answer_within_the_timeout_succeeds(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.append(Fault("slow", delay_s=0.2))
    vectors = await embedder(client(server, session, timeout_s=1.0, max_retries=0)).embed(
        ["x"], None
    )
    assert vectors == [fake_vector("x", DIMS)]


async def test_a_long_retry_after_goes_back_to_the_runner_with_its_delay(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.append(Fault.rate_limited(retry_after="120"))
    api = client(server, session, backoff_max_s=20.0)
    with pytest.raises(RetryableError) as caught:
        await embedder(api).embed(["x"], None)
    assert caught.value.delay_s == 120.0
    assert server.statuses() == [429]
    assert api.limits.gate.remaining_s() > 100  # other jobs will not hammer the API meanwhile


async def test_429_without_retry_after_backs_off_and_succeeds(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.extend([Fault.rate_limited(retry_after=None)] * 2)
    api = client(server, session)
    assert len(await embedder(api).embed(["x"], None)) == 1
    assert server.statuses() == [429, 429, 200]
    assert api.limits.gate.remaining_s() == 0


async def test_429s_with_retry_after_spend_a_wait_budget_not_the_retry_count(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.extend([Fault.rate_limited("0.05")] * 6)
    api = client(server, session, max_retries=1, rate_limit_wait_s=1.0)
    assert len(await embedder(api).embed(["x"], None)) == 1  # six 429s > max_retries
    assert server.statuses() == [429] * 6 + [200]

    server.faults.extend([Fault.rate_limited("0.3")] * 4)
    with pytest.raises(RetryableError, match="429") as caught:
        await embedder(client(server, session, rate_limit_wait_s=0.5)).embed(["x"], None)
    assert caught.value.delay_s == pytest.approx(0.3)
    assert server.statuses()[7:] == [429, 429]  # 0.3 s waited; another 0.3 s is over budget


async def test_unusable_answers_are_retried_then_yield_retryable(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.extend([Fault("invalid_json"), Fault("bad_schema")])
    assert len(await embedder(client(server, session)).embed(["x"], None)) == 1
    server.faults.extend([Fault("bad_schema")] * 2)
    with pytest.raises(RetryableError, match="unusable answer"):
        await embedder(client(server, session, max_retries=1)).embed(["x"], None)


async def test_a_rejected_key_is_permanent_and_never_echoed(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    secret = "sk-wrong-and-very-secret"
    with capture_logs() as logs, pytest.raises(PermanentError) as caught:
        await embedder(client(server, session, key=secret)).embed(["x"], None)
    message = str(caught.value)
    assert "HTTP 401" in message and "check the API key" in message
    assert secret not in message and "***" in message  # the server echoed it; we scrubbed it
    assert secret not in json.dumps(logs, default=str)
    assert server.statuses() == [401]


async def test_no_secret_in_logs_while_retrying(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.faults.extend([Fault.rate_limited("0"), Fault("status", 502)])
    with capture_logs() as logs:
        await embedder(client(server, session)).embed(["x"], None)
    events = [e["event"] for e in logs]
    assert events.count("provider.rate_limited") == 1 and events.count("provider.retrying") == 1
    assert API_KEY not in json.dumps(logs, default=str)


def test_wrong_vector_length_is_a_configuration_error() -> None:
    answer = {"data": [{"index": 0, "embedding": [0.1] * 8}]}
    with pytest.raises(PermanentError, match="returned 8 dimensions, configured 16"):
        parse_embeddings(answer, count=1, dimensions=16)
    with pytest.raises(InvalidResponse, match="expected 2 embeddings"):
        parse_embeddings(answer, count=2, dimensions=8)


async def test_chat_model_asks_for_json_and_returns_the_text(
    server: OpenAIServer, session: aiohttp.ClientSession
) -> None:
    server.chat_reply = lambda messages: '{"entities": [], "relationships": []}'
    chat = OpenAIChat(client(server, session, name="LLM API"), max_output_tokens=777)
    answer = await chat.complete_json([{"role": "user", "content": "hello"}], "org-1")
    assert json.loads(answer) == {"entities": [], "relationships": []}
    assert server.chat_requests == [[{"role": "user", "content": "hello"}]]
    assert server.chat_bodies[0]["max_tokens"] == 777, "every call caps its answer"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"choices": []}, "schema"),
        ({"choices": [{"message": {"content": None}}]}, "no content"),
        ({"choices": [{"message": {"content": "{"}, "finish_reason": "length"}]}, "cut off"),
    ],
)
def test_unusable_chat_answers(answer: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidResponse, match=problem):
        parse_chat_content(answer)
