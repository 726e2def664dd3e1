"""The Kommo client sends secrets and tokens to the connection's account only.

Real local servers on loopback: the Kommo stand-in (tests/support/kommo_server.py)
and a "thief" on 127.0.0.2, an address the stand-in's allowlist (127.0.0.1:*)
leaves out, that records whatever reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from handlers.errors import PermanentError, RetryableError
from handlers.providers.kommo import Kommo
from handlers.providers.kommo_oauth import GrantRefused, OAuthApp
from tests.support.crm import APP, MemoryTokens, config
from tests.support.http import serve
from tests.support.kommo_server import Fault, KommoServer, kommo_server, make_pipelines

TOKEN = "POST /oauth2/access_token"
PIPELINES = "GET /api/v4/leads/pipelines"


@dataclass
class Thief:
    """A server on another origin; ``seen`` keeps each request's headers and body."""

    base_url: str = ""
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers), await request.read()))
        return web.json_response({"access_token": "x", "refresh_token": "y", "expires_in": 1})


@pytest.fixture
async def thief() -> AsyncIterator[Thief]:
    found = Thief()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    async with serve(app, "127.0.0.2") as port:
        found.base_url = f"http://127.0.0.2:{port}"
        yield found


@pytest.fixture
async def server() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None) as srv:
        srv.pipelines = make_pipelines(2, 3)
        yield srv


async def test_a_redirect_from_the_token_endpoint_is_not_followed_with_the_secrets(
    server: KommoServer, thief: Thief, session: aiohttp.ClientSession
) -> None:
    kommo = Kommo(session, config())
    refresh = server.grant().refresh_token
    redirect = Fault.answer(307, TOKEN, location=f"{thief.base_url}/oauth2/access_token")
    server.faults.append(redirect)
    with pytest.raises(PermanentError) as caught:
        await kommo.refresh(server.base_url, APP, refresh)
    assert "redirect (HTTP 307)" in str(caught.value) and "not followed" in str(caught.value)
    assert thief.seen == [], "neither client_secret nor refresh_token left for the other origin"
    assert server.calls[TOKEN] == 1
    assert server.refresh_is_valid(refresh), "a refused redirect is no grant refusal"


async def test_a_redirect_from_an_api_call_is_not_followed_with_the_token(
    server: KommoServer, thief: Thief, session: aiohttp.ClientSession
) -> None:
    kommo = Kommo(session, config())
    tokens = MemoryTokens(kommo, server)
    client = kommo.client(server.base_url, tokens)
    server.faults.append(Fault.answer(302, PIPELINES, location=f"{thief.base_url}/steal"))
    with pytest.raises(PermanentError, match=r"redirect \(HTTP 302\)"):
        await client.pipelines()
    assert thief.seen == []


async def test_an_account_off_the_allowlist_gets_no_request_at_all(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    kommo = Kommo(session, config(allowed_account_hosts=("*.kommo.com",)))
    with pytest.raises(PermanentError, match="not an allowed Kommo account"):
        await kommo.refresh(server.base_url, APP, server.grant().refresh_token)
    with pytest.raises(PermanentError, match="no secret or token is sent"):
        kommo.client(server.base_url, MemoryTokens(Kommo(session, config()), server))
    assert sum(server.calls.values()) == 0


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (403, "<html><body>Request blocked by the firewall</body></html>", "text/html"),
        (401, '{"message": "proxy authentication required"}', "application/json"),
        (400, '{"title": "Bad Request", "status": 400}', "application/problem+json"),
    ],
)
async def test_a_proxy_or_firewall_refusal_at_the_token_endpoint_is_no_reason_to_reconsent(
    server: KommoServer, session: aiohttp.ClientSession, status: int, body: str, content_type: str
) -> None:
    """Only Kommo's own OAuth answers mark a connection needs_reauth (issue 19): this
    refusal is retried and the refresh token stays valid."""
    kommo = Kommo(session, config())
    refresh = server.grant().refresh_token
    server.faults.append(Fault.answer(status, TOKEN, body=body, content_type=content_type))
    with pytest.raises(RetryableError, match="not Kommo's OAuth answer") as caught:
        await kommo.refresh(server.base_url, APP, refresh)
    assert not isinstance(caught.value, GrantRefused)
    assert server.refresh_is_valid(refresh)
    grant = await kommo.refresh(server.base_url, APP, refresh)  # the next try goes through
    assert grant.refresh_token != refresh


async def test_kommos_own_refusals_of_grant_and_client_need_consent(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    kommo = Kommo(session, config())
    spent = server.grant().refresh_token
    await kommo.refresh(server.base_url, APP, spent)
    with pytest.raises(GrantRefused, match="Token has been revoked"):
        await kommo.refresh(server.base_url, APP, spent)
    wrong_client = OAuthApp(APP.client_id, "not-the-client-secret", APP.redirect_uri)
    with pytest.raises(GrantRefused, match="Client authentication failed"):
        await kommo.refresh(server.base_url, wrong_client, server.grant().refresh_token)
