"""Kommo API v4 client (aiohttp): timed out, rate-limited per account, retried, classified.

What we use from Kommo's API and where it is documented: docs/KOMMO.md.

- Every request has a timeout and waits for the account's AdaptiveLimiter.
- 429: the limiter slows down (AIMD) and pauses for ``Retry-After``; the
  request is retried in place until ``rate_limit_wait_s`` of waiting is
  spent, then ``RetryableError(delay_s=...)`` hands the wait to the runner.
- 5xx, 408, timeouts, dropped connections: reads are retried in place with
  backoff (``max_retries``), then RetryableError. A write (POST) whose answer
  is lost may have been applied: ``OutcomeUnknown`` (retryable) is raised at
  once, so the caller can look before it writes again.
- 401: the token source refreshes once (serialized per connection), and the
  request is retried once; a second 401 is permanent.
- Any other 4xx: PermanentError with Kommo's problem detail.
- Redirects are never followed (every call carries a token or a secret, and
  a 307 would re-send it elsewhere): a 3xx is a PermanentError.
- Only account URLs the allowlist admits are called
  (handlers/providers/kommo_accounts.py).

The token endpoint (OAuth grants and refreshes) is in kommo_oauth.py; what
both share (a response's problem detail, the span, the redirect refusal) in
kommo_http.py.

Tokens, client secrets and refresh tokens never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import aiohttp
import structlog

from handlers.backoff import backoff_s
from handlers.errors import PermanentError, RetryableError
from handlers.providers.adaptive_limit import AdaptiveLimiter
from handlers.providers.kommo_accounts import AccountHosts, AccountNotAllowed, origin
from handlers.providers.kommo_http import (
    Answer,
    decode,
    http_span,
    next_page,
    problem_detail,
    redirect_refused,
    transport_reason,
    url_path,
)
from handlers.providers.kommo_oauth import OAuthApp, TokenGrant, request_tokens
from handlers.providers.limits import retry_after_s

log = structlog.get_logger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_PAGES = 10_000
ENTITIES = ("leads", "contacts", "companies")


class OutcomeUnknown(RetryableError):
    """A write was sent but its answer was lost: Kommo may or may not have applied it."""


class RateLimited(RetryableError):
    """Kommo answered 429 to a write the caller wants back at once: nothing was applied."""


@dataclass(frozen=True, slots=True)
class KommoConfig:
    """The client's behaviour; built from ``settings.crm`` (see ``kommo_config``)."""

    requests_per_second: float
    min_requests_per_second: float
    rate_decrease_factor: float
    rate_increase_per_s: float
    timeout_s: float
    max_retries: int
    rate_limit_wait_s: float
    backoff_base_s: float
    backoff_max_s: float
    page_limit: int
    allowed_account_hosts: tuple[str, ...]


def kommo_config(source: object) -> KommoConfig:
    """A KommoConfig from any object with the same attribute names (``settings.crm``)."""
    found = {f.name: getattr(source, f.name) for f in fields(KommoConfig)}
    found["allowed_account_hosts"] = tuple(found["allowed_account_hosts"])
    return KommoConfig(**found)


class TokenSource(Protocol):
    """A connection's access token; refreshing is serialized across every worker."""

    async def access_token(self) -> str: ...

    async def refreshed_after(self, rejected: str) -> str: ...


@dataclass
class _Tries:
    errors: int = 0
    rate_limit_wait_s: float = 0.0
    refreshed: bool = False
    wait_on_429: bool = True  # False: a 429 raises RateLimited instead of waiting here


