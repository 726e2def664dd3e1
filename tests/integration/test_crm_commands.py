"""``conveyor crm connect | list | rotate-key``, run as commands against the real Postgres."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from handlers.crm import connections
from handlers.crm.connections import SECRET_COLUMNS, context
from handlers.crm.crypto import DecryptError, Keyring, new_key
from tests.support.cli import conveyor
from tests.support.crm import KEYRING, KEYRING_TEXT, register_account, seal_v1, services
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

TOKEN = "POST /oauth2/access_token"
NAMES = {
    "client_secret": "KOMMO_CLIENT_SECRET",
    "access_token": "KOMMO_ACCESS_TOKEN",
    "refresh_token": "KOMMO_REFRESH_TOKEN",
    "webhook_secret": "KOMMO_WEBHOOK_SECRET",
}


@pytest.fixture
def env(services: Endpoints) -> dict[str, str]:
    return {"CONVEYOR_POSTGRES__DSN": services.dsn, "CONVEYOR_CRM__KEYRING": KEYRING_TEXT}


def _secrets() -> dict[str, str]:
    """Four distinct values no output may contain."""
    return {field: f"{field}-{secrets.token_hex(16)}" for field in NAMES}


def _connect(connection_id: str, *extra: str) -> list[str]:
    return [
        "crm",
        "connect",
        connection_id,
        "--org",
        "org-cli",
        "--base-url",
        "https://acme.kommo.com",
        "--client-id",
        "client-1",
        "--redirect-uri",
        "https://platform.example/kommo/callback",
        "--expires-in",
        "86400",
        *extra,
    ]


def _new_id() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


async def _stored(db: asyncpg.Pool, connection_id: str, keyring: Keyring) -> dict[str, str]:
    async with db.acquire() as conn:
        return {
            f: await connections.secret(conn, keyring, connection_id, f"{f}_enc") for f in NAMES
        }


async def test_connect_takes_secrets_from_the_environment_and_list_shows_none(
    env: dict[str, str], db: asyncpg.Pool
) -> None:
    values, connection_id = _secrets(), _new_id()
    from_env = {NAMES[f]: v for f, v in values.items()}
    first = conveyor(*_connect(connection_id), env={**env, **from_env})
    assert first.returncode == 0, first.stderr
    assert f"registered connection {connection_id}" in first.stdout
    assert await _stored(db, connection_id, KEYRING) == values
    async with db.acquire() as conn:
        await conn.execute(
            "UPDATE crm_connections SET needs_reauth = true WHERE id = $1", connection_id
        )
    again = conveyor(*_connect(connection_id), env={**env, **from_env})
    assert again.returncode == 0 and "updated (needs_reauth cleared)" in again.stdout
    listed = conveyor("crm", "list", "--org", "org-cli", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["id"] == connection_id)
    assert row["key_ids"] == ["k1"] and row["needs_reauth"] is False
    assert row["sync_state"] == "never" and row["base_url"] == "https://acme.kommo.com"
    table = conveyor("crm", "list", env=env)
    assert connection_id in table.stdout and "never" in table.stdout
    config = conveyor("config", env={**env, **from_env})
    said = "".join(r.stdout + r.stderr for r in (first, again, listed, table, config))
    for secret in [*values.values(), KEYRING_TEXT.split(":", 1)[1]]:
        assert secret not in said


async def test_connect_reads_name_value_lines_on_stdin(
    env: dict[str, str], db: asyncpg.Pool
) -> None:
    values, connection_id = _secrets(), _new_id()
    lines = "\n".join(f"{NAMES[f]}={v}" for f, v in values.items())
    done = conveyor(
        *_connect(connection_id, "--secrets-from", "stdin"),
        env=env,
        stdin=f"# from the consent callback\n{lines}\n",
    )
    assert done.returncode == 0, done.stderr
    assert await _stored(db, connection_id, KEYRING) == values
    assert not any(v in done.stdout + done.stderr for v in values.values())


@pytest.mark.parametrize(
    "attempt",
    [
        ["--client-secret", "{secret}"],
        ["--client-secret={secret}"],
        ["--access-token", "{secret}"],
        ["--secrets", "{secret}"],  # not an abbreviation of --secrets-from
        ["{secret}"],  # a stray positional argument
    ],
)
async def test_a_secret_on_the_command_line_is_refused_and_never_echoed(
    env: dict[str, str], db: asyncpg.Pool, attempt: list[str]
) -> None:
    secret, connection_id = f"sk-{secrets.token_hex(8)}", _new_id()
    from_env = {name: "from-env" for name in NAMES.values()}
    args = [a.format(secret=secret) for a in attempt]
    refused = conveyor(*_connect(connection_id, *args), env={**env, **from_env})
    assert refused.returncode == 2
    assert secret not in refused.stdout + refused.stderr
    assert "never taken on the command line" in refused.stderr or "(not shown)" in refused.stderr
    async with db.acquire() as conn:
        assert not await connections.exists(conn, connection_id)


def test_connect_says_what_is_wrong_without_echoing_secrets(env: dict[str, str]) -> None:
    from_env = {name: "x" for name in NAMES.values()}
    cases = [
        ({**env}, [], "KOMMO_CLIENT_SECRET, KOMMO_ACCESS_TOKEN, KOMMO_REFRESH_TOKEN"),
        ({**env, "CONVEYOR_CRM__KEYRING": ""}, [], "crm.keyring is not set"),
        ({**env, **from_env}, ["--base-url", "http://acme.kommo.com"], "served over https"),
        ({**env, **from_env}, ["--base-url", "https://acme.kommo.com/api"], "no path"),
    ]
    for case_env, extra, said in cases:
        if case_env.get("CONVEYOR_CRM__KEYRING") == "":
            case_env = {**from_env, "CONVEYOR_POSTGRES__DSN": env["CONVEYOR_POSTGRES__DSN"]}
        failed = conveyor(*_connect(_new_id(), *extra), env=case_env)
        assert failed.returncode == 2 and said in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr
    at = _connect(_new_id())
    at[at.index("--expires-in") : at.index("--expires-in") + 2] = ["--expires-at", "2030-01-01"]
    failed = conveyor(*at, env={**env, **from_env})
    assert failed.returncode == 2 and "give a time zone" in failed.stderr
    bare = f"rt-{secrets.token_hex(8)}"  # a token pasted without its name
    failed = conveyor(*_connect(_new_id(), "--secrets-from", "stdin"), env=env, stdin=bare)
    assert failed.returncode == 2 and "stdin line 1" in failed.stderr
    assert bare not in failed.stderr + failed.stdout


def _rotation(old: Keyring) -> tuple[str, Keyring]:
    """A keyring with a new first key; the old keys stay (rows of other tests use k1)."""
    new = new_key()
    text = f"new:{new},old:{_b64(old, 'old')},k1:{_b64(KEYRING, 'k1')}"
    return text, Keyring("new", {"new": base64.b64decode(new)})


async def test_rotate_key_leaves_every_value_decryptable_with_only_the_new_key(
    env: dict[str, str], db: asyncpg.Pool
) -> None:
    old = Keyring.parse(f"old:{new_key()}")
    async with kommo_server() as server:
        registered = [await register_account(db, server, keyring=old) for _ in range(3)]
    ring, only_new = _rotation(old)
    rotated = conveyor("crm", "rotate-key", env={**env, "CONVEYOR_CRM__KEYRING": ring})
    assert rotated.returncode == 0, rotated.stderr
    assert "every stored secret is under key 'new'" in rotated.stdout
    async with db.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT id, base_url, {', '.join(SECRET_COLUMNS)} FROM crm_connections"
        )
    for row in rows:  # every connection of the database, each value with the new key alone
        for column in SECRET_COLUMNS:
            only_new.decrypt(row[column], context(row["id"], column, row["base_url"]))
    for new in registered:
        assert await _stored(db, new.id, only_new) == {f: getattr(new, f) for f in NAMES}
    again = conveyor("crm", "rotate-key", env={**env, "CONVEYOR_CRM__KEYRING": ring})
    assert again.returncode == 0 and "re-encrypted 0 secret value(s)" in again.stdout
    said = rotated.stdout + rotated.stderr + again.stdout + again.stderr
    assert not any(new.refresh_token in said or new.client_secret in said for new in registered)


@pytest.fixture
async def held_token_endpoint() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None) as server:
        server.faults.append(Fault("held", route=TOKEN))
        yield server
        server.release.set()


async def test_rotate_key_while_a_worker_refreshes_keeps_the_refreshed_tokens(
    env: dict[str, str], db: asyncpg.Pool, held_token_endpoint: KommoServer
) -> None:
    """A refresh read the row (old key) and waits for Kommo while rotate-key rewrites
    it: the refresh's new tokens, stored after, are what remains — under the new key."""
    server = held_token_endpoint
    old = Keyring.parse(f"old:{new_key()}")
    new = await register_account(db, server, keyring=old, expires_in_s=-10)
    ring, only_new = _rotation(old)
    async with aiohttp.ClientSession() as session:
        worker = services(session, Keyring.parse(ring))  # deployed with the new keyring
        refresh = asyncio.ensure_future(worker.tokens(db, new.id, new.base_url).access_token())
        await server.wait_for_call(TOKEN)  # holds the refresh lock, the token call pending
        env = {**env, "CONVEYOR_CRM__KEYRING": ring}
        rotated = await asyncio.to_thread(conveyor, "crm", "rotate-key", env=env)
        assert rotated.returncode == 0, rotated.stderr
        assert not refresh.done()  # rotate-key did not wait for the refresh
        server.release.set()
        access = await refresh
    stored = await _stored(db, new.id, only_new)
    assert stored["access_token"] == access != new.access_token
    assert server.refresh_is_valid(stored["refresh_token"])  # the rotated pair, not the old one
    assert stored["client_secret"] == new.client_secret
    assert server.calls[TOKEN] == 1


