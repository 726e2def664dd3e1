"""``conveyor crm``: register Kommo connections, list them, rotate their key, sync one.

The platform's web app does the OAuth consent; ``crm connect`` stores what
it got (docs/KOMMO.md, "Operating connections"). Secrets never come from the
command line — a process list and a shell history keep argv — but from the
environment (``KOMMO_CLIENT_SECRET``, ``KOMMO_ACCESS_TOKEN``,
``KOMMO_REFRESH_TOKEN``, ``KOMMO_WEBHOOK_SECRET``) or from stdin (the same
``NAME=value`` lines; asked for without echo on a terminal). No secret is
ever printed, in output or in an error.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from handlers.crm import connections
from handlers.crm.connections import MIN_WEBHOOK_SECRET_CHARS, NewConnection
from handlers.crm.crypto import Keyring
from handlers.db import Row
from handlers.errors import PermanentError
from handlers.providers.kommo_accounts import AccountHosts, origin
from schemas.envelope import JobEnvelope
from streams.commands.postgres import database
from streams.commands.safe import cell, clean
from streams.commands.submit import producer, publish
from streams.registry import build_registry
from streams.settings import Settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USAGE = 2
SECRETS = {  # NewConnection field -> where it is read from
    "client_secret": "KOMMO_CLIENT_SECRET",
    "access_token": "KOMMO_ACCESS_TOKEN",
    "refresh_token": "KOMMO_REFRESH_TOKEN",
    "webhook_secret": "KOMMO_WEBHOOK_SECRET",
}
# An option whose name has one of these words is refused before argparse sees
# its value (--client-secret, --access-token, --token, --password...).
SECRET_WORDS = ("secret", "token", "password")
SECRETS_FROM = "--secrets-from"
CONNECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}$")
SYNC_POLL_S = 0.5


class UsageError(Exception):
    """A mistake in the command's input; the message never contains a secret."""


def refuse_secrets_in_argv(argv: Sequence[str]) -> str | None:
    """Why ``argv`` must be refused before parsing (it carries a secret), or None.

    Only option names are looked at and named, never a value.
    """
    for arg in argv:
        name = arg.split("=", 1)[0].lower()
        if name == SECRETS_FROM or not name.startswith("-"):
            continue
        if any(word in name for word in SECRET_WORDS):
            return (
                f"{name} refused: secrets are never taken on the command line (the process "
                "list and the shell history keep it). Set "
                f"{', '.join(SECRETS.values())} in the environment, or pipe NAME=value lines "
                "with --secrets-from stdin."
            )
    return None


def run_crm(settings: Settings, args: Any) -> int:
    """Dispatch ``conveyor crm ACTION``; usage errors exit 2, failures 1."""
    try:
        if args.crm_command == "connect":
            return asyncio.run(connect(settings, args, os.environ, sys.stdin))
        if args.crm_command == "list":
            return asyncio.run(list_connections(settings, args.org, args.json))
        if args.crm_command == "rotate-key":
            return asyncio.run(rotate_key(settings))
        return asyncio.run(sync(settings, args.connection_id, args.wait))
    except UsageError as exc:
        err.print(f"conveyor crm {args.crm_command}: {clean(exc)}", markup=False)
        return EXIT_USAGE
    except (OSError, asyncpg.PostgresError) as exc:
        hint = " (run `conveyor migrate`)" if isinstance(exc, asyncpg.UndefinedTableError) else ""
        err.print(f"conveyor crm {args.crm_command}: Postgres: {clean(exc)}{hint}", markup=False)
        return 1


# --- connect -------------------------------------------------------------------


