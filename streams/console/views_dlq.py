"""Dead letters: a filtered, keyset-paged list; a dead letter's page; replay, resolve, purge.

Every action goes through a confirmation page that states how many dead
letters it touches, then runs the same code as ``conveyor dlq`` and writes
an audit row; the browser is sent to that row's page to see what happened.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from schemas.dlq import Stage
from streams.commands import dlq, dlq_replay
from streams.console import audit
from streams.console import context as cx
from streams.dlq_detail import shown
from streams.redact import Redactor
from streams.settings import secret_values

ACTIONS = ("replay", "resolve", "purge")
STATUSES = {
    "new": ("new",),
    "replayed": ("replayed",),
    "resolved": ("resolved",),
    "all": ("new", "replayed", "resolved"),
}
MAX_REPLAY = 10_000  # dead letters one replay request republishes (run it again for more)
FILTERS = ("job_type", "stage", "org", "error_class", "status", "since", "until")


def routes(app: web.Application) -> None:
    app.router.add_get("/dlq", listing)
    app.router.add_get("/dlq/confirm", confirm)
    app.router.add_post("/dlq/act", act)
    app.router.add_get("/dlq/{id:\\d+}", detail)


def _time(text: str | None) -> datetime | None:
    """A datetime-local value (or ISO 8601) as UTC; None when empty or unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def filter_params(source: MultiMapping[Any]) -> dict[str, str]:
    """The filter fields of a query or form, as given (empty ones left out)."""
    params = {}
    for name in FILTERS:
        value = source.get(name)
        if isinstance(value, str) and value.strip():
            params[name] = value.strip()[:200]
    return params


def selection(params: dict[str, str], **overrides: Any) -> dlq.Selection:
    stage = params.get("stage")
    values: dict[str, Any] = {
        "job_type": params.get("job_type"),
        "stage": stage if stage in {s.value for s in Stage} else None,
        "organization": params.get("org"),
        "error_class": params.get("error_class"),
        "statuses": STATUSES.get(params.get("status", "new"), ("new",)),
        "since": _time(params.get("since")),
        "until": _time(params.get("until")),
    }
    values.update(overrides)
    return dlq.Selection(**values)


@cx.template("dlq_list.html")
async def listing(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    params = filter_params(request.query)
    sel = selection(params)
    before = request.query.get("before")
    cursor = int(before) if before and before.isdigit() else None
    size = c.settings.console.page_size
    topic = c.settings.kafka.dlq_topic
    async with c.db.acquire() as conn:
        rows = await dlq.page(conn, topic, sel, cursor, size)
        total = await dlq.count(conn, topic, sel)
    return {
        "rows": rows,
        "total": total,
        "params": params,
        "next_before": rows[-1]["id"] if len(rows) == size else None,
        "job_types": list(c.registry.specs),
        "stages": [s.value for s in Stage],
        "statuses": list(STATUSES),
    }


async def detail(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    row_id = int(request.match_info["id"])
    async with c.db.acquire() as conn:
        row, lineage = await dlq.show(conn, c.settings.kafka.dlq_topic, row_id)
    if row is None:
        return cx.not_found(request, f"dead letter {row_id}")
    view = shown(row, Redactor(secret_values(c.settings)))
    context = {"row": row, "view": view, "lineage": lineage}
    return cx.render(request, "dlq_detail.html", context)


def _action_selection(action: str, params: dict[str, str], row_id: int | None) -> dlq.Selection:
    """What an action applies to: one dead letter, or the filter (replay/resolve skip resolved)."""
    if row_id is not None:
        statuses = ("new", "replayed", "resolved") if action == "purge" else ("new", "replayed")
        return dlq.Selection(ids=[row_id], statuses=statuses)
    sel = selection(params)
    if action != "purge":
        kept = tuple(s for s in sel.statuses if s != "resolved") or ("new",)
        sel = selection(params, statuses=kept)
    return sel


def _row_id(source: MultiMapping[Any]) -> int | None:
    value = source.get("id")
    return int(value) if isinstance(value, str) and value.isdigit() else None


async def confirm(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    if not cx.identity(request).operator:
        return cx.forbidden(request)
    action = request.query.get("action", "")
    if action not in ACTIONS:
        return cx.error(request, 400, f"Unknown action {action!r}.")
    params = filter_params(request.query)
    row_id = _row_id(request.query)
    sel = _action_selection(action, params, row_id)
    async with c.db.acquire() as conn:
        count = await dlq.count(conn, c.settings.kafka.dlq_topic, sel)
    context = {
        "action": action,
        "params": params,
        "row_id": row_id,
        "count": count,
        "max_replay": MAX_REPLAY,
    }
    return cx.render(request, "dlq_confirm.html", context)


async def act(request: web.Request) -> web.Response:
    c = cx.console_of(request)
    who = cx.identity(request)
    if not who.operator:
        return cx.forbidden(request)
    form = await request.post()
    action = str(form.get("action") or "")
    if action not in ACTIONS:
        return cx.error(request, 400, f"Unknown action {action!r}.")
    params = filter_params(form)
    row_id = _row_id(form)
    sel = _action_selection(action, params, row_id)
    stated = str(form.get("count") or "")
    topic = c.settings.kafka.dlq_topic
    detail: dict[str, Any] = {"filter": params} if row_id is None else {}
    async with c.db.acquire() as conn:
        count = await dlq.count(conn, topic, sel)
        if stated != str(count):  # the rows changed since the confirmation: confirm again
            return cx.error(
                request,
                409,
                f"{count} dead letters match now, not the {stated} you confirmed; go back and"
                " confirm again.",
            )
        if action == "purge":
            ids = await dlq.purge_selected(conn, topic, sel)
        elif action == "resolve":
            note = str(form.get("note") or "").strip()
            if not note:
                return cx.error(request, 400, "Say why no replay is needed: a note is required.")
            ids = await dlq.resolve_selected(conn, topic, sel, note[:2000])
            detail["note"] = note[:2000]
    if action == "replay":
        ids, detail = await _replay(c, sel, form, detail)
    target = f"dead letter {row_id}" if row_id is not None else f"dead letters where {params}"
    entry = await audit.record(
        c.db,
        who,
        cx.peer(request),
        f"dlq.{action}",
        target=target,
        rows=len(ids),
        detail={**detail, "ids": audit.ids_detail(ids)},
    )
    return cx.redirect(f"/audit/{entry}")


async def _replay(
    c: cx.Console, sel: dlq.Selection, form: MultiMapping[Any], detail: dict[str, Any]
) -> tuple[list[int], dict[str, Any]]:
    include_invalid = form.get("include_invalid") == "on"
    include_crashed = form.get("include_crashed") == "on"
    limited = dlq.Selection(**{**_fields(sel), "limit": MAX_REPLAY})
    report = await dlq_replay.replay(
        c.settings,
        limited,
        include_invalid=include_invalid,
        include_crashed=include_crashed,
        prod=c.producer,
        progress=False,
    )
    return report.replayed, {
        **detail,
        "include_invalid": include_invalid,
        "include_crashed": include_crashed,
        "skipped": {str(k): v for k, v in list(report.skipped.items())[:200]},
        "failed": {str(k): v for k, v in list(report.failed.items())[:200]},
        "duplicates": {str(k): v for k, v in list(report.duplicates.items())[:200]},
    }


def _fields(sel: dlq.Selection) -> dict[str, Any]:
    return {name: getattr(sel, name) for name in dlq.Selection.__dataclass_fields__}
