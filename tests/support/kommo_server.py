"""A real local Kommo account (aiohttp) speaking Kommo's API v4 wire format.

One server is one Kommo account (``https://<subdomain>.kommo.com`` in real
life; ``base_url`` here). What it implements, and the reference page each
part follows, is listed in docs/KOMMO.md. In short:

- ``POST /oauth2/access_token``: ``authorization_code`` and ``refresh_token``
  grants (JSON or form body). Refresh tokens rotate: issuing a new pair kills
  the refresh token that was used, and a dead one is refused with a 401
  problem document (``hint: "Token has been revoked"``).
- ``GET /api/v4/leads/pipelines`` (statuses embedded, not paged),
  ``GET /api/v4/{leads,contacts,companies}/custom_fields`` (paged),
  ``GET /api/v4/{leads,contacts}`` and ``/{id}``, ``GET /api/v4/account``;
- notes: ``POST /api/v4/{entity}/notes`` (a JSON array), ``POST
  /api/v4/{entity}/{id}/notes``, ``GET /api/v4/{entity}/{id}/notes`` and
  ``GET /api/v4/{entity}/notes`` with ``filter[id][]``, ``filter[note_type][]``,
  ``filter[updated_at][from|to]`` and ``order[id|updated_at]``;
- pagination with ``page``/``limit`` (≤ 250, default 50), ``_page`` and
  ``_links.next``; 204 without a body for an empty page;
- errors as ``application/problem+json``; at most ``rate_limit`` requests in
  any second (7, as documented), else 429 with ``Retry-After``.

Faults: ``faults`` is a queue of scripted faults (one consumed per matching
request): a status (401, 429, 5xx...), optionally after performing the
operation; slow; hang; ``held`` — answer normally once the test sets
``release``; ``late`` — perform the operation, then answer
after ``delay_s`` (past the client's timeout); and ``deferred`` — perform it
``delay_s`` after the request arrived even if the client has gone by then (a
server that finishes a write after the client gave up). ``chaos`` adds faults at
random (seeded). ``calls`` counts requests per route.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from tests.support.http import serve

CLIENT_ID = "kommo-test-client-id"
CLIENT_SECRET = "kommo-test-client-secret"
REDIRECT_URI = "https://platform.example/kommo/callback"
ACCOUNT_ID = 31361463
ENTITIES = ("leads", "contacts", "companies")
NOTE_TYPES = frozenset(
    {
        "common",
        "call_in",
        "call_out",
        "service_message",
        "geolocation",
        "sms_in",
        "sms_out",
        "extended_service_message",
        "attachment",
    }
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 250
HAL = "application/hal+json"
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour for requests to ``route`` (any route when None).

    ``kind``: ``status`` (answer ``status``; with ``after`` the operation is
    performed first), ``slow`` (wait ``delay_s``, then answer normally),
    ``held`` (wait until the server's ``release`` is set, then answer normally),
    ``hang`` (never answer), ``late`` (perform, then answer after ``delay_s``) or
    ``deferred`` (perform after ``delay_s`` whether or not the client still waits).
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    route: str | None = None
    after: bool = False
    detail: str | None = None
    location: str | None = None  # a redirect's Location (with status 3xx)
    body: str | None = None  # answer this body (with content_type) instead of a problem
    content_type: str = "text/plain"

    @classmethod
    def answer(cls, status: int, route: str | None = None, **kw: Any) -> Fault:
        return cls("status", status, route=route, **kw)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1", route: str | None = None) -> Fault:
        return cls("status", 429, retry_after, route=route)


@dataclass(frozen=True)
class Hit:
    route: str
    arrived: float  # time.monotonic()
    status: int


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class SlidingWindow:
    """At most ``limit`` accepted requests in any ``window_s``."""

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._times: deque[float] = deque()

    def take(self, now: float) -> float | None:
        """None when the request is accepted, else the seconds until one would be."""
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            self._times.append(now)
            return None
        return self._times[0] + self.window_s - now


class Refused(Exception):
    """Answer with a problem document."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


