"""Login and logout, Find a job, CRM, and the audit trail."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from streams.console import audit, queries
from streams.console import context as cx
from streams.console.auth import Identity


def routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/find", find)
    app.router.add_get("/crm", crm)
    app.router.add_get("/audit", audit_list)
    app.router.add_get("/audit/{id:\\d+}", audit_one)


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _next(value: Any) -> str:
    """Where to go after the login: a path on this site only."""
    text = value if isinstance(value, str) else ""
    return text if text.startswith("/") and not text.startswith("//") else "/"


async def login_page(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    context = {
        "next": _next(request.query.get("next")),
        "error": None,
        "token_login": c.auth.token_login,
    }
    return cx.render(request, "login.html", context)


async def login(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    form = await request.post()
    token = form.get("token")
    who = cx.identity(request)
    found = c.auth.login(token) if isinstance(token, str) and token else None
    address = cx.peer(request)
    if found is None:
        await audit.record(c.db, who, address, "login_failed", name="anonymous")
        context = {"next": _next(form.get("next")), "error": "Unknown token.", "token_login": True}
        return cx.render(request, "login.html", context, status=401)
    name, role = found
    session = c.auth.new_session(name, role)
    logged_in = Identity(name, role, "token", session.csrf)
    await audit.record(c.db, logged_in, address, "login")
    response = cx.redirect(_next(form.get("next")))
    cx.set_session(request, response, c.auth.seal(session))
    return response


async def logout(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    who = cx.identity(request)
    await audit.record(c.db, who, cx.peer(request), "logout")
    response = cx.redirect("/login")
    cx.set_session(request, response, None)
    return response


@cx.template("find.html")
async def find(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    q = request.query.get("q", "").strip()[:500]
    found = await queries.find(c.db, c.settings.kafka.dlq_topic, q) if q else None
    running = []
    if q:
        for view in c.state.fleet.workers():
            if view.gone:
                continue
            for job in view.report.in_flight:
                if q in (job.job_id, job.key):
                    running.append((view.report, job))
    return {"q": q, "found": found, "running": running}


@cx.template("crm.html")
async def crm(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    timeout = c.settings.jobs.asset_process.timeout_s
    return {
        "connections": await queries.connections(c.db),
        "stuck": await queries.stuck_assets(c.db, timeout),
        "asset_timeout_s": timeout,
    }


@cx.template("audit.html")
async def audit_list(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    before = request.query.get("before")
    size = c.settings.console.page_size
    rows = await audit.page(c.db, int(before) if before and before.isdigit() else None, size)
    return {"rows": rows, "more": len(rows) == size}


async def audit_one(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    row = await audit.one(c.db, int(request.match_info["id"]))
    if row is None:
        return cx.not_found(request, f"audit entry {request.match_info['id']}")
    return cx.render(request, "audit_one.html", {"row": row})
