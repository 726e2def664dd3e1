"""Kommo connections in ``crm_connections``: register, read, re-encrypt, sync status.

A sync's lease on its connection (claim, own, finish, fail): sync_lease.py.

SQL as named constants, small functions taking a connection (asyncpg). Every
secret column is encrypted with the keyring (handlers/crm/crypto.py) under
the context ``crm_connections/<id>/<column> account=<account URL>``: a row
whose account URL was changed in the database no longer decrypts, so its
secrets cannot be sent to another host. Values written before that binding
(format ``v1``, context ``crm_connections/<id>/<column>``) still decrypt
until ``conveyor crm rotate-key`` rewrites them. Nothing here returns or logs
a plaintext secret except the explicit ``secret`` accessor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from handlers.crm.crypto import DecryptError, Keyring
from handlers.db import Connection as DbConnection
from handlers.db import Row
from handlers.errors import PermanentError
from handlers.providers.kommo_accounts import origin

SECRET_COLUMNS = (
    "client_secret_enc",
    "access_token_enc",
    "refresh_token_enc",
    "webhook_secret_enc",
)

UPSERT = """
INSERT INTO crm_connections (
    id, organization_id, base_url, client_id, client_secret_enc, redirect_uri,
    access_token_enc, refresh_token_enc, access_expires_at, webhook_secret_enc,
    account_subdomain
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO UPDATE SET
    account_subdomain = EXCLUDED.account_subdomain,
    organization_id = EXCLUDED.organization_id,
    base_url = EXCLUDED.base_url,
    client_id = EXCLUDED.client_id,
    client_secret_enc = EXCLUDED.client_secret_enc,
    redirect_uri = EXCLUDED.redirect_uri,
    access_token_enc = EXCLUDED.access_token_enc,
    refresh_token_enc = EXCLUDED.refresh_token_enc,
    access_expires_at = EXCLUDED.access_expires_at,
    webhook_secret_enc = EXCLUDED.webhook_secret_enc,
    needs_reauth = false,
    reauth_reason = NULL,
    updated_at = now()
"""

SELECT = """
SELECT id, organization_id, base_url, account_subdomain, client_id, redirect_uri,
       access_expires_at, needs_reauth, reauth_reason, sync_state, sync_started_at,
       sync_finished_at, sync_error, sync_pipelines, sync_statuses, sync_custom_fields,
       sync_api_calls
FROM crm_connections
"""
SELECT_ONE = SELECT + " WHERE id = $1"
SELECT_ALL = SELECT + " ORDER BY organization_id, id"
SELECT_SECRET = "SELECT {column}, base_url FROM crm_connections WHERE id = $1"
SELECT_SECRETS_FOR_UPDATE = f"""
SELECT id, base_url, {", ".join(SECRET_COLUMNS)} FROM crm_connections WHERE id = $1 FOR UPDATE
"""
SELECT_IDS = "SELECT id FROM crm_connections ORDER BY id"
SELECT_WEBHOOK = """
SELECT organization_id, base_url, account_subdomain, webhook_secret_enc
FROM crm_connections WHERE id = $1
"""
UPDATE_SECRET = "UPDATE crm_connections SET {column} = $2, updated_at = now() WHERE id = $1"
SELECT_SYNC = """
SELECT sync_job_id, sync_state, sync_started_at, sync_finished_at, sync_error, sync_pipelines,
       sync_statuses, sync_custom_fields, sync_removed, sync_api_calls
FROM crm_connections WHERE id = $1
"""
EXISTS = "SELECT EXISTS (SELECT 1 FROM crm_connections WHERE id = $1)"
# The key id of a stored value 'v1:<key id>:<data>' (no secret leaves the database).
_KEY_IDS = f"unnest(ARRAY[{', '.join(SECRET_COLUMNS)}]) AS v"
LIST = f"""
SELECT id, organization_id, base_url, account_subdomain, client_id, redirect_uri,
       access_expires_at, tokens_refreshed_at, needs_reauth, reauth_reason, sync_state,
       sync_started_at, sync_finished_at, sync_error, sync_pipelines, sync_statuses,
       sync_custom_fields, sync_removed, sync_api_calls,
       ARRAY(SELECT DISTINCT split_part(v, ':', 2) FROM {_KEY_IDS} ORDER BY 1) AS key_ids
FROM crm_connections
WHERE ($1::text IS NULL OR organization_id = $1)
ORDER BY organization_id, id
"""
KEY_COUNTS = f"""
SELECT split_part(v, ':', 2) AS key_id, count(*) AS n
FROM crm_connections, {_KEY_IDS}
GROUP BY 1 ORDER BY 1
"""
# Values still in the format that does not bind the account URL (v1).
UNBOUND_COUNT = f"""
SELECT count(*) FROM crm_connections, {_KEY_IDS} WHERE split_part(v, ':', 1) = 'v1'
"""

# The webhook secret keys an HMAC-SHA256: at least 32 characters (128 bits as hex).
MIN_WEBHOOK_SECRET_CHARS = 32


@dataclass(frozen=True, slots=True)
class NewConnection:
    """A connection as the platform's OAuth consent leaves it (``conveyor crm connect``).

    ``account_subdomain``: the account its webhook deliveries must name; by
    default the first label of ``base_url`` (``acme`` of ``https://acme.kommo.com``).
    """

    id: str
    organization_id: str
    base_url: str
    client_id: str
    client_secret: str
    redirect_uri: str
    access_token: str
    refresh_token: str
    access_expires_at: datetime
    webhook_secret: str
    account_subdomain: str | None = None

    def __repr__(self) -> str:
        return f"NewConnection(id={self.id!r}, base_url={self.base_url!r}, secrets='***')"

    def subdomain(self) -> str:
        """The account's subdomain; ValueError when none is given or can be read from the URL."""
        found = self.account_subdomain or subdomain_of(self.base_url)
        if not found:
            raise ValueError(
                f"{self.base_url} names no account subdomain: give it (--account-subdomain)"
            )
        return found.lower()


@dataclass(frozen=True, slots=True)
class Connection:
    """A connection without its secrets, and its last sync (for handlers)."""

    id: str
    organization_id: str
    base_url: str
    account_subdomain: str | None
    client_id: str
    redirect_uri: str
    access_expires_at: datetime
    needs_reauth: bool
    reauth_reason: str | None
    sync_state: str
    sync_started_at: datetime | None
    sync_finished_at: datetime | None
    sync_error: str | None
    sync_pipelines: int | None
    sync_statuses: int | None
    sync_custom_fields: int | None
    sync_api_calls: int | None


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """What a webhook delivery is checked against; its repr shows no secret."""

    organization_id: str
    account_subdomain: str | None
    secret: str = field(repr=False)


def check_organization(
    connection_id: str, connection_organization: str, job_organization: str | None
) -> None:
    """The one rule for every CRM job (sync, webhook, message.send): its envelope names the
    connection's organization. None or another is refused (PermanentError): budgets,
    fair share and usage are counted by the job's organization, and a platform tenant
    must not act through another tenant's connection."""
    if job_organization != connection_organization:
        named = "no organization" if job_organization is None else "another organization"
        raise PermanentError(
            f"CRM connection {connection_id} belongs to another organization than the job's"
            f" (the job names {named}): nothing done"
        )


def subdomain_of(base_url: str) -> str | None:
    """``acme`` of ``https://acme.kommo.com``; None for an address or a two-label name."""
    host = urlsplit(origin(base_url)).hostname or ""
    labels = host.split(".")
    if len(labels) < 3 or host.replace(".", "").isdigit() or ":" in host:
        return None
    return labels[0]


def context(connection_id: str, column: str, base_url: str) -> str:
    """What a secret's ciphertext is bound to: this row, this column and its account URL.

    Unambiguous read from the right: the URL has no space, the column no slash.
    """
    return f"{legacy_context(connection_id, column)} account={origin(base_url)}"


def legacy_context(connection_id: str, column: str) -> str:
    """The context of values written before the account URL was bound (format v1)."""
    return f"crm_connections/{connection_id}/{column.removesuffix('_enc')}"


def open_secret(
    keyring: Keyring, stored: str, connection_id: str, column: str, base_url: str
) -> str:
    """Decrypt one stored secret of a connection at ``base_url`` (either format)."""
    return keyring.decrypt(
        stored, context(connection_id, column, base_url), legacy_context(connection_id, column)
    )


async def register(conn: DbConnection, keyring: Keyring, new: NewConnection) -> None:
    """Insert the connection, or replace its settings and tokens (a re-consent clears
    ``needs_reauth``). ValueError: no account subdomain, or a webhook secret too short."""
    if len(new.webhook_secret) < MIN_WEBHOOK_SECRET_CHARS:
        raise ValueError(
            f"the webhook secret must be at least {MIN_WEBHOOK_SECRET_CHARS} characters"
        )
    subdomain = new.subdomain()

    def seal(column: str, value: str) -> str:
        return keyring.encrypt(value, context(new.id, column, new.base_url))

    await conn.execute(
        UPSERT,
        new.id,
        new.organization_id,
        origin(new.base_url),
        new.client_id,
        seal("client_secret_enc", new.client_secret),
        new.redirect_uri,
        seal("access_token_enc", new.access_token),
        seal("refresh_token_enc", new.refresh_token),
        new.access_expires_at,
        seal("webhook_secret_enc", new.webhook_secret),
        subdomain,
    )


async def load(conn: DbConnection, connection_id: str) -> Connection:
    """The connection; PermanentError when there is none (a job naming it cannot succeed)."""
    row = await conn.fetchrow(SELECT_ONE, connection_id)
    if row is None:
        raise PermanentError(f"no CRM connection {connection_id!r}")
    return Connection(**dict(row))


async def secret(conn: DbConnection, keyring: Keyring, connection_id: str, column: str) -> str:
    """One decrypted secret column (``webhook_secret_enc``, ``client_secret_enc``...)."""
    if column not in SECRET_COLUMNS:
        raise ValueError(f"{column} is not a secret column")
    row = await conn.fetchrow(SELECT_SECRET.format(column=column), connection_id)
    if row is None:
        raise PermanentError(f"no CRM connection {connection_id!r}")
    return open_secret(keyring, row[column], connection_id, column, row["base_url"])


async def webhook_target(conn: DbConnection, keyring: Keyring, connection_id: str) -> WebhookTarget:
    """The connection's organization, account and decrypted webhook secret."""
    row = await conn.fetchrow(SELECT_WEBHOOK, connection_id)
    if row is None:
        raise PermanentError(f"no CRM connection {connection_id!r}")
    column = "webhook_secret_enc"
    secret = open_secret(keyring, row[column], connection_id, column, row["base_url"])
    return WebhookTarget(row["organization_id"], row["account_subdomain"], secret)


@dataclass(frozen=True, slots=True)
class Reencrypted:
    """A rotation: values rewritten, those that did not decrypt, connections gone through."""

    rewritten: int
    failures: tuple[str, ...] = ()
    connections: int = 1


async def connection_ids(conn: DbConnection) -> list[str]:
    return [r["id"] for r in await conn.fetch(SELECT_IDS)]


async def exists(conn: DbConnection, connection_id: str) -> bool:
    return bool(await conn.fetchval(EXISTS, connection_id))


async def reencrypt(conn: DbConnection, keyring: Keyring, connection_id: str) -> Reencrypted:
    """Re-encrypt one connection's secrets under the keyring's current key, bound to its
    account URL (a v1 value is rewritten even under the current key).

    In one transaction with the row locked: a token refresh that stores new
    tokens meanwhile waits for it (or it for the refresh) and is never
    overwritten with the old tokens. A value that does not decrypt (its key
    left the keyring, or it was tampered with) is left as it is and reported.
    """
    rewritten, failures = 0, []
    async with conn.transaction():
        row = await conn.fetchrow(SELECT_SECRETS_FOR_UPDATE, connection_id)
        if row is None:  # deleted meanwhile
            return Reencrypted(0)
        for column in SECRET_COLUMNS:
            try:
                moved = keyring.reencrypt(
                    row[column],
                    context(connection_id, column, row["base_url"]),
                    legacy_context(connection_id, column),
                )
            except DecryptError as exc:
                failures.append(str(exc))
                continue
            if moved is not None:
                await conn.execute(UPDATE_SECRET.format(column=column), connection_id, moved)
                rewritten += 1
    return Reencrypted(rewritten, tuple(failures))


async def reencrypt_all(
    conn: DbConnection, keyring: Keyring, progress: Callable[[int, int], None] | None = None
) -> Reencrypted:
    """``reencrypt`` every connection, each in its own transaction; ``progress(done, total)``
    after each (``conveyor crm rotate-key``)."""
    ids = await connection_ids(conn)
    rewritten = 0
    failures: tuple[str, ...] = ()
    for done, connection_id in enumerate(ids, start=1):
        result = await reencrypt(conn, keyring, connection_id)
        rewritten, failures = rewritten + result.rewritten, failures + result.failures
        if progress is not None:
            progress(done, len(ids))
    return Reencrypted(rewritten, failures, len(ids))


async def listing(conn: DbConnection, organization_id: str | None = None) -> list[Row]:
    """Every connection (of one organization) with its last sync and the key ids of its
    secrets — never a secret (``conveyor crm list``)."""
    return await conn.fetch(LIST, organization_id)


async def sync_status(conn: DbConnection, connection_id: str) -> Row:
    """The connection's last (or running) sync; PermanentError when there is no connection."""
    row = await conn.fetchrow(SELECT_SYNC, connection_id)
    if row is None:
        raise PermanentError(f"no CRM connection {connection_id!r}")
    return row


async def key_counts(conn: DbConnection) -> dict[str, int]:
    """How many stored secret values each key id encrypts."""
    return {r["key_id"]: r["n"] for r in await conn.fetch(KEY_COUNTS)}


async def unbound_count(conn: DbConnection) -> int:
    """How many stored secret values are not yet bound to their account URL (format v1)."""
    return int(await conn.fetchval(UNBOUND_COUNT))
