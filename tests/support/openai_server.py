"""A real local OpenAI-compatible API (aiohttp): ``/embeddings`` and ``/chat/completions``.

Speaks the wire format the providers expect, checks the bearer key, logs
every request with its arrival time, and injects faults:

- ``faults``: a queue of scripted faults, one consumed per request (429 with
  ``Retry-After``, any status, slow, hang, invalid JSON, wrong schema);
- ``rate_limit_per_minute``: enforce a request rate with a token bucket,
  answering 429 with ``Retry-After`` (whole seconds, rounded up) and the
  precise ``retry-after-ms`` like OpenAI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.http import serve

API_KEY = "sk-test-local-key"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; ``kind`` is status, slow, hang, invalid_json or bad_schema."""

    kind: str
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    path: str | None = None  # only requests to this path consume the fault

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1", path: str | None = None) -> Fault:
        return cls("status", 429, retry_after, path=path)


@dataclass(frozen=True)
class Hit:
    path: str
    arrived: float  # time.monotonic()
    status: int
    inputs: int


@dataclass
class TokenBucket:
    """Requests allowed at ``rate_per_s`` with a burst of ``capacity``."""

    rate_per_s: float
    capacity: float
    level: float = 0.0
    last: float = field(default_factory=time.monotonic)

    def take(self) -> float | None:
        """None when the request conforms, else the seconds until it would."""
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self.last) * self.rate_per_s)
        self.last = now
        if self.level + 1 <= self.capacity:
            self.level += 1
            return None
        return (self.level + 1 - self.capacity) / self.rate_per_s


def fake_vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [((digest[i % len(digest)] + i) % 251) / 251.0 for i in range(dimensions)]


def empty_graph(_: list[dict[str, str]]) -> str:
    return json.dumps({"entities": [], "relationships": []})


@dataclass
class OpenAIServer:
    """State of the running server; tests mutate ``faults`` and read ``hits``."""

    api_key: str = API_KEY
    faults: deque[Fault] = field(default_factory=deque)
    chat_reply: Callable[[list[dict[str, str]]], str] = empty_graph
    rate_limit_per_minute: float | None = None
    burst: float = 1.0
    hits: list[Hit] = field(default_factory=list)
    chat_requests: list[list[dict[str, str]]] = field(default_factory=list)
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _bucket: TokenBucket | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def limit(self, per_minute: float, burst: float = 1.0) -> None:
        """Enforce ``per_minute`` requests (burst ``burst``) from now on."""
        self.rate_limit_per_minute, self.burst = per_minute, burst
        self._bucket = TokenBucket(per_minute / 60.0, burst)

    def statuses(self, path: str | None = None) -> list[int]:
        return [h.status for h in self.hits if path is None or h.path == path]

    async def wait_for_hits(self, n: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.hits) >= n)

    async def _record(self, hit: Hit) -> None:
        async with self._changed:
            self.hits.append(hit)
            self._changed.notify_all()

    def _next_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path in (None, path):
                self.faults.remove(fault)
                return fault
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        path = "/" + request.match_info["endpoint"]
        try:
            body = await request.json()
        except ValueError:
            body = {}
        inputs = len(body.get("input", [])) if isinstance(body, dict) else 0
        try:
            response = await self._respond(request, path, body)
        except asyncio.CancelledError:  # the client gave up on a hanging request
            self.hits.append(Hit(path, arrived, 499, inputs))
            raise
        await self._record(Hit(path, arrived, response.status, inputs))
        return response

    async def _respond(self, request: web.Request, path: str, body: Any) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(
                401, f"Incorrect API key provided: {request.headers.get('Authorization')}"
            )
        if self._bucket is not None and (wait_s := self._bucket.take()) is not None:
            return _too_many(wait_s)
        fault = self._next_fault(path)
        if fault is not None:
            faulty = await self._apply(fault)
            if faulty is not None:
                return faulty
        if path == "/embeddings":
            return _embeddings(body)
        if path == "/chat/completions":
            self.chat_requests.append(body["messages"])
            self.chat_bodies.append(body)
            return _chat(self.chat_reply(body["messages"]), body)
        return _error(404, f"no such endpoint {path}")

    async def _apply(self, fault: Fault) -> web.Response | None:
        if fault.kind == "hang":
            await asyncio.Event().wait()
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_s)
            return None
        if fault.kind == "invalid_json":
            return web.Response(status=200, text="{not json", content_type="application/json")
        if fault.kind == "bad_schema":
            return web.json_response({"object": "list", "data": [{"vector": [1, 2]}]})
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        return web.json_response(
            {"error": {"message": f"injected HTTP {fault.status}"}},
            status=fault.status,
            headers=headers,
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _too_many(wait_s: float) -> web.Response:
    headers = {"Retry-After": str(math.ceil(wait_s)), "retry-after-ms": f"{wait_s * 1000:.0f}"}
    return web.json_response(
        {"error": {"message": "rate limit exceeded"}}, status=429, headers=headers
    )


def _embeddings(body: dict[str, Any]) -> web.Response:
    texts = body["input"]
    dims = int(body.get("dimensions") or 16)
    data = [
        {"object": "embedding", "index": i, "embedding": fake_vector(t, dims)}
        for i, t in enumerate(texts)
    ]
    data.reverse()  # clients must order by index, not by position
    tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


def _chat(content: str, body: dict[str, Any]) -> web.Response:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(content.split())
    return web.json_response(
        {
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


@asynccontextmanager
async def openai_server(**options: Any) -> AsyncIterator[OpenAIServer]:
    server = OpenAIServer(**options)
    app = web.Application()
    app.router.add_post("/v1/{endpoint:.+}", server.handle)
    async with serve(app, server.host) as port:
        server.port = port
        yield server
