"""Kommo's OAuth token endpoint: the integration's credentials, a grant, and the one
POST that exchanges a code or a refresh token for a new pair.

Redirects are never followed (a 307 would re-post both secrets to another
origin). Only Kommo's own OAuth answer refuses a grant (GrantRefused, the
connection needs consent); a proxy's 4xx, a 5xx, a timeout or an unusable
answer is retryable. Client secrets and tokens never appear in errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from handlers.errors import PermanentError, RetryableError
from handlers.providers.adaptive_limit import AdaptiveLimiter
from handlers.providers.kommo_accounts import origin
from handlers.providers.kommo_http import (
    http_span,
    problem_detail,
    redirect_refused,
    transport_reason,
)
from handlers.providers.limits import retry_after_s

TOKEN_PATH = "/oauth2/access_token"


class GrantRefused(PermanentError):
    """Kommo's OAuth server refused the refresh token, code or client: the connection
    needs consent. Only its own answers count (``_oauth_refusal``)."""


@dataclass(frozen=True, slots=True)
class OAuthApp:
    """The integration's OAuth credentials for one connection."""

    client_id: str
    client_secret: str
    redirect_uri: str

    def __repr__(self) -> str:
        return f"OAuthApp(client_id={self.client_id!r}, client_secret='***')"


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access_token: str
    refresh_token: str
    expires_in: int

    def __repr__(self) -> str:
        return f"TokenGrant(expires_in={self.expires_in})"


async def request_tokens(
    session: aiohttp.ClientSession,
    base_url: str,
    app: OAuthApp,
    grant: Mapping[str, str],
    limiter: AdaptiveLimiter,
    timeout_s: float,
) -> TokenGrant:
    """POST the token endpoint: ``{"grant_type": "refresh_token", "refresh_token": ...}``
    (or ``authorization_code`` with ``code``). Refusals raise GrantRefused; anything
    transient raises RetryableError — and, for a refresh whose answer was lost,
    Kommo may already have rotated the token (then the connection needs consent).
    """
    body = {
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "redirect_uri": app.redirect_uri,
        **grant,
    }
    secrets = (app.client_secret, *grant.values())
    await limiter.acquire()
    url = origin(base_url) + TOKEN_PATH
    try:
        with http_span("POST", url) as span:
            async with session.post(
                url,
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,  # a 307 would re-post both secrets to another origin
            ) as response:
                status, raw = response.status, await response.read()
                wait_s = retry_after_s(response.headers) if status == 429 else None
                span.set("http.response.status_code", status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableError(f"Kommo token endpoint: {transport_reason(exc, timeout_s)}") from None
    if status == 200:
        return _grant(raw)
    if 300 <= status < 400:
        raise PermanentError(redirect_refused("the token endpoint", status))
    detail = problem_detail(raw, secrets=secrets)
    if status in (400, 401, 403) and _oauth_refusal(raw):
        raise GrantRefused(f"Kommo refused the grant (invalid_grant): HTTP {status}{detail}")
    if status in (400, 401, 403):  # a proxy's or firewall's answer: the grant was not judged
        raise RetryableError(
            f"Kommo token endpoint: HTTP {status} that is not Kommo's OAuth answer"
            f" (a proxy or firewall?){detail}",
            delay_s=wait_s,
        )
    raise RetryableError(f"Kommo token endpoint: HTTP {status}{detail}", delay_s=wait_s)


def _oauth_refusal(raw: bytes) -> bool:
    """Kommo's own refusal of a grant or client: its OAuth problem document
    (``"type": ".../OAuthProblemJson"``), or an RFC 6749 ``invalid_grant`` /
    ``invalid_client`` error. Anything else did not come from its OAuth server."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    kind = doc.get("type")
    if isinstance(kind, str) and kind.rstrip("/").endswith("/OAuthProblemJson"):
        return True
    return doc.get("error") in ("invalid_grant", "invalid_client")


def _grant(raw: bytes) -> TokenGrant:
    try:
        data = json.loads(raw)
        return TokenGrant(
            str(data["access_token"]), str(data["refresh_token"]), int(data["expires_in"])
        )
    except (ValueError, KeyError, TypeError):
        raise RetryableError("Kommo token endpoint: unusable answer") from None
