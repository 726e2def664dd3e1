"""The Fleet page (workers, running jobs, rates, lag, pauses) and the Pause/resume page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from aiokafka.errors import KafkaError

from schemas.fleet import InFlightJob, PauseRecord, StatusReport
from streams.console import audit, queries
from streams.console import context as cx
from streams.fleet import WorkerView

log = structlog.get_logger(__name__)

WRITE_TIMEOUT_S = 10.0


def routes(app: web.Application) -> None:
    app.router.add_get("/", fleet)
    app.router.add_get("/control", control)
    app.router.add_post("/control/pause", pause)
    app.router.add_post("/control/resume", resume)


@dataclass(frozen=True, slots=True)
class RunningJob:
    worker: StatusReport
    job: InFlightJob
    timeout_s: float | None

    @property
    def overdue(self) -> bool:
        return self.timeout_s is not None and self.job.age_s > self.timeout_s


@dataclass(frozen=True, slots=True)
class TypeRow:
    job_type: str
    topic: str
    per_minute: float | None
    window_s: float
    dead_letters: int
    failure_rate: float | None
    lag: int | None
    paused: str | None


@cx.template("fleet.html")
async def fleet(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    views = c.state.fleet.workers()
    live = [v for v in views if not v.gone]
    running = sorted(
        (
            RunningJob(v.report, job, _timeout(c, job.job_type))
            for v in live
            for job in v.report.in_flight
        ),
        key=lambda r: r.job.age_s,
        reverse=True,
    )
    # Dead letters over the same window as the finished jobs (the last hour, or the
    # samples since the console started), so that the failure rate compares like with like.
    window = c.state.offsets.window_s() or 3600.0
    failed = await c.state.failures.get(
        lambda: queries.dead_letters_since(c.db, c.settings.kafka.dlq_topic, window)
    )
    refresh = request.query.get("refresh")
    return {
        "workers": views,
        "live": len(live),
        "running": running[:500],
        "types": _type_rows(c, failed),
        "pauses": c.state.pauses.current(),
        "partitions": _partitions(c),
        "offsets_error": c.state.offsets.error,
        "refresh": int(refresh) if refresh and refresh.isdigit() and int(refresh) >= 2 else None,
        "now": datetime.now(UTC),
        "utilisation": _utilisation,
        "shares": _organization_rows(live),
    }


def _organization_rows(live: list[WorkerView]) -> list[dict[str, Any]]:
    """Fair share per job type and organization, summed over the live workers."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for view in live:
        for pool in view.report.pools:
            for share in pool.organizations:
                key = (pool.job_type, share.organization_id)
                row = rows.setdefault(
                    key,
                    {
                        "job_type": key[0],
                        "organization": key[1],
                        "waiting": 0,
                        "running": 0,
                        "started": 0,
                        "deferred": 0,
                    },
                )
                for field in ("waiting", "running", "started", "deferred"):
                    row[field] += getattr(share, field)
    return sorted(rows.values(), key=lambda r: (r["job_type"], -(r["waiting"] + r["running"])))


def _timeout(c: cx.Console, job_type: str) -> float | None:
    spec = c.registry.specs.get(job_type)
    return None if spec is None else spec.policy.timeout_s


def _utilisation(view: WorkerView) -> list[tuple[str, int, int, int]]:
    """(job type, running, slots, held) per pool of a worker."""
    return [(p.job_type, p.in_flight, p.concurrency, p.held) for p in view.report.pools]


def _type_rows(c: cx.Console, failed: dict[str, int]) -> list[TypeRow]:
    latest = c.state.offsets.latest
    paused = {p.job_type: p for p in c.state.pauses.current() if p.organization_id is None}
    org_paused: dict[str, list[str]] = {}
    for p in c.state.pauses.current():
        if p.organization_id is not None:
            org_paused.setdefault(p.job_type, []).append(p.organization_id)
    rows = []
    for spec in c.registry.specs.values():
        rate = c.state.offsets.rate(spec.job_type, spec.topic)
        topics = {spec.topic, c.registry.retry_topic(spec)}
        lag = None if latest is None else sum(p.lag for p in latest.partitions if p.topic in topics)
        dead = failed.get(spec.job_type, 0)
        quiet = not (lag or dead or rate.per_minute or spec.job_type in paused)
        if not spec.policy.enabled and quiet:
            continue  # off in this configuration and nothing to say
        done = None if rate.per_minute is None else rate.per_minute * rate.window_s / 60
        state = "paused" if spec.job_type in paused else None
        if spec.job_type in org_paused:
            state = (state + "; " if state else "") + "orgs " + ", ".join(org_paused[spec.job_type])
        rows.append(
            TypeRow(
                spec.job_type,
                spec.topic,
                rate.per_minute,
                rate.window_s,
                dead,
                None if done is None or done + dead == 0 else dead / (done + dead),
                lag,
                state,
            )
        )
    return rows


def _partitions(c: cx.Console) -> list[Any]:
    latest = c.state.offsets.latest
    return [] if latest is None else sorted(latest.partitions, key=lambda p: (p.topic, p.partition))


@cx.template("control.html")
async def control(request: web.Request) -> dict[str, Any]:
    c = cx.console_of(request)
    pauses = c.state.pauses.current()
    return {
        # Every type of the catalog: worker groups may enable types this config does not.
        "job_types": list(c.registry.specs),
        "pauses": pauses,
        "workers": [v for v in c.state.fleet.workers() if not v.gone],
    }


async def pause(request: web.Request) -> web.Response:
    return await _set(request, paused=True)


async def resume(request: web.Request) -> web.Response:
    return await _set(request, paused=False)


async def _set(request: web.Request, *, paused: bool) -> web.Response:
    c = cx.console_of(request)
    who = cx.identity(request)
    if not who.operator:
        return cx.forbidden(request)
    form = await request.post()
    job_type = str(form.get("job_type") or "")
    org = str(form.get("organization_id") or "").strip() or None
    reason = str(form.get("reason") or "").strip()
    if job_type not in c.registry.specs:
        return cx.error(request, 400, f"Unknown job type {job_type!r}.")
    if paused and not reason:
        return cx.error(request, 400, "Say why: a pause needs a reason.")
    record = PauseRecord(
        job_type=job_type,
        organization_id=org,
        paused=paused,
        reason=reason[:1000] if paused else "",
        by=f"{who.name} (console)",
    )
    try:
        await c.writer.write(
            c.settings.kafka.control_topic, record.key, record.to_bytes(), WRITE_TIMEOUT_S
        )
    except (KafkaError, TimeoutError) as exc:
        log.error("console.control_write_failed", error=repr(exc)[:300])
        return cx.error(request, 503, "Kafka did not take the record: nothing changed; try again.")
    c.state.pauses.apply(record)  # the follower sees it too; the page shows it at once
    label = job_type if org is None else f"{job_type}@{org}"
    await audit.record(
        c.db,
        who,
        cx.peer(request),
        "pause" if paused else "resume",
        target=label,
        detail={"reason": reason} if paused else {},
    )
    return cx.redirect("/control")
