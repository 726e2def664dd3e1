"""Token refresh serialized per connection across workers (real Postgres, local Kommo)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from handlers.crm import connections, tokens
from handlers.crm.connections import context
from handlers.crm.crypto import Keyring, new_key
from handlers.errors import PermanentError
from tests.support.crm import KEYRING, register_account, services
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

TOKEN = "POST /oauth2/access_token"
LEAD = "GET /api/v4/leads/{id}"


@pytest.fixture
async def server() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None) as srv:
        yield srv


@pytest.fixture
async def second_db(services: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    """A second worker's pool."""
    async with asyncpg.create_pool(services.dsn, min_size=1, max_size=4) as pool:
        yield pool


async def _stored(db: asyncpg.Pool, connection_id: str, column: str) -> str:
    async with db.acquire() as conn:
        return await connections.secret(conn, KEYRING, connection_id, column)


async def _forty_jobs_on_two_workers(
    server: KommoServer, db: asyncpg.Pool, second_db: asyncpg.Pool, connection_id: str
) -> list[object]:
    lead = server.add_lead()
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
        workers = [(services(one), db), (services(two), second_db)]
        calls = []
        for i in range(40):
            crm, pool = workers[i % 2]
            async with pool.acquire() as conn:
                connection = await connections.load(conn, connection_id)
            calls.append(crm.client(pool, connection).lead(lead["id"]))
        return await asyncio.gather(*calls, return_exceptions=True)


async def test_forty_jobs_on_two_workers_with_an_expired_token_refresh_once(
    server: KommoServer, db: asyncpg.Pool, second_db: asyncpg.Pool
) -> None:
    new = await register_account(db, server, expires_in_s=-10)
    results = await _forty_jobs_on_two_workers(server, db, second_db, new.id)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert server.calls[TOKEN] == 1 and server.calls[LEAD] == 40
    refresh = await _stored(db, new.id, "refresh_token_enc")
    assert refresh != new.refresh_token and server.refresh_is_valid(refresh)
    async with db.acquire() as conn:
        assert not (await connections.load(conn, new.id)).needs_reauth


async def test_without_the_lock_the_same_run_spends_the_refresh_token_twice(
    server: KommoServer,
    db: asyncpg.Pool,
    second_db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control for the test above: it fails when the refresh is not serialized."""
    monkeypatch.setattr(tokens, "LOCK", "SELECT $1::int, $2::text")
    # The window, widened: Kommo answers the first refresh after 0.5 s, so the
    # other jobs re-read the still-expired token meanwhile. (Without it, on a
    # loaded machine the first refresh sometimes committed before any other
    # job read the connection, and this control passed nothing.)
    server.faults.append(Fault("slow", delay_s=0.5, route=TOKEN))
    new = await register_account(db, server, expires_in_s=-10)
    results = await _forty_jobs_on_two_workers(server, db, second_db, new.id)
    assert server.calls[TOKEN] > 1
    assert any(isinstance(r, PermanentError) and "needs re-consent" in str(r) for r in results)


async def test_a_401_refreshes_once_for_every_job_that_got_it(
    server: KommoServer, db: asyncpg.Pool
) -> None:
    new = await register_account(db, server)
    server.revoke_access(new.access_token)
    lead = server.add_lead()
    async with aiohttp.ClientSession() as session:
        crm = services(session)
        async with db.acquire() as conn:
            connection = await connections.load(conn, new.id)
        found = await asyncio.gather(
            *(crm.client(db, connection).lead(lead["id"]) for _ in range(10))
        )
    assert all(f is not None and f["id"] == lead["id"] for f in found)
    assert server.calls[TOKEN] == 1 and server.calls[LEAD] == 20
    assert await _stored(db, new.id, "access_token_enc") != new.access_token


async def test_a_refused_refresh_marks_the_connection_and_fails_its_jobs_permanently(
    server: KommoServer, db: asyncpg.Pool
) -> None:
    new = await register_account(db, server, expires_in_s=-10)
    assert server.refresh_is_valid(new.refresh_token)
    server._refresh.discard(new.refresh_token)  # spent elsewhere (e.g. another integration)
    async with aiohttp.ClientSession() as session:
        crm = services(session)
        source = crm.tokens(db, new.id, new.base_url)
        with capture_logs() as logs, pytest.raises(PermanentError) as caught:
            await source.access_token()
        assert "invalid_grant" in str(caught.value) and "Token has been revoked" in str(
            caught.value
        )
        with pytest.raises(PermanentError, match="needs re-consent"):
            await source.access_token()
    assert server.calls[TOKEN] == 1  # the second job failed without calling Kommo
    async with db.acquire() as conn:
        connection = await connections.load(conn, new.id)
    assert connection.needs_reauth and "Token has been revoked" in (connection.reauth_reason or "")
    said = repr(logs) + str(caught.value) + repr(connection)
    for secret in (new.refresh_token, new.access_token, new.client_secret, new.webhook_secret):
        assert secret not in said
    again = await register_account(db, server)  # a re-consent clears the mark
    async with db.acquire() as conn:
        assert not (await connections.load(conn, again.id)).needs_reauth


async def test_a_new_key_first_rewrites_every_secret_and_old_keys_can_go(
    server: KommoServer, db: asyncpg.Pool
) -> None:
    old = Keyring.parse(f"old:{new_key()}")
    new = await register_account(db, server, keyring=old)
    # Rows of other tests in this database are under KEYRING's key: keep it in the ring.
    # "rotated", not "new": test_crm_commands rotates to a key of its own called "new",
    # and must not take this test's rows for already rotated.
    rotated = Keyring.parse(f"rotated:{new_key()},old:{_b64(old, 'old')},k1:{_b64(KEYRING, 'k1')}")
    async with db.acquire() as conn:
        rewritten = (await connections.reencrypt_all(conn, rotated)).rewritten
        assert rewritten >= 4
        assert (await connections.reencrypt_all(conn, rotated)).rewritten == 0
        row = await conn.fetchrow("SELECT * FROM crm_connections WHERE id = $1", new.id)
    only_new = Keyring("rotated", {"rotated": rotated.keys["rotated"]})
    for column in connections.SECRET_COLUMNS:
        assert only_new.key_id_of(row[column]) == "rotated"
        only_new.decrypt(row[column], context(new.id, column, new.base_url))
    bound = context(new.id, "refresh_token", new.base_url)
    assert only_new.decrypt(row["refresh_token_enc"], bound) == new.refresh_token
    back = Keyring.parse(f"k1:{_b64(KEYRING, 'k1')},rotated:{_b64(rotated, 'rotated')}")
    async with db.acquire() as conn:  # the database's other rows back under the tests' key
        await connections.reencrypt_all(conn, back)


def _b64(ring: Keyring, key_id: str) -> str:
    return base64.b64encode(ring.keys[key_id]).decode()
