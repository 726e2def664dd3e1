"""A connection's OAuth tokens, refreshed once per connection across every worker.

Kommo rotates refresh tokens: issuing a new pair kills the refresh token that
was used. Two workers refreshing one connection at once would each spend the
same refresh token; the second is refused and the connection is lost. So a
refresh takes a per-connection advisory lock (transaction-scoped, held by
one worker of the whole cluster at a time), reads the tokens again — another
worker may have refreshed while we waited — and stores both new tokens in the
same transaction before the lock is released.

A token is refreshed when it expires within ``margin_s``, or once after
Kommo answered 401 to it. A refusal (``invalid_grant``) marks the connection
``needs_reauth`` (committed) and fails its jobs permanently with that reason,
until the platform registers fresh tokens.
"""

from __future__ import annotations

import structlog

from handlers.crm.connections import context, open_secret
from handlers.crm.crypto import DecryptError, Keyring
from handlers.db import Connection, Pool, Row
from handlers.errors import PermanentError, RetryableError
from handlers.providers.kommo import Kommo
from handlers.providers.kommo_oauth import GrantRefused, OAuthApp

log = structlog.get_logger(__name__)

LOCK_NAMESPACE = 0x6B6D6D6F  # "kmmo": the advisory lock's first key; hashtext(id) the second

SELECT_ACCESS = """
SELECT base_url, access_token_enc, needs_reauth, reauth_reason,
       access_expires_at > now() + make_interval(secs => $2) AS fresh
FROM crm_connections WHERE id = $1
"""
LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
SELECT_FOR_REFRESH = """
SELECT base_url, client_id, redirect_uri, client_secret_enc, access_token_enc,
       refresh_token_enc, needs_reauth, reauth_reason,
       access_expires_at > now() + make_interval(secs => $2) AS fresh
FROM crm_connections WHERE id = $1
"""
STORE_TOKENS = """
UPDATE crm_connections
SET access_token_enc = $2, refresh_token_enc = $3,
    access_expires_at = now() + make_interval(secs => $4),
    tokens_refreshed_at = now(), updated_at = now()
WHERE id = $1
"""
MARK_REAUTH = """
UPDATE crm_connections SET needs_reauth = true, reauth_reason = $2, updated_at = now()
WHERE id = $1
"""


class ConnectionTokens:
    """The TokenSource of one connection at ``base_url``, backed by ``crm_connections``.

    Its secrets are decrypted bound to ``base_url`` (the account its client
    calls), and a refresh goes to that account only.
    """

    def __init__(
        self,
        db: Pool,
        connection_id: str,
        base_url: str,
        keyring: Keyring,
        kommo: Kommo,
        margin_s: float,
    ) -> None:
        self.db, self.connection_id, self.base_url = db, connection_id, base_url
        self.keyring, self.kommo, self.margin_s = keyring, kommo, margin_s

    async def access_token(self) -> str:
        """A token valid for at least ``margin_s`` more, refreshing it first if needed."""
        async with self.db.acquire() as conn:
            found = await conn.fetchrow(SELECT_ACCESS, self.connection_id, self.margin_s)
        row = self._usable(found)
        if row["fresh"]:
            return self._open(row["access_token_enc"], "access_token")
        return await self._refresh(rejected=None)

    async def refreshed_after(self, rejected: str) -> str:
        """A token other than ``rejected`` (which Kommo answered 401 to)."""
        return await self._refresh(rejected=rejected)

    async def _refresh(self, rejected: str | None) -> str:
        refused: GrantRefused | None = None
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(LOCK, LOCK_NAMESPACE, self.connection_id)
            found = await conn.fetchrow(SELECT_FOR_REFRESH, self.connection_id, self.margin_s)
            row = self._usable(found)
            current = self._open(row["access_token_enc"], "access_token")
            if (row["fresh"] and rejected is None) or (rejected not in (None, current)):
                return current  # another worker refreshed while we waited for the lock
            try:
                return await self._exchange(conn, row)
            except GrantRefused as exc:
                await conn.execute(MARK_REAUTH, self.connection_id, str(exc))
                refused = exc
        log.warning("crm.needs_reauth", connection_id=self.connection_id, reason=str(refused))
        raise PermanentError(f"CRM connection {self.connection_id} needs re-consent: {refused}")

    async def _exchange(self, conn: Connection, row: Row) -> str:
        app = OAuthApp(
            row["client_id"],
            self._open(row["client_secret_enc"], "client_secret"),
            row["redirect_uri"],
        )
        refresh = self._open(row["refresh_token_enc"], "refresh_token")
        grant = await self.kommo.refresh(self.base_url, app, refresh)
        await conn.execute(
            STORE_TOKENS,
            self.connection_id,
            self._seal(grant.access_token, "access_token"),
            self._seal(grant.refresh_token, "refresh_token"),
            float(grant.expires_in),
        )
        log.info("crm.tokens_refreshed", connection_id=self.connection_id)
        return grant.access_token

    def _usable(self, row: Row | None) -> Row:
        """The connection's row; PermanentError when there is none or it needs consent."""
        if row is None:
            raise PermanentError(f"no CRM connection {self.connection_id!r}")
        if row["base_url"] != self.base_url:  # re-registered at another account meanwhile
            raise RetryableError(f"CRM connection {self.connection_id}'s account URL changed")
        if row["needs_reauth"]:
            raise PermanentError(
                f"CRM connection {self.connection_id} needs re-consent: {row['reauth_reason']}"
            )
        return row

    def _open(self, stored: str, column: str) -> str:
        try:
            return open_secret(self.keyring, stored, self.connection_id, column, self.base_url)
        except DecryptError as exc:  # a key dropped too early, or the row was edited
            raise PermanentError(str(exc)) from None

    def _seal(self, value: str, column: str) -> str:
        return self.keyring.encrypt(value, context(self.connection_id, column, self.base_url))
