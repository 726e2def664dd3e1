"""Embedding providers (the ``Embedder`` Protocol of ``handlers.deps``).

``HashEmbedder`` is local and lexical, not semantic: for development and
tests. ``OpenAIEmbedder`` calls an OpenAI-compatible embeddings API.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from handlers import tracing
from handlers.errors import PermanentError
from handlers.providers.limits import estimate_tokens
from handlers.providers.openai_api import ApiClient, InvalidResponse

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Feature hashing of lower-cased words into a unit vector.

    Deterministic and offline: good for development and tests, where texts
    that share words land near each other. It knows nothing of meaning.
    Each word's bucket and sign are remembered (up to ``SLOTS_MAX`` words,
    then forgotten all at once) and a text's words are counted first, so a
    word is hashed about once per document instead of at every use: the
    hashing was 40 % of the worker's CPU while ingesting PDFs.
    """

    SLOTS_MAX = 65_536

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.model = f"hash-{dimensions}"
        self._slots: dict[str, tuple[int, float]] = {}

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]:
        with tracing.genai("embeddings", self.model, "conveyor.hash"):
            return [self.vector(text) for text in texts]

    def vector(self, text: str) -> list[float]:
        counts: dict[int, float] = {}
        for word, uses in Counter(_WORD.findall(text.lower())).items():
            bucket, sign = self._slots.get(word) or self._slot(word)
            counts[bucket] = counts.get(bucket, 0.0) + sign * uses
        values = [0.0] * self.dimensions
        # Whole-number counts: the sum of squares is exact in any order.
        norm = math.sqrt(sum(v * v for v in counts.values()))
        if norm:
            for bucket, v in counts.items():
                values[bucket] = v / norm
        return values

    def _slot(self, word: str) -> tuple[int, float]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = (
            int.from_bytes(digest[:4], "little") % self.dimensions,
            1.0 if digest[4] & 1 else -1.0,
        )
        if len(self._slots) >= self.SLOTS_MAX:
            self._slots.clear()
        self._slots[word] = slot
        return slot


class _Embedding(BaseModel):
    index: int = Field(ge=0)
    embedding: list[float]


class _EmbeddingResponse(BaseModel):
    data: list[_Embedding]


class OpenAIEmbedder:
    """OpenAI-compatible ``POST {base_url}/embeddings`` (OpenRouter by default), batched.

    Each batch is one request through the shared limits (``ApiClient``); the
    answer is validated and put back in input order by ``index``.
    """

    def __init__(self, client: ApiClient, dimensions: int, batch_size: int) -> None:
        self.model = client.config.model
        self.dimensions = dimensions
        self.batch_size = batch_size
        self._client = client

    async def embed(self, texts: list[str], organization_id: str | None) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            body = {"model": self.model, "input": batch, "dimensions": self.dimensions}
            parse = partial(parse_embeddings, count=len(batch), dimensions=self.dimensions)
            vectors += await self._client.post(
                "/embeddings", body, organization_id, estimate_tokens(batch), parse
            )
        return vectors


def parse_embeddings(answer: Any, *, count: int, dimensions: int) -> list[list[float]]:
    """Validate an embeddings answer: one vector per input, in input order, of ``dimensions``."""
    try:
        data = _EmbeddingResponse.model_validate(answer).data
    except ValidationError as exc:
        raise InvalidResponse(
            f"embeddings answer does not match the schema: {exc.error_count()} error(s)"
        ) from None
    ordered = sorted(data, key=lambda item: item.index)
    if [item.index for item in ordered] != list(range(count)):
        raise InvalidResponse(
            f"expected {count} embeddings indexed 0..{count - 1}, got {len(data)}"
        )
    for item in ordered:
        if len(item.embedding) != dimensions:
            raise PermanentError(
                f"embedding model returned {len(item.embedding)} dimensions, configured"
                f" {dimensions}: set the embedding dimensions to what the model supports"
            )
    return [item.embedding for item in ordered]