async def connect(settings: Settings, args: Any, environ: Mapping[str, str], stdin: TextIO) -> int:
    keyring = keyring_of(settings)
    new = NewConnection(
        id=connection_id(args.connection_id),
        organization_id=required(args.org, "--org"),
        base_url=account_url(args.base_url, settings.crm.allowed_account_hosts),
        client_id=required(args.client_id, "--client-id"),
        redirect_uri=web_url(args.redirect_uri, "--redirect-uri"),
        access_expires_at=expiry(args.expires_in, args.expires_at),
        account_subdomain=args.account_subdomain,
        **read_secrets(args.secrets_from, environ, stdin),
    )
    try:
        new.subdomain()
    except ValueError as exc:
        raise UsageError(f"--base-url: {exc}") from None
    async with database(settings) as conn:
        existed = await connections.exists(conn, new.id)
        await connections.register(conn, keyring, new)
    verb = "updated (needs_reauth cleared)" if existed else "registered"
    out.print(
        f"{verb} connection {new.id} of {new.organization_id} at {origin(new.base_url)}: "
        f"secrets encrypted under key {keyring.current!r}, access token expires "
        f"{new.access_expires_at:%Y-%m-%d %H:%M:%S %Z}",
        markup=False,
    )
    return 0


def read_secrets(source: str, environ: Mapping[str, str], stdin: TextIO) -> dict[str, str]:
    """The four secrets from the environment or stdin; UsageError names what is missing."""
    if source == "env":
        found = {field: environ.get(name, "").strip() for field, name in SECRETS.items()}
        where = "in the environment (or pipe them with --secrets-from stdin)"
    elif source == "stdin":
        found = _prompt() if stdin.isatty() else _lines(stdin.read())
        where = "on stdin"
    else:
        raise UsageError("--secrets-from takes 'env' or 'stdin'")
    missing = [SECRETS[field] for field in SECRETS if not found.get(field)]
    if missing:
        raise UsageError(f"{', '.join(missing)} missing or empty {where}")
    if len(found["webhook_secret"]) < MIN_WEBHOOK_SECRET_CHARS:
        raise UsageError(
            f"KOMMO_WEBHOOK_SECRET is shorter than {MIN_WEBHOOK_SECRET_CHARS} characters: it keys"
            " the HMAC that authenticates webhook deliveries (e.g. `openssl rand -hex 32`)"
        )
    return found


def _lines(text: str) -> dict[str, str]:
    """``NAME=value`` lines (blank lines, ``#`` comments and ``export`` allowed)."""
    fields = {name: field for field, name in SECRETS.items()}
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        field = fields.get(name.strip())
        if not sep or field is None:  # the line is not echoed: it may be a bare secret
            raise UsageError(f"stdin line {number}: expected one of {', '.join(fields)}=value")
        if field in found:
            raise UsageError(f"stdin line {number}: {name.strip()} given twice")
        found[field] = value.strip().strip("'\"")
    return found


def _prompt() -> dict[str, str]:
    return {field: getpass.getpass(f"{name}: ").strip() for field, name in SECRETS.items()}


def keyring_of(settings: Settings) -> Keyring:
    if settings.crm.keyring is None:
        raise UsageError(
            "crm.keyring is not set (CONVEYOR_CRM__KEYRING): secrets cannot be encrypted; "
            "see docs/KOMMO.md for making a key"
        )
    return Keyring.parse(settings.crm.keyring.get_secret_value())


def connection_id(value: str) -> str:
    if not CONNECTION_ID.match(value):
        raise UsageError(
            "a connection id is 1-200 letters, digits and _.:@- (starting with a letter or digit)"
        )
    return value


def required(value: str | None, option: str) -> str:
    if value is None or not value.strip():
        raise UsageError(f"{option} is required and cannot be empty")
    return value.strip()


def account_url(value: str, allowed: Sequence[str]) -> str:
    """An account origin the allowlist admits (https; plain http only for a loopback
    stand-in such as the demo's)."""
    try:
        return AccountHosts(allowed).check(value)
    except ValueError as exc:
        raise UsageError(f"--base-url: {exc}") from None


def web_url(value: str, option: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option}: expected an absolute http(s) URL")
    return value.strip()


