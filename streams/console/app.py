"""``conveyor console``: the operations console, an aiohttp app with server-rendered pages.

Its own process (and Deployment): it reads Postgres and the fleet topics,
writes pauses to the control topic and replays dead letters through the
same code as ``conveyor dlq``; it never imports the worker's runner. It
listens on ``console.host`` (loopback unless told otherwise).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import jinja2
import structlog
from aiohttp import web

from streams.commands.submit import producer
from streams.console import filters, views_dlq, views_fleet, views_misc
from streams.console.auth import COOKIE, Authenticator, Identity, csrf_ok, same_origin
from streams.console.context import (
    CONSOLE,
    IDENTITY,
    TEMPLATES,
    Console,
    console_of,
    error,
    peer,
    redirect,
    set_cookie,
)
from streams.console.state import ConsoleState
from streams.follow import FleetWriter
from streams.registry import build_registry
from streams.settings import Settings

log = structlog.get_logger(__name__)

HERE = Path(__file__).parent
OPEN_PATHS = ("/login", "/static/", "/healthz")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self';"
    " script-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who asks (proxy header, session cookie or nobody), CSRF on POSTs, headers on answers."""
    c = console_of(request)
    session = c.auth.unseal(request.cookies.get(COOKIE))
    fresh = session is None
    if session is None:
        session = c.auth.new_session()
    user = request.headers.get(c.settings.console.proxy_user_header)
    if user and c.auth.trusted(peer(request)):
        who = Identity(user, c.auth.proxy_role(user), "proxy", session.csrf)
    elif session.name is not None:
        who = Identity(session.name, session.role, "token", session.csrf)
    else:
        who = Identity(None, "viewer", "none", session.csrf)
    request[IDENTITY] = who
    response = await _guarded(request, handler, who)
    if fresh and COOKIE not in response.cookies:  # a login or logout set its own
        set_cookie(c, response, c.auth.seal(session))
    response.headers.update(HEADERS)
    return response


async def _guarded(request: web.Request, handler: Handler, who: Identity) -> web.StreamResponse:
    open_path = request.path.startswith(OPEN_PATHS)
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf_token")
        if not same_origin(request.headers.get("Origin"), request.host) or not csrf_ok(
            who, token if isinstance(token, str) else None
        ):
            log.warning("console.csrf_refused", path=request.path, address=peer(request))
            return error(request, 403, "Refused: the form's CSRF token is missing or wrong.")
    if who.name is None and not open_path:
        if request.method == "GET":
            return redirect(f"/login?{urlencode({'next': request.path_qs})}")
        return error(request, 401, "Log in first.")
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error(request, 404, "Not found.")
    except web.HTTPMethodNotAllowed:
        return error(request, 405, "Method not allowed.")
    except asyncpg.PostgresError as exc:
        log.error("console.postgres_failed", path=request.path, error=repr(exc)[:300])
        return error(request, 503, "Postgres did not answer; try again.")


def build_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[authenticate], client_max_size=1024 * 1024)
    app[CONSOLE] = console
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    filters.install(env)
    app[TEMPLATES] = env
    app.router.add_static("/static/", HERE / "static")
    views_misc.routes(app)
    views_fleet.routes(app)
    views_dlq.routes(app)
    return app


async def open_console(settings: Settings) -> Console:
    registry = build_registry(settings)
    db = await asyncpg.create_pool(
        settings.postgres.dsn.get_secret_value(),
        min_size=1,
        max_size=5,
        command_timeout=settings.postgres.command_timeout_s,
        server_settings={"application_name": "conveyor-console"},
    )
    state = ConsoleState(settings, registry)
    await state.start()
    writer = FleetWriter(settings.kafka)
    await writer.start()
    auth = Authenticator(settings.console)
    return Console(settings, registry, db, state, auth, writer, producer(settings))


async def close_console(console: Console) -> None:
    await console.state.stop()
    await console.writer.stop()
    await asyncio.to_thread(console.producer.flush, 10)
    await console.db.close()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    console = await open_console(settings)
    runner = web.AppRunner(build_app(console), access_log=None)
    await runner.setup()
    c = settings.console
    await web.TCPSite(runner, c.host, c.port).start()
    log.info("console.serving", url=f"http://{c.host}:{c.port}/", group_id=settings.kafka.group_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("console.stopping")
        await runner.cleanup()
        await close_console(console)