async def test_rotate_key_binds_values_of_the_old_format_to_their_account_url(
    env: dict[str, str], db: asyncpg.Pool
) -> None:
    """Values written before the account URL was bound (v1) still work, and rotate-key
    rewrites them bound, even under the same key; an edited URL then refuses them."""
    old = Keyring.parse(f"old:{new_key()}")
    async with kommo_server() as server:
        new = await register_account(db, server, keyring=old)
    unbound = {
        c: seal_v1(old, getattr(new, c.removesuffix("_enc")), new.id, c) for c in SECRET_COLUMNS
    }
    for column, value in unbound.items():  # what the version before the binding wrote
        await db.execute(f"UPDATE crm_connections SET {column} = $2 WHERE id = $1", new.id, value)
    assert await _stored(db, new.id, old) == {f: getattr(new, f) for f in NAMES}
    ring = f"old:{_b64(old, 'old')}"
    rotated = conveyor("crm", "rotate-key", env={**env, "CONVEYOR_CRM__KEYRING": ring})
    assert f"crm_connections/{new.id}/" not in rotated.stderr, "each of its values decrypted"
    row = await db.fetchrow("SELECT * FROM crm_connections WHERE id = $1", new.id)
    for column in SECRET_COLUMNS:
        assert row[column].startswith("v2:old:"), column
    assert await _stored(db, new.id, old) == {f: getattr(new, f) for f in NAMES}
    edit = "UPDATE crm_connections SET base_url = 'https://x.kommo.com' WHERE id = $1"
    await db.execute(edit, new.id)
    try:
        async with db.acquire() as conn:
            with pytest.raises(DecryptError):
                await connections.secret(conn, old, new.id, "refresh_token_enc")
    finally:  # no longer decryptable: other rotate-key tests expect every row to be
        await db.execute("DELETE FROM crm_connections WHERE id = $1", new.id)


def _b64(ring: Keyring, key_id: str) -> str:
    return base64.b64encode(ring.keys[key_id]).decode()