def expiry(expires_in: float | None, expires_at: str | None) -> datetime:
    """When the access token expires: ``--expires-in`` seconds from now, or ``--expires-at``."""
    if expires_in is not None:
        return datetime.now(UTC) + timedelta(seconds=expires_in)
    try:
        when = datetime.fromisoformat(str(expires_at))
    except ValueError:
        raise UsageError("--expires-at: expected ISO 8601, e.g. 2026-12-01T10:00:00Z") from None
    if when.tzinfo is None:
        raise UsageError("--expires-at: give a time zone, e.g. 2026-12-01T10:00:00Z")
    return when


# --- list ----------------------------------------------------------------------


async def list_connections(settings: Settings, organization_id: str | None, as_json: bool) -> int:
    async with database(settings) as conn:
        rows = await connections.listing(conn, organization_id)
    if as_json:
        out.print_json(json.dumps([dict(r) for r in rows], default=_json_value))
        return 0
    out.print(connection_table(rows))
    out.print(f"{len(rows)} connection(s)")
    return 0


def connection_table(rows: Sequence[Row | Mapping[str, Any]]) -> Table:
    """The connections as a table; every field is data (escaped, never markup)."""
    table = Table("connection", "organization", "account", "state", "last sync", "synced", "keys")
    for r in rows:
        reason = r["reauth_reason"] or ""
        table.add_row(
            cell(r["id"]),
            cell(r["organization_id"]),
            cell(r["base_url"]),
            cell(f"needs re-consent: {reason}" if r["needs_reauth"] else "ok"),
            cell(_last_sync(r)),
            cell(_counts(r)),
            cell(", ".join(r["key_ids"])),
        )
    return table


def _last_sync(row: Row | Mapping[str, Any]) -> str:
    state: str = row["sync_state"]
    when = row["sync_finished_at"] if state != "running" else row["sync_started_at"]
    text = state + (f" {when:%Y-%m-%d %H:%M:%S}" if when else "")
    if state == "failed" and row["sync_error"]:
        error = row["sync_error"]
        text += f": {error if len(error) <= 80 else error[:79] + '…'}"
    return text


def _counts(row: Row | Mapping[str, Any]) -> str:
    if row["sync_pipelines"] is None:
        return ""
    return (
        f"{row['sync_pipelines']} pipelines, {row['sync_statuses']} statuses, "
        f"{row['sync_custom_fields']} fields ({row['sync_api_calls']} API calls)"
    )


def _json_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


# --- rotate-key ----------------------------------------------------------------


