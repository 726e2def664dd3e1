"""The chat model: OpenAI-compatible ``POST {base_url}/chat/completions`` in JSON mode."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from handlers.providers.limits import estimate_tokens
from handlers.providers.openai_api import ApiClient, InvalidResponse


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None


class _ChatResponse(BaseModel):
    choices: list[_Choice] = Field(min_length=1)


class OpenAIChat:
    """Implements ``ChatModel``: asks for one JSON object, returns its text unparsed.

    Calls go through the client's shared limits; what the JSON must contain is
    the caller's business (it validates and decides whether to ask again).
    Every call sends ``max_tokens``, so no answer costs more than that.
    """

    def __init__(self, client: ApiClient, max_output_tokens: int) -> None:
        self.model = client.config.model
        self.max_output_tokens = max_output_tokens
        self._client = client

    async def complete_json(
        self, messages: list[dict[str, str]], organization_id: str | None
    ) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "response_format": {"type": "json_object"},
            "temperature": 0,
            "max_tokens": self.max_output_tokens,
        }
        tokens = estimate_tokens([m.get("content", "") for m in messages])
        return await self._client.post(
            "/chat/completions", body, organization_id, tokens, parse_chat_content
        )


def parse_chat_content(answer: Any) -> str:
    """The first choice's message text; a missing or cut-off answer is unusable."""
    try:
        choice = _ChatResponse.model_validate(answer).choices[0]
    except ValidationError as exc:
        raise InvalidResponse(
            f"chat answer does not match the schema: {exc.error_count()} error(s)"
        ) from None
    if not choice.message.content:
        raise InvalidResponse("chat answer has no content")
    if choice.finish_reason == "length":
        raise InvalidResponse("chat answer was cut off at the output token limit")
    return choice.message.content
