"""One call to an OpenAI-compatible HTTP API: limited, timed out, retried, classified.

Shared by the embedding provider and the chat model. The base URL is set by
the operator, so these calls use their own session rather than the
SSRF-guarded one meant for user-supplied asset URLs.

Failure handling, in one place:

- 429: the ``Retry-After`` wait (``retry-after-ms``, seconds or an HTTP date)
  pauses the shared gate, so every concurrent job backs off together;
  without one, exponential backoff with full jitter.
- 408, 5xx, timeouts, connection errors, unreadable answers: backoff and retry.
- Retries are bounded: ``max_retries`` for faults, and ``rate_limit_wait_s``
  of total waiting for 429s that say how long to wait (flow control rather
  than a fault). Then ``RetryableError`` carrying the server's wait when
  known, so the runner's policy takes over. A single wait longer than
  ``backoff_max_s`` is not spent inside the job: it is handed to the runner
  at once.
- Any other 4xx: ``PermanentError`` with the provider's reason.

Neither the API key nor the Authorization header ever appears in an error or
a log line.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog
from pydantic import SecretStr

from handlers import tracing
from handlers.backoff import backoff_s
from handlers.errors import PermanentError, RetryableError
from handlers.providers.limits import RateLimits, retry_after_s

log = structlog.get_logger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
MAX_PAUSE_S = 300.0
DETAIL_CHARS = 200


_OPERATIONS = {"/embeddings": "embeddings", "/chat/completions": "chat"}
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "dimensions": "gen_ai.embeddings.dimension.count",
}


class InvalidResponse(ValueError):
    """The provider answered 2xx with something we cannot use; worth another try."""


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where and how to call the provider; ``name`` appears in error messages."""

    base_url: str
    api_key: SecretStr | None
    model: str
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    rate_limit_wait_s: float
    name: str


class _Transient(Exception):
    """A failure worth another try; ``retry_after_s`` is the server's wait when it gave one."""

    def __init__(
        self, reason: str, retry_after_s: float | None = None, *, rate_limited: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.rate_limited = rate_limited


@dataclass
class _Tries:
    """What one call has spent so far."""

    attempts: int = 0
    errors: int = 0
    rate_limit_wait_s: float = 0.0


class ApiClient:
    """POSTs JSON through the shared limits and turns failures into the error taxonomy."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: ApiConfig,
        limits: RateLimits,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.limits = limits
        self._session = session
        self._rand = rand
        self._url = config.base_url.rstrip("/")
        self._host = urlsplit(self._url).hostname
        key = config.api_key.get_secret_value() if config.api_key else ""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        organization_id: str | None,
        tokens: int,
        parse: Callable[[Any], T],
    ) -> T:
        """POST ``body`` to ``path``; ``parse`` turns the JSON answer into a value.

        ``parse`` raises InvalidResponse for a malformed answer (retried) or
        PermanentError when retrying cannot help.
        """
        state = _Tries()
        with self._span(path, body) as span:
            while True:
                await self.limits.acquire(organization_id, tokens)
                try:
                    answer = await self._once(path, body)
                    value = parse(answer)
                    tracing.usage(answer)
                    return value
                except InvalidResponse as exc:
                    failure = _Transient(f"unusable answer: {exc}")
                except _Transient as exc:
                    failure = exc
                delay = self._next_delay(failure, state)
                span.set("conveyor.retries", state.attempts)
                self._log_retry(path, failure, state, delay)
                await asyncio.sleep(delay)

    def _span(self, path: str, body: dict[str, Any]) -> tracing.Span:
        """The call's GenAI span: model and request parameters, never the input."""
        if not tracing.enabled():
            return tracing.NOOP
        span = tracing.genai(_OPERATIONS.get(path, path), self.config.model, "openai", self._host)
        for key, attribute in _REQUEST_ATTRIBUTES.items():
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                span.set(attribute, value)
        return span

    def _next_delay(self, failure: _Transient, state: _Tries) -> float:
        """The wait before the next try, or raise RetryableError when the job should yield.

        A 429 that says how long to wait is flow control, not a fault: it
        spends the rate-limit wait budget rather than ``max_retries``.
        """
        cfg = self.config
        hinted = failure.retry_after_s
        state.attempts += 1
        message = f"{cfg.name}: {failure.reason} (after {state.attempts} attempt(s))"
        if hinted is not None and hinted > cfg.backoff_max_s:
            raise RetryableError(message, delay_s=hinted)
        if failure.rate_limited and hinted is not None:
            state.rate_limit_wait_s += hinted
            if state.rate_limit_wait_s > cfg.rate_limit_wait_s:
                raise RetryableError(message, delay_s=hinted)
            return hinted
        state.errors += 1
        if state.errors > cfg.max_retries:
            raise RetryableError(message, delay_s=hinted)
        if hinted is not None:
            return hinted
        return backoff_s(state.errors, cfg.backoff_base_s, cfg.backoff_max_s, rand=self._rand)

    def _log_retry(self, path: str, failure: _Transient, state: _Tries, delay: float) -> None:
        event = "provider.rate_limited" if failure.rate_limited else "provider.retrying"
        (log.info if failure.rate_limited else log.warning)(
            event,
            api=self.config.name,
            path=path,
            reason=failure.reason,
            attempt=state.attempts,
            delay_s=round(delay, 3),
        )

    async def _once(self, path: str, body: dict[str, Any]) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        try:
            async with self._session.post(
                self._url + path, json=body, headers=self._headers, timeout=timeout
            ) as response:
                if 200 <= response.status < 300:
                    return _decode(await response.read())
                await self._refuse(response)
        except TimeoutError:
            raise _Transient(f"no answer within {self.config.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Transient(f"connection failed ({type(exc).__name__})") from None

    async def _refuse(self, response: aiohttp.ClientResponse) -> NoReturn:
        """Raise the right error for a non-2xx answer."""
        status = response.status
        detail = self._scrub(await _detail(response))
        if status == 429:
            wait_s = retry_after_s(response.headers)
            if wait_s is not None:
                self.limits.gate.pause(min(wait_s, MAX_PAUSE_S))
            raise _Transient(f"rate limited (HTTP 429){detail}", wait_s, rate_limited=True)
        if status in RETRYABLE_STATUS or status >= 500:
            raise _Transient(f"HTTP {status}{detail}")
        hint = " — check the API key" if status in (401, 403) else ""
        raise PermanentError(f"{self.config.name} refused the request: HTTP {status}{detail}{hint}")

    def _scrub(self, text: str) -> str:
        key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        return text.replace(key, "***") if key else text


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidResponse(f"not JSON ({len(raw)} bytes)") from None


async def _detail(response: aiohttp.ClientResponse) -> str:
    """The provider's own reason, trimmed: ``{"error": {"message": ...}}`` or the text."""
    try:
        text = (await response.text(errors="replace")).strip()
    except (aiohttp.ClientError, TimeoutError):
        return ""
    try:
        parsed = json.loads(text)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str):
            text = message
    except ValueError:
        pass
    text = " ".join(text.split())[:DETAIL_CHARS]
    return f": {text}" if text else ""