async def rotate_key(settings: Settings) -> int:
    """Re-encrypt every secret under the keyring's first key; then count what is left.

    Idempotent, and safe while workers run: each connection is rewritten in
    its own transaction with its row locked (handlers/crm/connections.py).
    """
    keyring = keyring_of(settings)
    async with database(settings) as conn:
        with Progress(console=out, transient=True, disable=not out.is_terminal) as progress:
            bar = progress.add_task(f"re-encrypting under {keyring.current!r}", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            result = await connections.reencrypt_all(conn, keyring, advance)
        counts = await connections.key_counts(conn)
        unbound = await connections.unbound_count(conn)
    out.print(
        f"re-encrypted {result.rewritten} secret value(s) of {result.connections} "
        f"connection(s) under key {keyring.current!r}"
    )
    for failure in result.failures:
        err.print(f"  not decryptable, left as it is: {clean(failure)}", markup=False)
    left = {key: n for key, n in counts.items() if key != keyring.current}
    older = {key: n for key, n in left.items() if key in keyring.keys}
    if older:  # rewritten meanwhile by a worker that encrypts with an older key
        err.print(
            f"still under older keys: {_per_key(older)}: a worker whose keyring starts with "
            f"another key wrote them meanwhile. Deploy this keyring (first key "
            f"{keyring.current!r}) to every worker, then run rotate-key again.",
            markup=False,
        )
    if left.keys() - older.keys():
        unknown = {key: n for key, n in left.items() if key not in older}
        err.print(
            f"under keys this keyring lacks: {_per_key(unknown)}: add them back (after the "
            "first key) and run rotate-key again.",
            markup=False,
        )
    if unbound:  # written meanwhile by a worker of the version before the binding
        err.print(
            f"{unbound} value(s) still in the format not bound to the account URL (v1):"
            " a worker of an older version wrote them meanwhile. Upgrade every worker, then"
            " run rotate-key again.",
            markup=False,
        )
    if left or unbound:
        return 1
    out.print(
        f"every stored secret is under key {keyring.current!r} and bound to its account URL:"
        " older keys can go"
    )
    return 0


def _per_key(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key!r} ({n} value(s))" for key, n in sorted(counts.items()))


# --- sync ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncResult:
    state: str  # succeeded | failed | running (not finished in time)
    row: Row


async def sync(settings: Settings, connection_id: str, wait_s: float | None) -> int:
    """Publish a ``crm.sync_pipelines`` job for one connection; optionally wait for it."""
    async with database(settings) as conn:
        try:
            found = await connections.load(conn, connection_id)
        except PermanentError:
            raise UsageError(
                f"no connection {connection_id!r} (`conveyor crm list` shows them)"
            ) from None
        if found.needs_reauth:
            raise UsageError(f"{connection_id} needs re-consent: {found.reauth_reason}")
        job_id = publish_sync(settings, connection_id, found.organization_id)
        out.print(f"published crm.sync_pipelines job {job_id} for {connection_id}", markup=False)
        if wait_s is None:
            out.print("`conveyor crm list` shows its outcome once a worker ran it")
            return 0
        result = await wait_for_sync(conn, connection_id, job_id, wait_s)
    out.print(describe_sync(connection_id, result), markup=False)
    return 0 if result.state == "succeeded" else 1


def publish_sync(settings: Settings, connection_id: str, organization_id: str | None = None) -> str:
    """Publish a sync job keyed by its connection (one connection's jobs stay in order)."""
    spec = build_registry(settings).specs["crm.sync_pipelines"]
    envelope = JobEnvelope(
        id=str(uuid.uuid4()),
        type=spec.job_type,
        organization_id=organization_id,
        payload={"connection_id": connection_id},
    )
    prod = producer(settings)
    publish(prod, spec.topic, envelope, connection_id.encode())
    if prod.flush(30):
        raise OSError("Kafka did not acknowledge the job within 30 s")
    return envelope.id


async def wait_for_sync(
    conn: asyncpg.Connection, connection_id: str, job_id: str, timeout_s: float
) -> SyncResult:
    """Poll the connection until the sync of ``job_id`` finished, or the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        row = await connections.sync_status(conn, connection_id)
        mine = row["sync_job_id"] == job_id
        if mine and row["sync_state"] in ("succeeded", "failed"):
            return SyncResult(row["sync_state"], row)
        if loop.time() > deadline:
            return SyncResult("running" if mine else "waiting", row)
        await asyncio.sleep(SYNC_POLL_S)


def describe_sync(connection_id: str, result: SyncResult) -> str:
    r = result.row
    if result.state == "succeeded":
        return (
            f"synced {connection_id}: {r['sync_pipelines']} pipelines, {r['sync_statuses']} "
            f"statuses, {r['sync_custom_fields']} custom fields, {r['sync_removed']} removed, "
            f"{r['sync_api_calls']} API calls"
        )
    if result.state == "failed":
        return f"sync of {connection_id} failed: {clean(r['sync_error'])}"
    if result.state == "running":
        return f"sync of {connection_id} still running"
    return (
        f"no worker ran the sync of {connection_id} yet: is one running with crm.keyring set "
        "(`make run` sets a dev key)?"
    )
