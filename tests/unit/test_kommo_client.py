"""The Kommo client against a real local Kommo account (tests/support/kommo_server.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from handlers.crm.crypto import new_key
from handlers.crm.services import crm_services
from handlers.errors import PermanentError, RetryableError
from handlers.providers.kommo import Kommo, KommoClient, OutcomeUnknown
from handlers.providers.kommo_accounts import origin
from handlers.providers.kommo_http import next_page
from handlers.providers.kommo_oauth import GrantRefused
from streams.settings import load_settings
from tests.support.crm import APP, MemoryTokens, config
from tests.support.kommo_server import (
    Fault,
    KommoServer,
    kommo_server,
    make_fields,
    make_pipelines,
)
from tests.support.stack import patched_env

PIPELINES = "GET /api/v4/leads/pipelines"
LEAD_FIELDS = "GET /api/v4/leads/custom_fields"
NOTES = "POST /api/v4/leads/notes"
TOKEN = "POST /oauth2/access_token"


@pytest.fixture
async def server() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None) as srv:
        srv.pipelines = make_pipelines(3, 5)
        yield srv


def connect(
    server: KommoServer, session: aiohttp.ClientSession, **overrides: Any
) -> tuple[KommoClient, MemoryTokens]:
    kommo = Kommo(session, config(**overrides))
    tokens = MemoryTokens(kommo, server)
    return kommo.client(server.base_url, tokens), tokens


async def test_pipelines_come_with_their_statuses_in_one_call(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session)
    pipelines = await client.pipelines()
    assert [p["id"] for p in pipelines] == [p["id"] for p in server.pipelines]
    assert [s["id"] for s in pipelines[0]["_embedded"]["statuses"]][-2:] == [142, 143]
    assert server.calls[PIPELINES] == 1 and client.calls == 1


async def test_custom_fields_follow_next_links_and_an_empty_list_is_204(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    server.custom_fields["leads"] = make_fields("leads", 600, 900_000)
    client, _ = connect(server, session)
    fields = await client.custom_fields("leads")
    assert [f["id"] for f in fields] == list(range(900_000, 900_600))
    assert server.calls[LEAD_FIELDS] == 3  # 250 + 250 + 100
    assert await client.custom_fields("companies") == []
    assert server.calls["GET /api/v4/companies/custom_fields"] == 1
    small, _ = connect(server, session, page_limit=100)
    assert len(await small.custom_fields("leads")) == 600
    assert server.calls[LEAD_FIELDS] == 3 + 6


async def test_a_429_slows_the_account_down_and_honours_retry_after(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session)
    server.faults.append(Fault.rate_limited("1", route=PIPELINES))
    started = time.monotonic()
    with capture_logs() as logs:
        assert len(await client.pipelines()) == 3
    assert time.monotonic() - started >= 0.95
    assert server.calls[PIPELINES] == 2
    cut = 7 * config().rate_decrease_factor
    assert cut <= client.limiter.rate < cut + 0.5  # cut, then a second's recovery
    assert [e["event"] for e in logs] == ["kommo.rate_limited"]


async def test_429s_past_the_wait_budget_hand_the_wait_to_the_runner(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session, rate_limit_wait_s=0.5)
    server.faults.append(Fault.rate_limited("1", route=PIPELINES))
    with pytest.raises(RetryableError) as caught:
        await client.pipelines()
    assert caught.value.delay_s == 1.0 and "429" in str(caught.value)
    long_wait, _ = connect(server, session)
    server.faults.append(Fault.rate_limited("60", route=PIPELINES))
    with pytest.raises(RetryableError) as caught:
        await long_wait.pipelines()
    assert caught.value.delay_s == 60.0


async def test_reads_retry_5xx_and_hangs_in_place_then_give_up_retryably(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session, timeout_s=0.3)
    server.faults.extend([Fault.answer(502, PIPELINES), Fault("hang", route=PIPELINES)])
    assert len(await client.pipelines()) == 3
    assert server.calls[PIPELINES] == 3
    server.faults.extend([Fault.answer(500, PIPELINES)] * 4)
    with pytest.raises(RetryableError) as caught:
        await client.pipelines()
    assert not isinstance(caught.value, OutcomeUnknown)
    assert "HTTP 500" in str(caught.value) and "4 tries" in str(caught.value)


async def test_a_401_refreshes_once_and_retries_once(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, tokens = connect(server, session)
    first = tokens.access
    server.revoke_access(first)
    assert len(await client.pipelines()) == 3
    assert tokens.refreshes == 1 and tokens.access != first
    assert server.calls[TOKEN] == 1 and server.calls[PIPELINES] == 2
    server.faults.extend([Fault.answer(401, PIPELINES)] * 2)
    with pytest.raises(PermanentError, match=r"HTTP 401.*after a token refresh"):
        await client.pipelines()
    assert tokens.refreshes == 2


async def test_other_4xx_are_permanent_with_kommos_problem_detail_and_no_token(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, tokens = connect(server, session)
    note = {"entity_id": 404404, "note_type": "common", "params": {"text": "x"}}
    with pytest.raises(PermanentError) as caught:
        await client.add_notes("leads", [note])
    assert "HTTP 400" in str(caught.value)
    assert "entity_id: NotFound Entity not found" in str(caught.value)
    server.faults.append(Fault.answer(403, PIPELINES, detail=f"token {tokens.access} denied"))
    with pytest.raises(PermanentError) as caught:
        await client.pipelines()
    assert "token *** denied" in str(caught.value) and tokens.access not in str(caught.value)


async def test_a_write_whose_answer_is_lost_is_unknown_and_can_be_looked_up(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session, timeout_s=0.3)
    lead = server.add_lead()
    marker = "conveyor:idem-1"
    note = {"entity_id": lead["id"], "note_type": "common", "params": {"text": f"Hi [{marker}]"}}
    server.faults.append(Fault("late", delay_s=1.0, route=NOTES))
    with pytest.raises(OutcomeUnknown, match=r"no answer within 0\.3 s"):
        await client.add_notes("leads", [note])
    assert server.calls[NOTES] == 1  # a write is never resent blindly
    found = await client.find_note("leads", lead["id"], marker, note_types=("common",))
    assert found is not None and found["params"]["text"] == f"Hi [{marker}]"
    assert await client.find_note("leads", lead["id"], "conveyor:idem-2") is None
    server.faults.append(Fault.answer(500, NOTES, after=True))
    with pytest.raises(OutcomeUnknown, match="HTTP 500"):
        await client.add_notes("leads", [note])
    assert len(server.notes_of("leads", lead["id"])) == 2 and server.calls[NOTES] == 2


async def test_notes_are_created_and_listed_with_filters(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    client, _ = connect(server, session)
    lead = server.add_lead()
    created = await client.add_notes(
        "leads",
        [
            {"entity_id": lead["id"], "note_type": "common", "params": {"text": "one"}},
            {
                "entity_id": lead["id"],
                "note_type": "service_message",
                "params": {"service": "Conveyor", "text": "two"},
            },
        ],
    )
    assert [n["entity_id"] for n in created] == [lead["id"]] * 2
    listed = await client.notes("leads", lead["id"])
    assert [n["id"] for n in listed] == sorted((n["id"] for n in created), reverse=True)
    only = await client.notes("leads", lead["id"], note_types=("service_message",))
    assert [n["params"]["text"] for n in only] == ["two"]
    assert await client.notes("leads", lead["id"], updated_since=int(time.time()) + 60) == []
    assert await client.lead(lead["id"]) is not None and await client.lead(1) is None


async def test_refresh_tokens_rotate_and_a_spent_one_is_an_invalid_grant(
    server: KommoServer, session: aiohttp.ClientSession
) -> None:
    kommo = Kommo(session, config())
    pair = server.grant()
    fresh = await kommo.refresh(server.base_url, APP, pair.refresh_token)
    assert fresh.refresh_token != pair.refresh_token and fresh.expires_in == 86_400
    assert not server.refresh_is_valid(pair.refresh_token)
    with pytest.raises(GrantRefused) as caught:
        await kommo.refresh(server.base_url, APP, pair.refresh_token)
    message = str(caught.value)
    assert "invalid_grant" in message and "Token has been revoked" in message
    for secret in (pair.refresh_token, APP.client_secret):
        assert secret not in message and secret not in repr(fresh) + repr(APP)
    server.faults.append(Fault.answer(503, TOKEN))
    with pytest.raises(RetryableError):
        await kommo.refresh(server.base_url, APP, fresh.refresh_token)
    assert server.refresh_is_valid(fresh.refresh_token)


async def test_the_fake_account_enforces_seven_requests_a_second_and_the_client_keeps_up(
    session: aiohttp.ClientSession,
) -> None:
    async with kommo_server() as srv:
        srv.pipelines = make_pipelines(1, 3)
        client, _ = connect(srv, session)
        started = time.monotonic()
        await asyncio.gather(*(client.pipelines() for _ in range(21)))
        elapsed = time.monotonic() - started
    ok = [h.arrived for h in srv.hits if h.status == 200]
    assert len(ok) == 21 and elapsed >= 2.0
    assert max(sum(1 for t in ok if s <= t < s + 1.0) for s in ok) <= 7


def test_an_account_url_is_an_origin_and_next_links_stay_on_it() -> None:
    assert origin("https://Acme.kommo.com/") == "https://acme.kommo.com"
    for bad in ("ftp://acme.kommo.com", "https://acme.kommo.com/api", "https://u:p@a.com"):
        with pytest.raises(ValueError):
            origin(bad)
    current = "https://acme.kommo.com/api/v4/leads/custom_fields?page=1&limit=250"

    def following(href: str) -> str | None:
        return next_page({"_links": {"next": {"href": href}}}, current, "https://acme.kommo.com")

    assert following("https://acme.kommo.com/api/v4/x?page=2") == (
        "https://acme.kommo.com/api/v4/x?page=2"
    )
    assert following("/api/v4/x?page=2") == "https://acme.kommo.com/api/v4/x?page=2"
    # issue 19: glued onto the base URL, this href sent the token to another host
    glued = following(".evil.example/api/v4/x?page=2")
    assert glued is not None and glued.startswith("https://acme.kommo.com/")
    for elsewhere in (
        "https://evil.example/api/v4/x?page=2",
        "//acme.kommo.com.evil.example/api/v4/x",
        "http://acme.kommo.com/api/v4/x",
        "https://acme.kommo.com:8443/api/v4/x",
        "https://u:p@acme.kommo.com/api/v4/x",
    ):
        with pytest.raises(PermanentError, match="another origin"):
            following(elsewhere)


async def test_a_worker_builds_crm_services_from_settings_only_with_a_keyring(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_CRM__KEYRING", raising=False)
    assert crm_services(session, load_settings().crm) is None
    key = new_key()
    with patched_env({"CONVEYOR_CRM__KEYRING": f"k9:{key}", "CONVEYOR_CRM__TIMEOUT_S": "3"}):
        settings = load_settings()
    built = crm_services(session, settings.crm)
    assert built is not None and built.keyring.current == "k9"
    assert built.kommo.config.timeout_s == 3.0 and built.kommo.config.requests_per_second == 7.0
    assert built.policy.token_refresh_margin_s == settings.crm.token_refresh_margin_s
    assert key not in repr(built.policy) + repr(built.kommo.config)