@dataclass
class KommoServer:
    """The account's state; tests seed data, inject faults and read ``calls``/``hits``."""

    subdomain: str = "conveyor-test"
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    redirect_uri: str = REDIRECT_URI
    access_ttl_s: int = 86_400
    rate_limit: int | None = 7
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    custom_fields: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {e: [] for e in ENTITIES}
    )
    leads: dict[int, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {e: [] for e in ENTITIES}
    )
    faults: deque[Fault] = field(default_factory=deque)
    chaos: list[tuple[float, Fault]] = field(default_factory=list)
    seed: int = 7
    calls: Counter[str] = field(default_factory=Counter)
    hits: list[Hit] = field(default_factory=list)
    token_grants: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _access: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    _refresh: set[str] = field(default_factory=set)
    _codes: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1_000_001))
    _window: SlidingWindow | None = None
    _rng: random.Random = field(default_factory=random.Random)
    _called: asyncio.Condition = field(default_factory=asyncio.Condition)
    _deferred: set[asyncio.Task[web.Response]] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # for ``held`` faults

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)
        if self.rate_limit is not None:
            self._window = SlidingWindow(self.rate_limit)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- seeding -------------------------------------------------------------

    def grant(self, expires_in: int | None = None) -> TokenPair:
        """A fresh token pair, as the platform's OAuth consent would leave it."""
        ttl = self.access_ttl_s if expires_in is None else expires_in
        access = f"at-{secrets.token_hex(12)}"
        refresh = f"rt-{secrets.token_hex(12)}"
        self._access[access] = time.monotonic() + ttl
        self._refresh.add(refresh)
        return TokenPair(access, refresh, ttl)

    def authorization_code(self) -> str:
        code = f"code-{secrets.token_hex(8)}"
        self._codes.add(code)
        return code

    def revoke_access(self, token: str) -> None:
        self._access.pop(token, None)

    def refresh_is_valid(self, token: str) -> bool:
        return token in self._refresh

    def next_id(self) -> int:
        return next(self._ids)

    def add_lead(self, lead_id: int | None = None, **fields: Any) -> dict[str, Any]:
        lead_id = lead_id or self.next_id()
        now = int(time.time())
        lead = {
            "id": lead_id,
            "name": f"Lead {lead_id}",
            "price": 0,
            "responsible_user_id": 504141,
            "status_id": 142,
            "pipeline_id": self.pipelines[0]["id"] if self.pipelines else 0,
            "created_at": now,
            "updated_at": now,
            "is_deleted": False,
            "account_id": ACCOUNT_ID,
            **fields,
        }
        lead["_links"] = self._self_link(f"/api/v4/leads/{lead_id}")
        self.leads[lead_id] = lead
        return lead

    def notes_of(self, entity: str, entity_id: int) -> list[dict[str, Any]]:
        return [n for n in self.notes[entity] if n["entity_id"] == entity_id]

    def calls_to(self, prefix: str) -> int:
        return sum(n for route, n in self.calls.items() if route.startswith(prefix))

    # --- the HTTP side -------------------------------------------------------

    async def wait_for_call(self, route: str, n: int = 1, timeout_s: float = 10.0) -> None:
        """Return once ``route`` was requested ``n`` times (answered or not)."""
        async with asyncio.timeout(timeout_s), self._called:
            await self._called.wait_for(lambda: self.calls[route] >= n)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        route, operation = self._route(request)
        async with self._called:
            self.calls[route] += 1
            self._called.notify_all()
        try:
            response = await self._serve(request, route, operation)
        except asyncio.CancelledError:  # the client gave up (hang, late, timeout)
            self.hits.append(Hit(route, arrived, 499))
            raise
        self.hits.append(Hit(route, arrived, response.status))
        return response

    async def _serve(
        self, request: web.Request, route: str, operation: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        if self._window is not None and (wait_s := self._window.take(time.monotonic())):
            return _problem(429, "Too many requests", {"Retry-After": str(math.ceil(wait_s))})
        fault = self._next_fault(route)
        try:
            if route != "POST /oauth2/access_token":
                self._authorize(request)
            if fault is not None and fault.kind == "deferred":
                await request.read()  # the body outlives the connection
                return await self._defer(operation, fault.delay_s)
            if fault is None or fault.kind in ("slow", "held"):
                if fault is not None and fault.kind == "slow":
                    await asyncio.sleep(fault.delay_s)
                if fault is not None and fault.kind == "held":
                    await self.release.wait()
                return await operation()
            return await self._faulty(fault, operation)
        except Refused as refused:
            return _problem(refused.status, refused.detail, extra=refused.extra)

    async def _faulty(
        self, fault: Fault, operation: Callable[[], Awaitable[web.Response]]
    ) -> web.Response:
        if fault.kind == "hang":
            await asyncio.Event().wait()
        if fault.kind == "late":
            response = await operation()
            await asyncio.sleep(fault.delay_s)
            return response
        if fault.after:
            await operation()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.location is not None:
            headers["Location"] = fault.location
        if fault.body is not None:  # another server's answer (a proxy, a firewall)
            return web.Response(
                status=fault.status, text=fault.body, content_type=fault.content_type
            )
        return _problem(fault.status, fault.detail or f"injected HTTP {fault.status}", headers)

    async def _defer(
        self, operation: Callable[[], Awaitable[web.Response]], delay_s: float
    ) -> web.Response:
        async def later() -> web.Response:
            await asyncio.sleep(delay_s)
            return await operation()

        task = asyncio.ensure_future(later())
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)
        return await asyncio.shield(task)  # a client that gives up does not stop it

    def _next_fault(self, route: str) -> Fault | None:
        for fault in self.faults:
            if fault.route in (None, route):
                self.faults.remove(fault)
                return fault
        for probability, fault in self.chaos:
            if fault.route in (None, route) and self._rng.random() < probability:
                return fault
        return None

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        expiry = self._access.get(token)
        if not header.startswith("Bearer ") or expiry is None or expiry < time.monotonic():
            raise Refused(401, "Unauthorized: the access token is invalid or expired")

    def _route(self, request: web.Request) -> tuple[str, Callable[[], Awaitable[web.Response]]]:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts == ["oauth2", "access_token"] and method == "POST":
            return "POST /oauth2/access_token", lambda: self._token(request)
        if parts[:2] != ["api", "v4"] or len(parts) < 3:
            return f"{method} {request.path}", _not_found
        rest = parts[2:]
        entity = rest[0]
        if rest == ["account"] and method == "GET":
            return "GET /api/v4/account", self._account
        if rest == ["leads", "pipelines"] and method == "GET":
            return "GET /api/v4/leads/pipelines", self._pipelines
        if entity in ENTITIES and rest[1:] == ["custom_fields"] and method == "GET":
            return f"GET /api/v4/{entity}/custom_fields", lambda: self._fields(request, entity)
        if entity in ENTITIES and rest[-1:] == ["notes"]:
            return self._notes_route(request, entity, rest[1:-1])
        if entity in ("leads", "contacts") and method == "GET":
            if len(rest) == 1:
                return f"GET /api/v4/{entity}", lambda: self._list_entities(request, entity)
            if len(rest) == 2 and rest[1].isdigit():
                return f"GET /api/v4/{entity}/{{id}}", lambda: self._one(entity, int(rest[1]))
        return f"{method} {request.path}", _not_found

    def _notes_route(
        self, request: web.Request, entity: str, middle: list[str]
    ) -> tuple[str, Callable[[], Awaitable[web.Response]]]:
        owner = int(middle[0]) if middle and middle[0].isdigit() else None
        if len(middle) > 1 or (middle and owner is None):
            return f"{request.method} {request.path}", _not_found
        path = f"/api/v4/{entity}/{{id}}/notes" if owner is not None else f"/api/v4/{entity}/notes"
        if request.method == "POST":
            return f"POST {path}", lambda: self._add_notes(request, entity, owner)
        return f"GET {path}", lambda: self._list_notes(request, entity, owner)

    # --- operations ----------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.token_grants.append(str(body.get("grant_type")))
        if (body.get("client_id"), body.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ) or body.get("redirect_uri") != self.redirect_uri:
            raise _oauth_problem(401, "Client authentication failed", "Invalid client")
        if body.get("grant_type") == "refresh_token":
            if not self._take(self._refresh, body.get("refresh_token")):
                raise _revoked()
        elif body.get("grant_type") == "authorization_code":
            if not self._take(self._codes, body.get("code")):
                raise _revoked("Authorization code has been revoked")
        else:
            raise _oauth_problem(400, "The authorization grant type is not supported", "")
        pair = self.grant()
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": pair.expires_in,
                "server_time": int(time.time()),
                "access_token": pair.access_token,
                "refresh_token": pair.refresh_token,
            }
        )

    @staticmethod
    def _take(valid: set[str], token: Any) -> bool:
        if not isinstance(token, str) or token not in valid:
            return False
        valid.discard(token)
        return True

    async def _account(self) -> web.Response:
        return _hal({"id": ACCOUNT_ID, "name": self.subdomain, "subdomain": self.subdomain})

    async def _pipelines(self) -> web.Response:
        if not self.pipelines:
            return web.Response(status=204)
        return _hal(
            {
                "_total_items": len(self.pipelines),
                "_links": self._self_link("/api/v4/leads/pipelines"),
                "_embedded": {"pipelines": self.pipelines},
            }
        )

    async def _fields(self, request: web.Request, entity: str) -> web.Response:
        return self._page(request, self.custom_fields[entity], "custom_fields", counts=True)

    async def _list_entities(self, request: web.Request, entity: str) -> web.Response:
        items = list((self.leads if entity == "leads" else self.contacts).values())
        return self._page(request, items, entity)

    async def _one(self, entity: str, entity_id: int) -> web.Response:
        item = (self.leads if entity == "leads" else self.contacts).get(entity_id)
        return web.Response(status=204) if item is None else _hal(item)

    async def _add_notes(
        self, request: web.Request, entity: str, owner: int | None
    ) -> web.Response:
        body = await request.json()
        if not isinstance(body, list) or not body:
            raise Refused(400, "Request validation failed: expected a non-empty array")
        created = [self._new_note(entity, owner, item, i) for i, item in enumerate(body)]
        self.notes[entity].extend(created)
        answer = [
            {"id": n["id"], "entity_id": n["entity_id"], "request_id": n["request_id"]}
            | {"_links": n["_links"]}
            for n in created
        ]
        path = f"/api/v4/{entity}/{owner}/notes" if owner else f"/api/v4/{entity}/notes"
        return _hal({"_links": self._self_link(path), "_embedded": {"notes": answer}})

    def _new_note(self, entity: str, owner: int | None, item: Any, index: int) -> dict[str, Any]:
        item = item if isinstance(item, dict) else {}
        entity_id = owner if owner is not None else item.get("entity_id")
        note_type = item.get("note_type", "common")
        params = item.get("params")
        store = {"leads": self.leads, "contacts": self.contacts}.get(entity, {})
        errors = []
        if not isinstance(entity_id, int) or entity_id not in store:
            errors.append({"code": "NotFound", "path": "entity_id", "detail": "Entity not found"})
        if note_type not in NOTE_TYPES:
            errors.append({"code": "NotSupportedChoice", "path": "note_type", "detail": note_type})
        if not isinstance(params, dict):
            errors.append({"code": "FieldMissing", "path": "params", "detail": "params missing"})
        if errors:
            raise Refused(
                400,
                "Request validation failed",
                **{"validation-errors": [{"request_id": str(index), "errors": errors}]},
            )
        now = int(time.time())
        note_id = self.next_id()
        return {
            "id": note_id,
            "entity_id": entity_id,
            "created_by": 0,
            "updated_by": 0,
            "created_at": now,
            "updated_at": now,
            "responsible_user_id": 504141,
            "group_id": 0,
            "note_type": note_type,
            "params": params,
            "account_id": ACCOUNT_ID,
            "request_id": str(item.get("request_id", index)),
            "_links": self._self_link(f"/api/v4/{entity}/{entity_id}/notes/{note_id}"),
        }

    async def _list_notes(
        self, request: web.Request, entity: str, owner: int | None
    ) -> web.Response:
        query = request.query
        store = {"leads": self.leads, "contacts": self.contacts}.get(entity)
        if owner is not None and store is not None and owner not in store:
            return web.Response(status=204)  # a deleted lead's notes are not listed
        found = [n for n in self.notes[entity] if owner is None or n["entity_id"] == owner]
        ids = {int(v) for v in _many(query, "filter[id]") if v.isdigit()}
        types = set(_many(query, "filter[note_type]"))
        found = [
            n
            for n in found
            if (not ids or n["id"] in ids)
            and (not types or n["note_type"] in types)
            and _within(n["updated_at"], query)
        ]
        found.sort(key=lambda n: n["id"])
        for key in ("updated_at", "id"):
            order = query.get(f"order[{key}]")
            if order in ("asc", "desc"):
                found.sort(key=lambda n, k=key: n[k], reverse=order == "desc")  # type: ignore[misc]
        return self._page(request, found, "notes")

    # --- helpers -------------------------------------------------------------

    def _page(
        self, request: web.Request, items: list[dict[str, Any]], key: str, *, counts: bool = False
    ) -> web.Response:
        page = max(1, _int(request.query.get("page"), 1))
        limit = min(MAX_LIMIT, max(1, _int(request.query.get("limit"), DEFAULT_LIMIT)))
        chunk = items[(page - 1) * limit : page * limit]
        if not chunk:
            return web.Response(status=204)
        links = {"self": {"href": self._page_url(request, page, limit)}}
        if page * limit < len(items):
            links["next"] = {"href": self._page_url(request, page + 1, limit)}
        if page > 1:
            links["prev"] = {"href": self._page_url(request, page - 1, limit)}
        body: dict[str, Any] = {"_page": page, "_links": links, "_embedded": {key: chunk}}
        if counts:
            body = {"_total_items": len(items), "_page_count": -(-len(items) // limit)} | body
        return _hal(body)

    def _page_url(self, request: web.Request, page: int, limit: int) -> str:
        query = [(k, v) for k, v in request.query.items() if k not in ("page", "limit")]
        query += [("page", str(page)), ("limit", str(limit))]
        encoded = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in query)
        return f"{self.base_url}{request.path}?{encoded}"

    def _self_link(self, path: str) -> dict[str, Any]:
        return {"self": {"href": self.base_url + path}}


# --- account contents ------------------------------------------------------------


def make_pipelines(count: int, statuses: int, start_id: int = 7_000_000) -> list[dict[str, Any]]:
    """``count`` pipelines of ``statuses`` stages each, the last two the system 142/143."""
    pipelines = []
    for p in range(count):
        pipeline_id = start_id + p
        stages = [
            _status(pipeline_id, pipeline_id * 100 + s, f"Stage {s}", 10 * (s + 1), s == 0)
            for s in range(max(0, statuses - 2))
        ]
        stages += [
            _status(pipeline_id, 142, "Closed - won", 10_000, False),
            _status(pipeline_id, 143, "Closed - lost", 11_000, False),
        ]
        pipelines.append(
            {
                "id": pipeline_id,
                "name": f"Pipeline {p}",
                "sort": p + 1,
                "is_main": p == 0,
                "is_unsorted_on": True,
                "is_archive": False,
                "account_id": ACCOUNT_ID,
                "_embedded": {"statuses": stages[:statuses]},
            }
        )
    return pipelines


def make_fields(entity: str, count: int, start_id: int) -> list[dict[str, Any]]:
    """``count`` custom fields of ``entity``; every third a select with enums."""
    fields = []
    for i in range(count):
        select = i % 3 == 0
        fields.append(
            {
                "id": start_id + i,
                "name": f"{entity} field {i}",
                "code": f"F{i}" if i % 5 == 0 else None,
                "sort": 500 + i,
                "type": "select" if select else "text",
                "entity_type": entity,
                "is_api_only": False,
                "group_id": None,
                "enums": [{"id": start_id * 10 + e, "value": f"v{e}", "sort": e} for e in range(3)]
                if select
                else None,
            }
        )
    return fields


def _status(
    pipeline_id: int, status_id: int, name: str, sort: int, incoming: bool
) -> dict[str, Any]:
    return {
        "id": status_id,
        "name": name,
        "sort": sort,
        "is_editable": status_id not in (142, 143) and not incoming,
        "pipeline_id": pipeline_id,
        "color": "#99ccff",
        "type": 1 if incoming else 0,
        "account_id": ACCOUNT_ID,
    }


# --- webhooks ----------------------------------------------------------------------


def form_encode(tree: Mapping[str, Any], prefix: str = "") -> str:
    """Kommo's webhook body: nested keys as ``leads[status][0][id]=…``, form-encoded."""
    pairs: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs.append(form_encode(value, name))
        elif isinstance(value, list):
            pairs.append(form_encode({str(i): v for i, v in enumerate(value)}, name))
        else:
            pairs.append(f"{quote(name, safe='')}={quote(str(value), safe='')}")
    return "&".join(p for p in pairs if p)


# --- small pieces ------------------------------------------------------------------


def _revoked(hint: str = "Token has been revoked") -> Refused:
    return _oauth_problem(
        401,
        "The request is missing a required parameter, includes an invalid parameter value, "
        "includes a parameter more than once, or is otherwise malformed",
        hint,
        title="Bad request",
    )


def _oauth_problem(status: int, detail: str, hint: str, title: str = "Invalid client") -> Refused:
    """The token endpoint's refusals: a problem document of type OAuthProblemJson, as in
    amocrm-api-php#123 (revoked token) and #235 (client authentication failed)."""
    extra = {"hint": hint} if hint else {}
    return Refused(
        status,
        detail,
        title=title,
        type="https://developers.kommo.com/v3/errors/OAuthProblemJson",
        **extra,
    )


def _problem(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    body = {
        "title": extra.get("title") if extra and "title" in extra else _title(status),
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return web.json_response(body, status=status, headers=headers, content_type=PROBLEM)


def _title(status: int) -> str:
    titles = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
    return titles.get(status, "Internal Server Error" if status >= 500 else "Error")


def _hal(body: Any) -> web.Response:
    return web.json_response(body, content_type=HAL)


async def _not_found() -> web.Response:
    raise Refused(404, "Not found")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        parsed = await request.json()
        return parsed if isinstance(parsed, dict) else {}
    return dict(await request.post())


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _many(query: MultiDictProxy[str], name: str) -> list[str]:
    """Values of ``name``, ``name[]`` and ``name[0..]``."""
    return [
        v for k, v in query.items() if k == name or (k.startswith(name + "[") and k.endswith("]"))
    ]


def _within(updated_at: int, query: MultiDictProxy[str]) -> bool:
    since = query.get("filter[updated_at][from]") or query.get("filter[updated_at]")
    until = query.get("filter[updated_at][to]")
    return (since is None or updated_at >= _int(since, 0)) and (
        until is None or updated_at <= _int(until, 2**62)
    )


@asynccontextmanager
async def kommo_server(**options: Any) -> AsyncIterator[KommoServer]:
    server = KommoServer(**options)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with serve(app, server.host) as port:
        server.port = port
        try:
            yield server
        finally:
            for task in list(server._deferred):
                task.cancel()
