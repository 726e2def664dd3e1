"""What the console's views share: the app's parts, who asks, answers and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import asyncpg
import jinja2
from aiohttp import web

from streams.commands.submit import JobProducer
from streams.console.auth import COOKIE, Authenticator, Identity
from streams.console.state import ConsoleState
from streams.follow import FleetWriter
from streams.registry import Registry
from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class Console:
    """What every view needs, kept on the app (``request.app[CONSOLE]``)."""

    settings: Settings
    registry: Registry
    db: asyncpg.Pool
    state: ConsoleState
    auth: Authenticator
    writer: FleetWriter
    producer: JobProducer  # the commands' producer (trace context when tracing is on)


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
View = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render(
    request: web.Request, name: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """The template ``name`` (autoescaped) with the layout's context and ``context``."""
    template = request.app[TEMPLATES].get_template(name)
    html = template.render({**base_context(request), **context})
    return web.Response(text=html, content_type="text/html", status=status)


def template(name: str) -> Callable[[Callable[[web.Request], Awaitable[dict[str, Any]]]], View]:
    """A view that returns its page's context, rendered with ``name``."""

    def wrap(view: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> View:
        @wraps(view)
        async def rendered(request: web.Request) -> web.StreamResponse:
            return render(request, name, await view(request))

        return rendered

    return wrap


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def peer(request: web.Request) -> str | None:
    return request.remote


def set_cookie(c: Console, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        httponly=True,
        samesite="Strict",
        secure=c.settings.console.cookie_secure,
        path="/",
        max_age=int(c.settings.console.session_ttl_s),
    )


def set_session(request: web.Request, response: web.StreamResponse, value: str | None) -> None:
    """Replace the session cookie (a login), or remove it (a logout)."""
    if value is None:
        response.del_cookie(COOKIE, path="/")
    else:
        set_cookie(console_of(request), response, value)


def base_context(request: web.Request) -> dict[str, object]:
    """What every page's layout shows: who is logged in, the consumer group, where we are."""
    return {
        "me": request.get(IDENTITY),
        "group_id": console_of(request).settings.kafka.group_id,
        "path": request.path,
    }


def error(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status)


def redirect(location: str) -> web.Response:
    """303 See Other (after a POST: the browser GETs the result page)."""
    return web.Response(status=303, headers={"Location": location})


def forbidden(request: web.Request) -> web.Response:
    return error(request, 403, "Forbidden: this needs the operator role.")


def not_found(request: web.Request, what: str) -> web.Response:
    return error(request, 404, f"Not found: {what}.")