class KommoClient:
    """Calls one Kommo account for one connection. ``calls`` counts HTTP requests made."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenSource,
        limiter: AdaptiveLimiter,
        config: KommoConfig,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = origin(base_url)
        self.config = config
        self.limiter = limiter
        self.calls = 0
        self._session, self._tokens, self._rand = session, tokens, rand

    # --- Kommo resources -----------------------------------------------------

    async def pipelines(self) -> list[dict[str, Any]]:
        """Every lead pipeline, each with its statuses in ``_embedded.statuses``."""
        return await self.all("/api/v4/leads/pipelines", "pipelines")

    async def custom_fields(self, entity: str) -> list[dict[str, Any]]:
        """Every custom field of ``entity`` (leads, contacts or companies), all pages."""
        if entity not in ENTITIES:
            raise ValueError(f"no custom fields for {entity!r}")
        return await self.all(f"/api/v4/{entity}/custom_fields", "custom_fields")

    async def lead(self, lead_id: int) -> dict[str, Any] | None:
        """A lead, or None when Kommo has none with that id (it answers 204)."""
        lead: dict[str, Any] | None = await self.get(f"/api/v4/leads/{lead_id}")
        return lead

    async def add_notes(self, entity: str, notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create notes (``entity_id``, ``note_type``, ``params``); returns their ids.

        A lost answer raises OutcomeUnknown: look the note up before sending again.
        A 429 raises RateLimited at once (nothing was created): the caller, which
        marked the note as possibly sent, clears that before it waits.
        """
        answer = await self._call(
            "POST", self.base_url + f"/api/v4/{entity}/notes", None, notes, wait_on_429=False
        )
        created = (answer or {}).get("_embedded", {}).get("notes", [])
        return list(created)

    async def notes(
        self,
        entity: str,
        entity_id: int,
        *,
        note_types: tuple[str, ...] = (),
        updated_since: int | None = None,
    ) -> list[dict[str, Any]]:
        """The notes of one lead/contact/company, newest first, optionally filtered."""
        params: dict[str, str] = {"order[id]": "desc"}
        for i, note_type in enumerate(note_types):
            params[f"filter[note_type][{i}]"] = note_type
        if updated_since is not None:
            params["filter[updated_at][from]"] = str(updated_since)
        return await self.all(f"/api/v4/{entity}/{entity_id}/notes", "notes", params)

    async def find_note(
        self, entity: str, entity_id: int, marker: str, **filters: Any
    ) -> dict[str, Any] | None:
        """The newest note whose ``params`` contain ``marker`` in any text value."""
        for note in await self.notes(entity, entity_id, **filters):
            params = note.get("params") or {}
            if any(isinstance(v, str) and marker in v for v in params.values()):
                return note
        return None

    # --- generic calls -------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path``; the decoded JSON, or None for 204 No Content."""
        return await self._call("GET", self.base_url + path, params, None)

    async def post(self, path: str, body: Any) -> Any:
        return await self._call("POST", self.base_url + path, None, body)

    async def pages(
        self, path: str, key: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page's ``_embedded[key]``, following ``_links.next`` (on this account only)."""
        url: str | None = self.base_url + path
        query: Mapping[str, str] | None = {**(params or {}), "limit": str(self.config.page_limit)}
        for _ in range(MAX_PAGES):
            if url is None:
                return
            body = await self._call("GET", url, query, None)
            if body is None:  # 204: an empty list
                return
            items = body.get("_embedded", {}).get(key) or []
            if items:
                yield list(items)
            url, query = next_page(body, url, self.base_url), None
        raise PermanentError(f"Kommo: more than {MAX_PAGES} pages at {path}")

    async def all(
        self, path: str, key: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return [item async for page in self.pages(path, key, params) for item in page]

    # --- one request, retried --------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        *,
        wait_on_429: bool = True,
    ) -> Any:
        tries = _Tries(wait_on_429=wait_on_429)
        while True:
            token = await self._tokens.access_token()
            answer = await self._send_once(method, url, params, body, token, tries)
            if answer is None:
                continue
            if 200 <= answer.status < 300:
                return decode(answer) if answer.status != 204 else None
            if 300 <= answer.status < 400:
                raise PermanentError(redirect_refused(f"{method} {url_path(url)}", answer.status))
            if answer.status == 401 and not tries.refreshed:
                tries.refreshed = True
                await self._tokens.refreshed_after(token)
                continue
            await self._refuse(method, url, answer, token, tries)

    async def _send_once(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        token: str,
        tries: _Tries,
    ) -> Answer | None:
        """One attempt; None when it failed in a way worth another try (after the wait)."""
        granted = await self.limiter.acquire()
        self.calls += 1
        try:
            answer = await self._send(
                method, url, params, body, {"Authorization": f"Bearer {token}"}
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = transport_reason(exc, self.config.timeout_s)
            if method != "GET" and not isinstance(exc, aiohttp.ClientConnectorError):
                raise OutcomeUnknown(f"Kommo: {method} {url_path(url)}: {reason}") from None
            await self._back_off(method, url, reason, tries)
            return None
        if answer.status == 429:
            wait_s = retry_after_s(answer.headers)
            self.limiter.on_rate_limited(granted, wait_s)
            if not tries.wait_on_429:
                raise RateLimited(
                    f"Kommo: {method} {url_path(url)} rate limited (HTTP 429)",
                    delay_s=wait_s if wait_s is not None else 1.0 / self.limiter.pace,
                )
            self._spend_rate_limit_wait(method, url, wait_s, tries)
            if wait_s:
                await asyncio.sleep(wait_s)
            return None
        return answer

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        headers: dict[str, str],
    ) -> Answer:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        with http_span(method, url) as span:
            async with self._session.request(
                method,
                url,
                params=params,
                json=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,  # the token must not follow a redirect to another host
            ) as response:
                span.set("http.response.status_code", response.status)
                return Answer(response.status, dict(response.headers), await response.read())

    def _spend_rate_limit_wait(
        self, method: str, url: str, wait_s: float | None, tries: _Tries
    ) -> None:
        """Account a 429's wait; hand it to the runner past the budget or when it is long."""
        cfg = self.config
        tries.rate_limit_wait_s += wait_s if wait_s is not None else 1.0 / self.limiter.pace
        log.info(
            "kommo.rate_limited",
            path=url_path(url),
            delay_s=wait_s,
            rate=round(self.limiter.rate, 2),
            pace=round(self.limiter.pace, 2),
        )
        if (wait_s or 0.0) > cfg.backoff_max_s or tries.rate_limit_wait_s > cfg.rate_limit_wait_s:
            raise RetryableError(
                f"Kommo: {method} {url_path(url)} rate limited (HTTP 429) "
                f"for {tries.rate_limit_wait_s:.1f} s",
                delay_s=wait_s,
            )

    async def _back_off(self, method: str, url: str, reason: str, tries: _Tries) -> None:
        cfg = self.config
        tries.errors += 1
        if tries.errors > cfg.max_retries:
            raise RetryableError(
                f"Kommo: {method} {url_path(url)}: {reason} ({tries.errors} tries)"
            )
        delay = backoff_s(tries.errors, cfg.backoff_base_s, cfg.backoff_max_s, rand=self._rand)
        log.warning("kommo.retrying", path=url_path(url), reason=reason, delay_s=round(delay, 3))
        await asyncio.sleep(delay)

    async def _refuse(
        self, method: str, url: str, answer: Answer, token: str, tries: _Tries
    ) -> None:
        """Retry a transient answer (reads), else raise the right error."""
        detail = problem_detail(answer.body, secrets=(token,))
        reason = f"HTTP {answer.status}{detail}"
        if answer.status in RETRYABLE_STATUS or answer.status >= 500:
            if method != "GET":
                raise OutcomeUnknown(f"Kommo: {method} {url_path(url)}: {reason}")
            await self._back_off(method, url, reason, tries)
            return
        hint = " (after a token refresh)" if answer.status == 401 else ""
        raise PermanentError(f"Kommo refused {method} {url_path(url)}: {reason}{hint}")


class Kommo:
    """The Kommo side of a process: one session, one AdaptiveLimiter per account."""

    def __init__(self, session: aiohttp.ClientSession, config: KommoConfig) -> None:
        self.session, self.config = session, config
        self.accounts = AccountHosts(config.allowed_account_hosts)
        self._limiters: dict[str, AdaptiveLimiter] = {}

    def account(self, base_url: str) -> str:
        """The account's origin; PermanentError unless the allowlist admits it (no call made)."""
        try:
            return self.accounts.check(base_url)
        except AccountNotAllowed as exc:
            raise PermanentError(f"{exc}: no secret or token is sent to it") from None
        except ValueError as exc:
            raise PermanentError(str(exc)) from None

    def limiter(self, base_url: str) -> AdaptiveLimiter:
        account = origin(base_url)
        limiter = self._limiters.get(account)
        if limiter is None:
            c = self.config
            limiter = self._limiters[account] = AdaptiveLimiter(
                c.requests_per_second,
                c.min_requests_per_second,
                c.rate_decrease_factor,
                c.rate_increase_per_s,
            )
        return limiter

    def client(self, base_url: str, tokens: TokenSource) -> KommoClient:
        account = self.account(base_url)
        return KommoClient(self.session, account, tokens, self.limiter(account), self.config)

    async def refresh(self, base_url: str, app: OAuthApp, refresh_token: str) -> TokenGrant:
        account = self.account(base_url)
        grant = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await request_tokens(
            self.session, account, app, grant, self.limiter(account), self.config.timeout_s
        )
